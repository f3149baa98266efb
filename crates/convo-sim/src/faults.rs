//! Seeded fault simulation (TigerBeetle's VOPR idea): the engine's partition
//! machine, pipelined as in `serve`, driven by a seeded random day over an
//! in-memory log that delays, reorders and fails appends, loses
//! acknowledgements, lets a phantom second writer win races, goes
//! unavailable for a while, and crash-restarts the partition from the log.
//! The seed decides every one of them, so a failing seed replays exactly.
//!
//! An auditor then checks what must hold whatever the faults:
//! - every acknowledged command is in the log exactly once, at the place its
//!   reply named; every refusal (and every "nothing") committed nothing;
//! - no aggregate holds a command id twice (so no deadline fired twice), and
//!   after the run no open conversation has a deadline left unfired;
//! - a fresh recovery from the log equals the live state;
//! - the independent model of the rules agrees with the log;
//! - appends in flight never exceeded the machine's limit.
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
use convo_engine::machine::{Failure, IoId, Machine, MachineConfig, Origin, Outcome, Output};
use convo_engine::{Refusal, World};
use convo_store::{LogItem, StoreError, StoredCommit};
use convo_wire::{Commit, StreamRef};

use crate::model::Model;
use crate::workload::{self, RandomDay, Rng};
use crate::{Driver, Input, Record};

/// The most scheduler steps one run may take before it is declared stuck.
pub const STEPS_MAX: u64 = 50_000_000;
/// The longest an outage lasts, in scheduler steps.
pub const OUTAGE_STEPS_MAX: u64 = 200;
/// The longest an append or load is held back, in scheduler steps.
pub const DELAY_STEPS_MAX: u64 = 40;

/// What one run is made of.
#[derive(Debug, Clone, Copy)]
pub struct FaultOptions {
    pub seed: u64,
    pub conversations: u32,
    /// Deliberately break the store: appends ignore their expected sequence
    /// (the optimistic-concurrency check). The auditor must catch it.
    pub break_expectation: bool,
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
}

impl fmt::Display for FaultStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} inputs, {} commits; faults: {} failed appends, {} lost acks, {} phantom writes, {} outages, {} crashes, \
             {} reordered; {} conflicts, {} overloaded, {} retries; up to {}/{} appends in flight",
            self.inputs,
            self.commits,
            self.failed_appends,
            self.lost_acks,
            self.phantom_writes,
            self.outages,
            self.crashes,
            self.reordered,
            self.conflicts,
            self.overloaded,
            self.retries,
            self.io_in_flight_max,
            self.io_in_flight_limit
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
            "  reproduce with: convo simulate --random --faults --seed {} --conversations {}{}",
            self.options.seed,
            self.options.conversations,
            if self.options.break_expectation { " --break-expectation" } else { "" }
        )
    }
}

impl std::error::Error for FaultFailure {}

type Key = (AccountId, StreamRef);

/// The log: what the broker would hold, with its per-aggregate last sequence.
#[derive(Debug, Default)]
struct Log {
    entries: Vec<Commit>,
    last: HashMap<Key, u64>,
    by_key: HashMap<Key, Vec<u64>>,
    ignore_expectation: bool,
}

impl Log {
    fn append(&mut self, commit: &Commit, expected: u64) -> Result<u64, StoreError> {
        let key = (commit.account.clone(), commit.stream.clone());
        let actual = self.last.get(&key).copied().unwrap_or(0);
        if actual != expected && !self.ignore_expectation {
            return Err(StoreError::Conflict { stream: commit.stream.path(), expected });
        }
        self.entries.push(commit.clone());
        let seq = self.entries.len() as u64;
        self.last.insert(key.clone(), seq);
        self.by_key.entry(key).or_default().push(seq);
        Ok(seq)
    }

    fn item(&self, seq: u64) -> LogItem {
        let commit = self.entries[(seq - 1) as usize].clone();
        Ok(StoredCommit { stream_seq: seq, subject: commit.subject(convo_wire::DEFAULT_PREFIX), commit })
    }

    fn load(&self, key: &Key) -> Vec<LogItem> {
        self.by_key.get(key).map_or_else(Vec::new, |seqs| seqs.iter().map(|s| self.item(*s)).collect())
    }
}

/// An append or load on its way, due at a scheduler step.
#[derive(Debug)]
enum Op {
    Append { io: IoId, commit: Commit, expected: u64 },
    Load { io: IoId, key: Key },
}

/// A client's command and what it has come to.
#[derive(Debug)]
struct Sent {
    input: Input,
    /// The instant of its latest attempt.
    at: Timestamp,
    /// The final answer, once there is one.
    answer: Option<Result<Outcome, Failure>>,
}

struct Sim {
    options: FaultOptions,
    rng: Rng,
    day: RandomDay,
    machine: Machine,
    config: MachineConfig,
    log: Log,
    /// Log entries the workload has seen.
    observed: usize,
    network: Vec<(u64, Op)>,
    /// Client commands, by token; and the aggregates with one unanswered.
    sent: Vec<Sent>,
    unanswered: HashMap<Key, usize>,
    retry: VecDeque<usize>,
    /// The latest instant fed to the machine.
    now: Timestamp,
    /// The latest instant the machine's timers were fired at.
    timed_out: Timestamp,
    outage_until: u64,
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
        let log = Log { ignore_expectation: options.break_expectation, ..Log::default() };
        let stats = FaultStats { io_in_flight_limit: config.io_in_flight_max, ..FaultStats::default() };
        Self {
            options,
            rng,
            day: RandomDay::new(options.seed, options.conversations),
            machine: Machine::new(config),
            config,
            log,
            observed: 0,
            network: Vec::new(),
            sent: Vec::new(),
            unanswered: HashMap::new(),
            retry: VecDeque::new(),
            now: Timestamp::from_millis(i64::MIN),
            timed_out: Timestamp::from_millis(i64::MIN),
            outage_until: 0,
            stats,
            step: 0,
            trace: std::env::var("CONVO_FAULTS_TRACE").ok(),
        }
    }

    fn fail(&self, what: impl Into<String>) -> Box<FaultFailure> {
        Box::new(FaultFailure { options: self.options, what: what.into(), stats: self.stats })
    }

    /// Takes the machine's outputs: I/O onto the network, replies to clients.
    fn drain(&mut self) -> Result<(), Box<FaultFailure>> {
        self.stats.io_in_flight_max = self.stats.io_in_flight_max.max(self.machine.io_in_flight());
        if self.machine.io_in_flight() > self.config.io_in_flight_max {
            return Err(self.fail(format!(
                "{} appends and loads in flight, over the limit of {}",
                self.machine.io_in_flight(),
                self.config.io_in_flight_max
            )));
        }
        while let Some(output) = self.machine.poll() {
            match output {
                Output::Append { io, commit, expected } => {
                    let due = self.step + self.rng.range(0, DELAY_STEPS_MAX);
                    self.network.push((due, Op::Append { io, commit, expected }));
                }
                Output::Load { io, account, stream } => {
                    let due = self.step + self.rng.range(0, DELAY_STEPS_MAX);
                    self.network.push((due, Op::Load { io, key: (account, stream) }));
                }
                Output::Reply { origin, envelope, result, now } => {
                    if let Some(trace) = &self.trace
                        && key_of(&envelope).1.path().ends_with(trace.as_str())
                    {
                        let shown = result.as_ref().map(|o| match o {
                            Outcome::Committed { log_seq, .. } => format!("committed {log_seq}"),
                            other => format!("{other:?}"),
                        });
                        eprintln!("step {}: {origin:?} {} at {now}: {shown:?}", self.step, envelope.id);
                    }
                    match (origin, result) {
                        (Origin::Request(token), result) => self.answer(token as usize, result),
                        // The engine's own ticks are never refused by a rule, whatever the faults.
                        (Origin::Timer, Ok(Outcome::Refused(refusal))) => {
                            return Err(self.fail(format!("the tick {} was refused: {refusal}", envelope.id)));
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }

    fn answer(&mut self, token: usize, result: Result<Outcome, Failure>) {
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

    /// Delivers one network operation (chosen at random among those due).
    fn deliver(&mut self) -> bool {
        let due: Vec<usize> = (0..self.network.len()).filter(|i| self.network[*i].0 <= self.step).collect();
        if due.is_empty() {
            return false;
        }
        let pick = due[(self.rng.next_u64() % due.len() as u64) as usize];
        if pick != due[0] {
            self.stats.reordered += 1;
        }
        let (_, op) = self.network.swap_remove(pick);
        let down = self.step < self.outage_until;
        if let Some(trace) = self.trace.clone() {
            match &op {
                Op::Append { commit, expected, .. } if commit.stream.path().ends_with(trace.as_str()) => eprintln!(
                    "step {}: deliver append {} {:?} expected {expected} (log last {:?})",
                    self.step,
                    commit.command,
                    commit.events.iter().map(|e| (e.seq, e.event.type_name())).collect::<Vec<_>>(),
                    self.log.last.get(&(commit.account.clone(), commit.stream.clone()))
                ),
                Op::Load { key, .. } if key.1.path().ends_with(trace.as_str()) => {
                    eprintln!("step {}: deliver load (down {down}) {:?}", self.step, self.log.by_key.get(key))
                }
                _ => {}
            }
        }
        match op {
            Op::Append { io, commit, expected } => {
                let result = if down || self.rng.chance(3) {
                    self.stats.failed_appends += 1;
                    Err(StoreError::Unavailable("simulated: the append did not reach the broker".into()))
                } else {
                    if self.rng.chance(4) {
                        // A second writer decided the same command first and won the race.
                        if self.log.append(&commit, expected).is_ok() {
                            self.stats.phantom_writes += 1;
                        }
                    }
                    let written = self.log.append(&commit, expected);
                    match written {
                        Ok(_) if self.rng.chance(3) => {
                            self.stats.lost_acks += 1;
                            Err(StoreError::Unavailable("simulated: written, but the acknowledgement was lost".into()))
                        }
                        Err(StoreError::Conflict { .. }) => {
                            self.stats.conflicts += 1;
                            written
                        }
                        other => other,
                    }
                };
                if result.is_ok() {
                    self.stats.commits += 1;
                }
                self.machine.handle_appended(io, commit, result);
            }
            Op::Load { io, key } => {
                let result = if down || self.rng.chance(2) {
                    Err(StoreError::Unavailable("simulated: the load timed out".into()))
                } else {
                    Ok(self.log.load(&key))
                };
                self.machine.handle_loaded(io, result);
            }
        }
        true
    }

    /// The partition dies: what was on the network either landed or not, no
    /// reply comes, and a new machine recovers from the log.
    fn crash(&mut self) {
        self.stats.crashes += 1;
        if self.trace.is_some() {
            eprintln!("step {}: crash", self.step);
        }
        for (_, op) in std::mem::take(&mut self.network) {
            if let Op::Append { commit, expected, .. } = op
                && self.rng.chance(50)
            {
                let _ = self.log.append(&commit, expected);
            }
        }
        for token in 0..self.sent.len() {
            if self.sent[token].answer.is_none() && !self.retry.contains(&token) {
                self.retry.push_back(token);
            }
        }
        self.machine = recover(&self.log, self.config);
        if self.now > Timestamp::from_millis(i64::MIN) {
            self.machine.handle_timeout(self.now);
            self.timed_out = self.timed_out.max(self.now);
        }
    }

    /// Sends a client's command (again): at its own instant, or, when the
    /// clock has passed it (a retry, or a command held behind another), just
    /// after the latest instant, as the wall clock would stamp it — so a
    /// timer that fired meanwhile really came first.
    /// The clock read at a timeout counts as passed too: timers due then have
    /// fired, so a command stamped at that instant would come after them
    /// against the ordering rule (inputs before timers at the same instant).
    fn send(&mut self, token: usize) {
        let intended = self.sent[token].input.at;
        let passed = intended < self.now || intended <= self.timed_out;
        let at = if passed { Timestamp::from_millis(self.now.max(self.timed_out).millis() + 1) } else { intended };
        self.now = at;
        self.sent[token].at = at;
        let envelope = self.sent[token].input.envelope.clone();
        self.machine.handle_request(token as u64, envelope, at);
    }

    /// Feeds the next thing in time order, if it may go now.
    fn feed(&mut self) -> bool {
        if !self.machine.wants_requests() {
            return false;
        }
        if let Some(token) = self.retry.pop_front() {
            self.stats.retries += 1;
            self.send(token);
            return true;
        }
        // The clock does not pass a command still waiting for its answer: its
        // retry must not find hours gone by.
        let waiting = self.sent.iter().filter(|s| s.answer.is_none()).map(|s| s.at).min();
        let timer = self.machine.poll_timeout().filter(|t| waiting.is_none_or(|w| *t < w));
        let late = |at: Timestamp, now: Timestamp| if at < now { Timestamp::from_millis(now.millis() + 1) } else { at };
        let input_at = self.day.next_at().map(|at| late(at, self.now));
        match (input_at, timer) {
            (None, None) => false,
            (Some(i), Some(t)) if t < i => {
                self.timeout(t);
                true
            }
            (None, Some(t)) => {
                self.timeout(t);
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
                self.sent.push(Sent { at: input.at, input, answer: None });
                self.send(self.sent.len() - 1);
                true
            }
        }
    }

    fn timeout(&mut self, at: Timestamp) {
        self.now = self.now.max(at);
        self.timed_out = self.timed_out.max(self.now);
        self.machine.handle_timeout(self.now);
    }

    fn run(mut self) -> Result<(Self, World), Box<FaultFailure>> {
        loop {
            self.step += 1;
            self.stats.steps = self.step;
            if self.step > STEPS_MAX {
                return Err(self.fail(format!("no end after {STEPS_MAX} steps: the run is stuck")));
            }
            self.drain()?;
            self.observe();
            if self.rng.range(0, 9_999) < 3 {
                self.crash();
                continue;
            }
            if self.step >= self.outage_until && self.rng.range(0, 9_999) < 5 {
                self.stats.outages += 1;
                self.outage_until = self.step + self.rng.range(1, OUTAGE_STEPS_MAX);
            }
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
            if self.network.is_empty() && self.retry.is_empty() && self.machine.is_idle() {
                if self.day.next_at().is_none() && self.machine.poll_timeout().is_none() {
                    break;
                }
                if self.unanswered.is_empty() {
                    continue;
                }
                return Err(self.fail("commands wait for an answer that never comes"));
            }
        }
        // Settle with the faults over: a last reading of the clock lets routing
        // retry what a lost acknowledgement hid, until nothing changes.
        for _ in 0..1_000 {
            let before = self.log.entries.len();
            self.machine.handle_timeout(self.now);
            while let Some(output) = self.machine.poll() {
                match output {
                    Output::Append { io, commit, expected } => {
                        let result = self.log.append(&commit, expected);
                        self.machine.handle_appended(io, commit, result);
                    }
                    Output::Load { io, account, stream } => {
                        let items = self.log.load(&(account, stream));
                        self.machine.handle_loaded(io, Ok(items));
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
        Ok((self, world))
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
pub fn run(options: FaultOptions) -> Result<FaultReport, Box<FaultFailure>> {
    let (sim, recovered) = Sim::new(options).run()?;
    let fail = |what: String| sim.fail(what);
    let log = &sim.log;

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
    // A fresh recovery equals the live state; no deadline is left behind.
    if let Some(difference) = sim.machine.world().difference_from(&recovered) {
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
