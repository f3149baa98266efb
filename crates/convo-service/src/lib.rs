//! # convo-service
//!
//! The convo service as a library (DESIGN.md, "The service and its
//! ownership"; STYLE §11, §16): [`Service::run`] checks every setting
//! before anything starts, then runs the roles — the engine's partitions
//! under the ownership machine (with the `feeds` role: the JSON stream and
//! the webhooks), the read models, the HTTP gateway — on one task tracker
//! under one cancellation token, and stops them in order when `shutdown` is
//! cancelled: the partitions stop taking requests, finish those in hand and
//! are handed over (a snapshot, then the lease); the gateway finishes its
//! requests; the feeds, the read models' followers and the background
//! loops stop; the anchors are written; the embedded nats-server goes last.
//! Nothing is aborted. `convo serve` parses its flags into a
//! [`ServiceConfig`] and calls it; tests start services in-process, several
//! at once for a cluster.

pub mod feeds;
pub mod nats;
pub mod read_models;
pub mod settings;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use convo_engine::clock::{Clock, WallClock};
use convo_store::launcher::LaunchOptions;
use convo_store::signing::Signing;
use convo_store::{EventStore, JetStreamStore, StoreConfig};

pub use settings::OPERATOR_KEY_FILE;

/// Where the service leaves the HTTP gateway's URL.
pub const HTTP_URL_FILE: &str = "http.url";
/// The partition count of a stream no engine has served yet.
pub const DEFAULT_PARTITIONS: usize = 2;
/// How long the gateway's open event streams get to end when it stops.
pub const GATEWAY_STOP_WAIT: Duration = Duration::from_secs(5);

/// Why the service could not start or stopped on its own.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ServiceError(pub String);

impl ServiceError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    /// An I/O error on `path`.
    pub fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |e| Self(format!("{}: {e}", path.display()))
    }
}

macro_rules! from_error {
    ($($t:ty),*) => {
        $(impl From<$t> for ServiceError {
            fn from(e: $t) -> Self {
                Self(e.to_string())
            }
        })*
    };
}
from_error!(
    convo_store::StoreError,
    convo_store::private::PrivateError,
    convo_store::launcher::LaunchError,
    convo_store::signing::SigningError,
    std::io::Error
);

/// What this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// Decides commands (the partitions this instance owns; the JSON stream
    /// and the webhooks when it holds the `feeds` role).
    pub engine: bool,
    /// Keeps and serves the read models.
    pub read_models: bool,
}

/// The webhook sender's settings.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Hosts (optionally `:port`) webhooks may reach although private.
    pub allow: Vec<String>,
    pub retry_schedule: Vec<Duration>,
    pub timeout: Duration,
    pub body_bytes_max: usize,
    pub log_retention: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        let defaults = convo_webhooks::WebhookConfig::default();
        Self {
            allow: Vec::new(),
            retry_schedule: defaults.retry_schedule,
            timeout: defaults.timeout,
            body_bytes_max: defaults.body_bytes_max,
            log_retention: defaults.log_retention,
        }
    }
}

/// An identity provider's HS256 JWTs.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub key_file: PathBuf,
    pub issuer: String,
    pub audience: String,
}

/// Everything the service is told (what `convo serve`'s flags say).
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub data_dir: PathBuf,
    /// The first token of every subject.
    pub prefix: String,
    /// An existing server or cluster; `None`: the embedded default.
    pub nats_url: Option<String>,
    /// Each server's monitoring endpoint (durability is checked there).
    pub nats_monitor_urls: Vec<String>,
    /// Acknowledge before the commit is on disk (named for what it risks).
    pub accept_ack_loss: bool,
    /// The stream's replicas (checked against an existing stream).
    pub replicas: usize,
    pub storage: convo_store::Storage,
    /// The partition count for a stream no engine has served yet.
    pub partitions: Option<usize>,
    pub roles: Roles,
    /// Where the HTTP gateway listens; `None`: no gateway.
    pub http: Option<SocketAddr>,
    pub instance_id: Option<String>,
    /// How often an owner snapshots its partitions; `None`: never.
    pub snapshot_every: Option<Duration>,
    pub command_bytes_max: usize,
    pub risk_margin_secs: u64,
    pub webhooks: WebhookSettings,
    pub json_stream: convo_store::json_stream::JsonStreamConfig,
    pub trusted_proxies: Vec<std::net::IpAddr>,
    pub jwt: Option<JwtSettings>,
    /// Where the read models' role keeps the SQL projection, if anywhere.
    pub postgres: Option<convo_sql::Target>,
}

impl ServiceConfig {
    /// The embedded default's settings under `data_dir`.
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            prefix: convo_wire::DEFAULT_PREFIX.into(),
            nats_url: None,
            nats_monitor_urls: Vec::new(),
            accept_ack_loss: false,
            replicas: 1,
            storage: convo_store::Storage::File,
            partitions: None,
            roles: Roles { engine: true, read_models: true },
            http: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            instance_id: None,
            snapshot_every: Some(convo_engine::cluster::SNAPSHOT_EVERY_DEFAULT),
            command_bytes_max: convo_engine::intake::COMMAND_BYTES_MAX,
            risk_margin_secs: convo_live::DEFAULT_RISK_MARGIN_SECS,
            webhooks: WebhookSettings::default(),
            json_stream: convo_store::json_stream::JsonStreamConfig::default(),
            trusted_proxies: Vec::new(),
            jwt: None,
            postgres: None,
        }
    }

    fn store_config(&self) -> StoreConfig {
        StoreConfig { replicas: self.replicas, storage: self.storage, ..StoreConfig::for_prefix(&self.prefix) }
    }
}

/// What a run did, once it is over.
#[derive(Debug, Default)]
pub struct ServiceReport {
    /// Each partition run, as it ended.
    pub partitions: Vec<(usize, convo_engine::serve::ServeStats)>,
    pub forwarded: u64,
}

/// The service (see the crate's documentation).
#[derive(Debug)]
pub struct Service;

impl Service {
    /// Runs the service until `shutdown` is cancelled (or it fails: the
    /// embedded server cannot be kept up), then stops it in order.
    pub async fn run(config: ServiceConfig, shutdown: CancellationToken) -> Result<ServiceReport, ServiceError> {
        // Every setting and secret is checked before anything starts: a bad one stops here, naming the fix.
        // The secrets first: one that others could read is refused, not quietly tightened below.
        let key = config.data_dir.join(convo_store::signing::KEY_FILE);
        if key.exists() {
            convo_store::private::check_private(&key, "the engine's signing key")?;
        }
        let mut access = access_config(&config, &settings::operator_credential(&config.data_dir)?)?;
        settings::private_data_dir(&config.data_dir)?;
        let sql = read_models::check_sql(&config).await?;
        if !config.roles.engine {
            return read_models_only(config, access, sql, shutdown).await;
        }
        let asked = config.partitions;
        let launch = LaunchOptions {
            data_dir: config.data_dir.join("nats"),
            lazy_fsync: config.accept_ack_loss,
            mappings: vec![convo_store::bus::partition_mapping(&config.prefix, asked.unwrap_or(DEFAULT_PARTITIONS))],
        };
        let (url, mut embedded) = match &config.nats_url {
            Some(url) => {
                settings::check_durable(url, &config.nats_monitor_urls, config.accept_ack_loss)?;
                (url.clone(), None)
            }
            None => {
                let embedded = nats::Embedded::start(&config.data_dir, launch)?;
                (embedded.server.url(), Some(embedded))
            }
        };
        let store = JetStreamStore::connect(&url, config.store_config()).await?;
        tracing::info!("connected to nats-server {} at {}", store.server_version(), convo_store::strip_userinfo(&url));
        settings::check_replicas(&store, config.replicas).await?;
        let partitions = store.partitions(asked, DEFAULT_PARTITIONS).await?;
        if let Some(embedded) = embedded.as_mut() {
            // The stream was made with another count: the embedded server maps onto it.
            embedded.remap(vec![convo_store::bus::partition_mapping(&config.prefix, partitions)])?;
        }
        let clock: Arc<dyn Clock> = Arc::new(WallClock);
        settings::check_mapping(store.client(), &config.prefix, partitions, clock.now().millis()).await?;
        let (signing, made) =
            Signing::open_or_create(&config.data_dir, &store.config().stream, store.last_seq().await?)?;
        if made {
            tracing::info!(
                "made the engine's signing key: {} (mode 0600; `convo audit verify` needs it)",
                config.data_dir.join(convo_store::signing::KEY_FILE).display()
            );
        }
        let signing = Arc::new(signing);
        let keys = Arc::new(store.keyring_of(&signing).await?);
        let store = store.with_signing(signing.clone()).with_keys(keys);
        access.sealer = Some(signing.sealer());
        access.webhook_allowed = convo_store::egress::Allowed { hosts: config.webhooks.allow.clone() };

        let tasks = TaskTracker::new();
        let background = CancellationToken::new();
        // The service stops when told, or when the embedded server cannot be kept up.
        let stopping = shutdown.child_token();
        let failed = Arc::new(std::sync::Mutex::new(None::<String>));
        let logins = convo_engine::serve::NatsLogins::new(&config.prefix);
        let supervisor = CancellationToken::new();
        if let Some(embedded) = embedded {
            tasks.spawn(embedded.supervise(logins.clone(), supervisor.clone(), stopping.clone(), failed.clone()));
        }
        tasks.spawn({
            let (signing, stop) = (signing.clone(), background.clone());
            async move {
                let mut every = tokio::time::interval(Duration::from_millis(convo_store::signing::ANCHOR_EVERY_MS));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = every.tick() => {}
                    }
                    // Off the runtime's threads: the write waits for the disk.
                    let signing = signing.clone();
                    let written = tokio::task::spawn_blocking(move || signing.flush()).await;
                    if let Err(e) = written.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string())) {
                        tracing::warn!("could not write the anchors: {e}");
                    }
                }
            }
        });
        let last = store.last_seq().await?;
        let instance = config.instance_id.clone().unwrap_or_else(|| settings::instance_id(clock.now().millis()));
        tracing::info!(
            instance = %instance,
            "the stream holds {last} commits over {partitions} partition(s); commands arrive on {}.<account>.cmd.<type>",
            config.prefix
        );
        let redactions = Arc::new(convo_wire::redact::Redactions::default());
        let metrics = Arc::new(convo_store::metrics::Metrics::default());
        let serve_config = convo_engine::serve::ServeConfig {
            access: Arc::new(access),
            command_bytes_max: config.command_bytes_max,
            partitions,
            nats_logins: Some(logins.clone()),
            redactions: Some(redactions.clone()),
            metrics: Some(metrics.clone()),
            lazy_fsync: config.accept_ack_loss,
            ..Default::default()
        };
        let deliveries = convo_webhooks::Deliveries::open(&config.data_dir.join("webhooks")).map_err(|e| {
            ServiceError::new(format!("cannot open the webhooks database under {}: {e}", config.data_dir.display()))
        })?;
        let json_checkpoint = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let feeds = feeds::Feeds {
            store: store.clone(),
            redactions: redactions.clone(),
            json_stream: config.json_stream.clone(),
            json_checkpoint: json_checkpoint.clone(),
            deliveries: deliveries.clone(),
            queue: convo_webhooks::Queue::new(&config.prefix, redactions.clone(), signing.sealer()),
            webhooks: convo_webhooks::WebhookConfig {
                retry_schedule: config.webhooks.retry_schedule.clone(),
                timeout: config.webhooks.timeout,
                body_bytes_max: config.webhooks.body_bytes_max,
                log_retention: config.webhooks.log_retention,
                allowed: convo_store::egress::Allowed { hosts: config.webhooks.allow.clone() },
                metrics: Some(metrics.clone()),
                keys: store.keys().cloned(),
                ..Default::default()
            },
        };
        // Every account's logins and redaction rules, whichever instance owns it.
        let (ends, end_watcher) =
            convo_projector::follow::watch_end(store.clone(), read_models::END_POLL, background.clone());
        tasks.spawn(async move {
            let _ = end_watcher.await;
        });
        tasks.spawn(convo_engine::read_door::follow_catalogs(
            store.clone(),
            ends.clone(),
            Some(logins),
            Some(redactions.clone()),
        ));
        let read_models = if config.roles.read_models {
            Some(read_models::follow(&config.data_dir, &store, last, &ends, &tasks, &background)?)
        } else {
            None
        };
        let sql = read_models::follow_sql(&config, sql, &store, &ends, &tasks, &background);
        tasks.spawn(read_models::measure_lags(
            store.clone(),
            metrics.clone(),
            read_models.clone(),
            {
                let (deliveries, json_checkpoint) = (deliveries.clone(), json_checkpoint.clone());
                move || {
                    let json = json_checkpoint.load(std::sync::atomic::Ordering::Relaxed);
                    let mut at = vec![("json_stream", json), ("webhooks", deliveries.checkpoint())];
                    at.extend(sql.iter().map(read_models::SqlFollower::position));
                    at
                }
            },
            background.clone(),
        ));
        let (status_tx, status_rx) = tokio::sync::watch::channel(convo_engine::cluster::ClusterStatus::default());
        let unowned: convo_gateway::UnownedCheck = {
            let (client, prefix, me) = (store.client().clone(), config.prefix.clone(), instance.clone());
            convo_gateway::UnownedCheck(Arc::new(move || {
                let status = status_rx.borrow().clone();
                let (client, prefix) = (client.clone(), prefix.clone());
                let joined = status.live.contains(&me);
                Box::pin(async move {
                    let unowned = convo_engine::cluster::unowned_now(&client, &prefix, partitions, &status).await;
                    convo_gateway::ClusterReadiness { joined, unowned }
                })
            }))
        };
        let (local_tx, local_rx) = tokio::sync::mpsc::channel(convo_engine::serve::PARTITION_QUEUE_MAX);
        let gateway_config = convo_gateway::GatewayConfig {
            trusted_proxies: config.trusted_proxies.clone(),
            read_models: read_models.clone(),
            risk_margin_secs: config.risk_margin_secs,
            redactions: redactions.clone(),
            webhooks: Some(deliveries.clone()),
            metrics: Some(metrics.clone()),
            unowned: Some(unowned),
        };
        let gateway = Gateway::start(&config, local_tx, &store, gateway_config).await?;
        let cluster = convo_engine::cluster::ClusterConfig {
            prefix: config.prefix.clone(),
            instance: instance.clone(),
            partitions,
            info: serde_json::json!({
                "holder": settings::holder(&clock.now().to_rfc3339()),
                "http": gateway.as_ref().map(|g| g.url.clone()),
            }),
            directory: store.directory().await?,
            snapshots: match config.snapshot_every {
                Some(_) => Some(store.snapshots().await?),
                None => None,
            },
            snapshot_every: config.snapshot_every.unwrap_or(Duration::MAX),
            roles: [("feeds".to_owned(), Arc::new(feeds) as Arc<dyn convo_engine::cluster::Role>)].into(),
        };
        let client = store.client().clone();
        let ran = convo_engine::cluster::serve_cluster(
            store.clone(),
            client,
            local_rx,
            clock,
            serve_config,
            cluster,
            status_tx,
            stopping.clone(),
        )
        .await;
        // In order: the partitions are handed over (above); the gateway finishes its requests;
        // the followers and the loops stop; the anchors are written; the embedded server goes last.
        if let Some(gateway) = gateway {
            gateway.stop(&config.data_dir).await;
        }
        background.cancel();
        supervisor.cancel();
        tasks.close();
        tasks.wait().await;
        signing.flush()?;
        let stats: Vec<_> = ran.partitions.iter().map(|(_, s)| *s).collect();
        let sum = |f: fn(&convo_engine::serve::ServeStats) -> u64| stats.iter().map(f).sum::<u64>();
        tracing::info!(
            "served {} requests; {} commits; {} refused as overloaded; {} conflicts; {} messages of the log skipped; up to {} appends in flight per partition",
            sum(|s| s.requests),
            sum(|s| s.committed),
            sum(|s| s.overloaded),
            sum(|s| s.conflicts),
            sum(|s| s.skipped),
            stats.iter().map(|s| s.io_in_flight_max).max().unwrap_or(0),
        );
        if let Some(why) = failed.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(ServiceError::new(why));
        }
        Ok(ServiceReport { partitions: ran.partitions, forwarded: ran.forwarded })
    }
}

/// Who may do what: the operator's credential, and the identity provider's
/// JWTs when configured (their key checked: private, long enough).
fn access_config(config: &ServiceConfig, operator: &str) -> Result<convo_engine::access::AccessConfig, ServiceError> {
    let jwt = match &config.jwt {
        Some(jwt) => {
            let min = convo_engine::access::JWT_KEY_BYTES_MIN;
            let key = convo_store::private::read_secret(&jwt.key_file, "the identity provider's HS256 key", min)?;
            let settings = convo_engine::access::JwtConfig::new(key, &jwt.issuer, &jwt.audience)
                .map_err(|why| ServiceError::new(format!("--jwt-key-file {}: {why}", jwt.key_file.display())))?;
            Some(settings)
        }
        None => None,
    };
    let secret = operator.strip_prefix(&format!("{}.", convo_engine::access::OPERATOR_PREFIX)).unwrap_or(operator);
    Ok(convo_engine::access::AccessConfig {
        operator_sha256: Some(convo_engine::access::sha256(secret)),
        jwt,
        ..Default::default()
    })
}

/// `--roles read-models`: the read models followed from the stream of an
/// engine running elsewhere, served over HTTP, with reads authorized by
/// `convo_engine::read_door`. No lease, no appends, no feeds.
async fn read_models_only(
    config: ServiceConfig,
    access: convo_engine::access::AccessConfig,
    sql: Option<convo_sql::Sql>,
    shutdown: CancellationToken,
) -> Result<ServiceReport, ServiceError> {
    let Some(url) = config.nats_url.clone() else {
        return Err(ServiceError::new(format!(
            "--roles read-models follows the stream of an engine running elsewhere: give its --nats-url \
             (with its own --data-dir; copy the engine's {} there to have unsigned commits refused)",
            convo_store::signing::KEY_FILE
        )));
    };
    if config.http.is_none() {
        return Err(ServiceError::new("--roles read-models serves the read models over HTTP: drop --no-http"));
    }
    let signing = Signing::open(&config.data_dir, &config.store_config().stream)?.map(Arc::new);
    let store = JetStreamStore::connect(&url, StoreConfig { signing, ..config.store_config() }).await?;
    tracing::info!(
        "connected to nats-server {} at {}; keeping the read models only (commands go to the engine)",
        store.server_version(),
        convo_store::strip_userinfo(&url)
    );
    if store.config().signing.is_none() {
        tracing::warn!(
            "no signing key under {}: commits are read without checking who appended them",
            config.data_dir.display()
        );
    }
    let tasks = TaskTracker::new();
    let background = CancellationToken::new();
    let last = store.last_seq().await?;
    let (ends, end_watcher) =
        convo_projector::follow::watch_end(store.clone(), read_models::END_POLL, background.clone());
    tasks.spawn(async move {
        let _ = end_watcher.await;
    });
    let models = read_models::follow(&config.data_dir, &store, last, &ends, &tasks, &background)?;
    let sql = read_models::follow_sql(&config, sql, &store, &ends, &tasks, &background);
    let redactions = Arc::new(convo_wire::redact::Redactions::default());
    let metrics = Arc::new(convo_store::metrics::Metrics::default());
    tasks.spawn(read_models::measure_lags(
        store.clone(),
        metrics.clone(),
        Some(models.clone()),
        move || sql.iter().map(read_models::SqlFollower::position).collect(),
        background.clone(),
    ));
    let (local_tx, local_rx) = tokio::sync::mpsc::channel(convo_engine::serve::PARTITION_QUEUE_MAX);
    let gateway_config = convo_gateway::GatewayConfig {
        trusted_proxies: config.trusted_proxies.clone(),
        read_models: Some(models),
        risk_margin_secs: config.risk_margin_secs,
        redactions: redactions.clone(),
        webhooks: None,
        metrics: Some(metrics),
        unowned: None,
    };
    let gateway = Gateway::start(&config, local_tx, &store, gateway_config)
        .await?
        .ok_or_else(|| ServiceError::new("no HTTP gateway"))?;
    let door = convo_engine::read_door::ReadDoorConfig {
        access: Arc::new(access),
        bytes_max: config.command_bytes_max,
        redactions: Some(redactions),
    };
    let responder = convo_store::bus::Responder::new(store.client().clone());
    let stats = convo_engine::read_door::serve_reads(store.clone(), local_rx, responder, ends, door, async {
        shutdown.cancelled().await;
        tracing::info!("stopping");
    })
    .await;
    gateway.stop(&config.data_dir).await;
    background.cancel();
    tasks.close();
    tasks.wait().await;
    let stats = stats?;
    tracing::info!(
        "answered {} requests; the catalogs held up to stream sequence {} ({} catalog messages skipped)",
        stats.requests,
        stats.position,
        stats.skipped
    );
    Ok(ServiceReport::default())
}

/// The HTTP gateway while it serves.
struct Gateway {
    /// Where it listens (`http://…`).
    url: String,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    stop: CancellationToken,
}

impl Gateway {
    /// Listens where the config says (unless it says nowhere), writes the URL
    /// under the data dir, and serves with requests going to `engine`.
    async fn start(
        config: &ServiceConfig,
        engine: tokio::sync::mpsc::Sender<convo_store::bus::Request>,
        store: &JetStreamStore,
        gateway: convo_gateway::GatewayConfig,
    ) -> Result<Option<Gateway>, ServiceError> {
        let Some(address) = config.http else { return Ok(None) };
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|e| ServiceError::new(format!("cannot listen on {address} for HTTP: {e}")))?;
        let url = format!("http://{}", listener.local_addr()?);
        let file = config.data_dir.join(HTTP_URL_FILE);
        convo_store::launcher::write_private(&file, url.as_bytes())?;
        tracing::info!("HTTP gateway on {url} (written to {})", file.display());
        if gateway.read_models.is_some() {
            tracing::info!(
                "the live dashboard: {url}/dashboard (sign in with an API key, or the operator's credential in {})",
                config.data_dir.join(OPERATOR_KEY_FILE).display()
            );
        }
        let router = convo_gateway::router(engine, store.clone(), gateway);
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(convo_gateway::serve(listener, router, async move { stopped.cancelled().await }));
        Ok(Some(Gateway { url, task, stop }))
    }

    /// Finishes the requests in hand (open event streams are closed after
    /// [`GATEWAY_STOP_WAIT`]: they never end by themselves) and removes the URL file.
    async fn stop(mut self, data_dir: &std::path::Path) {
        self.stop.cancel();
        if tokio::time::timeout(GATEWAY_STOP_WAIT, &mut self.task).await.is_err() {
            tracing::info!("closing the HTTP connections still open (event streams)");
            self.task.abort();
        }
        let _ = std::fs::remove_file(data_dir.join(HTTP_URL_FILE));
    }
}
