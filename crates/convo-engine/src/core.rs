//! The engine's deterministic core: every account's aggregates in memory,
//! decided by the domain, with the live floor, a timer queue fed by
//! `next_deadline()`, and the routing rule.
//!
//! A command goes through two steps: [`World::decide`] asks the aggregate and
//! returns the commit to append (nothing changes yet), and
//! [`World::apply_commit`] applies a commit once it is durable (or, in the
//! simulator, at once). The same two steps rebuild the world from the log
//! after a restart. Between them the runtime appends with the expectation
//! [`World::expected`]; on a conflict it reloads the aggregate and decides again.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};

use convo_domain::command::{Assign, Tick};
use convo_domain::{
    AccountId, Actor, AgentEvent, AgentPresence, Catalog, Command, CommandEnvelope, CommandId, ConfigEvent, Context,
    Conversation, ConversationEvent, ConversationId, Decision, Floor, Recorded, Rejection, Target, Timestamp, UserId,
};
use convo_wire::{Commit, StreamRef, WireError};

/// At most this many routing assignments after one step (each one fills an
/// agent slot, so this only bounds a pathological configuration).
pub const ASSIGNMENTS_PER_STEP_MAX: usize = 10_000;

/// What a command comes to.
#[derive(Debug, Clone, PartialEq)]
pub enum Decided {
    /// Events to append, all together.
    Commit(Commit),
    /// The command breaks no rule but changes nothing (a label already there…).
    Nothing,
    /// The command id was already applied: these were its events.
    Duplicate { first_seq: u64, last_seq: u64 },
}

/// Why a command could not be decided.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Rejected(#[from] Rejection),
    #[error("the decision cannot be recorded: {0}")]
    Wire(#[from] WireError),
}

/// One line of the simulator's output.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Config {
        account: AccountId,
        record: Recorded<ConfigEvent>,
    },
    Agent {
        account: AccountId,
        agent: UserId,
        record: Recorded<AgentEvent>,
    },
    Conversation {
        account: AccountId,
        conversation: ConversationId,
        record: Recorded<ConversationEvent>,
    },
    /// A command refused by a rule; nothing was recorded.
    Rejected {
        at: Timestamp,
        account: AccountId,
        command: CommandId,
        kind: &'static str,
        code: &'static str,
        reason: String,
        line: Option<usize>,
    },
    /// A repeated command id: nothing new; these were its events.
    Duplicate {
        at: Timestamp,
        account: AccountId,
        command: CommandId,
        first_seq: u64,
        last_seq: u64,
        line: Option<usize>,
    },
}

impl Record {
    pub fn at(&self) -> Timestamp {
        match self {
            Record::Config { record, .. } => record.at,
            Record::Agent { record, .. } => record.at,
            Record::Conversation { record, .. } => record.at,
            Record::Rejected { at, .. } | Record::Duplicate { at, .. } => *at,
        }
    }

    /// The records of a commit, in order.
    pub fn of_commit(commit: &Commit) -> Vec<Record> {
        let account = &commit.account;
        match &commit.stream {
            StreamRef::Catalog => commit
                .config_records()
                .into_iter()
                .map(|record| Record::Config { account: account.clone(), record })
                .collect(),
            StreamRef::Agent(agent) => commit
                .agent_records()
                .into_iter()
                .map(|record| Record::Agent { account: account.clone(), agent: agent.clone(), record })
                .collect(),
            StreamRef::Conversation(id) => commit
                .conversation_records()
                .into_iter()
                .map(|record| Record::Conversation { account: account.clone(), conversation: id.clone(), record })
                .collect(),
        }
    }
}

#[derive(Debug)]
struct Account {
    catalog: Catalog,
    floor: Floor,
    conversations: BTreeMap<ConversationId, Conversation>,
    agents: BTreeMap<UserId, AgentPresence>,
    /// The log sequence of each aggregate's last commit.
    last_commit: BTreeMap<StreamRef, u64>,
}

impl Account {
    fn new(id: &AccountId) -> Self {
        Self {
            catalog: Catalog::new(id.clone()),
            floor: Floor::default(),
            conversations: BTreeMap::new(),
            agents: BTreeMap::new(),
            last_commit: BTreeMap::new(),
        }
    }
}

/// Every account's state plus the timer queue.
#[derive(Debug, Default)]
pub struct World {
    accounts: BTreeMap<AccountId, Account>,
    /// (deadline, account, conversation); stale entries are skipped when popped.
    timers: BinaryHeap<Reverse<(Timestamp, AccountId, ConversationId)>>,
    /// Closed conversations in memory, by the time of their last commit.
    closed: BTreeSet<(Timestamp, AccountId, ConversationId)>,
    closed_at: HashMap<(AccountId, ConversationId), Timestamp>,
    /// Conversations evicted from memory: their history must be read back
    /// from the log before a command is decided for them.
    evicted: HashSet<(AccountId, ConversationId)>,
}

/// The aggregate stream a command goes to.
pub fn stream_of(command: &Command) -> StreamRef {
    match command.target() {
        Target::Catalog => StreamRef::Catalog,
        Target::Agent(id) => StreamRef::Agent(id.clone()),
        Target::Conversation(id) => StreamRef::Conversation(id.clone()),
    }
}

fn decided<E: Into<convo_wire::Event>>(
    account: &AccountId,
    stream: StreamRef,
    decision: Decision<E>,
) -> Result<Decided, Refusal> {
    match decision {
        Decision::Duplicate { first_seq, last_seq } => Ok(Decided::Duplicate { first_seq, last_seq }),
        Decision::Commit(records) if records.is_empty() => Ok(Decided::Nothing),
        Decision::Commit(records) => Ok(Decided::Commit(Commit::new(account, stream, None, records)?)),
    }
}

impl World {
    pub fn new() -> Self {
        Self::default()
    }

    /// A conversation's state, if it exists.
    pub fn conversation(&self, account: &AccountId, id: &ConversationId) -> Option<&Conversation> {
        self.accounts.get(account)?.conversations.get(id)
    }

    pub fn floor(&self, account: &AccountId) -> Option<&Floor> {
        self.accounts.get(account).map(|a| &a.floor)
    }

    pub fn catalog(&self, account: &AccountId) -> Option<&Catalog> {
        self.accounts.get(account).map(|a| &a.catalog)
    }

    /// How many conversations are open across accounts.
    pub fn open_conversations(&self) -> usize {
        self.accounts.values().map(|a| a.floor.open_conversations()).sum()
    }

    /// The log sequence of the aggregate's last commit (0: none): the
    /// expectation of the next append.
    pub fn expected(&self, account: &AccountId, stream: &StreamRef) -> u64 {
        self.accounts.get(account).and_then(|a| a.last_commit.get(stream)).copied().unwrap_or(0)
    }

    /// Decides a command at `now`. Nothing changes until the commit is applied.
    pub fn decide(&self, envelope: &CommandEnvelope, now: Timestamp) -> Result<Decided, Refusal> {
        let account_id = &envelope.account;
        let fresh;
        let account = match self.accounts.get(account_id) {
            Some(a) => a,
            None => {
                fresh = Account::new(account_id);
                &fresh
            }
        };
        let stream = stream_of(&envelope.command);
        match envelope.command.target() {
            Target::Catalog => decided(account_id, stream, account.catalog.decide(envelope, now, &account.floor)?),
            Target::Agent(agent) => {
                let blank;
                let presence = match account.agents.get(agent) {
                    Some(p) => p,
                    None => {
                        blank = AgentPresence::new(agent.clone());
                        &blank
                    }
                };
                decided(account_id, stream, presence.decide(&account.catalog, envelope, now)?)
            }
            Target::Conversation(id) => {
                let blank;
                let conversation = match account.conversations.get(id) {
                    Some(c) => c,
                    None => {
                        blank = Conversation::new(id.clone());
                        &blank
                    }
                };
                let ctx = Context { catalog: &account.catalog, floor: &account.floor };
                decided(account_id, stream, conversation.decide(ctx, envelope, now)?)
            }
        }
    }

    /// Applies a durable commit found at `log_seq`: evolves its aggregate and
    /// the floor, and re-arms the conversation's timer.
    pub fn apply_commit(&mut self, commit: &Commit, log_seq: u64) {
        let account = self.accounts.entry(commit.account.clone()).or_insert_with(|| Account::new(&commit.account));
        account.last_commit.insert(commit.stream.clone(), log_seq);
        match &commit.stream {
            StreamRef::Catalog => {
                for record in commit.config_records() {
                    account.catalog.evolve(&record);
                }
            }
            StreamRef::Agent(agent) => {
                let presence = account.agents.entry(agent.clone()).or_insert_with(|| AgentPresence::new(agent.clone()));
                for record in commit.agent_records() {
                    presence.evolve(&record);
                    account.floor.apply_agent(agent, &record);
                }
            }
            StreamRef::Conversation(id) => {
                let conversation =
                    account.conversations.entry(id.clone()).or_insert_with(|| Conversation::new(id.clone()));
                for record in commit.conversation_records() {
                    conversation.evolve(&record);
                    account.floor.apply_conversation(id, &record);
                }
                if let Some(deadline) = conversation.next_deadline() {
                    self.timers.push(Reverse((deadline, commit.account.clone(), id.clone())));
                }
                let key = (commit.account.clone(), id.clone());
                self.evicted.remove(&key);
                if conversation.status == convo_domain::conversation::Status::Closed {
                    if let Some(before) = self.closed_at.insert(key.clone(), commit.at) {
                        self.closed.remove(&(before, key.0.clone(), key.1.clone()));
                    }
                    self.closed.insert((commit.at, key.0, key.1));
                }
            }
        }
    }

    /// Evicts conversations closed with no commit since `before`, and then the
    /// oldest closed ones while more than `loaded_max` conversations are in
    /// memory (open ones stay: their timers live here). Returns how many left.
    /// Their history stays in the log and is read back if a command comes for them.
    pub fn evict_closed(&mut self, before: Timestamp, loaded_max: usize) -> usize {
        let mut count = 0;
        let mut loaded = self.loaded_conversations();
        while let Some((at, account, id)) = self.closed.first().cloned() {
            if at >= before && loaded <= loaded_max {
                break;
            }
            loaded = loaded.saturating_sub(1);
            self.closed.pop_first();
            self.closed_at.remove(&(account.clone(), id.clone()));
            if let Some(a) = self.accounts.get_mut(&account) {
                a.conversations.remove(&id);
                a.last_commit.remove(&StreamRef::Conversation(id.clone()));
            }
            self.evicted.insert((account, id));
            count += 1;
        }
        count
    }

    /// Whether an aggregate was evicted (and must be read back before deciding).
    pub fn is_evicted(&self, account: &AccountId, stream: &StreamRef) -> bool {
        match stream {
            StreamRef::Conversation(id) => self.evicted.contains(&(account.clone(), id.clone())),
            _ => false,
        }
    }

    /// How many conversations are held in memory.
    pub fn loaded_conversations(&self) -> usize {
        self.accounts.values().map(|a| a.conversations.len()).sum()
    }

    /// Puts a conversation's next deadline back in the timer queue.
    pub fn rearm(&mut self, account: &AccountId, id: &ConversationId) {
        if let Some(deadline) = self.conversation(account, id).and_then(Conversation::next_deadline) {
            self.timers.push(Reverse((deadline, account.clone(), id.clone())));
        }
    }

    /// Decides and applies at once (the simulator's commit), appending what
    /// happened to `out`. `log_seq` numbers the commits.
    pub fn apply(
        &mut self,
        envelope: &CommandEnvelope,
        now: Timestamp,
        line: Option<usize>,
        log_seq: &mut u64,
        out: &mut Vec<Record>,
    ) {
        let outcome = self.decide(envelope, now);
        self.record_outcome(envelope, now, line, outcome, log_seq, out);
    }

    /// Applies a decision's outcome and describes it in `out`.
    pub fn record_outcome(
        &mut self,
        envelope: &CommandEnvelope,
        now: Timestamp,
        line: Option<usize>,
        outcome: Result<Decided, Refusal>,
        log_seq: &mut u64,
        out: &mut Vec<Record>,
    ) {
        let account = envelope.account.clone();
        match outcome {
            Ok(Decided::Commit(commit)) => {
                *log_seq += 1;
                self.apply_commit(&commit, *log_seq);
                out.extend(Record::of_commit(&commit));
            }
            Ok(Decided::Nothing) => {}
            Ok(Decided::Duplicate { first_seq, last_seq }) => out.push(Record::Duplicate {
                at: now,
                account,
                command: envelope.id.clone(),
                first_seq,
                last_seq,
                line,
            }),
            Err(refusal) => {
                let (code, reason) = match &refusal {
                    Refusal::Rejected(r) => (r.code(), r.to_string()),
                    Refusal::Wire(_) => ("unrecordable", refusal.to_string()),
                };
                out.push(Record::Rejected {
                    at: now,
                    account,
                    command: envelope.id.clone(),
                    kind: envelope.command.type_name(),
                    code,
                    reason,
                    line,
                });
            }
        }
    }

    /// The earliest pending timer, skipping stale entries.
    pub fn next_timer(&mut self) -> Option<Timestamp> {
        while let Some(Reverse((at, account, id))) = self.timers.peek() {
            let live =
                self.accounts.get(account).and_then(|a| a.conversations.get(id)).and_then(Conversation::next_deadline);
            if live == Some(*at) {
                return Some(*at);
            }
            self.timers.pop();
        }
        None
    }

    /// The `tick` for the earliest pending timer, at its deadline.
    pub fn next_tick(&mut self) -> Option<(CommandEnvelope, Timestamp)> {
        let at = self.next_timer()?;
        let Reverse((_, account, id)) = self.timers.pop()?;
        let seq = self.accounts[&account].conversations[&id].seq;
        let envelope = CommandEnvelope {
            id: CommandId::new(&format!("tick-{}", seq + 1)).expect("valid"),
            account,
            actor: Actor::system("timer"),
            command: Command::Tick(Tick { conversation: id }),
        };
        Some((envelope, at))
    }

    /// The assignment routing would make now, as a command.
    pub fn next_assignment(&self) -> Option<CommandEnvelope> {
        self.accounts.iter().find_map(|(account, a)| {
            let (conversation, agent) = a.floor.next_assignment(&a.catalog)?;
            let seq = a.conversations.get(&conversation).map_or(0, |c| c.seq);
            Some(CommandEnvelope {
                id: CommandId::new(&format!("route-{}", seq + 1)).expect("valid"),
                account: account.clone(),
                actor: Actor::system("routing"),
                command: Command::Assign(Assign { conversation, agent }),
            })
        })
    }

    /// Fires the earliest pending timer (simulator).
    pub fn fire_next_timer(&mut self, log_seq: &mut u64, out: &mut Vec<Record>) -> Option<Timestamp> {
        let (envelope, at) = self.next_tick()?;
        self.apply(&envelope, at, None, log_seq, out);
        Some(at)
    }

    /// Lets routing assign queued conversations to available agents at `now` (simulator).
    pub fn route(&mut self, now: Timestamp, log_seq: &mut u64, out: &mut Vec<Record>) {
        for _ in 0..ASSIGNMENTS_PER_STEP_MAX {
            let Some(envelope) = self.next_assignment() else { break };
            let before = out.len();
            self.apply(&envelope, now, None, log_seq, out);
            if !matches!(out.get(before), Some(Record::Conversation { .. })) {
                break; // the floor and the aggregate disagree: stop rather than loop
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a fixture's commands through the world, committing at once.
    fn world_after(fixture: &str) -> World {
        let text = std::fs::read_to_string(format!(
            "{}/../../replay-fixtures/{fixture}/input.jsonl",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let mut world = World::new();
        let (mut seq, mut out) = (0, Vec::new());
        for (n, line) in text.lines().enumerate().filter(|(_, l)| l.starts_with('{')) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let default_id = format!("line-{}", n + 1);
            let envelope = CommandEnvelope {
                id: CommandId::new(v["id"].as_str().unwrap_or(&default_id)).unwrap(),
                account: AccountId::new("default").unwrap(),
                actor: v.get("actor").map_or(Actor::system("scenario"), |a| serde_json::from_value(a.clone()).unwrap()),
                command: Command::from_json(v["command"].clone()).unwrap(),
            };
            let at = Timestamp::parse_rfc3339(v["at"].as_str().unwrap()).unwrap();
            world.apply(&envelope, at, None, &mut seq, &mut out);
            world.route(at, &mut seq, &mut out);
        }
        world
    }

    #[test]
    fn eviction_takes_closed_conversations_only_by_age_then_by_count() {
        let mut world = world_after("routing-fifo-capacity");
        assert_eq!(world.loaded_conversations(), 3);
        // Nothing closed before the epoch; the memory bound is not reached.
        assert_eq!(world.evict_closed(Timestamp::from_millis(0), 10), 0);
        // A bound of 1 evicts the two oldest closed conversations.
        assert_eq!(world.evict_closed(Timestamp::from_millis(0), 1), 2);
        assert_eq!(world.loaded_conversations(), 1);
        let account = AccountId::new("default").unwrap();
        let evicted = (1..=3)
            .filter(|n| {
                world.is_evicted(&account, &StreamRef::Conversation(ConversationId::new(&format!("c{n}")).unwrap()))
            })
            .count();
        assert_eq!(evicted, 2);
    }
}
