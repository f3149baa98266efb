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
            if matches!(
                r,
                Record::Config { .. } | Record::Agent { .. } | Record::Conversation { .. } | Record::Contact { .. }
            ) {
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
    let server =
        NatsServer::start(&LaunchOptions { data_dir: dir.path().to_path_buf(), ..Default::default() }).unwrap();
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

/// A plain NATS subscription (no JetStream API: what `nats sub` or any
/// language's client does) to the JSON subjects reads every event of a
/// fixture as CloudEvents JSON — timer-made events (SLA crossings,
/// inactivity warnings and closures) included — republished from the log;
/// and a subscriber of closures gets every closure, the one out of hours
/// (committed with the opening) included.
#[tokio::test]
async fn every_event_reaches_a_plain_subscriber_as_cloudevents_json_and_every_closure_a_closure_subscriber() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        NatsServer::start(&LaunchOptions { data_dir: dir.path().to_path_buf(), ..Default::default() }).unwrap();
    let client = convo_store::connect(&server.url()).await.unwrap();
    for (n, name) in ["inactivity-two-attempts", "out-of-hours-close", "sla-breach"].iter().enumerate() {
        let prefix = format!("j{n}");
        let mut json = client.subscribe(format!("{prefix}.*.json.>")).await.unwrap();
        let mut closed = client.subscribe(format!("{prefix}.*.conv.*.closed")).await.unwrap();
        client.flush().await.unwrap();
        let config = StoreConfig { prefix: prefix.clone(), stream: format!("J{n}"), ..StoreConfig::default() };
        let store = JetStreamStore::connect(&server.url(), config).await.unwrap();
        let mut engine = Engine::recover(store.clone()).await.unwrap();
        engine.replay(inputs(name)).await.unwrap();
        let expected = simulated(name);

        let redactions = std::sync::Arc::new(convo_wire::redact::Redactions::default());
        redactions.mark_ready();
        let mut republisher = tokio::spawn({
            let store = store.clone();
            async move {
                // Three JSON streams on one server: each reserves its
                // max_bytes, so a small disk must not decide the test.
                let config = convo_store::json_stream::JsonStreamConfig {
                    max_bytes: 64 << 20,
                    ..convo_store::json_stream::JsonStreamConfig::default()
                };
                convo_store::json_stream::republish(&store, redactions, &config, &|_| {}).await
            }
        });
        let mut received = Vec::new();
        while received.len() < expected.len() {
            // A liveness bound, generous for a loaded machine; a republisher
            // that stopped says why.
            let Ok(message) = tokio::time::timeout(Duration::from_secs(30), json.next()).await else {
                let state = if republisher.is_finished() {
                    format!("the republisher stopped: {:?}", (&mut republisher).await)
                } else {
                    "the republisher still runs".to_owned()
                };
                panic!("{name}: {} of {} events arrived; {state}", received.len(), expected.len());
            };
            let message = message.unwrap();
            let event: serde_json::Value = serde_json::from_slice(&message.payload).expect("JSON");
            let kind = event["data"]["type"].as_str().unwrap().to_owned();
            assert_eq!(event["specversion"], "1.0");
            assert_eq!(event["type"], format!("io.convo.{kind}.v1"));
            assert!(message.subject.ends_with(&format!(".{kind}")), "{}", message.subject);
            assert!(message.subject.starts_with(&format!("{prefix}.default.json.")), "{}", message.subject);
            received.push(event);
        }
        republisher.abort();
        let data: Vec<&serde_json::Value> = received.iter().map(|e| &e["data"]).collect();
        assert_eq!(data, expected.iter().collect::<Vec<_>>(), "{name}: the events, in order");
        let by_rule = |rule: &str| received.iter().filter(|e| e["data"]["actor"]["system"] == rule).count();
        match *name {
            "inactivity-two-attempts" => assert!(by_rule("contact_inactivity") >= 3, "warnings and the closure"),
            "sla-breach" => assert!(by_rule("sla") >= 2, "the SLA crossings"),
            _ => {}
        }

        let closures = expected.iter().filter(|e| e["type"] == "conversation_closed").count();
        assert!(closures > 0);
        for _ in 0..closures {
            let message = tokio::time::timeout(Duration::from_secs(10), closed.next())
                .await
                .unwrap_or_else(|_| panic!("{name}: a closure never reached the ….closed subscriber"))
                .unwrap();
            let header = message.headers.as_ref().and_then(|h| h.get("Convo-Events")).unwrap().to_string();
            assert!(header.contains("conversation_closed"), "{header}");
        }
    }
}
