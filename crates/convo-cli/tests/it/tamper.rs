//! Someone with full access to the NATS server tampers with the stream:
//! republishes an altered closure (attributed to another agent) after
//! deleting the original, republishes a copy, and removes the newest commit
//! of an agent's or conversation's stream. After `convo audit rebuild` from that stream,
//! `convo audit verify` still exits non-zero and names each: the engine
//! signs every commit, and anchors what it appended outside the stream.

use std::path::Path;
use std::process::{Command, Output};

use async_nats::jetstream;
use convo_domain::{Actor, UserId};
use convo_store::launcher::{LaunchOptions, NatsServer};
use convo_store::{EventStore, JetStreamStore, StoreConfig};
use convo_wire::StreamRef;
use futures::StreamExt;

const PREFIX: &str = "tamper";

fn convo(url: &str, data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_convo"))
        .args(args)
        .args(["--nats-url", url, "--prefix", PREFIX, "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("convo runs")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The `Convo-*` headers of the message at `seq`, as stored.
async fn convo_headers(stream: &jetstream::stream::Stream, seq: u64) -> Vec<(String, String)> {
    let raw = stream.direct_get(seq).await.unwrap();
    raw.headers
        .iter()
        .filter(|(k, _)| k.to_string().starts_with("Convo-"))
        .map(|(k, v)| (k.to_string(), v.first().unwrap().to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_closure_a_copy_and_a_removed_commit_fail_verify_even_after_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let nats = NatsServer::start(&LaunchOptions { data_dir: dir.path().join("nats"), ..Default::default() }).unwrap();
    let url = nats.url();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../replay-fixtures/transfer-rules/input.jsonl");
    let replay = Command::new(env!("CARGO_BIN_EXE_convo"))
        .args(["replay-traffic", fixture.to_str().unwrap(), "--nats-url", &url, "--prefix", PREFIX, "--no-events"])
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(replay.status.success(), "{}", text(&replay));
    assert!(data.join("engine.key").is_file() && data.join("anchors.jsonl").is_file());

    let catch_up = convo(&url, &data, &["audit", "catch-up"]);
    assert!(catch_up.status.success(), "{}", text(&catch_up));
    let clean = convo(&url, &data, &["audit", "verify"]);
    assert!(clean.status.success(), "an untouched stream verifies: {}", text(&clean));
    assert!(text(&clean).contains("every anchored commit"), "{}", text(&clean));

    // The attacker reads the stream without the key (as any NATS client with access could).
    let store = JetStreamStore::connect(&url, StoreConfig::for_prefix(PREFIX)).await.unwrap();
    let mut commits = Vec::new();
    let mut log = store.read(1).await.unwrap();
    while let Some(item) = log.next().await {
        commits.push(item.unwrap());
    }
    let closure = commits
        .iter()
        .find(|c| c.commit.kind() == "closed" && c.commit.events.iter().any(|e| matches!(e.actor, Actor::User { .. })))
        .expect("the fixture closes a conversation by an agent")
        .clone();
    let js = jetstream::new(convo_store::connect(&url).await.unwrap());
    let stream = js.get_stream(StoreConfig::for_prefix(PREFIX).stream).await.unwrap();
    let copied_headers = convo_headers(&stream, closure.stream_seq).await;
    let headers: Vec<(&str, &str)> = copied_headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();

    // 1. The closure, deleted and put back attributed to another agent (its old signature copied along).
    let mut forged = closure.commit.clone();
    for event in &mut forged.events {
        if let Actor::User { id, .. } = &mut event.actor {
            *id = UserId::new("mallory").unwrap();
        }
    }
    assert!(store.delete_message(closure.stream_seq).await.unwrap());
    let forged_seq = store.publish_raw(&forged.subject(PREFIX), &headers, forged.encode().unwrap()).await.unwrap();
    // 2. A genuine commit republished with its own signature (a replay).
    let first = &commits[0];
    let first_raw = stream.direct_get(first.stream_seq).await.unwrap();
    let first_headers = convo_headers(&stream, first.stream_seq).await;
    let first_headers: Vec<(&str, &str)> = first_headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let copy_seq = store.publish_raw(&first.subject, &first_headers, first_raw.payload.to_vec()).await.unwrap();
    // 3. The newest commit of another aggregate, removed.
    let other = commits
        .iter()
        .rev()
        .find(|c| !matches!(&c.commit.stream, StreamRef::Catalog) && c.commit.stream != closure.commit.stream)
        .expect("a second aggregate")
        .clone();
    assert!(store.delete_message(other.stream_seq).await.unwrap());

    // The read model is rebuilt from the tampered stream, then verified.
    let rebuild = convo(&url, &data, &["audit", "rebuild"]);
    assert!(rebuild.status.success(), "{}", text(&rebuild));
    let verify = convo(&url, &data, &["audit", "verify"]);
    let said = text(&verify);
    assert_eq!(verify.status.code(), Some(1), "verify fails after the rebuild:\n{said}");
    assert!(said.contains(&format!("message {forged_seq}")) && said.contains("not signed by the engine"), "{said}");
    assert!(said.contains(&format!("message {copy_seq}")) && said.contains("out of sequence"), "{said}");
    let path = other.commit.stream.path();
    assert!(
        said.contains(&format!("{path}: the commit holding event {}", other.commit.last_seq()))
            && said.contains("commits were removed"),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "{}: the commit holding event {}",
            closure.commit.stream.path(),
            closure.commit.last_seq()
        )),
        "the forged closure's conversation is named too:\n{said}"
    );
    // The forged closure is in no read model: the rebuilt log never credits mallory.
    let export = convo(&url, &data, &["audit", "export", "--actor", "mallory"]);
    assert!(export.status.success(), "{}", text(&export));
    assert!(export.stdout.is_empty(), "{}", String::from_utf8_lossy(&export.stdout));

    // Without the key, verify says it could not check signatures and anchors.
    let elsewhere = tempfile::tempdir().unwrap();
    let blind = convo(&url, elsewhere.path(), &["audit", "verify"]);
    assert!(text(&blind).contains("signatures and anchors NOT checked"), "{}", text(&blind));
}
