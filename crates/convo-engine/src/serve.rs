//! The service: the partition machine driven by the wall clock, NATS
//! requests and a pipelined event store. A dispatcher hands each request to
//! its account's partition; each partition is one task that turns its
//! [`Machine`]'s outputs into appends, loads and replies, with many appends
//! in flight at once (the machine bounds them). Stopping takes no new
//! request, finishes every command already taken, answers them, and returns.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;

use convo_domain::{AccountId, Timestamp};
use convo_store::bus::{CommandBus, Request, Responder};
use convo_store::{EventStore, LogItem, StoreError};
use convo_wire::Commit;

use crate::clock::Clock;
use crate::intake::{parse_request, result_reply};
use crate::machine::{IoId, Machine, MachineConfig, MachineStats, Origin, Output};
use crate::runtime::{EngineError, Partition, recover_machines};

/// Requests waiting for one partition; beyond, a request is refused as `overloaded`.
pub const PARTITION_QUEUE_MAX: usize = 1024;
/// The most partitions one instance runs.
pub const PARTITIONS_MAX: usize = 256;
/// The longest the loop sleeps when no timer is due (it also wakes for requests).
pub const IDLE_WAKE_MS: u64 = 1_000;
pub use crate::machine::EVICT_CLOSED_AFTER_SECS;

/// The service's settings.
#[derive(Debug, Clone, Copy)]
pub struct ServeConfig {
    /// The largest command request accepted, in bytes.
    pub command_bytes_max: usize,
    /// How many partitions share the accounts (each a task with its own machine).
    pub partitions: usize,
    /// The partition machine's limits.
    pub machine: MachineConfig,
}

impl Default for ServeConfig {
    fn default() -> Self {
        let machine = MachineConfig {
            evict_closed_after_ms: Some(EVICT_CLOSED_AFTER_SECS as i64 * 1000),
            ..MachineConfig::serve()
        };
        Self { command_bytes_max: crate::intake::COMMAND_BYTES_MAX, partitions: 1, machine }
    }
}

/// What one partition did.
pub type ServeStats = MachineStats;

/// Serves until `shutdown` completes or the bus closes: recovers one machine
/// per partition from the log, hands each request to the partition of its
/// account, and returns each partition's stats once all have drained.
pub async fn serve<S: EventStore + Clone + 'static>(
    store: S,
    bus: &mut CommandBus,
    clock: Arc<dyn Clock>,
    config: ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<Vec<ServeStats>, EngineError> {
    let count = config.partitions.clamp(1, PARTITIONS_MAX);
    let responder = bus.responder();
    let (machines, _) = recover_machines(&store, count, config.machine).await?;
    let mut queues = Vec::with_capacity(count);
    let mut tasks = Vec::with_capacity(count);
    for machine in machines {
        let (tx, rx) = mpsc::channel(PARTITION_QUEUE_MAX);
        queues.push(tx);
        let (responder, clock, store) = (responder.clone(), clock.clone(), store.clone());
        tasks.push(tokio::spawn(async move {
            run_partition(machine, store, rx, &responder, clock.as_ref(), config.command_bytes_max).await
        }));
    }
    dispatch(bus, &responder, &queues, shutdown).await;
    drop(queues); // the partitions drain what they hold, then stop
    let mut stats = Vec::with_capacity(count);
    for task in tasks {
        stats.push(task.await.unwrap_or_default());
    }
    Ok(stats)
}

/// Takes requests off the bus and queues each for its account's partition.
async fn dispatch(
    bus: &mut CommandBus,
    responder: &Responder,
    queues: &[mpsc::Sender<Request>],
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let request = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            request = bus.next() => request,
        };
        let Some(request) = request else { break };
        let index = AccountId::new(&request.account).map_or(0, |a| Partition::of(&a, queues.len()));
        if let Err(mpsc::error::TrySendError::Full(request) | mpsc::error::TrySendError::Closed(request)) =
            queues[index].try_send(request)
        {
            let body =
                crate::intake::overloaded(&format!("{PARTITION_QUEUE_MAX} requests already wait for this partition"));
            let _ = responder.respond(&request, serde_json::to_vec(&body).unwrap_or_default()).await;
        }
    }
    bus.close().await;
}

/// What the store answered.
enum IoDone {
    Appended(IoId, Commit, Result<u64, StoreError>),
    Loaded(IoId, Result<Vec<LogItem>, StoreError>),
}

type Pending = Pin<Box<dyn Future<Output = IoDone> + Send>>;

enum Wake {
    Io(IoDone),
    Request(Option<Request>),
    Clock,
}

/// One partition's loop: its requests, its timers, its routing, until its
/// queue closes and everything taken is done.
pub async fn run_partition<S: EventStore + Clone + 'static>(
    mut machine: Machine,
    store: S,
    mut requests: mpsc::Receiver<Request>,
    responder: &Responder,
    clock: &dyn Clock,
    command_bytes_max: usize,
) -> ServeStats {
    let mut io: FuturesUnordered<Pending> = FuturesUnordered::new();
    // Requests taken and not answered yet (bounded by the machine's limits).
    let mut waiting: std::collections::HashMap<u64, Request> = std::collections::HashMap::new();
    let mut next_token = 0u64;
    let mut invalid = 0u64;
    let mut stopping = false;
    let mut last_timeout = Timestamp::from_millis(i64::MIN);
    let mut reported = 0;
    loop {
        // Messages of the log that cannot be applied are skipped and said once each.
        for skipped in &machine.skipped()[reported..] {
            eprintln!(
                "convo: skipped message {} on {}: {} (`convo doctor` lists them and says how to purge them)",
                skipped.seq, skipped.subject, skipped.reason
            );
        }
        reported = machine.skipped().len();
        let now = clock.now();
        let due = machine.poll_timeout().is_some_and(|d| d <= now);
        if !stopping && (due || now.millis_since(last_timeout) >= IDLE_WAKE_MS) {
            machine.handle_timeout(now);
            last_timeout = now;
        }
        while let Some(output) = machine.poll() {
            match output {
                Output::Append { io: id, commit, expected } => {
                    let store = store.clone();
                    io.push(Box::pin(async move {
                        let result = store.append(&commit, expected).await;
                        IoDone::Appended(id, commit, result)
                    }));
                }
                Output::Load { io: id, account, stream } => {
                    let store = store.clone();
                    io.push(Box::pin(async move { IoDone::Loaded(id, store.load(&account, &stream).await) }));
                }
                Output::Reply { origin: Origin::Request(token), result, .. } => {
                    if let Some(request) = waiting.remove(&token) {
                        answer(responder, &request, &result_reply(&result)).await;
                    }
                }
                Output::Reply { origin, envelope, result: Err(failure), .. } => {
                    eprintln!("convo: {origin:?} {} for {}: {failure}", envelope.id, envelope.account);
                }
                Output::Reply { .. } => {}
            }
        }
        if stopping && io.is_empty() && machine.is_idle() {
            break;
        }
        let wait = machine.poll_timeout().map_or(IDLE_WAKE_MS, |d| d.millis_since(clock.now()).min(IDLE_WAKE_MS));
        let room = machine.wants_requests();
        let wake = tokio::select! {
            biased;
            Some(done) = io.next(), if !io.is_empty() => Wake::Io(done),
            request = requests.recv(), if !stopping && room => Wake::Request(request),
            _ = tokio::time::sleep(Duration::from_millis(wait.max(1))), if !stopping => Wake::Clock,
        };
        match wake {
            Wake::Io(IoDone::Appended(id, commit, result)) => machine.handle_appended(id, commit, result),
            Wake::Io(IoDone::Loaded(id, result)) => machine.handle_loaded(id, result),
            Wake::Request(None) => stopping = true,
            Wake::Request(Some(request)) => {
                match parse_request(&request.account, &request.kind, &request.payload, command_bytes_max) {
                    Err(e) => {
                        invalid += 1;
                        answer(responder, &request, &e.to_json()).await;
                    }
                    Ok(envelope) => {
                        next_token += 1;
                        waiting.insert(next_token, request);
                        machine.handle_request(next_token, envelope, clock.now());
                    }
                }
            }
            Wake::Clock => {}
        }
    }
    // Every request taken counts, those refused before the machine saw them too.
    ServeStats { requests: machine.stats().requests + invalid, ..machine.stats() }
}

async fn answer(responder: &Responder, request: &Request, body: &serde_json::Value) {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    if let Err(e) = responder.respond(request, bytes).await {
        eprintln!("convo: cannot answer {}: {e}", request.subject);
    }
}
