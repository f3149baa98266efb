//! The integrator contract as files: every file under `schemas/` is what the
//! code generates (postcard descriptions, JSON Schemas, AsyncAPI, OpenAPI),
//! and the ecosystem's own tools accept them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn generated() -> BTreeMap<String, String> {
    let mut files = convo_wire::schema::files().expect("the types trace");
    files.extend(convo_engine::contract::files());
    files.insert("openapi.json".into(), convo_wire::json_schema::pretty(&convo_gateway::openapi::document()));
    files
}

fn on_disk(dir: &Path, base: &Path, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).expect("schemas/ exists") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            on_disk(&path, base, out);
        } else if path.extension().is_some_and(|e| e == "json" || e == "yaml") {
            let rel = path.strip_prefix(base).expect("inside").to_string_lossy().replace('\\', "/");
            out.insert(rel, std::fs::read_to_string(&path).expect("readable"));
        }
    }
}

/// The drift check: `schemas/` holds exactly what the code generates.
/// `UPDATE_SCHEMAS=1` (or `just schemas`) rewrites it; a changed postcard
/// shape of an existing version breaks old payloads: add a version and an
/// upcaster (`convo_wire::decode`) instead.
#[test]
fn schemas_match_the_code() {
    let dir = repo().join("schemas");
    let generated = generated();
    if std::env::var_os("UPDATE_SCHEMAS").is_some() {
        let mut stale = BTreeMap::new();
        on_disk(&dir, &dir, &mut stale);
        for rel in stale.keys().filter(|rel| !generated.contains_key(*rel)) {
            std::fs::remove_file(dir.join(rel)).expect("removable");
        }
        for (rel, text) in &generated {
            let path = dir.join(rel);
            std::fs::create_dir_all(path.parent().expect("has a parent")).expect("writable");
            std::fs::write(path, text).expect("writable");
        }
    }
    let mut disk = BTreeMap::new();
    on_disk(&dir, &dir, &mut disk);
    let mut problems = Vec::new();
    for (rel, text) in &generated {
        match disk.get(rel) {
            None => problems.push(format!("{rel}: generated but not committed")),
            Some(d) if d != text => problems.push(format!("{rel}: the code's shape differs from the committed file")),
            Some(_) => {}
        }
    }
    for rel in disk.keys().filter(|rel| !generated.contains_key(*rel)) {
        problems.push(format!("{rel}: committed but no longer generated"));
    }
    assert!(
        problems.is_empty(),
        "schemas/ drifted from the code (run `just schemas` if the change is intended, and add a schema version \
         with an upcaster if it breaks old payloads):\n{}",
        problems.join("\n")
    );
    let events = generated.keys().filter(|k| k.starts_with("json/events/")).count();
    assert_eq!(events, convo_wire::EVENT_TYPES.len(), "one JSON Schema per event type");
    let commands = generated.keys().filter(|k| k.starts_with("json/commands/")).count();
    assert_eq!(commands, convo_domain::Command::TYPE_NAMES.len(), "one JSON Schema per command type");
}

/// The official AsyncAPI parser (`@asyncapi/parser`, installed by `just
/// validators` into .tools/node) parses the document with every payload
/// resolved, and the document names every command and event type.
#[test]
fn the_official_asyncapi_parser_accepts_the_document() {
    let node_modules = repo().join(".tools/node/node_modules");
    assert!(node_modules.join("@asyncapi/parser").is_dir(), "run `just validators` (installs @asyncapi/parser)");
    let out = std::process::Command::new("node")
        .arg(repo().join("crates/convo-cli/tests/contract/asyncapi-parse.cjs"))
        .arg(repo().join("schemas/asyncapi.json"))
        .env("NODE_PATH", &node_modules)
        .current_dir(repo().join(".tools/node"))
        .output()
        .expect("node runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the AsyncAPI parser refused schemas/asyncapi.json:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("parsed:"), "{text}");
    let doc = std::fs::read_to_string(repo().join("schemas/asyncapi.json")).expect("asyncapi.json");
    for kind in convo_domain::Command::TYPE_NAMES.iter().filter(|t| !matches!(**t, "record_denied" | "record_read")) {
        assert!(doc.contains(&format!("json/commands/{kind}.schema.json")), "no request schema for {kind}");
    }
    for event in convo_wire::EVENT_TYPES {
        assert!(doc.contains(&format!("\"{event}\"")), "the JSON channels do not list {event}");
    }
    let doc: serde_json::Value = serde_json::from_str(&doc).expect("JSON");
    for (name, server) in doc["servers"].as_object().expect("servers") {
        assert_eq!(server["host"], "{host}", "server {name}: no fixed port, the embedded default picks one");
    }
    eprintln!("{text}");
}
