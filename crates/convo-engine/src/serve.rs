//! The service loop: take command requests, fire timers when they fall due
//! on the clock, let routing assign, until asked to stop. Appends of
//! different aggregates are pipelined (see [`crate::pipeline`]). Stopping
//! takes no new request, finishes every command already taken, answers them,
//! and returns.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use convo_domain::{AccountId, Timestamp};
use convo_store::EventStore;
use convo_store::bus::{CommandBus, Request, Responder};

use crate::clock::Clock;
use crate::pipeline::{APPENDS_IN_FLIGHT_MAX, Done, Pipeline, PipelineStats};
use crate::runtime::{Engine, EngineError, Partition};

/// Requests waiting for one partition; beyond, a request is refused as `overloaded`.
pub const PARTITION_QUEUE_MAX: usize = 1024;
/// The most partitions one instance runs.
pub const PARTITIONS_MAX: usize = 256;

/// The longest the loop sleeps when no timer is due (it also wakes for requests).
pub const IDLE_WAKE_MS: u64 = 1_000;
/// A conversation closed this long ago with nothing since leaves memory
/// (late survey answers and repeated commands read it back from the log).
pub const EVICT_CLOSED_AFTER_SECS: u64 = 15 * 60;
/// Above this many conversations in memory (per partition), closed ones are
/// evicted early, oldest first.
pub const LOADED_CONVERSATIONS_MAX: usize = 1_000_000;

/// The service's settings.
#[derive(Debug, Clone, Copy)]
pub struct ServeConfig {
    /// The largest command request accepted, in bytes.
    pub command_bytes_max: usize,
    /// How many partitions share the accounts (each a task with its own engine).
    pub partitions: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self { command_bytes_max: crate::intake::COMMAND_BYTES_MAX, partitions: 1 }
    }
}

/// What a service run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServeStats {
    pub requests: u64,
    pub evicted: u64,
    pub pipeline: PipelineStats,
}

enum Wake {
    Appended(Box<Done>),
    Request(Option<Request>),
    Clock,
}

/// Serves until `shutdown` completes or the bus closes: recovers one engine
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
    let mut queues = Vec::with_capacity(count);
    let mut tasks = Vec::with_capacity(count);
    for engine in Engine::recover_partitions(store, count).await? {
        let (tx, rx) = mpsc::channel(PARTITION_QUEUE_MAX);
        queues.push(tx);
        let (responder, clock) = (responder.clone(), clock.clone());
        tasks.push(tokio::spawn(async move {
            let mut engine = engine;
            run_partition(&mut engine, rx, &responder, clock.as_ref(), config).await
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

/// One partition's loop: its requests, its timers, its routing, until its
/// queue closes and everything taken is done.
pub async fn run_partition<S: EventStore + Clone + 'static>(
    engine: &mut Engine<S>,
    mut requests: mpsc::Receiver<Request>,
    responder: &Responder,
    clock: &dyn Clock,
    config: ServeConfig,
) -> ServeStats {
    let mut pipeline = Pipeline::new(engine.store().clone());
    let responder = responder.clone();
    let mut requests_taken = 0;
    let mut evicted = 0;
    let mut stopping = false;
    loop {
        let world = engine.world_mut();
        if !stopping {
            let now = clock.now();
            pipeline.fire_due(world, &responder, now).await;
            pipeline.route(world, &responder, now).await;
            let idle_since = Timestamp::from_millis(now.millis() - EVICT_CLOSED_AFTER_SECS as i64 * 1000);
            evicted += world.evict_closed(idle_since, LOADED_CONVERSATIONS_MAX) as u64;
        }
        if stopping && pipeline.is_idle() {
            break;
        }
        let wait = world.next_timer().map_or(IDLE_WAKE_MS, |d| d.millis_since(clock.now()).min(IDLE_WAKE_MS));
        let room = pipeline.in_flight() < APPENDS_IN_FLIGHT_MAX;
        let wake = tokio::select! {
            biased;
            done = pipeline.next_done() => Wake::Appended(Box::new(done)),
            request = requests.recv(), if !stopping && room => Wake::Request(request),
            _ = tokio::time::sleep(Duration::from_millis(wait.max(1))), if !stopping => Wake::Clock,
        };
        let world = engine.world_mut();
        match wake {
            Wake::Request(None) => stopping = true,
            Wake::Appended(done) => pipeline.apply_done(world, &responder, *done).await,
            Wake::Request(Some(request)) => {
                requests_taken += 1;
                let now = clock.now();
                // Whatever fell due before this instant happens first; an input wins a tie.
                pipeline.fire_due(world, &responder, Timestamp::from_millis(now.millis() - 1)).await;
                pipeline.take_request(world, &responder, request, now, config.command_bytes_max).await;
            }
            Wake::Clock => {}
        }
    }
    ServeStats { requests: requests_taken, evicted, pipeline: pipeline.stats }
}
