//! The JSON event stream: every commit's events republished as CloudEvents
//! 1.0 JSON into a second JetStream stream (`<STREAM>_JSON`, bounded
//! retention), on subjects by account, stream and event type
//! (`<prefix>.<account>.json.conv.<id>.<type>`, `….json.agent.<id>.<type>`,
//! `….json.config.<type>`), so a client in any language subscribes with a
//! subject filter and reads JSON.
//!
//! The republisher follows the log from its checkpoint (a key in the
//! JetStream KV bucket `<STREAM>_JSON_CHECKPOINT`), publishes each event with
//! `Nats-Msg-Id` = the event id and waits for the acknowledgements before
//! moving the checkpoint, a batch at a time: a crash republishes at most one
//! batch, which the broker drops as duplicates (its window is
//! [`DUPLICATE_WINDOW`]); receivers dedupe on the id in any case. Text is
//! redacted with the account's rules in force when it is republished.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use futures::StreamExt;

use convo_wire::redact::Redactions;

use crate::{EventStore, JetStreamStore, StoreError};

/// How long the JSON stream keeps an event by default.
pub const MAX_AGE_DEFAULT: Duration = Duration::from_secs(7 * 24 * 3600);
/// The most bytes the JSON stream keeps by default (the oldest go first).
pub const MAX_BYTES_DEFAULT: i64 = 1 << 30;
/// Events published before their acknowledgements are awaited and the checkpoint moves.
pub const BATCH_EVENTS_MAX: usize = 512;
/// The broker's window for dropping a republished event.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(600);
/// The header naming the stream sequence of the commit an event came from.
pub const STREAM_SEQ_HEADER: &str = "Convo-Stream-Seq";

const CHECKPOINT_KEY: &str = "republished";

/// The JSON stream's settings.
#[derive(Debug, Clone)]
pub struct JsonStreamConfig {
    pub max_age: Duration,
    pub max_bytes: i64,
}

impl Default for JsonStreamConfig {
    fn default() -> Self {
        Self { max_age: MAX_AGE_DEFAULT, max_bytes: MAX_BYTES_DEFAULT }
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The JSON stream's name for the event stream `stream` (`CONVO` → `CONVO_JSON`).
pub fn stream_name(stream: &str) -> String {
    format!("{stream}_JSON")
}

/// Creates (or updates) the JSON stream and its checkpoint bucket.
pub async fn ensure(
    store: &JetStreamStore,
    config: &JsonStreamConfig,
) -> Result<(jetstream::Context, kv::Store), StoreError> {
    let js = jetstream::new(store.client().clone());
    let c = store.config();
    let settings = stream::Config {
        name: stream_name(&c.stream),
        description: Some("every event as CloudEvents JSON, republished by convo".into()),
        subjects: vec![format!("{}.*.json.>", c.prefix)],
        max_age: config.max_age,
        max_bytes: config.max_bytes,
        discard: stream::DiscardPolicy::Old,
        duplicate_window: DUPLICATE_WINDOW,
        num_replicas: c.replicas,
        allow_direct: true,
        ..Default::default()
    };
    let (name, max_bytes) = (settings.name.clone(), settings.max_bytes);
    let made = match js.get_stream(&settings.name).await {
        Ok(_) => js.update_stream(&settings).await.map(drop).map_err(|e| (e.to_string(), e.kind())),
        Err(_) => js.create_stream(settings).await.map(drop).map_err(|e| (e.to_string(), e.kind())),
    };
    if let Err((error, kind)) = made {
        use async_nats::jetstream::ErrorCode;
        use async_nats::jetstream::context::CreateStreamErrorKind;
        return Err(match kind {
            CreateStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STORAGE_RESOURCES_EXCEEDED => {
                StoreError::Refused(format!(
                    "the JSON stream {name} would reserve {max_bytes} bytes, more than the nats-server has left for \
                     JetStream ({error}): lower --json-stream-max-bytes or give the server's store more room"
                ))
            }
            _ => StoreError::Unavailable(error),
        });
    }
    let bucket = format!("{}_CHECKPOINT", stream_name(&c.stream));
    let kv = match js.get_key_value(&bucket).await {
        Ok(kv) => kv,
        Err(_) => js
            .create_key_value(kv::Config {
                bucket,
                description: "where convo's JSON republisher stands in the event stream".into(),
                history: 1,
                num_replicas: c.replicas,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?,
    };
    Ok((js, kv))
}

/// The stream sequence the JSON stream is republished up to.
pub async fn checkpoint(kv: &kv::Store) -> Result<u64, StoreError> {
    let value = kv.get(CHECKPOINT_KEY).await.map_err(unavailable)?;
    Ok(value.and_then(|b| std::str::from_utf8(&b).ok()?.parse().ok()).unwrap_or(0))
}

/// Republishes the log into the JSON stream from the checkpoint, following
/// new commits until the log's subscription ends or fails.
/// `on_progress` hears each checkpoint written.
pub async fn republish(
    store: &JetStreamStore,
    redactions: Arc<Redactions>,
    config: &JsonStreamConfig,
    on_progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(), StoreError> {
    while !redactions.is_ready() {
        tokio::time::sleep(Duration::from_millis(50)).await; // the engine is still recovering the rules
    }
    let (js, kv) = ensure(store, config).await?;
    let mut done = checkpoint(&kv).await?;
    on_progress(done);
    let prefix = store.config().prefix.clone();
    let mut log = store.subscribe(done + 1).await?;
    let mut acks = Vec::with_capacity(BATCH_EVENTS_MAX);
    let mut last = done;
    loop {
        // Wait briefly for more before acknowledging a partial batch.
        let next = if acks.is_empty() {
            log.next().await
        } else {
            match tokio::time::timeout(Duration::from_millis(50), log.next()).await {
                Ok(item) => item,
                Err(_) => {
                    flush(&kv, &mut acks, last, &mut done, on_progress).await?;
                    continue;
                }
            }
        };
        let Some(item) = next else { break };
        let stored = match item {
            Ok(stored) => stored,
            // What the engine does not apply is not republished (`convo doctor` names it).
            Err(StoreError::Decode { seq, .. }) => {
                last = seq;
                continue;
            }
            Err(e) => return Err(e),
        };
        let rules = redactions.of(&stored.commit.account);
        let subjects = stored.commit.json_subjects(&prefix);
        let events = rules.cloud_events_json(&stored.commit, &prefix, stored.stream_seq);
        for (event, subject) in events.into_iter().zip(subjects) {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", event.id.as_str());
            headers.insert(STREAM_SEQ_HEADER, stored.stream_seq.to_string().as_str());
            headers.insert("Content-Type", "application/cloudevents+json");
            acks.push(js.publish_with_headers(subject, headers, Bytes::from(event.json)).await.map_err(unavailable)?);
        }
        last = stored.stream_seq;
        if acks.len() >= BATCH_EVENTS_MAX {
            flush(&kv, &mut acks, last, &mut done, on_progress).await?;
        }
    }
    flush(&kv, &mut acks, last, &mut done, on_progress).await
}

async fn flush(
    kv: &kv::Store,
    acks: &mut Vec<jetstream::context::PublishAckFuture>,
    last: u64,
    done: &mut u64,
    on_progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(), StoreError> {
    for ack in acks.drain(..) {
        ack.await.map_err(unavailable)?;
    }
    if last > *done {
        kv.put(CHECKPOINT_KEY, Bytes::from(last.to_string())).await.map_err(unavailable)?;
        *done = last;
        on_progress(last);
    }
    Ok(())
}
