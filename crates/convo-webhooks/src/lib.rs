//! # convo-webhooks
//!
//! Webhook deliveries (SPEC §10), in two halves sharing one sled tree:
//!
//! - a **projection** ([`Queue`]) folds the log: the account's endpoints
//!   (`webhook_defined`/`_updated`), re-drives (`webhook_redriven`), and for
//!   every event each enabled endpoint whose filter takes it gets a delivery
//!   queued — written in the same atomic batch as the projector's
//!   checkpoint, so a crash neither loses nor queues a delivery twice;
//! - a **sender** ([`run`]) takes the head of each (endpoint, stream) queue,
//!   so deliveries go in order per conversation, signs it (Standard Webhooks:
//!   `webhook-id` = the event id, the receiver's idempotency key), POSTs it,
//!   and records the attempt in the delivery log together with the
//!   delivery's new state, in one atomic batch: delivered (removed),
//!   retried later (exponential backoff with jitter), or dead-lettered after
//!   the last retry (and then the next one goes). An attempt interrupted by a
//!   crash is made again with the same id (at least once).
//!
//! Bodies are the event as a CloudEvent, redacted with the account's rules.
//! Bounds: [`WebhookConfig`] (timeout per attempt, body size, deliveries in
//! flight per endpoint and in all, log retention) and the catalog's
//! (`WEBHOOKS_MAX` endpoints per account).

pub mod deliver;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use serde_json::{Value, json};

use convo_domain::ConfigEvent;
use convo_projector::{Projection, Projector, Staged};
use convo_store::seal::{Sealer, webhook_secret_context};
use convo_store::{EventStore, StoredCommit};
use convo_wire::Event;
use convo_wire::redact::{Redactions, Rules};

pub use deliver::Allowed;

/// The projection's name (its tree in the webhooks database).
pub const NAME: &str = "webhooks";
/// The default retry schedule: the waits after each failed attempt; after
/// the last one fails the delivery is dead-lettered.
pub const RETRY_SCHEDULE_DEFAULT: &str = "5s,30s,2m,10m,30m,1h,3h";
/// The longest wait before a retry.
pub const RETRY_WAIT_MAX: Duration = Duration::from_secs(7 * 24 * 3600);
/// The most retries a schedule may hold.
pub const RETRIES_MAX: usize = 32;
/// How long one attempt may take by default.
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// The largest body delivered by default (a larger event is dead-lettered at once).
pub const BODY_BYTES_MAX: usize = 256 * 1024;
/// Deliveries in flight to one endpoint at once (different conversations), by default.
pub const IN_FLIGHT_PER_ENDPOINT: usize = 4;
/// Deliveries in flight in all, by default.
pub const IN_FLIGHT_MAX: usize = 64;
/// How long the delivery log keeps an attempt by default.
pub const LOG_RETENTION_DEFAULT: Duration = Duration::from_secs(7 * 24 * 3600);
/// The most entries one log read returns.
pub const LOG_READ_MAX: usize = 1000;

const ENDPOINT: &str = "ep/";
const QUEUE: &str = "q/";
const DEAD: &str = "dead/";
const LOG: &str = "log/";

/// The sender's settings.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub retry_schedule: Vec<Duration>,
    pub timeout: Duration,
    pub body_bytes_max: usize,
    pub in_flight_per_endpoint: usize,
    pub in_flight_max: usize,
    pub log_retention: Duration,
    /// Private hosts the operator lets webhooks reach.
    pub allowed: Allowed,
    /// How often the sender looks for new events and due retries.
    pub tick: Duration,
    /// Where attempts are counted by outcome; `None`: not counted.
    pub metrics: Option<std::sync::Arc<convo_store::metrics::Metrics>>,
    /// Connections kept alive per receiver between deliveries.
    pub connections: Arc<deliver::Connections>,
    /// The data keys that open the personal values a queued body keeps
    /// sealed (opened when it is sent; an erased one reads `[erased]`).
    pub keys: Option<Arc<convo_store::keys::Keyring>>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            retry_schedule: parse_schedule(RETRY_SCHEDULE_DEFAULT).expect("the default schedule parses"),
            timeout: TIMEOUT_DEFAULT,
            body_bytes_max: BODY_BYTES_MAX,
            in_flight_per_endpoint: IN_FLIGHT_PER_ENDPOINT,
            in_flight_max: IN_FLIGHT_MAX,
            log_retention: LOG_RETENTION_DEFAULT,
            allowed: Allowed::default(),
            tick: Duration::from_millis(100),
            metrics: None,
            connections: Arc::default(),
            keys: None,
        }
    }
}

/// Parses a retry schedule: waits like `5s,30s,2m,10m,1h` (or `250ms`).
pub fn parse_schedule(text: &str) -> Result<Vec<Duration>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (number, unit) = part.split_at(part.find(|c: char| !c.is_ascii_digit()).unwrap_or(part.len()));
        let n: u64 = number.parse().map_err(|_| format!("{part:?}: a number and a unit (ms, s, m, h)"))?;
        let millis = match unit {
            "ms" => Some(n),
            "s" | "" => n.checked_mul(1000),
            "m" => n.checked_mul(60_000),
            "h" => n.checked_mul(3_600_000),
            _ => return Err(format!("{part:?}: the unit is ms, s, m or h")),
        };
        match millis {
            Some(ms) if ms <= RETRY_WAIT_MAX.as_millis() as u64 => out.push(Duration::from_millis(ms)),
            _ => return Err(format!("{part:?}: a wait is at most {} hours", RETRY_WAIT_MAX.as_secs() / 3600)),
        }
    }
    if out.len() > RETRIES_MAX {
        return Err(format!("at most {RETRIES_MAX} retries"));
    }
    Ok(out)
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn endpoint_key(account: &str, webhook: &str) -> String {
    format!("{ENDPOINT}{account}/{webhook}")
}

/// An endpoint as the database holds it (its secret sealed).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Endpoint {
    url: String,
    events: Vec<String>,
    secret: String,
    enabled: bool,
}

/// A queued (or dead-lettered) delivery as the database holds it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Delivery {
    event_id: String,
    event_type: String,
    stream_seq: u64,
    queued_at: String,
    attempts: u64,
    #[serde(default)]
    next_at_ms: i64,
    body: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dead_at: Option<String>,
}

/// One attempt in the delivery log.
#[derive(Debug, serde::Serialize)]
struct Attempt<'a> {
    event_id: &'a str,
    event_type: &'a str,
    attempt: u64,
    at: String,
    outcome: &'static str,
    status: Option<u16>,
    error: Option<String>,
    latency_ms: u64,
}

/// The projection that queues deliveries.
#[derive(Debug, Clone)]
pub struct Queue {
    prefix: String,
    redactions: Arc<Redactions>,
    /// Seals the endpoints' secrets in the database (and opens them to sign).
    sealer: Sealer,
}

impl Queue {
    /// `sealer`: the engine's sealer of secrets at rest
    /// ([`convo_store::signing::Signing::sealer`]); a secret the stream holds
    /// in clear (from before sealing) is sealed before it is stored.
    pub fn new(prefix: &str, redactions: Arc<Redactions>, sealer: Sealer) -> Self {
        Self { prefix: prefix.to_owned(), redactions, sealer }
    }

    /// An endpoint's secret as stored: sealed for its place.
    fn sealed_secret(&self, account: &str, spec: &convo_domain::config::WebhookSpec) -> String {
        let secret = spec.secret.expose();
        if spec.secret.is_sealed() {
            return secret.to_owned();
        }
        self.sealer.seal(&webhook_secret_context(account, spec.id.as_str()), secret.as_bytes())
    }

    /// The key an endpoint's deliveries are signed with, from its stored (sealed) secret.
    fn signing_key(&self, endpoint: &str, settings: &Endpoint) -> Result<Vec<u8>, String> {
        let (account, webhook) = endpoint[ENDPOINT.len()..].split_once('/').unwrap_or_default();
        let opened = self
            .sealer
            .open(&webhook_secret_context(account, webhook), &settings.secret)
            .map_err(|e| format!("the webhook's secret cannot be read: {e}"))?;
        let secret = String::from_utf8(opened).map_err(|_| "the webhook's secret is not text".to_owned())?;
        Ok(convo_domain::config::WebhookSecret::parse(&secret)?.key())
    }
}

impl Projection for Queue {
    fn name(&self) -> &'static str {
        NAME
    }

    fn apply(&mut self, staged: &mut Staged<'_>, stored: &StoredCommit) -> Result<(), String> {
        let commit = &stored.commit;
        let account = commit.account.as_str();
        // The commit's own changes to the endpoints first (a catalog commit holds one event).
        for event in &commit.events {
            match &event.event {
                Event::Config(ConfigEvent::WebhookDefined(spec) | ConfigEvent::WebhookUpdated(spec)) => {
                    let endpoint = Endpoint {
                        url: spec.url.clone(),
                        events: spec.events.clone(),
                        secret: self.sealed_secret(account, spec),
                        enabled: spec.enabled,
                    };
                    staged.insert(endpoint_key(account, spec.id.as_str()).into_bytes(), bytes_of(&endpoint));
                }
                Event::Config(ConfigEvent::WebhookRedriven(w)) => {
                    let dead = format!("{DEAD}{account}/{}/", w.webhook);
                    for (key, value) in staged.scan_prefix(dead.as_bytes())? {
                        let mut delivery: Delivery = serde_json::from_slice(&value).map_err(|e| e.to_string())?;
                        (delivery.attempts, delivery.next_at_ms, delivery.dead_at) = (0, 0, None);
                        let rest = &key[DEAD.len()..];
                        staged.remove(key.clone());
                        staged.insert([QUEUE.as_bytes(), rest].concat(), bytes_of(&delivery));
                    }
                }
                _ => {}
            }
        }
        // Then the deliveries: an account without enabled endpoints costs one lookup.
        let mut endpoints = Vec::new();
        for (key, value) in staged.scan_prefix(format!("{ENDPOINT}{account}/").as_bytes())? {
            let endpoint: Endpoint = serde_json::from_slice(&value).map_err(|e| e.to_string())?;
            if endpoint.enabled {
                let webhook = String::from_utf8_lossy(&key[ENDPOINT.len() + account.len() + 1..]).into_owned();
                endpoints.push((webhook, endpoint.events));
            }
        }
        if endpoints.is_empty() {
            return Ok(());
        }
        let events = self.redactions.of(&commit.account).cloud_events_json(commit, &self.prefix, stored.stream_seq);
        let stream = commit.stream.token();
        for (index, cloud) in events.into_iter().enumerate() {
            let kind = cloud.event_type;
            let body = String::from_utf8_lossy(&cloud.json).into_owned();
            for (webhook, filter) in &endpoints {
                if !(filter.is_empty() || filter.iter().any(|t| t == kind)) {
                    continue;
                }
                let delivery = Delivery {
                    event_id: cloud.id.clone(),
                    event_type: kind.to_owned(),
                    stream_seq: stored.stream_seq,
                    queued_at: commit.at.to_rfc3339(),
                    attempts: 0,
                    next_at_ms: 0,
                    body: body.clone(),
                    last_error: None,
                    dead_at: None,
                };
                let key = format!("{QUEUE}{account}/{webhook}/{stream}/{:020}.{index:04}", stored.stream_seq);
                staged.insert(key.into_bytes(), bytes_of(&delivery));
            }
        }
        Ok(())
    }
}

fn bytes_of(value: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialize")
}

/// The webhooks database: the queue, the dead letters, the delivery log.
#[derive(Debug, Clone)]
pub struct Deliveries {
    projector: Projector,
    tree: sled::Tree,
}

impl Deliveries {
    /// Opens (or creates) the database at `path` (`<data-dir>/webhooks`).
    pub fn open(path: &std::path::Path) -> Result<Self, String> {
        let projector = Projector::open_at(path, NAME).map_err(|e| e.to_string())?;
        let tree = projector.tree().map_err(|e| e.to_string())?;
        Ok(Self { projector, tree })
    }

    /// The stream sequence the queue has taken in.
    pub fn checkpoint(&self) -> u64 {
        self.projector.checkpoint().unwrap_or(0)
    }

    fn entries(&self, prefix: &str, limit: usize, newest_first: bool) -> Vec<(String, Value)> {
        let scan = self.tree.scan_prefix(prefix.as_bytes());
        let parse = |item: sled::Result<(sled::IVec, sled::IVec)>| {
            let (k, v) = item.ok()?;
            Some((String::from_utf8_lossy(&k).into_owned(), serde_json::from_slice(&v).ok()?))
        };
        if newest_first {
            scan.rev().filter_map(parse).take(limit).collect()
        } else {
            scan.filter_map(parse).take(limit).collect()
        }
    }

    /// An account's webhooks with their queue and dead letters, and the
    /// newest attempts of the log (at most `limit`, newest first).
    pub fn report(&self, account: &str, webhook: Option<&str>, limit: usize) -> Value {
        let scope = |kind: &str| match webhook {
            Some(w) => format!("{kind}{account}/{w}/"),
            None => format!("{kind}{account}/"),
        };
        let without_body = |(key, mut v): (String, Value)| {
            if let Some(o) = v.as_object_mut() {
                o.remove("body");
                o.insert("webhook".into(), key.split('/').nth(2).unwrap_or("").into());
            }
            v
        };
        let limit = limit.clamp(1, LOG_READ_MAX);
        // The newest attempts of each webhook, merged newest first.
        let webhooks: Vec<String> = match webhook {
            Some(w) => vec![w.to_owned()],
            None => self
                .entries(&format!("{ENDPOINT}{account}/"), convo_domain::config::WEBHOOKS_MAX, false)
                .into_iter()
                .filter_map(|(key, _)| key.rsplit('/').next().map(str::to_owned))
                .collect(),
        };
        let mut attempts: Vec<Value> = webhooks
            .iter()
            .flat_map(|w| self.entries(&format!("{LOG}{account}/{w}/"), limit, true))
            .map(without_body)
            .collect();
        attempts.sort_by(|a, b| b["at"].as_str().cmp(&a["at"].as_str()));
        attempts.truncate(limit);
        json!({
            "account": account,
            "checkpoint": self.checkpoint(),
            "pending": self.entries(&scope(QUEUE), limit, false).into_iter().map(without_body).collect::<Vec<_>>(),
            "dead": self.entries(&scope(DEAD), limit, false).into_iter().map(without_body).collect::<Vec<_>>(),
            "attempts": attempts,
        })
    }
}

/// What became of a delivery's turn.
enum Verdict {
    /// It was sent; the receiver answered or not.
    Sent(deliver::Answer),
    /// Its webhook is off (or its body cannot be opened now): it waits,
    /// nothing is attempted or logged.
    Held,
    /// It cannot be sent at all (too large): dead-lettered at once, the reason logged.
    Refused(String),
}

/// One attempt under way.
struct Flight {
    key: Vec<u8>,
    delivery: Delivery,
    verdict: Verdict,
}

/// Follows the log and delivers, until `stop` resolves. Errors of the store
/// or the database are said and retried on the next tick.
pub async fn run(
    deliveries: Deliveries,
    store: impl EventStore,
    mut queue: Queue,
    config: WebhookConfig,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    while !queue.redactions.is_ready() {
        // The engine is still recovering the accounts' rules: nothing leaves unredacted.
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    let mut tick = tokio::time::interval(config.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_flight = FuturesUnordered::new();
    // Queues with an attempt under way, and attempts per endpoint.
    let mut busy: HashMap<String, ()> = HashMap::new();
    let mut per_endpoint: HashMap<String, usize> = HashMap::new();
    let mut last_trim = 0i64;
    let mut following = true;
    // Per endpoint, where the last look for due deliveries stopped.
    let mut cursors: HashMap<String, Vec<u8>> = HashMap::new();
    loop {
        let mut fold = true;
        tokio::select! {
            _ = &mut stop => break,
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                // This attempt and every other one finished by now are recorded before
                // the next look for due deliveries (one scan for all of them).
                let mut finished = vec![done];
                while finished.len() < config.in_flight_max
                    && let Some(Some(done)) = in_flight.next().now_or_never()
                {
                    finished.push(done);
                }
                // Recorded together: one atomic batch and one flush for all of them.
                let mut flights = Vec::with_capacity(finished.len());
                for (key, endpoint, flight) in finished {
                    let (key, endpoint, flight): (Vec<u8>, String, Result<Flight, tokio::task::JoinError>) = (key, endpoint, flight);
                    busy.remove(&queue_of(&key));
                    if let Some(n) = per_endpoint.get_mut(&endpoint) { *n = n.saturating_sub(1); }
                    match flight {
                        Ok(flight) => flights.push(flight),
                        // Nothing recorded: the delivery stays at its queue's head and goes again.
                        Err(e) => tracing::warn!("webhooks: an attempt stopped ({e}); it will be made again"),
                    }
                }
                let count = flights.len();
                if let Err(e) = settle(&deliveries.tree, &config, flights) {
                    tracing::warn!("webhooks: could not record {count} attempts ({e}); they will be made again");
                }
                fold = false; // the queue's next delivery goes now, not at the next tick
            }
            _ = tick.tick() => {}
        }
        if fold {
            let mut progress = |_, _| {};
            let caught_up = tokio::select! {
                _ = &mut stop => break,
                result = deliveries.projector.catch_up(&store, &mut queue, &mut progress) => result,
            };
            if let Ok(stats) = &caught_up
                && stats.dead_letters > 0
            {
                tracing::error!(
                    dead_letters = stats.dead_letters,
                    "webhooks: {} commits could not be queued (see the webhooks projector's dead letters)",
                    stats.dead_letters
                );
            }
            match (caught_up, following) {
                (Ok(_), false) => {
                    tracing::info!("webhooks: following the log again");
                    following = true;
                }
                (Err(e), true) => {
                    tracing::warn!("webhooks: cannot follow the log now ({e}); retrying");
                    following = false;
                }
                _ => {}
            }
        }
        let now = now_ms();
        if now - last_trim > 60_000 {
            trim_log(&deliveries.tree, now - config.log_retention.as_millis() as i64);
            last_trim = now;
        }
        // Each endpoint with room, from where its last look stopped: its due
        // heads go at once, with the settings this scan read.
        let mut want = config.in_flight_max.saturating_sub(in_flight.len());
        for item in deliveries.tree.scan_prefix(ENDPOINT.as_bytes()) {
            let Ok((endpoint, settings)) = item else { continue };
            let endpoint = String::from_utf8_lossy(&endpoint).into_owned();
            let count = per_endpoint.entry(endpoint.clone()).or_default();
            let room = config.in_flight_per_endpoint.saturating_sub(*count).min(want);
            if room == 0 {
                continue;
            }
            let prefix = format!("{QUEUE}{}/", &endpoint[ENDPOINT.len()..]).into_bytes();
            let cursor = cursors.entry(endpoint.clone()).or_insert_with(|| prefix.clone());
            let heads = due_heads(&deliveries.tree, now, &busy, &prefix, cursor, room);
            if heads.is_empty() {
                continue;
            }
            let target: Endpoint = serde_json::from_slice(&settings).unwrap_or_default();
            let signing_key = queue.signing_key(&endpoint, &target);
            for (key, delivery) in heads {
                *count += 1;
                want -= 1;
                busy.insert(queue_of(&key), ());
                // Its own task: the attempt's I/O goes on while this loop records others.
                let rules = convo_domain::AccountId::new(account_of(&endpoint)).map(|a| queue.redactions.of(&a));
                let attempt = tokio::spawn(send(
                    key.clone(),
                    delivery,
                    target.clone(),
                    (signing_key.clone(), rules.unwrap_or_default()),
                    config.clone(),
                ));
                let endpoint = endpoint.clone();
                in_flight.push(async move { (key, endpoint, attempt.await) });
            }
        }
    }
}

/// The account an endpoint's key (`ep/<account>/<webhook>`) names.
fn account_of(endpoint: &str) -> &str {
    endpoint[ENDPOINT.len()..].split('/').next().unwrap_or("")
}

/// A queued body as it is sent: its sealed personal values opened (queued
/// sealed, so the webhooks database never holds them in clear) and the
/// account's redaction rules applied to them.
async fn shown(body: &str, keys: Option<&convo_store::keys::Keyring>, rules: &Rules) -> Result<String, String> {
    let Some(keys) = keys.filter(|_| body.contains(convo_wire::personal::SEALED_PERSONAL_PREFIX)) else {
        return Ok(body.to_owned());
    };
    let opened = keys.open_text(body).await.map_err(|e| format!("cannot open the body's personal data: {e}"))?;
    if rules.is_empty() {
        return Ok(opened);
    }
    let mut value: Value = serde_json::from_str(&opened).map_err(|e| e.to_string())?;
    rules.apply(&mut value);
    Ok(value.to_string())
}

async fn send(
    key: Vec<u8>,
    delivery: Delivery,
    target: Endpoint,
    (signing_key, rules): (Result<Vec<u8>, String>, Rules),
    config: WebhookConfig,
) -> Flight {
    let body = match shown(&delivery.body, config.keys.as_deref(), &rules).await {
        Ok(body) => body,
        Err(error) => {
            // The key store did not answer: nothing was attempted, so no attempt is
            // spent (an outage must not dead-letter deliveries); it waits, as a held one.
            tracing::warn!(event = %delivery.event_id, "webhook delivery waits: {error}");
            return Flight { key, delivery, verdict: Verdict::Held };
        }
    };
    let verdict = if !target.enabled {
        Verdict::Held
    } else if body.len() > config.body_bytes_max {
        Verdict::Refused(format!("the body is {} bytes, over the {}-byte limit", body.len(), config.body_bytes_max))
    } else {
        match signing_key {
            Ok(signing_key) => {
                let id = delivery.event_id.clone();
                let timestamp = now_ms() / 1000;
                let signature = deliver::sign(&signing_key, &id, timestamp, body.as_bytes());
                let signed = deliver::Signed { id, timestamp, signature };
                let url = target.url.as_str();
                match deliver::attempt(
                    url,
                    Bytes::from(body),
                    &signed,
                    &config.allowed,
                    config.timeout,
                    &config.connections,
                )
                .await
                {
                    // An address the policy refuses is refused again at every retry: dead-lettered now.
                    deliver::Answer { refused: true, error, .. } => Verdict::Refused(error.unwrap_or_default()),
                    answer => Verdict::Sent(answer),
                }
            }
            Err(e) => Verdict::Refused(e),
        }
    };
    Flight { key, delivery, verdict }
}

/// Records attempts and their deliveries' next states in one atomic batch,
/// flushed once: none of them is recorded, or all are.
fn settle(tree: &sled::Tree, config: &WebhookConfig, flights: Vec<Flight>) -> Result<(), String> {
    let mut batch = sled::Batch::default();
    let outcomes: Vec<&'static str> = flights.into_iter().filter_map(|f| stage(&mut batch, config, f)).collect();
    tree.apply_batch(batch).map_err(|e| e.to_string())?;
    // Held deliveries alone log nothing: nothing to make durable.
    if !outcomes.is_empty() {
        tree.flush().map_err(|e| e.to_string())?;
    }
    if let Some(metrics) = &config.metrics {
        for outcome in outcomes {
            metrics.inc("convo_webhook_attempts_total", &[("outcome", outcome)], 1);
        }
    }
    Ok(())
}

/// Stages one attempt's record and its delivery's next state in `batch`;
/// the outcome, or `None` for a held delivery (nothing attempted or logged).
fn stage(batch: &mut sled::Batch, config: &WebhookConfig, flight: Flight) -> Option<&'static str> {
    let Flight { key, mut delivery, verdict, .. } = flight;
    let now = now_ms();
    let at = |ms: i64| convo_domain::Timestamp::from_millis(ms).to_rfc3339();
    let refused = matches!(verdict, Verdict::Refused(_));
    let answer = match verdict {
        Verdict::Held => {
            delivery.next_at_ms = now + 1000; // looked at again once the webhook is on
            batch.insert(key, bytes_of(&delivery));
            return None;
        }
        Verdict::Refused(reason) => deliver::Answer { status: None, error: Some(reason), latency_ms: 0, refused: true },
        Verdict::Sent(answer) => answer,
    };
    let attempts = delivery.attempts + 1;
    let outcome = if answer.accepted() {
        "delivered"
    } else if refused || attempts as usize > config.retry_schedule.len() {
        "dead"
    } else {
        "retrying"
    };
    let rest = &key[QUEUE.len()..];
    let rest_text = String::from_utf8_lossy(rest);
    let mut parts = rest_text.splitn(3, '/');
    let (account, webhook) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let log_entry = Attempt {
        event_id: &delivery.event_id,
        event_type: &delivery.event_type,
        attempt: attempts,
        at: at(now),
        outcome,
        status: answer.status,
        error: answer.error.clone(),
        latency_ms: answer.latency_ms,
    };
    let log_key = format!("{LOG}{account}/{webhook}/{now:020}/{}", rest_text.replace('/', "|"));
    batch.insert(log_key.into_bytes(), bytes_of(&log_entry));
    let last_error = answer.error.clone().or(answer.status.map(|s| format!("HTTP {s}")));
    match outcome {
        "delivered" => batch.remove(key),
        "dead" => {
            (delivery.attempts, delivery.dead_at, delivery.last_error) = (attempts, Some(at(now)), last_error);
            batch.remove(key.clone());
            batch.insert([DEAD.as_bytes(), rest].concat(), bytes_of(&delivery));
        }
        _ => {
            let wait = config.retry_schedule[attempts as usize - 1];
            delivery.attempts = attempts;
            delivery.next_at_ms = now + jittered(wait).as_millis() as i64;
            delivery.last_error = last_error;
            batch.insert(key, bytes_of(&delivery));
        }
    }
    Some(outcome)
}

/// `wait` ± 20%, so retries of many deliveries spread out.
fn jittered(wait: Duration) -> Duration {
    let mut byte = [0u8; 2];
    let spread = if getrandom::getrandom(&mut byte).is_ok() { u16::from_le_bytes(byte) as f64 / 65535.0 } else { 0.5 };
    wait.mul_f64(0.8 + 0.4 * spread)
}

fn queue_of(key: &[u8]) -> String {
    let text = String::from_utf8_lossy(key);
    text.rsplit_once('/').map_or(text.to_string(), |(q, _)| q.to_owned())
}

/// At most `want` first deliveries of the queues under `prefix` (one
/// endpoint's) that are due and have no attempt under way, going round those
/// queues from `cursor` (where the last look stopped): a look costs what it
/// finds plus the busy queues it steps over, not one read per queue, and
/// with a backlog over many conversations every queue still gets its turn.
fn due_heads(
    tree: &sled::Tree,
    now: i64,
    busy: &HashMap<String, ()>,
    prefix: &[u8],
    cursor: &mut Vec<u8>,
    want: usize,
) -> Vec<(Vec<u8>, Delivery)> {
    /// What deciding whether a head is due reads of it (not its body).
    #[derive(serde::Deserialize)]
    struct Due {
        #[serde(default)]
        next_at_ms: i64,
    }
    let mut heads = Vec::new();
    if want == 0 {
        return heads;
    }
    let start = if cursor.starts_with(prefix) { cursor.clone() } else { prefix.to_vec() };
    let from_the_top = start == prefix;
    let mut from = start.clone();
    let mut wrapped = from_the_top;
    loop {
        let next = match tree.range(from.clone()..).next() {
            Some(Ok((key, value))) if key.starts_with(prefix) => Some((key, value)),
            _ => None,
        };
        let Some((key, value)) =
            next.filter(|(key, _)| !(wrapped && !from_the_top && key.as_ref() >= start.as_slice()))
        else {
            if wrapped {
                break; // every queue looked at once
            }
            wrapped = true;
            from = prefix.to_vec();
            continue;
        };
        let queue = queue_of(&key);
        // Past every key of this queue: its name, '/', then a byte above any in a key.
        from = [queue.as_bytes(), b"/\xff"].concat();
        if busy.contains_key(&queue) {
            continue;
        }
        if serde_json::from_slice::<Due>(&value).is_ok_and(|due| due.next_at_ms <= now)
            && let Ok(delivery) = serde_json::from_slice::<Delivery>(&value)
        {
            heads.push((key.to_vec(), delivery));
            if heads.len() >= want {
                break;
            }
        }
    }
    *cursor = from;
    heads
}

/// Drops log entries older than `before` (ms).
fn trim_log(tree: &sled::Tree, before: i64) {
    let mut batch = sled::Batch::default();
    for item in tree.scan_prefix(LOG.as_bytes()) {
        let Ok((key, _)) = item else { continue };
        let text = String::from_utf8_lossy(&key);
        let at = text.split('/').nth(3).and_then(|t| t.parse::<i64>().ok()).unwrap_or(i64::MAX);
        if at < before {
            batch.remove(key);
        }
    }
    let _ = tree.apply_batch(batch);
}
