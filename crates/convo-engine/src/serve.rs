//! The service loop: take command requests, fire timers when they fall due
//! on the clock, let routing assign, until asked to stop. Appends of
//! different aggregates are pipelined (see [`crate::pipeline`]). Stopping
//! takes no new request, finishes every command already taken, answers them,
//! and returns.

use std::future::Future;
use std::time::Duration;

use convo_domain::Timestamp;
use convo_store::EventStore;
use convo_store::bus::CommandBus;

use crate::clock::Clock;
use crate::pipeline::{APPENDS_IN_FLIGHT_MAX, Done, Pipeline, PipelineStats};
use crate::runtime::Engine;

/// The longest the loop sleeps when no timer is due (it also wakes for requests).
pub const IDLE_WAKE_MS: u64 = 1_000;
/// A conversation closed this long ago with nothing since leaves memory
/// (late survey answers and repeated commands read it back from the log).
pub const EVICT_CLOSED_AFTER_SECS: u64 = 15 * 60;

/// The service's settings.
#[derive(Debug, Clone, Copy)]
pub struct ServeConfig {
    /// The largest command request accepted, in bytes.
    pub command_bytes_max: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self { command_bytes_max: crate::intake::COMMAND_BYTES_MAX }
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
    Stop,
    Appended(Box<Done>),
    Request(Option<convo_store::bus::Request>),
    Clock,
}

/// Serves until `shutdown` completes or the bus closes.
pub async fn serve<S: EventStore + Clone + 'static>(
    engine: &mut Engine<S>,
    bus: &mut CommandBus,
    clock: &dyn Clock,
    config: ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> ServeStats {
    let mut pipeline = Pipeline::new(engine.store().clone());
    let responder = bus.responder();
    let mut requests = 0;
    let mut evicted = 0;
    let mut stopping = false;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let world = engine.world_mut();
        if !stopping {
            let now = clock.now();
            pipeline.fire_due(world, &responder, now).await;
            pipeline.route(world, &responder, now).await;
            let idle_since = Timestamp::from_millis(now.millis() - EVICT_CLOSED_AFTER_SECS as i64 * 1000);
            evicted += world.evict_closed(idle_since) as u64;
        }
        if stopping && pipeline.is_idle() {
            break;
        }
        let wait = world.next_timer().map_or(IDLE_WAKE_MS, |d| d.millis_since(clock.now()).min(IDLE_WAKE_MS));
        let room = pipeline.in_flight() < APPENDS_IN_FLIGHT_MAX;
        let wake = tokio::select! {
            biased;
            _ = &mut shutdown, if !stopping => Wake::Stop,
            done = pipeline.next_done() => Wake::Appended(Box::new(done)),
            request = bus.next(), if !stopping && room => Wake::Request(request),
            _ = tokio::time::sleep(Duration::from_millis(wait.max(1))), if !stopping => Wake::Clock,
        };
        let world = engine.world_mut();
        match wake {
            Wake::Stop | Wake::Request(None) => {
                stopping = true;
                bus.close().await;
            }
            Wake::Appended(done) => pipeline.apply_done(world, &responder, *done).await,
            Wake::Request(Some(request)) => {
                requests += 1;
                let now = clock.now();
                // Whatever fell due before this instant happens first; an input wins a tie.
                pipeline.fire_due(world, &responder, Timestamp::from_millis(now.millis() - 1)).await;
                pipeline.take_request(world, &responder, request, now, config.command_bytes_max).await;
            }
            Wake::Clock => {}
        }
    }
    ServeStats { requests, evicted, pipeline: pipeline.stats }
}
