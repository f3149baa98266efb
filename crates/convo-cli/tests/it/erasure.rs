//! Erasure by crypto-shredding (SPEC §13) against the real binary: a
//! contact arriving by a unique phone handle (the gateway knows no id: the
//! engine makes the contact), with a name and a message marker; a
//! webhook receiving their events; snapshots; the JSON stream. Once the
//! contact is erased, within the bound, no file under the data directory
//! (the JetStream file store included) and no message read raw from any
//! stream or bucket holds the phone, the name or the marker; the audit
//! chain still verifies, the SLA report is unchanged, the contact history
//! says erased — and another contact's data is still there.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::access::{Served, http, log_of, op, sales_account, sales_settings, serve_with};
use super::{files_holding, raw_messages};

const PHONE: &str = "+573009871234";
const NAME: &str = "Zoraida Quintero-Ballesteros";
const MARKER: &str = "marker-7f3a9c1e-texto";
/// Another contact's text, which the erasure must leave readable.
const KEPT: &str = "kept-51b2d0-otra-persona";

/// A receiver that accepts everything and keeps the bodies.
async fn receiver() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                while let Some((_, body)) = super::next_request(&mut socket, &mut buffer).await {
                    seen.lock().unwrap().push(body);
                    let answer = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
                    if socket.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, got)
}

async fn until(what: &str, dir: &Path, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not within 60 s\n{}", log_of(dir));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn get(served: &Served, path: &str) -> Value {
    let (status, body) = http(served, "127.0.0.1", "GET", path, Some(&served.operator), &[], None).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_contact_leaves_nothing_readable_anywhere_and_the_record_still_verifies() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().to_path_buf();
    let (port, got) = receiver().await;
    let allow = format!("127.0.0.1:{port}");
    let served = serve_with(&dir, &["--webhook-allow", &allow, "--snapshot-every-secs", "1"]);
    sales_account(&served, sales_settings(), &[("ana", "agent")], &["ana"]).await;
    let url = format!("http://127.0.0.1:{port}/hooks");
    op(
        &served,
        "acme",
        "hook",
        json!({"type": "define_webhook", "id": "crm", "url": url, "events": [],
        "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}),
    )
    .await;
    op(&served, "acme", "ana-on", json!({"type": "set_agent_state", "agent": "ana", "state": "available"})).await;
    // The gateway names the contact by the phone; the engine makes its id from the command.
    let first = json!({"type": "receive_message", "conversation": "c-1", "handle": PHONE, "channel": "wa",
        "contact_name": NAME, "text": format!("hola, {MARKER}")});
    op(&served, "acme", "m1", first).await;
    let contact = convo_domain::contact::minted_contact_id(
        &convo_domain::AccountId::new("acme").unwrap(),
        &convo_domain::ConversationId::new("c-1").unwrap(),
        &convo_domain::CommandId::new("m1").unwrap(),
    );
    let contact = contact.as_str();
    let other = json!({"type": "receive_message", "conversation": "c-2", "contact": "k-88", "channel": "wa",
        "contact_name": "Otra Persona", "text": KEPT});
    op(&served, "acme", "m2", other).await;
    op(&served, "acme", "x1", json!({"type": "close", "conversation": "c-1", "typification": "venta"})).await;

    // Before: in clear where it is shown — the webhook, the JSON stream, the reads.
    until("the webhook received the message in clear", &dir, async || {
        got.lock().unwrap().iter().any(|b| b.contains(MARKER))
    })
    .await;
    until("the JSON stream holds the message", &dir, async || {
        raw_messages(&served.engine_url)
            .await
            .iter()
            .any(|(s, _, p)| s.contains("_JSON#") && String::from_utf8_lossy(p).contains(MARKER))
    })
    .await;
    let history = &format!("/v1/accounts/acme/contacts/{contact}/history");
    until("the engine recorded the contact it made in the book, with the phone", &dir, async || {
        let export = get(&served, &format!("/v1/accounts/acme/contacts/{contact}/export")).await.to_string();
        export.contains(PHONE)
    })
    .await;
    until("the contact history shows the closed conversation", &dir, async || {
        get(&served, history).await["history"].as_array().is_some_and(|h| !h.is_empty())
    })
    .await;
    let sla = "/v1/accounts/acme/reports/sla?by=campaign&period=day";
    let report_before = get(&served, sla).await;
    let before = raw_messages(&served.engine_url).await;
    let main: Vec<_> = before.iter().filter(|(s, _, _)| s.starts_with("CONVO#")).collect();
    assert!(!main.is_empty());
    for (subject, headers, payload) in &main {
        let text = String::from_utf8_lossy(payload);
        for secret in [PHONE, NAME, MARKER] {
            assert!(!text.contains(secret) && !headers.contains(secret), "{subject} holds {secret} in clear");
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // a snapshot of the partition with the contact in it
    assert!(
        !files_holding(&dir, MARKER).is_empty(),
        "the JSON stream's file store holds it in clear (the grep sees it)"
    );

    // Subject access first: the export holds everything in clear, over HTTP and from the CLI.
    let export = get(&served, &format!("/v1/accounts/acme/contacts/{contact}/export")).await.to_string();
    for secret in [PHONE, NAME, MARKER] {
        assert!(export.contains(secret), "the export holds {secret}: {export}");
    }
    assert!(!export.contains(KEPT), "another contact's text is not in the export");
    until("the export is in the account's audit log (who read the contact's data in full)", &dir, async || {
        get(&served, "/v1/accounts/acme/audit?action=unredacted_read").await.to_string().contains("contact_export")
    })
    .await;
    assert_eq!(export_by_cli(&dir, contact)["conversations"][0]["conversation"], "c-1");

    // Erase, naming the contact as the request did (by channel and handle): an
    // admin's or the operator's, with a reason.
    let reply = op(
        &served,
        "acme",
        "erase-1",
        json!({"type": "erase_contact", "channel": "wa", "handle": PHONE, "reason": "GDPR art. 17 request 2026-0042"}),
    )
    .await;
    assert!(reply["event_ids"].as_array().is_some_and(|ids| ids.len() == 1), "{reply}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let holding: Vec<String> = raw_messages(&served.engine_url)
            .await
            .into_iter()
            .filter(|(_, headers, payload)| {
                let text = String::from_utf8_lossy(payload);
                [PHONE, NAME, MARKER].iter().any(|s| text.contains(s) || headers.contains(s))
            })
            .map(|(subject, _, _)| subject)
            .collect();
        if holding.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "still readable after 60 s in {holding:?}\n{}", log_of(&dir));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // snapshots written after it too
    for secret in [PHONE, NAME, MARKER] {
        let found = files_holding(&dir, secret);
        assert!(found.is_empty(), "{secret} is still on disk in {found:?}");
    }
    // Another contact's data is untouched.
    assert!(
        raw_messages(&served.engine_url)
            .await
            .iter()
            .any(|(s, _, p)| s.contains("_JSON#") && String::from_utf8_lossy(p).contains(KEPT))
    );

    // The record: the chain verifies, the report is the same, the history says erased.
    let verdict = get(&served, "/v1/audit/verify").await;
    assert_eq!(verdict["intact"], true, "{verdict}");
    assert_eq!(get(&served, sla).await, report_before, "counts and SLA facts are unchanged");
    let after = get(&served, history).await;
    assert_eq!(after["erased"]["reason"], "GDPR art. 17 request 2026-0042", "{after}");
    let entries = after["history"].as_array().unwrap();
    assert!(!entries.is_empty() && !after.to_string().contains(NAME), "{after}");
    let export = export_by_cli(&dir, contact);
    assert_eq!(export["erased"]["reason"], "GDPR art. 17 request 2026-0042", "{export}");
    for secret in [PHONE, NAME, MARKER] {
        assert!(!export.to_string().contains(secret), "the export after the erasure holds {secret}: {export}");
    }
}

/// `convo contact <id> export` (through the running server).
fn export_by_cli(dir: &Path, contact: &str) -> Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_convo"))
        .args(["contact", contact, "export", "--account", "acme", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}
