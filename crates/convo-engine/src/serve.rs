//! The service: the partition machine driven by the wall clock, NATS
//! requests and a pipelined event store. A dispatcher hands each request to
//! its account's partition; each partition is one task that turns its
//! [`Machine`]'s outputs into appends, loads and replies, with many appends
//! in flight at once (the machine bounds them). Stopping takes no new
//! request, finishes every command already taken, answers them, and returns.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, watch};

use std::collections::HashMap;

use convo_domain::command::engine_command_id;
use convo_domain::config::{DENIED_ACTOR, DeniedAttempt, ReadRecord};
use convo_domain::{AccountId, Actor, Catalog, Command, CommandEnvelope, Timestamp};
use convo_store::bus::{CommandBus, Request, Responder};
use convo_store::launcher::NatsUser;
use convo_store::{EventStore, LogItem, StoreError};
use convo_wire::{Commit, StreamRef};

use crate::access::AccessConfig;
use crate::clock::Clock;
use crate::group_commit::{Append, Appended, GroupCommit, GroupCommitConfig, Write};
use crate::intake::{Admitted, Credential, admit, authorized, result_reply};
use crate::machine::{IoId, Machine, MachineConfig, MachineStats, Origin, Outcome, Output};
use crate::runtime::{EngineError, Partition, recover_machines};

/// Requests waiting for one partition; beyond, a request is refused as `overloaded`.
pub const PARTITION_QUEUE_MAX: usize = 1024;
/// The most partitions one instance runs.
pub const PARTITIONS_MAX: usize = 256;
/// The longest the loop sleeps when no timer is due (it also wakes for requests).
pub const IDLE_WAKE_MS: u64 = 1_000;
pub use crate::machine::EVICT_CLOSED_AFTER_SECS;

/// Replies counted in the partition loop and handed to the metrics with the
/// gauges (every [`GAUGES_EVERY_MS`], and when the partition stops), not one
/// lock of the registry per reply.
#[derive(Debug, Default)]
struct Tally {
    commands: HashMap<(&'static str, &'static str), u64>,
    rejections: HashMap<&'static str, u64>,
}

/// How often a partition hands its gauges and counts to the metrics.
pub const GAUGES_EVERY_MS: u64 = 250;

impl Tally {
    fn flush(&mut self, metrics: &convo_store::metrics::Metrics) {
        for ((kind, outcome), n) in self.commands.drain() {
            metrics.inc("convo_commands_total", &[("type", kind), ("outcome", outcome)], n);
        }
        for (code, n) in self.rejections.drain() {
            metrics.inc("convo_rejections_total", &[("code", code)], n);
        }
    }
}

/// One log line per command that was not executed as asked (a rejection:
/// info; an error: warn), with its code, account, command id and type; and
/// the count of every reply.
fn note_reply(tally: &mut Tally, envelope: &convo_domain::CommandEnvelope, result: &Result<Outcome, crate::Failure>) {
    let (account, command, kind) = (&envelope.account, &envelope.id, envelope.command.type_name());
    let (outcome, code) = crate::intake::classify(result);
    match (result, code) {
        (Ok(Outcome::Refused(why)), Some("unrecordable")) => {
            tracing::warn!(%account, %command, kind, code = "unrecordable", "not recordable: {why}")
        }
        // A contact book's rejection may quote a handle or an attribute value
        // (personal data): the log keeps its code only; the caller has the reason.
        (Ok(Outcome::Refused(_)), Some(code))
            if matches!(envelope.command.target(), convo_domain::command::Target::Contacts) =>
        {
            tracing::info!(%account, %command, kind, code, "rejected")
        }
        (Ok(Outcome::Refused(why)), Some(code)) => tracing::info!(%account, %command, kind, code, "rejected: {why}"),
        (Err(failure), Some(code)) => tracing::warn!(%account, %command, kind, code, "not executed: {failure}"),
        _ => tracing::debug!(%account, %command, kind, outcome, "executed"),
    }
    if let (Ok(_), Some(code)) = (result, code) {
        *tally.rejections.entry(code).or_default() += 1;
    }
    *tally.commands.entry((kind, outcome)).or_default() += 1;
}

/// Tells whoever follows the catalogs (the NATS logins, the redaction rules) of `catalog` as applied now.
pub(crate) fn catalog_applied(config: &ServeConfig, catalog: &convo_domain::Catalog) {
    if let Some(logins) = &config.nats_logins {
        logins.update(catalog);
    }
    if let Some(redactions) = &config.redactions {
        redactions.set(&catalog.account, &catalog.settings.regex_rules);
    }
}

/// How many refused requests of one account are recorded, one by one, per window.
pub const DENIED_SAMPLES_PER_WINDOW: u32 = 20;
/// The window of [`DENIED_SAMPLES_PER_WINDOW`]; refusals beyond it are counted
/// and the count recorded with the next sample (or when the window ends).
pub const DENIED_WINDOW_MS: u64 = 60_000;

/// The service's settings.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Who may do what: the operator's credential, the identity provider.
    pub access: Arc<AccessConfig>,
    /// The largest command request accepted, in bytes.
    pub command_bytes_max: usize,
    /// How many partitions share the accounts (each a task with its own machine).
    pub partitions: usize,
    /// The partition machine's limits.
    pub machine: MachineConfig,
    /// Where the partitions keep the keys' NATS logins up to date (for
    /// whoever configures the NATS server); `None`: not kept.
    pub nats_logins: Option<Arc<NatsLogins>>,
    /// Where the partitions keep every account's redaction rules current
    /// (for the JSON feeds and webhooks); `None`: not kept.
    pub redactions: Option<Arc<convo_wire::redact::Redactions>>,
    /// Where the partitions count commands, rejections, append latency and
    /// their gauges; `None`: not measured.
    pub metrics: Option<Arc<convo_store::metrics::Metrics>>,
    /// The server flushes to disk lazily (acknowledged commits may be lost
    /// on a power failure): appends go one by one, pipelined — without an
    /// fsync per append to share, an atomic batch costs the server more than
    /// the appends it groups. Off (the durable default): group commit.
    pub lazy_fsync: bool,
}

/// The NATS logins of every account's live keys, as the partitions last
/// computed them (after recovery, and after each commit to a catalog).
/// Whoever configures the NATS server waits on [`NatsLogins::changed`] and
/// reads [`NatsLogins::all`]; changes coalesce, so nothing queues up.
#[derive(Debug, Default)]
pub struct NatsLogins {
    prefix: String,
    by_account: std::sync::Mutex<std::collections::BTreeMap<AccountId, Vec<NatsUser>>>,
    changed: tokio::sync::Notify,
}

impl NatsLogins {
    /// Logins for the intake and event subjects under `prefix`.
    pub fn new(prefix: &str) -> Arc<Self> {
        Arc::new(Self { prefix: prefix.to_owned(), ..Self::default() })
    }

    /// Recomputes one account's logins; wakes the waiter if they changed.
    pub fn update(&self, catalog: &Catalog) {
        let users = crate::access::nats_users(&self.prefix, catalog);
        let mut by_account = self.by_account.lock().expect("not poisoned");
        if by_account.get(&catalog.account) != Some(&users) {
            by_account.insert(catalog.account.clone(), users);
            self.changed.notify_one();
        }
    }

    /// Every login, across accounts.
    pub fn all(&self) -> Vec<NatsUser> {
        self.by_account.lock().expect("not poisoned").values().flatten().cloned().collect()
    }

    /// Completes when the logins changed since the last call.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        let machine = MachineConfig {
            evict_closed_after_ms: Some(EVICT_CLOSED_AFTER_SECS as i64 * 1000),
            ..MachineConfig::serve()
        };
        Self {
            access: Arc::new(AccessConfig::default()),
            command_bytes_max: crate::intake::COMMAND_BYTES_MAX,
            partitions: 1,
            machine,
            nats_logins: None,
            redactions: None,
            metrics: None,
            lazy_fsync: false,
        }
    }
}

/// What one partition did.
pub type ServeStats = MachineStats;

/// Serves until `shutdown` completes or the bus closes: recovers one machine
/// per partition from the log, hands each request to the partition of its
/// account, and returns each partition's stats once all have drained.
pub async fn serve<S: EventStore + Clone + 'static>(
    store: S,
    bus: &mut CommandBus,
    local: mpsc::Receiver<Request>,
    clock: Arc<dyn Clock>,
    config: ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<Vec<ServeStats>, EngineError> {
    let count = config.partitions.clamp(1, PARTITIONS_MAX);
    let responder = bus.responder();
    let (machines, _) = recover_machines(&store, count, config.machine).await?;
    for machine in &machines {
        machine.world().catalogs().for_each(|catalog| catalog_applied(&config, catalog));
    }
    if let Some(redactions) = &config.redactions {
        redactions.mark_ready(); // every account's rules are known: the feeds may go
    }
    let mut queues = Vec::with_capacity(count);
    let mut tasks = Vec::with_capacity(count);
    let (_never, halt) = watch::channel(false); // every partition is this instance's until it stops
    for (partition, machine) in machines.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel(PARTITION_QUEUE_MAX);
        queues.push(tx);
        let (responder, clock, store, config) = (responder.clone(), clock.clone(), store.clone(), config.clone());
        let halt = halt.clone();
        tasks.push(tokio::spawn(async move {
            run_partition(partition, machine, store, rx, &responder, clock.as_ref(), &config, halt, None).await.stats
        }));
    }
    dispatch(bus, local, &responder, &queues, shutdown).await;
    drop(queues); // the partitions drain what they hold, then stop
    let mut stats = Vec::with_capacity(count);
    for task in tasks {
        stats.push(task.await.unwrap_or_default());
    }
    Ok(stats)
}

/// Takes requests off the bus and the in-process front doors (`local`: the
/// HTTP gateway) and queues each for its account's partition.
async fn dispatch(
    bus: &mut CommandBus,
    mut local: mpsc::Receiver<Request>,
    responder: &Responder,
    queues: &[mpsc::Sender<Request>],
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut local_open = true;
    loop {
        let request = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            request = bus.next() => request,
            request = local.recv(), if local_open => match request {
                Some(request) => Some(request),
                None => {
                    local_open = false;
                    continue;
                }
            },
        };
        let Some(request) = request else { break };
        let index = AccountId::new(&request.account).map_or(0, |a| Partition::of(&a, queues.len()));
        if let Err(mpsc::error::TrySendError::Full(request) | mpsc::error::TrySendError::Closed(request)) =
            queues[index].try_send(request)
        {
            let body =
                crate::intake::overloaded(&format!("{PARTITION_QUEUE_MAX} requests already wait for this partition"));
            let _ = responder.respond(&request, serde_json::to_vec(&body).unwrap_or_default()).await;
        }
    }
    bus.close().await;
}

/// What the store answered.
enum IoDone {
    Batch(Vec<Append>, Result<Vec<u64>, StoreError>),
    Single(Append, Result<u64, StoreError>),
    Loaded(IoId, Result<Vec<LogItem>, StoreError>),
}

type Pending = Pin<Box<dyn Future<Output = IoDone> + Send>>;

enum Wake {
    Io(IoDone),
    Request(Option<Request>),
    Clock,
}

/// Until when an instance's hold on a partition is confirmed (the ownership
/// machine's `confirmed_until`, on the driver's clock): an instance paused
/// past it, or cut off, stops answering refusals until a renewal confirms it.
#[derive(Debug)]
pub struct Hold {
    started: std::time::Instant,
    until_ms: std::sync::atomic::AtomicU64,
}

impl Hold {
    /// A hold on the clock that started at `started` (not confirmed yet).
    pub fn new(started: std::time::Instant) -> Self {
        Self { started, until_ms: std::sync::atomic::AtomicU64::new(0) }
    }

    /// Confirmed until `until_ms` on that clock.
    pub fn set(&self, until_ms: u64) {
        self.until_ms.store(until_ms, std::sync::atomic::Ordering::Release);
    }

    /// Whether it is confirmed now.
    pub fn confirmed(&self) -> bool {
        (self.started.elapsed().as_millis() as u64) < self.until_ms.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// One partition's loop: its requests, its timers, its routing, until its
/// queue closes and everything taken is done.
#[allow(clippy::too_many_arguments)] // the partition's inputs, each its own channel or handle
pub async fn run_partition<S: EventStore + Clone + 'static>(
    partition: usize,
    mut machine: Machine,
    store: S,
    mut requests: mpsc::Receiver<Request>,
    responder: &Responder,
    clock: &dyn Clock,
    config: &ServeConfig,
    mut halt: watch::Receiver<bool>,
    hold: Option<&Hold>,
) -> PartitionEnd {
    let mut deposed = None;
    let mut io: FuturesUnordered<Pending> = FuturesUnordered::new();
    // Appends decided while earlier ones are on their way go together (DESIGN.md, "Durable group commit").
    let batch_max = if config.lazy_fsync { 1 } else { store.batch_commits_max() };
    let mut group = GroupCommit::new(GroupCommitConfig::serve(batch_max, store.serial_writes()));
    // Requests taken and not answered yet (bounded by the machine's limits),
    // with the credential of a key being issued.
    let mut waiting: HashMap<u64, (Request, Option<Credential>, bool)> = HashMap::new();
    let mut denied = DeniedLog::default();
    let mut next_token = 0u64;
    let mut invalid = 0u64;
    let mut stopping = false;
    let mut last_timeout = Timestamp::from_millis(i64::MIN);
    let mut reported = 0;
    let partition_label = partition.to_string();
    let mut gauges_at = std::time::Instant::now() - Duration::from_secs(1);
    let mut tally = Tally::default();
    loop {
        if *halt.borrow_and_update() || deposed.is_some() {
            // Another instance decides now (or may): stop at once (what is in
            // hand is neither answered nor appended; clients retry with its owner).
            break;
        }
        if let Some(metrics) = &config.metrics
            && gauges_at.elapsed() >= Duration::from_millis(GAUGES_EVERY_MS)
        {
            tally.flush(metrics);
            let p = [("partition", partition_label.as_str())];
            metrics.set("convo_partition_queue_depth", &p, requests.len() as f64);
            metrics.set("convo_appends_in_flight", &p, io.len() as f64);
            metrics.set("convo_open_conversations", &p, machine.world().open_conversations() as f64);
            metrics.set("convo_armed_timers", &p, machine.world().armed_timers() as f64);
            metrics.set_counter("convo_conflicts_total", &p, machine.stats().conflicts);
            let batched = group.stats();
            metrics.set_counter("convo_batches_total", &p, batched.batches);
            metrics.set_counter("convo_batched_commits_total", &p, batched.batched_commits);
            metrics.set_counter("convo_batch_fallbacks_total", &p, batched.fallbacks);
            gauges_at = std::time::Instant::now();
        }
        // Messages of the log that cannot be applied are skipped and said once each.
        for skipped in &machine.skipped()[reported..] {
            tracing::warn!(
                seq = skipped.seq,
                subject = %skipped.subject,
                reason = %skipped.reason,
                "skipped message {} on {}: {} (`convo doctor` lists them and says how to purge them)",
                skipped.seq,
                skipped.subject,
                skipped.reason
            );
        }
        reported = machine.skipped().len();
        let now = clock.now();
        let due = machine.poll_timeout().is_some_and(|d| d <= now);
        if !stopping && (due || now.millis_since(last_timeout) >= IDLE_WAKE_MS) {
            machine.handle_timeout(now);
            last_timeout = now;
            for envelope in denied.flush(now) {
                machine.handle_request(0, envelope, now);
            }
        }
        // Commands of clients refused by a rule of access (role, network, assignment): recorded as the door's are.
        let mut forbidden = Vec::new();
        while let Some(output) = machine.poll() {
            if let Output::Reply { envelope, result, .. } = &output {
                note_reply(&mut tally, envelope, result);
            }
            match output {
                Output::Append { io, commit, expected } => group.push(Append { io, commit, expected }),
                Output::Load { io: id, account, stream } => {
                    let store = store.clone();
                    io.push(Box::pin(async move { IoDone::Loaded(id, store.load(&account, &stream).await) }));
                }
                Output::Reply { origin: Origin::Request(token), result, envelope, .. } => {
                    if let Some((request, credential, events)) = waiting.remove(&token) {
                        let (outcome, _) = crate::intake::classify(&result);
                        count_request(config.metrics.as_deref(), &request, outcome);
                        if let Ok(Outcome::Refused(crate::Refusal::Rejected(r))) = &result
                            && let Some(rule) = r.rule()
                        {
                            let attempt = denied_attempt(&request, actor_name(&envelope.actor), rule, &r.to_string());
                            forbidden.push((envelope.account.clone(), DoorRecord::Denied(attempt)));
                        }
                        // An answer that writes nothing, decided while this instance's hold on the
                        // partition is not confirmed (resumed from a pause), may rest on a stale state.
                        if matches!(result, Ok(Outcome::Refused(_) | Outcome::Nothing))
                            && hold.is_some_and(|h| !h.confirmed())
                        {
                            let why = format!(
                                "this instance's hold on partition {partition} is not confirmed now; retry with the same id"
                            );
                            send(responder, &request, crate::intake::unavailable(&why).to_string().into_bytes()).await;
                            continue;
                        }
                        // A key's credential is shown this once, never stored.
                        let reply = result_reply(&result, events, credential);
                        send(responder, &request, reply.to_bytes()).await;
                    }
                }
                Output::Reply { result: Err(_), .. } => {} // logged above
                Output::Reply { .. } => {}
            }
        }
        while let Some(write) = group.poll() {
            let store = store.clone();
            let metrics = config.metrics.clone();
            io.push(Box::pin(async move {
                let started = std::time::Instant::now();
                let done = match write {
                    Write::Batch(appends) => {
                        let batch: Vec<(&Commit, u64)> = appends.iter().map(|a| (&a.commit, a.expected)).collect();
                        let result = store.append_batch(&batch).await;
                        IoDone::Batch(appends, result)
                    }
                    Write::Single(append) => {
                        let result = store.append(&append.commit, append.expected).await;
                        IoDone::Single(append, result)
                    }
                };
                if let Some(metrics) = metrics {
                    metrics.observe("convo_append_seconds", &[], started.elapsed());
                }
                done
            }));
        }
        if !forbidden.is_empty() {
            let now = clock.now();
            for (account, attempt) in forbidden {
                if let Some(envelope) = denied.note(account, attempt, now) {
                    machine.handle_request(0, envelope, now);
                }
            }
            continue; // the records are outputs to poll
        }
        if stopping && io.is_empty() && group.is_idle() && machine.is_idle() {
            break;
        }
        let room = machine.wants_requests();
        // What is ready now is taken without arming a sleep (under load, most turns).
        let ready = if io.is_empty() { None } else { io.next().now_or_never().flatten() };
        let wake = if let Some(done) = ready {
            Wake::Io(done)
        } else if let Some(request) = (!stopping && room).then(|| requests.try_recv().ok()).flatten() {
            Wake::Request(Some(request))
        } else {
            let wait = machine.poll_timeout().map_or(IDLE_WAKE_MS, |d| d.millis_since(clock.now()).min(IDLE_WAKE_MS));
            tokio::select! {
                biased;
                Some(done) = io.next(), if !io.is_empty() => Wake::Io(done),
                request = requests.recv(), if !stopping && room => Wake::Request(request),
                _ = tokio::time::sleep(Duration::from_millis(wait.max(1))), if !stopping => Wake::Clock,
                _ = halt.changed() => Wake::Clock,
            }
        };
        match wake {
            Wake::Io(IoDone::Batch(appends, result)) => {
                for appended in group.handle_batch(appends, result) {
                    deliver_appended(&mut machine, appended, &mut deposed, config);
                }
            }
            Wake::Io(IoDone::Single(append, result)) => {
                let appended = group.handle_single(append, result);
                deliver_appended(&mut machine, appended, &mut deposed, config);
            }
            Wake::Io(IoDone::Loaded(id, result)) => machine.handle_loaded(id, result),
            Wake::Request(None) => stopping = true,
            Wake::Request(Some(mut request)) => {
                let now = clock.now();
                let account = AccountId::new(&request.account).ok();
                let catalog = account.as_ref().and_then(|a| machine.world().catalog(a)).filter(|c| c.seq > 0);
                let admitted = admit(&config.access, catalog, &request, config.command_bytes_max);
                match admitted {
                    Err(refused) => {
                        invalid += 1;
                        refused.log(&request, "refused at the door");
                        count_refused(config.metrics.as_deref(), &request, &refused);
                        if !refused.answer {
                            request.drop_reply(); // not the sender's own inbox: nothing goes there
                        }
                        if let (Some(account), Some(refusal)) = (account.filter(|_| catalog.is_some()), refused.denied)
                        {
                            let (why, who) = *refusal;
                            let attempt = denied_attempt(&request, who, why.rule(), &why.to_string());
                            if let Some(envelope) = denied.note(account, DoorRecord::Denied(attempt), now) {
                                machine.handle_request(0, envelope, now);
                            }
                        }
                        answer(responder, &request, &refused.reply).await;
                    }
                    Ok(Admitted::Read { principal, scope, unredacted }) => {
                        count_request(config.metrics.as_deref(), &request, "authorized");
                        if unredacted && let Some(account) = account {
                            let read = ReadRecord {
                                principal: principal.name(),
                                ip: request.ip.map(|ip| ip.to_string()),
                                read: bounded(&request.kind, 64),
                                unrecorded_before: 0,
                            };
                            if let Some(envelope) = denied.note(account, DoorRecord::Read(read), now) {
                                machine.handle_request(0, envelope, now);
                            }
                        }
                        answer(responder, &request, &authorized(&principal, &scope, unredacted)).await;
                    }
                    Ok(Admitted::Command { envelope, credential, reply_events }) => {
                        next_token += 1;
                        waiting.insert(next_token, (request, credential, reply_events));
                        machine.handle_request(next_token, *envelope, now);
                    }
                }
            }
            Wake::Clock => {}
        }
    }
    if let Some(current) = deposed {
        tracing::info!(
            partition,
            "partition {partition} is served by another instance now (its fence is at {current}); stopped deciding for it"
        );
    }
    if let Some(metrics) = &config.metrics {
        tally.flush(metrics);
    }
    // Every request taken counts, those refused before the machine saw them too.
    let batched = group.stats();
    tracing::debug!(
        partition,
        "group commit: {} batches of {} commits (largest {}), {} single appends, {} batches appended again one by one",
        batched.batches,
        batched.batched_commits,
        batched.largest_batch,
        batched.singles,
        batched.fallbacks
    );
    let stats = ServeStats {
        requests: machine.stats().requests + invalid,
        batches: batched.batches,
        batched_commits: batched.batched_commits,
        ..machine.stats()
    };
    PartitionEnd { stats, deposed: deposed.is_some() }
}

/// Hands the machine what came of one append (a deposed writer stops the partition).
fn deliver_appended(machine: &mut Machine, appended: Appended, deposed: &mut Option<u64>, config: &ServeConfig) {
    let Appended { io, commit, result } = appended;
    if let Err(StoreError::Deposed { current, .. }) = &result {
        *deposed = Some(*current);
    }
    let catalog = (result.is_ok() && commit.stream == StreamRef::Catalog).then(|| commit.account.clone());
    machine.handle_appended(io, commit, result);
    if let Some(account) = catalog
        && let Some(catalog) = machine.world().catalog(&account)
    {
        catalog_applied(config, catalog);
    }
}

/// How a partition's loop ended.
#[derive(Debug, Clone, Copy, Default)]
pub struct PartitionEnd {
    pub stats: ServeStats,
    /// An append found the partition's fence moved: another instance owns it.
    pub deposed: bool,
}

/// A refused request, as the audit log keeps it (every string bounded).
fn denied_attempt(request: &Request, principal: String, rule: &str, message: &str) -> DeniedAttempt {
    DeniedAttempt {
        principal,
        ip: request.ip.map(|ip| ip.to_string()),
        action: bounded(&request.kind, 64),
        rule: rule.to_owned(),
        message: bounded(message, 500),
        unrecorded_before: 0,
    }
}

/// How a request's sender is named in a denied attempt (as [`crate::access::Principal::name`] names it).
fn actor_name(actor: &Actor) -> String {
    match actor {
        Actor::User { id, .. } => format!("user:{id}"),
        Actor::Integration { id, .. } => format!("integration:{id}"),
        Actor::Operator { .. } => "operator".into(),
        Actor::Contact(id) => format!("contact:{id}"),
        Actor::System(name) => format!("system:{name}"),
    }
}

/// Counts a client's request by transport, kind and outcome.
pub(crate) fn count_request(metrics: Option<&convo_store::metrics::Metrics>, request: &Request, outcome: &str) {
    if let Some(metrics) = metrics {
        let kind = if request.read { "read" } else { "command" };
        metrics.inc(
            "convo_requests_total",
            &[("transport", request.transport()), ("kind", kind), ("outcome", outcome)],
            1,
        );
    }
}

/// Counts a request refused at the door: as a request (`refused`, or
/// `invalid` when it was not a request at all) and by the rule that refused it.
pub(crate) fn count_refused(
    metrics: Option<&convo_store::metrics::Metrics>,
    request: &Request,
    refused: &crate::intake::Refused,
) {
    count_request(metrics, request, if refused.denied.is_some() { "refused" } else { "invalid" });
    if let Some(metrics) = metrics {
        metrics.inc("convo_door_refusals_total", &[("rule", refused.rule())], 1);
    }
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn bounded(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// What the front door records in an account's audit log: a refusal, or a
/// read served unmasked.
#[derive(Debug, Clone)]
enum DoorRecord {
    Denied(DeniedAttempt),
    Read(ReadRecord),
}

impl DoorRecord {
    /// The same record, saying how many of its kind went unrecorded before it.
    fn with_unrecorded(self, unrecorded_before: u64) -> Self {
        match self {
            Self::Denied(d) => Self::Denied(DeniedAttempt { unrecorded_before, ..d }),
            Self::Read(r) => Self::Read(ReadRecord { unrecorded_before, ..r }),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Denied(_) => "denied",
            Self::Read(_) => "read",
        }
    }

    fn command(self) -> Command {
        match self {
            Self::Denied(d) => Command::RecordDenied(d),
            Self::Read(r) => Command::RecordRead(r),
        }
    }
}

/// Which of the door's records are written: per account and kind (refused,
/// read unmasked), the first [`DENIED_SAMPLES_PER_WINDOW`] of each window
/// one by one; the rest counted, and the count recorded with the next sample
/// or when the window ends. So a flood of refused requests grows the log by
/// a bounded amount per minute.
#[derive(Debug, Default)]
struct DeniedLog {
    windows: HashMap<(AccountId, &'static str), DeniedWindow>,
    recorded: u64,
}

#[derive(Debug)]
struct DeniedWindow {
    started: Timestamp,
    recorded: u32,
    unrecorded: u64,
    last: DoorRecord,
}

impl DeniedLog {
    /// Notes one record; returns the command that writes it when it is sampled.
    fn note(&mut self, account: AccountId, record: DoorRecord, now: Timestamp) -> Option<CommandEnvelope> {
        let window = self.windows.entry((account.clone(), record.kind())).or_insert_with(|| DeniedWindow {
            started: now,
            recorded: 0,
            unrecorded: 0,
            last: record.clone(),
        });
        if now.millis_since(window.started) >= DENIED_WINDOW_MS {
            window.started = now;
            window.recorded = 0;
        }
        if window.recorded >= DENIED_SAMPLES_PER_WINDOW {
            window.unrecorded += 1;
            window.last = record;
            return None;
        }
        window.recorded += 1;
        let record = record.with_unrecorded(std::mem::take(&mut window.unrecorded));
        Some(self.record(account, record, now))
    }

    /// Records the count of each ended window that left records unwritten.
    fn flush(&mut self, now: Timestamp) -> Vec<CommandEnvelope> {
        let ended: Vec<(AccountId, &'static str)> = self
            .windows
            .iter()
            .filter(|(_, w)| now.millis_since(w.started) >= DENIED_WINDOW_MS)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for key in ended {
            let Some(window) = self.windows.remove(&key) else { continue };
            if window.unrecorded > 0 {
                out.push(self.record(key.0, window.last.with_unrecorded(window.unrecorded), now));
            }
        }
        out
    }

    fn record(&mut self, account: AccountId, record: DoorRecord, now: Timestamp) -> CommandEnvelope {
        self.recorded += 1;
        // Unique across restarts: the wall clock's millisecond and a count.
        let id = engine_command_id(record.kind(), (now.millis().max(0) as u64) * 1000 + self.recorded % 1000);
        CommandEnvelope { id, account, actor: Actor::system(DENIED_ACTOR), command: record.command() }
    }
}

pub(crate) async fn answer(responder: &Responder, request: &Request, body: &serde_json::Value) {
    send(responder, request, serde_json::to_vec(body).unwrap_or_default()).await;
}

async fn send(responder: &Responder, request: &Request, bytes: Vec<u8>) {
    if let Err(e) = responder.respond(request, bytes).await {
        tracing::warn!(subject = %request.subject, "cannot answer {}: {e}", request.subject);
    }
}
