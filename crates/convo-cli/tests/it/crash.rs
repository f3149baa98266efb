//! `convo serve` killed with SIGKILL in the middle of a stream of commands,
//! then restarted: every acknowledged command is in the log exactly once, and
//! a pending inactivity closure still fires.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use convo_store::launcher::{LaunchOptions, NatsServer};
use convo_store::{EventStore, JetStreamStore, StoreConfig};
use futures::StreamExt;
use serde_json::{Value, json};

const PREFIX: &str = "crash";

/// The platform operator's credential the tests' engines start with.
pub(crate) const OPERATOR: &str = "convo-operator.0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

/// A `convo serve` process, killed (SIGKILL) and reaped when dropped, so a
/// failing test leaves no engine behind.
pub(crate) struct Served(Child, #[allow(dead_code)] tempfile::TempDir);

impl Served {
    pub(crate) fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// The engine started again on the same data directory (its
    /// `engine.key`: the stream's data keys open with no other).
    pub(crate) fn restart(&mut self, nats: &NatsServer, prefix: &str) {
        self.kill();
        self.0 = spawn(nats, prefix, self.1.path());
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill();
    }
}

fn serve(nats: &NatsServer) -> Served {
    serve_prefix(nats, PREFIX)
}

/// `convo serve` on an existing server, under a subject prefix.
pub(crate) fn serve_prefix(nats: &NatsServer, prefix: &str) -> Served {
    let dir = tempfile::tempdir().unwrap();
    convo_store::launcher::write_private(&dir.path().join("operator.key"), OPERATOR.as_bytes()).unwrap();
    let child = spawn(nats, prefix, dir.path());
    Served(child, dir)
}

fn spawn(nats: &NatsServer, prefix: &str, dir: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_convo"))
        .args(["serve", "--nats-url", &nats.url(), "--nats-monitor-url", &nats.monitor_url()])
        .args(["--prefix", prefix, "--no-http", "--data-dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("convo serve starts")
}

/// Sends a command with `who`'s credential (`{"credential": …}`; the operator's otherwise).
async fn send(url: &str, id: &str, who: Value, command: Value) -> Option<Value> {
    let client = convo_store::connect(url).await.ok()?;
    let credential = who["credential"].as_str().unwrap_or(OPERATOR);
    request(&client, PREFIX, "acme", id, credential, &command).await
}

/// One command request `{"id", "command"}` to `account` under `prefix` with
/// a bearer credential: the reply, or `None` when nobody answered within 3 s.
pub(crate) async fn request(
    client: &async_nats::Client,
    prefix: &str,
    account: &str,
    id: &str,
    credential: &str,
    command: &Value,
) -> Option<Value> {
    request_within(client, prefix, account, id, credential, command, Duration::from_secs(3)).await
}

/// [`request`], waiting `wait` for the answer.
pub(crate) async fn request_within(
    client: &async_nats::Client,
    prefix: &str,
    account: &str,
    id: &str,
    credential: &str,
    command: &Value,
    wait: Duration,
) -> Option<Value> {
    let body = json!({"id": id, "command": command}).to_string();
    let subject = format!("{prefix}.{account}.cmd.{}", command["type"].as_str().unwrap());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(convo_store::bus::AUTHORIZATION, format!("Bearer {credential}").as_str());
    let reply =
        tokio::time::timeout(wait, client.request_with_headers(subject, headers, body.into())).await.ok()?.ok()?;
    serde_json::from_slice(&reply.payload).ok()
}

/// Sends until the engine answers (it may still be starting).
async fn send_retrying(url: &str, id: &str, actor: Value, command: Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(reply) = send(url, id, actor.clone(), command.clone()).await {
            return reply;
        }
        assert!(Instant::now() < deadline, "the engine never answered {id}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn setup() -> Vec<Value> {
    vec![
        json!({"type":"configure_account","name":"Acme","typifications":[{"id":"venta","name":"Venta"},{"id":"inactividad","name":"I"},{"id":"transferencia","name":"T"}]}),
        json!({"type":"define_client","id":"acme","name":"Acme","code":"1","sla_optimal_secs":60,"sla_low_secs":180,"max_inactivity_secs":2,"inactivity_attempts":0}),
        json!({"type":"define_project","id":"p","client":"acme","name":"P"}),
        json!({"type":"define_schedule","id":"always","name":"24/7","time_zone":"UTC","week":{"mon":["00:00-24:00"],"tue":["00:00-24:00"],"wed":["00:00-24:00"],"thu":["00:00-24:00"],"fri":["00:00-24:00"],"sat":["00:00-24:00"],"sun":["00:00-24:00"]}}),
        json!({"type":"define_channel","id":"wa","kind":"whatsapp","external_id":"1"}),
        json!({"type":"define_user","id":"ana","name":"Ana","email":"a@x.co","role":"agent","max_concurrent_conversations":500}),
        json!({"type":"define_campaign","id":"ventas","client":"acme","project":"p","name":"Ventas","channels":["wa"],"schedule":"always","out_of_hours":{"action":"enqueue"},
            "inactivity_typification":"inactividad","transfer_typification":"transferencia","closing_typifications":["venta"],"agents":["ana"]}),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_engine_loses_no_acknowledged_command_and_its_timers_survive() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(&LaunchOptions {
        data_dir: dir.path().to_path_buf(),
        mappings: vec![convo_store::bus::partition_mapping(PREFIX, 2)],
        ..Default::default()
    })
    .unwrap();
    let url = nats.url();
    let mut engine = serve(&nats);
    let system = json!({"system": "setup"});
    for (n, command) in setup().into_iter().enumerate() {
        let reply = send_retrying(&url, &format!("setup-{n}"), system.clone(), command).await;
        assert_eq!(reply["outcome"], "committed", "{reply}");
    }
    let issued = send_retrying(
        &url,
        "key-ana",
        system.clone(),
        json!({"type":"issue_api_key","key":"ana","holder":{"user":"ana"}}),
    )
    .await;
    assert_eq!(issued["outcome"], "committed", "{issued}");
    let ana = json!({"credential": issued["credential"]["token"]});
    send_retrying(&url, "ana-on", ana.clone(), json!({"type":"set_agent_state","agent":"ana","state":"available"}))
        .await;
    // A conversation whose inactivity closure (2 s after Ana's reply) is pending.
    let contact = json!({"contact": "p0"});
    send_retrying(
        &url,
        "pending-open",
        contact,
        json!({"type":"receive_message","conversation":"pending","contact":"p0","channel":"wa","text":"hola"}),
    )
    .await;
    let reply = send_retrying(
        &url,
        "pending-reply",
        ana,
        json!({"type":"send_message","conversation":"pending","text":"¿en qué te ayudo?"}),
    )
    .await;
    assert_eq!(reply["outcome"], "committed", "{reply}");

    // A stream of commands; the engine is killed in the middle of it.
    let mut acknowledged = Vec::new();
    for n in 0..60 {
        if n == 25 {
            engine.kill(); // SIGKILL: no chance to finish anything
        }
        let id = format!("open-{n}");
        let contact = format!("q{n}");
        let command = json!({"type":"receive_message","conversation": format!("k{n}"),"contact": contact,"channel":"wa","text":"hola"});
        if let Some(reply) = send(&url, &id, json!({"contact": contact}), command).await
            && reply["outcome"] == "committed"
        {
            acknowledged.push(id);
        }
    }
    assert!(acknowledged.len() >= 20, "the engine answered before it was killed");
    // Restart; resend everything (the acknowledged ones must come back as duplicates).
    engine.restart(&nats, PREFIX);
    for n in 0..60 {
        let id = format!("open-{n}");
        let contact = format!("q{n}");
        let command = json!({"type":"receive_message","conversation": format!("k{n}"),"contact": contact,"channel":"wa","text":"hola"});
        let reply = send_retrying(&url, &id, json!({"contact": contact}), command).await;
        let expected = if acknowledged.contains(&id) { "duplicate" } else { "committed" };
        assert_eq!(reply["outcome"], expected, "{id}: {reply}");
    }

    // Every command's events are in the log exactly once.
    let store = JetStreamStore::connect(&url, StoreConfig::for_prefix(PREFIX)).await.unwrap();
    let mut commits_per_command: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let closed = loop {
        commits_per_command.clear();
        let last = store.last_seq().await.unwrap();
        let mut follow = store.subscribe(1).await.unwrap();
        let mut closed = false;
        let mut seen = 0;
        while seen < last {
            let stored = follow.next().await.unwrap().unwrap();
            seen = stored.stream_seq;
            let c = &stored.commit;
            if c.command.as_str().starts_with("open-") {
                *commits_per_command.entry(c.command.to_string()).or_default() += 1;
            }
            closed |= c.kind() == "closed"
                && matches!(&c.stream, convo_wire::StreamRef::Conversation(id) if id.as_str() == "pending");
        }
        if closed || Instant::now() > deadline {
            break closed;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    engine.kill();
    assert_eq!(commits_per_command.len(), 60);
    assert!(commits_per_command.values().all(|n| *n == 1), "{commits_per_command:?}");
    assert!(closed, "the pending inactivity closure fired after the restart");
}

/// The embedded default acknowledges a command once its commit is fsynced
/// (`sync_interval: always` in the server's config); its nats-server killed
/// with SIGKILL under load — enough load that group commit writes atomic
/// batches — loses none of the acknowledged ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_nats_server_killed_under_load_loses_no_acknowledged_command() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let served = super::access::serve_with(dir, &[]);
    let config = std::fs::read_to_string(dir.join("nats/nats-server.conf")).unwrap();
    assert!(config.contains("sync_interval: always"), "{config}");
    super::access::sales_account(&served, super::access::sales_settings(), &[], &[]).await;
    // Sixty-four clients, each opening conversations as fast as they are answered.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..64 {
        let (url, operator, stop) = (served.engine_url.clone(), served.operator.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(client) = convo_store::connect(&url).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    let id = format!("load-{c}-{n}");
                    let command = json!({"type":"receive_message","conversation": format!("l{c}x{n}"),
                        "contact": format!("k{c}x{n}"),"channel":"wa","text":"hola"});
                    match request(&client, "convo", "acme", &id, &operator, &command).await {
                        Some(reply) if reply["outcome"] == "committed" => acknowledged.push(id),
                        Some(_) => {}
                        None => break, // no answer: the server is away; connect again
                    }
                }
            }
            acknowledged
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pid: u32 = std::fs::read_to_string(dir.join("nats/nats-server.pid")).unwrap().trim().parse().unwrap();
    assert!(Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap().success());
    // The supervisor restarts it; the clients go on.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !super::access::log_of(dir).contains("restarting it on port") {
        assert!(Instant::now() < deadline, "{}", super::access::log_of(dir));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    for client in clients {
        acknowledged.extend(client.await.unwrap());
    }
    assert!(acknowledged.len() >= 50, "the clients were answered: {}", acknowledged.len());
    // Group commit was on: commits went to the stream in atomic batches.
    let (metrics, _) = super::access::raw(&served, "/metrics").await;
    let batched: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("convo_batched_commits_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(batched > 0.0, "no commit went in a batch:\n{metrics}");
    // Every acknowledged command is in the stream, once.
    let store = JetStreamStore::connect(&served.engine_url, StoreConfig::default()).await.unwrap();
    let last = store.last_seq().await.unwrap();
    let mut follow = store.read(1).await.unwrap();
    let mut commits: BTreeMap<String, usize> = BTreeMap::new();
    while let Some(item) = follow.next().await {
        let stored = item.unwrap();
        *commits.entry(stored.commit.command.to_string()).or_default() += 1;
        if stored.stream_seq >= last {
            break;
        }
    }
    let lost: Vec<&String> = acknowledged.iter().filter(|id| !commits.contains_key(*id)).collect();
    assert!(lost.is_empty(), "{} of {} acknowledged commands lost: {lost:?}", lost.len(), acknowledged.len());
    assert!(acknowledged.iter().all(|id| commits[id] == 1), "a command committed twice");
}
