//! convo-wire's tests: the drift check against `schemas/` and the AsyncAPI
//! document. (The commits the fixtures produce are encoded and viewed in
//! convo-sim's tests, where they are made: this crate does not depend on the
//! simulator.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn committed(dir: &Path, base: &Path, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).expect("schemas/ exists") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            committed(&path, base, out);
        } else if path.extension().is_some_and(|e| e == "json") {
            let rel = path.strip_prefix(base).expect("inside").to_string_lossy().replace('\\', "/");
            out.insert(rel, std::fs::read_to_string(&path).expect("readable"));
        }
    }
}

/// The drift check: the shapes in the code equal the committed `schemas/`.
/// `UPDATE_SCHEMAS=1` (or `just schemas`) rewrites them; a changed shape of an
/// existing version is a breaking change: add a version and an upcaster instead.
#[test]
fn schemas_match_the_code() {
    let dir = repo().join("schemas");
    let generated = convo_wire::schema::files().expect("the types trace");
    if std::env::var_os("UPDATE_SCHEMAS").is_some() {
        for (rel, text) in &generated {
            let path = dir.join(rel);
            std::fs::create_dir_all(path.parent().expect("has a parent")).expect("writable");
            std::fs::write(path, text).expect("writable");
        }
    }
    let mut on_disk = BTreeMap::new();
    committed(&dir, &dir, &mut on_disk);
    let mut problems = Vec::new();
    for (rel, text) in &generated {
        match on_disk.get(rel) {
            None => problems.push(format!("{rel}: generated but not committed")),
            Some(disk) if disk != text => {
                problems.push(format!("{rel}: the code's shape differs from the committed file"))
            }
            Some(_) => {}
        }
    }
    // The gateway's OpenAPI document is generated (and drift-checked) by convo-gateway.
    let elsewhere = ["openapi.json"];
    for rel in on_disk.keys().filter(|rel| !generated.contains_key(*rel) && !elsewhere.contains(&rel.as_str())) {
        problems.push(format!("{rel}: committed but no longer generated"));
    }
    assert!(
        problems.is_empty(),
        "the wire format drifted from schemas/ (run `just schemas` if the change is intended, and add a schema version with an upcaster if it breaks old payloads):\n{}",
        problems.join("\n")
    );
    assert!(generated.len() > 30, "one file per event type");
}

/// The AsyncAPI document for integrators names every subject kind and event type.
#[test]
fn asyncapi_names_every_kind_and_event() {
    let doc = std::fs::read_to_string(repo().join("schemas/asyncapi.yaml")).expect("schemas/asyncapi.yaml");
    for kind in convo_wire::CONVERSATION_KINDS {
        assert!(doc.contains(kind), "asyncapi.yaml does not name the kind {kind}");
    }
    for file in convo_wire::schema::files().unwrap().keys().filter(|f| f.starts_with("events/")) {
        let event = file.trim_start_matches("events/").split('.').next().unwrap();
        assert!(doc.contains(&format!("- {event}\n")), "asyncapi.yaml does not list {event}");
    }
    for header in ["Convo-Kind", "Convo-Events", "Convo-Schema", "Convo-Command", "Convo-Correlation", "Convo-Account"]
    {
        assert!(doc.contains(header), "asyncapi.yaml does not describe header {header}");
    }
}
