//! The fixtures' read models: each scenario goes through the engine on the
//! in-memory store, the audit log, reports, contact history, the live
//! dashboard and the inboxes are folded from it, and their exports must equal the fixture's `expected-*.jsonl`
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
    fold_until(store, &tree, projection, None).await;
    tree
}

async fn fold_until(
    store: &MemoryStore,
    tree: &convo_projector::Tree,
    projection: &mut (dyn Projection + Send),
    until: Option<u64>,
) {
    convo_projector::fold(store, tree, projection, convo_projector::BATCH_COMMITS_MAX, until, &mut |_, _| {})
        .await
        .unwrap();
}

/// A live read model's export half-way through the stream (when the floor
/// has work: fixtures end with every conversation closed) and at its end.
async fn live_export(
    store: &MemoryStore,
    projection: &mut (dyn Projection + Send),
    export: impl Fn(&convo_projector::Tree) -> Vec<serde_json::Value>,
) -> String {
    let tree = convo_projector::scratch_tree(projection.name()).unwrap();
    let middle = convo_store::EventStore::last_seq(store).await.unwrap() / 2;
    fold_until(store, &tree, projection, Some(middle)).await;
    let mut out = lines(export(&tree));
    fold_until(store, &tree, projection, None).await;
    out.push_str(&lines(export(&tree)));
    out
}

async fn read_models(dir: &Path) -> Vec<(&'static str, String)> {
    let text = std::fs::read_to_string(dir.join("input.jsonl")).unwrap();
    let inputs = convo_sim::scenario::parse(&text).unwrap().into_iter().map(|i| (i.envelope, i.at));
    let mut engine = Engine::recover(MemoryStore::default()).await.unwrap();
    engine.replay(inputs).await.unwrap();
    let store = engine.store();
    let audit = fold(store, &mut convo_audit::AuditLog).await;
    let reports = fold(store, &mut convo_reports::Reports::default()).await;
    let history = fold(store, &mut convo_contact_history::ContactHistory::default()).await;
    vec![
        ("expected-audit.jsonl", lines(convo_audit::entries(&audit, &convo_audit::Filter::default()).unwrap())),
        ("expected-reports.jsonl", lines(convo_reports::export_all(&reports).unwrap())),
        ("expected-contact-history.jsonl", lines(convo_contact_history::export_all(&history).unwrap())),
        (
            "expected-live.jsonl",
            live_export(store, &mut convo_live::Live, |t| convo_live::export_all(t).unwrap()).await,
        ),
        (
            "expected-inbox.jsonl",
            live_export(store, &mut convo_inbox::Inbox, |t| convo_inbox::export_all(t).unwrap()).await,
        ),
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

/// A conversation in a team's queue shows in the inboxes of the team's
/// members only: in `team-routing`, c2 waits for Premium (Beto, Caro) while
/// Ana, an agent of the same campaign, is free.
#[tokio::test]
async fn a_teams_queue_shows_in_its_members_inboxes_only() {
    let text = std::fs::read_to_string(fixtures_dir().join("team-routing").join("input.jsonl")).unwrap();
    let inputs = convo_sim::scenario::parse(&text).unwrap().into_iter().map(|i| (i.envelope, i.at));
    let mut engine = Engine::recover(MemoryStore::default()).await.unwrap();
    engine.replay(inputs).await.unwrap();
    let store = engine.store();
    let log: Vec<_> =
        futures::StreamExt::collect::<Vec<_>>(convo_store::EventStore::read(store, 1).await.unwrap()).await;
    let to_team = log
        .iter()
        .map(|item| item.as_ref().unwrap())
        .find(|s| s.commit.kind() == "transferred" && s.commit.stream.path() == "conv/c2")
        .expect("c2 goes to the team")
        .stream_seq;
    let tree = convo_projector::scratch_tree("inbox").unwrap();
    fold_until(store, &tree, &mut convo_inbox::Inbox, Some(to_team)).await;
    let view = convo_live::View {
        now: log[to_team as usize - 1].as_ref().unwrap().commit.at,
        margin_secs: 30,
        campaigns: None,
    };
    let queued = |agent: &str| -> Vec<String> {
        let inbox = convo_inbox::inbox(&tree, "default", agent, &view).unwrap();
        inbox["queued"].as_array().unwrap().iter().map(|c| c["conversation"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(queued("caro"), ["c2"]);
    assert_eq!(queued("beto"), ["c2"]);
    assert!(queued("ana").is_empty(), "not a member of the team");
}

/// Retention (SPEC §13): in `content-retention`, the account keeps content
/// 30 days. 31 days after c1 closed, the simulator has recorded its
/// `content_expired` and not c2's (closed 13 days before); the engine gives
/// the same events, and the contact history's entry for c1 reads `[erased]`
/// where it held the contact's name and the field's value, while c2's still
/// reads them. Counts, times and the typification stay.
#[tokio::test]
async fn content_reads_erased_once_its_retention_has_passed_and_not_before() {
    let until = convo_domain::Timestamp::parse_rfc3339("2026-04-02T14:10:00Z").unwrap();
    let text = std::fs::read_to_string(fixtures_dir().join("content-retention").join("input.jsonl")).unwrap();
    let inputs = convo_sim::scenario::parse(&text).unwrap();
    let mut simulated = Vec::new();
    convo_sim::run(&mut convo_sim::Scripted::new(inputs.clone()), Some(until), |step| {
        for record in step.records {
            use convo_sim::Record;
            if matches!(
                record,
                Record::Config { .. } | Record::Agent { .. } | Record::Conversation { .. } | Record::Contact { .. }
            ) {
                simulated.push(convo_sim::output::to_value(record));
            }
        }
    });
    let expired: Vec<&serde_json::Value> = simulated.iter().filter(|e| e["type"] == "content_expired").collect();
    assert_eq!(expired.len(), 1, "{expired:?}");
    assert_eq!(expired[0]["conversation"], "c1");
    assert_eq!(expired[0]["actor"], serde_json::json!({"system": "retention"}));
    assert_eq!(expired[0]["at"], "2026-04-01T14:10:00Z", "30 days after c1 closed");
    let scheduled: Vec<&serde_json::Value> =
        simulated.iter().filter(|e| e["type"] == "content_retention_scheduled").collect();
    assert_eq!(scheduled.len(), 2, "{scheduled:?}");

    let mut engine = Engine::recover(MemoryStore::default()).await.unwrap();
    engine.replay_until(inputs.into_iter().map(|i| (i.envelope, i.at)), Some(until)).await.unwrap();
    let store = engine.store();
    let mut logged = Vec::new();
    let mut log = convo_store::EventStore::read(store, 1).await.unwrap();
    while let Some(stored) = futures::StreamExt::next(&mut log).await {
        logged.extend(stored.unwrap().commit.json_lines());
    }
    assert_eq!(logged, simulated, "the engine gives the simulator's events");

    let history = fold(store, &mut convo_contact_history::ContactHistory::default()).await;
    let entries = convo_contact_history::export_all(&history).unwrap();
    let entry = |id: &str| entries.iter().find(|e| e["conversation"] == id).cloned().expect("an entry");
    let (c1, c2) = (entry("c1"), entry("c2"));
    assert_eq!(c1["contact_name"], "[erased]", "{c1}");
    assert_eq!(c1["fields"]["order_id"], "[erased]", "{c1}");
    assert_eq!(c1["content_expired_at"], "2026-04-01T14:10:00Z", "{c1}");
    assert_eq!((c1["typification"].as_str(), c1["messages"].as_u64()), (Some("consulta"), Some(2)), "{c1}");
    assert_eq!(c2["contact_name"], "Diego Pardo", "{c2}");
    assert!(c2.get("content_expired_at").is_none(), "{c2}");
}

/// Times are whole seconds rounded up everywhere in the reports: a
/// conversation opened at 14:00:00.000, answered at 14:00:05.400 (a first
/// response of 6 s) and closed at 14:00:05.900 was handled for 6 s, not 5 —
/// a handle time never reads shorter than the same conversation's first
/// response.
#[tokio::test]
async fn handle_time_is_rounded_as_response_time_is() {
    let fixture = std::fs::read_to_string(fixtures_dir().join("sla-worked-example").join("input.jsonl")).unwrap();
    let mut text: String =
        fixture.lines().take_while(|l| !l.contains("receive_message")).map(|l| format!("{l}\n")).collect();
    text.push_str(concat!(
        r#"{"at": "2026-03-02T14:00:00.000Z", "command": {"type": "receive_message", "conversation": "c1", "contact": "ct-0001", "channel": "wa", "text": "Hola"}}"#,
        "\n",
        r#"{"at": "2026-03-02T14:00:05.400Z", "actor": {"user": {"id": "ana", "ip": "10.0.0.11"}}, "command": {"type": "send_message", "conversation": "c1", "text": "Hola"}}"#,
        "\n",
        r#"{"at": "2026-03-02T14:00:05.900Z", "actor": {"user": {"id": "ana", "ip": "10.0.0.11"}}, "command": {"type": "close", "conversation": "c1", "typification": "venta"}}"#,
        "\n"
    ));
    let inputs = convo_sim::scenario::parse(&text).unwrap().into_iter().map(|i| (i.envelope, i.at));
    let mut engine = Engine::recover(MemoryStore::default()).await.unwrap();
    engine.replay(inputs).await.unwrap();
    let reports = fold(engine.store(), &mut convo_reports::Reports::default()).await;
    let day = convo_reports::export_all(&reports)
        .unwrap()
        .into_iter()
        .find(|r| r["dimension"] == "account" && r["period"] == "day")
        .expect("the account's day");
    assert_eq!((day["frt_mean_secs"].as_f64(), day["handle_mean_secs"].as_f64()), (Some(6.0), Some(6.0)), "{day}");
}

/// Reports bucket in the account's time zone by default (sla-worked-example:
/// America/Bogota, UTC−5): the conversation of 14:00 UTC is in the 09h
/// bucket; a day sums its local hours; UTC still gives the UTC buckets; a
/// zone not a whole number of hours from UTC is refused with the reason.
#[tokio::test]
async fn reports_bucket_in_the_accounts_time_zone() {
    let text = std::fs::read_to_string(fixtures_dir().join("sla-worked-example").join("input.jsonl")).unwrap();
    let inputs = convo_sim::scenario::parse(&text).unwrap().into_iter().map(|i| (i.envelope, i.at));
    let mut engine = Engine::recover(MemoryStore::default()).await.unwrap();
    engine.replay(inputs).await.unwrap();
    let tree = fold(engine.store(), &mut convo_reports::Reports::default()).await;
    let zone = convo_reports::zone(&tree, "default").unwrap();
    assert_eq!(zone.0.name(), "America/Bogota");
    let labels = |zone: &convo_domain::schedule::Zone, period: &str| -> Vec<(String, u64)> {
        convo_reports::rows_in(&tree, "default", "account", period, None, None, zone)
            .unwrap()
            .into_iter()
            .map(|r| (r.bucket, r.counters.get("sla_optimal").copied().unwrap_or(0) + r.counters["sla_low"]))
            .collect()
    };
    assert_eq!(labels(&zone, "hour"), [("2026-03-02T09".to_owned(), 2)]);
    assert_eq!(labels(&zone, "day"), [("2026-03-02".to_owned(), 2)]);
    let utc = convo_domain::schedule::Zone::parse("UTC").unwrap();
    assert_eq!(labels(&utc, "hour"), [("2026-03-02T14".to_owned(), 2)]);
    // From and to are the zone's labels too.
    let window =
        convo_reports::rows_in(&tree, "default", "account", "hour", Some("2026-03-02T10"), None, &zone).unwrap();
    assert!(window.is_empty(), "{window:?}");
    let kolkata = convo_domain::schedule::Zone::parse("Asia/Kolkata").unwrap();
    let refused = convo_reports::rows_in(&tree, "default", "account", "day", None, None, &kolkata).unwrap_err();
    assert!(refused.to_string().contains("330 minutes from UTC"), "{refused}");
}
