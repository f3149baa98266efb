//! An owner paused (SIGSTOP) past its lease, with commands in hand, while a
//! second instance takes the partition over and commits; then resumed,
//! believing it still owns the partition. The log must hold no commit of
//! the old owner after its successor's first: every commit carries the
//! epoch of the fence its writer took (the expected sequence of
//! `<prefix>.~fence.<partition>`), and in stream order those never go back.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use convo_store::launcher::{LaunchOptions, NatsServer};
use convo_store::{EventStore, JetStreamStore, StoreConfig};
use serde_json::{Value, json};

use super::crash::{OPERATOR, request};

const PREFIX: &str = "stp";

struct Instance(Child);

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0.id().to_string()]).status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(url: &str, monitor: &str, id: &str, dir: &Path) -> Instance {
    let log = std::fs::File::create(dir.join("serve.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_convo"))
        .args(["serve", "--nats-url", url, "--nats-monitor-url", monitor, "--prefix", PREFIX, "--no-http"])
        .args(["--instance-id", id, "--snapshot-every-secs", "1", "--data-dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("convo serve starts");
    Instance(child)
}

fn signal(instance: &Instance, which: &str) {
    let status = Command::new("kill").args([which, &instance.0.id().to_string()]).status().unwrap();
    assert!(status.success(), "kill {which}");
}

async fn send_retrying(client: &async_nats::Client, id: &str, command: Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(reply) = request(client, PREFIX, "acme", id, OPERATOR, &command).await
            && !matches!(reply["code"].as_str(), Some("unavailable" | "overloaded"))
        {
            return reply;
        }
        assert!(Instant::now() < deadline, "nobody answered {id}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn owner(store: &JetStreamStore) -> Option<String> {
    let directory = store.directory().await.ok()?;
    directory.owners().await.ok()?.into_iter().find(|o| o.partition == 0).map(|o| o.instance)
}

fn open(n: usize) -> Value {
    json!({"type":"receive_message","conversation": format!("c{n}"),"contact": format!("k{n}"),"channel":"wa","text":"hola"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_never_commits_after_its_successor() {
    let temp = tempfile::tempdir().unwrap();
    let server = NatsServer::start(&LaunchOptions {
        data_dir: temp.path().join("nats"),
        mappings: vec![convo_store::bus::partition_mapping(PREFIX, 1)],
        ..Default::default()
    })
    .expect("nats-server starts");
    let (url, monitor) = (server.url(), server.monitor_url());
    let config = StoreConfig::for_prefix(PREFIX);
    let store = JetStreamStore::connect(&url, config.clone()).await.unwrap();
    assert_eq!(store.partitions(Some(1), 1).await.unwrap(), 1);

    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    for dir in &dirs {
        convo_store::launcher::write_private(&dir.path().join("operator.key"), OPERATOR.as_bytes()).unwrap();
    }
    // "a" sorts first: the partition is its share while it lives.
    let a = serve(&url, &monitor, "a", dirs[0].path());
    let key = dirs[0].path().join(convo_store::signing::KEY_FILE);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !key.exists() || owner(&store).await.as_deref() != Some("a") {
        assert!(Instant::now() < deadline, "a never owned the partition");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::copy(&key, dirs[1].path().join(convo_store::signing::KEY_FILE)).unwrap();
    let _b = serve(&url, &monitor, "b", dirs[1].path());
    let client = convo_store::connect(&url).await.unwrap();
    let setup = super::cluster::setup();
    for (n, command) in setup.into_iter().enumerate() {
        let reply = send_retrying(&client, &format!("setup-{n}"), command).await;
        assert_eq!(reply["outcome"], "committed", "{reply}");
    }

    // a stops dead; commands sent now wait in its connection for it to wake up.
    signal(&a, "-STOP");
    let burst: Vec<_> = (0..20)
        .map(|n| {
            let client = client.clone();
            tokio::spawn(
                async move { request(&client, PREFIX, "acme", &format!("burst-{n}"), OPERATOR, &open(n)).await },
            )
        })
        .collect();
    for task in burst {
        let _ = task.await;
    }
    // b sees a's heartbeat age past the member TTL, takes the partition and its fence, and commits.
    let deadline = Instant::now() + Duration::from_secs(40);
    while owner(&store).await.as_deref() != Some("b") {
        assert!(Instant::now() < deadline, "b never took the partition over");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let first = send_retrying(&client, "after-0", open(100)).await;
    assert_eq!(first["outcome"], "committed", "{first}");
    // a resumes believing it owns the partition: what it had in hand is refused by the fence.
    signal(&a, "-CONT");
    tokio::time::sleep(Duration::from_secs(3)).await;
    for n in 1..5 {
        let reply = send_retrying(&client, &format!("after-{n}"), open(100 + n)).await;
        assert!(reply["outcome"] == "committed" || reply["outcome"] == "duplicate", "{reply}");
    }

    // The log: commits' epochs never go back in stream order, and b's epoch is there.
    let js = async_nats::jetstream::new(client.clone());
    let stream = js.get_stream(&config.stream).await.unwrap();
    let last = store.last_seq().await.unwrap();
    let fence = convo_store::fence::subject(PREFIX, 0);
    let (mut newest, mut epochs) = (0u64, std::collections::BTreeSet::new());
    let mut markers = Vec::new();
    for seq in 1..=last {
        let Ok(message) = stream.direct_get(seq).await else { continue };
        if message.subject.as_str() == fence {
            markers.push((seq, String::from_utf8_lossy(&message.payload).into_owned()));
            continue;
        }
        let epoch: u64 = message
            .headers
            .get(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE)
            .and_then(|v| v.as_str().parse().ok())
            .unwrap_or_else(|| panic!("commit {seq} carries its writer's epoch"));
        assert!(
            epoch >= newest,
            "commit {seq} ({}) was written under epoch {epoch} after a commit of epoch {newest}: a deposed owner \
             committed after its successor (fence markers: {markers:?})",
            message.subject
        );
        newest = epoch;
        epochs.insert(epoch);
    }
    assert!(epochs.len() >= 2, "commits of both owners' epochs: {epochs:?}, markers {markers:?}");
    let a_log = std::fs::read_to_string(dirs[0].path().join("serve.log")).unwrap();
    assert!(!a_log.contains(" ERROR "), "no ERROR line on a:\n{a_log}");
}
