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
fn serve_fixture(dir: &Path, fixture: &str) -> Served {
    let input = repo().join("replay-fixtures").join(fixture).join("input.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_convo"))
        .arg("replay-traffic")
        .arg(&input)
        .args(["--no-events", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "replay-traffic: {}", String::from_utf8_lossy(&out.stderr));
    serve_with(dir, &["--prefix", "replay"]) // replay-traffic's default prefix
}

async fn until_ready(served: &Served) {
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
async fn key_for(served: &Served, user: &str) -> String {
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
    let served = serve_fixture(temp.path(), "sla-breach");
    until_ready(&served).await;

    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let out = Command::new("node")
        .arg(repo().join("crates/convo-cli/tests/dashboard/check.cjs"))
        .arg(format!("http://{}", served.http))
        .args(["default", &served.operator])
        .arg(&screenshot)
        .arg("ana")
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
    // Bad filters name the parameter.
    let (status, bad) = get(&served.operator, "/audit?from=garbage").await;
    assert_eq!((status, bad["field"].as_str()), (400, Some("from")), "{bad}");
    let (status, bad) = get(&served.operator, "/reports/sla?from=yesterday").await;
    assert_eq!((status, bad["field"].as_str()), (400, Some("from")), "{bad}");
}
