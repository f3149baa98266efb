//! # convo-gateway
//!
//! The HTTP front door (axum). Commands and reads arrive here with a bearer
//! credential; the gateway hands each to the engine (in this process) with
//! the client's address as the connection saw it, and answers with the
//! engine's reply and its HTTP status. It decides nothing itself: who the
//! credential is and what it may do is the engine's call
//! (`convo_engine::access`), made with the account's catalog.
//!
//! - `POST /v1/accounts/{account}/commands/{type}` — body `{"id", "command"}`,
//!   the same JSON as on NATS; the reply is the same JSON.
//! - `GET /v1/accounts/{account}/audit` — the audit log (admins, the operator,
//!   integrations with the `audit` read scope).
//! - `GET /v1/accounts/{account}/reports/{kind}` — report rows (admins, the
//!   operator, `reports` integrations; a supervisor sees the campaigns they
//!   supervise).
//! - `GET /v1/accounts/{account}/events?after=&limit=&conversation=&type=` —
//!   the account's events as CloudEvents, from a stream-sequence cursor
//!   (admins, the operator, integrations with the `events` read scope);
//!   `…/events/stream` the same as server-sent events, live, resuming from
//!   `Last-Event-ID`.
//! - `GET /v1/accounts/{account}/webhooks/deliveries?webhook=&limit=` — the
//!   webhook deliveries: pending, dead letters, the newest attempts.
//! - `GET /v1/health`, `/health/live` — no credential: is the gateway up;
//!   `/health/ready` — 200 once the engine has recovered from the stream, 503 before.
//! - `GET /metrics` — no credential: the Prometheus text format.
//! - `GET /v1/openapi.json` — the OpenAPI 3.1 document ([`openapi`]).
//! - `GET /dashboard` — the live dashboard page: queues, agents by state,
//!   conversations at SLA risk, SLA and response times per hour, refreshed
//!   every 2 s from the reads below (it asks for a credential, or takes
//!   `#account=…&key=…` from its URL fragment, which never reaches a server).
//! - `GET /v1/accounts/{account}/live`, `…/inbox?agent=`,
//!   `…/contacts/{contact}/history`, `…/audit/export`, `/v1/audit/verify` —
//!   the read models ([`reads`]).
//!
//! Statuses: 200 done (committed, nothing to do, duplicate), 400 invalid,
//! 401 no valid credential, 403 forbidden (with the rule), 404 unknown,
//! 409 rejected by a rule, 413 too large, 429 overloaded, 503 unavailable.
//!
//! The client's address is the TCP peer; `Forwarded`/`X-Forwarded-For` is
//! believed only from a configured trusted proxy.

pub mod openapi;
pub mod reads;
pub mod shapes;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc};

use convo_store::JetStreamStore;
use convo_store::bus::Request;

/// The largest request body the gateway reads, in bytes (the engine's own
/// limit may be lower: it answers `too_large`).
pub const BODY_BYTES_MAX: usize = 1024 * 1024;
/// How long a request waits for the engine's answer.
pub const ENGINE_TIMEOUT_MS: u64 = 10_000;
/// The most audit entries one read returns (`limit` may ask for fewer).
pub const AUDIT_ENTRIES_MAX: usize = 10_000;
/// The most events one read of the feed returns (`limit` may ask for fewer).
pub const FEED_EVENTS_MAX: usize = 1_000;
/// The most stream messages one read of the feed looks at (other accounts'
/// included); the cursor it answers lets the next read go on from there.
pub const FEED_SCAN_MAX: u64 = 100_000;
/// The most feed reads kept open between pages: a client paging on from the
/// `next` a page answered goes on reading where that page stopped (no new
/// consumer of the stream per page).
pub const FEED_CURSORS_MAX: usize = 8;
/// How long a feed read waits for its next page before it is closed.
pub const FEED_CURSOR_IDLE_MS: u64 = 20_000;
/// The most event streams (SSE) open at once; more get 429.
pub const SSE_STREAMS_MAX: usize = 64;
/// The most event streams one account may hold open.
pub const SSE_STREAMS_PER_ACCOUNT_MAX: usize = 16;

/// How the gateway reaches the engine and the read models.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Peers whose `Forwarded`/`X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpAddr>,
    /// The read models this server keeps current; `None`: not run here (`--roles`).
    pub read_models: Option<reads::ReadModels>,
    /// A wait this close to its next SLA threshold is at risk on the dashboard and inboxes (seconds).
    pub risk_margin_secs: u64,
    /// The accounts' redaction rules, as the engine keeps them (the feeds mask with them).
    pub redactions: Arc<convo_wire::redact::Redactions>,
    /// The webhook deliveries (queue, dead letters, log); `None`: not run here.
    pub webhooks: Option<convo_webhooks::Deliveries>,
    /// The metrics `/metrics` renders; `None`: not measured.
    pub metrics: Option<Arc<convo_store::metrics::Metrics>>,
    /// Says which partitions no instance serves at this moment (readiness
    /// names them); `None`: no engine here.
    pub unowned: Option<UnownedCheck>,
}

/// What the cluster says on a readiness request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterReadiness {
    /// Whether this instance's own heartbeat is in the directory: until
    /// then the others (and `convo cluster status`) do not see it.
    pub joined: bool,
    /// The partitions nobody serves now.
    pub unowned: Vec<usize>,
}

/// Asked on each readiness request: whether this instance has joined, and
/// the partitions nobody serves now.
#[derive(Clone)]
pub struct UnownedCheck(pub Arc<dyn Fn() -> futures::future::BoxFuture<'static, ClusterReadiness> + Send + Sync>);

impl std::fmt::Debug for UnownedCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnownedCheck")
    }
}

pub(crate) struct Shared {
    engine: mpsc::Sender<Request>,
    store: JetStreamStore,
    config: GatewayConfig,
    /// One read at a time opens the read models' database.
    reads: Mutex<()>,
    /// Feed reads kept open for their next page (at most [`FEED_CURSORS_MAX`]).
    feed_cursors: std::sync::Mutex<Vec<FeedCursor>>,
    /// The event streams (SSE) open now, at most [`SSE_STREAMS_MAX`].
    streams: Arc<tokio::sync::Semaphore>,
    /// Per account, at most [`SSE_STREAMS_PER_ACCOUNT_MAX`].
    streams_per_account: Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

/// The gateway's routes, handing requests to `engine`.
pub fn router(engine: mpsc::Sender<Request>, store: JetStreamStore, config: GatewayConfig) -> Router {
    let streams = Arc::new(tokio::sync::Semaphore::new(SSE_STREAMS_MAX));
    let shared = Arc::new(Shared {
        engine,
        store,
        config,
        reads: Mutex::new(()),
        feed_cursors: std::sync::Mutex::default(),
        streams,
        streams_per_account: Mutex::default(),
    });
    Router::new()
        .route("/v1/health", get(health))
        .route("/health/live", get(health))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(|| async { axum::Json(openapi::document()) }))
        .route("/dashboard", get(dashboard))
        .route("/v1/accounts/{account}/commands/{kind}", post(command))
        .route("/v1/accounts/{account}/audit", get(reads::audit))
        .route("/v1/accounts/{account}/audit/export", get(reads::audit_export))
        .route("/v1/audit/verify", get(reads::audit_verify))
        .route("/v1/accounts/{account}/reports/{kind}", get(reads::report))
        .route("/v1/accounts/{account}/contacts/{contact}/history", get(reads::contact_history))
        .route("/v1/accounts/{account}/contacts/{contact}/export", get(reads::contact_export))
        .route("/v1/accounts/{account}/live", get(reads::live))
        .route("/v1/accounts/{account}/inbox", get(reads::inbox))
        .route("/v1/accounts/{account}/conversations/{conversation}/timeline", get(reads::timeline))
        .route("/v1/accounts/{account}/events", get(events))
        .route("/v1/accounts/{account}/events/stream", get(event_stream))
        .route("/v1/accounts/{account}/webhooks/deliveries", get(webhook_deliveries))
        .route_layer(axum::middleware::from_fn_with_state(shared.clone(), count_response))
        .fallback(unknown_route)
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(shared)
}

/// Counts every response of a route by its template (never an account) and status.
async fn count_response(
    State(shared): State<Arc<Shared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    count_http(&shared, &route, response.status());
    response
}

fn count_http(shared: &Shared, route: &str, status: StatusCode) {
    if let Some(metrics) = &shared.config.metrics {
        metrics.inc("convo_http_responses_total", &[("route", route), ("status", status.as_str())], 1);
    }
}

/// What no route answers: the typed 404.
async fn unknown_route(State(shared): State<Arc<Shared>>) -> Response {
    count_http(&shared, "unmatched", StatusCode::NOT_FOUND);
    error(StatusCode::NOT_FOUND, "unknown", "no such route (see /v1/openapi.json)")
}

/// A request's query string as `T`, or the typed 400 naming the parameter
/// that is wrong (`{"code": "invalid", "field": "after", …}`), never
/// axum's plain-text rejection.
#[derive(Debug)]
pub(crate) struct Params<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, Response> {
        let query = parts.uri.query().unwrap_or_default();
        let parsed = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(parsed).map(Params).map_err(|e| {
            let field = e.path().to_string();
            let field = if field == "." { String::new() } else { field };
            let message = format!("query parameter `{field}`: {}", e.into_inner());
            reply(
                StatusCode::BAD_REQUEST,
                json!({"outcome": "error", "code": "invalid", "field": field, "message": message}),
            )
        })
    }
}

/// A request body, or the typed error when it cannot be read (413
/// `too_large` beyond [`BODY_BYTES_MAX`]).
fn body_or_error(body: Result<Bytes, axum::extract::rejection::BytesRejection>) -> Result<Bytes, Box<Response>> {
    body.map_err(|rejection| {
        let status = rejection.status();
        let (code, message) = if status == StatusCode::PAYLOAD_TOO_LARGE {
            ("too_large", format!("the body is larger than {BODY_BYTES_MAX} bytes"))
        } else {
            ("invalid", rejection.body_text())
        };
        Box::new(reply(status, json!({"outcome": "error", "code": code, "field": "body", "message": message})))
    })
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}

/// The live dashboard page (no credential: the page asks for one and sends
/// it with each read; nothing in it is the account's).
async fn dashboard() -> Response {
    let headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    (headers, include_str!("dashboard.html")).into_response()
}

async fn health() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// The metrics in the Prometheus text format (no credential: no label names
/// an account or a person; the gateway listens on loopback by default).
async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let body = shared.config.metrics.as_ref().map(|m| m.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// Ready once the engine has recovered every partition from the stream
/// (before that, commands wait and nothing is served to integrators), every
/// partition has an owner serving it, and every read model has caught up
/// with the stream as it was at start.
async fn ready(State(shared): State<Arc<Shared>>) -> Response {
    let behind = shared.config.read_models.as_ref().map(reads::ReadModels::behind).unwrap_or_default();
    let positions: serde_json::Map<String, Value> = shared
        .config
        .read_models
        .iter()
        .flat_map(reads::ReadModels::positions)
        .map(|(name, at)| (name.to_owned(), json!(at)))
        .collect();
    let ClusterReadiness { joined, unowned } = match &shared.config.unowned {
        Some(check) => (check.0)().await,
        None => ClusterReadiness { joined: true, unowned: Vec::new() },
    };
    if !shared.config.redactions.is_ready() {
        let message = "the engine is recovering from the stream";
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "recovering", "message": message, "read_models": positions}),
        )
    } else if !joined {
        let message = "this instance's heartbeat is not in the cluster's directory yet";
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "joining", "message": message, "read_models": positions}),
        )
    } else if !unowned.is_empty() {
        // A command for one of them would find nobody: a load balancer should send traffic elsewhere.
        let names: Vec<String> = unowned.iter().map(ToString::to_string).collect();
        let message = format!("no instance serves partition(s) {} now (they are changing hands)", names.join(", "));
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "partitions_unowned", "message": message, "unowned_partitions": unowned, "read_models": positions}),
        )
    } else if !behind.is_empty() {
        let names: Vec<&str> = behind.iter().map(|(name, _)| *name).collect();
        let message = format!("catching up with the stream: {}", names.join(", "));
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "catching_up", "message": message, "read_models": positions}),
        )
    } else {
        reply(StatusCode::OK, json!({"status": "ready", "read_models": positions}))
    }
}

/// The HTTP status of an engine reply.
pub fn status_of(reply: &Value) -> StatusCode {
    let text = |key: &str| reply[key].as_str().unwrap_or("");
    status_for(text("outcome"), text("code"), text("class"))
}

/// The HTTP status of an engine reply's outcome: a rule's rejection by the
/// class it declares (`invalid`, `forbidden`, `not_found`, `conflict`); an
/// error by its code, one of the door's and the engine's own closed set.
fn status_for(outcome: &str, code: &str, class: &str) -> StatusCode {
    match outcome {
        "committed" | "nothing" | "duplicate" | "authorized" => StatusCode::OK,
        "rejected" => match class {
            "invalid" => StatusCode::BAD_REQUEST,
            "forbidden" => StatusCode::FORBIDDEN,
            "not_found" => StatusCode::NOT_FOUND,
            _ => StatusCode::CONFLICT,
        },
        _ => match code {
            "unauthenticated" => StatusCode::UNAUTHORIZED,
            "forbidden" => StatusCode::FORBIDDEN,
            "too_large" => StatusCode::PAYLOAD_TOO_LARGE,
            "overloaded" => StatusCode::TOO_MANY_REQUESTS,
            "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            "unknown_command" | "unknown" => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST, // invalid, malformed_json, subject_mismatch
        },
    }
}

pub(crate) fn reply(status: StatusCode, body: Value) -> Response {
    challenged(status, (status, axum::Json(body)).into_response())
}

/// A 401 names the scheme to answer it with.
fn challenged(status: StatusCode, mut response: Response) -> Response {
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    }
    response
}

pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    reply(status, json!({"outcome": "error", "code": code, "message": message}))
}

/// The client's address: the peer, or what a trusted proxy says it forwarded.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let forwarded = headers.get("forwarded").and_then(|v| v.to_str().ok()).and_then(|v| {
        v.split([',', ';']).find_map(|part| {
            let (k, value) = part.trim().split_once('=')?;
            if !k.eq_ignore_ascii_case("for") {
                return None;
            }
            let value = value.trim_matches('"');
            let host = value.strip_prefix('[').and_then(|v| v.split(']').next()).unwrap_or(value);
            host.parse::<IpAddr>().ok().or_else(|| host.rsplit_once(':').and_then(|(h, _)| h.parse().ok()))
        })
    });
    // The nearest hop the proxy added is the last one of X-Forwarded-For.
    let x_forwarded = || {
        headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse::<IpAddr>().ok())
    };
    forwarded.or_else(x_forwarded).unwrap_or(peer)
}

fn credential(headers: &HeaderMap) -> Option<String> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// Hands one request to the engine and waits for its JSON answer.
pub(crate) async fn ask(
    shared: &Shared,
    account: String,
    kind: String,
    read: bool,
    body: Bytes,
    headers: &HeaderMap,
    peer: IpAddr,
) -> Result<Value, Response> {
    let bytes = ask_bytes(shared, account, kind, read, body, headers, peer).await?;
    serde_json::from_slice(&bytes)
        .map_err(|_| error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the engine's answer is not JSON"))
}

/// The engine's answer as it sent it.
async fn ask_bytes(
    shared: &Shared,
    account: String,
    kind: String,
    read: bool,
    body: Bytes,
    headers: &HeaderMap,
    peer: IpAddr,
) -> Result<Vec<u8>, Response> {
    let ip = client_ip(peer, headers, &shared.config.trusted_proxies);
    let (request, answer) = Request::local(account, kind, read, body, credential(headers), Some(ip));
    let unavailable = |why: &str| error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why);
    match shared.engine.try_send(request) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            return Err(error(StatusCode::TOO_MANY_REQUESTS, "overloaded", "the engine's queue is full; retry later"));
        }
        Err(mpsc::error::TrySendError::Closed(_)) => return Err(unavailable("the engine is stopping")),
    }
    tokio::time::timeout(std::time::Duration::from_millis(ENGINE_TIMEOUT_MS), answer)
        .await
        .map_err(|_| unavailable(&format!("no answer from the engine within {ENGINE_TIMEOUT_MS} ms")))?
        .map_err(|_| unavailable("the engine dropped the request"))
}

async fn command(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((account, kind)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    let body = match body_or_error(body) {
        Ok(body) => body,
        Err(response) => return *response,
    };
    /// What the status is decided from (the reply goes on as the engine wrote it).
    #[derive(serde::Deserialize)]
    struct Outcome<'a> {
        #[serde(borrow)]
        outcome: &'a str,
        #[serde(default, borrow)]
        code: &'a str,
        #[serde(default, borrow)]
        class: &'a str,
    }
    match ask_bytes(&shared, account, kind, false, body, &headers, peer.ip()).await {
        Ok(bytes) => match serde_json::from_slice::<Outcome<'_>>(&bytes) {
            Ok(o) => {
                let status = status_for(o.outcome, o.code, o.class);
                challenged(status, (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response())
            }
            Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the engine's answer is not JSON"),
        },
        Err(response) => response,
    }
}

/// Which part of an account a read may see, as the engine's door said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The whole account.
    Account,
    /// These campaigns only (a supervisor's).
    Campaigns(Vec<String>),
    /// This agent's own (an agent's inbox).
    Agent(String),
}

impl Scope {
    /// The scope of an `authorized` answer (`"account"`, `{"campaigns": […]}`, `{"agent": …}`).
    fn parse(value: &Value) -> Option<Self> {
        if value == "account" {
            return Some(Scope::Account);
        }
        if let Some(list) = value["campaigns"].as_array() {
            return Some(Scope::Campaigns(list.iter().filter_map(|c| c.as_str().map(str::to_owned)).collect()));
        }
        value["agent"].as_str().map(|agent| Scope::Agent(agent.to_owned()))
    }

    /// The campaigns it is limited to (`None`: not limited to campaigns).
    pub(crate) fn campaigns(&self) -> Option<&[String]> {
        match self {
            Scope::Campaigns(list) => Some(list),
            _ => None,
        }
    }
}

/// A read the engine allowed: over which part of the account, and the
/// redaction rules its text is masked with (none for a key with the
/// `unredacted` scope, whose reads the engine records).
#[derive(Debug)]
pub(crate) struct Allowed {
    pub(crate) scope: Scope,
    pub(crate) rules: convo_wire::redact::Rules,
}

impl Allowed {
    /// `value` masked as this reader may see it.
    pub(crate) fn masked(&self, mut value: Value) -> Value {
        self.rules.apply(&mut value);
        value
    }
}

/// Asks the engine whether the caller may read `what`, and how.
pub(crate) async fn authorize(
    shared: &Shared,
    account: &str,
    what: &str,
    headers: &HeaderMap,
    peer: IpAddr,
) -> Result<Allowed, Response> {
    match authorization(shared, account, what, headers, peer).await? {
        Ok(allowed) => Ok(allowed),
        Err(refusal) => Err(reply(status_of(&refusal), refusal)),
    }
}

/// The engine's verdict on a read: allowed, or its refusal (the reply);
/// `Err` when the engine could not be asked.
async fn authorization(
    shared: &Shared,
    account: &str,
    what: &str,
    headers: &HeaderMap,
    peer: IpAddr,
) -> Result<Result<Allowed, Value>, Response> {
    let answer = ask(shared, account.to_owned(), what.to_owned(), true, Bytes::new(), headers, peer).await?;
    if answer["outcome"] != "authorized" {
        return Ok(Err(answer));
    }
    let scope = Scope::parse(&answer["scope"])
        .ok_or_else(|| error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the engine's answer names no scope"))?;
    let rules = match (answer["unredacted"].as_bool(), convo_domain::AccountId::new(account)) {
        (Some(true), _) | (_, Err(_)) => convo_wire::redact::Rules::default(),
        (_, Ok(account)) => shared.config.redactions.of(&account),
    };
    Ok(Ok(Allowed { scope, rules }))
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    /// The stream sequence already seen (0: from the beginning).
    after: Option<u64>,
    limit: Option<usize>,
    conversation: Option<String>,
    /// An event type (`conversation_closed`…): only those events.
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// What a feed keeps of the log.
struct FeedFilter {
    account: String,
    conversation: Option<String>,
    kind: Option<String>,
}

impl FeedFilter {
    /// The filter, or the 400 a bad `type` gets.
    fn new(account: &str, q: &EventsQuery) -> Result<Self, Box<Response>> {
        if let Some(kind) = &q.kind
            && !convo_wire::EVENT_TYPES.contains(&kind.as_str())
        {
            let message = format!("`type` is an event type: one of {}", convo_wire::EVENT_TYPES.join(", "));
            return Err(Box::new(reply(
                StatusCode::BAD_REQUEST,
                json!({"outcome": "error", "code": "invalid", "field": "type", "message": message}),
            )));
        }
        Ok(Self { account: account.to_owned(), conversation: q.conversation.clone(), kind: q.kind.clone() })
    }

    /// The commit's events this feed shows, as CloudEvent JSON (masked with
    /// `rules`), each with its index in the commit.
    fn events(
        &self,
        shared: &Shared,
        rules: &convo_wire::redact::Rules,
        stored: &convo_store::StoredCommit,
    ) -> Vec<(usize, convo_wire::cloud_json::CloudEventJson)> {
        let c = &stored.commit;
        let wanted = c.account.as_str() == self.account
            && self
                .conversation
                .as_deref()
                .is_none_or(|id| matches!(&c.stream, convo_wire::StreamRef::Conversation(x) if x.as_str() == id));
        if !wanted || self.kind.as_deref().is_some_and(|k| !c.events.iter().any(|e| e.event.type_name() == k)) {
            return Vec::new();
        }
        rules
            .cloud_events_json(c, &shared.store.config().prefix, stored.stream_seq)
            .into_iter()
            .enumerate()
            .filter(|(_, e)| self.kind.as_deref().is_none_or(|k| e.event_type == k))
            .collect()
    }
}

/// A feed page's body, `{"account": …, "events": […], "next": …}`, written
/// from the events' JSON as they are (no tree built and copied per page).
fn feed_page(account: &str, events: &[Vec<u8>], next: u64) -> Response {
    let mut body = Vec::with_capacity(64 + events.iter().map(|e| e.len() + 1).sum::<usize>());
    body.extend_from_slice(b"{\"account\":");
    serde_json::to_writer(&mut body, account).expect("a string serializes");
    body.extend_from_slice(b",\"events\":[");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(event);
    }
    body.extend_from_slice(format!("],\"next\":{next}}}").as_bytes());
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The account's events after a cursor, as CloudEvents, and `next`, the
/// cursor to ask with next time (a stream sequence: whole commits only).
async fn events(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(account): Path<String>,
    Params(q): Params<EventsQuery>,
    headers: HeaderMap,
) -> Response {
    let allowed = match authorize(&shared, &account, "events", &headers, peer.ip()).await {
        Ok(allowed) => allowed,
        Err(response) => return response,
    };
    let filter = match FeedFilter::new(&account, &q) {
        Ok(f) => f,
        Err(response) => return *response,
    };
    let after = q.after.unwrap_or(0);
    let limit = q.limit.unwrap_or(FEED_EVENTS_MAX).clamp(1, FEED_EVENTS_MAX);
    let _one = shared.reads.lock().await; // one scan of the stream at a time, as for the read models
    let unavailable = |e: &dyn std::fmt::Display| error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &e.to_string());
    // A read kept open by the page before this one, else a new one.
    let fresh = async || convo_store::EventStore::read(&shared.store, after.saturating_add(1)).await;
    let (mut log, mut kept) = match FeedCursor::take(&shared, after) {
        Some(log) => (log, true),
        None => match fresh().await {
            Ok(log) => (log, false),
            Err(e) => return unavailable(&e),
        },
    };
    let (mut out, mut next, mut ended) = (Vec::new(), after, true);
    loop {
        let item = futures::StreamExt::next(&mut log).await;
        // A kept read that ends or fails before its first message (it had
        // reached the end when it was kept): a new one, which sees what was
        // appended since.
        if kept && next == after && !matches!(item, Some(Ok(_)) | Some(Err(convo_store::StoreError::Decode { .. }))) {
            (log, kept) = match fresh().await {
                Ok(log) => (log, false),
                Err(e) => return unavailable(&e),
            };
            continue;
        }
        match item {
            None => break,
            Some(Ok(stored)) => {
                next = stored.stream_seq;
                out.extend(filter.events(&shared, &allowed.rules, &stored).into_iter().map(|(_, e)| e.json));
            }
            Some(Err(convo_store::StoreError::Decode { seq, .. })) => next = seq, // not part of the record
            Some(Err(e)) => return unavailable(&e),
        }
        if out.len() >= limit || next.saturating_sub(after) >= FEED_SCAN_MAX {
            ended = false;
            break;
        }
    }
    if !ended && next > after {
        FeedCursor::park(&shared, next, log);
    }
    // Where the page stands (its cursor) and where the stream ends, as every read says.
    let end = convo_store::EventStore::last_seq(&shared.store).await.unwrap_or(next).max(next);
    reads::Position::new(next, end).stamp(feed_page(&account, &out, next))
}

/// A feed read kept open after a page: the next page asked `after` its
/// `position` goes on from it. Any account's: the read is of the whole log,
/// filtered as each page asks.
struct FeedCursor {
    position: u64,
    log: convo_store::CommitStream,
    parked: std::time::Instant,
}

impl FeedCursor {
    /// The open read that stopped at `position`, if one is kept and fresh;
    /// reads idle for [`FEED_CURSOR_IDLE_MS`] are closed.
    fn take(shared: &Shared, position: u64) -> Option<convo_store::CommitStream> {
        let mut cursors = shared.feed_cursors.lock().unwrap_or_else(|e| e.into_inner());
        let idle = std::time::Duration::from_millis(FEED_CURSOR_IDLE_MS);
        cursors.retain(|c| c.parked.elapsed() < idle);
        let at = cursors.iter().position(|c| c.position == position)?;
        Some(cursors.swap_remove(at).log)
    }

    /// Keeps `log` for the page after `position`; the oldest goes when
    /// [`FEED_CURSORS_MAX`] are kept.
    fn park(shared: &Shared, position: u64, log: convo_store::CommitStream) {
        let mut cursors = shared.feed_cursors.lock().unwrap_or_else(|e| e.into_inner());
        cursors.retain(|c| c.position != position);
        if cursors.len() >= FEED_CURSORS_MAX {
            let oldest = cursors.iter().enumerate().min_by_key(|(_, c)| c.parked).map(|(i, _)| i);
            if let Some(i) = oldest {
                cursors.swap_remove(i);
            }
        }
        cursors.push(FeedCursor { position, log, parked: std::time::Instant::now() });
    }
}

/// Where an SSE client resumes: after event `index` of the commit at `seq`
/// (`Last-Event-ID: <seq>.<index>`), or after the whole commit (`<seq>`).
fn resume_point(headers: &HeaderMap, after: Option<u64>) -> Result<(u64, Option<usize>), Box<Response>> {
    let Some(last) = headers.get("last-event-id") else { return Ok((after.unwrap_or(0), None)) };
    let bad = || {
        Box::new(reply(
            StatusCode::BAD_REQUEST,
            json!({"outcome": "error", "code": "invalid", "field": "Last-Event-ID",
                   "message": "an SSE event id this feed gave: <stream sequence>.<index>"}),
        ))
    };
    let text = last.to_str().map_err(|_| bad())?;
    match text.split_once('.') {
        Some((seq, index)) => Ok((seq.parse().map_err(|_| bad())?, Some(index.parse().map_err(|_| bad())?))),
        None => Ok((text.parse().map_err(|_| bad())?, None)),
    }
}

/// The account's events as they are committed, as server-sent events
/// (`id: <stream sequence>.<index>`, `event: <type>`, `data:` the CloudEvent),
/// from `after` or the `Last-Event-ID` the client sends when it reconnects.
async fn event_stream(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(account): Path<String>,
    Params(q): Params<EventsQuery>,
    headers: HeaderMap,
) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let allowed = match authorize(&shared, &account, "events", &headers, peer.ip()).await {
        Ok(allowed) => allowed,
        Err(response) => return response,
    };
    let filter = match FeedFilter::new(&account, &q) {
        Ok(f) => f,
        Err(response) => return *response,
    };
    let (seq, index) = match resume_point(&headers, q.after) {
        Ok(point) => point,
        Err(response) => return *response,
    };
    let Ok(permit) = shared.streams.clone().try_acquire_owned() else {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "overloaded",
            &format!("{SSE_STREAMS_MAX} event streams are open; retry later"),
        );
    };
    let per_account = {
        let mut map = shared.streams_per_account.lock().await;
        map.entry(account.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(SSE_STREAMS_PER_ACCOUNT_MAX)))
            .clone()
    };
    let Ok(account_permit) = per_account.try_acquire_owned() else {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "overloaded",
            &format!("{SSE_STREAMS_PER_ACCOUNT_MAX} event streams of account {account} are open; retry later"),
        );
    };
    // Resume inside the commit of `Last-Event-ID`, or after it.
    let start = if index.is_some() { seq.max(1) } else { seq.saturating_add(1) };
    let log = match convo_store::EventStore::subscribe(&shared.store, start).await {
        Ok(log) => log,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &e.to_string()),
    };
    let mut recheck = tokio::time::interval(std::time::Duration::from_millis(SSE_RECHECK_MS));
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream = SseStream {
        log,
        recheck,
        pending: std::collections::VecDeque::new(),
        ended: false,
        unconfirmed: 0,
        shared,
        account,
        headers,
        peer: peer.ip(),
        filter,
        allowed,
        resume: (seq, index),
        _permits: (permit, account_permit),
    };
    let events = futures::stream::unfold(stream, |mut stream| async move {
        let event = stream.next_event().await?;
        Some((Ok::<Event, std::convert::Infallible>(event), stream))
    });
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

/// How often an open event stream asks the engine again whether its
/// credential may still read (a revoked key's stream ends within about this).
pub const SSE_RECHECK_MS: u64 = 1_000;
/// How many checks in a row may go unanswered (the engine busy or stopping)
/// before a stream ends, since its credential can no longer be vouched for.
pub const SSE_UNCONFIRMED_MAX: u32 = 3;

/// One open event stream: the log followed from the resume point, its
/// events masked as the reader may see them, and its credential checked
/// again every [`SSE_RECHECK_MS`].
struct SseStream {
    log: convo_store::CommitStream,
    recheck: tokio::time::Interval,
    pending: std::collections::VecDeque<axum::response::sse::Event>,
    ended: bool,
    unconfirmed: u32,
    shared: Arc<Shared>,
    account: String,
    headers: HeaderMap,
    peer: IpAddr,
    filter: FeedFilter,
    allowed: Allowed,
    /// `Last-Event-ID`: the commit, and the last event of it already seen.
    resume: (u64, Option<usize>),
    _permits: (tokio::sync::OwnedSemaphorePermit, tokio::sync::OwnedSemaphorePermit),
}

impl SseStream {
    /// The next event to send; `None` once the stream is over.
    async fn next_event(&mut self) -> Option<axum::response::sse::Event> {
        use axum::response::sse::Event;
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.ended {
                return None;
            }
            tokio::select! {
                item = futures::StreamExt::next(&mut self.log) => {
                    // What the engine does not apply (an error) is not an event.
                    if let Ok(stored) = item? {
                        let (seq, index) = self.resume;
                        let events = self.filter.events(&self.shared, &self.allowed.rules, &stored);
                        for (i, e) in events {
                            if stored.stream_seq == seq && index.is_some_and(|last| i <= last) {
                                continue;
                            }
                            let id = format!("{}.{i}", stored.stream_seq);
                            let data = String::from_utf8_lossy(&e.json);
                            self.pending.push_back(Event::default().id(id).event(e.event_type).data(data));
                        }
                    }
                }
                _ = self.recheck.tick() => self.recheck_access().await,
            }
        }
    }

    /// Asks the engine again; ends the stream with an `access_denied` event
    /// (its data: the refusal) when the credential may no longer read, or
    /// when it could not be vouched for [`SSE_UNCONFIRMED_MAX`] times in a row.
    async fn recheck_access(&mut self) {
        use axum::response::sse::Event;
        let verdict = authorization(&self.shared, &self.account, "events", &self.headers, self.peer).await;
        let refusal = match verdict {
            Ok(Ok(allowed)) => {
                self.allowed = allowed;
                self.unconfirmed = 0;
                return;
            }
            Ok(Err(refusal)) => refusal,
            Err(_) if self.unconfirmed + 1 < SSE_UNCONFIRMED_MAX => {
                self.unconfirmed += 1;
                return;
            }
            Err(_) => json!({"outcome": "error", "code": "unavailable",
                "message": "the engine could not confirm this credential; reconnect later"}),
        };
        self.pending.push_back(Event::default().event("access_denied").data(refusal.to_string()));
        self.ended = true;
    }
}

#[derive(Debug, Deserialize)]
struct DeliveriesQuery {
    webhook: Option<String>,
    limit: Option<usize>,
}

/// The account's webhook deliveries: pending, dead-lettered, and the newest
/// attempts (admins, the operator, integrations with the `webhooks` read scope).
async fn webhook_deliveries(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(account): Path<String>,
    Params(q): Params<DeliveriesQuery>,
    headers: HeaderMap,
) -> Response {
    let allowed = match authorize(&shared, &account, "webhooks", &headers, peer.ip()).await {
        Ok(allowed) => allowed,
        Err(response) => return response,
    };
    let Some(webhooks) = &shared.config.webhooks else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "webhooks are not delivered by this server");
    };
    let limit = q.limit.unwrap_or(100).clamp(1, convo_webhooks::LOG_READ_MAX);
    reply(StatusCode::OK, allowed.masked(webhooks.report(&account, q.webhook.as_deref(), limit)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "10.0.99.99, 203.0.113.7".parse().unwrap());
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(client_ip(peer, &headers, &[]), peer);
        assert_eq!(client_ip(peer, &headers, &[peer]), "203.0.113.7".parse::<IpAddr>().unwrap());
        headers.insert("forwarded", "for=\"[2001:db8::1]:443\";proto=https".parse().unwrap());
        assert_eq!(client_ip(peer, &headers, &[peer]), "2001:db8::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn replies_map_to_statuses() {
        let s = |v: Value| status_of(&v).as_u16();
        assert_eq!(s(json!({"outcome": "committed"})), 200);
        assert_eq!(s(json!({"outcome": "error", "code": "unauthenticated"})), 401);
        assert_eq!(s(json!({"outcome": "error", "code": "forbidden"})), 403);
        assert_eq!(s(json!({"outcome": "rejected", "code": "forbidden", "class": "forbidden"})), 403);
        assert_eq!(s(json!({"outcome": "rejected", "code": "unknown_conversation", "class": "not_found"})), 404);
        assert_eq!(s(json!({"outcome": "rejected", "code": "conversation_closed", "class": "conflict"})), 409);
        assert_eq!(s(json!({"outcome": "rejected", "code": "invalid", "class": "invalid"})), 400);
        assert_eq!(s(json!({"outcome": "error", "code": "invalid"})), 400);
        assert_eq!(s(json!({"outcome": "error", "code": "too_large"})), 413);
        assert_eq!(s(json!({"outcome": "error", "code": "overloaded"})), 429);
        assert_eq!(s(json!({"outcome": "error", "code": "unavailable"})), 503);
    }
}
