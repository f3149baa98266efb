//! Engine instances sharing a stream's partitions (DESIGN.md, "Scale-out on
//! NATS").
//!
//! Accounts hash onto the stream's partitions ([`Partition::of`], the same
//! function as the server's `partition()` mapping, which puts each command
//! on its partition's subject). Each instance writes a heartbeat into the
//! stream's lease bucket ([`convo_store::cluster`]) and, every
//! [`COORDINATE_EVERY_MS`], works out its share: the live instances sorted
//! by id, partition `n` going to the `n mod k`-th, so shares differ by at
//! most one. A partition of its share it takes once its lease is free
//! (released by the previous owner's handover, or expired after a crash),
//! then recovers it from the log and subscribes to its subjects; a partition
//! no longer its share it hands over: it stops taking requests, finishes
//! those in hand, then releases the lease. Leases are renewed every
//! [`LEASE_RENEW_MS`]; a partition whose lease could not be renewed in time
//! (its validity on this instance's monotonic clock, less a margin, is
//! spent) stops deciding at once, before anyone else may take it.
//!
//! Everything an account has (its catalog, agents, floor and capacity, its
//! conversations) lives in the account's partition, so one owner decides for
//! all of it; optimistic concurrency on every aggregate (conversation,
//! agent, catalog) stays the safety net should two ever overlap.
//!
//! A command sent while its partition changes hands finds no subscriber
//! (NATS answers "no responders"; over HTTP: 503 `unavailable`); the client
//! retries with the same id, which the new owner recognises.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use convo_domain::ids::check_id;
use convo_store::bus::{Client, CommandBus, Request, Responder};
use convo_store::cluster::Directory;
use convo_store::lease::{LEASE_RENEW_MS, Lease, LeaseError};
use convo_store::{EventStore, StoreError};

use crate::clock::Clock;
use crate::intake::unavailable;
use crate::machine::{Machine, MachineConfig, Partition};
use crate::serve::{PARTITION_QUEUE_MAX, ServeConfig, ServeStats, answer, catalog_applied, run_partition};

/// How often an instance looks at the directory, its leases and its partitions.
pub const COORDINATE_EVERY_MS: u64 = 250;
/// How long a handover waits for the partition's snapshot before releasing without it.
pub const HANDOVER_SNAPSHOT_WAIT: Duration = Duration::from_secs(10);
/// How often an owner writes its partition's snapshot by default.
pub const SNAPSHOT_EVERY_DEFAULT: Duration = Duration::from_secs(60);
/// How long a request forwarded to another instance waits for its answer.
pub const FORWARD_WAIT_MS: u64 = 10_000;
/// How long a request for a partition no instance serves (it is changing
/// hands, or the engine is starting) waits for its next owner before it is
/// answered `unavailable`; it asks again every [`NO_OWNER_RETRY_MS`].
pub const NO_OWNER_WAIT_MS: u64 = 5_000;
pub const NO_OWNER_RETRY_MS: u64 = 100;

/// Who this instance is among those sharing the stream.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The subjects' first token.
    pub prefix: String,
    /// This instance's id (unique: host, process, start).
    pub instance: String,
    /// The stream's partition count.
    pub partitions: usize,
    /// What the heartbeat says besides what is owned (who, where its gateway is).
    pub info: Value,
    /// The stream's directory of instances and leases.
    pub directory: Directory,
    /// Where partitions' snapshots are kept; `None`: recovery reads the whole log.
    pub snapshots: Option<convo_store::snapshot::Snapshots>,
    /// How often an owner writes its partition's snapshot (and once more when it hands over).
    pub snapshot_every: Duration,
}

/// How long after a partition failed to start (its recovery or its
/// subscription) it is taken again.
pub const RETRY_START_AFTER: Duration = Duration::from_secs(5);

/// What the coordinator remembers between its rounds.
#[derive(Debug, Default)]
struct Coordination {
    /// The live instances' ids, as last read (with the heartbeats).
    members: Option<Vec<String>>,
    /// Partitions that failed to start, and when to try again.
    retry_at: BTreeMap<usize, Instant>,
}

/// One partition this instance holds.
struct Held {
    lease: Option<Lease>,
    /// Requests taken in this process (HTTP) for the partition.
    local: mpsc::Sender<Request>,
    /// Stop taking requests, finish those in hand (a handover).
    drain: watch::Sender<bool>,
    /// Stop deciding at once (the lease ran out).
    halt: watch::Sender<bool>,
    handing_over: bool,
    since: Instant,
    /// What the partition did; `None` when it never served (recovery failed).
    task: JoinHandle<Option<ServeStats>>,
}

/// How a partition was recovered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The stream sequence the snapshot covered (0: none was used).
    pub snapshot_covered: u64,
    /// Commits in the snapshot.
    pub snapshot_commits: usize,
    /// Messages of the log read after it.
    pub tail: u64,
    /// The last stream sequence read.
    pub read: u64,
}

/// Recovers a machine holding one partition's accounts: from its snapshot
/// when there is a usable one (an unknown version or a corrupt one is
/// ignored with a warning), then the log after it (the whole log without).
pub async fn recover_partition<S: EventStore>(
    store: &S,
    snapshots: Option<&convo_store::snapshot::Snapshots>,
    index: usize,
    count: usize,
    config: MachineConfig,
) -> Result<(Machine, Recovered), StoreError> {
    let mut machine = Machine::new(config);
    let mut recovered = Recovered::default();
    let snapshot = match snapshots {
        None => None,
        Some(snapshots) => match snapshots.get(index, count).await {
            Ok(snapshot) => snapshot,
            Err(why) => {
                tracing::warn!(partition = index, "ignoring partition {index}'s snapshot ({why}); reading the log");
                None
            }
        },
    };
    let end = store.last_seq().await?;
    if let Some(snapshot) = snapshot {
        if snapshot.covered > end {
            tracing::warn!(
                partition = index,
                "ignoring partition {index}'s snapshot: it covers sequence {} of a stream that ends at {end}",
                snapshot.covered
            );
        } else {
            recovered.snapshot_covered = snapshot.covered;
            recovered.snapshot_commits = snapshot.commits.len();
            for stored in snapshot.commits {
                machine.recover(Ok(stored));
            }
        }
    }
    let mut log = store.read(recovered.snapshot_covered + 1).await?;
    let mut read = recovered.snapshot_covered;
    while let Some(item) = log.next().await {
        if let Err(e @ (StoreError::Unavailable(_) | StoreError::Refused(_))) = &item {
            return Err(e.clone());
        }
        let (seq, aggregate) = convo_store::whereabouts(&item);
        read = read.max(seq);
        recovered.tail += 1;
        if aggregate.is_some_and(|(account, _)| Partition::of(&account, count) == index) {
            machine.recover(item);
        }
    }
    recovered.read = read;
    Ok((machine, recovered))
}

/// What this instance did while it served.
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// Each partition run, as it ended.
    pub partitions: Vec<(usize, ServeStats)>,
    /// Requests forwarded to other instances.
    pub forwarded: u64,
}

/// Serves this instance's share of the partitions until `shutdown`, then
/// hands every partition over and leaves the directory.
pub async fn serve_cluster<S: EventStore + Clone + 'static>(
    store: S,
    client: Client,
    mut local: mpsc::Receiver<Request>,
    clock: Arc<dyn Clock>,
    config: ServeConfig,
    cluster: ClusterConfig,
    shutdown: impl Future<Output = ()>,
) -> ClusterStats {
    let responder = Responder::new(client.clone());
    let directory = cluster.directory.clone();
    let mut held: BTreeMap<usize, Held> = BTreeMap::new();
    let mut stats = ClusterStats::default();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut tick = tokio::time::interval(Duration::from_millis(COORDINATE_EVERY_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renewed = Instant::now() - Duration::from_secs(60);
    let mut local_open = true;
    let mut state = Coordination::default();
    tracing::info!(
        instance = %cluster.instance,
        "sharing {} partitions with the instances on this stream",
        cluster.partitions
    );
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            request = local.recv(), if local_open => match request {
                Some(request) => dispatch(request, &held, &client, &responder, &cluster, &mut stats),
                None => local_open = false,
            },
            _ = tick.tick() => {
                let renew = renewed.elapsed() >= Duration::from_millis(LEASE_RENEW_MS);
                if renew {
                    renewed = Instant::now();
                }
                let (held, stats, state) = (&mut held, &mut stats, &mut state);
                coordinate(&store, &directory, &client, &clock, &config, &cluster, held, stats, state, renew).await;
            }
        }
    }
    // A graceful stop: every partition hands over, then the leases go.
    tracing::info!("handing over {} partition(s)", held.len());
    for part in held.values() {
        let _ = part.drain.send(true);
    }
    for (index, part) in std::mem::take(&mut held) {
        if let Ok(Some(ran)) = part.task.await {
            stats.partitions.push((index, ran));
        }
        if let Some(lease) = part.lease
            && let Err(e) = lease.release().await
        {
            tracing::warn!("could not release partition {index}'s lease ({e}); it expires by itself");
        }
    }
    if let Err(e) = directory.leave(&cluster.instance).await {
        tracing::warn!("could not remove this instance's heartbeat ({e}); it expires by itself");
    }
    stats
}

/// A request taken in this process: to its partition here, or forwarded to
/// the instance that owns it.
fn dispatch(
    request: Request,
    held: &BTreeMap<usize, Held>,
    client: &Client,
    responder: &Responder,
    cluster: &ClusterConfig,
    stats: &mut ClusterStats,
) {
    let refuse = |request: Request, body: Value| {
        let responder = responder.clone();
        tokio::spawn(async move { answer(&responder, &request, &body).await });
    };
    // The account and the kind become subject tokens: ids only.
    if let Err(e) = check_id(&request.account) {
        let error = crate::intake::IntakeError::Invalid { field: "account".into(), message: e.to_string() };
        return refuse(request, error.to_json());
    }
    if check_id(&request.kind).is_err() {
        let error = crate::intake::IntakeError::UnknownCommand(request.kind.clone());
        return refuse(request, error.to_json());
    }
    let index = convo_store::bus::partition_of(&request.account, cluster.partitions);
    if let Some(part) = held.get(&index).filter(|p| !p.handing_over) {
        if let Err(mpsc::error::TrySendError::Full(request) | mpsc::error::TrySendError::Closed(request)) =
            part.local.try_send(request)
        {
            let body =
                crate::intake::overloaded(&format!("{PARTITION_QUEUE_MAX} requests already wait for this partition"));
            let responder = responder.clone();
            tokio::spawn(async move { answer(&responder, &request, &body).await });
        }
        return;
    }
    stats.forwarded += 1;
    let (client, responder, prefix) = (client.clone(), responder.clone(), cluster.prefix.clone());
    tokio::spawn(async move {
        let wait = Duration::from_millis(FORWARD_WAIT_MS);
        let waiting_since = Instant::now();
        let body = loop {
            match convo_store::bus::forward(&client, &prefix, index, &request, wait).await {
                Ok(Some(bytes)) => {
                    let _ = responder.respond(&request, bytes.to_vec()).await;
                    return;
                }
                // Nobody serves it yet (a handover, or this instance is still taking it): wait a little.
                Ok(None) if waiting_since.elapsed() < Duration::from_millis(NO_OWNER_WAIT_MS) => {
                    tokio::time::sleep(Duration::from_millis(NO_OWNER_RETRY_MS)).await;
                }
                Ok(None) => {
                    break unavailable(&format!(
                        "no instance took partition {index} within {NO_OWNER_WAIT_MS} ms (it is changing hands); retry with the same id"
                    ));
                }
                Err(e) => break unavailable(&e.to_string()),
            }
        };
        answer(&responder, &request, &body).await;
    });
}

/// This instance's share: the partitions `n` with `n mod k` its place among
/// the `k` live instances sorted by id (itself counted even before its first
/// heartbeat shows).
pub fn share(instances: &[String], me: &str, count: usize) -> Vec<usize> {
    let mut ids: Vec<&str> = instances.iter().map(String::as_str).collect();
    if !ids.contains(&me) {
        ids.push(me);
    }
    ids.sort_unstable();
    ids.dedup();
    let place = ids.iter().position(|id| *id == me).unwrap_or(0);
    (0..count).filter(|n| n % ids.len() == place).collect()
}

#[allow(clippy::too_many_arguments)]
async fn coordinate<S: EventStore + Clone + 'static>(
    store: &S,
    directory: &Directory,
    client: &Client,
    clock: &Arc<dyn Clock>,
    config: &ServeConfig,
    cluster: &ClusterConfig,
    held: &mut BTreeMap<usize, Held>,
    stats: &mut ClusterStats,
    state: &mut Coordination,
    renew: bool,
) {
    // Partitions whose task ended (handed over, halted, or failed to recover).
    let ended: Vec<usize> = held.iter().filter(|(_, p)| p.task.is_finished()).map(|(n, _)| *n).collect();
    for index in ended {
        let Some(part) = held.remove(&index) else { continue };
        match part.task.await {
            Ok(Some(ran)) => stats.partitions.push((index, ran)),
            // It could not start: try again later, not at the next tick.
            _ => {
                state.retry_at.insert(index, Instant::now() + RETRY_START_AFTER);
            }
        }
        if let Some(lease) = part.lease {
            match lease.release().await {
                Ok(()) => tracing::info!(partition = index, "released partition {index}"),
                Err(e) => tracing::warn!("could not release partition {index}'s lease ({e}); it expires by itself"),
            }
        }
    }
    // The leases: renewed; one that cannot be kept stops its partition at once.
    for (index, part) in held.iter_mut() {
        let Some(lease) = part.lease.as_mut() else { continue };
        if renew {
            match lease.renew().await {
                Ok(()) => {}
                Err(e @ LeaseError::Lost { .. }) => {
                    tracing::error!(partition = index, "{e}");
                    let _ = part.halt.send(true);
                    let _ = part.drain.send(true); // and the pump stops taking requests
                    part.lease = None;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(partition = index, "could not renew partition {index}'s lease ({e}); retrying")
                }
            }
        }
        if lease.valid_for().is_zero() {
            tracing::error!(
                partition = index,
                "partition {index}'s lease could not be renewed in time (NATS unreachable); stopping before another instance may take it"
            );
            let _ = part.halt.send(true);
            let _ = part.drain.send(true); // and the pump stops taking requests
            part.lease = None;
        }
    }
    if renew {
        let owned: Vec<Value> = held
            .iter()
            .map(|(n, p)| json!({"partition": n, "held_secs": p.since.elapsed().as_secs(), "handing_over": p.handing_over}))
            .collect();
        let mut info = cluster.info.clone();
        info["partitions"] = json!(owned);
        if let Err(e) = directory.heartbeat(&cluster.instance, &info).await {
            tracing::warn!("could not write this instance's heartbeat ({e}); retrying");
        }
    }
    // Who is alive changes at the heartbeats' pace: read with them (listing the bucket costs the server).
    if renew || state.members.is_none() {
        match directory.members().await {
            Ok(alive) => state.members = Some(alive.into_iter().map(|m| m.id).collect()),
            Err(e) => tracing::warn!("cannot read the instances' directory ({e}); keeping what is held"),
        }
    }
    let Some(members) = state.members.as_ref() else { return };
    let mine = share(members, &cluster.instance, cluster.partitions);
    // Hand over what is no longer this instance's share.
    for (index, part) in held.iter_mut() {
        if !mine.contains(index) && !part.handing_over {
            tracing::info!(
                partition = index,
                "handing partition {index} over ({} instances share the stream)",
                members.len()
            );
            part.handing_over = true;
            let _ = part.drain.send(true);
        }
    }
    // Take what is, once its lease is free.
    for index in mine {
        if held.contains_key(&index) || state.retry_at.get(&index).is_some_and(|at| Instant::now() < *at) {
            continue;
        }
        state.retry_at.remove(&index);
        match directory.take(index, &cluster.instance).await {
            Ok(lease) => {
                tracing::info!(partition = index, "took partition {index}; recovering it from the log");
                held.insert(index, start(index, lease, store, client, clock, config, cluster));
            }
            Err(LeaseError::Held { .. }) => {} // its owner hands it over, or its lease expires
            Err(e) => tracing::warn!(partition = index, "cannot take partition {index} now: {e}"),
        }
    }
}

/// Starts one partition: recovery, then its requests from NATS (its
/// subjects) and from this process, until drained or halted.
fn start<S: EventStore + Clone + 'static>(
    index: usize,
    lease: Lease,
    store: &S,
    client: &Client,
    clock: &Arc<dyn Clock>,
    config: &ServeConfig,
    cluster: &ClusterConfig,
) -> Held {
    let (local_tx, mut local_rx) = mpsc::channel::<Request>(PARTITION_QUEUE_MAX);
    let (drain_tx, mut drain) = watch::channel(false);
    let (halt_tx, halt) = watch::channel(false);
    let (store, client, clock, config, cluster) =
        (store.clone(), client.clone(), clock.clone(), config.clone(), cluster.clone());
    let task = tokio::spawn(async move {
        let started = Instant::now();
        let snapshots = cluster.snapshots.as_ref();
        let (machine, recovered) =
            match recover_partition(&store, snapshots, index, cluster.partitions, config.machine).await {
                Ok(recovered) => recovered,
                Err(e) => {
                    tracing::error!(partition = index, "cannot recover partition {index} ({e}); giving it up");
                    return None;
                }
            };
        for catalog in machine.world().catalogs() {
            catalog_applied(&config, catalog);
        }
        let mut bus = match CommandBus::subscribe_partition(client.clone(), &cluster.prefix, index).await {
            Ok(bus) => bus,
            Err(e) => {
                tracing::error!(partition = index, "cannot subscribe to partition {index} ({e}); giving it up");
                return None;
            }
        };
        tracing::info!(
            partition = index,
            "serving partition {index}: recovered {} open conversations in {} ms from {}{} messages of the log",
            machine.world().open_conversations(),
            started.elapsed().as_millis(),
            if recovered.snapshot_covered > 0 {
                format!(
                    "its snapshot at sequence {} ({} commits) and ",
                    recovered.snapshot_covered, recovered.snapshot_commits
                )
            } else {
                String::new()
            },
            recovered.tail
        );
        // The partition's snapshot, on a schedule while it is served here.
        let snapshotting = cluster.snapshots.clone().map(|snapshots| {
            let (store, every, count) = (store.clone(), cluster.snapshot_every, cluster.partitions);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await; // not at once: the partition was just read
                let mut written = recovered.read;
                loop {
                    tick.tick().await;
                    if store.last_seq().await.is_ok_and(|end| end > written) {
                        match crate::snapshot::refresh(&store, &snapshots, index, count).await {
                            Ok((snapshot, bytes)) => {
                                tracing::debug!(
                                    partition = index,
                                    "wrote partition {index}'s snapshot at sequence {} ({} commits, {bytes} bytes)",
                                    snapshot.covered,
                                    snapshot.commits.len()
                                );
                                written = snapshot.covered;
                            }
                            Err(e) => {
                                tracing::warn!(partition = index, "could not write partition {index}'s snapshot: {e}")
                            }
                        }
                    }
                }
            })
        });
        let responder = bus.responder();
        let (tx, rx) = mpsc::channel::<Request>(PARTITION_QUEUE_MAX);
        // One queue for the partition: its NATS subjects and this process's requests, until drained.
        let pump = {
            let responder = responder.clone();
            async move {
                let push = async |request: Request| {
                    // A request published straight onto another partition's subject is not this one's.
                    if convo_store::bus::partition_of(&request.account, cluster.partitions) != index {
                        let error = crate::intake::IntakeError::Invalid {
                            field: "subject".into(),
                            message: format!(
                                "account {} is not on partition {index}; send commands on <prefix>.<account>.cmd.<type>",
                                request.account
                            ),
                        };
                        answer(&responder, &request, &error.to_json()).await;
                        return;
                    }
                    if let Err(mpsc::error::TrySendError::Full(request) | mpsc::error::TrySendError::Closed(request)) =
                        tx.try_send(request)
                    {
                        let why = format!("{PARTITION_QUEUE_MAX} requests already wait for this partition");
                        answer(&responder, &request, &crate::intake::overloaded(&why)).await;
                    }
                };
                loop {
                    tokio::select! {
                        biased;
                        changed = drain.changed() => if changed.is_err() || *drain.borrow() { break },
                        request = bus.next() => match request {
                            Some(request) => push(request).await,
                            None => break,
                        },
                        request = local_rx.recv() => match request {
                            Some(request) => push(request).await,
                            None => break,
                        },
                    }
                }
                bus.close().await;
                // Requests of this process still queued here go to the machine before it stops.
                local_rx.close();
                while let Some(request) = local_rx.recv().await {
                    push(request).await;
                }
            }
        };
        let halted = halt.clone();
        let run = run_partition(index, machine, store.clone(), rx, &responder, clock.as_ref(), &config, halt);
        let ((), stats) = tokio::join!(pump, run);
        if let Some(task) = snapshotting {
            task.abort();
        }
        // Handed over (not halted): a snapshot as of now, so the next owner reads only what follows.
        if let Some(snapshots) = cluster.snapshots.as_ref().filter(|_| !*halted.borrow()) {
            let write = crate::snapshot::refresh(&store, snapshots, index, cluster.partitions);
            match tokio::time::timeout(HANDOVER_SNAPSHOT_WAIT, write).await {
                Ok(Ok((snapshot, bytes))) => tracing::info!(
                    partition = index,
                    "wrote partition {index}'s snapshot at sequence {} ({} commits, {bytes} bytes)",
                    snapshot.covered,
                    snapshot.commits.len()
                ),
                Ok(Err(e)) => tracing::warn!(partition = index, "could not write partition {index}'s snapshot: {e}"),
                Err(_) => tracing::warn!(
                    partition = index,
                    "partition {index}'s snapshot took too long; handing over without"
                ),
            }
        }
        Some(stats)
    });
    Held {
        lease: Some(lease),
        local: local_tx,
        drain: drain_tx,
        halt: halt_tx,
        handing_over: false,
        since: Instant::now(),
        task,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_even_and_cover_every_partition() {
        let ids: Vec<String> = ["b", "a", "c"].iter().map(|s| s.to_string()).collect();
        let mut all: Vec<usize> = ids.iter().flat_map(|me| share(&ids, me, 8)).collect();
        assert_eq!(share(&ids, "a", 8), [0, 3, 6]);
        assert_eq!(share(&ids, "c", 8), [2, 5]);
        all.sort_unstable();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
        // Before its first heartbeat shows, an instance counts itself.
        assert_eq!(share(&[], "a", 3), [0, 1, 2]);
        assert_eq!(share(&ids[..1], "z", 4), [1, 3]);
    }
}
