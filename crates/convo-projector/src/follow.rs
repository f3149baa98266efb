//! Read models kept current inside `convo serve`: one follower task per
//! projection folds the stream from the projection's own checkpoint whenever
//! the stream's end moves past it (exactly once: each batch is written with
//! its checkpoint), and publishes how far it has come.

use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use convo_store::EventStore;

use crate::{Projection, Projector};

/// How long a follower waits after a failed fold before trying again.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A read model a follower keeps current: its trees and its position.
#[derive(Debug, Clone)]
pub struct Followed {
    pub projector: Projector,
    position: watch::Receiver<u64>,
}

impl Followed {
    /// The last stream sequence the read model holds.
    pub fn checkpoint(&self) -> u64 {
        *self.position.borrow()
    }

    /// Waits until the read model holds the stream up to `seq`, at most
    /// `wait`; whether it does.
    pub async fn reached(&self, seq: u64, wait: Duration) -> bool {
        let mut position = self.position.clone();
        matches!(tokio::time::timeout(wait, position.wait_for(|at| *at >= seq)).await, Ok(Ok(_)))
    }
}

/// Starts following: folds whenever `ends` (the stream's last sequence, as
/// its watcher last saw it) is past the checkpoint, until `ends` closes or
/// `stop` is cancelled (between batches or in the middle of one: each batch
/// is written with its checkpoint, so a stop loses nothing).
pub fn spawn<S, P>(
    projector: Projector,
    store: S,
    mut projection: P,
    mut ends: watch::Receiver<u64>,
    stop: CancellationToken,
) -> Result<(Followed, tokio::task::JoinHandle<()>), crate::ProjectorError>
where
    S: EventStore + Send + Sync + 'static,
    P: Projection + Send + 'static,
{
    // A tree of another layout is set aside first: the position is then the new tree's.
    projector.ensure_layout(projection.layout())?;
    let (position_tx, position) = watch::channel(projector.checkpoint()?);
    let followed = Followed { projector: projector.clone(), position };
    let task = tokio::spawn(async move {
        let name = projector.name();
        loop {
            let at = *position_tx.borrow();
            tokio::select! {
                _ = stop.cancelled() => return,
                moved = ends.wait_for(|end| *end > at) => if moved.is_err() {
                    return; // the watcher is gone: serve is stopping
                },
            }
            let mut progress = |at: u64, _| {
                position_tx.send_replace(at);
            };
            let caught_up = tokio::select! {
                _ = stop.cancelled() => return,
                caught_up = projector.catch_up(&store, &mut projection, &mut progress) => caught_up,
            };
            match caught_up {
                Ok(stats) => {
                    position_tx.send_replace(stats.checkpoint);
                    if stats.dead_letters > 0 {
                        tracing::error!(
                            projection = name,
                            dead_letters = stats.dead_letters,
                            "the {name} read model put {} commits aside (see its dead letters)",
                            stats.dead_letters
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        projection = name,
                        "the {name} read model cannot follow the stream now ({e}); retrying"
                    );
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(RETRY_AFTER) => {}
                    }
                }
            }
        }
    });
    Ok((followed, task))
}

/// Watches the stream's end: `last_seq` every `every`, published to the
/// followers (and whoever waits for them) until the receivers are gone or
/// `stop` is cancelled.
pub fn watch_end<S>(
    store: S,
    every: Duration,
    stop: CancellationToken,
) -> (watch::Receiver<u64>, tokio::task::JoinHandle<()>)
where
    S: EventStore + Send + Sync + 'static,
{
    let (tx, rx) = watch::channel(0);
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            if tx.is_closed() {
                return;
            }
            if let Ok(end) = store.last_seq().await {
                tx.send_if_modified(|old| std::mem::replace(old, end) != end);
            }
        }
    });
    (rx, task)
}
