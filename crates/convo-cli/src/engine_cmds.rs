//! The engine's commands: `serve`, `send`, `tail`, `replay-traffic`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use futures::StreamExt;

use convo_engine::Engine;
use convo_engine::clock::WallClock;
use convo_sim::summary::Summary;
use convo_sim::{Record, scenario};
use convo_store::bus::partition_mapping;
use convo_store::launcher::{LaunchOptions, NatsServer};
use convo_store::signing::Signing;
use convo_store::{EventStore, JetStreamStore, StoreConfig};

/// Where `serve` leaves the address of its embedded server, for NATS
/// clients logging in as themselves (an API key's nkey): no credentials.
pub const URL_FILE: &str = "nats.url";
/// Where `serve` leaves the embedded server's URL with the engine's NATS
/// login, for this machine's tools (`send`, `tail`, the reads): the
/// engine's user may do everything, so it is a file of its own (mode 0600)
/// that nobody takes for the address.
pub const ENGINE_URL_FILE: &str = "nats-engine.url";
/// Where `serve` leaves the HTTP gateway's URL.
pub const HTTP_URL_FILE: &str = "http.url";
/// Where `serve` leaves the embedded nats-server's monitoring URL.
pub const MONITOR_URL_FILE: &str = "nats-monitor.url";
/// The platform operator's credential, made at the first start (mode 0600).
pub const OPERATOR_KEY_FILE: &str = "operator.key";

/// The operator's credential under `dir`, made (and said where) when there
/// is none yet; refused when others could read it.
fn operator_credential(dir: &std::path::Path) -> Result<String> {
    let path = dir.join(OPERATOR_KEY_FILE);
    if path.exists() {
        let token = convo_store::private::read_secret(&path, "the operator's credential", 1)?;
        return String::from_utf8(token).with_context(|| format!("{} is not text", path.display()));
    }
    let secret = convo_engine::access::new_secret().map_err(anyhow::Error::msg)?;
    let token = convo_engine::access::operator_token(&secret);
    std::fs::create_dir_all(dir)?;
    convo_store::launcher::write_private(&path, format!("{token}\n").as_bytes())?;
    eprintln!(
        "convo: made the platform operator's credential: {} (mode 0600; the only credential that creates accounts)",
        path.display()
    );
    Ok(token)
}

#[derive(Args, Debug)]
pub struct Connection {
    /// The NATS server or cluster to use (default: the one `convo serve` started under --data-dir).
    #[arg(long, env = "CONVO_NATS_URL", global = true)]
    nats_url: Option<String>,
    /// The data directory of the embedded default.
    #[arg(long, default_value = ".data", global = true)]
    data_dir: PathBuf,
    /// The first token of every subject.
    #[arg(long, default_value = convo_wire::DEFAULT_PREFIX, global = true)]
    prefix: String,
    /// Replicas of the stream when convo creates it (3 in a production cluster).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5), global = true)]
    replicas: u8,
    /// Where the stream keeps commits when convo creates it: file (durable) or memory.
    #[arg(long, default_value = "file", value_parser = ["file", "memory"], global = true)]
    storage: String,
}

impl Connection {
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    pub fn url(&self) -> Result<String> {
        if let Some(url) = &self.nats_url {
            return Ok(url.clone());
        }
        let file = self.data_dir.join(ENGINE_URL_FILE);
        let url = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "no --nats-url, and no running `convo serve` under {} ({} is missing)",
                self.data_dir.display(),
                file.display()
            )
        })?;
        Ok(url.trim().to_owned())
    }

    /// The stream and a read model's database under `<data-dir>/projections`.
    /// The stream and a read model. With no server running under
    /// --data-dir, its nats-server is started for this command (and stopped
    /// after), so reads work with `convo serve` stopped.
    pub async fn read_model(
        &self,
        name: &'static str,
    ) -> Result<(JetStreamStore, convo_projector::Projector, Option<NatsServer>)> {
        let (store, server) = self.open_store().await?;
        Ok((store, self.projector(name)?, server))
    }

    /// The stream: --nats-url, the running `convo serve`'s, or — none running
    /// — the data directory's own nats-server, started for this command.
    pub async fn open_store(&self) -> Result<(JetStreamStore, Option<NatsServer>)> {
        let running = self.nats_url.is_some() || self.data_dir.join(ENGINE_URL_FILE).exists();
        if running {
            let url = self.url()?;
            let connect = JetStreamStore::connect(&url, self.store_config()?);
            match tokio::time::timeout(std::time::Duration::from_secs(5), connect).await {
                Ok(Ok(store)) => return Ok((store, None)),
                Ok(Err(e)) if self.nats_url.is_some() => return Err(e.into()),
                Err(_) if self.nats_url.is_some() => bail!("the NATS server did not answer within 5 s"),
                _ => {} // a stale URL file from a server that died: start it again below
            }
        }
        let nats = self.data_dir.join("nats");
        if !nats.join("jetstream").is_dir() {
            // No stream here at all: the usual message.
            self.url()?;
        }
        let server = NatsServer::start(&LaunchOptions { data_dir: nats.clone(), ..Default::default() })
            .with_context(|| format!("cannot start the nats-server of {}", self.data_dir.display()))?;
        eprintln!(
            "convo: no `convo serve` runs under {}; started its nats-server for this command",
            self.data_dir.display()
        );
        let store = JetStreamStore::connect(&server.url(), self.store_config()?).await?;
        Ok((store, Some(server)))
    }

    fn projector(&self, name: &'static str) -> Result<convo_projector::Projector> {
        let dir = self.data_dir.join("projections");
        convo_projector::Projector::open_at(&dir, name).with_context(|| {
            format!(
                "cannot open the read models in {} (a `convo serve` reading them right now holds them)",
                dir.display()
            )
        })
    }

    /// A read model brought up to the stream's end (the stream of the
    /// running server, or of the data directory's own nats-server started for
    /// this command); when there is no stream to read, the read model as it
    /// is on disk, saying where it stands (it may be behind the stream).
    pub async fn caught_up(
        &self,
        name: &'static str,
        projection: &mut (dyn convo_projector::Projection + Send),
    ) -> Result<convo_projector::Projector> {
        let projector = self.projector(name)?;
        match self.open_store().await {
            Ok((store, _server)) => {
                let stats = projector.catch_up(&store, projection, &mut |_, _| {}).await?;
                eprintln!(
                    "convo: the {name} read model under {} is at stream sequence {} (the stream's end; {} commits folded now)",
                    self.data_dir.join("projections").display(),
                    stats.checkpoint,
                    stats.commits
                );
            }
            Err(why) => eprintln!(
                "convo: the stream cannot be read ({why:#}); reading the {name} read model as it is on disk, \
                 at stream sequence {} (it may be behind the stream)",
                projector.checkpoint()?
            ),
        }
        Ok(projector)
    }

    /// The store's settings, with the engine's key under --data-dir when
    /// there is one (reads then refuse what the engine did not sign).
    pub fn store_config(&self) -> Result<StoreConfig> {
        let storage = if self.storage == "memory" { convo_store::Storage::Memory } else { convo_store::Storage::File };
        let config =
            StoreConfig { replicas: usize::from(self.replicas), storage, ..StoreConfig::for_prefix(&self.prefix) };
        let signing = Signing::open(&self.data_dir, &config.stream)?.map(std::sync::Arc::new);
        Ok(StoreConfig { signing, ..config })
    }

    /// The engine's key for the stream under --data-dir, made if there is
    /// none, anchoring what this process appends.
    pub async fn sign(&self, store: JetStreamStore) -> Result<(JetStreamStore, std::sync::Arc<Signing>)> {
        let (signing, made) = Signing::open_or_create(&self.data_dir, &store.config().stream, store.last_seq().await?)?;
        if made {
            eprintln!(
                "convo: made the engine's signing key: {} (mode 0600; `convo audit verify` needs it)",
                self.data_dir.join(convo_store::signing::KEY_FILE).display()
            );
        }
        let signing = std::sync::Arc::new(signing);
        Ok((store.with_signing(signing.clone()), signing))
    }
}

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  convo serve                              # embedded default: starts nats-server, data under .data/
  convo serve --nats-url nats://10.0.0.5:4222
  convo serve --nats-url nats://10.0.0.5:4222 --nats-monitor-url http://10.0.0.5:8222
  convo serve --accept-ack-loss            # lazy fsync: faster, but a power cut can lose acknowledged commands

A command is acknowledged once its commit is on disk: the embedded nats-server
runs `sync_interval: always`; with --nats-url, each server's monitoring endpoint
(--nats-monitor-url) must say so, or serve refuses to start.

Commands arrive as NATS requests on <prefix>.<account>.cmd.<type> (see `convo send`);
events are published on <prefix>.<account>.conv.<id>.<kind> (see `convo tail`).")]
pub struct ServeArgs {
    #[command(flatten)]
    connection: Connection,
    /// Acknowledge commands before their commits are on disk (JetStream's lazy flush, every
    /// two minutes, instead of `sync_interval: always`): faster, but a power failure or an OS
    /// crash can lose commands already acknowledged. For benchmarks and throwaway data.
    #[arg(long)]
    accept_ack_loss: bool,
    /// With --nats-url: the monitoring endpoint (`http://host:port`, the `http:` setting) of each
    /// server of the cluster (repeatable). The engine checks there that every server acknowledges
    /// only what is on disk (`sync_interval: always`) and refuses to start otherwise.
    #[arg(long)]
    nats_monitor_url: Vec<String>,
    /// The largest command request accepted, in bytes (larger ones get a `too_large` error).
    #[arg(long, default_value_t = convo_engine::intake::COMMAND_BYTES_MAX)]
    command_bytes_max: usize,
    /// Partitions sharing the accounts (accounts hash onto them; each owned by one engine
    /// instance at a time). Fixed per stream when the first engine serves it (default 2):
    /// later starts take the stream's count, and refuse another.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=convo_engine::serve::PARTITIONS_MAX as i64))]
    partitions: Option<u16>,
    /// Where the HTTP gateway listens (the port is written to <data-dir>/http.url).
    #[arg(long, default_value = "127.0.0.1:0")]
    http: std::net::SocketAddr,
    /// Do not run the HTTP gateway.
    #[arg(long)]
    no_http: bool,
    /// How often an instance writes each of its partitions' snapshot, in seconds (also once
    /// at each handover); 0: none, a takeover reads the whole log.
    #[arg(long, default_value_t = convo_engine::cluster::SNAPSHOT_EVERY_DEFAULT.as_secs())]
    snapshot_every_secs: u64,
    /// This instance's id among those sharing the stream (letters, digits, `-`, `_`;
    /// default: host, process and start time). Partition `n` goes to the `n mod k`-th
    /// of the `k` live instances sorted by id.
    #[arg(long, value_parser = parse_instance_id)]
    instance_id: Option<String>,
    /// What this process runs: `engine` (decides commands; keeps the JSON stream and the
    /// webhooks), `read-models` (keeps the audit log, reports, contact history, live
    /// dashboard and inboxes current under <data-dir>/projections and serves them over
    /// HTTP), or both. `read-models` alone follows an engine elsewhere: it needs --nats-url.
    #[arg(long, value_delimiter = ',', default_value = "engine,read-models", value_parser = ["engine", "read-models"])]
    roles: Vec<String>,
    /// On the dashboard and inboxes, a wait this close to its next SLA threshold is at risk (seconds).
    #[arg(long, default_value_t = convo_live::DEFAULT_RISK_MARGIN_SECS)]
    risk_margin_secs: u64,
    /// A host (as written in webhook URLs) or IP address webhooks may reach although it is
    /// loopback, private or link-local, optionally `:PORT` for that port only (repeatable;
    /// by default only public addresses).
    #[arg(long)]
    webhook_allow: Vec<String>,
    /// The waits after each failed webhook attempt (the last one failing dead-letters the delivery).
    #[arg(long, default_value = convo_webhooks::RETRY_SCHEDULE_DEFAULT, value_parser = convo_webhooks::parse_schedule)]
    webhook_retry_schedule: std::vec::Vec<std::time::Duration>,
    /// How long one webhook attempt may take, in milliseconds.
    #[arg(long, default_value_t = convo_webhooks::TIMEOUT_DEFAULT.as_millis() as u64)]
    webhook_timeout_ms: u64,
    /// The largest webhook body, in bytes (a larger event is dead-lettered at once).
    #[arg(long, default_value_t = convo_webhooks::BODY_BYTES_MAX)]
    webhook_body_bytes_max: usize,
    /// How long the delivery log keeps an attempt, in hours.
    #[arg(long, default_value_t = 24 * 7)]
    webhook_log_hours: u32,
    /// The log lines' format on stderr: text, or json (one object per line); `RUST_LOG` filters them.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// How long the JSON event stream (<STREAM>_JSON) keeps an event, in hours.
    #[arg(long, default_value_t = 24 * 7)]
    json_stream_max_age_hours: u32,
    /// The most bytes the JSON event stream keeps (the oldest events go first).
    #[arg(long, default_value_t = convo_store::json_stream::MAX_BYTES_DEFAULT)]
    json_stream_max_bytes: i64,
    /// A proxy whose `Forwarded`/`X-Forwarded-For` the gateway believes (repeatable).
    #[arg(long)]
    trusted_proxy: Vec<std::net::IpAddr>,
    /// Accept HS256 JWTs from an identity provider, signed with the key in this file.
    #[arg(long, requires_all = ["jwt_issuer", "jwt_audience"])]
    jwt_key_file: Option<PathBuf>,
    /// The `iss` a JWT must carry.
    #[arg(long)]
    jwt_issuer: Option<String>,
    /// The `aud` a JWT must carry.
    #[arg(long)]
    jwt_audience: Option<String>,
}

/// Structured logs for `serve`: `RUST_LOG` filters (default `info`), `--log-format` picks text or JSON lines.
fn init_logs(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: a log file gets plain text.
    let colours = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(colours);
    let _ = if format == "json" { logs.json().flatten_event(true).try_init() } else { logs.try_init() };
}

pub async fn serve(args: ServeArgs) -> Result<()> {
    init_logs(&args.log_format);
    // Every setting and secret is checked before anything starts: a bad one stops here, naming the fix.
    // The secrets first: one that others could read is refused, not quietly tightened below.
    let c = &args.connection;
    let key = c.data_dir.join(convo_store::signing::KEY_FILE);
    if key.exists() {
        convo_store::private::check_private(&key, "the engine's signing key")?;
    }
    let mut access = access_config(&args, &operator_credential(&c.data_dir)?)?;
    private_data_dir(&c.data_dir)?;
    if !args.roles.iter().any(|r| r == "engine") {
        return serve_read_models(args, access).await;
    }
    let asked = args.partitions.map(usize::from);
    let mut launch = LaunchOptions {
        data_dir: c.data_dir.join("nats"),
        lazy_fsync: args.accept_ack_loss,
        mappings: vec![partition_mapping(&c.prefix, asked.unwrap_or(DEFAULT_PARTITIONS))],
    };
    let mut embedded = None;
    let url = match &c.nats_url {
        Some(url) => url.clone(),
        None => {
            let server = NatsServer::start(&launch)?;
            for note in &server.notes {
                tracing::info!("{note}");
            }
            let url = server.url();
            tracing::info!(
                "started {} (pid {}) on {} (written to {}; no anonymous access: API keys log in with their nkey, \
                 this machine's tools with the engine's login in {}, mode 0600); JetStream data in {}",
                server.binary.display(),
                server.pid(),
                server.public_url(),
                c.data_dir.join(URL_FILE).display(),
                c.data_dir.join(ENGINE_URL_FILE).display(),
                launch.data_dir.join("jetstream").display()
            );
            convo_store::launcher::write_private(&c.data_dir.join(ENGINE_URL_FILE), url.as_bytes())?;
            convo_store::launcher::write_private(&c.data_dir.join(URL_FILE), server.public_url().as_bytes())?;
            convo_store::launcher::write_private(&c.data_dir.join(MONITOR_URL_FILE), server.monitor_url().as_bytes())?;
            tracing::info!(
                "nats-server monitoring on {} (/varz, /jsz, /healthz; written to {})",
                server.monitor_url(),
                c.data_dir.join(MONITOR_URL_FILE).display()
            );
            embedded = Some(server);
            url
        }
    };
    if embedded.is_none() {
        check_durable(&args, &url)?;
    }
    let store = JetStreamStore::connect(&url, c.store_config()?).await?;
    tracing::info!("connected to nats-server {} at {}", store.server_version(), convo_store::strip_userinfo(&url));
    let partitions = store.partitions(asked, DEFAULT_PARTITIONS).await?;
    if let Some(server) = embedded.as_mut().filter(|_| launch.mappings[0] != partition_mapping(&c.prefix, partitions)) {
        // The stream was made with another count: the embedded server maps onto it.
        launch.mappings = vec![partition_mapping(&c.prefix, partitions)];
        server.restart(&launch)?;
    }
    check_mapping(store.client(), &c.prefix, partitions).await?;
    let (store, signing) = c.sign(store).await?;
    access.sealer = Some(signing.sealer());
    access.webhook_allowed = convo_store::egress::Allowed { hosts: args.webhook_allow.clone() };
    let anchoring = tokio::spawn({
        let signing = signing.clone();
        async move {
            let mut every =
                tokio::time::interval(std::time::Duration::from_millis(convo_store::signing::ANCHOR_EVERY_MS));
            loop {
                every.tick().await;
                if let Err(e) = signing.flush() {
                    tracing::warn!("could not write the anchors: {e}");
                }
            }
        }
    });
    let directory = store.directory().await?;
    let client = store.client().clone();
    let last = store.last_seq().await?;
    let instance = args.instance_id.clone().unwrap_or_else(instance_id);
    tracing::info!(
        instance = %instance,
        "the stream holds {last} commits over {partitions} partition(s); commands arrive on {}.<account>.cmd.<type>",
        c.prefix
    );
    let (reason_tx, mut reason_rx) = tokio::sync::watch::channel(None::<String>);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let logins = convo_engine::serve::NatsLogins::new(&c.prefix);
    let supervisor = tokio::spawn(supervise(embedded, launch, logins.clone(), reason_tx, stop_rx));
    let shutdown = async {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("stopping after the commands in hand"),
            _ = reason_rx.wait_for(Option::is_some) => {}
        }
    };
    let redactions = std::sync::Arc::new(convo_wire::redact::Redactions::default());
    let metrics = std::sync::Arc::new(convo_store::metrics::Metrics::default());
    let config = convo_engine::serve::ServeConfig {
        access: std::sync::Arc::new(access),
        command_bytes_max: args.command_bytes_max,
        partitions,
        nats_logins: Some(logins.clone()),
        redactions: Some(redactions.clone()),
        metrics: Some(metrics.clone()),
        ..Default::default()
    };
    let json_stream = convo_store::json_stream::JsonStreamConfig {
        max_age: std::time::Duration::from_secs(u64::from(args.json_stream_max_age_hours) * 3600),
        max_bytes: args.json_stream_max_bytes,
    };
    let json_checkpoint = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let deliveries = convo_webhooks::Deliveries::open(&c.data_dir.join("webhooks"))
        .map_err(|e| anyhow::anyhow!("cannot open the webhooks database under {}: {e}", c.data_dir.display()))?;
    let webhook_config = convo_webhooks::WebhookConfig {
        retry_schedule: args.webhook_retry_schedule.clone(),
        timeout: std::time::Duration::from_millis(args.webhook_timeout_ms),
        body_bytes_max: args.webhook_body_bytes_max,
        log_retention: std::time::Duration::from_secs(u64::from(args.webhook_log_hours) * 3600),
        allowed: convo_store::egress::Allowed { hosts: args.webhook_allow.clone() },
        metrics: Some(metrics.clone()),
        ..Default::default()
    };
    // Every account's logins and redaction rules, whichever instance owns it.
    let (ends, end_watcher) = convo_projector::follow::watch_end(store.clone(), READ_MODELS_POLL);
    let catalogs = tokio::spawn(convo_engine::read_door::follow_catalogs(
        store.clone(),
        ends.clone(),
        Some(logins),
        Some(redactions.clone()),
    ));
    // The read models, each followed from its own checkpoint.
    let (read_models, followers) = if args.roles.iter().any(|r| r == "read-models") {
        let (models, tasks) = follow_read_models(&c.data_dir, &store, last, ends.clone())?;
        (Some(models), tasks)
    } else {
        (None, Vec::new())
    };
    let lags = spawn_lags(store.clone(), metrics.clone(), read_models.clone(), {
        let (deliveries, json_checkpoint) = (deliveries.clone(), json_checkpoint.clone());
        move || {
            let json = json_checkpoint.load(std::sync::atomic::Ordering::Relaxed);
            vec![("json_stream", json), ("webhooks", deliveries.checkpoint())]
        }
    });
    // The JSON stream and the webhooks: one instance per stream plays them.
    let (feeds_stop_tx, feeds_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let feeds = tokio::spawn(play_feeds(
        directory.clone(),
        instance.clone(),
        Feeds {
            store: store.clone(),
            redactions: redactions.clone(),
            json_stream,
            json_checkpoint: json_checkpoint.clone(),
            deliveries: deliveries.clone(),
            queue: convo_webhooks::Queue::new(&c.prefix, redactions.clone(), signing.sealer()),
            webhooks: webhook_config,
        },
        feeds_stop_rx,
    ));
    let (local_tx, local_rx) = tokio::sync::mpsc::channel(convo_engine::serve::PARTITION_QUEUE_MAX);
    let gateway = Gateway::start(
        &args,
        local_tx,
        &store,
        convo_gateway::GatewayConfig {
            trusted_proxies: args.trusted_proxy.clone(),
            read_models: read_models.clone(),
            risk_margin_secs: args.risk_margin_secs,
            redactions: redactions.clone(),
            webhooks: Some(deliveries.clone()),
            metrics: Some(metrics.clone()),
        },
    )
    .await?;
    let cluster = convo_engine::cluster::ClusterConfig {
        prefix: c.prefix.clone(),
        instance: instance.clone(),
        partitions,
        info: serde_json::json!({
            "holder": holder(),
            "http": gateway.as_ref().map(|g| g.url.clone()),
        }),
        directory: directory.clone(),
        snapshots: if args.snapshot_every_secs == 0 { None } else { Some(store.snapshots().await?) },
        snapshot_every: std::time::Duration::from_secs(args.snapshot_every_secs.max(1)),
    };
    let clock = std::sync::Arc::new(WallClock);
    let ran =
        convo_engine::cluster::serve_cluster(store.clone(), client, local_rx, clock, config, cluster, shutdown).await;
    let stats: Vec<_> = ran.partitions.iter().map(|(_, s)| *s).collect();
    anchoring.abort();
    signing.flush()?;
    if let Some(gateway) = gateway {
        gateway.stop(&c.data_dir).await;
    }
    let sum = |f: fn(&convo_engine::serve::ServeStats) -> u64| stats.iter().map(f).sum::<u64>();
    let in_flight = stats.iter().map(|s| s.io_in_flight_max).max().unwrap_or(0);
    tracing::info!(
        "served {} requests; {} commits; {} refused as overloaded; {} conflicts; {} messages of the log skipped; up to {in_flight} appends in flight per partition",
        sum(|s| s.requests),
        sum(|s| s.committed),
        sum(|s| s.overloaded),
        sum(|s| s.conflicts),
        sum(|s| s.skipped),
    );
    lags.abort();
    end_watcher.abort();
    catalogs.abort();
    for follower in followers {
        follower.abort(); // a batch is written with its checkpoint: an abort loses nothing
    }
    let _ = feeds_stop_tx.send(());
    let _ = feeds.await;
    let _ = stop_tx.send(());
    let embedded = supervisor.await?;
    let failure = reason_rx.borrow().clone();
    if embedded.is_some() {
        for file in [URL_FILE, ENGINE_URL_FILE, MONITOR_URL_FILE] {
            let _ = std::fs::remove_file(c.data_dir.join(file));
        }
    }
    if let Some(reason) = failure {
        bail!(reason);
    }
    drop(embedded);
    Ok(())
}

/// An acknowledgement is a promise: with --nats-url, every server given by
/// --nats-monitor-url must fsync each append before acknowledging it
/// (`sync_interval: always`, as `/varz` says), or the engine does not start.
/// It cannot learn the setting over the client protocol, so with no
/// monitoring endpoint it refuses too; `--accept-ack-loss` is the only way
/// past, and it is said in the log.
fn check_durable(args: &ServeArgs, url: &str) -> Result<()> {
    let url = convo_store::strip_userinfo(url);
    if args.accept_ack_loss {
        tracing::warn!(
            "--accept-ack-loss: commands are acknowledged before {url} has their commits on disk; a power failure \
             or an OS crash can lose acknowledged commands"
        );
        return Ok(());
    }
    if args.nats_monitor_url.is_empty() {
        bail!(
            "convo serve acknowledges a command only once its commit is on disk, and cannot tell whether {url} \
             fsyncs before it acknowledges: put `sync_interval: always` in each server's `jetstream {{ … }}` block \
             and give each server's monitoring endpoint with --nats-monitor-url http://HOST:PORT (its `http:` \
             setting) to have it checked; or accept losing acknowledged commands on a power failure with \
             --accept-ack-loss"
        );
    }
    for monitor in &args.nats_monitor_url {
        let durability = convo_store::launcher::durability(monitor).map_err(anyhow::Error::msg)?;
        if !durability.sync_always {
            bail!(
                "nats-server {} ({monitor}) acknowledges appends before they are on disk (it flushes every {} s): \
                 put `sync_interval: always` in its `jetstream {{ … }}` block and reload it, or start with \
                 --accept-ack-loss to accept losing acknowledged commands on a power failure",
                durability.server,
                durability.sync_interval_secs
            );
        }
        tracing::info!("nats-server {} ({monitor}) fsyncs every append before acknowledging it", durability.server);
    }
    Ok(())
}

/// The data directory, ours alone: made 0700, or tightened (and said) when
/// something in it could be read by others.
fn private_data_dir(dir: &std::path::Path) -> Result<()> {
    let tightened = convo_store::private::prepare_data_dir(dir)?;
    if !tightened.is_empty() {
        let shown: Vec<String> = tightened.iter().take(5).map(|p| p.display().to_string()).collect();
        tracing::warn!(
            "{} file(s) and directories under {} could be read by other users; they are this user's alone now ({}{})",
            tightened.len(),
            dir.display(),
            shown.join(", "),
            if tightened.len() > shown.len() { ", …" } else { "" }
        );
    }
    Ok(())
}

/// The partition count of a stream no engine has served yet.
const DEFAULT_PARTITIONS: usize = 2;

fn parse_instance_id(text: &str) -> std::result::Result<String, String> {
    convo_domain::ids::check_id(text).map(|()| text.to_owned()).map_err(|e| e.to_string())
}

/// This instance's id among those sharing the stream: host, process, start.
fn instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "host".into());
    let host: String =
        host.trim().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect();
    let started = convo_engine::clock::Clock::now(&WallClock).millis();
    format!("{host}-{}-{started}", std::process::id())
}

/// Checks that the server puts commands on their partitions as this stream
/// counts them (the mapping of [`partition_mapping`]): probes published on
/// made-up accounts must arrive on the partition their account hashes to.
async fn check_mapping(client: &convo_store::bus::Client, prefix: &str, partitions: usize) -> Result<()> {
    use futures::StreamExt;
    let (from, to) = partition_mapping(prefix, partitions);
    let nonce = convo_engine::clock::Clock::now(&WallClock).millis();
    let accounts: Vec<String> = (0..4).map(|i| format!("probe-{nonce}-{i}")).collect();
    let mut probes = client.subscribe(format!("{prefix}.~part.*.*.convo-probe")).await?;
    for account in &accounts {
        client.publish(format!("{prefix}.{account}.cmd.convo-probe"), "".into()).await?;
    }
    client.flush().await?;
    let how = format!(
        "add to the nats-server config `mappings {{ {from:?}: {to:?} }}` (`convo nats-config --partitions {partitions}` prints it) and reload it"
    );
    for _ in &accounts {
        let probe = tokio::time::timeout(std::time::Duration::from_secs(3), probes.next()).await;
        let Ok(Some(message)) = probe else {
            bail!("the NATS server does not put commands on their partitions: {how}");
        };
        let tokens: Vec<&str> = message.subject.split('.').collect();
        let (index, account) = (tokens[tokens.len() - 3], tokens[tokens.len() - 2]);
        if index.parse::<usize>().ok() != Some(convo_store::bus::partition_of(account, partitions)) {
            bail!(
                "the NATS server maps commands onto another number of partitions than the stream's {partitions}: {how}"
            );
        }
    }
    Ok(())
}

/// What the JSON stream and the webhooks need.
struct Feeds {
    store: JetStreamStore,
    redactions: std::sync::Arc<convo_wire::redact::Redactions>,
    json_stream: convo_store::json_stream::JsonStreamConfig,
    json_checkpoint: std::sync::Arc<std::sync::atomic::AtomicU64>,
    deliveries: convo_webhooks::Deliveries,
    queue: convo_webhooks::Queue,
    webhooks: convo_webhooks::WebhookConfig,
}

/// Plays the JSON stream and the webhooks while this instance holds the
/// stream's `feeds` lease (one instance per stream), taking it when free,
/// until `stop`; then stops them (webhook attempts in flight get 5 s) and
/// releases the lease.
async fn play_feeds(
    directory: convo_store::cluster::Directory,
    instance: String,
    feeds: Feeds,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    use convo_store::lease::{LEASE_RENEW_MS, LeaseError};
    type Running = (tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>, tokio::sync::oneshot::Sender<()>);
    let start = |feeds: &Feeds| -> Running {
        let republisher = tokio::spawn(republish_json(
            feeds.store.clone(),
            feeds.redactions.clone(),
            feeds.json_stream.clone(),
            feeds.json_checkpoint.clone(),
        ));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let webhooks = tokio::spawn(convo_webhooks::run(
            feeds.deliveries.clone(),
            feeds.store.clone(),
            feeds.queue.clone(),
            feeds.webhooks.clone(),
            async {
                let _ = stop_rx.await;
            },
        ));
        (republisher, webhooks, stop_tx)
    };
    let mut lease = None;
    let mut running: Option<Running> = None;
    let mut every = tokio::time::interval(std::time::Duration::from_millis(LEASE_RENEW_MS));
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = every.tick() => {}
        }
        match lease.as_mut() {
            None => match directory.take_role("feeds", &instance).await {
                Ok(taken) => {
                    tracing::info!("this instance plays the JSON stream and the webhooks");
                    lease = Some(taken);
                    running = Some(start(&feeds));
                }
                Err(LeaseError::Held { .. }) => {}
                Err(e) => tracing::warn!("cannot take the feeds' lease now: {e}"),
            },
            Some(held) => {
                if let Err(e @ LeaseError::Lost { .. }) = held.renew().await {
                    tracing::error!("{e}");
                }
                if held.valid_for().is_zero() {
                    tracing::error!("the feeds' lease could not be kept; stopping the JSON stream and the webhooks");
                    if let Some((republisher, webhooks, _)) = running.take() {
                        republisher.abort();
                        webhooks.abort(); // attempts under way are made again (same webhook-id)
                    }
                    lease = None;
                }
            }
        }
    }
    if let Some((republisher, mut webhooks, stop_webhooks)) = running {
        republisher.abort();
        let _ = stop_webhooks.send(());
        if tokio::time::timeout(std::time::Duration::from_secs(5), &mut webhooks).await.is_err() {
            webhooks.abort(); // attempts under way are made again at the next start (same webhook-id)
        }
    }
    if let Some(lease) = lease
        && let Err(e) = lease.release().await
    {
        tracing::warn!("could not release the feeds' lease ({e}); it expires by itself");
    }
}

/// `convo serve --roles read-models`: the read models followed from the
/// stream of an engine running elsewhere, served over HTTP, with reads
/// authorized by [`convo_engine::read_door`]. No lease (the engine's is not
/// taken), no appends, no JSON stream and no webhooks (those follow the
/// engine: one copy of each per stream).
async fn serve_read_models(args: ServeArgs, access: convo_engine::access::AccessConfig) -> Result<()> {
    let c = &args.connection;
    let Some(url) = c.nats_url.clone() else {
        bail!(
            "--roles read-models follows the stream of an engine running elsewhere: give its --nats-url \
             (with its own --data-dir; copy the engine's {} there to have unsigned commits refused)",
            convo_store::signing::KEY_FILE
        );
    };
    if args.no_http {
        bail!("--roles read-models serves the read models over HTTP: drop --no-http");
    }
    let store = JetStreamStore::connect(&url, c.store_config()?).await?;
    tracing::info!(
        "connected to nats-server {} at {}; keeping the read models only (commands go to the engine)",
        store.server_version(),
        convo_store::strip_userinfo(&url)
    );
    if store.config().signing.is_none() {
        tracing::warn!(
            "no signing key under {}: commits are read without checking who appended them",
            c.data_dir.display()
        );
    }
    let last = store.last_seq().await?;
    let (ends, end_watcher) = convo_projector::follow::watch_end(store.clone(), READ_MODELS_POLL);
    let (read_models, followers) = follow_read_models(&c.data_dir, &store, last, ends.clone())?;
    let redactions = std::sync::Arc::new(convo_wire::redact::Redactions::default());
    let metrics = std::sync::Arc::new(convo_store::metrics::Metrics::default());
    let lags = spawn_lags(store.clone(), metrics.clone(), Some(read_models.clone()), Vec::new);
    let (local_tx, local_rx) = tokio::sync::mpsc::channel(convo_engine::serve::PARTITION_QUEUE_MAX);
    let gateway = Gateway::start(
        &args,
        local_tx,
        &store,
        convo_gateway::GatewayConfig {
            trusted_proxies: args.trusted_proxy.clone(),
            read_models: Some(read_models),
            risk_margin_secs: args.risk_margin_secs,
            redactions: redactions.clone(),
            webhooks: None,
            metrics: Some(metrics.clone()),
        },
    )
    .await?
    .expect("--no-http refused above");
    let door = convo_engine::read_door::ReadDoorConfig {
        access: std::sync::Arc::new(access),
        bytes_max: args.command_bytes_max,
        redactions: Some(redactions),
    };
    let stats = convo_engine::read_door::serve_reads(
        store.clone(),
        local_rx,
        convo_store::bus::Responder::new(store.client().clone()),
        ends,
        door,
        async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("stopping");
        },
    )
    .await;
    gateway.stop(&c.data_dir).await;
    lags.abort();
    end_watcher.abort();
    for follower in followers {
        follower.abort(); // a batch is written with its checkpoint: an abort loses nothing
    }
    let stats = stats?;
    tracing::info!(
        "answered {} requests; the catalogs held up to stream sequence {} ({} catalog messages skipped)",
        stats.requests,
        stats.position,
        stats.skipped
    );
    Ok(())
}

/// Who may do what: the operator's credential (`operator`), and the
/// identity provider's JWTs when configured.
fn access_config(args: &ServeArgs, operator: &str) -> Result<convo_engine::access::AccessConfig> {
    let jwt = match &args.jwt_key_file {
        Some(file) => {
            let min = convo_engine::access::JWT_KEY_BYTES_MIN;
            let key = convo_store::private::read_secret(file, "the identity provider's HS256 key", min)?;
            let issuer = args.jwt_issuer.as_deref().unwrap_or_default();
            let audience = args.jwt_audience.as_deref().unwrap_or_default();
            let config = convo_engine::access::JwtConfig::new(key, issuer, audience)
                .map_err(|why| anyhow::anyhow!("--jwt-key-file {}: {why}", file.display()))?;
            Some(config)
        }
        None => None,
    };
    Ok(convo_engine::access::AccessConfig {
        operator_sha256: Some(convo_engine::access::sha256(
            operator.strip_prefix(&format!("{}.", convo_engine::access::OPERATOR_PREFIX)).unwrap_or(operator),
        )),
        jwt,
        ..Default::default()
    })
}

/// Every 2 s: the stream's end, and how far behind it each read model and
/// each of `others` (name, checkpoint) is.
fn spawn_lags(
    store: JetStreamStore,
    metrics: std::sync::Arc<convo_store::metrics::Metrics>,
    read_models: Option<convo_gateway::reads::ReadModels>,
    others: impl Fn() -> Vec<(&'static str, u64)> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(2));
        loop {
            every.tick().await;
            let Ok(last) = store.last_seq().await else { continue };
            metrics.set("convo_stream_last_sequence", &[], last as f64);
            let followed = read_models.iter().flat_map(convo_gateway::reads::ReadModels::positions);
            for (projection, at) in others().into_iter().chain(followed) {
                metrics.set("convo_projection_lag", &[("projection", projection)], last.saturating_sub(at) as f64);
            }
        }
    })
}

/// The HTTP gateway while it serves.
struct Gateway {
    /// Where it listens (`http://…`).
    url: String,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Gateway {
    /// Listens on `--http` (unless `--no-http`), writes the URL under the
    /// data dir, and serves with requests going to `engine`.
    async fn start(
        args: &ServeArgs,
        engine: tokio::sync::mpsc::Sender<convo_store::bus::Request>,
        store: &JetStreamStore,
        config: convo_gateway::GatewayConfig,
    ) -> Result<Option<Gateway>> {
        if args.no_http {
            return Ok(None);
        }
        let data_dir = args.connection.data_dir();
        let listener = tokio::net::TcpListener::bind(args.http)
            .await
            .with_context(|| format!("cannot listen on {} for HTTP", args.http))?;
        let url = format!("http://{}", listener.local_addr()?);
        convo_store::launcher::write_private(&data_dir.join(HTTP_URL_FILE), url.as_bytes())?;
        tracing::info!("HTTP gateway on {url} (written to {})", data_dir.join(HTTP_URL_FILE).display());
        if config.read_models.is_some() {
            tracing::info!(
                "the live dashboard: {url}/dashboard (sign in with an API key, or the operator's credential in {})",
                data_dir.join(OPERATOR_KEY_FILE).display()
            );
        }
        let router = convo_gateway::router(engine, store.clone(), config);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(convo_gateway::serve(listener, router, async {
            let _ = stopped.await;
        }));
        Ok(Some(Gateway { url, task, stop }))
    }

    /// Finishes the requests in hand (open event streams are closed after
    /// 5 s: they never end by themselves) and removes the URL file.
    async fn stop(mut self, data_dir: &std::path::Path) {
        let _ = self.stop.send(());
        if tokio::time::timeout(std::time::Duration::from_secs(5), &mut self.task).await.is_err() {
            tracing::info!("closing the HTTP connections still open (event streams)");
            self.task.abort();
        }
        let _ = std::fs::remove_file(data_dir.join(HTTP_URL_FILE));
    }
}

/// How often the read models' followers look for the stream's end.
const READ_MODELS_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Starts a follower for each read model under `<data-dir>/projections`
/// (one sled database, held by this process while it serves).
fn follow_read_models(
    data_dir: &std::path::Path,
    store: &JetStreamStore,
    ready_at: u64,
    ends: tokio::sync::watch::Receiver<u64>,
) -> Result<(convo_gateway::reads::ReadModels, Vec<tokio::task::JoinHandle<()>>)> {
    let dir = data_dir.join("projections");
    let db = convo_projector::open_db(&dir).with_context(|| {
        format!("cannot open the read models in {} (is another `convo` using them?)", dir.display())
    })?;
    let mut models = convo_gateway::reads::ReadModels::new(ready_at);
    let mut tasks = Vec::new();
    let mut follow = |name: &'static str, projection: Box<dyn convo_projector::Projection + Send>| -> Result<()> {
        let projector = convo_projector::Projector::open(db.clone(), name);
        let (followed, task) = convo_projector::follow::spawn(projector, store.clone(), projection, ends.clone())?;
        models.insert(followed);
        tasks.push(task);
        Ok(())
    };
    follow(convo_audit::NAME, Box::new(convo_audit::AuditLog))?;
    follow(convo_reports::NAME, Box::<convo_reports::Reports>::default())?;
    follow(convo_contact_history::NAME, Box::<convo_contact_history::ContactHistory>::default())?;
    follow(convo_live::NAME, Box::new(convo_live::Live))?;
    follow(convo_inbox::NAME, Box::new(convo_inbox::Inbox))?;
    tracing::info!(
        "read models followed from their checkpoints: {}",
        models.positions().iter().map(|(n, at)| format!("{n} at {at}")).collect::<Vec<_>>().join(", ")
    );
    Ok((models, tasks))
}

/// Who holds the lease, as another engine will be told.
fn holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "this machine".into());
    let since = convo_engine::clock::Clock::now(&WallClock).to_rfc3339();
    format!("convo serve, pid {} on {}, since {since}", std::process::id(), host.trim())
}

/// How many times in a row the embedded nats-server is restarted before
/// `convo serve` gives up and exits.
const EMBEDDED_RESTARTS_MAX: u32 = 3;
/// How often the supervisor looks at the embedded server and the lease.
const SUPERVISE_EVERY_MS: u64 = 250;

/// Watches the embedded nats-server (restarting it on its port when it
/// dies) and renews the lease, until told to stop; a reason to stop serving
/// goes out on `reason`. Hands the lease (if still held) and the server back.
/// Keeps the JSON event stream republished (retrying after a failure: the
/// checkpoint says where it stands).
async fn republish_json(
    store: JetStreamStore,
    redactions: std::sync::Arc<convo_wire::redact::Redactions>,
    config: convo_store::json_stream::JsonStreamConfig,
    checkpoint: std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    let name = convo_store::json_stream::stream_name(&store.config().stream);
    let progress = move |at: u64| checkpoint.store(at, std::sync::atomic::Ordering::Relaxed);
    loop {
        match convo_store::json_stream::republish(&store, redactions.clone(), &config, &progress).await {
            Ok(()) => tracing::info!("the JSON stream {name} stopped following the log; resuming"),
            Err(e) => tracing::warn!("the JSON stream {name} could not be republished ({e}); retrying"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

async fn supervise(
    mut embedded: Option<NatsServer>,
    launch: LaunchOptions,
    logins: std::sync::Arc<convo_engine::serve::NatsLogins>,
    reason: tokio::sync::watch::Sender<Option<String>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Option<NatsServer> {
    let mut every = tokio::time::interval(std::time::Duration::from_millis(SUPERVISE_EVERY_MS));
    let mut healthy_since = std::time::Instant::now();
    let mut restarts = 0;
    let mut logins_due = false;
    let fail = |why: String| {
        tracing::error!("{why}");
        let _ = reason.send(Some(why));
    };
    loop {
        tokio::select! {
            _ = &mut stop => return embedded,
            _ = every.tick() => {}
            _ = logins.changed() => logins_due = true,
        }
        // The keys' NATS logins: into the embedded server's config, reloaded,
        // when they changed; a failed attempt is retried on the next tick. (On
        // an operator's own cluster, `convo nats-config` prints them.)
        if let Some(server) = embedded.as_mut().filter(|_| logins_due) {
            let users = logins.all();
            let count = users.len();
            match server.set_users(&launch, users) {
                Ok(changed) => {
                    logins_due = false;
                    if changed {
                        tracing::info!("the embedded nats-server now has {count} key login(s)");
                    }
                }
                Err(e) => tracing::warn!("could not give the embedded nats-server the keys' logins (retrying): {e}"),
            }
        }
        if reason.borrow().is_some() {
            continue; // already stopping; wait to be told
        }
        if let Some(server) = embedded.as_mut()
            && let Some(status) = server.exited()
        {
            if restarts == EMBEDDED_RESTARTS_MAX {
                fail(format!(
                    "the embedded nats-server exited ({status}) {restarts} times; giving up (see {})",
                    launch.data_dir.join("nats-server.log").display()
                ));
                continue;
            }
            restarts += 1;
            tracing::warn!("the embedded nats-server exited ({status}); restarting it on port {}", server.port);
            if let Err(e) = server.restart(&launch) {
                fail(format!("the embedded nats-server exited ({status}) and could not be restarted: {e}"));
                continue;
            }
        }
        // A server up for a while again earns its restarts back.
        if embedded.as_mut().is_some_and(|s| s.exited().is_none()) {
            if healthy_since.elapsed() >= std::time::Duration::from_secs(10) {
                restarts = 0;
            }
        } else {
            healthy_since = std::time::Instant::now();
        }
    }
}

#[derive(Args, Debug)]
#[command(after_help = r#"Examples:
  convo send --operator --account acme '{"id":"a-1","command":{"type":"configure_account","name":"Acme"}}'
  export CONVO_CREDENTIAL=convo-key.acme.wa-gateway.…   # an API key the account issued
  convo send --account acme '{"id":"m-1","command":{"type":"receive_message","conversation":"c1","contact":"k-0001","channel":"wa","text":"Hola"}}'
  echo '{"id":"c-9","command":{"type":"close","conversation":"c1","typification":"venta"}}' | convo send --account acme -

Who acts comes from the credential, never from the body.

Prints the engine's reply: outcome committed (with the events: `convo send`
adds "reply_events": true unless the request has the key), nothing,
duplicate, rejected (the broken rule) or error. Exit code 0, 1 when rejected,
2 on an error."#)]
pub struct SendArgs {
    #[command(flatten)]
    connection: Connection,
    /// The account (tenant) the command belongs to.
    #[arg(long)]
    account: String,
    /// The bearer credential: an API key or a JWT.
    #[arg(long, env = "CONVO_CREDENTIAL", hide_env_values = true)]
    credential: Option<String>,
    /// Act as the platform operator (the credential in <data-dir>/operator.key).
    #[arg(long, conflicts_with = "credential")]
    operator: bool,
    /// The request: {"id", "command"} as JSON (`-` reads standard input).
    request: String,
}

pub async fn send(args: SendArgs) -> Result<std::process::ExitCode> {
    let body = if args.request == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
        text
    } else {
        args.request.clone()
    };
    let parsed = serde_json::from_str::<serde_json::Value>(&body).ok();
    // A person reads the reply: it carries the events unless the request says otherwise.
    let body = match parsed.clone() {
        Some(serde_json::Value::Object(mut map)) if !map.contains_key("reply_events") => {
            map.insert("reply_events".into(), true.into());
            serde_json::Value::Object(map).to_string()
        }
        _ => body,
    };
    let kind = parsed
        .and_then(|v| v["command"]["type"].as_str().map(str::to_owned))
        .filter(|t| t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or_else(|| "unknown".into());
    let subject = format!("{}.{}.cmd.{kind}", args.connection.prefix, args.account);
    let credential = if args.operator {
        let path = args.connection.data_dir.join(OPERATOR_KEY_FILE);
        Some(
            std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .trim()
                .to_owned(),
        )
    } else {
        args.credential.clone()
    };
    let url = args.connection.url().map_err(|_| {
        anyhow::anyhow!(
            "no `convo serve` runs under {dir} to take the command: start it (`convo serve --data-dir {dir}`, or \
             `just serve`), or give the engine's --nats-url",
            dir = args.connection.data_dir.display()
        )
    })?;
    let reply = convo_store::bus::request(&url, &subject, credential.as_deref(), body.into_bytes())
        .await
        .map_err(|e| anyhow::anyhow!("{e} (is `convo serve` running and serving {}?)", args.account))?;
    let value: serde_json::Value = serde_json::from_slice(&reply).context("the engine's reply is not JSON")?;
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(match value["outcome"].as_str() {
        Some("committed" | "nothing" | "duplicate") => std::process::ExitCode::SUCCESS,
        Some("rejected") => std::process::ExitCode::from(1),
        _ => std::process::ExitCode::from(2),
    })
}

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  convo tail                                   # every event from now on... and from the start
  convo tail --account acme --kind closed      # closures of one account
  convo tail --conversation c1 --no-follow     # one conversation's history, then stop

One JSON object per event, as `convo simulate` prints them.")]
pub struct TailArgs {
    #[command(flatten)]
    connection: Connection,
    #[arg(long)]
    account: Option<String>,
    #[arg(long)]
    conversation: Option<String>,
    /// An event type (conversation_closed, message_received, sla_threshold_crossed…: only
    /// those events are printed), or a commit's headline as its subject ends (closed, opened,
    /// message, assigned, transferred, timer, field, label, survey, state, campaign…).
    #[arg(long)]
    kind: Option<String>,
    /// Start at this log sequence (1: the beginning).
    #[arg(long, default_value_t = 1)]
    from: u64,
    /// Stop at the current end of the log instead of following it.
    #[arg(long)]
    no_follow: bool,
    /// How long to wait for a lost NATS server to come back before exiting 2, in seconds.
    #[arg(long, default_value_t = TAIL_RECONNECT_SECS)]
    reconnect_secs: u64,
}

/// How long `convo tail` waits by default for a lost NATS server to come back before exiting 2.
pub const TAIL_RECONNECT_SECS: u64 = 30;

/// What `convo tail --kind` selects.
enum KindFilter {
    Event(String),
    Headline(String),
}

impl KindFilter {
    fn parse(kind: &str) -> Result<Self> {
        if convo_wire::EVENT_TYPES.contains(&kind) {
            return Ok(Self::Event(kind.to_owned()));
        }
        let headlines = convo_wire::CONVERSATION_KINDS.iter().chain(convo_wire::OTHER_KINDS.iter());
        if headlines.clone().any(|k| *k == kind) {
            return Ok(Self::Headline(kind.to_owned()));
        }
        bail!(
            "--kind {kind:?} is neither an event type ({}) nor a commit headline ({})",
            convo_wire::EVENT_TYPES.join(", "),
            headlines.copied().collect::<Vec<_>>().join(", ")
        )
    }
}

pub async fn tail(args: TailArgs) -> Result<()> {
    let kind = args.kind.as_deref().map(KindFilter::parse).transpose()?;
    // Reading to the end works with no server running (its nats-server is started for the read).
    let (store, _server) = if args.no_follow {
        args.connection.open_store().await?
    } else {
        (JetStreamStore::connect(&args.connection.url()?, args.connection.store_config()?).await?, None)
    };
    let mut follow = if args.no_follow { store.read(args.from).await? } else { store.subscribe(args.from).await? };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut check = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut lost_since: Option<std::time::Instant> = None;
    loop {
        let stored = tokio::select! {
            next = follow.next() => next,
            _ = check.tick() => {
                // The client reconnects by itself; a server gone for good must not leave `tail` waiting forever.
                match (store.connected(), lost_since) {
                    (true, Some(_)) => {
                        eprintln!("convo: reconnected to the NATS server");
                        lost_since = None;
                    }
                    (true, None) => {}
                    (false, None) => {
                        eprintln!("convo: lost the NATS server; reconnecting for up to {} s", args.reconnect_secs);
                        lost_since = Some(std::time::Instant::now());
                    }
                    (false, Some(since)) if since.elapsed().as_secs() >= args.reconnect_secs => {
                        bail!("the NATS server has been gone for {} s; stopping", args.reconnect_secs)
                    }
                    _ => {}
                }
                continue;
            }
        };
        let Some(stored) = stored else { break };
        let stored = match stored {
            Ok(s) => s,
            Err(convo_store::StoreError::Decode { seq, subject, error }) => {
                eprintln!("convo: skipping message {seq} on {subject}: {error} (see `convo doctor`)");
                continue;
            }
            Err(e) => bail!(e),
        };
        let c = &stored.commit;
        let wanted = args.account.as_deref().is_none_or(|a| c.account.as_str() == a)
            && match &kind {
                None | Some(KindFilter::Event(_)) => true,
                Some(KindFilter::Headline(k)) => c.kind() == k,
            }
            && args
                .conversation
                .as_deref()
                .is_none_or(|id| matches!(&c.stream, convo_wire::StreamRef::Conversation(x) if x.as_str() == id));
        if wanted {
            for line in c.json_lines() {
                if let Some(KindFilter::Event(k)) = &kind
                    && line["type"].as_str() != Some(k)
                {
                    continue;
                }
                writeln!(out, "{line}")?;
            }
            if !args.no_follow {
                out.flush()?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  convo replay-traffic replay-fixtures/day-of-traffic/input.jsonl --summary
  convo replay-traffic scenario.jsonl --nats-url nats://127.0.0.1:4222 --prefix replay1

Runs the scenario through the real engine and NATS, firing timers in virtual
time, and prints the events as read back from the stream: the same events as
`convo simulate` (which also prints refusals). Without --nats-url it starts a
fresh embedded server in a temporary directory, or under --data-dir (laid out
as `convo serve` lays it out, so `convo serve --data-dir D --prefix P` and
`convo tail` can open the result).")]
pub struct ReplayArgs {
    /// The scenario file.
    scenario: PathBuf,
    #[arg(long, env = "CONVO_NATS_URL")]
    nats_url: Option<String>,
    /// The subject prefix (use a fresh one per replay on a shared server).
    #[arg(long, default_value = "replay")]
    prefix: String,
    /// Keep the embedded server's data here (as `convo serve --data-dir`) instead of a temporary directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print a readable summary after the events.
    #[arg(long)]
    summary: bool,
    /// Do not print the events.
    #[arg(long)]
    no_events: bool,
}

pub async fn replay_traffic(args: ReplayArgs) -> Result<()> {
    let text =
        std::fs::read_to_string(&args.scenario).with_context(|| format!("reading {}", args.scenario.display()))?;
    let inputs = scenario::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", args.scenario.display()))?;
    let temp;
    let mut embedded = None;
    let url = match &args.nats_url {
        Some(url) => url.clone(),
        None => {
            let dir: PathBuf = match &args.data_dir {
                Some(dir) => dir.join("nats"),
                None => {
                    temp = tempfile::tempdir()?;
                    temp.path().to_path_buf()
                }
            };
            let server = NatsServer::start(&LaunchOptions { data_dir: dir, ..Default::default() })?;
            eprintln!("convo: replaying through {} on {}", server.binary.display(), server.public_url());
            let url = server.url();
            embedded = Some(server);
            url
        }
    };
    let store = JetStreamStore::connect(&url, StoreConfig::for_prefix(&args.prefix)).await?;
    if store.last_seq().await? > 0 {
        bail!("the stream under prefix {:?} already holds commits; replay into a fresh prefix", args.prefix);
    }
    // Laid out as `convo serve` lays it out: signed with the data directory's key, and anchored.
    let signing = match &args.data_dir {
        Some(dir) => {
            let (signing, _) = Signing::open_or_create(dir, &store.config().stream, 0)?;
            Some(std::sync::Arc::new(signing))
        }
        None => None,
    };
    let store = match &signing {
        Some(signing) => store.with_signing(signing.clone()),
        None => store,
    };
    let mut engine = Engine::recover(store).await?;
    let started = std::time::Instant::now();
    engine.replay(inputs.into_iter().map(|i| (i.envelope, i.at))).await?;
    if let Some(signing) = &signing {
        signing.flush()?;
    }
    let elapsed = started.elapsed();
    let last = engine.store().last_seq().await?;
    let mut follow = engine.store().read(1).await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut summary = Summary::default();
    while let Some(stored) = follow.next().await {
        let stored = stored?;
        summary.observe(&Record::of_commit(&stored.commit));
        if !args.no_events {
            for line in stored.commit.json_lines() {
                writeln!(out, "{line}")?;
            }
        }
    }
    if args.summary {
        if !args.no_events {
            writeln!(out)?;
        }
        write!(out, "{summary}")?;
        writeln!(out, "through NATS          {last} commits appended and read back in {:.1} s", elapsed.as_secs_f64())?;
    }
    out.flush()?;
    drop(embedded);
    Ok(())
}

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  convo nats-config --nats-url nats://convo-engine:$PW@10.0.0.5:4222 > convo-auth.conf
  # include it from each server's config, set CONVO_ENGINE_PASSWORD in their environment,
  # and reload them (nats-server --signal reload) after issuing or revoking a key

The embedded default (`convo serve` without --nats-url) writes and reloads this
itself. The `mappings` block puts each command on its account's partition
(nats-server's partition()), which the engine instances owning it serve;
every server of the cluster needs it. What it grants: the engine's user may do everything (it alone writes
the stream and calls the JetStream API); each API key's login (an nkey the
engine derived from the key's secret) may publish its account's commands,
subscribe to its own reply inbox and, for an admin's key or an integration
with the `events` read scope, to its account's events. Nothing is anonymous.")]
pub struct NatsConfigArgs {
    #[command(flatten)]
    connection: Connection,
    /// How the engine's password appears in the config (`$VAR`: from the servers' environment).
    #[arg(long, default_value = "$CONVO_ENGINE_PASSWORD")]
    engine_password: String,
    /// The stream's partition count, if no engine has served it yet (otherwise the stream's).
    #[arg(long)]
    partitions: Option<u16>,
}

pub async fn nats_config(args: NatsConfigArgs) -> Result<()> {
    let c = &args.connection;
    let store = JetStreamStore::connect(&c.url()?, c.store_config()?).await?;
    let (machines, last) =
        convo_engine::runtime::recover_machines(&store, 1, convo_engine::machine::MachineConfig::serve()).await?;
    let mut users = Vec::new();
    for machine in &machines {
        for catalog in machine.world().catalogs() {
            users.extend(convo_engine::access::nats_users(&c.prefix, catalog));
        }
    }
    let password = if args.engine_password.starts_with('$') {
        args.engine_password.clone()
    } else {
        format!("{:?}", args.engine_password)
    };
    println!(
        "# nats-server authorization for convo (subject prefix `{}`), from stream {} up to sequence {last}:\n\
         # {} key login(s). Written by `convo nats-config`; regenerate and reload after issuing or revoking a key.",
        c.prefix,
        store.config().stream,
        users.len()
    );
    print!("{}", convo_store::launcher::authorization_block(&password, &users));
    let partitions = store.partitions(args.partitions.map(usize::from), DEFAULT_PARTITIONS).await?;
    print!("{}", convo_store::launcher::mappings_block(&[partition_mapping(&c.prefix, partitions)]));
    print!("{}", convo_store::launcher::DURABILITY_NOTE);
    Ok(())
}
