//! The dashboard page in headless Chromium against a real `convo serve`
//! holding a fixture's traffic, and the live reads' roles over HTTP.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::access::{Served, http, log_of, op, serve_with};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A fixture replayed into a fresh data directory, then served.
pub(crate) fn serve_fixture(dir: &Path, fixture: &str) -> Served {
    replay_fixture(dir, fixture);
    serve_with(dir, &["--prefix", "replay"]) // replay-traffic's default prefix
}

/// A fixture replayed into a fresh data directory (prefix `replay`).
pub(crate) fn replay_fixture(dir: &Path, fixture: &str) {
    let input = repo().join("replay-fixtures").join(fixture).join("input.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_convo"))
        .arg("replay-traffic")
        .arg(&input)
        .args(["--no-events", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "replay-traffic: {}", String::from_utf8_lossy(&out.stderr));
}

pub(crate) async fn until_ready(served: &Served) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = http(served, "127.0.0.1", "GET", "/health/ready", None, &[], None).await;
        if status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "never ready: {body}\n{}", log_of(&served.dir_path()));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An API key for `user`, its token.
pub(crate) async fn key_for(served: &Served, user: &str) -> String {
    let command = json!({"type": "issue_api_key", "key": format!("{user}-key"), "holder": {"user": user}});
    let reply = op(served, "default", &format!("key-{user}"), command).await;
    reply["credential"]["token"].as_str().expect("the token, once").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_apis_numbers_and_follows_a_command() {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "the browser test needs Debian's chromium: run `just browser` (apt install chromium)"
    );
    let node_modules = repo().join(".tools/node/node_modules");
    assert!(node_modules.join("playwright-core").is_dir(), "run `just validators` (installs playwright-core)");
    let temp = tempfile::tempdir().unwrap();
    // The day of traffic: every hour has more than one SLA class, and 08h all three. A wide
    // risk margin puts the conversation sent after the day at risk (its timeline opens from there).
    replay_fixture(temp.path(), "day-of-traffic");
    let served = serve_with(temp.path(), &["--prefix", "replay", "--risk-margin-secs", "3600"]);
    until_ready(&served).await;
    // A conversation after the day, routed to an available agent of its campaign: the
    // inbox page shows it to them.
    op(
        &served,
        "default",
        "dash-avail",
        json!({"type": "set_agent_state", "agent": "agent-0001", "state": "available"}),
    )
    .await;
    let message = json!({"type": "receive_message", "conversation": "dash-1", "contact": "ct-dash-1",
        "channel": "wa-sales", "contact_name": "Dora Dashboard", "text": "hola"});
    op(&served, "default", "dash-msg", message).await;
    let mut busy = None;
    for n in 0..4 {
        let agent = format!("agent-{n:04}");
        let path = format!("/v1/accounts/default/inbox?agent={agent}");
        let (status, inbox) = http(&served, "127.0.0.1", "GET", &path, Some(&served.operator), &[], None).await;
        if status == 200 && inbox["assigned"].as_array().is_some_and(|a| !a.is_empty()) {
            busy = Some(agent);
            break;
        }
    }
    let busy = busy.expect("the conversation after the day is assigned to an agent of its campaign");
    let agent_key = key_for(&served, &busy).await;

    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let out = Command::new("node")
        .arg(repo().join("crates/convo-cli/tests/dashboard/check.cjs"))
        .arg(format!("http://{}", served.http))
        .args(["default", &served.operator])
        .arg(&screenshot)
        .args(["agent-0000", &agent_key, "10.20.0.7"]) // the account lets its users in from 10.20.0.0/16
        .env("NODE_PATH", &node_modules)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let verdict: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or(Value::Null);
    assert!(
        out.status.success() && verdict["ok"] == true,
        "{stdout}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        log_of(&served.dir_path())
    );
    assert!(verdict["checks"].as_u64().unwrap() >= 7, "every figure compared: {verdict}");
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 10_000, "a screenshot in {}", screenshot.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_reads_are_scoped_by_role() {
    let temp = tempfile::tempdir().unwrap();
    let served = serve_fixture(temp.path(), "routing-fifo-capacity");
    until_ready(&served).await;
    let (ana, sara) = (key_for(&served, "ana").await, key_for(&served, "sara").await);
    // The account lets its users in from 10.0.0.0/16; the gateway trusts the loopback proxy.
    let from = [("X-Forwarded-For", "10.0.0.11")];
    let get = async |credential: &str, path: &str| {
        http(&served, "127.0.0.1", "GET", &format!("/v1/accounts/default{path}"), Some(credential), &from, None).await
    };

    // An agent: their own inbox, nobody else's, not the dashboard.
    let (status, inbox) = get(&ana, "/inbox").await;
    assert_eq!((status, inbox["agent"].as_str()), (200, Some("ana")), "{inbox}");
    assert!(inbox["campaigns"].as_array().is_some_and(|c| !c.is_empty()), "{inbox}");
    assert_eq!(get(&ana, "/inbox?agent=beto").await.0, 403);
    let (status, denied) = get(&ana, "/live").await;
    assert_eq!(status, 403, "{denied}");
    // A conversation's timeline: one waiting in her campaign, yes; one closed (on nobody's
    // board any more), as if it did not exist — the operator reads both.
    let message = json!({"type": "receive_message", "conversation": "t-1", "contact": "ct-t1", "channel": "wa",
        "text": "hola"});
    op(&served, "default", "t-1", message).await;
    let (status, timeline) = get(&ana, "/conversations/t-1/timeline").await;
    assert_eq!(status, 200, "{timeline}");
    assert_eq!(timeline["entries"][0]["action"], "conversation_opened", "{timeline}");
    // A supervisor's timeline of their campaign's conversation: one question, no denial recorded.
    let denials =
        async || get(&served.operator, "/audit?action=access_denied").await.1["entries"].as_array().map_or(0, Vec::len);
    let before = denials().await;
    let (status, timeline) = get(&sara, "/conversations/t-1/timeline").await;
    assert_eq!(status, 200, "{timeline}");
    assert_eq!(denials().await, before, "reading a timeline records no denial");
    let (status, hidden) = get(&ana, "/conversations/c1/timeline").await;
    assert_eq!((status, hidden["code"].as_str()), (404, Some("not_found")), "{hidden}");
    let (status, closed) = get(&served.operator, "/conversations/c1/timeline").await;
    assert_eq!(status, 200, "{closed}");
    assert_eq!(get(&served.operator, "/conversations/nope/timeline").await.0, 404);
    // A supervisor: the dashboard of their campaigns, their agents' inboxes.
    let (status, live) = get(&sara, "/live").await;
    assert_eq!(status, 200, "{live}");
    assert!(live["campaigns"].as_array().unwrap().iter().all(|c| c["campaign"] == "ventas"), "{live}");
    assert_eq!(get(&sara, "/inbox?agent=ana").await.0, 200);
    // The operator: the account's, with the read model's position in the headers' place.
    let (status, live) = get(&served.operator, "/live?margin_secs=999999").await;
    assert_eq!(status, 400, "a margin beyond a day is refused: {live}");
    let (status, live) = get(&served.operator, "/live").await;
    assert_eq!(status, 200);
    assert!(live["agents_by_state"].as_object().is_some_and(|m| !m.is_empty()), "{live}");
    // Every JSON read says where its read model (or, for the feed, the page) stands and
    // where the stream ends.
    for path in [
        "/live",
        "/inbox?agent=ana",
        "/reports/sla?by=campaign",
        "/audit?limit=1",
        "/events?limit=1",
        "/conversations/t-1/timeline",
        "/contacts/ct-0101/history",
    ] {
        let path = format!("/v1/accounts/default{path}");
        let (status, head, body) =
            super::access::http_with_head(&served, "127.0.0.1", "GET", &path, Some(&served.operator), &[], None).await;
        let head = head.to_ascii_lowercase();
        assert_eq!(status, 200, "{path}: {body}");
        assert!(head.contains("convo-read-position: ") && head.contains("convo-stream-end: "), "{path}: {head}");
    }
    // Reports bucket in the account's zone unless asked for another (whole hours from UTC).
    let (status, sla) = get(&served.operator, "/reports/sla?by=account&period=hour").await;
    assert_eq!((status, sla["time_zone"].as_str()), (200, Some("America/Bogota")), "{sla}");
    let (status, sla) = get(&served.operator, "/reports/sla?by=account&period=hour&tz=UTC").await;
    assert_eq!((status, sla["time_zone"].as_str()), (200, Some("UTC")), "{sla}");
    for zone in ["Asia/Kolkata", "Mars/Olympus"] {
        let (status, bad) = get(&served.operator, &format!("/reports/sla?tz={zone}")).await;
        assert_eq!((status, bad["field"].as_str()), (400, Some("tz")), "{bad}");
    }
    // Bad filters name the parameter.
    let (status, bad) = get(&served.operator, "/audit?from=garbage").await;
    assert_eq!((status, bad["field"].as_str()), (400, Some("from")), "{bad}");
    let (status, bad) = get(&served.operator, "/reports/sla?from=yesterday").await;
    assert_eq!((status, bad["field"].as_str()), (400, Some("from")), "{bad}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_models_run_apart_from_the_engine() {
    let temp = tempfile::tempdir().unwrap();
    let (engine_dir, reads_dir) = (temp.path().join("engine"), temp.path().join("reads"));
    replay_fixture(&engine_dir, "routing-fifo-capacity");
    let engine = serve_with(&engine_dir, &["--prefix", "replay", "--roles", "engine"]);
    until_ready(&engine).await;
    // The read models in their own process and data directory, on the engine's stream,
    // with the engine's operator credential and signing key (copied, as an operator would).
    std::fs::create_dir_all(&reads_dir).unwrap();
    for file in ["operator.key", convo_store::signing::KEY_FILE] {
        std::fs::copy(engine_dir.join(file), reads_dir.join(file)).unwrap();
    }
    // For the harness only (a read-models process starts no nats-server of its own).
    convo_store::launcher::write_private(&reads_dir.join("nats-engine.url"), engine.engine_url.as_bytes()).unwrap();
    convo_store::launcher::write_private(&reads_dir.join("nats.url"), engine.public_url.as_bytes()).unwrap();
    let reads =
        serve_with(&reads_dir, &["--prefix", "replay", "--roles", "read-models", "--nats-url", &engine.engine_url]);
    until_ready(&reads).await;
    assert_eq!(reads.operator, engine.operator);
    let from = [("X-Forwarded-For", "10.0.0.11")];
    let get = async |served: &Served, credential: &str, path: &str| {
        http(served, "127.0.0.1", "GET", &format!("/v1/accounts/default{path}"), Some(credential), &from, None).await
    };

    // The engine serves no read model; the read models' process serves them, scoped by role
    // with the catalog as the engine keeps it.
    assert_eq!(get(&engine, &engine.operator, "/live").await.0, 503);
    let (ana, sara) = (key_for(&engine, "ana").await, key_for(&engine, "sara").await);
    let (status, inbox) = get(&reads, &ana, "/inbox").await;
    assert_eq!((status, inbox["agent"].as_str()), (200, Some("ana")), "{inbox}");
    assert_eq!(get(&reads, &ana, "/live").await.0, 403);
    let (status, live) = get(&reads, &sara, "/live").await;
    assert_eq!(status, 200, "{live}");
    assert!(live["campaigns"].as_array().unwrap().iter().all(|c| c["campaign"] == "ventas"), "{live}");
    let (status, audit) = get(&reads, &reads.operator, "/audit?limit=5").await;
    assert_eq!(status, 200, "{audit}");

    // A key revoked on the engine reads nothing more here, at once.
    op(&engine, "default", "revoke-ana", json!({"type": "revoke_api_key", "key": "ana-key"})).await;
    let (status, denied) = get(&reads, &ana, "/inbox").await;
    assert_eq!(status, 401, "{denied}");

    // Commands go to the engine.
    let body = json!({"id": "x1", "command": {"type": "set_agent_state", "agent": "ana", "state": "available"}});
    let (status, refused) = http(
        &reads,
        "127.0.0.1",
        "POST",
        "/v1/accounts/default/commands/set_agent_state",
        Some(&reads.operator),
        &[],
        Some(&body),
    )
    .await;
    assert_eq!((status, refused["code"].as_str()), (503, Some("unavailable")), "{refused}");
    let log = log_of(&reads_dir);
    assert!(log.contains("keeping the read models only") && !log.contains("no signing key"), "{log}");
}

/// Every read model's export, from the trees of a read-model database.
fn exports(trees: &[(&'static str, convo_projector::Tree)]) -> Vec<(&'static str, Vec<Value>)> {
    trees
        .iter()
        .map(|(name, tree)| {
            let rows = match *name {
                convo_audit::NAME => convo_audit::entries(tree, &convo_audit::Filter::default()).unwrap(),
                convo_reports::NAME => convo_reports::export_all(tree).unwrap(),
                convo_contact_history::NAME => convo_contact_history::export_all(tree).unwrap(),
                convo_live::NAME => convo_live::export_all(tree).unwrap(),
                _ => convo_inbox::export_all(tree).unwrap(),
            };
            (*name, rows)
        })
        .collect()
}

/// The read models an instance keeps (as `convo serve` follows them).
fn projections() -> Vec<Box<dyn convo_projector::Projection + Send>> {
    convo_service::read_models::projections().into_iter().map(|(_, projection)| projection).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_models_killed_mid_stream_equal_a_fresh_rebuild() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let mut served = serve_fixture(dir, "day-of-traffic");
    // SIGKILL while the followers fold the day (a batch is 1000 commits).
    std::thread::sleep(Duration::from_millis(150));
    served.child.kill().unwrap();
    served.child.wait().unwrap();
    drop(served);
    let db = convo_projector::open_db(&dir.join("projections")).unwrap();
    let at_kill: Vec<u64> = projections()
        .iter()
        .map(|p| convo_projector::Projector::open(db.clone(), p.name()).checkpoint().unwrap())
        .collect();
    drop(db);
    std::fs::remove_file(dir.join("http.url")).unwrap(); // the killed server's, stale

    // Restarted: each follows on from its checkpoint; then stopped cleanly.
    let mut served = serve_with(dir, &["--prefix", "replay"]);
    until_ready(&served).await;
    let pid = served.child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    served.child.wait().unwrap();
    drop(served);

    // The same stream folded into fresh trees.
    let (store, _nats) = {
        let nats = convo_store::launcher::NatsServer::start(&convo_store::launcher::LaunchOptions {
            data_dir: dir.join("nats"),
            ..Default::default()
        })
        .unwrap();
        let config = convo_store::StoreConfig::for_prefix("replay");
        (convo_store::JetStreamStore::connect(&nats.url(), config).await.unwrap(), nats)
    };
    let last = convo_store::EventStore::last_seq(&store).await.unwrap();
    assert!(at_kill.iter().any(|at| *at < last), "killed mid-stream: {at_kill:?} of {last}");
    let db = convo_projector::open_db(&dir.join("projections")).unwrap();
    let mut followed = Vec::new();
    let mut fresh = Vec::new();
    for mut projection in projections() {
        let name = projection.name();
        followed.push((name, convo_projector::Projector::open(db.clone(), name).tree().unwrap()));
        let tree = convo_projector::scratch_tree(name).unwrap();
        convo_projector::fold(&store, &tree, &mut projection, convo_projector::BATCH_COMMITS_MAX, None, &mut |_, _| {})
            .await
            .unwrap();
        fresh.push((name, tree));
    }
    for ((name, a), (_, b)) in exports(&followed).into_iter().zip(exports(&fresh)) {
        assert!(!a.is_empty(), "{name} holds the day");
        assert!(a == b, "{name}: the followed read model differs from a fresh rebuild");
    }
}
