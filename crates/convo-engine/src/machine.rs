//! One partition of the engine as a sans-IO state machine.
//!
//! The machine owns a [`World`] (the partition's aggregates, floor and timer
//! queue) and everything between a command and its durable commit: the
//! ordering rule (inputs before due timers), one command in flight per
//! aggregate with a bounded mailbox behind it, the retry-on-conflict loop,
//! routing one assignment at a time, timer re-arming, eviction of closed idle
//! conversations, and every limit. It performs no I/O, owns no task and reads
//! no clock (the shape of quinn-proto's `Connection`):
//!
//! - inputs: [`Machine::handle_request`], [`Machine::handle_timeout`] (the
//!   clock), [`Machine::handle_appended`] and [`Machine::handle_loaded`] (what
//!   the store answered), [`Machine::recover`] (the log at start);
//! - outputs: [`Machine::poll`] yields appends to make, aggregates to load and
//!   replies to send; [`Machine::poll_timeout`] says when to wake it next.
//!
//! Drivers turn outputs into I/O: `serve` (JetStream, wall clock,
//! pipelined), `Engine::replay` (JetStream, virtual time, one step at a time),
//! the simulator (commits at once), and the fault simulator (an in-memory
//! store that delays, reorders, fails and crashes, seeded).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use convo_domain::contact::Identity;
use convo_domain::{AccountId, Command, CommandEnvelope, ContactId, Timestamp};
use convo_store::{LogItem, StoreError};
use convo_wire::{Commit, StreamRef};

use crate::core::{Decided, Refusal, Skipped, World, stream_of};

/// Appends and loads outstanding at once (per partition).
pub const IO_IN_FLIGHT_MAX: usize = 256;
/// Commands waiting behind one aggregate's command in flight.
pub const MAILBOX_COMMANDS_MAX: usize = 64;
/// Open conversations one partition holds; a command opening one more is
/// answered `overloaded`.
pub const OPEN_CONVERSATIONS_MAX: usize = 1_000_000;
/// Conversations (open and closed) kept in memory before closed ones are
/// evicted early, oldest first.
pub const LOADED_CONVERSATIONS_MAX: usize = 1_000_000;
/// A conversation closed this long ago with nothing since leaves memory in
/// `serve` (late survey answers and repeated commands read it back).
pub const EVICT_CLOSED_AFTER_SECS: u64 = 15 * 60;
/// How many times a command is decided again after losing a race to append.
pub const CONFLICT_RETRIES_MAX: u32 = 5;
/// How many skipped messages the machine lists (all are counted).
pub const SKIPPED_LISTED_MAX: usize = 1_000;

/// An aggregate: the unit of one-command-at-a-time.
pub type Key = (AccountId, StreamRef);

/// Who hears of a command's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// A client's request, named by the driver's token.
    Request(u64),
    /// A tick the machine made for a due timer.
    Timer,
    /// An assignment routing proposed.
    Routing,
    /// A command the engine owes another aggregate after a commit.
    FollowUp,
}

/// Names one append or load the machine asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IoId(pub u64);

/// What came of one command.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Appended at `log_seq`.
    Committed { log_seq: u64, commit: Commit },
    /// Valid, but nothing to record.
    Nothing,
    /// A repeated command id: its original events.
    Duplicate { first_seq: u64, last_seq: u64 },
    /// A broken rule (nothing recorded).
    Refused(Refusal),
}

/// Why a command was not executed (nothing was recorded for it by this
/// attempt; the same command id may be sent again).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// A limit is reached: retry later.
    #[error("{0}; retry later")]
    Overloaded(String),
    /// The store did not answer or refused the append.
    #[error("{0}")]
    Unavailable(String),
    /// Other writers kept winning the race for this aggregate.
    #[error("still conflicting after {CONFLICT_RETRIES_MAX} retries on {0}")]
    Contention(String),
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Append `commit` if its aggregate's last commit is at `expected`; hand
    /// the commit back with the result to [`Machine::handle_appended`].
    Append { io: IoId, commit: Commit, expected: u64 },
    /// Read every message of one aggregate; answer with [`Machine::handle_loaded`].
    Load { io: IoId, account: AccountId, stream: StreamRef },
    /// Tell `origin` what came of its command.
    Reply { origin: Origin, envelope: Box<CommandEnvelope>, now: Timestamp, result: Result<Outcome, Failure> },
}

/// The machine's settings.
#[derive(Debug, Clone, Copy)]
pub struct MachineConfig {
    pub io_in_flight_max: usize,
    pub mailbox_commands_max: usize,
    pub open_conversations_max: usize,
    pub loaded_conversations_max: usize,
    /// Closed conversations idle this long leave memory (`None`: only when
    /// over `loaded_conversations_max`).
    pub evict_closed_after_ms: Option<i64>,
    /// Stamp a tick with its deadline — the instant the rule fell due — rather
    /// than with the clock that found it due (a timer fired late, after an
    /// outage or a takeover, still says when it was due). Every driver does.
    pub tick_at_deadline: bool,
}

impl MachineConfig {
    /// The service's settings: pipelined, ticks at their deadlines.
    pub fn serve() -> Self {
        Self {
            io_in_flight_max: IO_IN_FLIGHT_MAX,
            mailbox_commands_max: MAILBOX_COMMANDS_MAX,
            open_conversations_max: OPEN_CONVERSATIONS_MAX,
            loaded_conversations_max: LOADED_CONVERSATIONS_MAX,
            evict_closed_after_ms: Some(EVICT_CLOSED_AFTER_SECS as i64 * 1000),
            tick_at_deadline: true,
        }
    }

    /// Virtual time, one command at a time: the exact order of the simulator,
    /// so `simulate` and `replay-traffic` give the same bytes.
    pub fn stepwise() -> Self {
        Self { io_in_flight_max: 1, evict_closed_after_ms: None, ..Self::serve() }
    }
}

/// What the machine has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MachineStats {
    pub requests: u64,
    pub committed: u64,
    pub overloaded: u64,
    pub conflicts: u64,
    pub evicted: u64,
    /// Messages of the log that could not be applied (see [`Machine::skipped`]).
    pub skipped: u64,
    /// The most appends and loads that were outstanding at once.
    pub io_in_flight_max: usize,
    /// Atomic batches the driver's group commit wrote, and the commits in
    /// them (`serve` fills these in; the machine itself never batches).
    pub batches: u64,
    pub batched_commits: u64,
}

#[derive(Debug)]
struct Work {
    envelope: CommandEnvelope,
    now: Timestamp,
    origin: Origin,
    attempts: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// Nothing under way; the mailbox's head waits for room.
    Waiting,
    Appending,
    Loading,
}

/// An aggregate with work under way or waiting.
#[derive(Debug)]
struct Slot {
    state: SlotState,
    mailbox: VecDeque<Work>,
}

#[derive(Debug)]
enum Io {
    Append { key: Key, work: Box<Work> },
    Load { key: Key },
}

/// One partition of the engine (see the module's documentation).
#[derive(Debug)]
pub struct Machine {
    world: World,
    config: MachineConfig,
    slots: HashMap<Key, Slot>,
    /// Aggregates whose mailbox head can start when there is room, in order.
    runnable: VecDeque<Key>,
    io: HashMap<IoId, Io>,
    next_io: u64,
    outputs: VecDeque<Output>,
    /// A routing assignment is under way.
    routing: bool,
    /// Routing proposed something it could not do: wait for the next step.
    routing_stuck: bool,
    /// A follow-up is under way; one that failed waits for the next step.
    following: bool,
    following_stuck: bool,
    /// Timers due at or before this instant may fire.
    horizon: Option<Timestamp>,
    /// The latest instant the machine was given (routing's assignments are
    /// stamped with it; none before the first input or clock reading).
    now: Timestamp,
    /// Conversations whose due timer found them busy: re-armed when free.
    tick_wanted: HashSet<Key>,
    /// Aggregates whose last append has an unknown outcome (timed out, ack
    /// lost): read back from the log before their next decision, so no
    /// command is decided from a state the log may have moved past.
    in_doubt: HashSet<Key>,
    skipped: Vec<Skipped>,
    stats: MachineStats,
    /// Contacts made for new handles by decided commits the world has not
    /// applied (under way, or of unknown outcome), by account: one handle
    /// is one contact, so another conversation's message naming the handle
    /// meanwhile names the same contact, and asks for it too (the append
    /// that made it may yet fail). A claim lasts until its aggregate's
    /// outcome is known: applied, refused, or read back from the log.
    claims: BTreeMap<AccountId, BTreeMap<Identity, ContactId>>,
    /// The claims each aggregate's commit made.
    claimed_by: HashMap<Key, Vec<Identity>>,
}

impl Machine {
    pub fn new(config: MachineConfig) -> Self {
        Self::with_world(World::new(), config)
    }

    /// A machine over a world already recovered.
    pub fn with_world(world: World, config: MachineConfig) -> Self {
        Self {
            world,
            config,
            slots: HashMap::new(),
            runnable: VecDeque::new(),
            io: HashMap::new(),
            next_io: 0,
            outputs: VecDeque::new(),
            routing: false,
            routing_stuck: false,
            following: false,
            following_stuck: false,
            horizon: None,
            now: Timestamp::from_millis(i64::MIN),
            tick_wanted: HashSet::new(),
            in_doubt: HashSet::new(),
            skipped: Vec::new(),
            stats: MachineStats::default(),
            claims: BTreeMap::new(),
            claimed_by: HashMap::new(),
        }
    }

    // ------------------------------------------------------------ getters

    pub fn world(&self) -> &World {
        &self.world
    }

    /// The world, for tests and tools that inspect or take it.
    pub fn world_mut(&mut self) -> &mut World {
        &mut self.world
    }

    pub fn config(&self) -> &MachineConfig {
        &self.config
    }

    pub fn stats(&self) -> MachineStats {
        self.stats
    }

    /// The first [`SKIPPED_LISTED_MAX`] messages of the log that could not be applied.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// Appends and loads outstanding.
    pub fn io_in_flight(&self) -> usize {
        self.io.len()
    }

    /// Whether the machine has room for another request now (the driver
    /// leaves requests in its own bounded queue otherwise).
    pub fn wants_requests(&self) -> bool {
        self.io.len() < self.config.io_in_flight_max && self.runnable.len() < self.config.io_in_flight_max
    }

    /// Nothing under way, nothing waiting, nothing to send.
    pub fn is_idle(&self) -> bool {
        self.io.is_empty() && self.slots.is_empty() && self.outputs.is_empty()
    }

    /// When the machine next wants [`Machine::handle_timeout`]: the earliest
    /// timer (it may be in the past).
    pub fn poll_timeout(&mut self) -> Option<Timestamp> {
        self.world.next_timer()
    }

    /// The next thing the driver must do.
    pub fn poll(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    // ------------------------------------------------------------ inputs

    /// Applies one message of the log at start (recovery): a commit, or a
    /// message that is not one. What cannot be applied is skipped and listed.
    pub fn recover(&mut self, item: LogItem) {
        if let Err(skipped) = self.world.apply_item(item) {
            self.skip(skipped);
        }
    }

    fn skip(&mut self, skipped: Skipped) {
        self.stats.skipped += 1;
        if self.skipped.len() < SKIPPED_LISTED_MAX {
            self.skipped.push(skipped);
        }
    }

    /// A client's command, stamped `now` by the driver.
    pub fn handle_request(&mut self, token: u64, envelope: CommandEnvelope, now: Timestamp) {
        self.stats.requests += 1;
        self.now = self.now.max(now);
        self.routing_stuck = false;
        self.following_stuck = false;
        self.enqueue(Work { envelope, now, origin: Origin::Request(token), attempts: 0 });
        self.pump();
    }

    /// The clock reads `now`: timers due by then may fire, and closed idle
    /// conversations may leave memory.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.now = self.now.max(now);
        self.horizon = Some(self.horizon.map_or(now, |h| h.max(now)));
        self.routing_stuck = false;
        self.following_stuck = false;
        if let Some(after) = self.config.evict_closed_after_ms {
            let before = Timestamp::from_millis(now.millis().saturating_sub(after));
            let slots = &self.slots;
            let busy = |a: &AccountId, c: &convo_domain::ConversationId| {
                slots.contains_key(&(a.clone(), StreamRef::Conversation(c.clone())))
            };
            self.stats.evicted += self.world.evict_closed(before, self.config.loaded_conversations_max, busy) as u64;
        }
        self.pump();
    }

    /// The store's answer to an [`Output::Append`], with the commit handed back.
    pub fn handle_appended(&mut self, io: IoId, commit: Commit, result: Result<u64, StoreError>) {
        let Some(Io::Append { key, work }) = self.io.remove(&io) else {
            debug_assert!(false, "an answer to an append that is not outstanding ({io:?})");
            return;
        };
        let mut work = *work;
        match result {
            Ok(log_seq) => {
                if let Err(reason) = self.world.apply_logged(&commit, log_seq) {
                    // Our own decision no longer fits what the log holds: never apply half of it.
                    self.skip(Skipped { seq: log_seq, subject: String::new(), reason });
                }
                self.stats.committed += 1;
                self.reply(work, Ok(Outcome::Committed { log_seq, commit }));
                self.release(&key);
            }
            Err(StoreError::Conflict { .. }) if work.attempts < CONFLICT_RETRIES_MAX => {
                // Another writer got there first: learn what it wrote, then decide again.
                self.stats.conflicts += 1;
                work.attempts += 1;
                self.load(key, work);
            }
            Err(StoreError::Conflict { stream, .. }) => {
                self.in_doubt.insert(key.clone());
                self.reply(work, Err(Failure::Contention(stream)));
                self.release(&key);
            }
            Err(e) => {
                if work.origin == Origin::Timer {
                    self.tick_wanted.insert(key.clone());
                }
                self.in_doubt.insert(key.clone());
                self.reply(work, Err(Failure::Unavailable(e.to_string())));
                self.release(&key);
            }
        }
        self.pump();
    }

    /// The store's answer to an [`Output::Load`].
    pub fn handle_loaded(&mut self, io: IoId, result: Result<Vec<LogItem>, StoreError>) {
        let Some(Io::Load { key }) = self.io.remove(&io) else {
            debug_assert!(false, "an answer to a load that is not outstanding ({io:?})");
            return;
        };
        match result {
            Ok(items) => {
                self.in_doubt.remove(&key);
                for skipped in self.world.reload(&key.0, &key.1, items) {
                    self.skip(skipped);
                }
                // The command that waited for the load is next for its aggregate,
                // after any timer the load showed due before it.
                self.make_ready(&key, true);
            }
            Err(e) => {
                // Whatever made the load necessary (a lost race, an unknown
                // outcome, an eviction) still holds: the next command loads again.
                self.in_doubt.insert(key.clone());
                let work = self.slots.get_mut(&key).and_then(|s| s.mailbox.pop_front());
                if let Some(work) = work {
                    if work.origin == Origin::Timer {
                        self.tick_wanted.insert(key.clone());
                    }
                    self.reply(work, Err(Failure::Unavailable(e.to_string())));
                }
                self.release(&key);
            }
        }
        self.pump();
    }

    // ------------------------------------------------------------ the loop

    /// Puts work in its aggregate's mailbox (or refuses it when full).
    fn enqueue(&mut self, work: Work) {
        let key = key_of(&work.envelope);
        let max = self.config.mailbox_commands_max;
        let slot = self
            .slots
            .entry(key.clone())
            .or_insert_with(|| Slot { state: SlotState::Waiting, mailbox: VecDeque::new() });
        if slot.mailbox.len() >= max {
            self.stats.overloaded += 1;
            if work.origin == Origin::Timer {
                self.tick_wanted.insert(key);
            }
            self.reply(work, Err(Failure::Overloaded(format!("{max} commands already wait for this aggregate"))));
            return;
        }
        slot.mailbox.push_back(work);
        if slot.state == SlotState::Waiting && slot.mailbox.len() == 1 {
            self.runnable.push_back(key);
        }
    }

    /// Starts whatever may start, in the order the rules give, while there is room:
    /// 1. timers due before the oldest waiting input (inputs before deadlines);
    /// 2. that input;
    /// 3. routing's next assignment (one at a time);
    /// 4. timers due by the clock.
    fn pump(&mut self) {
        while self.io.len() < self.config.io_in_flight_max {
            if let Some(head_at) = self.runnable.front().map(|key| self.head_at(key)) {
                if self.fire_timer(Timestamp::from_millis(head_at.millis() - 1)) {
                    continue;
                }
                let key = self.runnable.pop_front().expect("a head");
                let slot = self.slots.get_mut(&key).expect("a runnable aggregate has a slot");
                let work = slot.mailbox.pop_front().expect("a runnable aggregate has work");
                if work.origin == Origin::Timer {
                    self.routing_stuck = false;
                }
                self.start(key, work);
                continue;
            }
            if !self.routing
                && !self.routing_stuck
                && self.now > Timestamp::from_millis(i64::MIN)
                && let Some(assign) = self.world.next_assignment()
            {
                self.routing = true;
                let now = self.now;
                self.enqueue(Work { envelope: assign, now, origin: Origin::Routing, attempts: 0 });
                continue;
            }
            if !self.following
                && !self.following_stuck
                && let Some(envelope) = self.world.next_follow_up()
            {
                self.following = true;
                let now = self.now;
                self.enqueue(Work { envelope, now, origin: Origin::FollowUp, attempts: 0 });
                continue;
            }
            let horizon = self.horizon;
            if !horizon.is_some_and(|h| self.fire_timer(h)) {
                break;
            }
        }
        self.stats.io_in_flight_max = self.stats.io_in_flight_max.max(self.io.len());
    }

    fn head_at(&self, key: &Key) -> Timestamp {
        self.slots[key].mailbox.front().map_or(self.now, |w| w.now)
    }

    /// Fires the earliest timer due by `bound`, if any: its tick starts at
    /// once when its conversation is free; a busy conversation's timer is
    /// re-armed when the conversation is free again. True when a tick started.
    fn fire_timer(&mut self, bound: Timestamp) -> bool {
        while let Some((tick, deadline)) = self.world.pop_due_tick(bound) {
            let key = key_of(&tick);
            let now = if self.config.tick_at_deadline { deadline } else { bound.max(deadline) };
            if let Some(slot) = self.slots.get_mut(&key) {
                if slot.state == SlotState::Waiting && slot.mailbox.front().is_some_and(|w| w.now > deadline) {
                    // Commands after the deadline wait for their turn: the tick goes first.
                    slot.mailbox.push_front(Work { envelope: tick, now, origin: Origin::Timer, attempts: 0 });
                    return true;
                }
                self.tick_wanted.insert(key);
                continue;
            }
            self.routing_stuck = false;
            self.slots.insert(key.clone(), Slot { state: SlotState::Waiting, mailbox: VecDeque::new() });
            self.start(key, Work { envelope: tick, now, origin: Origin::Timer, attempts: 0 });
            return true;
        }
        false
    }

    /// Decides one command of a free aggregate: an append, a load first, or
    /// an answer at once.
    fn start(&mut self, key: Key, work: Work) {
        if self.world.is_evicted(&key.0, &key.1) || self.in_doubt.contains(&key) {
            return self.load(key, work);
        }
        if let (StreamRef::Conversation(id), Command::ReceiveMessage(_) | Command::StartOutbound(_)) =
            (&key.1, &work.envelope.command)
            && self.world.conversation(&key.0, id).is_none()
            && self.world.open_conversations() >= self.config.open_conversations_max
        {
            self.stats.overloaded += 1;
            let max = self.config.open_conversations_max;
            self.reply(
                work,
                Err(Failure::Overloaded(format!("this partition already holds {max} open conversations"))),
            );
            return self.release(&key);
        }
        match self.world.decide_claimed(&work.envelope, work.now, self.claims.get(&key.0)) {
            Ok(Decided::Commit(commit)) => {
                self.claim(&key, &commit);
                let expected = self.world.expected(&commit.account, &commit.stream);
                let io = self.next_io();
                self.set_state(&key, SlotState::Appending);
                self.io.insert(io, Io::Append { key, work: Box::new(work) });
                self.outputs.push_back(Output::Append { io, commit, expected });
            }
            Ok(Decided::Nothing) => {
                self.reply(work, Ok(Outcome::Nothing));
                self.release(&key);
            }
            Ok(Decided::Duplicate { first_seq, last_seq }) => {
                self.reply(work, Ok(Outcome::Duplicate { first_seq, last_seq }));
                self.release(&key);
            }
            Err(refusal) => {
                self.reply(work, Ok(Outcome::Refused(refusal)));
                self.release(&key);
            }
        }
    }

    /// Reads an aggregate back before `work` is decided (again).
    fn load(&mut self, key: Key, work: Work) {
        let io = self.next_io();
        self.set_state(&key, SlotState::Loading);
        if let Some(slot) = self.slots.get_mut(&key) {
            slot.mailbox.push_front(work);
        }
        self.io.insert(io, Io::Load { key: key.clone() });
        self.outputs.push_back(Output::Load { io, account: key.0, stream: key.1 });
    }

    fn set_state(&mut self, key: &Key, state: SlotState) {
        let slot = self
            .slots
            .entry(key.clone())
            .or_insert_with(|| Slot { state: SlotState::Waiting, mailbox: VecDeque::new() });
        slot.state = state;
    }

    /// An aggregate's command is finished: the next in its mailbox may start.
    fn release(&mut self, key: &Key) {
        self.make_ready(key, false);
    }

    /// Nothing is under way for an aggregate any more: its timer comes back
    /// if it fell due meanwhile, and its mailbox's head waits for room (at
    /// the front of the line when it already waited for a load).
    fn make_ready(&mut self, key: &Key, first: bool) {
        if !self.in_doubt.contains(key) {
            self.settle_claims(key);
        }
        if self.tick_wanted.remove(key)
            && let StreamRef::Conversation(id) = &key.1
        {
            self.world.rearm(&key.0, id);
        }
        let Some(slot) = self.slots.get_mut(key) else { return };
        slot.state = SlotState::Waiting;
        if slot.mailbox.is_empty() {
            self.slots.remove(key);
        } else if first {
            self.runnable.push_front(key.clone());
        } else {
            self.runnable.push_back(key.clone());
        }
    }

    /// Notes the contacts a decided commit makes for new handles.
    fn claim(&mut self, key: &Key, commit: &Commit) {
        for (contact, identity) in commit.requested_contacts() {
            let claims = self.claims.entry(key.0.clone()).or_default();
            claims.entry(identity.clone()).or_insert_with(|| contact.clone());
            self.claimed_by.entry(key.clone()).or_default().push(identity);
        }
    }

    /// An aggregate's outcome is known (applied, refused, or read back from
    /// the log): the handles its commit claimed are the world's to answer
    /// now (the book, a contact made and owed to it, or nobody).
    fn settle_claims(&mut self, key: &Key) {
        let Some(identities) = self.claimed_by.remove(key) else { return };
        let claimed_by = &self.claimed_by;
        if let Some(claims) = self.claims.get_mut(&key.0) {
            for identity in identities {
                // Another commit not applied yet may name the same contact for it.
                let still = claimed_by.iter().any(|(other, claimed)| other.0 == key.0 && claimed.contains(&identity));
                if !still {
                    claims.remove(&identity);
                }
            }
            if claims.is_empty() {
                self.claims.remove(&key.0);
            }
        }
    }

    fn reply(&mut self, work: Work, result: Result<Outcome, Failure>) {
        if work.origin == Origin::FollowUp {
            self.following = false;
            match &result {
                // Not decided (overloaded, the store unavailable): again at the next step.
                Err(_) => self.following_stuck = true,
                Ok(_) => self.world.follow_up_done(&work.envelope.id),
            }
        }
        if work.origin == Origin::Routing {
            self.routing = false;
            if !matches!(result, Ok(Outcome::Committed { .. })) {
                // The floor and the aggregate disagree: stop rather than loop.
                self.routing_stuck = true;
            }
        }
        self.outputs.push_back(Output::Reply {
            origin: work.origin,
            envelope: Box::new(work.envelope),
            now: work.now,
            result,
        });
    }

    fn next_io(&mut self) -> IoId {
        self.next_io += 1;
        IoId(self.next_io)
    }
}

fn key_of(envelope: &CommandEnvelope) -> Key {
    (envelope.account.clone(), stream_of(&envelope.command))
}

/// A share of the accounts: those whose id hashes to `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub index: usize,
    pub count: usize,
}

impl Partition {
    pub const ALL: Partition = Partition { index: 0, count: 1 };

    /// The partition of an account: 32-bit FNV-1a of its id modulo the
    /// count, as nats-server's `partition()` mapping computes it, so every
    /// instance, every run and the server agree.
    pub fn of(account: &AccountId, count: usize) -> usize {
        convo_store::bus::partition_of(account.as_str(), count)
    }

    pub fn owns(&self, account: &AccountId) -> bool {
        self.count <= 1 || Self::of(account, self.count) == self.index
    }
}

/// Hands one message of the log read at start to the machine of its
/// account's partition (recovery); returns its sequence.
pub fn recover_into(machines: &mut [Machine], item: LogItem) -> u64 {
    let (seq, aggregate) = convo_store::whereabouts(&item);
    let index = aggregate.map_or(0, |(account, _)| Partition::of(&account, machines.len()));
    machines[index].recover(item);
    seq
}

#[cfg(test)]
mod tests {
    use super::*;
    use convo_domain::{Actor, CommandId, ConversationEvent};

    /// A fixture's inputs, parsed as the scenario format does (without it:
    /// the simulator depends on this crate).
    fn fixture(name: &str) -> Vec<(CommandEnvelope, Timestamp)> {
        let path = format!("{}/../../replay-fixtures/{name}/input.jsonl", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(path).unwrap();
        text.lines()
            .enumerate()
            .filter(|(_, l)| l.starts_with('{'))
            .map(|(n, line)| {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                let id = v["id"].as_str().map_or(format!("line-{}", n + 1), str::to_owned);
                let envelope = CommandEnvelope {
                    id: CommandId::new(&id).unwrap(),
                    account: AccountId::new("default").unwrap(),
                    actor: v
                        .get("actor")
                        .map_or(Actor::system("scenario"), |a| serde_json::from_value(a.clone()).unwrap()),
                    command: Command::from_json(v["command"].clone()).unwrap(),
                };
                (envelope, Timestamp::parse_rfc3339(v["at"].as_str().unwrap()).unwrap())
            })
            .collect()
    }

    fn open(n: usize) -> CommandEnvelope {
        let json = serde_json::json!({"type": "receive_message", "conversation": format!("k{n}"),
            "contact": format!("ct-{n:07}"), "channel": "wa", "text": "Hola"});
        CommandEnvelope {
            id: CommandId::new(&format!("open-{n}")).unwrap(),
            account: AccountId::new("default").unwrap(),
            actor: Actor::Contact(convo_domain::ContactId::new(&format!("ct-{n:07}")).unwrap()),
            command: Command::from_json(json).unwrap(),
        }
    }

    /// A log that acknowledges every append at once, in order.
    #[derive(Default)]
    struct Instant {
        seq: u64,
        replies: Vec<(Origin, Result<Outcome, Failure>)>,
    }

    impl Instant {
        fn settle(&mut self, machine: &mut Machine) {
            while let Some(output) = machine.poll() {
                match output {
                    Output::Append { io, commit, .. } => {
                        self.seq += 1;
                        machine.handle_appended(io, commit, Ok(self.seq));
                    }
                    Output::Load { io, .. } => machine.handle_loaded(io, Ok(Vec::new())),
                    Output::Reply { origin, result, .. } => self.replies.push((origin, result)),
                }
            }
        }
    }

    /// The SLA fixture's account, configured, at the instant of its first conversation.
    fn configured(config: MachineConfig) -> (Machine, Instant, Timestamp) {
        let mut machine = Machine::new(config);
        let mut log = Instant::default();
        let inputs = fixture("sla-worked-example");
        let mut at = Timestamp::from_millis(0);
        for (envelope, t) in
            inputs.into_iter().filter(|(e, _)| !matches!(e.command.target(), convo_domain::Target::Conversation(_)))
        {
            machine.handle_request(0, envelope, t);
            log.settle(&mut machine);
            at = t;
        }
        (machine, log, at)
    }

    /// Two conversations open from the same new handle while neither append
    /// has come back: both name one contact and both ask for it, so the
    /// contact is made whichever append fails; the book records it once.
    #[test]
    fn a_new_handle_names_one_contact_whatever_becomes_of_the_appends() {
        let config = MachineConfig { io_in_flight_max: 8, ..MachineConfig::stepwise() };
        let (mut machine, mut log, at) = configured(config);
        let by_handle = |n: usize| {
            let json = serde_json::json!({"type": "receive_message", "conversation": format!("h{n}"),
                "handle": "+573100000001", "channel": "wa", "text": "Hola"});
            CommandEnvelope {
                id: CommandId::new(&format!("h-{n}")).unwrap(),
                account: AccountId::new("default").unwrap(),
                actor: Actor::system("wa-gateway"),
                command: Command::from_json(json).unwrap(),
            }
        };
        machine.handle_request(1, by_handle(1), at);
        machine.handle_request(2, by_handle(2), at);
        let appends: Vec<(IoId, Commit)> = std::iter::from_fn(|| machine.poll())
            .filter_map(|o| match o {
                Output::Append { io, commit, .. } => Some((io, commit)),
                _ => None,
            })
            .collect();
        let requested = |commit: &Commit| {
            commit.events.iter().find_map(|e| match &e.event {
                convo_wire::Event::Conversation(ConversationEvent::ContactRequested { contact, .. }) => {
                    Some(contact.clone())
                }
                _ => None,
            })
        };
        let made: Vec<Option<ContactId>> = appends.iter().map(|(_, c)| requested(c)).collect();
        assert_eq!(made.len(), 2, "both decided before either append came back");
        assert!(made[0].is_some() && made[0] == made[1], "one contact, asked for by both: {made:?}");
        // The first append never reaches the log (its outcome unknown to the machine); the second does.
        let mut appends = appends.into_iter();
        let (io, commit) = appends.next().unwrap();
        machine.handle_appended(io, commit, Err(StoreError::Unavailable("simulated".into())));
        let (io, commit) = appends.next().unwrap();
        log.seq += 1;
        machine.handle_appended(io, commit, Ok(log.seq));
        log.settle(&mut machine);
        let book = machine.world().contact_book(&AccountId::new("default").unwrap()).expect("a book");
        let identity = convo_domain::contact::Identity {
            channel: convo_domain::ChannelId::new("wa").unwrap(),
            handle: "+573100000001".into(),
        };
        assert_eq!(book.holder(&identity), made[0].as_ref(), "the book holds the contact the handle made");
        // The first conversation's message, sent again, names it too (and asks for nothing).
        machine.handle_request(1, by_handle(1), at.plus_secs(1));
        let mut again = None;
        while let Some(output) = machine.poll() {
            match output {
                // In doubt: read back first (the log does not hold it).
                Output::Load { io, .. } => machine.handle_loaded(io, Ok(Vec::new())),
                Output::Append { commit, .. } => again = Some(commit),
                Output::Reply { .. } => {}
            }
        }
        let again = again.expect("the first conversation opens");
        assert_eq!(requested(&again), None);
        let opened = again.events.iter().find_map(|e| match &e.event {
            convo_wire::Event::Conversation(ConversationEvent::ConversationOpened(o)) => Some(o.contact.clone()),
            _ => None,
        });
        assert_eq!(opened, made[0]);
    }

    #[test]
    fn timers_falling_due_in_bulk_never_exceed_the_appends_in_flight() {
        let config = MachineConfig { io_in_flight_max: 64, ..MachineConfig::stepwise() };
        let (mut machine, mut log, at) = configured(config);
        let count = 3_000;
        for n in 0..count {
            machine.handle_request(0, open(n), at);
            log.settle(&mut machine);
        }
        // An hour later every conversation's SLA timer is due at once; the
        // store answers nothing until the machine has said all it will.
        machine.handle_timeout(at.plus_secs(3_600));
        let mut ticks = 0;
        loop {
            let mut pending = Vec::new();
            while let Some(output) = machine.poll() {
                if let Output::Append { io, commit, .. } = output {
                    pending.push((io, commit));
                }
            }
            assert!(machine.io_in_flight() <= 64, "{} in flight", machine.io_in_flight());
            if pending.is_empty() {
                break;
            }
            for (io, commit) in pending.into_iter().rev() {
                ticks += usize::from(commit.command.as_str().starts_with("_tick-"));
                log.seq += 1;
                machine.handle_appended(io, commit, Ok(log.seq));
            }
        }
        assert_eq!(machine.stats().io_in_flight_max, 64, "the limit was reached, never passed");
        assert!(ticks >= count, "every conversation's timer fired: {ticks}");
        assert_eq!(machine.world().overdue(at.plus_secs(3_600)), vec![]);
    }

    #[test]
    fn a_timer_fired_late_says_when_it_was_due() {
        // The service's settings: the wall clock finds the timer an hour late (an outage, a takeover).
        let (mut machine, mut log, at) = configured(MachineConfig::serve());
        machine.handle_request(0, open(0), at);
        log.settle(&mut machine);
        let due = machine.poll_timeout().expect("the SLA timer is armed");
        machine.handle_timeout(due.plus_secs(3_600));
        let mut ticks = Vec::new();
        while let Some(output) = machine.poll() {
            match output {
                Output::Append { io, commit, .. } => {
                    if commit.command.as_str().starts_with("_tick-") {
                        ticks.push(commit.at);
                    }
                    log.seq += 1;
                    machine.handle_appended(io, commit, Ok(log.seq));
                }
                Output::Load { io, .. } => machine.handle_loaded(io, Ok(Vec::new())),
                Output::Reply { .. } => {}
            }
        }
        assert!(ticks.len() >= 2, "the optimal and low thresholds both fell due: {ticks:?}");
        assert_eq!(ticks[0], due, "the first tick carries its deadline, not the clock that found it");
        assert!(ticks.iter().all(|t| *t < due.plus_secs(3_600)), "{ticks:?}");
        assert!(ticks.windows(2).all(|w| w[0] <= w[1]), "{ticks:?}");
    }

    #[test]
    fn a_partition_full_of_open_conversations_answers_overloaded() {
        let config = MachineConfig { open_conversations_max: 2, ..MachineConfig::stepwise() };
        let (mut machine, mut log, at) = configured(config);
        log.replies.clear();
        for n in 0..3 {
            machine.handle_request(n as u64 + 1, open(n), at);
            log.settle(&mut machine);
        }
        let answers: Vec<_> = log.replies.iter().filter(|(o, _)| matches!(o, Origin::Request(_))).collect();
        assert!(matches!(answers[0].1, Ok(Outcome::Committed { .. })));
        assert!(matches!(answers[1].1, Ok(Outcome::Committed { .. })));
        assert!(matches!(&answers[2].1, Err(Failure::Overloaded(why)) if why.contains("2 open conversations")));
        // A command for a conversation already open is still taken.
        let again = CommandEnvelope { id: CommandId::new("open-0-again").unwrap(), ..open(0) };
        machine.handle_request(9, again, at.plus_secs(1));
        log.settle(&mut machine);
        assert!(matches!(log.replies.last().unwrap().1, Ok(Outcome::Committed { .. })));
    }

    #[test]
    fn accounts_hash_onto_partitions_stably_and_spread() {
        let account = |s: &str| AccountId::new(s).unwrap();
        // Fixed forever: instances and runs must agree on an account's partition.
        assert_eq!(Partition::of(&account("acme"), 4), Partition::of(&account("acme"), 4));
        assert_eq!(Partition::of(&account("acme"), 1), 0);
        let mut used = [0usize; 4];
        for n in 0..400 {
            used[Partition::of(&account(&format!("tenant-{n}")), 4)] += 1;
        }
        assert!(used.iter().all(|u| *u > 50), "{used:?}");
        assert!(Partition::ALL.owns(&account("anyone")));
        let p = Partition { index: Partition::of(&account("acme"), 3), count: 3 };
        assert!(p.owns(&account("acme")));
    }
}
