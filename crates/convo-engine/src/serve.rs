//! The service loop: take command requests, fire timers when they fall due
//! on the clock, let routing assign, until asked to stop. Stopping finishes
//! the command in hand, answers it, and unsubscribes.

use std::future::Future;
use std::time::Duration;

use convo_domain::Timestamp;
use convo_store::EventStore;
use convo_store::bus::{CommandBus, Request};

use crate::clock::Clock;
use crate::intake::{parse_request, reply, unavailable};
use crate::runtime::{Engine, EngineError};

/// The longest the loop sleeps when no timer is due (it also wakes for requests).
pub const IDLE_WAKE_MS: u64 = 1_000;
/// After a store error in timers or routing, wait this long before retrying.
pub const STORE_RETRY_MS: u64 = 500;

/// What a service run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServeStats {
    pub requests: u64,
    pub store_errors: u64,
}

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

/// Serves until `shutdown` completes or the bus closes.
pub async fn serve<S: EventStore>(
    engine: &mut Engine<S>,
    bus: &mut CommandBus,
    clock: &dyn Clock,
    config: ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> ServeStats {
    let mut stats = ServeStats::default();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        if let Err(e) = background(engine, clock.now()).await {
            stats.store_errors += 1;
            eprintln!("convo: timers or routing failed, retrying: {e}");
            tokio::time::sleep(Duration::from_millis(STORE_RETRY_MS)).await;
        }
        let wait =
            engine.world_mut().next_timer().map_or(IDLE_WAKE_MS, |d| d.millis_since(clock.now()).min(IDLE_WAKE_MS));
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            request = bus.next() => {
                let Some(request) = request else { break };
                stats.requests += 1;
                if let Err(e) = handle(engine, bus, &request, clock, config).await {
                    stats.store_errors += 1;
                    eprintln!("convo: {e}");
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(wait.max(1))) => {}
        }
    }
    bus.close().await;
    stats
}

/// Timers due now, then routing.
async fn background<S: EventStore>(engine: &mut Engine<S>, now: Timestamp) -> Result<(), EngineError> {
    engine.fire_due(now, false).await?;
    engine.route(now).await?;
    Ok(())
}

async fn handle<S: EventStore>(
    engine: &mut Engine<S>,
    bus: &CommandBus,
    request: &Request,
    clock: &dyn Clock,
    config: ServeConfig,
) -> Result<(), String> {
    let now = clock.now();
    // Whatever fell due before this instant happens first; an input wins a tie.
    let earlier = Timestamp::from_millis(now.millis() - 1);
    let body = match engine.fire_due(earlier, false).await {
        Err(e) => unavailable(&e.to_string()),
        Ok(_) => match parse_request(&request.account, &request.payload, config.command_bytes_max) {
            Err(e) => e.to_json(),
            Ok(envelope) => match engine.execute(&envelope, now).await {
                Ok(outcome) => {
                    let body = reply(&outcome);
                    if let Err(e) = engine.route(now).await {
                        eprintln!("convo: routing after {}: {e}", envelope.id);
                    }
                    body
                }
                Err(e) => unavailable(&e.to_string()),
            },
        },
    };
    let bytes = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
    bus.respond(request, bytes).await.map_err(|e| e.to_string())
}
