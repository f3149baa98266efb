//! The engine against a real nats-server started for each test.

use std::path::{Path, PathBuf};
use std::time::Duration;

use convo_domain::conversation::Status;
use convo_domain::{AccountId, CommandEnvelope, ConversationId, Timestamp};
use convo_engine::clock::ManualClock;
use convo_engine::scenario;
use convo_engine::{Engine, Outcome};
use convo_store::launcher::{LaunchOptions, NatsServer};
use convo_store::{EventStore, JetStreamStore, StoreConfig};

struct Broker {
    server: NatsServer,
    _dir: tempfile::TempDir,
}

fn broker() -> Broker {
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(&LaunchOptions { data_dir: dir.path().to_path_buf(), ..Default::default() })
        .unwrap_or_else(|e| panic!("{e}"));
    Broker { server, _dir: dir }
}

async fn store(broker: &Broker, name: &str) -> JetStreamStore {
    let config = StoreConfig { prefix: format!("t{name}"), stream: format!("T{name}"), ..StoreConfig::default() };
    JetStreamStore::connect(&broker.server.url(), config).await.unwrap()
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../replay-fixtures")
}

fn inputs(name: &str) -> Vec<(CommandEnvelope, Timestamp)> {
    let text = std::fs::read_to_string(fixtures().join(name).join("input.jsonl")).unwrap();
    scenario::parse(&text).unwrap().into_iter().map(|i| (i.envelope, i.at)).collect()
}

#[tokio::test]
async fn two_engines_on_one_conversation_leave_no_fork() {
    let broker = broker();
    let fixture = inputs("sla-worked-example");
    // Engine A configures the account and opens the conversation.
    let split = fixture.iter().position(|(e, _)| e.command.type_name() == "receive_message").unwrap();
    let mut a = Engine::recover(store(&broker, "fork").await).await.unwrap();
    a.replay(fixture[..=split].to_vec()).await.unwrap();
    // Engine B starts from the same log, then A moves on without B knowing.
    let mut b = Engine::recover(store(&broker, "fork").await).await.unwrap();
    let (reply, at) = fixture[split + 1].clone();
    assert!(matches!(a.execute(&reply, at).await.unwrap(), Outcome::Committed { .. }));
    // B decides the next command from its stale state: it loses the race,
    // reads what it missed, decides again and commits after A's commit.
    let (next, at2) = fixture[split + 2].clone();
    let Outcome::Committed { commit, .. } = b.execute(&next, at2).await.unwrap() else {
        panic!("B commits after catching up")
    };
    let account = AccountId::new("default").unwrap();
    let conversation = ConversationId::new("c1").unwrap();
    let loaded = b.store().load(&account, &convo_wire::StreamRef::Conversation(conversation.clone())).await.unwrap();
    let mut expected_seq = 1;
    for stored in &loaded {
        for event in &stored.as_ref().unwrap().commit.events {
            assert_eq!(event.seq, expected_seq, "one history, no fork");
            expected_seq += 1;
        }
    }
    assert_eq!(commit.last_seq(), expected_seq - 1);
    // And the same command again is a duplicate, on either engine (A learns
    // of B's commit from the conflict its stale decision meets).
    assert!(matches!(b.execute(&next, at2).await.unwrap(), Outcome::Duplicate { .. }));
    assert!(matches!(a.execute(&next, at2).await.unwrap(), Outcome::Duplicate { .. }));
}

#[tokio::test]
async fn after_a_restart_the_state_and_pending_timers_come_back_from_the_log() {
    let broker = broker();
    let fixture = inputs("inactivity-two-attempts");
    let mut first = Engine::recover(store(&broker, "restart").await).await.unwrap();
    // Everything up to the agent's message; the warnings are still pending.
    for (envelope, at) in &fixture {
        first.execute(envelope, *at).await.unwrap();
    }
    let account = AccountId::new("default").unwrap();
    let c1 = ConversationId::new("c1").unwrap();
    let before = first.world().conversation(&account, &c1).cloned().unwrap();
    let deadline = before.next_deadline().expect("a warning is pending");
    drop(first);
    let mut second = Engine::recover(store(&broker, "restart").await).await.unwrap();
    assert_eq!(second.world().conversation(&account, &c1), Some(&before));
    assert_eq!(second.next_timer(), Some(deadline), "the timer queue is rebuilt");
    // The closure (3 × 300 s after the agent's message) still happens.
    let later = deadline.plus_secs(3_600);
    assert!(second.fire_due(later).await.iter().all(Result::is_ok));
    assert_eq!(second.world().conversation(&account, &c1).unwrap().status, Status::Closed);
}

/// The stats of all partitions together (maxima for in-flight).
fn total(stats: &[convo_engine::serve::ServeStats]) -> convo_engine::serve::ServeStats {
    let mut t = convo_engine::serve::ServeStats::default();
    for s in stats {
        t.requests += s.requests;
        t.evicted += s.evicted;
        t.committed += s.committed;
        t.overloaded += s.overloaded;
        t.conflicts += s.conflicts;
        t.skipped += s.skipped;
        t.io_in_flight_max = t.io_in_flight_max.max(s.io_in_flight_max);
    }
    t
}

/// The secret of a test key (derived from its id, so tests need no state).
fn test_secret(key: &str) -> String {
    convo_engine::access::hex(&convo_engine::access::sha256(&format!("test-secret-{key}")))
}

/// Keys for the `default` account: one per user of the configuration, and
/// `gw`, an integration that may send every command (contacts' messages come through it).
fn test_keys(configuration: &[(CommandEnvelope, Timestamp)]) -> Vec<(CommandEnvelope, Timestamp)> {
    let at = configuration.last().map(|(_, at)| *at).unwrap();
    let users = configuration.iter().filter_map(|(e, _)| match &e.command {
        convo_domain::Command::DefineUser(u) => Some((u.id.to_string(), "user")),
        _ => None,
    });
    let all: Vec<&str> = convo_domain::Command::TYPE_NAMES
        .into_iter()
        .filter(|t| !matches!(*t, "issue_api_key" | "revoke_api_key" | "record_denied" | "record_read"))
        .collect();
    users
        .chain([("gw".to_owned(), "integration")])
        .map(|(key, holder)| {
            let scopes = if holder == "integration" { serde_json::json!({"commands": all}) } else { serde_json::json!({}) };
            let hash = convo_engine::access::hex(&convo_engine::access::sha256(&test_secret(&key)));
            let command = serde_json::json!({"type": "issue_api_key", "key": key, "holder": {holder: key}, "scopes": scopes, "secret_sha256": hash});
            let envelope = CommandEnvelope {
                id: format!("key-{key}").parse().unwrap(),
                account: "default".parse().unwrap(),
                actor: convo_domain::Actor::system("test"),
                command: convo_domain::Command::from_json(command).unwrap(),
            };
            (envelope, at)
        })
        .collect()
}

/// Sends a request as its `actor` would now: the actor leaves the body and
/// becomes a credential (a user's key, or the `gw` integration's for
/// contacts and systems).
async fn request(url: &str, subject: &str, body: &[u8]) -> serde_json::Value {
    let (body, credential) = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(mut map)) => {
            let actor = map.remove("actor").unwrap_or_default();
            let key = actor["user"]["id"].as_str().unwrap_or("gw").to_owned();
            let token =
                convo_engine::access::key_token(&"default".parse().unwrap(), &key.parse().unwrap(), &test_secret(&key));
            (serde_json::to_vec(&map).unwrap(), Some(token))
        }
        _ => (
            body.to_vec(),
            Some(convo_engine::access::key_token(
                &"default".parse().unwrap(),
                &"gw".parse().unwrap(),
                &test_secret("gw"),
            )),
        ),
    };
    let reply = convo_store::bus::request(url, subject, credential.as_deref(), body).await.unwrap();
    serde_json::from_slice(&reply).unwrap()
}

/// The configuration lines of a fixture (everything but conversation commands).
fn configuration(name: &str) -> Vec<(CommandEnvelope, Timestamp)> {
    inputs(name)
        .into_iter()
        .filter(|(e, _)| !matches!(e.command.type_name(), "receive_message" | "send_message" | "close"))
        .collect()
}

/// `convo serve`'s loop, in this process, on a manual clock, for an account
/// configured like the SLA fixture; subjects under `t<name>`.
struct Service {
    url: String,
    subject_prefix: String,
    store: JetStreamStore,
    clock: ManualClock,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<convo_engine::serve::ServeStats>>,
    _broker: Broker,
}

impl Service {
    async fn start(name: &str, config: convo_engine::serve::ServeConfig) -> Self {
        let broker = broker();
        let url = broker.server.url();
        let store = store(&broker, name).await;
        let mut engine = Engine::recover(store.clone()).await.unwrap();
        let setup = configuration("sla-worked-example");
        let keys = test_keys(&setup);
        // Over NATS the broker does not pass the client's address on, so
        // users act here on an account that does not restrict networks.
        let (mut open, at) = setup.iter().find(|(e, _)| e.command.type_name() == "configure_account").cloned().unwrap();
        if let convo_domain::Command::ConfigureAccount(settings) = &mut open.command {
            settings.allowed_networks.clear();
        }
        open.id = "open-networks".parse().unwrap();
        engine.replay(setup).await.unwrap();
        engine.replay(keys).await.unwrap();
        engine.replay(vec![(open, at)]).await.unwrap();
        let subject_prefix = format!("t{name}");
        let mut bus = convo_store::bus::CommandBus::subscribe(store.client().clone(), &subject_prefix).await.unwrap();
        let clock = ManualClock::at(Timestamp::parse_rfc3339("2026-03-02T14:00:00Z").unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (served, served_clock) = (store.clone(), clock.clone());
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            let (_local, local) = tokio::sync::mpsc::channel(1);
            let stats = convo_engine::serve::serve(
                served,
                &mut bus,
                local,
                std::sync::Arc::new(served_clock),
                config,
                shutdown,
            );
            total(&stats.await.unwrap())
        });
        Self { url, subject_prefix, store, clock, stop: Some(stop), task: Some(task), _broker: broker }
    }

    fn subject(&self, kind: &str) -> String {
        format!("{}.default.cmd.{kind}", self.subject_prefix)
    }

    /// Sends a request on the subject of its command type (`any` when the body has none).
    async fn request(&self, body: &[u8]) -> serde_json::Value {
        let kind = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["command"]["type"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "any".into());
        request(&self.url, &self.subject(&kind), body).await
    }

    /// Stops the loop (it finishes what it holds) and returns its stats.
    async fn stop(&mut self) -> convo_engine::serve::ServeStats {
        self.stop.take().expect("running").send(()).unwrap();
        self.task.take().expect("running").await.unwrap()
    }
}

#[tokio::test]
async fn intake_answers_bad_requests_with_typed_errors_and_keeps_serving() {
    let mut service =
        Service::start("intake", convo_engine::serve::ServeConfig { command_bytes_max: 4096, ..Default::default() })
            .await;
    let (url, subject) = (service.url.clone(), service.subject("receive_message"));
    let subject = subject.as_str();
    let open = br#"{"id":"m-1","actor":{"contact":"ct-0001"},"command":{"type":"receive_message","conversation":"c1","contact":"ct-0001","channel":"wa","text":"Hola"}}"#;
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (b"{not json".to_vec(), "error", "malformed_json"),
        (br#"{"id":"x","actor":{"system":"crm"},"command":{"type":"launch_rocket"}}"#.to_vec(), "error", "unknown_command"),
        (br#"{"id":"x","actor":{"system":"crm"},"command":{"type":"close","conversation":"ghost","typification":"venta"}}"#.to_vec(), "rejected", "unknown_conversation"),
        (vec![b' '; 4097], "error", "too_large"),
        (br#"{"id":"x","actor":{"system":"crm"},"command":{"type":"tick","conversation":"no way"}}"#.to_vec(), "error", "invalid"),
    ];
    // A body whose command type is not the one its subject names is refused.
    let mismatch = br#"{"id":"y","actor":{"system":"crm"},"command":{"type":"configure_account","name":"Mallory"}}"#;
    let reply = request(&url, subject, mismatch).await;
    assert_eq!(reply["code"], "subject_mismatch", "{reply}");
    for (body, outcome, code) in &cases {
        let reply = service.request(body).await;
        assert_eq!((reply["outcome"].as_str(), reply["code"].as_str()), (Some(*outcome), Some(*code)), "{reply}");
    }
    // Still serving: a valid command commits, and its repeat is one commit.
    let reply = request(&url, subject, open).await;
    assert_eq!(reply["outcome"], "committed", "{reply}");
    assert_eq!(reply["event_types"][0], "conversation_opened");
    assert!(reply.get("events").is_none(), "events only when asked: {reply}");
    let again = request(&url, subject, open).await;
    assert_eq!(again["outcome"], "duplicate", "{again}");
    let stats = service.stop().await;
    assert_eq!(stats.requests, cases.len() as u64 + 3);
    let opened = service
        .store
        .load(
            &AccountId::new("default").unwrap(),
            &convo_wire::StreamRef::Conversation(ConversationId::new("c1").unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(opened.len(), 2, "the opening commit and routing's assignment, once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_are_pipelined_across_conversations_and_serial_within_one() {
    let mut service =
        Service::start("pipe", convo_engine::serve::ServeConfig { partitions: 3, ..Default::default() }).await;
    let url = service.url.clone();
    let subject = service.subject("receive_message");
    let open = |n: usize, conversation: &str, contact: &str| {
        format!(
            r#"{{"id":"m-{n}","actor":{{"contact":"{contact}"}},"command":{{"type":"receive_message","conversation":"{conversation}","contact":"{contact}","channel":"wa","text":"hola {n}"}}}}"#
        )
    };
    // The shared conversation exists first; then 40 clients at once.
    let first = request(&url, &subject, open(0, "shared", "p-shared").as_bytes()).await;
    assert_eq!(first["outcome"], "committed", "{first}");
    // One connection, 40 requests in a burst: they queue at the engine
    // faster than appends are acknowledged.
    let nats = convo_store::connect(&url).await.unwrap();
    let burst = (1..=40).map(|n| {
        let body = if n <= 30 { open(n, &format!("k{n}"), &format!("p{n}")) } else { open(n, "shared", "p-shared") };
        let body = body
            .replace(r#""actor":{"contact":"p-shared"},"#, "")
            .replace(&format!(r#""actor":{{"contact":"p{n}"}},"#), "");
        let mut headers = async_nats::HeaderMap::new();
        let gw =
            convo_engine::access::key_token(&"default".parse().unwrap(), &"gw".parse().unwrap(), &test_secret("gw"));
        headers.insert(convo_store::bus::AUTHORIZATION, format!("Bearer {gw}").as_str());
        nats.request_with_headers(subject.clone(), headers, body.into())
    });
    for reply in futures::future::join_all(burst).await {
        let reply: serde_json::Value = serde_json::from_slice(&reply.unwrap().payload).unwrap();
        assert_eq!(reply["outcome"], "committed", "{reply}");
    }
    let stats = service.stop().await;
    assert!(stats.io_in_flight_max > 1, "appends overlapped: {stats:?}");
    let shared = service
        .store
        .load(
            &AccountId::new("default").unwrap(),
            &convo_wire::StreamRef::Conversation(ConversationId::new("shared").unwrap()),
        )
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect::<Vec<_>>();
    let seqs: Vec<u64> = shared.iter().flat_map(|s| s.commit.events.iter().map(|e| e.seq)).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "one conversation, one history");
    let received = shared
        .iter()
        .flat_map(|s| s.commit.events.iter())
        .filter(|e| e.event.type_name() == "message_received")
        .count();
    assert_eq!(received, 11);
}

#[tokio::test]
async fn closed_conversations_leave_memory_and_come_back_from_the_log_when_needed() {
    let mut service = Service::start("evict", convo_engine::serve::ServeConfig::default()).await;
    let ana = r#"{"user":{"id":"ana"}}"#;
    let open = br#"{"id":"m-1","actor":{"contact":"ct-0001"},"command":{"type":"receive_message","conversation":"c1","contact":"ct-0001","channel":"wa","text":"Hola"}}"#;
    let answer = format!(
        r#"{{"id":"a-1","actor":{ana},"command":{{"type":"send_message","conversation":"c1","text":"Hola"}}}}"#
    );
    let close = format!(
        r#"{{"id":"close-1","actor":{ana},"command":{{"type":"close","conversation":"c1","typification":"venta"}}}}"#
    );
    for body in [open.to_vec(), answer.into_bytes(), close.clone().into_bytes()] {
        let reply = service.request(&body).await;
        assert_eq!(reply["outcome"], "committed", "{reply}");
    }
    // Past the eviction window; any request wakes the loop, which evicts first.
    service.clock.advance_secs(convo_engine::serve::EVICT_CLOSED_AFTER_SECS + 60);
    service.request(b"wake up").await;
    let again = service.request(close.as_bytes()).await;
    assert_eq!(again["outcome"], "duplicate", "a repeated command is still recognised: {again}");
    let late = br#"{"id":"m-2","actor":{"contact":"ct-0001"},"command":{"type":"receive_message","conversation":"c1","contact":"ct-0001","channel":"wa","text":"Hola?"}}"#;
    let refused = service.request(late).await;
    assert_eq!(
        (refused["outcome"].as_str(), refused["code"].as_str()),
        (Some("rejected"), Some("conversation_closed")),
        "{refused}"
    );
    let stats = service.stop().await;
    assert!(stats.evicted >= 1, "{stats:?}");
}

#[tokio::test]
async fn a_client_id_like_the_engines_own_cannot_suppress_a_timer() {
    let mut service = Service::start("ids", convo_engine::serve::ServeConfig::default()).await;
    let message = |id: &str, text: &str| {
        format!(
            r#"{{"id":"{id}","actor":{{"contact":"ct-0001"}},"command":{{"type":"receive_message","conversation":"c1","contact":"ct-0001","channel":"wa","text":"{text}"}}}}"#
        )
    };
    assert_eq!(service.request(message("m-1", "Hola").as_bytes()).await["outcome"], "committed");
    // The engine's namespace is closed to clients...
    let forged = service.request(message("_tick-6", "x").as_bytes()).await;
    assert_eq!((forged["code"].as_str(), forged["field"].as_str()), (Some("invalid"), Some("id")), "{forged}");
    // ...and ids that look like the engine's old ones are just ids.
    for n in 2..=12 {
        let reply = service.request(message(&format!("tick-{n}"), "¿hola?").as_bytes()).await;
        assert_eq!(reply["outcome"], "committed", "{reply}");
    }
    // Past the SLA thresholds, the timer fires and its crossings are recorded.
    service.clock.advance_secs(600);
    let stream = convo_wire::StreamRef::Conversation(ConversationId::new("c1").unwrap());
    let account = AccountId::new("default").unwrap();
    let mut crossed = 0;
    for _ in 0..100 {
        let history = service.store.load(&account, &stream).await.unwrap();
        crossed = history
            .iter()
            .flat_map(|s| s.as_ref().unwrap().commit.events.iter())
            .filter(|e| e.event.type_name() == "sla_threshold_crossed")
            .count();
        if crossed == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(crossed, 2, "both SLA thresholds were crossed and recorded");
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_conflicting_commands_leave_no_consumers_behind() {
    let broker = broker();
    let mut a = Engine::recover(store(&broker, "contend").await).await.unwrap();
    a.replay(configuration("sla-worked-example")).await.unwrap();
    let mut b = Engine::recover(store(&broker, "contend").await).await.unwrap();
    let at = Timestamp::parse_rfc3339("2026-03-02T14:00:00Z").unwrap();
    let message = |k: usize, i: usize| {
        let body = serde_json::json!({"id": format!("m-{k}-{i}"),
            "command": {"type": "receive_message", "conversation": format!("k{k}"), "contact": format!("ct-{k:07}"),
            "channel": "wa", "text": format!("mensaje {i}")}});
        let contact = convo_domain::Actor::Contact(format!("ct-{k:07}").parse().unwrap());
        convo_engine::intake::parse_request("default", "receive_message", body.to_string().as_bytes(), 4096, contact)
            .unwrap()
            .envelope
    };
    // Two engines on one stream take turns on each conversation: every
    // command meets the other's newer commit, reloads, and decides again.
    let (conversations, turns) = (250, 20);
    for k in 0..conversations {
        for i in 0..turns {
            let engine = if i % 2 == 0 { &mut a } else { &mut b };
            let outcome = engine.execute(&message(k, i), at.plus_secs(i as u64)).await.unwrap();
            assert!(matches!(outcome, Outcome::Committed { .. }), "{outcome:?}");
        }
    }
    let conflicts = a.machine().stats().conflicts + b.machine().stats().conflicts;
    assert!(conflicts >= (conversations * (turns - 1)) as u64, "{conflicts} conflicts");
    let consumers = a.store().consumer_count().await.unwrap();
    assert!(consumers <= 2, "{consumers} consumers left on the server after {conflicts} conflicts");
}

#[tokio::test]
async fn a_partition_recovers_alike_from_its_snapshot_and_ignores_a_bad_one() {
    use convo_engine::cluster::recover_partition;
    let broker = broker();
    let store = store(&broker, "snapshot").await;
    let fixture = inputs("routing-fifo-capacity");
    // A third, the snapshot, another third: conversations are still open (the fixture's end closes them).
    let (first, rest) = fixture[..fixture.len() * 2 / 3].split_at(fixture.len() / 3);
    let mut engine = Engine::recover(store.clone()).await.unwrap();
    engine.replay(first.to_vec()).await.unwrap();
    let snapshots = store.snapshots().await.unwrap();
    let (snapshot, _) = convo_engine::snapshot::refresh(&store, &snapshots, 0, 1).await.unwrap();
    assert!(snapshot.covered > 0 && !snapshot.commits.is_empty());
    engine.replay(rest.to_vec()).await.unwrap();
    drop(engine);
    let config = convo_engine::MachineConfig::serve();

    // From the whole log, and from the snapshot and the tail after it.
    let (full, read) = recover_partition(&store, None, 0, 1, config).await.unwrap();
    let (from_snapshot, used) = recover_partition(&store, Some(&snapshots), 0, 1, config).await.unwrap();
    assert_eq!((read.snapshot_covered, used.snapshot_covered), (0, snapshot.covered));
    assert!(used.tail < read.tail, "only the tail is read: {used:?} against {read:?}");
    let (full, from_snapshot) = (full.world(), from_snapshot.world());
    let account = AccountId::new("default").unwrap();
    assert_eq!(full.catalog(&account), from_snapshot.catalog(&account));
    assert_eq!(full.floor(&account), from_snapshot.floor(&account));
    assert!(full.open_conversations() > 0, "the fixture leaves conversations open");
    assert_eq!(full.open_conversations(), from_snapshot.open_conversations());
    assert_eq!(full.armed_timers(), from_snapshot.armed_timers());
    let ids: std::collections::BTreeSet<ConversationId> = fixture
        .iter()
        .filter_map(|(e, _)| match e.command.target() {
            convo_domain::Target::Conversation(id) => Some(id.clone()),
            _ => None,
        })
        .collect();
    for id in &ids {
        if let Some(open) = full.conversation(&account, id).filter(|c| c.status != Status::Closed) {
            assert_eq!(from_snapshot.conversation(&account, id), Some(open), "{id}");
        }
    }

    // A snapshot of an unknown version, or corrupt, is ignored: the whole log is read.
    let mut bytes = snapshot.encode(&store.config().stream).unwrap();
    bytes[9] ^= 0x7f; // the format version
    for bad in [bytes.clone(), b"not a snapshot at all".to_vec()] {
        snapshots.put_raw(0, 1, &bad).await.unwrap();
        let (machine, recovered) = recover_partition(&store, Some(&snapshots), 0, 1, config).await.unwrap();
        assert_eq!(recovered, read, "recovered from the log alone");
        assert_eq!(machine.world().difference_from(full), None);
    }
}

/// Retention outlives a restart from a snapshot (SPEC §13): a snapshot keeps
/// only the closing commit of a closed conversation whose content awaits
/// expiry; a partition recovered from it holds neither conversation in
/// memory, yet queues their expiries, reads the conversation back when one
/// falls due and records its `content_expired` — the same commit an engine
/// recovered from the whole log records.
#[tokio::test]
async fn a_content_expiry_outlives_a_recovery_from_a_snapshot() {
    use convo_engine::cluster::recover_partition;
    let broker = broker();
    let log = store(&broker, "retention").await;
    let closed_both = Timestamp::parse_rfc3339("2026-03-21T00:00:00Z").unwrap();
    let mut engine = Engine::recover(log.clone()).await.unwrap();
    engine.replay_until(inputs("content-retention"), Some(closed_both)).await.unwrap();
    drop(engine);
    let snapshots = log.snapshots().await.unwrap();
    let (snapshot, _) = convo_engine::snapshot::refresh(&log, &snapshots, 0, 1).await.unwrap();
    let kept: Vec<String> = snapshot
        .commits
        .iter()
        .filter(|c| matches!(c.commit.stream, convo_wire::StreamRef::Conversation(_)))
        .map(|c| format!("{} {}", c.commit.stream.path(), c.commit.kind()))
        .collect();
    assert_eq!(kept, ["conv/c1 closed", "conv/c2 closed"], "only the closing commits");

    let config = convo_engine::MachineConfig::serve();
    let (machine, used) = recover_partition(&log, Some(&snapshots), 0, 1, config).await.unwrap();
    assert_eq!(used.snapshot_covered, snapshot.covered);
    let account = AccountId::new("default").unwrap();
    let c1 = ConversationId::new("c1").unwrap();
    assert!(machine.world().conversation(&account, &c1).is_none(), "not held in memory");
    let mut recovered = Engine::with_machine(machine, log.clone());
    assert_eq!(recovered.next_timer(), Some(Timestamp::parse_rfc3339("2026-04-01T14:10:00Z").unwrap()));
    let a_day_later = Timestamp::parse_rfc3339("2026-04-02T14:10:00Z").unwrap();
    let outcomes = recovered.fire_due(a_day_later).await;
    let committed: Vec<&convo_wire::Commit> = outcomes
        .iter()
        .filter_map(|o| match o {
            Ok(Outcome::Committed { commit, .. }) => Some(commit),
            _ => None,
        })
        .collect();
    assert_eq!(committed.len(), 1, "{outcomes:?}");
    let lines = committed[0].json_lines();
    assert_eq!((lines[0]["conversation"].as_str(), lines[0]["type"].as_str()), (Some("c1"), Some("content_expired")));
    assert_eq!(recovered.next_timer(), Some(Timestamp::parse_rfc3339("2026-04-19T15:10:00Z").unwrap()));
    let expired = recovered.world().conversation(&account, &c1).expect("read back");
    assert!(expired.content_expired && expired.facts.as_ref().unwrap().contact_name.as_deref() == Some("[erased]"));
    drop(recovered);

    // The same commit as from the whole log (the one just appended aside).
    let other = store(&broker, "retentionfull").await;
    let mut full = Engine::recover(other).await.unwrap();
    full.replay_until(inputs("content-retention"), Some(a_day_later)).await.unwrap();
    let last = |store: JetStreamStore| async move {
        let end = store.last_seq().await.unwrap();
        let mut read = store.read(end).await.unwrap();
        futures::StreamExt::next(&mut read).await.unwrap().unwrap().commit.json_lines()
    };
    assert_eq!(last(log).await, last(full.store().clone()).await);
}

/// A content expiry destroys the conversation's key (SPEC §13): the eraser
/// follows `content_expired` as it follows erasures, and the expired
/// conversation's texts then read `[erased]` while a newer one's still read.
#[tokio::test]
async fn the_eraser_destroys_an_expired_conversations_key() {
    let broker = broker();
    let keys = std::sync::Arc::new(convo_store::keys::Keyring::in_memory([9; 32]));
    let sealed = store(&broker, "expire").await.with_keys(keys.clone());
    let until = Timestamp::parse_rfc3339("2026-04-02T14:10:00Z").unwrap();
    let mut engine = Engine::recover(sealed.clone()).await.unwrap();
    engine.replay_until(inputs("content-retention"), Some(until)).await.unwrap();
    drop(engine);
    let account = AccountId::new("default").unwrap();
    let texts = |id: &'static str| {
        let sealed = sealed.clone();
        let account = account.clone();
        async move {
            let stream = convo_wire::StreamRef::Conversation(ConversationId::new(id).unwrap());
            let mut out = Vec::new();
            for stored in sealed.load(&account, &stream).await.unwrap() {
                for line in stored.unwrap().commit.json_lines() {
                    if line["type"] == "message_received" {
                        out.push(line["text"].as_str().unwrap().to_owned());
                    }
                }
            }
            out
        }
    };
    assert_eq!(texts("c1").await, ["Quiero cambiar mi pedido"], "sealed, and open until the expiry is carried out");

    let config = convo_store::json_stream::JsonStreamConfig { max_bytes: 8 << 20, ..Default::default() };
    let json = convo_store::json_stream::ensure(&sealed, &config).await.unwrap();
    let passed = || u64::MAX;
    let follow = convo_store::erasure::follow(&sealed, &keys, &json, &passed);
    let _ = tokio::time::timeout(convo_store::erasure::POLL * 3, follow).await;
    assert_eq!(texts("c1").await, ["[erased]"]);
    assert_eq!(texts("c2").await, ["¿Dónde está mi envío?"]);
}

/// An erasure says what it cannot reach: commits written before personal
/// data was sealed keep it in clear in the main stream. Those written after
/// are sealed and are not counted.
#[tokio::test]
async fn erasing_a_contact_counts_the_commits_from_before_sealing() {
    let broker = broker();
    let plain = store(&broker, "erase").await;
    let fixture = inputs("inactivity-two-attempts");
    let mut engine = Engine::recover(plain.clone()).await.unwrap();
    for (envelope, at) in &fixture {
        engine.execute(envelope, *at).await.unwrap();
    }
    drop(engine);
    let account = AccountId::new("default").unwrap();
    let contact = convo_domain::ContactId::new("ct-0001").unwrap();
    let keys = std::sync::Arc::new(convo_store::keys::Keyring::in_memory([9; 32]));
    let sealed = plain.with_keys(keys.clone());
    let config = convo_store::json_stream::JsonStreamConfig { max_bytes: 8 << 20, ..Default::default() };
    let (js, _) = convo_store::json_stream::ensure(&sealed, &config).await.unwrap();
    let before = convo_store::erasure::erase_contact(&sealed, &keys, &js, &account, &contact).await.unwrap();
    assert!(before.plaintext_commits > 0, "{before:?}");

    // The same contact writes again, now sealed: nothing more in clear.
    let mut engine = Engine::recover(sealed.clone()).await.unwrap();
    let (_, at) = fixture.last().unwrap();
    let (mut envelope, _) =
        fixture.iter().find(|(e, _)| matches!(e.command, convo_domain::Command::ReceiveMessage(_))).cloned().unwrap();
    envelope.id = convo_domain::CommandId::new("later-1").unwrap();
    if let convo_domain::Command::ReceiveMessage(m) = &mut envelope.command {
        m.conversation = ConversationId::new("c-later").unwrap();
    }
    assert!(matches!(engine.execute(&envelope, at.plus_secs(60)).await.unwrap(), Outcome::Committed { .. }));
    let after = convo_store::erasure::erase_contact(&sealed, &keys, &js, &account, &contact).await.unwrap();
    assert_eq!(after.conversations, before.conversations + 1, "{after:?}");
    assert_eq!(after.plaintext_commits, before.plaintext_commits, "{after:?}");
}
