//! The fixtures' read models: each scenario goes through the engine on the
//! in-memory store, the audit log, reports and contact history are folded
//! from it, and their exports must equal the fixture's `expected-*.jsonl`
//! byte for byte (`UPDATE_FIXTURES=1` rewrites them; review the diff).

use std::path::{Path, PathBuf};

use convo_engine::Engine;
use convo_projector::Projection;
use convo_store::MemoryStore;

use crate::fixtures::fixtures_dir;

fn lines(values: Vec<serde_json::Value>) -> String {
    values.iter().map(|v| format!("{v}\n")).collect()
}

async fn fold(store: &MemoryStore, projection: &mut (dyn Projection + Send)) -> convo_projector::Tree {
    let tree = convo_projector::scratch_tree(projection.name()).unwrap();
    convo_projector::fold(store, &tree, projection, convo_projector::BATCH_COMMITS_MAX, None, &mut |_, _| {})
        .await
        .unwrap();
    tree
}

async fn read_models(dir: &Path) -> Vec<(&'static str, String)> {
    let text = std::fs::read_to_string(dir.join("input.jsonl")).unwrap();
    let inputs = convo_sim::scenario::parse(&text).unwrap().into_iter().map(|i| (i.envelope, i.at));
    let mut engine = Engine::recover(MemoryStore::default()).await.unwrap();
    engine.replay(inputs).await.unwrap();
    let store = engine.store();
    let audit = fold(store, &mut convo_audit::AuditLog).await;
    let reports = fold(store, &mut convo_reports::Reports).await;
    let history = fold(store, &mut convo_contact_history::ContactHistory).await;
    vec![
        ("expected-audit.jsonl", lines(convo_audit::entries(&audit, &convo_audit::Filter::default()).unwrap())),
        ("expected-reports.jsonl", lines(convo_reports::export_all(&reports).unwrap())),
        ("expected-contact-history.jsonl", lines(convo_contact_history::export_all(&history).unwrap())),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_reproduces_its_expected_read_models() {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("input.jsonl").is_file())
        .collect();
    dirs.sort();
    let update = std::env::var_os("UPDATE_FIXTURES").is_some();
    let mut failures = Vec::new();
    for dir in &dirs {
        for (file, actual) in read_models(dir).await {
            let path = dir.join(file);
            if update {
                std::fs::write(&path, &actual).unwrap();
                continue;
            }
            match std::fs::read_to_string(&path) {
                Ok(expected) if expected == actual => {}
                Ok(_) => failures.push(format!("{}: differs", path.display())),
                Err(e) => failures.push(format!("{}: {e}", path.display())),
            }
        }
    }
    assert!(failures.is_empty(), "{} read models differ:\n{}", failures.len(), failures.join("\n"));
}
