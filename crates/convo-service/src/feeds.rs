//! The `feeds` role: the JSON event stream (`<STREAM>_JSON`) republished and
//! the webhooks delivered, by one instance per stream at a time (the
//! ownership machine decides which); played until told to stop, then
//! stopped in order (webhook attempts under way get [`WEBHOOKS_STOP_WAIT`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use convo_store::JetStreamStore;

/// How long webhook attempts under way may take to finish when the role stops.
pub const WEBHOOKS_STOP_WAIT: Duration = Duration::from_secs(5);
/// How long after a failure the JSON stream is republished again.
pub const REPUBLISH_RETRY: Duration = Duration::from_secs(1);

/// What the JSON stream and the webhooks need.
#[derive(Clone)]
#[allow(missing_debug_implementations)] // its parts hold handles without Debug
pub struct Feeds {
    pub store: JetStreamStore,
    pub redactions: Arc<convo_wire::redact::Redactions>,
    pub json_stream: convo_store::json_stream::JsonStreamConfig,
    /// How far the JSON stream has republished (for the lag metric).
    pub json_checkpoint: Arc<AtomicU64>,
    pub deliveries: convo_webhooks::Deliveries,
    pub queue: convo_webhooks::Queue,
    pub webhooks: convo_webhooks::WebhookConfig,
}

impl convo_engine::cluster::Role for Feeds {
    fn play(&self, stop: CancellationToken) -> BoxFuture<'static, ()> {
        let feeds = self.clone();
        Box::pin(async move {
            let republishing = republish(feeds.clone(), stop.clone());
            let stopping = stop.clone();
            let webhooks = convo_webhooks::run(
                feeds.deliveries.clone(),
                feeds.store.clone(),
                feeds.queue.clone(),
                feeds.webhooks.clone(),
                async move { stopping.cancelled().await },
            );
            let webhooks = async {
                tokio::select! {
                    _ = webhooks => {}
                    // Attempts under way are made again at the next start (the same webhook-id).
                    _ = async { stop.cancelled().await; tokio::time::sleep(WEBHOOKS_STOP_WAIT).await } => {}
                }
            };
            // Erasures: keys destroyed, the JSON stream's copies overwritten.
            let erasing = async {
                let Some(keys) = feeds.store.keys().cloned() else { return };
                let checkpoint = feeds.json_checkpoint.clone();
                let json_at: Arc<dyn Fn() -> u64 + Send + Sync> = Arc::new(move || checkpoint.load(Ordering::Relaxed));
                let stopping = stop.clone();
                convo_store::erasure::run(feeds.store.clone(), keys, feeds.json_stream.clone(), json_at, async move {
                    stopping.cancelled().await
                })
                .await;
            };
            tokio::join!(republishing, webhooks, erasing);
        })
    }
}

/// Keeps the JSON stream republished until `stop` (retrying after a
/// failure: its checkpoint says where it stands).
async fn republish(feeds: Feeds, stop: CancellationToken) {
    let name = convo_store::json_stream::stream_name(&feeds.store.config().stream);
    let checkpoint = feeds.json_checkpoint.clone();
    let progress = move |at: u64| checkpoint.store(at, Ordering::Relaxed);
    while !stop.is_cancelled() {
        let once =
            convo_store::json_stream::republish(&feeds.store, feeds.redactions.clone(), &feeds.json_stream, &progress);
        tokio::select! {
            _ = stop.cancelled() => return,
            result = once => match result {
                Ok(()) => tracing::info!("the JSON stream {name} stopped following the log; resuming"),
                Err(e) => tracing::warn!("the JSON stream {name} could not be republished ({e}); retrying"),
            },
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(REPUBLISH_RETRY) => {}
        }
    }
}
