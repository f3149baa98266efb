//! convo-store's tests: one contract, checked against the memory store and
//! against JetStream on a real nats-server started for the test.

use std::time::Duration;

use convo_domain::conversation::CloseReason;
use convo_domain::{AccountId, Actor, CommandId, ConversationEvent, ConversationId, Recorded, Timestamp};
use convo_store::launcher::{LaunchOptions, NatsServer};
use convo_store::{EventStore, JetStreamStore, MemoryStore, StoreConfig, StoreError};
use convo_wire::{Commit, StreamRef};
use futures::StreamExt;

fn account() -> AccountId {
    AccountId::new("acme").unwrap()
}

fn stream(id: &str) -> StreamRef {
    StreamRef::Conversation(ConversationId::new(id).unwrap())
}

/// A commit of `n` events for `conversation`, starting after `seq`.
fn commit(conversation: &str, seq: u64, n: u64, command: &str) -> Commit {
    let records = (1..=n)
        .map(|i| Recorded {
            seq: seq + i,
            at: Timestamp::from_millis(1_000 * (seq + i) as i64),
            command: CommandId::new(command).unwrap(),
            actor: Actor::system("test"),
            event: ConversationEvent::LabelAdded { label: format!("l{}", seq + i) },
        })
        .collect();
    Commit::new(&account(), stream(conversation), None, records).unwrap()
}

fn closing(conversation: &str, seq: u64) -> Commit {
    let record = Recorded {
        seq: seq + 1,
        at: Timestamp::from_millis(99_000),
        command: CommandId::new("close-1").unwrap(),
        actor: Actor::system("test"),
        event: ConversationEvent::ConversationClosed {
            reason: CloseReason::System,
            typification: None,
            agent: None,
            segment: 0,
        },
    };
    Commit::new(&account(), stream(conversation), None, vec![record]).unwrap()
}

/// A batch as `append_batch` takes it.
fn refs(batch: &[(Commit, u64)]) -> Vec<(&Commit, u64)> {
    batch.iter().map(|(c, e)| (c, *e)).collect()
}

/// The contract every store keeps.
async fn contract(store: &impl EventStore) {
    assert_eq!(store.last_seq().await.unwrap(), 0);
    // A new aggregate is appended with expectation 0.
    let s1 = store.append(&commit("c1", 0, 3, "a"), 0).await.unwrap();
    // Another aggregate interleaves freely.
    let s2 = store.append(&commit("c2", 0, 1, "b"), 0).await.unwrap();
    assert!(s2 > s1);
    // A stale expectation is a conflict and writes nothing.
    let stale = store.append(&commit("c1", 3, 1, "c"), 0).await;
    assert!(matches!(stale, Err(StoreError::Conflict { .. })), "{stale:?}");
    let s3 = store.append(&commit("c1", 3, 2, "d"), s1).await.unwrap();
    // Two writers deciding from the same state: exactly one wins.
    let (e, f) = (commit("c1", 5, 1, "e"), commit("c1", 5, 1, "f"));
    let (x, y) = tokio::join!(store.append(&e, s3), store.append(&f, s3));
    assert_eq!([&x, &y].iter().filter(|r| r.is_ok()).count(), 1, "{x:?} {y:?}");
    assert!([&x, &y].iter().any(|r| matches!(r, Err(StoreError::Conflict { .. }))));
    // The expectation covers all of the aggregate's subjects: a closure (another
    // subject) decided from a stale state is a conflict too.
    assert!(matches!(store.append(&closing("c1", 5), s3).await, Err(StoreError::Conflict { .. })));
    // Loading returns the aggregate's commits in order, nothing else.
    let loaded: Vec<_> = store.load(&account(), &stream("c1")).await.unwrap().into_iter().map(Result::unwrap).collect();
    let seqs: Vec<(u64, u64)> = loaded.iter().map(|s| (s.commit.first_seq(), s.commit.last_seq())).collect();
    assert_eq!(seqs, [(1, 3), (4, 5), (6, 6)]);
    assert!(loaded.windows(2).all(|w| w[0].stream_seq < w[1].stream_seq));
    assert_eq!(loaded[0].commit, commit("c1", 0, 3, "a"));
    assert!(store.load(&account(), &stream("nobody")).await.unwrap().is_empty());
    // Following the log from a sequence sees what is there and what comes next.
    let last = store.last_seq().await.unwrap();
    let mut follow = store.subscribe(2).await.unwrap();
    let first = follow.next().await.unwrap().unwrap();
    assert_eq!(first.stream_seq, 2);
    for _ in 3..=last {
        follow.next().await.unwrap().unwrap();
    }
    let appended = store.append(&commit("c2", 1, 1, "g"), s2).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), follow.next())
        .await
        .expect("a new commit arrives")
        .unwrap()
        .unwrap();
    assert_eq!(next.stream_seq, appended);
    assert_eq!(store.last_seq().await.unwrap(), appended);
    // A read stops at the log's end as of its start.
    let read: Vec<u64> = store.read(2).await.unwrap().map(|i| i.unwrap().stream_seq).collect().await;
    assert_eq!(read, (2..=appended).collect::<Vec<_>>());
    assert_eq!(store.read(appended + 1).await.unwrap().count().await, 0);
    batches(store, appended).await;
}

/// Group commit's part of the contract: a batch of commits of distinct
/// aggregates is stored whole, at consecutive places, or not at all.
async fn batches(store: &impl EventStore, end: u64) {
    assert!(store.batch_commits_max() > 1, "this store takes batches");
    let batch = vec![(commit("b1", 0, 1, "h"), 0), (commit("b2", 0, 2, "i"), 0), (commit("b3", 0, 1, "j"), 0)];
    let seqs = store.append_batch(&refs(&batch)).await.unwrap();
    assert_eq!(seqs, vec![end + 1, end + 2, end + 3]);
    let loaded = store.load(&account(), &stream("b2")).await.unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].as_ref().unwrap().stream_seq, end + 2);
    // One stale expectation refuses the whole batch: nothing of it is written.
    let stale = vec![(commit("b4", 0, 1, "k"), 0), (commit("b1", 1, 1, "l"), 0), (commit("b5", 0, 1, "m"), 0)];
    let refused = store.append_batch(&refs(&stale)).await;
    assert!(matches!(refused, Err(StoreError::Conflict { .. } | StoreError::Refused(_))), "{refused:?}");
    assert_eq!(store.last_seq().await.unwrap(), end + 3);
    assert!(store.load(&account(), &stream("b4")).await.unwrap().is_empty());
    // Appended one by one after a failed batch, each learns its own outcome.
    assert_eq!(store.append(&stale[0].0, 0).await.unwrap(), end + 4);
    assert!(matches!(store.append(&stale[1].0, 0).await, Err(StoreError::Conflict { .. })));
}

#[tokio::test]
async fn the_memory_store_keeps_the_contract() {
    contract(&MemoryStore::default()).await;
}

struct Broker {
    server: NatsServer,
    _dir: tempfile::TempDir,
}

fn broker() -> Broker {
    broker_with(false)
}

fn broker_with(sync_always: bool) -> Broker {
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(&LaunchOptions {
        data_dir: dir.path().to_path_buf(),
        lazy_fsync: !sync_always,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    Broker { server, _dir: dir }
}

#[tokio::test]
async fn jetstream_keeps_the_contract_on_a_real_server() {
    let broker = broker();
    let store = JetStreamStore::connect(&broker.server.url(), StoreConfig::default()).await.unwrap();
    convo_store::check_server_version(&store.server_version()).expect("the bundled server is recent");
    contract(&store).await;
}

/// The durable setting (fsync on every append) keeps the same contract.
#[tokio::test]
async fn jetstream_with_sync_always_keeps_the_contract() {
    let broker = broker_with(true);
    let config = std::fs::read_to_string(broker.server.data_dir.join("nats-server.conf")).unwrap();
    assert!(config.contains("sync_interval: always"), "{config}");
    let store = JetStreamStore::connect(&broker.server.url(), StoreConfig::default()).await.unwrap();
    contract(&store).await;
}

#[tokio::test]
async fn integrators_subscribe_with_plain_wildcards() {
    let broker = broker();
    let store = JetStreamStore::connect(&broker.server.url(), StoreConfig::default()).await.unwrap();
    let client = convo_store::connect(&broker.server.url()).await.unwrap();
    let mut closures = client.subscribe("convo.*.conv.*.closed").await.unwrap();
    client.flush().await.unwrap();
    let seq = store.append(&commit("c9", 0, 2, "a"), 0).await.unwrap();
    store.append(&closing("c9", 2), seq).await.unwrap();
    let message = tokio::time::timeout(Duration::from_secs(10), closures.next()).await.unwrap().unwrap();
    assert_eq!(message.subject.as_str(), "convo.acme.conv.c9.closed");
    let headers = message.headers.unwrap();
    assert_eq!(headers.get(convo_wire::headers::KIND).unwrap().as_str(), "closed");
    assert_eq!(headers.get(convo_wire::headers::EVENTS).unwrap().as_str(), "conversation_closed");
    let commit = convo_wire::decode(1, &message.payload).unwrap();
    assert_eq!(commit.last_seq(), 3);
}

#[tokio::test]
async fn a_commit_over_the_size_limit_is_refused_and_nothing_is_written() {
    let broker = broker();
    let store = JetStreamStore::connect(&broker.server.url(), StoreConfig::default()).await.unwrap();
    let records = vec![Recorded {
        seq: 1,
        at: Timestamp::from_millis(0),
        command: CommandId::new("big").unwrap(),
        actor: Actor::system("test"),
        event: ConversationEvent::DynamicFieldSet {
            field: "f".into(),
            value: "x".repeat(convo_wire::COMMIT_BYTES_MAX),
        },
    }];
    let big = Commit::new(&account(), stream("c1"), None, records).unwrap();
    assert!(matches!(store.append(&big, 0).await, Err(StoreError::Refused(_))));
    assert_eq!(store.last_seq().await.unwrap(), 0);
}

#[tokio::test]
async fn snapshots_are_written_replaced_and_read_back() {
    use convo_store::snapshot::Snapshot;
    let broker = broker();
    let store = JetStreamStore::connect(&broker.server.url(), StoreConfig::default()).await.unwrap();
    let snapshots = store.snapshots().await.unwrap();
    let wait = std::time::Duration::from_secs(5);
    let none = tokio::time::timeout(wait, snapshots.get(0, 2)).await.expect("answers at once");
    assert_eq!(none, Ok(None), "no snapshot yet");
    for covered in [5, 9] {
        let snapshot = Snapshot { partition: 0, count: 2, covered, commits: Vec::new() };
        tokio::time::timeout(wait, snapshots.put(&snapshot)).await.expect("written at once").unwrap();
        let read = tokio::time::timeout(wait, snapshots.get(0, 2)).await.expect("read at once");
        assert_eq!(read, Ok(Some(snapshot)));
    }
    let listed = snapshots.list().await.unwrap();
    assert_eq!(
        listed.iter().map(|(name, _, _, covered)| (name.as_str(), *covered)).collect::<Vec<_>>(),
        [("partition-0-of-2", 9)]
    );
}

/// A stream made before contacts existed (three subject families) takes the
/// contact book's subjects when the engine connects, and keeps its commits.
#[tokio::test]
async fn a_stream_from_before_contacts_takes_their_subjects() {
    let broker = broker();
    let client = convo_store::connect(&broker.server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let old = ["convo.*.conv.>", "convo.*.agent.>", "convo.*.config.>"].map(String::from).to_vec();
    js.create_stream(async_nats::jetstream::stream::Config {
        name: StoreConfig::default().stream,
        subjects: old,
        allow_direct: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let store = JetStreamStore::connect(&broker.server.url(), StoreConfig::default()).await.unwrap();
    let seq = store.append(&commit("c1", 0, 1, "a"), 0).await.unwrap();
    let mut stream = js.get_stream(StoreConfig::default().stream).await.unwrap();
    let subjects = stream.info().await.unwrap().config.subjects.clone();
    assert!(subjects.contains(&"convo.*.contacts.>".to_owned()), "{subjects:?}");
    // Connecting again changes nothing, and the commit is there.
    let again = JetStreamStore::connect(&broker.server.url(), StoreConfig::default()).await.unwrap();
    assert_eq!(again.last_seq().await.unwrap(), seq);
}

/// The partition fence: a deposed holder's appends are refused by the
/// server, even one sent after its successor's marker; a holder that
/// advances its own fence (after an unknown outcome) sees its in-flight
/// appends as conflicts, not as a deposition; readers never see a marker,
/// and the log's end is the last commit's.
#[tokio::test]
async fn the_fence_refuses_a_deposed_holders_appends() {
    let broker = broker();
    let store = JetStreamStore::connect(&broker.server.url(), StoreConfig::default()).await.unwrap();
    let first = store.take_fence(0, "a").await.unwrap();
    let a = store.fenced(first.clone());
    let s1 = a.append(&commit("c1", 0, 1, "a1"), 0).await.unwrap();
    // Pipelined commits of other aggregates do not move the fence.
    a.append(&commit("c2", 0, 1, "a2"), 0).await.unwrap();
    assert_eq!(store.fence_position(0).await.unwrap(), first.epoch());
    // A successor takes the partition: its marker refuses everything of the first holder from now on.
    let second = store.take_fence(0, "b").await.unwrap();
    assert!(second.epoch() > first.epoch());
    let late = a.append(&commit("c3", 0, 1, "a3"), 0).await;
    assert!(matches!(late, Err(StoreError::Deposed { partition: 0, .. })), "{late:?}");
    let b = store.fenced(second.clone());
    let s3 = b.append(&commit("c1", 1, 1, "b1"), s1).await.unwrap();
    // The successor's own advance (an unknown outcome) makes its stale epoch a conflict, not a deposition.
    second.mark_dirty();
    b.load(&account(), &stream("c1")).await.unwrap();
    assert!(!second.dirty() && second.epoch() > s3);
    // Another partition's fence is its own.
    let other = store.take_fence(1, "a").await.unwrap();
    store.fenced(other).append(&commit("c9", 0, 1, "x1"), 0).await.unwrap();
    // Readers see commits only; the end is the last commit even with a marker after it.
    store.take_fence(1, "c").await.unwrap();
    let end = store.last_seq().await.unwrap();
    let mut log = store.read(1).await.unwrap();
    let mut seen = Vec::new();
    while let Some(item) = log.next().await {
        seen.push(item.unwrap().stream_seq);
    }
    assert_eq!(seen.len(), 4, "four commits, no markers: {seen:?}");
    assert_eq!(seen.last(), Some(&end));
}

/// A JSON stream larger than the server's JetStream store can reserve is
/// refused with what to change, not a bare broker code.
#[tokio::test]
async fn a_json_stream_the_server_cannot_reserve_is_refused_with_what_to_change() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = dir.path().join("nats.conf");
    std::fs::write(
        &config,
        format!("listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: {:?}\n  max_file_store: 64MB\n}}\n", dir.path()),
    )
    .unwrap();
    let mut child = std::process::Command::new(NatsServer::find_binary().unwrap())
        .arg("-c")
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("nats://127.0.0.1:{port}");
    let mut store = None;
    for _ in 0..100 {
        if let Ok(s) = JetStreamStore::connect(&url, StoreConfig::default()).await {
            store = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let store = store.expect("the server accepts connections");
    let error = convo_store::json_stream::ensure(&store, &convo_store::json_stream::JsonStreamConfig::default())
        .await
        .map(drop)
        .unwrap_err();
    child.kill().unwrap();
    child.wait().unwrap();
    let StoreError::Refused(text) = &error else { panic!("{error:?}") };
    assert!(text.contains("--json-stream-max-bytes") && text.contains("CONVO_JSON"), "{text}");
}

/// Group commit's fallback on a real server: a batch holding a commit that
/// is already stored (its acknowledgement was lost) is refused whole, and
/// appended again one by one that commit is not written twice: its own
/// expectation no longer holds (a conflict: the machine reads the aggregate
/// back and finds it there), or — fenced, where the expectation is the
/// partition's — its message id makes it a duplicate at its place.
#[tokio::test]
async fn a_batch_repeating_a_stored_commit_is_refused_and_its_repeat_is_a_duplicate() {
    let broker = broker_with(true);
    let store = JetStreamStore::connect(&broker.server.url(), StoreConfig::default()).await.unwrap();
    let first = commit("d1", 0, 1, "a");
    let at = store.append(&first, 0).await.unwrap();
    let batch = vec![(commit("d2", 0, 1, "b"), 0), (first.clone(), 0)];
    let refused = store.append_batch(&refs(&batch)).await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(store.last_seq().await.unwrap(), at, "nothing of the refused batch is stored");
    // One by one: the repeat is never a second copy.
    let again = store.append(&first, 0).await;
    assert!(matches!(again, Ok(seq) if seq == at) || matches!(again, Err(StoreError::Conflict { .. })), "{again:?}");
    assert_eq!(store.append(&batch[0].0, 0).await.unwrap(), at + 1);
    assert_eq!(store.last_seq().await.unwrap(), at + 1);
    // Fenced (as `serve` appends): the repeat comes back as a duplicate at its place.
    let fenced = store.fenced(store.take_fence(0, "test").await.unwrap());
    let third = commit("d3", 0, 1, "c");
    let placed = fenced.append(&third, 0).await.unwrap();
    assert!(fenced.append_batch(&[(&commit("d4", 0, 1, "d"), 0), (&third, 0)]).await.is_err());
    assert_eq!(fenced.append(&third, 0).await.unwrap(), placed);
    assert_eq!(
        fenced.append_batch(&[(&commit("d4", 0, 1, "d"), 0), (&commit("d5", 0, 1, "e"), 0)]).await.unwrap(),
        vec![placed + 1, placed + 2]
    );
}

/// The JSON republisher, run again over what it has already republished
/// (its checkpoint lost), adds no second copy.
#[tokio::test]
async fn the_json_stream_is_republished_once_whatever_the_checkpoint() {
    let broker = broker_with(true);
    let store = JetStreamStore::connect(&broker.server.url(), StoreConfig::default()).await.unwrap();
    for n in 0..40 {
        store.append(&commit(&format!("j{n}"), 0, 2, &format!("cmd-{n}")), 0).await.unwrap();
    }
    let end = store.last_seq().await.unwrap();
    let config = convo_store::json_stream::JsonStreamConfig { max_bytes: 8 << 20, ..Default::default() };
    let count = || async {
        let js = async_nats::jetstream::new(store.client().clone());
        let mut json = js.get_stream("CONVO_JSON").await.unwrap();
        json.info().await.unwrap().state.messages
    };
    for round in 0..2 {
        let (js, kv) = convo_store::json_stream::ensure(&store, &config).await.unwrap();
        drop(js);
        if round == 1 {
            kv.delete("republished").await.unwrap(); // as if the checkpoint were lost
        }
        let redactions = std::sync::Arc::new(convo_wire::redact::Redactions::default());
        redactions.mark_ready();
        let reached = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let task = tokio::spawn({
            let (store, config, reached) = (store.clone(), config.clone(), reached.clone());
            async move {
                let progress = move |at: u64| reached.store(at, std::sync::atomic::Ordering::Relaxed);
                convo_store::json_stream::republish(&store, redactions, &config, &progress).await
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while reached.load(std::sync::atomic::Ordering::Relaxed) < end {
            assert!(std::time::Instant::now() < deadline, "the republisher reached {reached:?} of {end}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        task.abort();
        assert_eq!(count().await, 80, "round {round}: every event once");
    }
}

/// A keys stream opens only with the master key that made it: an engine
/// started with another `engine.key` stops with a message instead of
/// reading every personal value as `[erased]` and sealing new ones with
/// keys no other instance could open. A stream whose keys predate the
/// canary is checked by its first contact key.
#[tokio::test]
async fn the_data_keys_refuse_a_master_key_that_is_not_theirs() {
    use convo_domain::contact::{ContactEvent, ContactSpec, Identity};
    let broker = broker();
    let store = JetStreamStore::connect(&broker.server.url(), StoreConfig::default()).await.unwrap();
    let keys = store.keyring([1; 32]).await.expect("the first master writes the canary");
    let spec = ContactSpec {
        id: convo_domain::ContactId::new("ct-1").unwrap(),
        name: "Camila".into(),
        identities: vec![Identity { channel: convo_domain::ChannelId::new("wa").unwrap(), handle: "+57300".into() }],
        attributes: Default::default(),
        labels: Vec::new(),
    };
    let record = Recorded {
        seq: 1,
        at: Timestamp::from_millis(1_000),
        command: CommandId::new("define-1").unwrap(),
        actor: Actor::system("test"),
        event: ContactEvent::ContactDefined(spec),
    };
    let defined = Commit::new(&account(), StreamRef::Contacts, None, vec![record]).unwrap();
    keys.prepare(&[&defined]).await.expect("the contact's key is made");
    store.keyring([1; 32]).await.expect("the same master opens them again");
    let refused = |result: Result<convo_store::keys::Keyring, StoreError>| match result {
        Err(StoreError::Refused(why)) => assert!(why.contains("engine.key"), "{why}"),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("another master opened the stream's keys"),
    };
    refused(store.keyring([2; 32]).await);
    // Keys from before the canary: the first contact key decides.
    let keys_stream = store.jetstream().get_stream("CONVO_KEYS").await.unwrap();
    keys_stream.purge().filter("convo-keys.CONVO.canary").await.unwrap();
    refused(store.keyring([2; 32]).await);
    store.keyring([1; 32]).await.expect("the right master writes the canary again");
    refused(store.keyring([2; 32]).await);
}
