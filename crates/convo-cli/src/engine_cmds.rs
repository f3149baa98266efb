//! The engine's commands: `serve`, `send`, `tail`, `replay-traffic`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use futures::StreamExt;

use convo_engine::Engine;
use convo_sim::summary::Summary;
use convo_sim::{Record, scenario};
use convo_store::bus::partition_mapping;
use convo_store::launcher::{LaunchOptions, NatsServer};
use convo_store::signing::Signing;
use convo_store::{EventStore, JetStreamStore, StoreConfig};

pub use convo_service::nats::ENGINE_URL_FILE;
pub use convo_service::{HTTP_URL_FILE, OPERATOR_KEY_FILE};

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

    fn storage(&self) -> convo_store::Storage {
        if self.storage == "memory" { convo_store::Storage::Memory } else { convo_store::Storage::File }
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

    /// [`Self::open_store`] with the data keys (derived from the engine's
    /// key under --data-dir), so personal values read in clear — or
    /// `[erased]` once their key is destroyed. Without the engine's key the
    /// store reads them sealed.
    pub async fn open_store_with_keys(&self) -> Result<(JetStreamStore, Option<NatsServer>)> {
        let (store, server) = self.open_store().await?;
        Ok((with_data_keys(store).await?, server))
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

    /// The engine's key for the stream under --data-dir, and the stream's
    /// name; an error saying so when there is none (`what` needs it).
    pub fn engine_signing(&self, what: &str) -> Result<(std::sync::Arc<Signing>, String)> {
        let config = self.store_config()?;
        let Some(signing) = config.signing.clone() else {
            bail!(
                "no engine key for stream {} under {} ({}): {what}; run this with the data directory of the \
                 engine that serves the stream",
                config.stream,
                self.data_dir.display(),
                convo_store::signing::KEY_FILE
            );
        };
        Ok((signing, config.stream))
    }

    /// The store's settings, with the engine's key under --data-dir when
    /// there is one (reads then refuse what the engine did not sign).
    pub fn store_config(&self) -> Result<StoreConfig> {
        let config = StoreConfig {
            replicas: usize::from(self.replicas),
            storage: self.storage(),
            ..StoreConfig::for_prefix(&self.prefix)
        };
        let signing = Signing::open(&self.data_dir, &config.stream)?.map(std::sync::Arc::new);
        Ok(StoreConfig { signing, ..config })
    }
}

/// `store` with the data keys derived from its engine key (as it is without one).
async fn with_data_keys(store: JetStreamStore) -> Result<JetStreamStore> {
    let Some(signing) = store.config().signing.clone() else { return Ok(store) };
    let keys = std::sync::Arc::new(store.keyring_of(&signing).await?);
    Ok(store.with_keys(keys))
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
    #[command(flatten)]
    postgres: PostgresOptions,
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
    let config = args.service_config()?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                tracing::info!("stopping after the commands in hand");
                shutdown.cancel();
            }
        }
    });
    convo_service::Service::run(config, shutdown).await?;
    Ok(())
}

impl ServeArgs {
    /// What the flags say, as the service's settings.
    fn service_config(&self) -> Result<convo_service::ServiceConfig> {
        let c = &self.connection;
        let hours = |h: u32| std::time::Duration::from_secs(u64::from(h) * 3600);
        Ok(convo_service::ServiceConfig {
            prefix: c.prefix.clone(),
            nats_url: c.nats_url.clone(),
            nats_monitor_urls: self.nats_monitor_url.clone(),
            accept_ack_loss: self.accept_ack_loss,
            replicas: usize::from(c.replicas),
            storage: c.storage(),
            partitions: self.partitions.map(usize::from),
            roles: convo_service::Roles {
                engine: self.roles.iter().any(|r| r == "engine"),
                read_models: self.roles.iter().any(|r| r == "read-models"),
            },
            http: (!self.no_http).then_some(self.http),
            instance_id: self.instance_id.clone(),
            snapshot_every: (self.snapshot_every_secs > 0)
                .then(|| std::time::Duration::from_secs(self.snapshot_every_secs)),
            command_bytes_max: self.command_bytes_max,
            risk_margin_secs: self.risk_margin_secs,
            webhooks: convo_service::WebhookSettings {
                allow: self.webhook_allow.clone(),
                retry_schedule: self.webhook_retry_schedule.clone(),
                timeout: std::time::Duration::from_millis(self.webhook_timeout_ms),
                body_bytes_max: self.webhook_body_bytes_max,
                log_retention: hours(self.webhook_log_hours),
            },
            json_stream: convo_store::json_stream::JsonStreamConfig {
                max_age: hours(self.json_stream_max_age_hours),
                max_bytes: self.json_stream_max_bytes,
            },
            trusted_proxies: self.trusted_proxy.clone(),
            jwt: self.jwt_key_file.clone().map(|key_file| convo_service::JwtSettings {
                key_file,
                issuer: self.jwt_issuer.clone().unwrap_or_default(),
                audience: self.jwt_audience.clone().unwrap_or_default(),
            }),
            postgres: self.postgres.target()?,
            ..convo_service::ServiceConfig::embedded(&c.data_dir)
        })
    }
}

/// Where the SQL projection goes (`convo serve` and `convo project postgres`).
#[derive(Args, Debug, Clone)]
pub struct PostgresOptions {
    /// Keep the SQL projection in this PostgreSQL database:
    /// postgres://USER@127.0.0.1:5432/DATABASE (on loopback or a local socket: convo speaks to it
    /// without TLS; no password in the URL).
    #[arg(long, env = "CONVO_POSTGRES_URL")]
    pub postgres: Option<String>,
    /// A file only you can read (0600) holding the PostgreSQL user's password.
    #[arg(long, requires = "postgres")]
    pub postgres_password_file: Option<PathBuf>,
    /// The schema the SQL projection keeps its tables and views in.
    #[arg(long, default_value = convo_sql::SCHEMA_DEFAULT)]
    pub postgres_schema: String,
    /// Commits the SQL projection writes per transaction while it follows the stream.
    #[arg(long, default_value_t = convo_sql::BATCH_COMMITS_MAX,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=convo_sql::REBUILD_BATCH_COMMITS_MAX as u64))]
    pub postgres_batch_commits: usize,
}

impl PostgresOptions {
    /// The target, checked (a bad setting is refused, naming the fix), if --postgres names one.
    pub fn target(&self) -> Result<Option<convo_sql::Target>> {
        let Some(url) = &self.postgres else { return Ok(None) };
        let target = convo_sql::Target::new(url, self.postgres_password_file.as_deref(), &self.postgres_schema)?;
        Ok(Some(target.with_batch_commits(self.postgres_batch_commits)))
    }
}

fn parse_instance_id(text: &str) -> std::result::Result<String, String> {
    convo_domain::ids::check_id(text).map(|()| text.to_owned()).map_err(|e| e.to_string())
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
    // Personal values read in clear with the engine's key under --data-dir (`[erased]` once erased).
    let (store, _server) = if args.no_follow {
        args.connection.open_store_with_keys().await?
    } else {
        let store = JetStreamStore::connect(&args.connection.url()?, args.connection.store_config()?).await?;
        (with_data_keys(store).await?, None)
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
  convo replay-traffic replay-fixtures/content-retention/input.jsonl --until 2026-04-02T14:10:00Z

Runs the scenario through the real engine and NATS, firing timers in virtual
time, and prints the events as read back from the stream: the same events as
`convo simulate` (which also prints refusals), except that the personal data
the scenario erased (erase_contact, a content retention that passed) reads
[erased]: personal values are sealed with data keys, as `convo serve` seals
them, and the erased ones' keys are destroyed at the end. Without --nats-url it starts a
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
    /// Stop at this instant (RFC 3339), as `convo simulate --until`: inputs
    /// and timers after it are not run.
    #[arg(long, value_parser = crate::parse_instant)]
    until: Option<convo_domain::Timestamp>,
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
    // Sealed as `convo serve` seals: with the data directory's keys, else with keys this run keeps in memory.
    let store = match &signing {
        Some(signing) => with_data_keys(store.with_signing(signing.clone())).await?,
        None => {
            let mut master = [0u8; 32];
            getrandom::getrandom(&mut master).map_err(|e| anyhow::anyhow!("no randomness for the data keys: {e}"))?;
            store.with_keys(std::sync::Arc::new(convo_store::keys::Keyring::in_memory(master)))
        }
    };
    let mut engine = Engine::recover(store).await?;
    let started = std::time::Instant::now();
    let after = args.until.map_or(0, |until| inputs.iter().filter(|i| i.at > until).count());
    engine.replay_until(inputs.into_iter().map(|i| (i.envelope, i.at)), args.until).await?;
    if after > 0 {
        eprintln!("convo: {after} input(s) after --until were not run");
    }
    if let Some(signing) = &signing {
        signing.flush()?;
    }
    // Erasures and content expiries are carried out as the running engine's eraser does: their keys go.
    if let Some(keys) = engine.store().keys() {
        convo_store::erasure::destroy_recorded_keys(engine.store(), keys).await?;
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
  convo nats-config --partitions 3 > convo-auth.conf      # a new cluster: no server needed yet
  convo nats-config --nats-url nats://convo-engine:$PW@10.0.0.5:4222 > convo-auth.conf
  # include it from each server's config, set CONVO_ENGINE_PASSWORD in their environment,
  # and reload them (nats-server --signal reload) after issuing or revoking a key

Without a server to read (a cluster not started yet, or a stream no engine has
made), it prints the bootstrap block: the engine's login, no key logins yet,
and the mapping for --partitions (default 2). It creates nothing: the first
`convo serve` makes the stream (with its --replicas) and fixes the count.

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
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=convo_engine::serve::PARTITIONS_MAX as i64))]
    partitions: Option<u16>,
}

pub async fn nats_config(args: NatsConfigArgs) -> Result<()> {
    let c = &args.connection;
    let asked = args.partitions.map(usize::from);
    // A stream that exists is read; nothing is created (no stream, no partition count).
    let store = match c.url() {
        Ok(url) => JetStreamStore::existing(&url, c.store_config()?).await?,
        Err(_) => None,
    };
    let (users, partitions, from) = match &store {
        Some(store) => {
            let (machines, last) =
                convo_engine::runtime::recover_machines(store, 1, convo_engine::machine::MachineConfig::serve())
                    .await?;
            let mut users = Vec::new();
            for machine in &machines {
                for catalog in machine.world().catalogs() {
                    users.extend(convo_engine::access::nats_users(&c.prefix, catalog));
                }
            }
            let partitions = match (store.recorded_partitions().await?, asked) {
                (Some(count), Some(asked)) if asked != count => bail!(
                    "stream {} has {count} partitions (fixed when the first engine served it); drop --partitions or pass {count}",
                    store.config().stream
                ),
                (Some(count), _) => count,
                (None, asked) => asked.unwrap_or(convo_service::DEFAULT_PARTITIONS),
            };
            (users, partitions, format!("from stream {} up to sequence {last}", store.config().stream))
        }
        None => (
            Vec::new(),
            asked.unwrap_or(convo_service::DEFAULT_PARTITIONS),
            format!("bootstrap: no stream {} yet", c.store_config()?.stream),
        ),
    };
    let password = if args.engine_password.starts_with('$') {
        args.engine_password.clone()
    } else {
        format!("{:?}", args.engine_password)
    };
    println!(
        "# nats-server authorization for convo (subject prefix `{}`), {from}:\n\
         # {} key login(s). Written by `convo nats-config`; regenerate and reload after issuing or revoking a key.",
        c.prefix,
        users.len()
    );
    print!("{}", convo_store::launcher::authorization_block(&password, &users));
    print!("{}", convo_store::launcher::mappings_block(&[partition_mapping(&c.prefix, partitions)]));
    print!("{}", convo_store::launcher::DURABILITY_NOTE);
    Ok(())
}
