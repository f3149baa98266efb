//! The engine on a real nats-server gives the same events as the simulator,
//! for every fixture (the engine's tests cannot depend on the simulator, so
//! this check lives here).

use std::path::{Path, PathBuf};
use std::time::Duration;

use convo_domain::{CommandEnvelope, Timestamp};
use convo_engine::Engine;
use convo_sim::{Record, Scripted, scenario};
use convo_store::launcher::{LaunchOptions, NatsServer};
use convo_store::{EventStore, JetStreamStore, StoreConfig};
use futures::StreamExt;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../replay-fixtures")
}

fn inputs(name: &str) -> Vec<(CommandEnvelope, Timestamp)> {
    let text = std::fs::read_to_string(fixtures().join(name).join("input.jsonl")).unwrap();
    scenario::parse(&text).unwrap().into_iter().map(|i| (i.envelope, i.at)).collect()
}

/// The simulator's event lines for a fixture.
fn simulated(name: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(fixtures().join(name).join("input.jsonl")).unwrap();
    let mut out = Vec::new();
    convo_sim::run(&mut Scripted::new(scenario::parse(&text).unwrap()), None, |step| {
        for r in step.records {
            if matches!(r, Record::Config { .. } | Record::Agent { .. } | Record::Conversation { .. }) {
                out.push(convo_sim::output::to_value(r));
            }
        }
    });
    out
}

/// Every event in the log, read back from JetStream, as JSON lines.
async fn logged(store: &JetStreamStore) -> Vec<serde_json::Value> {
    let last = store.last_seq().await.unwrap();
    let mut follow = store.read(1).await.unwrap();
    let mut out = Vec::new();
    while let Some(stored) = tokio::time::timeout(Duration::from_secs(10), follow.next()).await.unwrap() {
        let stored = stored.unwrap();
        assert!(stored.stream_seq <= last);
        out.extend(stored.commit.json_lines());
    }
    out
}

#[tokio::test]
async fn every_fixture_gives_the_same_events_through_the_engine_and_nats_as_through_the_simulator() {
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(&LaunchOptions { data_dir: dir.path().to_path_buf(), sync_always: false }).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("input.jsonl").is_file())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 15);
    for (n, name) in names.iter().enumerate() {
        let config = StoreConfig { prefix: format!("t{n}"), stream: format!("T{n}"), ..StoreConfig::default() };
        let store = JetStreamStore::connect(&server.url(), config).await.unwrap();
        let mut engine = Engine::recover(store).await.unwrap();
        engine.replay(inputs(name)).await.unwrap();
        let through_nats = logged(engine.store()).await;
        let expected = simulated(name);
        assert_eq!(through_nats.len(), expected.len(), "{name}: event count");
        for (a, b) in through_nats.iter().zip(&expected) {
            assert_eq!(a, b, "{name}: first difference");
        }
    }
}
