//! The domain never reads a clock, generates an id or draws a random number:
//! time, ids and randomness come in with commands, so replays are exact.

use std::path::Path;

const FORBIDDEN: [&str; 8] =
    ["SystemTime", "Instant::now", "Utc::now", "Local::now", "Uuid::new_v4", "new_v7", "rand::", "thread_rng"];

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable source dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_domain_reads_no_clock_and_draws_no_randomness() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    assert!(files.len() >= 5, "found the sources");
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable");
        for word in FORBIDDEN {
            assert!(
                !text.contains(word),
                "{} uses `{word}`: the domain takes time, ids and randomness as inputs",
                file.display()
            );
        }
    }
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("manifest");
    let deps = manifest.split("[dependencies]").nth(1).unwrap_or("").split("[dev-dependencies]").next().unwrap_or("");
    assert!(!deps.lines().any(|l| l.trim_start().starts_with("rand")), "convo-domain must not depend on rand");
    assert!(!deps.contains("\"v4\"") && !deps.contains("\"v7\""), "no random uuid features");
}
