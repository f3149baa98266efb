//! Every JSON read's live answer, on a served day of traffic, validates
//! against its response schema in `schemas/openapi.json` — checked by the
//! Python ecosystem's validator (jsonschema), not by the code that wrote
//! either.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::access::{http, op, serve_with};
use super::dashboard::{key_for, replay_fixture, until_ready};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_json_read_answers_as_its_documented_schema_says() {
    let py = repo().join(".tools/py");
    assert!(py.join("jsonschema").is_dir(), "run `just validators` (installs jsonschema into .tools/py)");
    let temp = tempfile::tempdir().unwrap();
    replay_fixture(temp.path(), "day-of-traffic");
    // A webhook nobody answers (a closed loopback port): its deliveries are attempted, fail and wait.
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let served = serve_with(
        temp.path(),
        &[
            "--prefix",
            "replay",
            "--webhook-allow",
            &format!("127.0.0.1:{closed_port}"),
            "--webhook-retry-schedule",
            "100ms,60s",
        ],
    );
    until_ready(&served).await;
    let hook = json!({"type": "define_webhook", "id": "crm", "url": format!("http://127.0.0.1:{closed_port}/hook"),
        "events": ["conversation_opened"], "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"});
    op(&served, "default", "hook-1", hook).await;
    // An open conversation now, so the floor and an inbox hold one.
    let message = json!({"type": "receive_message", "conversation": "rc-1", "contact": "ct-rc-1", "channel": "web-support",
        "contact_name": "Lucía", "text": "Hola"});
    op(&served, "default", "rc-1", message).await;
    let op = served.operator.clone();
    let get = |path: String, credential: Option<String>| {
        let served = &served;
        async move { http(served, "127.0.0.1", "GET", &path, credential.as_deref(), &[], None).await }
    };
    let a = "/v1/accounts/default";
    // A conversation, a contact and an agent of the day, as the reads name them.
    let (_, audit) = get(format!("{a}/audit?action=conversation_opened&limit=5"), Some(op.clone())).await;
    let opened = &audit["entries"][0];
    let conversation =
        opened["target"].as_str().and_then(|t| t.strip_prefix("conversation/")).expect("a conversation").to_owned();
    let contact = opened["details"]["contact"].as_str().expect("its contact").to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let agent = loop {
        // The supporting agent the open conversation's campaign has (its inbox queues it).
        let (_, live) = get(format!("{a}/live"), Some(op.clone())).await;
        let (_, deliveries) = get(format!("{a}/webhooks/deliveries"), Some(op.clone())).await;
        let attempted = deliveries["attempts"].as_array().is_some_and(|a| !a.is_empty());
        if let (Some(agent), true, true) = (
            live["agents"][0]["agent"].as_str(),
            live["conversations"].as_array().is_some_and(|c| !c.is_empty()),
            attempted,
        ) {
            break agent.to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "no open conversation or webhook attempt: {live} {deliveries}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let agent_key = key_for(&served, &agent).await;

    let mut reads: Vec<(&str, String, Option<String>)> = vec![
        ("/v1/health", "/v1/health".into(), None),
        ("/health/live", "/health/live".into(), None),
        ("/health/ready", "/health/ready".into(), None),
        ("/v1/openapi.json", "/v1/openapi.json".into(), None),
        ("/v1/accounts/{account}/audit", format!("{a}/audit?limit=50"), Some(op.clone())),
        ("/v1/audit/verify", "/v1/audit/verify".into(), Some(op.clone())),
        (
            "/v1/accounts/{account}/contacts/{contact}/history",
            format!("{a}/contacts/{contact}/history"),
            Some(op.clone()),
        ),
        (
            "/v1/accounts/{account}/contacts/{contact}/export",
            format!("{a}/contacts/{contact}/export"),
            Some(op.clone()),
        ),
        ("/v1/accounts/{account}/live", format!("{a}/live"), Some(op.clone())),
        ("/v1/accounts/{account}/inbox", format!("{a}/inbox?agent={agent}"), Some(op.clone())),
        ("/v1/accounts/{account}/inbox", format!("{a}/inbox"), Some(agent_key.clone())),
        (
            "/v1/accounts/{account}/conversations/{conversation}/timeline",
            format!("{a}/conversations/{conversation}/timeline"),
            Some(op.clone()),
        ),
        ("/v1/accounts/{account}/events", format!("{a}/events?limit=50"), Some(op.clone())),
        ("/v1/accounts/{account}/webhooks/deliveries", format!("{a}/webhooks/deliveries"), Some(op.clone())),
    ];
    for kind in convo_reports::KINDS {
        for by in convo_reports::DIMENSIONS {
            reads.push((
                "/v1/accounts/{account}/reports/{kind}",
                format!("{a}/reports/{kind}?by={by}&period=hour"),
                Some(op.clone()),
            ));
        }
        reads.push((
            "/v1/accounts/{account}/reports/{kind}",
            format!("{a}/reports/{kind}?period=day"),
            Some(op.clone()),
        ));
    }
    // Refusals answer as the Error schema says.
    reads.extend([
        ("/v1/accounts/{account}/live", format!("{a}/live"), None),
        (
            "/v1/accounts/{account}/conversations/{conversation}/timeline",
            format!("{a}/conversations/nobody/timeline"),
            Some(agent_key.clone()),
        ),
        ("/v1/accounts/{account}/reports/{kind}", format!("{a}/reports/sla?tz=Asia/Kolkata"), Some(op.clone())),
        ("/v1/accounts/{account}/audit", format!("{a}/audit?from=yesterday"), Some(op.clone())),
    ]);
    let mut cases = String::new();
    let mut statuses = Vec::new();
    for (template, path, credential) in reads {
        // An agent reads from the account's network (through the loopback proxy).
        let network: &[(&str, &str)] =
            if credential.as_ref() == Some(&agent_key) { &[("X-Forwarded-For", "10.20.0.7")] } else { &[] };
        let (status, doc) = http(&served, "127.0.0.1", "GET", &path, credential.as_deref(), network, None).await;
        statuses.push((path, status));
        cases.push_str(&json!({"path": template, "status": status, "doc": doc}).to_string());
        cases.push('\n');
    }
    let ok = statuses.iter().filter(|(_, s)| *s == 200).count();
    assert!(ok >= 14 + 7 * convo_reports::KINDS.len(), "the reads answered: {statuses:?}");
    assert!(statuses.iter().rev().take(4).all(|(_, s)| *s >= 400), "the refusals refused: {statuses:?}");
    std::fs::write(temp.path().join("answers.jsonl"), &cases).unwrap();
    let mut child = std::process::Command::new("python3")
        .arg(repo().join("crates/convo-cli/tests/validate_responses.py"))
        .arg(repo().join("schemas/openapi.json"))
        .env("PYTHONPATH", &py)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child.stdin.take().expect("stdin").write_all(cases.as_bytes()).expect("writes");
    let out = child.wait_with_output().expect("the validator finishes");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "live answers that break their documented schema:\n{report}");
    assert!(report.contains(" 0 failures"), "{report}");
}
