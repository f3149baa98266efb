//! Contact history against a real nats-server.

use std::path::Path;

use convo_domain::{Command, CommandEnvelope, Timestamp};
use convo_engine::Engine;
use convo_projector::Projector;
use convo_store::launcher::{LaunchOptions, NatsServer};
use convo_store::{JetStreamStore, StoreConfig};

fn setup_lines() -> Vec<(CommandEnvelope, Timestamp)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../replay-fixtures/sla-worked-example/input.jsonl");
    convo_engine::scenario::parse(&std::fs::read_to_string(path).unwrap())
        .unwrap()
        .into_iter()
        .filter(|i| !matches!(i.envelope.command.type_name(), "receive_message" | "send_message" | "close"))
        .filter(|i| i.envelope.id.as_str() != "login-beto") // only Ana takes conversations
        .map(|i| (i.envelope, i.at))
        .collect()
}

fn line(text: &str) -> (CommandEnvelope, Timestamp) {
    let input = convo_engine::scenario::parse_line(text, 1).unwrap();
    (input.envelope, input.at)
}

#[tokio::test]
async fn contact_history_keeps_exactly_the_clients_limit_newest_first_masked() {
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(&LaunchOptions { data_dir: dir.path().join("nats"), ..Default::default() }).unwrap();
    let store = JetStreamStore::connect(&server.url(), StoreConfig::for_prefix("hist")).await.unwrap();
    let mut inputs = setup_lines();
    // The client keeps two past conversations per contact.
    inputs.push(line(r#"{"at":"2026-03-02T13:30:00Z","id":"limit","command":{"type":"update_client","id":"acme","name":"Acme","code":"1001","sla_optimal_secs":60,"sla_low_secs":180,"max_history_conversations":2,"max_inactivity_secs":300,"inactivity_attempts":2}}"#));
    for n in 1..=4 {
        let t = |m: u32| format!("2026-03-02T{:02}:{:02}:00Z", 13 + n, m);
        inputs.push(line(&format!(r#"{{"at":"{}","id":"open-{n}","command":{{"type":"receive_message","conversation":"k{n}","contact":"ct-0001","channel":"wa","text":"Hola {n}"}}}}"#, t(0))));
        inputs.push(line(&format!(r#"{{"at":"{}","id":"field-{n}","actor":{{"user":{{"id":"ana","ip":"10.0.0.11"}}}},"command":{{"type":"set_field","conversation":"k{n}","field":"order_id","value":"A-{n}"}}}}"#, t(1))));
        inputs.push(line(&format!(r#"{{"at":"{}","id":"close-{n}","actor":{{"user":{{"id":"ana","ip":"10.0.0.11"}}}},"command":{{"type":"close","conversation":"k{n}","typification":"venta"}}}}"#, t(2))));
    }
    assert!(inputs.iter().all(|(e, _)| !matches!(e.command, Command::Tick(_))));
    let outcomes = Engine::recover(store.clone()).await.unwrap().replay(inputs).await.unwrap();
    assert!(
        outcomes
            .iter()
            .all(|o| !matches!(o, convo_engine::Outcome::Refused(_) | convo_engine::Outcome::Duplicate { .. })),
        "no command is refused or repeated"
    );
    let db_dir = tempfile::tempdir().unwrap();
    let projector = Projector::open(sled::open(db_dir.path()).unwrap(), convo_contact_history::NAME);
    projector.catch_up(&store, &mut convo_contact_history::ContactHistory::default(), &mut |_, _| {}).await.unwrap();
    let history = convo_contact_history::history(&projector.tree().unwrap(), "default", "ct-0001").unwrap();
    let conversations: Vec<&str> = history.iter().map(|e| e["conversation"].as_str().unwrap()).collect();
    assert_eq!(conversations, ["k4", "k3"], "exactly two, newest first");
    assert_eq!(history[0]["contact"], "***0001", "the campaign does not show numbers: all but the last four masked");
    assert_eq!(history[0]["typification"], "venta");
    assert_eq!(history[0]["fields"]["order_id"], "A-4");
    assert_eq!(history[0]["agents"][0], "ana");
    assert_eq!(
        history[0]["messages"], 3,
        "k4 opened at 12:00 in Bogota, out of hours: the contact, the out-of-hours notice, the closing message"
    );
    // A rebuild gives the same history.
    projector.rebuild(&store, &mut convo_contact_history::ContactHistory::default(), &mut |_, _| {}).await.unwrap();
    assert_eq!(convo_contact_history::history(&projector.tree().unwrap(), "default", "ct-0001").unwrap(), history);
}
