//! Engine instances sharing a stream's partitions (DESIGN.md, "The service
//! and its ownership"): the driver of the ownership machine
//! ([`crate::ownership`]) over JetStream KV and core NATS, and of each
//! partition it holds.
//!
//! Accounts hash onto the stream's partitions ([`Partition::of`], the same
//! function as the server's `partition()` mapping, which puts each command
//! on its partition's subject). The driver keeps the machine told what the
//! directory holds (one KV watcher: the instances' heartbeats and the
//! leases), probes the other instances' presence (a core NATS request to
//! `<prefix>.~alive.<instance>`, which each instance answers: "no responders"
//! means its connection is gone), and carries out what the machine asks:
//! leases taken, renewed and released; a partition taken with its fence
//! (`convo_store::fence`) before it is recovered from its snapshot and the
//! log's tail and served; drained on a handover (a snapshot written, then
//! the lease released); halted at once when another instance holds it; the
//! stream-wide roles (`feeds`) played the same way.
//!
//! Everything an account has (its catalog, agents, floor and capacity, its
//! conversations) lives in the account's partition, so one owner decides for
//! all of it, and the fence makes the log refuse anyone else.
//!
//! A command sent while its partition changes hands finds no subscriber
//! (NATS answers "no responders"; over HTTP the gateway waits for the new
//! owner a moment, then answers 503 `unavailable`); the client retries with
//! the same id, which the new owner recognises.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use convo_domain::ids::check_id;
use convo_store::bus::{Client, CommandBus, Request, Responder};
use convo_store::cluster::{Directory, DirectoryEvent, KeyError};
use convo_store::fence::Fence;
use convo_store::{EventStore, JetStreamStore, StoreError};

use crate::clock::Clock;
use crate::intake::unavailable;
use crate::machine::{Machine, MachineConfig, Partition};
use crate::ownership::{Action, DirectoryView, Ownership, OwnershipConfig, RenewError, Resource, TakeError};
use crate::serve::{
    Hold, PARTITION_QUEUE_MAX, PartitionEnd, ServeConfig, ServeStats, answer, catalog_applied, run_partition,
};

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
/// How long a presence probe waits for its answer.
pub const PROBE_TIMEOUT_MS: u64 = 500;
/// How long readiness waits for a holder's presence probe.
pub const READINESS_PROBE_WAIT_MS: u64 = 250;
/// How long a graceful stop waits for every partition to be handed over.
pub const STOP_WAIT: Duration = Duration::from_secs(30);
/// The subject token of the instances' presence.
const ALIVE: &str = "~alive";
/// The token of the partitions' presence subjects (`<prefix>.~serving.<n>`).
const SERVING: &str = "~serving";

/// A stream-wide role one instance plays at a time (the JSON stream and the
/// webhooks: `feeds`).
pub trait Role: Send + Sync + 'static {
    /// Plays the role until `stop` is cancelled; ends once it has stopped.
    fn play(&self, stop: CancellationToken) -> BoxFuture<'static, ()>;
}

/// Who this instance is among those sharing the stream.
#[derive(Clone)]
pub struct ClusterConfig {
    /// The subjects' first token.
    pub prefix: String,
    /// This instance's id (unique: host, process, start).
    pub instance: String,
    /// The stream's partition count.
    pub partitions: usize,
    /// What the heartbeat says besides what is held (who, where its gateway is).
    pub info: Value,
    /// The stream's directory of instances and leases.
    pub directory: Directory,
    /// Where partitions' snapshots are kept; `None`: recovery reads the whole log.
    pub snapshots: Option<convo_store::snapshot::Snapshots>,
    /// How often an owner writes its partition's snapshot (and once more when it hands over).
    pub snapshot_every: Duration,
    /// The stream-wide roles this instance may play.
    pub roles: BTreeMap<String, Arc<dyn Role>>,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("prefix", &self.prefix)
            .field("instance", &self.instance)
            .field("partitions", &self.partitions)
            .field("roles", &self.roles.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// What this instance sees of the partitions, for readiness.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterStatus {
    /// Partitions no live instance serves as this one sees it (changing hands).
    pub unowned: Vec<usize>,
    /// Partitions this instance serves.
    pub serving: Vec<usize>,
    /// The instances alive, by id.
    pub live: Vec<String>,
}

/// The partitions nobody answers for at this moment: those `status` names
/// (changing hands as this instance sees it), and those whose presence
/// subject (`<prefix>.~serving.<n>`, answered by whichever instance has
/// recovered the partition and takes its commands) has no responder now —
/// so readiness does not wait for this instance's next probe of a dead
/// owner, nor trust a lease whose new holder is still recovering. A probe
/// without an answer in time is not taken for an absence (a loaded owner is
/// slow, not gone).
pub async fn unowned_now(client: &Client, prefix: &str, partitions: usize, status: &ClusterStatus) -> Vec<usize> {
    let wait = Duration::from_millis(READINESS_PROBE_WAIT_MS);
    let probes = (0..partitions).map(|n| async move {
        (n, convo_store::bus::probe(client, serving_subject(prefix, n), wait).await == Some(false))
    });
    let mut unowned: BTreeSet<usize> = status.unowned.iter().copied().collect();
    unowned.extend(futures::future::join_all(probes).await.into_iter().filter(|(_, nobody)| *nobody).map(|(n, _)| n));
    unowned.into_iter().collect()
}

/// Where the instance answering for partition `n` answers presence probes.
fn serving_subject(prefix: &str, n: usize) -> String {
    format!("{prefix}.{SERVING}.{n}")
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
            for mut stored in snapshot.commits {
                // A snapshot keeps what the log holds: personal values sealed.
                store.open(&mut stored.commit).await?;
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

/// A partition this instance serves.
struct PartitionHandle {
    /// Requests taken in this process (HTTP) for the partition.
    local: mpsc::Sender<Request>,
    /// Stop taking requests, finish those in hand (a handover).
    drain: CancellationToken,
    /// Stop deciding at once (another instance holds it).
    halt: watch::Sender<bool>,
    /// Recovered and subscribed: it answers commands now.
    answering: Arc<std::sync::atomic::AtomicBool>,
    /// Until when this instance's hold on it is confirmed.
    hold: Arc<Hold>,
}

/// What one of the driver's operations came to.
enum Done {
    Taken(Resource, Result<(u64, Option<Arc<Fence>>), TakeError>),
    Renewed(Resource, Result<u64, RenewError>),
    Released(Resource),
    Probed(String, Option<bool>),
    Stopped(Resource, Option<PartitionEnd>),
    Nothing,
}

/// Serves this instance's share of the partitions (and the roles it is
/// given) until `shutdown`, then hands every one over and leaves the
/// directory. `status` says, as it changes, which partitions nobody serves.
#[allow(clippy::too_many_arguments)] // the instance's inputs, each its own channel or handle
pub async fn serve_cluster(
    store: JetStreamStore,
    client: Client,
    mut local: mpsc::Receiver<Request>,
    clock: Arc<dyn Clock>,
    config: ServeConfig,
    cluster: ClusterConfig,
    status: watch::Sender<ClusterStatus>,
    shutdown: CancellationToken,
) -> ClusterStats {
    let started = Instant::now();
    let ms = move || started.elapsed().as_millis() as u64;
    let me = cluster.instance.clone();
    let roles: Vec<String> = cluster.roles.keys().cloned().collect();
    let mut ownership = Ownership::new(OwnershipConfig::serve(&me, cluster.partitions, roles));
    let responder = Responder::new(client.clone());
    let mut stats = ClusterStats::default();
    let background = CancellationToken::new();
    let mut directory_events = watch_directory(cluster.directory.clone(), background.clone());
    let presence = match convo_store::bus::presence(&client, format!("{}.{ALIVE}.{me}", cluster.prefix)).await {
        Ok(presence) => Some(presence),
        Err(e) => {
            tracing::warn!("cannot answer presence probes ({e}); other instances wait for this one's leases to expire");
            None
        }
    };
    tracing::info!(instance = %me, "sharing {} partitions with the instances on this stream", cluster.partitions);
    let mut view = DirectoryView::default();
    let mut partitions: BTreeMap<usize, PartitionHandle> = BTreeMap::new();
    let mut playing: BTreeMap<String, CancellationToken> = BTreeMap::new();
    let mut fences: BTreeMap<usize, Arc<Fence>> = BTreeMap::new();
    let mut work: FuturesUnordered<BoxFuture<'static, Done>> = FuturesUnordered::new();
    let answered = Arc::new(tokio::sync::Notify::new());
    let mut gone: BTreeSet<String> = BTreeSet::new();
    let mut stop_by: Option<Instant> = None;
    let mut local_open = true;
    loop {
        while let Some(action) = ownership.poll() {
            let context = Context {
                store: &store,
                client: &client,
                clock: &clock,
                config: &config,
                cluster: &cluster,
                answered: &answered,
                started,
            };
            let running = Running { partitions: &mut partitions, playing: &mut playing, fences: &mut fences };
            if let Some(future) = perform(action, context, running) {
                work.push(future);
            }
        }
        for (n, handle) in &partitions {
            handle.hold.set(ownership.confirmed_until(&Resource::Partition(*n)));
        }
        status.send_if_modified(|now| {
            // Held here but still recovering: nobody answers its commands yet.
            let answering = |n: &usize| partitions.get(n).is_some_and(|p| p.answering.load(Ordering::Acquire));
            let mut unowned = ownership.unowned_partitions();
            unowned.extend(partitions.keys().filter(|n| !answering(n)));
            unowned.sort_unstable();
            unowned.dedup();
            let next = ClusterStatus {
                unowned,
                serving: partitions.keys().copied().filter(answering).collect(),
                live: ownership.live(),
            };
            let changed = *now != next;
            *now = next;
            changed
        });
        if let Some(by) = stop_by {
            if ownership.is_stopped() && work.is_empty() {
                break;
            }
            if Instant::now() >= by {
                tracing::warn!(
                    "{} partition(s) not handed over within {STOP_WAIT:?}; their leases expire by themselves",
                    partitions.len()
                );
                break;
            }
        }
        let wait = Duration::from_millis(ownership.poll_timeout().saturating_sub(ms()).clamp(1, 250));
        tokio::select! {
            _ = shutdown.cancelled(), if stop_by.is_none() => {
                tracing::info!("handing over {} partition(s)", partitions.len());
                stop_by = Some(Instant::now() + STOP_WAIT);
                ownership.shutdown();
            }
            event = directory_events.recv() => {
                if let Some(event) = event {
                    apply(&mut view, event, ms(), ownership.config().member_ttl_ms);
                    ownership.handle_directory(view.clone(), ms());
                }
            }
            request = local.recv(), if local_open => match request {
                Some(request) => dispatch(request, &partitions, &client, &responder, &cluster, &mut stats),
                None => local_open = false,
            },
            Some(done) = work.next(), if !work.is_empty() => match done {
                Done::Taken(resource, result) => {
                    match &result {
                        Ok((_, Some(fence))) => {
                            tracing::info!(partition = fence.partition, "took partition {} (epoch {})", fence.partition, fence.epoch());
                            fences.insert(fence.partition, fence.clone());
                        }
                        Ok((_, None)) => tracing::info!("took {resource}"),
                        Err(TakeError::Unavailable) => tracing::warn!("cannot take {resource} now; retrying"),
                        Err(TakeError::Held { .. }) => {}
                    }
                    ownership.handle_taken(resource, result.map(|(revision, _)| revision));
                }
                Done::Renewed(resource, result) => ownership.handle_renewed(resource, result),
                Done::Released(resource) => {
                    tracing::info!("released {resource}");
                    ownership.handle_released(resource);
                }
                Done::Probed(instance, alive) => {
                    // Said once per death (its heartbeat stays in view until it expires; probes go on).
                    gone.retain(|id| view.members.contains_key(id) || view.leases.values().any(|(h, _)| h == id));
                    if alive == Some(false) && gone.insert(instance.clone()) {
                        tracing::info!("instance {instance} is gone (its connection closed); its partitions are free");
                    } else if alive == Some(true) {
                        gone.remove(&instance);
                    }
                    ownership.handle_probed(&instance, alive);
                }
                Done::Stopped(resource, end) => {
                    if let Resource::Partition(n) = &resource {
                        partitions.remove(n);
                    }
                    if let Resource::Role(name) = &resource {
                        playing.remove(name);
                    }
                    if let Some(end) = end {
                        if let Resource::Partition(n) = &resource {
                            stats.partitions.push((*n, end.stats));
                        }
                        if end.deposed {
                            ownership.handle_deposed(resource.clone());
                        }
                    }
                    ownership.handle_stopped(resource);
                }
                Done::Nothing => {}
            },
            _ = answered.notified() => {} // the status above says so
            _ = tokio::time::sleep(wait) => ownership.handle_timeout(ms()),
        }
    }
    background.cancel();
    drop(presence);
    if let Err(e) = cluster.directory.leave(&me).await {
        tracing::warn!("could not remove this instance's heartbeat ({e}); it expires by itself");
    }
    stats
}

/// What an action needs of the instance.
struct Context<'a> {
    store: &'a JetStreamStore,
    client: &'a Client,
    clock: &'a Arc<dyn Clock>,
    config: &'a ServeConfig,
    cluster: &'a ClusterConfig,
    /// Woken when a partition starting here answers commands.
    answered: &'a Arc<tokio::sync::Notify>,
    /// The driver's clock's start (the ownership machine's milliseconds count from it).
    started: Instant,
}

/// What the instance runs now.
struct Running<'a> {
    partitions: &'a mut BTreeMap<usize, PartitionHandle>,
    playing: &'a mut BTreeMap<String, CancellationToken>,
    fences: &'a mut BTreeMap<usize, Arc<Fence>>,
}

/// Carries out one of the ownership machine's actions: at once, or as a
/// future whose answer goes back to the machine.
fn perform(action: Action, cx: Context<'_>, running: Running<'_>) -> Option<BoxFuture<'static, Done>> {
    let directory = cx.cluster.directory.clone();
    let me = cx.cluster.instance.clone();
    match action {
        Action::Heartbeat { holds } => {
            let mut info = cx.cluster.info.clone();
            info["partitions"] = json!(
                holds
                    .iter()
                    .filter_map(|r| match r {
                        Resource::Partition(n) => Some(json!({"partition": n})),
                        Resource::Role(_) => None,
                    })
                    .collect::<Vec<_>>()
            );
            info["roles"] = json!(
                holds
                    .iter()
                    .filter_map(|r| match r {
                        Resource::Role(name) => Some(name.clone()),
                        Resource::Partition(_) => None,
                    })
                    .collect::<Vec<_>>()
            );
            Some(Box::pin(async move {
                if let Err(e) = directory.heartbeat(&me, &info).await {
                    tracing::warn!("could not write this instance's heartbeat ({e}); retrying");
                }
                Done::Nothing
            }))
        }
        Action::Take { resource, over } => {
            // Our own expired key created again: the fence we hold stays ours.
            let refresh = match &resource {
                Resource::Partition(n) => running.partitions.contains_key(n),
                Resource::Role(name) => running.playing.contains_key(name),
            };
            let store = cx.store.clone();
            Some(Box::pin(async move {
                let revision = match directory.take_key(&resource.key(), &me, over.map(|(_, r)| r)).await {
                    Ok(revision) => revision,
                    Err(KeyError::Held(holder)) => {
                        let holder = holder.unwrap_or_else(|| "nobody".into());
                        return Done::Taken(resource, Err(TakeError::Held { holder }));
                    }
                    Err(KeyError::Store(_)) => return Done::Taken(resource, Err(TakeError::Unavailable)),
                };
                let fence = match &resource {
                    Resource::Partition(n) if !refresh => match store.take_fence(*n, &me).await {
                        Ok(fence) => Some(fence),
                        Err(e) => {
                            tracing::warn!(
                                partition = n,
                                "took partition {n}'s lease but not its fence ({e}); giving it back"
                            );
                            let _ = directory.release_key(&resource.key(), &me, revision).await;
                            return Done::Taken(resource, Err(TakeError::Unavailable));
                        }
                    },
                    _ => None,
                };
                Done::Taken(resource, Ok((revision, fence)))
            }))
        }
        Action::Start { resource: Resource::Partition(n) } => {
            let Some(fence) = running.fences.remove(&n) else {
                return Some(Box::pin(async move { Done::Stopped(Resource::Partition(n), None) }));
            };
            let (handle, task) = start(n, fence, &cx);
            running.partitions.insert(n, handle);
            Some(Box::pin(async move { Done::Stopped(Resource::Partition(n), task.await.ok().flatten()) }))
        }
        Action::Start { resource: Resource::Role(name) } => {
            let role = cx.cluster.roles.get(&name).cloned()?;
            tracing::info!("this instance plays the {name} role");
            let stop = CancellationToken::new();
            running.playing.insert(name.clone(), stop.clone());
            let task = tokio::spawn(role.play(stop));
            Some(Box::pin(async move {
                let _ = task.await;
                Done::Stopped(Resource::Role(name), None)
            }))
        }
        Action::Renew { resource, revision } => Some(Box::pin(async move {
            let result = match directory.renew_key(&resource.key(), &me, revision).await {
                Ok(revision) => Ok(revision),
                Err(KeyError::Held(holder)) => Err(RenewError::Lost { holder }),
                Err(KeyError::Store(_)) => Err(RenewError::Unavailable),
            };
            Done::Renewed(resource, result)
        })),
        Action::Drain { resource } => {
            tracing::info!("handing {resource} over");
            stop(&resource, &running, None);
            None
        }
        Action::Halt { resource, why } => {
            tracing::warn!("stopped deciding for {resource}: {why}");
            stop(&resource, &running, Some(()));
            None
        }
        Action::Release { resource, revision } => Some(Box::pin(async move {
            if let Err(e) = directory.release_key(&resource.key(), &me, revision).await {
                tracing::info!("{resource}'s lease could not be released ({e}); it expires by itself");
            }
            Done::Released(resource)
        })),
        Action::Probe { instance } => {
            let (client, subject) = (cx.client.clone(), format!("{}.{ALIVE}.{instance}", cx.cluster.prefix));
            Some(Box::pin(async move {
                let alive = convo_store::bus::probe(&client, subject, Duration::from_millis(PROBE_TIMEOUT_MS)).await;
                Done::Probed(instance, alive)
            }))
        }
    }
}

/// Stops serving a resource: drained (a handover), or halted at once (`halt`).
fn stop(resource: &Resource, running: &Running<'_>, halt: Option<()>) {
    match resource {
        Resource::Partition(n) => {
            if let Some(handle) = running.partitions.get(n) {
                if halt.is_some() {
                    let _ = handle.halt.send(true);
                }
                handle.drain.cancel();
            }
        }
        Resource::Role(name) => {
            if let Some(token) = running.playing.get(name) {
                token.cancel();
            }
        }
    }
}

/// The directory's changes, from one watcher (watched again after a failure).
fn watch_directory(directory: Directory, stop: CancellationToken) -> mpsc::Receiver<DirectoryEvent> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        while !stop.is_cancelled() {
            match directory.watch().await {
                Ok(events) => {
                    let mut events = std::pin::pin!(events);
                    loop {
                        let event = tokio::select! {
                            _ = stop.cancelled() => return,
                            event = events.next() => event,
                        };
                        match event {
                            Some(Ok(event)) => {
                                if tx.send(event).await.is_err() {
                                    return;
                                }
                            }
                            Some(Err(e)) => {
                                tracing::warn!("the directory's watcher stopped ({e}); watching again");
                                break;
                            }
                            None => break,
                        }
                    }
                }
                Err(e) => tracing::warn!("cannot watch the directory now ({e}); retrying"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    });
    rx
}

/// The directory as the machine sees it, after one change.
fn apply(view: &mut DirectoryView, event: DirectoryEvent, now: u64, ttl: u64) {
    match event {
        DirectoryEvent::Put { key, value, revision, age } => {
            if let Some(id) = key.strip_prefix("instance.") {
                let seen = now.saturating_sub((age.as_millis() as u64).min(ttl));
                view.members.insert(id.to_owned(), seen);
            } else if let Some(resource) = Resource::from_key(&key) {
                view.leases.insert(resource, (String::from_utf8_lossy(&value).into_owned(), revision));
            }
        }
        DirectoryEvent::Gone { key } => {
            if let Some(id) = key.strip_prefix("instance.") {
                view.members.remove(id);
            } else if let Some(resource) = Resource::from_key(&key) {
                view.leases.remove(&resource);
            }
        }
    }
}

/// A request taken in this process: to its partition here, or forwarded to
/// the instance that owns it.
fn dispatch(
    request: Request,
    held: &BTreeMap<usize, PartitionHandle>,
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
    if let Some(part) = held.get(&index).filter(|p| !p.drain.is_cancelled()) {
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

/// Starts one partition: recovery, then its requests from NATS (its
/// subjects) and from this process, until drained or halted.
fn start(
    index: usize,
    fence: Arc<Fence>,
    cx: &Context<'_>,
) -> (PartitionHandle, tokio::task::JoinHandle<Option<PartitionEnd>>) {
    let (store, client, clock, config, cluster) = (cx.store, cx.client, cx.clock, cx.config, cx.cluster);
    let answered = cx.answered.clone();
    let (local_tx, mut local_rx) = mpsc::channel::<Request>(PARTITION_QUEUE_MAX);
    let drain = CancellationToken::new();
    let (halt_tx, halt) = watch::channel(false);
    let answering = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hold = Arc::new(Hold::new(cx.started));
    let handle = PartitionHandle {
        local: local_tx,
        drain: drain.clone(),
        halt: halt_tx,
        answering: answering.clone(),
        hold: hold.clone(),
    };
    // Appends (and read-backs) carry the partition's epoch; recovery and snapshots read as anyone.
    let fenced = store.fenced(fence);
    let (store, client, clock, config, cluster) =
        (store.clone(), client.clone(), clock.clone(), config.clone(), cluster.clone());
    let stop_taking = drain.clone();
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
        // Probes of "is anyone answering for this partition" (readiness) find it from now on.
        let presence = match convo_store::bus::presence(&client, serving_subject(&cluster.prefix, index)).await {
            Ok(presence) => Some(presence),
            Err(e) => {
                tracing::warn!(partition = index, "cannot answer partition {index}'s presence probes ({e})");
                None
            }
        };
        answering.store(true, std::sync::atomic::Ordering::Release);
        answered.notify_one();
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
        // The periodic snapshot stops between writes (a write in progress finishes).
        let snapshot_stop = CancellationToken::new();
        let snapshotting = cluster.snapshots.clone().map(|snapshots| {
            let (store, every, count) = (store.clone(), cluster.snapshot_every, cluster.partitions);
            let stop = snapshot_stop.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await; // not at once: the partition was just read
                let mut written = recovered.read;
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => {}
                    }
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
                        _ = stop_taking.cancelled() => break,
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
                drop(presence); // nobody takes its commands here any more
                bus.close().await;
                // Requests of this process still queued here go to the machine before it stops.
                local_rx.close();
                while let Some(request) = local_rx.recv().await {
                    push(request).await;
                }
            }
        };
        let halted = halt.clone();
        let run = async {
            let end =
                run_partition(index, machine, fenced, rx, &responder, clock.as_ref(), &config, halt, Some(&hold)).await;
            drain.cancel(); // deposed or halted: the pump stops taking requests too
            end
        };
        let ((), end) = tokio::join!(pump, run);
        snapshot_stop.cancel();
        if let Some(task) = snapshotting {
            let _ = task.await;
        }
        // Handed over (not halted, not deposed): a snapshot as of now, so the next owner reads only what follows.
        if let Some(snapshots) = cluster.snapshots.as_ref().filter(|_| !*halted.borrow() && !end.deposed) {
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
        Some(end)
    });
    (handle, task)
}
