//! Seeded fault simulation (TigerBeetle's VOPR idea): the engine's partition
//! machine, pipelined as in `serve`, driven by a seeded random day over an
//! in-memory log that delays, reorders and fails appends, loses
//! acknowledgements, lets a phantom second writer win races, goes
//! unavailable for a while. The partition is shared by one to three engine
//! instances, each with the service's ownership machine
//! (`convo_engine::ownership`) over a simulated directory
//! ([`crate::directory`]): instances are killed and restarted, paused past
//! their lease and resumed, their clocks jump, the directory elects (answers
//! nothing) and loses answers; a takeover takes the log's fence, and a
//! deposed owner's appends are refused. The seed decides every one of them,
//! so a failing seed replays exactly.
//!
//! An auditor then checks what must hold whatever the faults:
//! - every acknowledged command is in the log exactly once, at the place its
//!   reply named; every refusal (and every "nothing") committed nothing;
//! - no aggregate holds a command id twice (so no deadline fired twice), and
//!   after the run no open conversation has a deadline left unfired;
//! - a fresh recovery from the log equals the live state;
//! - the independent model of the rules agrees with the log;
//! - appends in flight never exceeded the machine's limit;
//! - at most one owner decides at any instant the log can observe: no commit
//!   of a deposed owner after its successor's first (`--break-fence` shows
//!   the check catching it);
//! - every acknowledgement any instance gave names the command's one place;
//! - the partition is owned again within [`OWNED_AGAIN_MS`] of the latest
//!   disruption once the directory answers and an instance runs.
//!
//! Time: inputs are fed in the order the workload schedules them, each at its
//! own instant, or just after the latest instant fed when the clock has passed
//! it (a retry after a failure, a command held behind its conversation's
//! previous one), as the wall clock would stamp it; so every aggregate sees
//! time move forward. A client sends a conversation's next command once the
//! previous is answered, and configuration or presence alone. The model is
//! fed what the log holds, at the instants it was recorded.
//!
//! `CONVO_FAULTS_TRACE=<conversation>` prints, step by step, what happens to
//! one conversation (appends delivered, loads, replies, crashes).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;

use convo_domain::{AccountId, CommandEnvelope, CommandId, Timestamp};
use convo_engine::group_commit::{Append, Appended, GroupCommit, GroupCommitConfig, Write};
use convo_engine::machine::{Failure, IoId, Machine, MachineConfig, Origin, Outcome, Output};
use convo_engine::ownership::{Action, MEMBER_TTL_MS, Ownership, OwnershipConfig, RenewError, Resource, TakeError};
use convo_engine::{Refusal, World};
use convo_store::{LogItem, StoreError, StoredCommit};
use convo_wire::{Commit, StreamRef};

use crate::directory::{Directory, Snapshot};
use crate::model::Model;
use crate::workload::{self, RandomDay, Rng};
use crate::{Driver, Input, Record};

/// The most scheduler steps one run may take before it is declared stuck.
pub const STEPS_MAX: u64 = 50_000_000;
/// The longest an outage lasts, in scheduler steps.
pub const OUTAGE_STEPS_MAX: u64 = 200;
/// The longest an append, a load or a directory operation is held back, in scheduler steps.
pub const DELAY_STEPS_MAX: u64 = 40;
/// How many milliseconds of the instances' clocks a scheduler step is.
pub const MS_PER_STEP: u64 = 10;
/// The most engine instances sharing the partition.
pub const INSTANCES_MAX: usize = 3;
/// The longest an instance stays paused (SIGSTOP), in steps: past its lease.
pub const PAUSE_STEPS_MAX: u64 = 4_000;
/// The longest a killed instance stays down before it restarts, in steps.
pub const DOWN_STEPS_MAX: u64 = 2_000;
/// The longest the directory elects a leader (answers nothing), in steps.
pub const ELECTION_STEPS_MAX: u64 = 1_500;
/// The furthest an instance's clock jumps forward at once, in ms.
pub const CLOCK_JUMP_MS_MAX: u64 = 15_000;
/// How long a handover waits for the appends in hand, in steps.
pub const DRAIN_STEPS_MAX: u64 = 200;
/// The most directory operations delivered in one step.
pub const WIRE_PER_STEP_MAX: usize = 16;
/// The longest the partition may go without an owner once the directory
/// answers and an instance runs, counted from the latest kill, pause or
/// election: a paused holder's heartbeat outlives it by the member TTL, then
/// the take and the fence.
pub const OWNED_AGAIN_MS: u64 = MEMBER_TTL_MS + 5_000;

/// What one run is made of.
#[derive(Debug, Clone, Copy)]
pub struct FaultOptions {
    pub seed: u64,
    pub conversations: u32,
    /// Deliberately break the store: appends ignore their expected sequence
    /// (the optimistic-concurrency check). The auditor must catch it.
    pub break_expectation: bool,
    /// Deliberately break the fence: appends of a deposed owner are
    /// accepted. The auditor must catch it.
    pub break_fence: bool,
    /// Deliberately break group commit's fallback: a batch that failed is
    /// taken as stored. The auditor must catch it.
    pub break_batch_fallback: bool,
}

/// What a run went through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    pub steps: u64,
    pub inputs: u64,
    pub commits: u64,
    pub retries: u64,
    pub failed_appends: u64,
    pub lost_acks: u64,
    pub phantom_writes: u64,
    pub outages: u64,
    pub crashes: u64,
    pub reordered: u64,
    pub conflicts: u64,
    pub overloaded: u64,
    pub io_in_flight_max: usize,
    pub io_in_flight_limit: usize,
    pub instances: usize,
    pub pauses: u64,
    pub clock_jumps: u64,
    pub elections: u64,
    pub lost_kv_results: u64,
    pub takeovers: u64,
    pub handovers: u64,
    pub deposed: u64,
    /// Answers writing nothing turned into "unavailable": the hold was not confirmed.
    pub unconfirmed: u64,
    pub unowned_ms_max: u64,
    /// Atomic batches group commit sent, the commits in them, and those
    /// that failed (refused whole, or written with their acknowledgement lost).
    pub batches: u64,
    pub batched_commits: u64,
    pub failed_batches: u64,
}

impl fmt::Display for FaultStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} inputs, {} commits; faults: {} failed appends, {} lost acks, {} phantom writes, {} outages, {} kills, \
             {} pauses, {} clock jumps, {} elections, {} lost directory answers, {} reordered; {} conflicts, \
             {} overloaded, {} retries; up to {}/{} appends in flight; {} instances: {} takeovers, {} handovers, \
             {} deposed appends, {} unconfirmed answers, up to {} ms without an owner; group commit: {} batches \
             of {} commits, {} failed and appended again one by one",
            self.inputs,
            self.commits,
            self.failed_appends,
            self.lost_acks,
            self.phantom_writes,
            self.outages,
            self.crashes,
            self.pauses,
            self.clock_jumps,
            self.elections,
            self.lost_kv_results,
            self.reordered,
            self.conflicts,
            self.overloaded,
            self.retries,
            self.io_in_flight_max,
            self.io_in_flight_limit,
            self.instances,
            self.takeovers,
            self.handovers,
            self.deposed,
            self.unconfirmed,
            self.unowned_ms_max,
            self.batches,
            self.batched_commits,
            self.failed_batches
        )
    }
}

/// A run that held.
#[derive(Debug)]
pub struct FaultReport {
    pub seed: u64,
    pub stats: FaultStats,
    /// The model's agreement, per kind of fact.
    pub agreement: String,
}

/// A run that broke an invariant: the seed reproduces it.
#[derive(Debug)]
pub struct FaultFailure {
    pub options: FaultOptions,
    pub what: String,
    pub stats: FaultStats,
}

impl fmt::Display for FaultFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "seed {}: {}", self.options.seed, self.what)?;
        writeln!(f, "  after {}", self.stats)?;
        write!(
            f,
            "  reproduce with: convo simulate --random --faults --seed {} --conversations {}{}{}{}",
            self.options.seed,
            self.options.conversations,
            if self.options.break_expectation { " --break-expectation" } else { "" },
            if self.options.break_fence { " --break-fence" } else { "" },
            if self.options.break_batch_fallback { " --break-batch-fallback" } else { "" }
        )
    }
}

impl std::error::Error for FaultFailure {}

type Key = (AccountId, StreamRef);

/// The partition the simulated cluster shares (the workload's accounts all hash onto it).
const PARTITION: Resource = Resource::Partition(0);

/// The log: what the broker would hold, with its per-aggregate last
/// sequence and the partition's fence (`convo_store::fence`): an append
/// carries the epoch its writer took the partition with, and one whose
/// epoch is not the fence's current one is refused.
#[derive(Debug, Default)]
struct Log {
    entries: Vec<Commit>,
    /// The epoch each entry was appended under.
    epochs: Vec<u64>,
    last: HashMap<Key, u64>,
    by_key: HashMap<Key, Vec<u64>>,
    /// The fence's current epoch (0: nobody took it yet).
    fence: u64,
    ignore_expectation: bool,
    ignore_fence: bool,
}

impl Log {
    fn append(&mut self, commit: &Commit, expected: u64, epoch: u64) -> Result<u64, StoreError> {
        if epoch != self.fence && !self.ignore_fence {
            return Err(StoreError::Deposed { partition: 0, epoch, current: self.fence });
        }
        let key = (commit.account.clone(), commit.stream.clone());
        let actual = self.last.get(&key).copied().unwrap_or(0);
        if actual != expected && !self.ignore_expectation {
            return Err(StoreError::Conflict { stream: commit.stream.path(), expected });
        }
        self.entries.push(commit.clone());
        self.epochs.push(epoch);
        let seq = self.entries.len() as u64;
        self.last.insert(key.clone(), seq);
        self.by_key.entry(key).or_default().push(seq);
        Ok(seq)
    }

    /// A group commit's atomic batch: every check first, then all or nothing
    /// (as JetStream checks a batch's expectations under lock at its commit).
    fn append_batch(&mut self, appends: &[Append], epoch: u64) -> Result<Vec<u64>, StoreError> {
        if epoch != self.fence && !self.ignore_fence {
            return Err(StoreError::Deposed { partition: 0, epoch, current: self.fence });
        }
        for a in appends {
            let key = (a.commit.account.clone(), a.commit.stream.clone());
            if self.last.get(&key).copied().unwrap_or(0) != a.expected && !self.ignore_expectation {
                return Err(StoreError::Conflict { stream: a.commit.stream.path(), expected: a.expected });
            }
        }
        Ok(appends.iter().map(|a| self.append(&a.commit, a.expected, epoch).expect("checked")).collect())
    }

    /// A takeover's marker: the fence moves on, and every earlier epoch is deposed.
    fn take_fence(&mut self) -> u64 {
        self.fence += 1;
        self.fence
    }

    fn item(&self, seq: u64) -> LogItem {
        let commit = self.entries[(seq - 1) as usize].clone();
        Ok(StoredCommit { stream_seq: seq, subject: commit.subject(convo_wire::DEFAULT_PREFIX), commit })
    }

    fn load(&self, key: &Key) -> Vec<LogItem> {
        self.by_key.get(key).map_or_else(Vec::new, |seqs| seqs.iter().map(|s| self.item(*s)).collect())
    }
}

/// A directory operation an instance asked for.
#[derive(Debug)]
enum KvOp {
    Heartbeat,
    Take {
        resource: Resource,
        over: Option<u64>,
    },
    Renew {
        resource: Resource,
        revision: u64,
    },
    /// Whatever its revision now: a renewal may have crossed it.
    Release {
        resource: Resource,
    },
}

/// Something on its way, due at a scheduler step.
#[derive(Debug)]
enum Op {
    /// A partition machine's append (with the epoch it was decided under) or load.
    Append {
        io: IoId,
        commit: Commit,
        expected: u64,
        epoch: u64,
    },
    /// A group commit's atomic batch (with the epoch it was decided under).
    Batch {
        appends: Vec<Append>,
        epoch: u64,
    },
    Load {
        io: IoId,
        key: Key,
    },
    /// An ownership machine's request to the directory, answered on delivery.
    Kv(KvOp),
    /// What the directory's watcher shows an instance.
    View(Snapshot),
    /// A presence probe of another instance.
    Probe {
        instance: String,
    },
}

/// Whom an operation's answer goes to: an instance's incarnation, and
/// (machine operations) the partition machine it serves with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dest {
    instance: usize,
    incarnation: u32,
    generation: u64,
}

/// The partition as an instance serves it.
struct Served {
    machine: Machine,
    /// Its appends on their way to the log, batched under load as in `serve`.
    group: GroupCommit,
    /// Unique per start: answers for an earlier machine go nowhere.
    generation: u64,
    /// The fence's epoch it took the partition with.
    epoch: u64,
    /// Handing over since this step: no new requests, finishing those in hand.
    draining_since: Option<u64>,
}

/// One engine instance: its ownership machine and, while it serves the
/// partition, its partition machine.
struct Instance {
    name: String,
    incarnation: u32,
    ownership: Ownership,
    /// How far this instance's clock is ahead of the simulator's (clock jumps).
    offset_ms: u64,
    down_until: Option<u64>,
    paused_until: Option<u64>,
    served: Option<Served>,
    /// The epoch of the fence taken with the partition's lease, until it starts.
    fence: Option<u64>,
    /// Its watcher's members: each one's last heartbeat revision, and when it arrived.
    seen: BTreeMap<String, (u64, u64)>,
}

impl Instance {
    fn new(index: usize, incarnation: u32, offset_ms: u64) -> Self {
        let name = format!("i{index}-{incarnation}");
        let config = OwnershipConfig::serve(&name, 1, vec!["feeds".to_owned()]);
        Self {
            name,
            incarnation,
            ownership: Ownership::new(config),
            offset_ms,
            down_until: None,
            paused_until: None,
            served: None,
            fence: None,
            seen: BTreeMap::new(),
        }
    }

    fn running(&self) -> bool {
        self.down_until.is_none() && self.paused_until.is_none()
    }
}

/// A client's command and what it has come to.
#[derive(Debug)]
struct Sent {
    input: Input,
    /// The instant of its latest attempt.
    at: Timestamp,
    /// Where its latest attempt waits for an answer (instance, machine generation).
    attempt: Option<(usize, u64)>,
    /// The final answer, once there is one.
    answer: Option<Result<Outcome, Failure>>,
}

struct Sim {
    options: FaultOptions,
    rng: Rng,
    day: RandomDay,
    config: MachineConfig,
    log: Log,
    /// Log entries the workload has seen.
    observed: usize,
    instances: Vec<Instance>,
    directory: Directory,
    /// Machine operations, and directory operations, on their way.
    network: Vec<(u64, Dest, Op)>,
    wire: Vec<(u64, Dest, Op)>,
    next_generation: u64,
    /// Client commands, by token; and the aggregates with one unanswered.
    sent: Vec<Sent>,
    unanswered: HashMap<Key, usize>,
    retry: VecDeque<usize>,
    /// Every acknowledgement given, by any instance: (token, log sequence, commit).
    acks: Vec<(usize, u64, Commit)>,
    /// The latest instant fed to a partition machine.
    now: Timestamp,
    /// The latest instant the machines' timers were fired at.
    timed_out: Timestamp,
    outage_until: u64,
    election_until: u64,
    /// Since when (ms) the partition has had no owner while a quorum was up
    /// (or since the latest kill, pause or election, if later).
    unowned_since: Option<u64>,
    stats: FaultStats,
    step: u64,
    /// `CONVO_FAULTS_TRACE=<conversation>`: print what happens to it, step by step.
    trace: Option<String>,
}

fn key_of(envelope: &CommandEnvelope) -> Key {
    (envelope.account.clone(), convo_engine::core::stream_of(&envelope.command))
}

impl Sim {
    fn new(options: FaultOptions) -> Self {
        let mut rng = Rng::new(options.seed ^ 0xFA17_5EED);
        let config = MachineConfig {
            io_in_flight_max: rng.range(1, 24) as usize,
            mailbox_commands_max: rng.range(1, 6) as usize,
            evict_closed_after_ms: Some(rng.range(1, 30) as i64 * 60_000),
            tick_at_deadline: true,
            ..MachineConfig::serve()
        };
        let instances: Vec<Instance> =
            (0..rng.range(1, INSTANCES_MAX as u64) as usize).map(|i| Instance::new(i, 0, 0)).collect();
        let log =
            Log { ignore_expectation: options.break_expectation, ignore_fence: options.break_fence, ..Log::default() };
        let stats = FaultStats {
            io_in_flight_limit: config.io_in_flight_max,
            instances: instances.len(),
            ..FaultStats::default()
        };
        Self {
            options,
            rng,
            day: RandomDay::new(options.seed, options.conversations),
            config,
            log,
            observed: 0,
            instances,
            directory: Directory::new(MEMBER_TTL_MS),
            network: Vec::new(),
            wire: Vec::new(),
            next_generation: 0,
            sent: Vec::new(),
            unanswered: HashMap::new(),
            retry: VecDeque::new(),
            acks: Vec::new(),
            now: Timestamp::from_millis(i64::MIN),
            timed_out: Timestamp::from_millis(i64::MIN),
            outage_until: 0,
            election_until: 0,
            unowned_since: None,
            stats,
            step: 0,
            trace: std::env::var("CONVO_FAULTS_TRACE").ok(),
        }
    }

    fn fail(&self, what: impl Into<String>) -> Box<FaultFailure> {
        Box::new(FaultFailure { options: self.options, what: what.into(), stats: self.stats })
    }

    fn trace(&self, what: impl FnOnce() -> String) {
        if self.trace.is_some() {
            eprintln!("step {}: {}", self.step, what());
        }
    }

    /// The simulator's clock, in ms.
    fn ms(&self) -> u64 {
        self.step * MS_PER_STEP
    }

    fn delay(&mut self) -> u64 {
        self.step + self.rng.range(0, DELAY_STEPS_MAX)
    }

    /// The instance requests go to: of those running and serving the
    /// partition (not handing it over), the one with the newest epoch.
    fn target(&self) -> Option<usize> {
        (0..self.instances.len())
            .filter(|i| self.instances[*i].running())
            .filter_map(|i| {
                self.instances[i].served.as_ref().filter(|s| s.draining_since.is_none()).map(|s| (s.epoch, i))
            })
            .max()
            .map(|(_, i)| i)
    }

    fn machine(&mut self, instance: usize) -> &mut Machine {
        &mut self.instances[instance].served.as_mut().expect("the instance serves the partition").machine
    }

    /// Takes the machines' outputs: I/O onto the network, replies to clients.
    fn drain(&mut self) -> Result<(), Box<FaultFailure>> {
        for i in 0..self.instances.len() {
            if !self.instances[i].running() {
                continue;
            }
            let Some(served) = self.instances[i].served.as_mut() else { continue };
            let (generation, epoch) = (served.generation, served.epoch);
            let in_flight = served.machine.io_in_flight();
            self.stats.io_in_flight_max = self.stats.io_in_flight_max.max(in_flight);
            if in_flight > self.config.io_in_flight_max {
                return Err(self.fail(format!(
                    "{in_flight} appends and loads in flight, over the limit of {}",
                    self.config.io_in_flight_max
                )));
            }
            let dest = Dest { instance: i, incarnation: self.instances[i].incarnation, generation };
            while let Some(output) = self.machine(i).poll() {
                match output {
                    Output::Append { io, commit, expected } => {
                        let served = self.instances[i].served.as_mut().expect("served");
                        served.group.push(Append { io, commit, expected });
                    }
                    Output::Load { io, account, stream } => {
                        let due = self.delay();
                        self.network.push((due, dest, Op::Load { io, key: (account, stream) }));
                    }
                    Output::Reply { origin, envelope, result, now } => {
                        if let Some(trace) = &self.trace
                            && key_of(&envelope).1.path().ends_with(trace.as_str())
                        {
                            let shown = result.as_ref().map(|o| match o {
                                Outcome::Committed { log_seq, .. } => format!("committed {log_seq}"),
                                other => format!("{other:?}"),
                            });
                            eprintln!(
                                "step {}: {origin:?} {} ({}) at {now} on {i}: {shown:?}",
                                self.step,
                                envelope.id,
                                key_of(&envelope).1.path()
                            );
                        }
                        // An answer that writes nothing comes from a state that may be stale once the
                        // instance's hold is no longer confirmed (a pause): the client hears "unavailable".
                        let clock = self.ms() + self.instances[i].offset_ms;
                        let result = match result {
                            Ok(Outcome::Refused(_) | Outcome::Nothing)
                                if matches!(origin, Origin::Request(_))
                                    && !self.instances[i].ownership.confirmed(&PARTITION, clock) =>
                            {
                                self.stats.unconfirmed += 1;
                                Err(Failure::Unavailable(
                                    "this instance's hold on the partition is not confirmed".into(),
                                ))
                            }
                            other => other,
                        };
                        match (origin, result) {
                            (Origin::Request(token), result) => {
                                let token = token as usize;
                                if let Ok(Outcome::Committed { log_seq, commit }) = &result {
                                    self.acks.push((token, *log_seq, commit.clone()));
                                }
                                // A late answer to an attempt the client gave up on reaches nobody.
                                if self.sent[token].attempt == Some((i, generation)) {
                                    self.answer(token, result);
                                }
                            }
                            // The engine's own ticks are never refused by a rule, whatever the faults.
                            (Origin::Timer, Ok(Outcome::Refused(refusal))) => {
                                return Err(self.fail(format!("the tick {} was refused: {refusal}", envelope.id)));
                            }
                            _ => {}
                        }
                    }
                }
            }
            loop {
                let served = self.instances[i].served.as_mut().expect("served");
                let Some(write) = served.group.poll() else { break };
                let op = match write {
                    Write::Batch(appends) => {
                        self.stats.batches += 1;
                        self.stats.batched_commits += appends.len() as u64;
                        Op::Batch { appends, epoch }
                    }
                    Write::Single(Append { io, commit, expected }) => Op::Append { io, commit, expected, epoch },
                };
                let due = self.delay();
                self.network.push((due, dest, op));
            }
        }
        Ok(())
    }

    /// The group commit of an instance that starts serving.
    fn group_commit(&self) -> GroupCommit {
        GroupCommit::new(GroupCommitConfig {
            writes_in_flight_max: 2,
            batch_commits_min: 2,
            batch_commits_max: 8,
            break_fallback: self.options.break_batch_fallback,
        })
    }

    fn answer(&mut self, token: usize, result: Result<Outcome, Failure>) {
        self.sent[token].attempt = None;
        let key = key_of(&self.sent[token].input.envelope);
        if result.is_err() {
            if matches!(result, Err(Failure::Overloaded(_))) {
                self.stats.overloaded += 1;
            }
            self.retry.push_back(token);
            return;
        }
        self.sent[token].answer = Some(result);
        if let Some(n) = self.unanswered.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.unanswered.remove(&key);
            }
        }
    }

    /// Lets the workload see what the log gained.
    fn observe(&mut self) {
        while self.observed < self.log.entries.len() {
            let records = Record::of_commit(&self.log.entries[self.observed]);
            self.observed += 1;
            self.day.observe(&records);
        }
    }

    /// Picks one of the operations due (at random: they arrive reordered);
    /// a paused instance's wait until it runs again.
    fn pick_due(&mut self, wire: bool) -> Option<(Dest, Op)> {
        let queue = if wire { &self.wire } else { &self.network };
        let due: Vec<usize> = (0..queue.len())
            .filter(|i| queue[*i].0 <= self.step && self.instances[queue[*i].1.instance].paused_until.is_none())
            .collect();
        if due.is_empty() {
            return None;
        }
        let pick = due[(self.rng.next_u64() % due.len() as u64) as usize];
        if pick != due[0] && !wire {
            self.stats.reordered += 1;
        }
        let queue = if wire { &mut self.wire } else { &mut self.network };
        let (_, dest, op) = queue.swap_remove(pick);
        Some((dest, op))
    }

    /// Whether `dest`'s machine is the one its instance serves with now.
    fn current(&self, dest: Dest) -> bool {
        let instance = &self.instances[dest.instance];
        instance.incarnation == dest.incarnation
            && instance.down_until.is_none()
            && instance.served.as_ref().is_some_and(|s| s.generation == dest.generation)
    }

    /// Delivers one machine operation (chosen at random among those due).
    fn deliver(&mut self) -> bool {
        let Some((dest, op)) = self.pick_due(false) else { return false };
        let down = self.step < self.outage_until;
        if let Some(trace) = self.trace.clone() {
            match &op {
                Op::Append { commit, expected, epoch, .. } if commit.stream.path().ends_with(trace.as_str()) => {
                    eprintln!(
                        "step {}: deliver append {} {:?} expected {expected} epoch {epoch} (log last {:?}, fence {})",
                        self.step,
                        commit.command,
                        commit.events.iter().map(|e| (e.seq, e.event.type_name())).collect::<Vec<_>>(),
                        self.log.last.get(&(commit.account.clone(), commit.stream.clone())),
                        self.log.fence
                    )
                }
                Op::Load { key, .. } if key.1.path().ends_with(trace.as_str()) => {
                    eprintln!("step {}: deliver load (down {down}) {:?}", self.step, self.log.by_key.get(key))
                }
                _ => {}
            }
        }
        match op {
            Op::Append { io, commit, expected, epoch } => {
                let result = if down || self.rng.chance(3) {
                    self.stats.failed_appends += 1;
                    Err(StoreError::Unavailable("simulated: the append did not reach the broker".into()))
                } else {
                    if self.rng.chance(4) {
                        // A second writer decided the same command first and won the race (under the
                        // same epoch: a deposed owner's decision cannot reach the log through it).
                        if self.log.append(&commit, expected, epoch).is_ok() {
                            self.stats.phantom_writes += 1;
                        }
                    }
                    let written = self.log.append(&commit, expected, epoch);
                    self.answered("the acknowledgement", written)
                };
                if result.is_ok() {
                    self.stats.commits += 1;
                }
                if self.current(dest) {
                    let served = self.instances[dest.instance].served.as_mut().expect("current");
                    let appended = served.group.handle_single(Append { io, commit, expected }, result);
                    self.appended(dest.instance, vec![appended]);
                }
            }
            Op::Batch { appends, epoch } => {
                let result = if down || self.rng.chance(3) {
                    self.stats.failed_appends += 1;
                    Err(StoreError::Unavailable("simulated: the batch did not reach the broker".into()))
                } else if self.rng.chance(8) {
                    Err(StoreError::Refused("simulated: the server refused the batch (too many in flight)".into()))
                } else {
                    if self.rng.chance(4) {
                        // A second writer decided one of the batch's commands first: the batch conflicts.
                        let pick = (self.rng.next_u64() % appends.len() as u64) as usize;
                        let a = &appends[pick];
                        if self.log.append(&a.commit, a.expected, epoch).is_ok() {
                            self.stats.phantom_writes += 1;
                        }
                    }
                    let written = self.log.append_batch(&appends, epoch);
                    self.answered("the batch's acknowledgement", written)
                };
                match &result {
                    Ok(seqs) => self.stats.commits += seqs.len() as u64,
                    Err(_) => self.stats.failed_batches += 1,
                }
                if self.current(dest) {
                    let served = self.instances[dest.instance].served.as_mut().expect("current");
                    let appended = served.group.handle_batch(appends, result);
                    self.appended(dest.instance, appended);
                }
            }
            Op::Load { io, key } => {
                let result = if down || self.rng.chance(2) {
                    Err(StoreError::Unavailable("simulated: the load timed out".into()))
                } else {
                    Ok(self.log.load(&key))
                };
                if self.current(dest) {
                    self.machine(dest.instance).handle_loaded(io, result);
                }
            }
            Op::Kv(_) | Op::View(_) | Op::Probe { .. } => unreachable!("directory operations travel on the wire"),
        }
        true
    }

    /// What the writer hears of a write that reached the log: its
    /// acknowledgement (`ack`) may be lost; conflicts and deposed writes are counted.
    fn answered<T>(&mut self, ack: &str, written: Result<T, StoreError>) -> Result<T, StoreError> {
        match written {
            Ok(_) if self.rng.chance(3) => {
                self.stats.lost_acks += 1;
                Err(StoreError::Unavailable(format!("simulated: written, but {ack} was lost")))
            }
            Err(StoreError::Conflict { .. }) => {
                self.stats.conflicts += 1;
                written
            }
            Err(StoreError::Deposed { .. }) => {
                self.stats.deposed += 1;
                written
            }
            other => other,
        }
    }

    /// Hands an instance's machine what came of its appends (a deposed
    /// writer stops serving at once, as `serve` does).
    fn appended(&mut self, instance: usize, appended: Vec<Appended>) {
        for Appended { io, commit, result } in appended {
            if self.instances[instance].served.is_none() {
                return; // stopped by an earlier one: the rest go nowhere
            }
            let deposed = matches!(result, Err(StoreError::Deposed { .. }));
            self.machine(instance).handle_appended(io, commit, result);
            if deposed {
                // serve stops the partition at once; the machine hands it back.
                self.trace(|| format!("instance {instance} deposed"));
                self.stop_served(instance);
                let ownership = &mut self.instances[instance].ownership;
                ownership.handle_deposed(PARTITION);
                ownership.handle_stopped(PARTITION);
            }
        }
    }

    /// The instance stops serving the partition: what it had in hand is
    /// retried by the clients (their attempts there get no answer).
    fn stop_served(&mut self, instance: usize) {
        let Some(served) = self.instances[instance].served.take() else { return };
        for token in 0..self.sent.len() {
            if self.sent[token].attempt == Some((instance, served.generation)) {
                self.sent[token].attempt = None;
                self.retry.push_back(token);
            }
        }
    }

    /// Starts serving the partition on `instance` with the epoch it took:
    /// a machine recovered from the log, its timers fired at the clock.
    fn start_served(&mut self, instance: usize, epoch: u64) {
        self.stats.takeovers += 1;
        self.next_generation += 1;
        let mut machine = recover(&self.log, self.config);
        if self.now > Timestamp::from_millis(i64::MIN) {
            machine.handle_timeout(self.now);
            self.timed_out = self.timed_out.max(self.now);
        }
        self.trace(|| format!("instance {instance} serves with epoch {epoch}"));
        // Clients waiting on an attempt at another instance (paused, cut off) gave up long
        // before a takeover (a request times out in seconds): they send again, to the new owner.
        for token in 0..self.sent.len() {
            if self.sent[token].answer.is_none()
                && let Some((at, _)) = self.sent[token].attempt
                && at != instance
            {
                self.sent[token].attempt = None;
                self.retry.push_back(token);
            }
        }
        self.instances[instance].served = Some(Served {
            machine,
            group: self.group_commit(),
            generation: self.next_generation,
            epoch,
            draining_since: None,
        });
    }

    /// kill -9: the instance's appends on the network land or not, nothing
    /// it had in hand is answered, and it restarts later as a new incarnation.
    fn kill(&mut self, instance: usize) {
        self.stats.crashes += 1;
        self.trace(|| format!("kill instance {instance}"));
        let mut kept = Vec::new();
        for (due, dest, op) in std::mem::take(&mut self.network) {
            if dest.instance != instance {
                kept.push((due, dest, op));
                continue;
            }
            match op {
                Op::Append { commit, expected, epoch, .. } if self.rng.chance(50) => {
                    let _ = self.log.append(&commit, expected, epoch);
                }
                Op::Batch { appends, epoch } if self.rng.chance(50) => {
                    let _ = self.log.append_batch(&appends, epoch);
                }
                _ => {}
            }
        }
        self.network = kept;
        self.wire.retain(|(_, dest, _)| dest.instance != instance);
        self.stop_served(instance);
        let down_for = self.rng.range(1, DOWN_STEPS_MAX);
        let dead = &mut self.instances[instance];
        dead.down_until = Some(self.step + down_for);
        dead.paused_until = None;
        dead.fence = None;
    }

    /// The faults of the cluster, while the workload runs.
    fn cluster_faults(&mut self) {
        let n = self.instances.len() as u64;
        let roll = self.rng.range(0, 9_999);
        let which = self.rng.range(0, n - 1) as usize;
        if roll <= 4 && self.unowned_since.is_some() {
            // A new disruption: the bound on owning the partition again counts from it.
            self.unowned_since = Some(self.ms());
        }
        match roll {
            0..=1 if self.instances[which].down_until.is_none() => self.kill(which),
            2 if self.instances[which].running() => {
                self.stats.pauses += 1;
                let until = self.step + self.rng.range(1, PAUSE_STEPS_MAX);
                self.trace(|| format!("pause instance {which} until step {until}"));
                self.instances[which].paused_until = Some(until);
            }
            3 => {
                self.stats.clock_jumps += 1;
                self.instances[which].offset_ms += self.rng.range(1, CLOCK_JUMP_MS_MAX);
            }
            4 if self.step >= self.election_until => {
                self.stats.elections += 1;
                self.election_until = self.step + self.rng.range(1, ELECTION_STEPS_MAX);
            }
            _ => {}
        }
    }

    /// Restarts, resumes, and the ownership machines' clocks and actions.
    fn run_instances(&mut self) {
        for i in 0..self.instances.len() {
            if self.instances[i].down_until.is_some_and(|at| self.step >= at) {
                let (incarnation, offset) = (self.instances[i].incarnation + 1, self.instances[i].offset_ms);
                self.instances[i] = Instance::new(i, incarnation, offset);
                self.trace(|| format!("instance {i} restarts"));
            }
            if self.instances[i].paused_until.is_some_and(|at| self.step >= at) {
                // SIGCONT: it goes on believing what it believed; its machine's timers fire now.
                self.instances[i].paused_until = None;
                self.trace(|| format!("instance {i} resumes"));
                if let Some(served) = self.instances[i].served.as_mut()
                    && self.now > Timestamp::from_millis(i64::MIN)
                {
                    served.machine.handle_timeout(self.now);
                }
            }
            if !self.instances[i].running() {
                continue;
            }
            let now = self.ms() + self.instances[i].offset_ms;
            if now >= self.instances[i].ownership.poll_timeout() {
                self.instances[i].ownership.handle_timeout(now);
            }
            // A drain is over once the appends in hand are answered (or it took too long).
            if let Some(served) = &self.instances[i].served
                && let Some(since) = served.draining_since
                && (served.machine.io_in_flight() == 0 || self.step - since >= DRAIN_STEPS_MAX)
            {
                self.stats.handovers += 1;
                self.stop_served(i);
                self.instances[i].ownership.handle_stopped(PARTITION);
            }
            self.perform(i);
        }
    }

    /// Carries out what instance `i`'s ownership machine asks.
    fn perform(&mut self, i: usize) {
        let dest = Dest { instance: i, incarnation: self.instances[i].incarnation, generation: 0 };
        while let Some(action) = self.instances[i].ownership.poll() {
            if !matches!(action, Action::Heartbeat { .. } | Action::Renew { .. } | Action::Probe { .. }) {
                self.trace(|| format!("instance {i} ({}): {action:?}", self.instances[i].name));
            }
            let due = self.delay();
            match action {
                Action::Heartbeat { .. } => self.wire.push((due, dest, Op::Kv(KvOp::Heartbeat))),
                Action::Take { resource, over } => {
                    self.wire.push((due, dest, Op::Kv(KvOp::Take { resource, over: over.map(|(_, r)| r) })))
                }
                Action::Renew { resource, revision } => {
                    self.wire.push((due, dest, Op::Kv(KvOp::Renew { resource, revision })))
                }
                Action::Release { resource, .. } => self.wire.push((due, dest, Op::Kv(KvOp::Release { resource }))),
                Action::Probe { instance } => self.wire.push((due, dest, Op::Probe { instance })),
                Action::Start { resource: Resource::Partition(_) } => match self.instances[i].fence.take() {
                    Some(epoch) => self.start_served(i, epoch),
                    None => self.instances[i].ownership.handle_stopped(PARTITION),
                },
                Action::Start { resource: Resource::Role(_) } => {}
                Action::Drain { resource: Resource::Partition(_) } => match self.instances[i].served.as_mut() {
                    Some(served) => served.draining_since = Some(self.step),
                    None => self.instances[i].ownership.handle_stopped(PARTITION),
                },
                Action::Halt { resource: Resource::Partition(_), why } => {
                    self.trace(|| format!("instance {i} halts: {why}"));
                    self.stop_served(i);
                    self.instances[i].ownership.handle_stopped(PARTITION);
                }
                Action::Drain { resource } | Action::Halt { resource, .. } => {
                    self.instances[i].ownership.handle_stopped(resource)
                }
            }
        }
    }

    /// Delivers the directory's operations that are due.
    fn deliver_wire(&mut self) {
        for _ in 0..WIRE_PER_STEP_MAX {
            let Some((dest, op)) = self.pick_due(true) else { break };
            let instance = &self.instances[dest.instance];
            if instance.incarnation != dest.incarnation || instance.down_until.is_some() {
                continue; // a dead incarnation's: its connection is gone
            }
            let now = self.ms();
            let (me, clock) = (instance.name.clone(), now + instance.offset_ms);
            let electing = self.step < self.election_until;
            // A result lost on its way back: the operation happened, the instance hears "unavailable".
            let lost = !electing && self.rng.chance(5);
            let mut changed = false;
            match op {
                Op::Kv(KvOp::Heartbeat) => {
                    if !electing {
                        self.directory.heartbeat(&me, now);
                        changed = true;
                    }
                }
                Op::Kv(KvOp::Take { resource, over }) => {
                    let mut result = if electing {
                        Err(TakeError::Unavailable)
                    } else {
                        changed = true;
                        self.directory.take(&resource, &me, over, now)
                    };
                    // A partition's lease comes with its fence (unless the holder already serves it).
                    if let (Ok(_), Resource::Partition(_)) = (&result, &resource)
                        && self.instances[dest.instance].served.is_none()
                    {
                        if self.step < self.outage_until {
                            self.directory.release(&resource, &me, now);
                            result = Err(TakeError::Unavailable);
                        } else {
                            let epoch = self.log.take_fence();
                            self.trace(|| format!("instance {} takes the fence: epoch {epoch}", dest.instance));
                            self.instances[dest.instance].fence = Some(epoch);
                        }
                    }
                    if lost && result.is_ok() {
                        self.stats.lost_kv_results += 1;
                        self.instances[dest.instance].fence = None;
                        result = Err(TakeError::Unavailable);
                    }
                    self.trace(|| format!("instance {}: take {resource:?}: {result:?}", dest.instance));
                    self.instances[dest.instance].ownership.handle_taken(resource, result);
                }
                Op::Kv(KvOp::Renew { resource, revision }) => {
                    let mut result = if electing {
                        Err(RenewError::Unavailable)
                    } else {
                        changed = true;
                        self.directory.renew(&resource, &me, revision, now)
                    };
                    if lost && result.is_ok() {
                        self.stats.lost_kv_results += 1;
                        result = Err(RenewError::Unavailable);
                    }
                    self.instances[dest.instance].ownership.handle_renewed(resource, result);
                }
                Op::Kv(KvOp::Release { resource }) => {
                    if !electing {
                        self.directory.release(&resource, &me, now);
                        changed = true;
                    }
                    self.instances[dest.instance].ownership.handle_released(resource);
                }
                Op::View(snapshot) => {
                    let instance = &mut self.instances[dest.instance];
                    let view = snapshot.view(clock, &mut instance.seen);
                    instance.ownership.handle_directory(view, clock);
                }
                Op::Probe { instance } => {
                    // NATS answers "no responders" once a dead instance's connection is gone;
                    // a paused one's is still open, and never answers.
                    let found = self.instances.iter().find(|x| x.name == instance);
                    let alive = match found {
                        None => Some(false),
                        Some(x) if x.down_until.is_some() => Some(false),
                        Some(x) if x.paused_until.is_some() => None,
                        Some(_) if self.rng.chance(5) => None,
                        Some(_) => Some(true),
                    };
                    self.instances[dest.instance].ownership.handle_probed(&instance, alive);
                }
                Op::Append { .. } | Op::Batch { .. } | Op::Load { .. } => {
                    unreachable!("machine operations travel on the network")
                }
            }
            self.perform(dest.instance);
            if changed {
                // Every instance's watcher sees the change, each after its own delay.
                let snapshot = self.directory.snapshot(now);
                for i in 0..self.instances.len() {
                    if self.instances[i].down_until.is_none() {
                        let to = Dest { instance: i, incarnation: self.instances[i].incarnation, generation: 0 };
                        let due = self.delay();
                        self.wire.push((due, to, Op::View(snapshot.clone())));
                    }
                }
            }
        }
    }

    /// Every partition is owned again within the bound once a quorum is up:
    /// the directory answers and an instance runs.
    fn check_owned(&mut self) -> Result<(), Box<FaultFailure>> {
        let quorum = self.step >= self.election_until && self.instances.iter().any(Instance::running);
        let owned = self.instances.iter().any(|x| {
            x.running() && x.served.as_ref().is_some_and(|s| s.draining_since.is_none() && s.epoch == self.log.fence)
        });
        let now = self.ms();
        if !quorum {
            self.unowned_since = None;
        } else if owned {
            if let Some(since) = self.unowned_since.take() {
                self.stats.unowned_ms_max = self.stats.unowned_ms_max.max(now - since);
            }
        } else {
            let since = *self.unowned_since.get_or_insert(now);
            if now - since > OWNED_AGAIN_MS {
                return Err(self.fail(format!(
                    "the partition has had no owner for {} s with the directory up and an instance running \
                     (bound {} s)",
                    (now - since) / 1000,
                    OWNED_AGAIN_MS / 1000
                )));
            }
        }
        Ok(())
    }

    /// Sends a client's command (again) to the instance serving the
    /// partition: at its own instant, or, when the clock has passed it (a
    /// retry, or a command held behind another), just after the latest
    /// instant, as the wall clock would stamp it — so a timer that fired
    /// meanwhile really came first.
    /// The clock read at a timeout counts as passed too: timers due then have
    /// fired, so a command stamped at that instant would come after them
    /// against the ordering rule (inputs before timers at the same instant).
    fn send(&mut self, target: usize, token: usize) {
        let intended = self.sent[token].input.at;
        let passed = intended < self.now || intended <= self.timed_out;
        let at = if passed { Timestamp::from_millis(self.now.max(self.timed_out).millis() + 1) } else { intended };
        self.now = at;
        self.sent[token].at = at;
        let generation = self.instances[target].served.as_ref().map_or(0, |s| s.generation);
        self.sent[token].attempt = Some((target, generation));
        let envelope = self.sent[token].input.envelope.clone();
        self.machine(target).handle_request(token as u64, envelope, at);
    }

    /// Feeds the next thing in time order, if it may go now.
    fn feed(&mut self) -> bool {
        let Some(target) = self.target() else { return false };
        if !self.machine(target).wants_requests() {
            return false;
        }
        if let Some(token) = self.retry.pop_front() {
            self.stats.retries += 1;
            self.send(target, token);
            return true;
        }
        // The clock does not pass a command still waiting for its answer: its
        // retry must not find hours gone by.
        let waiting = self.sent.iter().filter(|s| s.answer.is_none()).map(|s| s.at).min();
        let timer = self.machine(target).poll_timeout().filter(|t| waiting.is_none_or(|w| *t < w));
        let late = |at: Timestamp, now: Timestamp| if at < now { Timestamp::from_millis(now.millis() + 1) } else { at };
        let input_at = self.day.next_at().map(|at| late(at, self.now));
        match (input_at, timer) {
            (None, None) => false,
            (Some(i), Some(t)) if t < i => {
                self.timeout(target, t);
                true
            }
            (None, Some(t)) => {
                self.timeout(target, t);
                true
            }
            (Some(_), _) => {
                // A client sends a conversation's next command once the one before
                // is answered; configuration and presence change what every
                // command means, so they go alone.
                let conversation = self.day.next_conversation().expect("an input is due");
                let blocked = match &conversation {
                    Some(id) => self.unanswered.keys().any(|k| {
                        !matches!(k.1, StreamRef::Conversation(_)) || k.1 == StreamRef::Conversation(id.clone())
                    }),
                    None => !self.unanswered.is_empty(),
                };
                if blocked {
                    return false;
                }
                let input = self.day.take().expect("an input is due");
                let key = key_of(&input.envelope);
                self.stats.inputs += 1;
                *self.unanswered.entry(key).or_default() += 1;
                self.sent.push(Sent { at: input.at, input, attempt: None, answer: None });
                self.send(target, self.sent.len() - 1);
                true
            }
        }
    }

    fn timeout(&mut self, target: usize, at: Timestamp) {
        self.now = self.now.max(at);
        self.timed_out = self.timed_out.max(self.now);
        let now = self.now;
        self.machine(target).handle_timeout(now);
    }

    fn run(mut self) -> Result<(Self, usize, World), Box<FaultFailure>> {
        let target = loop {
            self.step += 1;
            self.stats.steps = self.step;
            if self.step > STEPS_MAX {
                return Err(self.fail(format!("no end after {STEPS_MAX} steps: the run is stuck")));
            }
            // The faults stop with the workload: then the cluster settles.
            let calm = self.day.next_at().is_none();
            if !calm {
                self.cluster_faults();
                if self.step >= self.outage_until && self.rng.range(0, 9_999) < 5 {
                    self.stats.outages += 1;
                    self.outage_until = self.step + self.rng.range(1, OUTAGE_STEPS_MAX);
                }
            }
            self.run_instances();
            self.deliver_wire();
            self.check_owned()?;
            self.drain()?;
            self.observe();
            let deliver_first = !self.network.is_empty() && self.rng.chance(60);
            if deliver_first && self.deliver() {
                continue;
            }
            if self.feed() {
                continue;
            }
            if self.deliver() {
                continue;
            }
            let Some(target) = self.target() else { continue };
            let settled = self.network.is_empty()
                && self.retry.is_empty()
                && self.instances.iter().all(Instance::running)
                && self.machine(target).is_idle();
            if settled {
                if self.day.next_at().is_none() && self.machine(target).poll_timeout().is_none() {
                    break target;
                }
                if self.unanswered.is_empty() {
                    continue;
                }
                return Err(self.fail("commands wait for an answer that never comes"));
            }
        };
        // Settle with the faults over: a last reading of the clock lets routing
        // retry what a lost acknowledgement hid, until nothing changes.
        let epoch = self.instances[target].served.as_ref().map_or(0, |s| s.epoch);
        for _ in 0..1_000 {
            let before = self.log.entries.len();
            let now = self.now;
            self.machine(target).handle_timeout(now);
            while let Some(output) = self.machine(target).poll() {
                match output {
                    Output::Append { io, commit, expected } => {
                        let result = self.log.append(&commit, expected, epoch);
                        self.machine(target).handle_appended(io, commit, result);
                    }
                    Output::Load { io, account, stream } => {
                        let items = self.log.load(&(account, stream));
                        self.machine(target).handle_loaded(io, Ok(items));
                    }
                    Output::Reply { .. } => {}
                }
            }
            if self.log.entries.len() == before {
                break;
            }
        }
        self.observe();
        let mut recovered = recover(&self.log, self.config);
        let world = std::mem::take(recovered.world_mut());
        Ok((self, target, world))
    }
}

fn recover(log: &Log, config: MachineConfig) -> Machine {
    let mut machine = Machine::new(config);
    for seq in 1..=log.entries.len() as u64 {
        machine.recover(log.item(seq));
    }
    machine
}

/// Runs one seed and audits it.
/// Handles are never ids (SPEC §13), and one handle is one contact: the
/// engine made at most one contact per handle, the book recorded each one it
/// made with its handle, and every conversation a message by handle opened
/// names that contact — through crashes, lost acknowledgements and
/// follow-ups sent again. A description of the first breach, if any.
fn one_contact_per_handle(log: &Log, sent: &[Sent]) -> Option<String> {
    use convo_domain::contact::Identity;
    use convo_domain::{Command, ContactEvent, ContactId, ConversationEvent};
    use convo_wire::Event;
    // Each handle's contact, and the log entry that first made it.
    let mut made: BTreeMap<(AccountId, Identity), (ContactId, usize)> = BTreeMap::new();
    let mut booked: BTreeMap<(AccountId, Identity), ContactId> = BTreeMap::new();
    let mut opened: HashMap<(AccountId, convo_domain::ConversationId), ContactId> = HashMap::new();
    for (index, commit) in log.entries.iter().enumerate() {
        for e in &commit.events {
            match (&commit.stream, &e.event) {
                (StreamRef::Conversation(id), Event::Conversation(ConversationEvent::ConversationOpened(o))) => {
                    opened.insert((commit.account.clone(), id.clone()), o.contact.clone());
                }
                (_, Event::Conversation(ConversationEvent::ContactRequested { contact, channel, handle, .. })) => {
                    let key = (commit.account.clone(), Identity { channel: channel.clone(), handle: handle.clone() });
                    let (before, first) = made.entry(key).or_insert_with(|| (contact.clone(), index)).clone();
                    if before != *contact {
                        let at = |i: usize| {
                            format!("log entry {} ({}, epoch {})", i + 1, log.entries[i].stream.path(), log.epochs[i])
                        };
                        return Some(format!(
                            "the engine made two contacts for one handle: {before} at {}, then {contact} at {}",
                            at(first),
                            at(index)
                        ));
                    }
                }
                (_, Event::Contact(ContactEvent::ContactDefined(spec))) => {
                    for identity in &spec.identities {
                        booked.insert((commit.account.clone(), identity.clone()), spec.id.clone());
                    }
                }
                _ => {}
            }
        }
    }
    for (key, (contact, _)) in &made {
        if booked.get(key) != Some(contact) {
            return Some(format!("contact {contact}, made for a handle, is not in the book with it"));
        }
    }
    for s in sent {
        let envelope = &s.input.envelope;
        let Command::ReceiveMessage(m) = &envelope.command else { continue };
        let Some(handle) = &m.handle else { continue };
        let identity = Identity { channel: m.channel.clone(), handle: handle.clone() };
        let holder = booked.get(&(envelope.account.clone(), identity));
        let named = opened.get(&(envelope.account.clone(), m.conversation.clone()));
        if let (Some(named), Some(holder)) = (named, holder)
            && named != holder
        {
            return Some(format!(
                "conversation {} was opened by a handle for contact {named}, but the book gives the handle to {holder}",
                m.conversation
            ));
        }
    }
    None
}

pub fn run(options: FaultOptions) -> Result<FaultReport, Box<FaultFailure>> {
    let (mut sim, target, recovered) = Sim::new(options).run()?;
    let live = std::mem::take(sim.machine(target).world_mut());
    let fail = |what: String| sim.fail(what);
    let log = &sim.log;

    // At most one owner decides at any instant the log can observe: no
    // commit of a deposed owner after its successor's first.
    let mut newest = 0;
    for (index, epoch) in log.epochs.iter().enumerate() {
        if *epoch < newest {
            return Err(fail(format!(
                "a deposed owner committed after its successor: log entry {} ({} of {}) was appended under \
                 epoch {epoch}, after entries of epoch {newest}",
                index + 1,
                log.entries[index].command,
                log.entries[index].stream.path()
            )));
        }
        newest = newest.max(*epoch);
    }

    // No aggregate holds a command id twice: each command, and each deadline's tick, once.
    let mut seen: HashMap<(Key, CommandId), u64> = HashMap::new();
    for (index, commit) in log.entries.iter().enumerate() {
        let key = (commit.account.clone(), commit.stream.clone());
        if let Some(first) = seen.insert((key, commit.command.clone()), index as u64 + 1) {
            return Err(fail(format!(
                "command {} is in the log twice, at {first} and {} ({})",
                commit.command,
                index + 1,
                commit.stream.path()
            )));
        }
    }
    // Every answer agrees with the log.
    for sent in &sim.sent {
        let envelope = &sent.input.envelope;
        let place = seen.get(&(key_of(envelope), envelope.id.clone())).copied();
        match (&sent.answer, place) {
            (None, _) => return Err(fail(format!("command {} was never answered", envelope.id))),
            (Some(Ok(Outcome::Committed { log_seq, commit })), place)
                if place != Some(*log_seq) || log.entries.get((*log_seq - 1) as usize) != Some(commit) =>
            {
                return Err(fail(format!(
                    "command {} was acknowledged at {log_seq}, but the log holds it at {place:?}",
                    envelope.id
                )));
            }
            (Some(Ok(Outcome::Duplicate { .. })), None) => {
                return Err(fail(format!("command {} was called a repeat, but it is not in the log", envelope.id)));
            }
            (Some(Ok(Outcome::Refused(_) | Outcome::Nothing)), Some(at)) => {
                return Err(fail(format!("command {} was refused, yet the log holds it at {at}", envelope.id)));
            }
            _ => {}
        }
    }
    // Every acknowledgement any instance gave, across handovers, names the command's one place.
    for (token, log_seq, commit) in &sim.acks {
        let envelope = &sim.sent[*token].input.envelope;
        let place = seen.get(&(key_of(envelope), envelope.id.clone())).copied();
        if place != Some(*log_seq) || log.entries.get((*log_seq - 1) as usize) != Some(commit) {
            return Err(fail(format!(
                "command {} was acknowledged at {log_seq} by an owner, but the log holds it at {place:?}",
                envelope.id
            )));
        }
    }
    if let Some(why) = one_contact_per_handle(log, &sim.sent) {
        return Err(fail(why));
    }
    // A fresh recovery equals the live state; no deadline is left behind.
    if let Some(difference) = live.difference_from(&recovered) {
        return Err(fail(format!("the live state differs from a recovery from the log: {difference}")));
    }
    if let Some((account, id, deadline)) = recovered.overdue(sim.now).first() {
        return Err(fail(format!("{account}/{id} has a deadline at {deadline} that never fired")));
    }
    // The model of the rules agrees with what the log holds, at its instants.
    let mut model = Model::new(workload::model_rules());
    let by_id: HashMap<(Key, CommandId), &Sent> =
        sim.sent.iter().map(|s| ((key_of(&s.input.envelope), s.input.envelope.id.clone()), s)).collect();
    let mut steps: BTreeMap<(Timestamp, u64), (Option<Input>, Vec<Record>)> = BTreeMap::new();
    let mut order = 0;
    for commit in &log.entries {
        order += 1;
        let key = ((commit.account.clone(), commit.stream.clone()), commit.command.clone());
        let input = by_id.get(&key).map(|s| Input { at: commit.at, ..s.input.clone() });
        steps.insert((commit.at, order), (input, Record::of_commit(commit)));
    }
    for sent in
        sim.sent.iter().filter(|s| !seen.contains_key(&(key_of(&s.input.envelope), s.input.envelope.id.clone())))
    {
        order += 1;
        let records = match &sent.answer {
            Some(Ok(Outcome::Refused(Refusal::Rejected(r)))) => vec![Record::Rejected {
                at: sent.at,
                account: sent.input.envelope.account.clone(),
                command: sent.input.envelope.id.clone(),
                kind: sent.input.envelope.command.type_name(),
                code: r.code(),
                reason: r.to_string(),
                line: None,
            }],
            _ => Vec::new(),
        };
        steps.insert((sent.at, order), (Some(Input { at: sent.at, ..sent.input.clone() }), records));
    }
    for (input, records) in steps.values() {
        model.observe(input.as_ref(), records);
    }
    let agreement = model.check().map_err(|d| {
        let mut text = format!("the log disagrees with the model of the rules:\n{d}");
        let named: Vec<&convo_domain::ConversationId> =
            [&d.first.0, &d.first.1].into_iter().flatten().map(|(_, id, _)| id).collect();
        for id in named {
            text.push_str(&format!("\n  the log of {id}, with each client command's intended instant:"));
            for commit in log.entries.iter().filter(|c| c.stream == StreamRef::Conversation(id.clone())) {
                let key = ((commit.account.clone(), commit.stream.clone()), commit.command.clone());
                let intended = by_id.get(&key).map_or(String::new(), |s| format!(" (meant for {})", s.input.at));
                for line in commit.json_lines() {
                    text.push_str(&format!("\n    {line}{intended}"));
                }
            }
        }
        fail(text)
    })?;
    Ok(FaultReport { seed: options.seed, stats: sim.stats, agreement: agreement.to_string() })
}
