//! The audit log against a real nats-server: rebuilds, crashes, tampering,
//! poison messages.

use std::path::Path;

use convo_audit::{AuditLog, Divergence, Filter};
use convo_domain::Timestamp;
use convo_engine::Engine;
use convo_projector::{Projection, Projector, Staged};
use convo_store::launcher::{LaunchOptions, NatsServer};
use convo_store::{JetStreamStore, StoreConfig, StoredCommit};
use futures::StreamExt;

struct Setup {
    store: JetStreamStore,
    server: NatsServer,
    _dir: tempfile::TempDir,
}

fn inputs(name: &str) -> Vec<(convo_domain::CommandEnvelope, Timestamp)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../replay-fixtures").join(name).join("input.jsonl");
    convo_engine::scenario::parse(&std::fs::read_to_string(path).unwrap())
        .unwrap()
        .into_iter()
        .map(|i| (i.envelope, i.at))
        .collect()
}

/// A stream holding a fixture's events.
async fn stream_of(fixture: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(&LaunchOptions { data_dir: dir.path().join("nats"), ..Default::default() }).unwrap();
    let store = JetStreamStore::connect(&server.url(), StoreConfig::for_prefix("audit")).await.unwrap();
    let mut engine = Engine::recover(store.clone()).await.unwrap();
    engine.replay(inputs(fixture)).await.unwrap();
    Setup { store, server, _dir: dir }
}

fn fresh_db() -> (sled::Db, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (sled::open(dir.path().join("projections")).unwrap(), dir)
}

fn export(tree: &sled::Tree) -> String {
    convo_audit::entries(tree, &Filter::default()).unwrap().iter().map(|e| format!("{e}\n")).collect()
}

async fn events_in(store: &JetStreamStore) -> usize {
    let (db, _d) = fresh_db();
    let p = Projector::open(db, "count");
    p.catch_up(store, &mut AuditLog, &mut |_, _| {}).await.unwrap();
    convo_audit::entries(&p.tree().unwrap(), &Filter::default()).unwrap().len()
}

#[tokio::test]
async fn a_rebuild_equals_the_live_log_byte_for_byte() {
    let setup = stream_of("day-of-traffic").await;
    let (db, _d) = fresh_db();
    let projector = Projector::open(db, convo_audit::NAME);
    let stats = projector.catch_up(&setup.store, &mut AuditLog, &mut |_, _| {}).await.unwrap();
    assert!(stats.batches > 1, "several batches: {stats:?}");
    assert_eq!(projector.lag(&setup.store).await.unwrap(), 0);
    let live = export(&projector.tree().unwrap());
    assert_eq!(live.lines().count(), 3945, "one entry per event of the day");
    projector.rebuild(&setup.store, &mut AuditLog, &mut |_, _| {}).await.unwrap();
    assert_eq!(export(&projector.tree().unwrap()), live);
    let verified = convo_audit::verify(&setup.store, &projector.tree().unwrap()).await.unwrap();
    assert_eq!((verified.entries, verified.first_divergence), (3945, None));
    // The timeline of one conversation reads like a story.
    let filter = Filter { conversation: Some("r0000042".into()), ..Filter::default() };
    let story: Vec<String> = convo_audit::entries(&projector.tree().unwrap(), &filter)
        .unwrap()
        .iter()
        .map(convo_audit::timeline_line)
        .collect();
    assert!(story[0].contains("contact:ct-0000042") && story[0].contains("conversation_opened"), "{}", story[0]);
    assert!(story.iter().any(|l| l.contains("(from 10.20.0.1)")));
}

/// Applies the audit projection but dies after `left` commits.
struct DiesAfter {
    left: usize,
}

impl Projection for DiesAfter {
    fn name(&self) -> &'static str {
        convo_audit::NAME
    }

    fn apply(&mut self, staged: &mut Staged<'_>, stored: &StoredCommit) -> Result<(), String> {
        assert!(self.left > 0, "the projector process dies here");
        self.left -= 1;
        AuditLog.apply(staged, stored)
    }
}

#[tokio::test]
async fn a_projector_killed_mid_batch_counts_nothing_twice() {
    let setup = stream_of("day-of-traffic").await;
    let (db, _d) = fresh_db();
    let projector = Projector::open(db.clone(), convo_audit::NAME);
    // Dies in the middle of its second batch: the first is durable, the second never happened.
    let crashed = {
        let (store, tree) = (setup.store.clone(), projector.tree().unwrap());
        tokio::spawn(async move {
            convo_projector::fold(
                &store,
                &tree,
                &mut DiesAfter { left: 1_500 },
                convo_projector::BATCH_COMMITS_MAX,
                None,
                &mut |_, _| {},
            )
            .await
        })
        .await
    };
    assert!(crashed.is_err(), "the projector died");
    assert_eq!(projector.checkpoint().unwrap(), 1_000, "only the first batch was written");
    // Restarted, it resumes from its checkpoint.
    projector.catch_up(&setup.store, &mut AuditLog, &mut |_, _| {}).await.unwrap();
    let resumed = export(&projector.tree().unwrap());
    let (clean_db, _d2) = fresh_db();
    let clean = Projector::open(clean_db, convo_audit::NAME);
    clean.catch_up(&setup.store, &mut AuditLog, &mut |_, _| {}).await.unwrap();
    assert_eq!(resumed, export(&clean.tree().unwrap()), "the same log as a clean run: nothing twice, nothing lost");
    assert_eq!(resumed.lines().count(), events_in(&setup.store).await);
}

#[tokio::test]
async fn deleting_or_altering_an_entry_is_detected() {
    let setup = stream_of("transfer-rules").await;
    let (db, _d) = fresh_db();
    let projector = Projector::open(db, convo_audit::NAME);
    projector.catch_up(&setup.store, &mut AuditLog, &mut |_, _| {}).await.unwrap();
    let tree = projector.tree().unwrap();
    assert_eq!(convo_audit::verify(&setup.store, &tree).await.unwrap().first_divergence, None);
    // Someone edits entry 5: who did it.
    let key = b"e/default/00000000000000000005".to_vec();
    let original = tree.get(&key).unwrap().unwrap();
    let forged = String::from_utf8(original.to_vec()).unwrap().replace("system:scenario", "user:nobody");
    assert_ne!(forged.as_bytes(), original.as_ref());
    tree.insert(&key, forged.as_bytes()).unwrap();
    let found = convo_audit::verify(&setup.store, &tree).await.unwrap().first_divergence;
    assert_eq!(found, Some(Divergence::Altered { account: "default".into(), n: 5 }));
    // Someone deletes entry 7 instead.
    tree.insert(&key, original).unwrap();
    tree.remove(b"e/default/00000000000000000007").unwrap();
    let found = convo_audit::verify(&setup.store, &tree).await.unwrap().first_divergence;
    assert_eq!(found, Some(Divergence::Missing { account: "default".into(), n: 7 }));
    assert!(found.unwrap().to_string().contains("entry 7 is missing"));
}

#[tokio::test]
async fn a_forged_copy_of_a_closure_is_named_by_verify_even_after_a_rebuild() {
    let setup = stream_of("transfer-rules").await;
    // An altered copy of a closure, attributed to another agent, republished
    // on its own subject as any NATS client could.
    let mut log = convo_store::EventStore::read(&setup.store, 1).await.unwrap();
    let mut closed = None;
    while let Some(item) = log.next().await {
        let stored = item.unwrap();
        if stored.commit.kind() == "closed" {
            closed = Some(stored);
            break;
        }
    }
    let closed = closed.expect("a closure");
    let mut forged = closed.commit.clone();
    for event in &mut forged.events {
        event.actor = convo_domain::Actor::User { id: convo_domain::UserId::new("mallory").unwrap(), ip: None };
    }
    let headers: Vec<(&str, String)> = forged.headers();
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let seq = setup.store.publish_raw(&forged.subject("audit"), &headers, forged.encode().unwrap()).await.unwrap();
    // Folded, and even rebuilt from the tampered stream, the log leaves it
    // out, and verify names it.
    let (db, _d) = fresh_db();
    let projector = Projector::open(db, convo_audit::NAME);
    projector.catch_up(&setup.store, &mut AuditLog, &mut |_, _| {}).await.unwrap();
    projector.rebuild(&setup.store, &mut AuditLog, &mut |_, _| {}).await.unwrap();
    let verdict = convo_audit::verify(&setup.store, &projector.tree().unwrap()).await.unwrap();
    assert_eq!(verdict.first_divergence, None, "the log holds what the engine applied");
    assert_eq!(verdict.not_in_record.len(), 1, "{:?}", verdict.not_in_record);
    assert_eq!(verdict.not_in_record[0].seq, seq);
    assert!(verdict.not_in_record[0].reason.contains("out of sequence"), "{}", verdict.not_in_record[0].reason);
    let entries = export(&projector.tree().unwrap());
    assert!(!entries.contains("mallory"), "the forgery is not in the log");
}

#[tokio::test]
async fn a_poison_message_goes_to_the_dead_letters_and_the_projection_goes_on() {
    let setup = stream_of("sla-worked-example").await;
    // Something that is not a commit lands on a conversation subject.
    let client = convo_store::connect(&setup.server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(convo_wire::headers::SCHEMA, "1");
    let poison = js
        .publish_with_headers("audit.default.conv.zz.message", headers, "not postcard".into())
        .await
        .unwrap()
        .await
        .unwrap();
    // The engine goes on writing after it.
    let mut engine = Engine::recover(setup.store.clone()).await.unwrap();
    engine
        .replay(
            inputs("welcome-and-survey")
                .into_iter()
                .filter(|(e, _)| e.command.type_name() == "receive_message")
                .map(|(mut e, at)| {
                    e.id = convo_domain::CommandId::new("after-poison").unwrap();
                    if let convo_domain::Command::ReceiveMessage(m) = &mut e.command {
                        m.conversation = convo_domain::ConversationId::new("after").unwrap();
                    }
                    (e, at.plus_secs(86_400))
                })
                .take(1),
        )
        .await
        .unwrap();
    let (db, _d) = fresh_db();
    let projector = Projector::open(db, convo_audit::NAME);
    let stats = projector.catch_up(&setup.store, &mut AuditLog, &mut |_, _| {}).await.unwrap();
    assert_eq!(stats.dead_letters, 1);
    let dead = projector.dead_letters().unwrap();
    assert_eq!(dead[0].seq, poison.sequence);
    assert!(dead[0].reason.contains("not a valid version 1 commit"), "{}", dead[0].reason);
    assert_eq!(projector.lag(&setup.store).await.unwrap(), 0, "it went on to the end");
    let after = Filter { from: Some("2026-03-03T00:00:00Z".into()), ..Filter::default() };
    assert!(
        !convo_audit::entries(&projector.tree().unwrap(), &after).unwrap().is_empty(),
        "commits after the poison are projected"
    );
}
