//! Services started in-process (several in one test) on one real
//! nats-server: they share the partitions, a graceful stop hands its
//! partitions to the other, and each `Service::run` returns once stopped.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use convo_service::{Service, ServiceConfig};
use convo_store::launcher::{LaunchOptions, NatsServer};
use convo_store::{JetStreamStore, StoreConfig};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const PREFIX: &str = "svc";
const PARTITIONS: usize = 2;
/// The platform operator's credential both instances share.
const OPERATOR: &str = "convo-operator.00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

/// One instance's settings: the server at `url`, its own data directory.
fn config(server: &NatsServer, dir: &Path, id: &str) -> ServiceConfig {
    ServiceConfig {
        nats_url: Some(server.url()),
        nats_monitor_urls: vec![server.monitor_url()],
        prefix: PREFIX.into(),
        partitions: Some(PARTITIONS),
        http: None,
        instance_id: Some(id.into()),
        snapshot_every: Some(Duration::from_secs(1)),
        ..ServiceConfig::embedded(dir)
    }
}

/// A command over NATS as the operator; the reply, or `None` (nobody answered in time).
async fn send(client: &async_nats::Client, account: &str, id: &str, command: &Value) -> Option<Value> {
    let body = json!({"id": id, "command": command}).to_string();
    let subject = format!("{PREFIX}.{account}.cmd.{}", command["type"].as_str().unwrap());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(convo_store::bus::AUTHORIZATION, format!("Bearer {OPERATOR}").as_str());
    let request = client.request_with_headers(subject, headers, body.into());
    let reply = tokio::time::timeout(Duration::from_secs(3), request).await.ok()?.ok()?;
    serde_json::from_slice(&reply.payload).ok()
}

/// Sends until committed (or a duplicate of its commit), as a client retrying with the same id.
async fn commit(client: &async_nats::Client, account: &str, id: &str, command: Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(reply) = send(client, account, id, &command).await
            && matches!(reply["outcome"].as_str(), Some("committed" | "duplicate"))
        {
            return;
        }
        assert!(Instant::now() < deadline, "{account}/{id} was never committed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The partitions' owners, once `check` holds for them (read until it does).
async fn owners_when(
    store: &JetStreamStore,
    check: impl Fn(&BTreeMap<usize, String>) -> bool,
) -> BTreeMap<usize, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let owners: BTreeMap<usize, String> = match store.directory().await {
            Ok(directory) => {
                directory.owners().await.unwrap_or_default().into_iter().map(|o| (o.partition, o.instance)).collect()
            }
            Err(_) => BTreeMap::new(),
        };
        if check(&owners) {
            return owners;
        }
        assert!(Instant::now() < deadline, "the owners never settled: {owners:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_in_one_process_share_the_partitions_and_hand_over_on_stop() {
    let temp = tempfile::tempdir().unwrap();
    let options = LaunchOptions {
        data_dir: temp.path().join("nats"),
        mappings: vec![convo_store::bus::partition_mapping(PREFIX, PARTITIONS)],
        ..Default::default()
    };
    let server = NatsServer::start(&options).expect("a nats-server");
    let dirs: Vec<_> = ["a", "b"].iter().map(|id| temp.path().join(id)).collect();
    for dir in &dirs {
        std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700).create(dir).unwrap();
        convo_store::launcher::write_private(&dir.join("operator.key"), OPERATOR.as_bytes()).unwrap();
    }

    // a first (it makes the stream and the signing key), then b with the same key.
    let stop_a = CancellationToken::new();
    let a = tokio::spawn(Service::run(config(&server, &dirs[0], "a"), stop_a.clone()));
    let key = dirs[0].join(convo_store::signing::KEY_FILE);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !key.exists() {
        assert!(Instant::now() < deadline, "a made no signing key");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    convo_store::launcher::write_private(&dirs[1].join(convo_store::signing::KEY_FILE), &std::fs::read(&key).unwrap())
        .unwrap();
    let stop_b = CancellationToken::new();
    let b = tokio::spawn(Service::run(config(&server, &dirs[1], "b"), stop_b.clone()));

    let store = JetStreamStore::connect(&server.url(), StoreConfig::for_prefix(PREFIX)).await.unwrap();
    let shared = owners_when(&store, |o| o.len() == PARTITIONS && o.values().collect::<BTreeSet<_>>().len() == 2).await;
    assert_eq!(shared.values().cloned().collect::<BTreeSet<_>>(), ["a".to_owned(), "b".to_owned()].into());

    // One account per partition; each takes commands, whoever owns it.
    let accounts: Vec<String> = (0..PARTITIONS)
        .map(|p| {
            (0..).map(|i| format!("acct{i}")).find(|a| convo_store::bus::partition_of(a, PARTITIONS) == p).unwrap()
        })
        .collect();
    let client = convo_store::connect(&server.url()).await.unwrap();
    for account in &accounts {
        commit(&client, account, "setup-0", json!({"type": "configure_account", "name": account})).await;
    }

    // a stops gracefully: its run returns, and b owns everything and takes its commands.
    stop_a.cancel();
    let report = tokio::time::timeout(Duration::from_secs(60), a).await.expect("a stops").unwrap().expect("a ran");
    assert!(report.partitions.iter().all(|(n, _)| *n < PARTITIONS), "{:?}", report.partitions);
    owners_when(&store, |o| o.len() == PARTITIONS && o.values().all(|id| id == "b")).await;
    for account in &accounts {
        commit(&client, account, "after-a", json!({"type": "configure_account", "name": format!("{account} again")}))
            .await;
    }
    stop_b.cancel();
    tokio::time::timeout(Duration::from_secs(60), b).await.expect("b stops").unwrap().expect("b ran");
    // Both left the directory: nobody holds a lease.
    owners_when(&store, BTreeMap::is_empty).await;
}
