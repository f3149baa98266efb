//! Whatever a stream holds, recovery, `convo tail`, the read models and
//! `convo serve` go on: a republished copy of an old commit, a commit on
//! another account's subject, an undecodable payload, an unknown schema
//! version, and deleted messages (one in the middle, and the newest). Each
//! bad message is put into a real stream as any NATS client could;
//! `convo doctor` lists them and purges them.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use convo_domain::{AccountId, ConversationId};
use convo_store::launcher::{LaunchOptions, NatsServer};
use convo_store::{EventStore, JetStreamStore, StoreConfig};
use convo_wire::StreamRef;
use serde_json::{Value, json};

use crate::crash::serve_prefix;

const PREFIX: &str = "bad";

/// Runs `convo` with the connection flags, failing the test if it takes
/// longer than 60 s (a reader waiting for a deleted message would hang).
fn convo(url: &str, args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_convo"))
        .args(args)
        .args(["--nats-url", url, "--prefix", PREFIX])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("convo runs");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("convo {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

async fn request(url: &str, id: &str, conversation: &str) -> Option<Value> {
    let body = json!({"id": id, "command": {"type": "receive_message",
        "conversation": conversation, "contact": "ct-0005", "channel": "wa", "text": "Hola"}});
    let client = convo_store::connect(url).await.ok()?;
    let subject = format!("{PREFIX}.default.cmd.receive_message");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(convo_store::bus::AUTHORIZATION, format!("Bearer {}", crate::crash::OPERATOR).as_str());
    let reply = tokio::time::timeout(
        Duration::from_secs(3),
        client.request_with_headers(subject, headers, body.to_string().into()),
    )
    .await
    .ok()?
    .ok()?;
    serde_json::from_slice(&reply.payload).ok()
}

/// Sends until the engine answers (it may still be starting).
async fn request_retrying(url: &str, id: &str, conversation: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(reply) = request(url, id, conversation).await {
            return reply;
        }
        assert!(Instant::now() < deadline, "the engine never answered {id}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_tail_read_models_and_serve_survive_whatever_the_stream_holds() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&LaunchOptions {
        data_dir: dir.path().to_path_buf(),
        mappings: vec![convo_store::bus::partition_mapping(PREFIX, 2)],
        ..Default::default()
    })
    .unwrap();
    let url = nats.url();
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../replay-fixtures/sla-worked-example/input.jsonl");
    let replay = Command::new(env!("CARGO_BIN_EXE_convo"))
        .args(["replay-traffic", fixture.to_str().unwrap(), "--nats-url", &url, "--prefix", PREFIX, "--no-events"])
        .output()
        .unwrap();
    assert!(replay.status.success(), "{}", String::from_utf8_lossy(&replay.stderr));
    let store = JetStreamStore::connect(&url, StoreConfig::for_prefix(PREFIX)).await.unwrap();
    let account = AccountId::new("default").unwrap();
    let c1 = StreamRef::Conversation(ConversationId::new("c1").unwrap());

    // An open conversation, so that poison on its subject matters to the next command.
    let mut served = serve_prefix(&nats, PREFIX);
    let opened = request_retrying(&url, "fresh-1", "fresh").await;
    assert_eq!(opened["outcome"], "committed", "{opened}");

    let middle = store
        .publish_raw(&format!("{PREFIX}.default.conv.yy.message"), &[("Convo-Schema", "1")], b"gone soon".to_vec())
        .await
        .unwrap();
    // 1. A republished copy of an old commit, on its own subject.
    let old = store.load(&account, &c1).await.unwrap().remove(0).unwrap().commit;
    let headers: Vec<(&str, String)> = old.headers();
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let copy = store.publish_raw(&old.subject(PREFIX), &headers, old.encode().unwrap()).await.unwrap();
    // 2. The same commit on another account's subject.
    let misplaced =
        store.publish_raw(&format!("{PREFIX}.other.conv.c1.opened"), &headers, old.encode().unwrap()).await.unwrap();
    // 3. Bytes that are no commit, on the open conversation's subject.
    let garbage = store
        .publish_raw(
            &format!("{PREFIX}.default.conv.fresh.message"),
            &[("Convo-Schema", "1")],
            b"\x88 not postcard".to_vec(),
        )
        .await
        .unwrap();
    // 4. A version this build does not know.
    let future = store
        .publish_raw(&format!("{PREFIX}.default.conv.c1.message"), &[("Convo-Schema", "99")], old.encode().unwrap())
        .await
        .unwrap();
    // 5. A deleted message in the middle, and a newest message deleted.
    assert!(store.delete_message(middle).await.unwrap());
    let doomed = store
        .publish_raw(&format!("{PREFIX}.default.conv.zz.message"), &[("Convo-Schema", "1")], b"soon gone".to_vec())
        .await
        .unwrap();
    assert!(store.delete_message(doomed).await.unwrap());

    // The running engine meets the poison on the open conversation: its next
    // command there still commits (the broker counts the poison; the engine learns it).
    let next = request_retrying(&url, "fresh-2", "fresh").await;
    assert_eq!(next["outcome"], "committed", "{next}");

    // Readers that stop at the end do stop, and say what they stepped over.
    let tail = convo(&url, &["tail", "--no-follow"]);
    assert!(tail.status.success(), "{}", String::from_utf8_lossy(&tail.stderr));
    let stderr = String::from_utf8_lossy(&tail.stderr);
    assert!(stderr.contains(&format!("skipping message {garbage}")), "{stderr}");
    let catch_up = convo(&url, &["audit", "catch-up", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(catch_up.status.success(), "{}", String::from_utf8_lossy(&catch_up.stderr));

    // `convo doctor` lists exactly the four that cannot be applied.
    let doctor = convo(&url, &["doctor"]);
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert_eq!(doctor.status.code(), Some(1), "{text}");
    for seq in [copy, misplaced, garbage, future] {
        assert!(text.lines().any(|l| l.trim_start().starts_with(&format!("{seq} "))), "{seq} listed:\n{text}");
    }
    assert!(text.contains("out of sequence") && text.contains("belongs on") && text.contains("unknown"), "{text}");

    // A restarted engine recovers past all of it and serves.
    served.restart(&nats, PREFIX);
    let after = request_retrying(&url, "fresh-3", "fresh").await;
    assert_eq!(after["outcome"], "committed", "{after}");
    let repeat = request_retrying(&url, "fresh-2", "fresh").await;
    assert_eq!(repeat["outcome"], "duplicate", "{repeat}");

    // Purged, the log is clean, and the engine goes on.
    let purge = convo(
        &url,
        &["doctor", "--purge", &copy.to_string(), &misplaced.to_string(), &garbage.to_string(), &future.to_string()],
    );
    assert!(purge.status.success(), "{}", String::from_utf8_lossy(&purge.stderr));
    let refused = convo(&url, &["doctor", "--purge", "1"]);
    assert!(!refused.status.success(), "a good commit is not purged");
    let clean = convo(&url, &["doctor"]);
    assert!(clean.status.success(), "{}", String::from_utf8_lossy(&clean.stdout));
    let last = request_retrying(&url, "fresh-4", "fresh").await;
    assert_eq!(last["outcome"], "committed", "{last}");
    served.kill();
}
