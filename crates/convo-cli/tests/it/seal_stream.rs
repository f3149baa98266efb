//! Upgrading a stream from before sealing (SPEC §13, "Upgrade") against the
//! real binary: a data directory whose stream holds names, handles and
//! texts in clear (an engine without data keys wrote them), with a gap (a
//! purged message), read models and a snapshot made from it. `convo
//! seal-stream` says what it would do, then rewrites it: every message keeps
//! its sequence, no file under the data directory and no message of any
//! stream holds those values in clear, what a later erasure forgot reads
//! `[erased]` (a rewrite brings nothing back), what was kept opens with its
//! key, the audit chain verifies (re-anchored, the heads recorded), and a
//! second run has nothing to do.

use std::path::Path;

use futures::StreamExt;
use serde_json::Value;

use convo_engine::Engine;
use convo_store::launcher::{LaunchOptions, NatsServer};
use convo_store::signing::Signing;
use convo_store::{EventStore, JetStreamStore, StoreConfig};

use super::{files_holding, raw_messages};

/// The contact the fixture erases by channel and handle, and what was theirs.
const ERASED: [&str; 3] = ["+573105550101", "Camila Rojas", "Quiero cambiar mi pedido"];
/// A contact nobody erased: sealed by the rewrite, readable with its key.
const KEPT_NAME: &str = "Rosalba Kept-Quintana";
const KEPT_TEXT: &str = "kept-9d41e2-sigo-aqui";
const KEPT_HANDLE: &str = "+573105550909";

fn convo(args: &[&str], dir: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_convo"))
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .expect("convo runs")
}

fn ok(out: &std::process::Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{what}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn holds(bytes: &[u8], needle: &str) -> bool {
    bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// The stream's messages (sequence, subject) as the main stream holds them.
fn main_stream(raw: &[(String, String, Vec<u8>)], stream: &str) -> Vec<String> {
    raw.iter().filter(|(at, _, _)| at.starts_with(&format!("{stream}#"))).map(|(at, _, _)| at.clone()).collect()
}

/// A day written by an engine without data keys (as before sealing) under
/// `dir`: the contact-handles day, in which the admin erases a contact, then
/// a message from a contact nobody erases; with messages purged long ago
/// (the stream's first, and one between two commits) and a snapshot that
/// holds a value in clear. The server is stopped when it returns.
async fn plaintext_day(dir: &Path) {
    let config = StoreConfig::for_prefix(convo_wire::DEFAULT_PREFIX);
    let mut text = std::fs::read_to_string(super::fixtures().join("contact-handles/input.jsonl")).unwrap();
    text.push_str(&format!(
        "{{\"at\": \"2026-03-22T15:00:00Z\", \"id\": \"wa-kept\", \"actor\": {{\"system\": \"whatsapp-gateway\"}}, \
         \"command\": {{\"type\": \"receive_message\", \"conversation\": \"c9\", \"handle\": \"{KEPT_HANDLE}\", \
         \"channel\": \"wa\", \"contact_name\": \"{KEPT_NAME}\", \"text\": \"{KEPT_TEXT}\"}}}}\n"
    ));
    let inputs: Vec<_> =
        convo_engine::scenario::parse(&text).unwrap().into_iter().map(|i| (i.envelope, i.at)).collect();
    let until = convo_domain::Timestamp::parse_rfc3339("2026-03-22T15:01:00Z").unwrap();
    let server = NatsServer::start(&LaunchOptions { data_dir: dir.join("nats"), ..Default::default() }).unwrap();
    let (signing, _) = Signing::open_or_create(dir, &config.stream, 0).unwrap();
    let plain = JetStreamStore::connect(&server.url(), StoreConfig { signing: Some(signing.into()), ..config.clone() })
        .await
        .unwrap();
    let purge = async || {
        let subject = format!("{}.default.conv.junk", config.prefix);
        let junk = plain.publish_raw(&subject, &[], b"junk".to_vec()).await.unwrap();
        assert!(plain.delete_message(junk).await.unwrap());
    };
    purge().await;
    let mut engine = Engine::recover(plain.clone()).await.unwrap();
    let (first, last) = inputs.split_at(inputs.len() - 1);
    engine.replay_until(first.to_vec(), Some(until)).await.unwrap();
    purge().await;
    engine.replay_until(last.to_vec(), Some(until)).await.unwrap();
    drop(engine);
    let snapshots = plain.snapshots().await.unwrap();
    snapshots.put_raw(0, 1, format!("CONVOSNP {}", ERASED[1]).as_bytes()).await.unwrap();
    let raw = raw_messages(&server.url()).await;
    for needle in ERASED.iter().chain(&[KEPT_NAME, KEPT_TEXT]) {
        assert!(raw.iter().any(|(_, _, p)| holds(p, needle)), "the stream holds {needle} in clear before");
    }
}

/// The server's messages under `dir`, read raw.
async fn raw_of(dir: &Path) -> Vec<(String, String, Vec<u8>)> {
    let server = NatsServer::start(&LaunchOptions { data_dir: dir.join("nats"), ..Default::default() }).unwrap();
    raw_messages(&server.url()).await
}

/// After a rewrite of the stream under `dir` (its messages before it
/// `before`): no message holds a value in clear, every message of the
/// stream is where it was, every commit is signed, what the erasure forgot
/// reads `[erased]` and what was kept opens with its key.
async fn check_sealed(dir: &Path, before: &[(String, String, Vec<u8>)]) {
    let config = StoreConfig::for_prefix(convo_wire::DEFAULT_PREFIX);
    let stream = config.stream.clone();
    let server = NatsServer::start(&LaunchOptions { data_dir: dir.join("nats"), ..Default::default() }).unwrap();
    let after = raw_messages(&server.url()).await;
    for needle in ERASED.iter().chain(&[KEPT_NAME, KEPT_TEXT, KEPT_HANDLE]) {
        let found: Vec<&String> = after.iter().filter(|(_, _, p)| holds(p, needle)).map(|(at, _, _)| at).collect();
        assert!(found.is_empty(), "{needle} read raw from {found:?}");
    }
    // Every message where it was, on its subject; no staging stream, no snapshot left.
    assert_eq!(main_stream(&after, &stream), main_stream(before, &stream));
    assert!(after.iter().all(|(at, _, _)| !at.contains("_RESEAL") && !at.contains("SNAPSHOTS")), "{after:?}");

    let signing = std::sync::Arc::new(Signing::open_or_create(dir, &stream, 0).unwrap().0);
    let store =
        JetStreamStore::connect(&server.url(), StoreConfig { signing: Some(signing.clone()), ..config }).await.unwrap();
    let keys = std::sync::Arc::new(store.keyring(signing.data_key_master()).await.unwrap());
    let store = store.with_keys(keys);
    // Every commit is signed by the engine's key (a read with it refuses any other).
    let last = store.last_seq().await.unwrap();
    let mut read = store.read(1).await.unwrap();
    let mut commits = 0;
    while let Some(item) = read.next().await {
        let stored = item.unwrap_or_else(|e| panic!("after the rewrite: {e}"));
        commits += 1;
        if stored.stream_seq >= last {
            break;
        }
    }
    assert_eq!(commits, main_stream(before, &stream).len());
    let texts = async |conversation: &str| {
        let id = convo_wire::StreamRef::Conversation(convo_domain::ConversationId::new(conversation).unwrap());
        let mut out = Vec::new();
        for stored in store.load(&convo_domain::AccountId::new("default").unwrap(), &id).await.unwrap() {
            for line in stored.unwrap().commit.json_lines() {
                if let Some(text) = line["text"].as_str() {
                    out.push(text.to_owned());
                }
            }
        }
        out
    };
    assert_eq!(texts("c1").await.first().map(String::as_str), Some("[erased]"));
    assert!(texts("c9").await.iter().any(|t| t == KEPT_TEXT));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_from_before_sealing_is_rewritten_sealed_in_place_and_forgets_nothing_it_forgot() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    plaintext_day(dir).await;
    // The read models are made from it.
    ok(&convo(&["audit", "catch-up"], dir), "audit catch-up");
    ok(&convo(&["report", "volume", "--account", "default"], dir), "report");
    for needle in ERASED.iter().chain(&[KEPT_NAME, KEPT_TEXT]) {
        assert!(!files_holding(dir, needle).is_empty(), "a file holds {needle} before");
    }
    let before = raw_of(dir).await;

    // Asked first, it says what it would do and writes nothing.
    let said = ok(&convo(&["seal-stream"], dir), "seal-stream");
    assert!(said.contains("hold personal data in clear") && said.contains("--rewrite"), "{said}");
    assert!(said.contains("1 erased contact(s)"), "{said}");
    assert_eq!(main_stream(&raw_of(dir).await, "CONVO"), main_stream(&before, "CONVO"));

    // An instance serving the stream stops it (nothing may append meanwhile): here a
    // heartbeat as a live one writes, with no server running beside this command.
    let server = NatsServer::start(&LaunchOptions { data_dir: dir.join("nats"), ..Default::default() }).unwrap();
    let store =
        JetStreamStore::connect(&server.url(), StoreConfig::for_prefix(convo_wire::DEFAULT_PREFIX)).await.unwrap();
    store.directory().await.unwrap().heartbeat("inst-7", &serde_json::json!({"partitions": [0]})).await.unwrap();
    drop(server);
    let out = convo(&["seal-stream", "--rewrite"], dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("an engine serves stream CONVO now: inst-7"), "{stderr}");
    assert_eq!(main_stream(&raw_of(dir).await, "CONVO"), main_stream(&before, "CONVO"));

    // A message the engine's key does not vouch for stops it: it would not re-sign it.
    let server = NatsServer::start(&LaunchOptions { data_dir: dir.join("nats"), ..Default::default() }).unwrap();
    let store =
        JetStreamStore::connect(&server.url(), StoreConfig::for_prefix(convo_wire::DEFAULT_PREFIX)).await.unwrap();
    store.directory().await.unwrap().leave("inst-7").await.unwrap();
    let forged = store.publish_raw("convo.default.conv.c9", &[], b"forged".to_vec()).await.unwrap();
    drop(server);
    let out = convo(&["seal-stream", "--rewrite"], dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains(&format!("stored message {forged}")), "{stderr}");
    assert!(stderr.contains("convo doctor --purge"), "{stderr}");
    ok(&convo(&["doctor", "--purge", &forged.to_string()], dir), "doctor --purge");

    let said = ok(&convo(&["seal-stream", "--rewrite"], dir), "seal-stream --rewrite");
    assert!(said.contains("each at its sequence (2 to ") && said.contains("2 gap(s) kept"), "{said}");
    assert!(said.contains("secure erase"), "{said}");

    // Nothing in clear anywhere: the server's files, the read models, the snapshot.
    for needle in ERASED.iter().chain(&[KEPT_NAME, KEPT_TEXT, KEPT_HANDLE]) {
        assert_eq!(files_holding(dir, needle), Vec::<String>::new(), "{needle} is still in a file\n{said}");
    }
    check_sealed(dir, &before).await;

    // The record verifies on the sealed bytes (signatures included); the rewrite is recorded.
    let verdict = ok(&convo(&["audit", "verify"], dir), "audit verify");
    assert!(verdict.contains("intact"), "{verdict}");
    let record = std::fs::read_to_string(dir.join(convo_store::signing::RESEALS_FILE)).unwrap();
    let record: Value = serde_json::from_str(record.lines().last().unwrap()).unwrap();
    let heads = &record["audit_heads"]["default"];
    assert!(heads["before"]["hash"].is_string() && heads["before"]["hash"] != heads["after"]["hash"], "{record}");
    assert_eq!(heads["before"]["n"], heads["after"]["n"], "the same entries, re-anchored: {record}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join(convo_store::signing::RESEALS_FILE)).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // A second run has nothing to do.
    let said = ok(&convo(&["seal-stream", "--rewrite"], dir), "seal-stream again");
    assert!(said.contains("nothing to rewrite"), "{said}");
}

/// A rewrite cut short at any step (a crash, a lost connection) is finished
/// by the next run, and the stream ends as an uncut rewrite leaves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewrite_cut_short_anywhere_is_finished_by_the_next_run() {
    use convo_store::reseal::{Cut, Outcome, reseal, reseal_until};
    for cut in [Cut::Staged, Cut::Erased, Cut::HalfFilled, Cut::Filled] {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path();
        plaintext_day(dir).await;
        let before = raw_of(dir).await;
        {
            let config = StoreConfig::for_prefix(convo_wire::DEFAULT_PREFIX);
            let server =
                NatsServer::start(&LaunchOptions { data_dir: dir.join("nats"), ..Default::default() }).unwrap();
            let signing = std::sync::Arc::new(Signing::open_or_create(dir, &config.stream, 0).unwrap().0);
            let connect = async || {
                let store = JetStreamStore::connect(
                    &server.url(),
                    StoreConfig { signing: Some(signing.clone()), ..config.clone() },
                )
                .await
                .unwrap();
                let keys = store.keyring(signing.data_key_master()).await.unwrap();
                (store, keys)
            };
            let (store, keys) = connect().await;
            let cut_short = reseal_until(&store, &keys, &signing, &|_, _, _| {}, Some(cut)).await;
            assert!(matches!(cut_short, Err(convo_store::StoreError::Unavailable(_))), "{cut:?}: {cut_short:?}");
            // The next run connects afresh (a stream deleted by the cut is made again, empty).
            let (store, keys) = connect().await;
            match reseal(&store, &keys, &signing, &|_, _, _| {}).await.unwrap() {
                Outcome::Rewritten(report) => {
                    assert!(report.resumed && report.rewritten > 0 && report.gaps == 1, "{cut:?}: {report:?}")
                }
                other => panic!("{cut:?}: {other:?}"),
            }
        }
        check_sealed(dir, &before).await;
    }
}

/// A stored data key as the keys stream holds it (postcard: the contact
/// whose key wraps it, none for the master, and the wrapped bytes).
#[derive(serde::Deserialize)]
struct StoredKey {
    wrapped_by: Option<String>,
    sealed: Vec<u8>,
}

/// The wrapped bytes of every key the master wraps, as the keys stream holds them now.
fn master_wrapped(raw: &[(String, String, Vec<u8>)]) -> Vec<Vec<u8>> {
    raw.iter()
        .filter(|(at, _, _)| at.starts_with("CONVO_KEYS#"))
        .filter_map(|(_, _, payload)| postcard::from_bytes::<StoredKey>(payload).ok())
        .filter(|k| k.wrapped_by.is_none())
        .map(|k| k.sealed)
        .collect()
}

/// Rotating the data-key master: every key the old master wrapped is
/// wrapped again by a new random one (the old wrapped bytes are in no file
/// afterwards), everything still opens, a copy of the engine's key from
/// before opens nothing (an engine started with it stops), and a rotation
/// cut short is finished by the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_master_leaves_nothing_the_old_one_opens() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    plaintext_day(dir).await;
    let before = raw_of(dir).await;
    ok(&convo(&["seal-stream", "--rewrite"], dir), "seal-stream --rewrite");
    let said = ok(&convo(&["keys", "status"], dir), "keys status");
    assert!(said.contains("generation 0 (derived from engine.key)"), "{said}");
    let old_key = std::fs::read(dir.join("engine.key")).unwrap();
    let old_wrapped = master_wrapped(&raw_of(dir).await);
    assert!(old_wrapped.len() > 2, "contact keys and the canary");
    for wrapped in &old_wrapped {
        assert!(!files_holding(dir, wrapped).is_empty(), "the server's files hold each wrapped key");
    }

    // A rotation cut short after one key: the key file holds both masters, and the status says so.
    {
        let server = NatsServer::start(&LaunchOptions { data_dir: dir.join("nats"), ..Default::default() }).unwrap();
        let config = StoreConfig::for_prefix(convo_wire::DEFAULT_PREFIX);
        let signing = Signing::open(dir, &config.stream).unwrap().unwrap();
        let signing = signing.begin_master_rotation(dir).unwrap();
        let store = JetStreamStore::connect(&server.url(), config).await.unwrap();
        let keys = store.keyring_of(&signing).await.unwrap();
        assert!(keys.rewrap(Some(1)).await.is_err());
    }
    let said = ok(&convo(&["keys", "status"], dir), "keys status");
    assert!(said.contains("generation 1") && said.contains("rotation is unfinished"), "{said}");
    let said = ok(&convo(&["keys", "rotate"], dir), "keys rotate");
    assert!(said.contains("rotated to generation 1") && said.contains("1 already wrapped by it"), "{said}");
    let said = ok(&convo(&["keys", "status"], dir), "keys status");
    assert!(said.contains("generation 1 (random") && !said.contains("unfinished"), "{said}");

    // Nothing the old master wrapped is left in any file; everything opens with the new one.
    for wrapped in &old_wrapped {
        assert_eq!(files_holding(dir, wrapped), Vec::<String>::new());
    }
    check_sealed(dir, &before).await;
    let verdict = ok(&convo(&["audit", "verify"], dir), "audit verify");
    assert!(verdict.contains("intact"), "{verdict}");

    // The engine's key from before the rotation opens nothing: a tool started with it stops.
    std::fs::write(dir.join("engine.key"), &old_key).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("engine.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = convo(&["contact", "ct-none", "export", "--account", "default"], dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("does not open this stream's data keys"), "{stderr}");
}
