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
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};

use convo_domain::command::{Assign, Tick, engine_command_id};
use convo_domain::contact::{ContactSpec, Identity, SetContactAttribute};
use convo_domain::conversation::Status;
use convo_domain::{
    AccountId, Actor, AgentEvent, AgentPresence, Catalog, Command, CommandEnvelope, CommandId, ConfigEvent,
    ContactBook, ContactEvent, ContactId, Context, Conversation, ConversationEvent, ConversationId, Decision, Floor,
    Recorded, Rejection, Target, Timestamp, UserId,
};
use convo_store::{LogItem, StoreError};
use convo_wire::{Commit, StreamRef, WireError};

/// At most this many routing assignments after one step (each one fills an
/// agent slot, so this only bounds a pathological configuration).
pub const ASSIGNMENTS_PER_STEP_MAX: usize = 10_000;

/// A message of the log that could not be applied: skipped, counted, and
/// listed for the operator (`convo doctor`), never a reason to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub seq: u64,
    pub subject: String,
    pub reason: String,
}

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
    Contact {
        account: AccountId,
        record: Recorded<ContactEvent>,
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
            Record::Contact { record, .. } => record.at,
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
            StreamRef::Contacts => commit
                .contact_records()
                .into_iter()
                .map(|record| Record::Contact { account: account.clone(), record })
                .collect(),
        }
    }
}

/// A conversation in memory, and the deadline it has in the timer queue
/// (so one is never queued twice): kept beside the aggregate, not in a map
/// of its own keyed by account and conversation.
#[derive(Debug)]
struct Held {
    conversation: Conversation,
    armed: Option<Timestamp>,
}

impl Held {
    fn new(id: &ConversationId) -> Box<Self> {
        Box::new(Self { conversation: Conversation::new(id.clone()), armed: None })
    }

    /// Queues `deadline` for this conversation unless it is the one queued;
    /// `armed` counts the conversations with a deadline queued.
    fn arm(
        &mut self,
        timers: &mut BinaryHeap<Reverse<(Timestamp, AccountId, ConversationId)>>,
        armed: &mut usize,
        key: (&AccountId, &ConversationId),
        deadline: Timestamp,
    ) {
        if self.armed != Some(deadline) {
            if self.armed.replace(deadline).is_none() {
                *armed += 1;
            }
            timers.push(Reverse((deadline, key.0.clone(), key.1.clone())));
        }
    }

    /// Forgets the deadline queued for this conversation, if any.
    fn disarm(&mut self, armed: &mut usize) {
        if self.armed.take().is_some() {
            *armed -= 1;
        }
    }
}

#[derive(Debug)]
struct Account {
    catalog: Catalog,
    contacts: ContactBook,
    /// Contacts made for a new handle whose `define_contact` follow-up the
    /// book has not recorded yet: the same handle names the same contact.
    pending_contacts: BTreeMap<Identity, ContactId>,
    floor: Floor,
    /// Boxed: the map's nodes keep a pointer per conversation, not the
    /// aggregate itself, so the nodes' slack costs bytes, not aggregates.
    conversations: BTreeMap<ConversationId, Box<Held>>,
    agents: BTreeMap<UserId, AgentPresence>,
    /// The log sequence of each aggregate's last commit.
    last_commit: BTreeMap<StreamRef, u64>,
}

impl Account {
    fn new(id: &AccountId) -> Self {
        Self {
            catalog: Catalog::new(id.clone()),
            contacts: ContactBook::new(id.clone()),
            pending_contacts: BTreeMap::new(),
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
    /// How many conversations have a deadline in `timers` ([`Held::armed`]).
    armed: usize,
    /// Closed conversations in memory, by the time of their last commit.
    closed: BTreeSet<(Timestamp, AccountId, ConversationId)>,
    closed_at: HashMap<(AccountId, ConversationId), Timestamp>,
    /// Conversations evicted from memory: their history must be read back
    /// from the log before a command is decided for them.
    evicted: HashSet<(AccountId, ConversationId)>,
    /// Closed conversations whose content awaits its expiry (SPEC §13), in
    /// memory or not: when, and the conversation's last event sequence (its
    /// tick's id). An evicted one's timer stays queued on this.
    expiries: HashMap<(AccountId, ConversationId), (Timestamp, u64)>,
    /// A conversation is being read back whole ([`World::reload`]): its
    /// commits are applied as its history, never as a history kept elsewhere.
    reloading: bool,
    /// Commands the engine owes another aggregate after a commit (a contact
    /// attribute a conversation's macro or automation asked for), in log
    /// order; one leaves when its aggregate records it or its outcome is known.
    follow_ups: VecDeque<CommandEnvelope>,
}

/// The actor of the `define_contact` the engine sends for a contact it made
/// for a new handle (one of [`convo_domain::ENGINE_ACTORS`]).
pub const CONTACTS_ACTOR: &str = "contacts";

/// A follow-up's outcome is known: it leaves the queue, and a contact it
/// defines is no longer pending (the book holds it, or refused it).
fn settle_follow_up(
    follow_ups: &mut VecDeque<CommandEnvelope>,
    accounts: &mut BTreeMap<AccountId, Account>,
    id: &CommandId,
) {
    follow_ups.retain(|f| {
        if &f.id != id {
            return true;
        }
        if let Command::DefineContact(spec) = &f.command
            && let Some(account) = accounts.get_mut(&f.account)
        {
            for identity in &spec.identities {
                account.pending_contacts.remove(identity);
            }
        }
        false
    });
}

/// The id of the follow-up of the event `event`: in the engine's namespace
/// (no client can send it), derived from the event (a retry after a
/// restart is a repeat).
fn follow_up_id(event: &convo_domain::EventId) -> CommandId {
    CommandId::new(&format!("{}contact-{event}", convo_domain::command::ENGINE_ID_PREFIX)).expect("a valid id")
}

/// Whether a conversation's commit records when its content expires (it
/// closes the conversation under a retention period).
pub(crate) fn awaits_expiry(commit: &Commit) -> bool {
    commit.events.iter().any(|e| {
        matches!(e.event, convo_wire::Event::Conversation(ConversationEvent::ContentRetentionScheduled { .. }))
    })
}

/// The aggregate stream a command goes to.
pub fn stream_of(command: &Command) -> StreamRef {
    match command.target() {
        Target::Catalog => StreamRef::Catalog,
        Target::Agent(id) => StreamRef::Agent(id.clone()),
        Target::Conversation(id) => StreamRef::Conversation(id.clone()),
        Target::Contacts => StreamRef::Contacts,
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
        self.accounts.get(account)?.conversations.get(id).map(|h| &h.conversation)
    }

    pub fn floor(&self, account: &AccountId) -> Option<&Floor> {
        self.accounts.get(account).map(|a| &a.floor)
    }

    pub fn catalog(&self, account: &AccountId) -> Option<&Catalog> {
        self.accounts.get(account).map(|a| &a.catalog)
    }

    /// Every account's catalog.
    pub fn catalogs(&self) -> impl Iterator<Item = &Catalog> {
        self.accounts.values().map(|a| &a.catalog)
    }

    /// How many conversations are open across accounts.
    /// The conversation deadlines armed now.
    pub fn armed_timers(&self) -> usize {
        self.armed
    }

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
        self.decide_claimed(envelope, now, None)
    }

    /// Decides a command at `now`, knowing the contacts that commits not
    /// applied yet make for new handles (`claimed`: the account's, by the
    /// machine), so a handle names one contact whatever the order in which
    /// appends come back.
    pub fn decide_claimed(
        &self,
        envelope: &CommandEnvelope,
        now: Timestamp,
        claimed: Option<&BTreeMap<Identity, ContactId>>,
    ) -> Result<Decided, Refusal> {
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
            Target::Contacts => decided(account_id, stream, account.contacts.decide(&account.catalog, envelope, now)?),
            Target::Conversation(id) => {
                let blank;
                let conversation = match account.conversations.get(id) {
                    Some(h) => &h.conversation,
                    None => {
                        blank = Conversation::new(id.clone());
                        &blank
                    }
                };
                let ctx = Context {
                    catalog: &account.catalog,
                    floor: &account.floor,
                    contacts: Some(&account.contacts),
                    pending_contacts: Some(&account.pending_contacts),
                    claimed_contacts: claimed,
                };
                decided(account_id, stream, conversation.decide(ctx, envelope, now)?)
            }
        }
    }

    /// The sequence of an aggregate's last event in memory (0: none).
    fn aggregate_seq(&self, account: &AccountId, stream: &StreamRef) -> u64 {
        let Some(a) = self.accounts.get(account) else { return 0 };
        match stream {
            StreamRef::Catalog => a.catalog.seq,
            StreamRef::Agent(id) => a.agents.get(id).map_or(0, |p| p.seq),
            StreamRef::Conversation(id) => a.conversations.get(id).map_or(0, |h| h.conversation.seq),
            StreamRef::Contacts => a.contacts.seq,
        }
    }

    /// Whether a commit read from the log can be applied: its events are of
    /// its aggregate's kind, consecutive from the aggregate's next sequence,
    /// and a conversation is opened once, first. A commit that is not (a
    /// republished copy, a forgery, a reordering) is refused with the reason,
    /// never half-applied.
    pub fn check_logged(&self, commit: &Commit) -> Result<(), String> {
        let known = self.aggregate_seq(&commit.account, &commit.stream);
        for e in &commit.events {
            let own_kind = matches!(
                (&commit.stream, &e.event),
                (StreamRef::Catalog, convo_wire::Event::Config(_))
                    | (StreamRef::Agent(_), convo_wire::Event::Agent(_))
                    | (StreamRef::Conversation(_), convo_wire::Event::Conversation(_))
                    | (StreamRef::Contacts, convo_wire::Event::Contact(_))
            );
            if !own_kind {
                return Err(format!(
                    "event {} ({}) does not belong to {}",
                    e.seq,
                    e.event.type_name(),
                    commit.stream.path()
                ));
            }
        }
        if let StreamRef::Conversation(id) = &commit.stream
            && !self.reloading
            && known == 0
            && commit.first_seq() != 1
            && (self.evicted.contains(&(commit.account.clone(), id.clone())) || awaits_expiry(commit))
        {
            // Out of memory (a snapshot keeps only the closing commit of a conversation
            // whose content awaits expiry): its history stays in the log.
            return Ok(());
        }
        commit.follows(known)?;
        if let StreamRef::Conversation(id) = &commit.stream {
            let new = self.conversation(&commit.account, id).is_none_or(|c| c.status == Status::New);
            for e in &commit.events {
                let opens =
                    matches!(e.event, convo_wire::Event::Conversation(ConversationEvent::ConversationOpened(_)));
                if opens && !new {
                    return Err(format!("conversation {id} is already open"));
                }
                if !opens && new && e.seq == known + 1 {
                    return Err(format!("conversation {id} has not been opened; its first event must open it"));
                }
            }
        }
        Ok(())
    }

    /// Notes that the log holds a message at `log_seq` on one of an
    /// aggregate's subjects, applied or not: the broker counts it in the
    /// aggregate's last sequence, so the next append must expect it.
    pub fn note_position(&mut self, account: &AccountId, stream: &StreamRef, log_seq: u64) {
        let a = self.accounts.entry(account.clone()).or_insert_with(|| Account::new(account));
        let last = a.last_commit.entry(stream.clone()).or_insert(0);
        *last = (*last).max(log_seq);
    }

    /// Applies a commit read from the log if it can be applied (see
    /// [`World::check_logged`]); either way its position is noted.
    pub fn apply_logged(&mut self, commit: &Commit, log_seq: u64) -> Result<(), String> {
        self.note_position(&commit.account, &commit.stream, log_seq);
        self.check_logged(commit)?;
        self.apply_commit(commit, log_seq);
        Ok(())
    }

    /// Applies one message of the log as recovery and reloads read it: a
    /// commit that can be applied is; anything else is noted at its position
    /// (on the aggregate its subject names) and returned as skipped.
    pub fn apply_item(&mut self, item: LogItem) -> Result<(), Skipped> {
        match item {
            Ok(stored) => self.apply_logged(&stored.commit, stored.stream_seq).map_err(|reason| Skipped {
                seq: stored.stream_seq,
                subject: stored.subject,
                reason,
            }),
            Err(StoreError::Decode { seq, subject, error }) => {
                if let Some((account, stream)) = convo_wire::parse_subject(&subject) {
                    self.note_position(&account, &stream, seq);
                }
                Err(Skipped { seq, subject, reason: error.to_string() })
            }
            Err(other) => Err(Skipped { seq: 0, subject: String::new(), reason: other.to_string() }),
        }
    }

    /// Brings one aggregate up to date from its messages in the log (after a
    /// lost race, or to read an evicted conversation back): applies what it
    /// had not seen, and takes the aggregate's position from the log itself,
    /// so a deleted newest message does not leave a stale expectation.
    /// Returns what could not be applied.
    pub fn reload(&mut self, account: &AccountId, stream: &StreamRef, items: Vec<LogItem>) -> Vec<Skipped> {
        let evicted = match stream {
            StreamRef::Conversation(id) => self.evicted.remove(&(account.clone(), id.clone())),
            _ => false,
        };
        let known = if evicted { 0 } else { self.expected(account, stream) };
        let mut last = 0;
        let mut skipped = Vec::new();
        self.reloading = true;
        for item in items {
            let seq = match &item {
                Ok(stored) => stored.stream_seq,
                Err(StoreError::Decode { seq, .. }) => *seq,
                Err(_) => 0,
            };
            last = last.max(seq);
            if seq > known || seq == 0 {
                skipped.extend(self.apply_item(item).err());
            }
        }
        self.reloading = false;
        let a = self.accounts.entry(account.clone()).or_insert_with(|| Account::new(account));
        a.last_commit.insert(stream.clone(), last);
        skipped
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
            StreamRef::Contacts => {
                for record in commit.contact_records() {
                    account.contacts.evolve(&record);
                    if let ContactEvent::ContactErased(erased) = &record.event {
                        // What the log reads for them now (their conversations' keys are gone).
                        for held in account.conversations.values_mut() {
                            if held.conversation.facts.as_ref().is_some_and(|f| f.contact == erased.contact) {
                                held.conversation.scrub_personal_data(convo_wire::personal::ERASED);
                            }
                        }
                    }
                }
                settle_follow_up(&mut self.follow_ups, &mut self.accounts, &commit.command);
            }
            StreamRef::Agent(agent) => {
                let presence = account.agents.entry(agent.clone()).or_insert_with(|| AgentPresence::new(agent.clone()));
                for record in commit.agent_records() {
                    presence.evolve(&record);
                    account.floor.apply_agent(agent, &record);
                }
            }
            StreamRef::Conversation(id) => {
                let key = (commit.account.clone(), id.clone());
                // A conversation that closed before what recovery read (a snapshot
                // keeps only the closing commit of one whose content awaits expiry):
                // its history stays in the log, read back if a command comes for it.
                let out_of_memory =
                    !self.reloading && !account.conversations.contains_key(id) && commit.first_seq() != 1;
                for record in commit.conversation_records() {
                    match &record.event {
                        ConversationEvent::ContentRetentionScheduled { expires_at, .. } => {
                            self.expiries.insert(key.clone(), (*expires_at, record.seq));
                            if out_of_memory {
                                // In memory, the conversation arms it (and the entry outlives an eviction).
                                self.timers.push(Reverse((*expires_at, key.0.clone(), key.1.clone())));
                            }
                        }
                        ConversationEvent::ContentExpired { .. } => {
                            self.expiries.remove(&key);
                        }
                        _ => {}
                    }
                }
                if out_of_memory {
                    account.last_commit.remove(&commit.stream);
                    if let Some((_, seq)) = self.expiries.get_mut(&key) {
                        *seq = (*seq).max(commit.last_seq());
                    }
                    self.evicted.insert(key);
                    return;
                }
                let held = &mut **account.conversations.entry(id.clone()).or_insert_with(|| Held::new(id));
                let conversation = &mut held.conversation;
                for record in commit.conversation_records() {
                    conversation.evolve(&record);
                    account.floor.apply_conversation(id, &record);
                    let (command, actor) = match &record.event {
                        ConversationEvent::ContactAttributeRequested { name, value } => {
                            let Some(facts) = &conversation.facts else { continue };
                            let command = Command::SetContactAttribute(SetContactAttribute {
                                contact: facts.contact.clone(),
                                name: name.clone(),
                                value: value.clone(),
                            });
                            (command, record.actor.clone())
                        }
                        ConversationEvent::ContactRequested { contact, channel, handle, name } => {
                            let identity = Identity { channel: channel.clone(), handle: handle.clone() };
                            account.pending_contacts.insert(identity.clone(), contact.clone());
                            let command = Command::DefineContact(ContactSpec {
                                id: contact.clone(),
                                name: name.clone().unwrap_or_else(|| handle.clone()),
                                identities: vec![identity],
                                attributes: BTreeMap::new(),
                                labels: Vec::new(),
                            });
                            (command, Actor::system(CONTACTS_ACTOR))
                        }
                        _ => continue,
                    };
                    let event = convo_domain::EventId::derive(&commit.account, &commit.stream.path(), record.seq);
                    self.follow_ups.push_back(CommandEnvelope {
                        id: follow_up_id(&event),
                        account: commit.account.clone(),
                        actor,
                        command,
                    });
                }
                let deadline = conversation.next_deadline();
                let closed = conversation.status == Status::Closed;
                if let Some((_, seq)) = self.expiries.get_mut(&key) {
                    *seq = conversation.seq;
                }
                if let Some(deadline) = deadline {
                    held.arm(&mut self.timers, &mut self.armed, (&commit.account, id), deadline);
                }
                self.evicted.remove(&key);
                if closed {
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
    /// memory (open ones stay: their timers live here; so do those `busy`
    /// says have a command under way). Returns how many left. Their history
    /// stays in the log and is read back if a command comes for them.
    pub fn evict_closed(
        &mut self,
        before: Timestamp,
        loaded_max: usize,
        busy: impl Fn(&AccountId, &ConversationId) -> bool,
    ) -> usize {
        let mut count = 0;
        let mut kept = Vec::new();
        let mut loaded = self.loaded_conversations();
        while let Some((at, account, id)) = self.closed.first().cloned() {
            if at >= before && loaded <= loaded_max {
                break;
            }
            self.closed.pop_first();
            if busy(&account, &id) {
                kept.push((at, account, id));
                continue;
            }
            loaded = loaded.saturating_sub(1);
            self.closed_at.remove(&(account.clone(), id.clone()));
            if let Some(a) = self.accounts.get_mut(&account) {
                if let Some(mut held) = a.conversations.remove(&id) {
                    held.disarm(&mut self.armed);
                }
                a.last_commit.remove(&StreamRef::Conversation(id.clone()));
            }
            self.evicted.insert((account, id));
            count += 1;
        }
        self.closed.extend(kept);
        count
    }

    /// How this world (live, after a run) differs from `recovered` (rebuilt
    /// from the log alone), if it does: every account's catalog, agents,
    /// floor and aggregate positions, and every conversation — except that a
    /// conversation evicted from the live world must be closed in the log.
    pub fn difference_from(&self, recovered: &World) -> Option<String> {
        if let Some(id) = self.accounts.keys().find(|id| !recovered.accounts.contains_key(*id)) {
            return Some(format!("account {id} is in memory but not in the log"));
        }
        for (id, log) in &recovered.accounts {
            let Some(live) = self.accounts.get(id) else {
                return Some(format!("account {id} is in the log but not in memory"));
            };
            if live.catalog != log.catalog {
                return Some(format!("account {id}: the catalog differs"));
            }
            if live.contacts != log.contacts {
                return Some(format!("account {id}: the contact book differs"));
            }
            if live.agents != log.agents {
                return Some(format!("account {id}: agent presence differs"));
            }
            if live.floor != log.floor {
                return Some(format!(
                    "account {id}: the floor differs:\n  live {:?}\n  log  {:?}",
                    live.floor, log.floor
                ));
            }
            for (stream, seq) in &live.last_commit {
                if log.last_commit.get(stream) != Some(seq) {
                    return Some(format!(
                        "account {id}: {} is at log position {seq} in memory, {:?} in the log",
                        stream.path(),
                        log.last_commit.get(stream)
                    ));
                }
            }
            for (cid, conversation) in &log.conversations {
                let conversation = &conversation.conversation;
                match live.conversations.get(cid).map(|h| &h.conversation) {
                    Some(c) if c == conversation => {}
                    Some(c) => {
                        return Some(format!(
                            "conversation {id}/{cid} differs:\n  live {c:?}\n  log  {conversation:?}"
                        ));
                    }
                    None if self.evicted.contains(&(id.clone(), cid.clone()))
                        && conversation.status == Status::Closed => {}
                    None => return Some(format!("conversation {id}/{cid} is in the log but not in memory")),
                }
            }
            if let Some(cid) = live.conversations.keys().find(|c| !log.conversations.contains_key(*c)) {
                return Some(format!("conversation {id}/{cid} is in memory but not in the log"));
            }
        }
        None
    }

    /// Every open conversation whose next deadline is at or before `at`: a
    /// timer that should have fired.
    pub fn overdue(&self, at: Timestamp) -> Vec<(AccountId, ConversationId, Timestamp)> {
        let mut out = Vec::new();
        for (id, a) in &self.accounts {
            for (cid, h) in &a.conversations {
                if let Some(deadline) = h.conversation.next_deadline().filter(|d| *d <= at) {
                    out.push((id.clone(), cid.clone(), deadline));
                }
            }
        }
        out
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

    /// Puts a conversation's next deadline back in the timer queue (after its
    /// tick could not be decided or made durable); a no-op when it is there.
    pub fn rearm(&mut self, account: &AccountId, id: &ConversationId) {
        let Some(held) = self.accounts.get_mut(account).and_then(|a| a.conversations.get_mut(id)) else {
            // Out of memory: a content expiry still awaited goes back in the queue.
            let key = (account.clone(), id.clone());
            if let Some((at, _)) = self.expiries.get(&key).filter(|_| self.evicted.contains(&key)) {
                self.timers.push(Reverse((*at, key.0, key.1)));
            }
            return;
        };
        if let Some(deadline) = held.conversation.next_deadline() {
            held.arm(&mut self.timers, &mut self.armed, (account, id), deadline);
        }
    }

    /// The earliest pending timer, skipping stale entries.
    pub fn next_timer(&mut self) -> Option<Timestamp> {
        while let Some(Reverse((at, account, id))) = self.timers.peek() {
            let at = *at;
            // Live when it is the deadline its conversation has armed, and still its next one.
            match self.accounts.get_mut(account).and_then(|a| a.conversations.get_mut(id)) {
                Some(held) if held.armed == Some(at) => {
                    if held.conversation.next_deadline() == Some(at) {
                        return Some(at);
                    }
                    held.disarm(&mut self.armed);
                }
                Some(_) => {}
                // Out of memory: live when it is the content expiry still awaited.
                None => {
                    let key = (account.clone(), id.clone());
                    if self.evicted.contains(&key) && self.expiries.get(&key).is_some_and(|(t, _)| *t == at) {
                        return Some(at);
                    }
                }
            }
            self.timers.pop();
        }
        None
    }

    /// Takes the earliest pending timer if it is due at or before `bound`:
    /// its `tick` (with an engine-made id no client can send) and its deadline.
    pub fn pop_due_tick(&mut self, bound: Timestamp) -> Option<(CommandEnvelope, Timestamp)> {
        let at = self.next_timer().filter(|at| *at <= bound)?;
        let Reverse((_, account, id)) = self.timers.pop()?;
        let seq = match self.accounts.get_mut(&account)?.conversations.get_mut(&id) {
            Some(held) => {
                held.disarm(&mut self.armed);
                held.conversation.seq
            }
            // An evicted conversation's content expiry: read back before its tick is decided.
            None => self.expiries.get(&(account.clone(), id.clone()))?.1,
        };
        let envelope = CommandEnvelope {
            id: engine_command_id("tick", seq + 1),
            account,
            actor: Actor::system("timer"),
            command: Command::Tick(Tick { conversation: id }),
        };
        Some((envelope, at))
    }

    /// An account's contact book, if the account is known.
    pub fn contact_book(&self, account: &AccountId) -> Option<&ContactBook> {
        self.accounts.get(account).map(|a| &a.contacts)
    }

    /// The oldest command the engine owes another aggregate, if any.
    pub fn next_follow_up(&self) -> Option<CommandEnvelope> {
        self.follow_ups.front().cloned()
    }

    /// A follow-up's outcome is known (recorded, a repeat, or refused).
    pub fn follow_up_done(&mut self, id: &CommandId) {
        settle_follow_up(&mut self.follow_ups, &mut self.accounts, id);
    }

    /// How many follow-ups wait.
    pub fn follow_ups(&self) -> usize {
        self.follow_ups.len()
    }

    /// The assignment routing would make now, as a command.
    pub fn next_assignment(&self) -> Option<CommandEnvelope> {
        self.accounts.iter().find_map(|(account, a)| {
            let (conversation, agent) = a.floor.next_assignment(&a.catalog)?;
            let seq = a.conversations.get(&conversation).map_or(0, |h| h.conversation.seq);
            Some(CommandEnvelope {
                id: engine_command_id("route", seq + 1),
                account: account.clone(),
                actor: Actor::system("routing"),
                command: Command::Assign(Assign { conversation, agent }),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a fixture's commands through the world, committing at once.
    /// A contact attribute a conversation's automation asked for is owed
    /// until the contact book records it: a world rebuilt from a log that
    /// lacks the follow-up (a crash between the two appends) owes it again,
    /// and the machine sends it under the same id.
    #[test]
    fn a_follow_up_lost_in_a_crash_is_sent_again() {
        let (live, log) = world_and_log("contact-attribute-at-close");
        assert_eq!(live.follow_ups(), 0, "every follow-up was recorded");
        let follow_up = log.iter().position(|c| c.command.as_str().starts_with("_contact-")).expect("a follow-up");
        let mut recovered = World::new();
        for (n, commit) in log.iter().enumerate().take(follow_up) {
            recovered.apply_logged(commit, n as u64 + 1).unwrap();
        }
        assert_eq!(recovered.next_follow_up().map(|f| f.id), Some(log[follow_up].command.clone()));
        let mut machine = crate::Machine::new(crate::MachineConfig::stepwise());
        *machine.world_mut() = recovered;
        machine.handle_timeout(log[follow_up].at);
        let sent = std::iter::from_fn(|| machine.poll()).find_map(|output| match output {
            crate::machine::Output::Append { commit, .. } => Some(commit),
            _ => None,
        });
        let sent = sent.expect("the machine sends the follow-up again");
        assert_eq!((&sent.command, &sent.events), (&log[follow_up].command, &log[follow_up].events));
    }

    /// A handle no contact holds gets a contact the engine makes; until the
    /// book records it (its follow-up), a second conversation from the same
    /// handle names the same contact and asks for none; once the follow-up's
    /// outcome is known and the book holds nothing (refused), it is no
    /// longer pending.
    #[test]
    fn a_pending_contact_names_the_same_handle_until_the_book_decides() {
        let (_, log) = world_and_log("contact-handles");
        let opened_c1 = log.iter().position(|c| c.command.as_str() == "wa-0001").expect("c1 opens");
        let mut world = World::new();
        for (n, commit) in log.iter().enumerate().take(opened_c1 + 1) {
            world.apply_logged(commit, n as u64 + 1).unwrap();
        }
        let follow_up = world.next_follow_up().expect("the book is owed the new contact");
        let Command::DefineContact(spec) = &follow_up.command else { panic!("{:?}", follow_up.command) };
        assert!(spec.id.as_str().starts_with(convo_domain::contact::MINTED_CONTACT_PREFIX));
        assert!(!spec.id.as_str().contains("573105550101"), "nothing of the handle is in the id");
        let c2 = |id: &str| CommandEnvelope {
            id: CommandId::new(id).unwrap(),
            account: AccountId::new("default").unwrap(),
            actor: Actor::system("whatsapp-gateway"),
            command: Command::from_json(serde_json::json!({"type": "receive_message", "conversation": "c2",
                "handle": "+573105550101", "channel": "wa", "text": "hola"}))
            .unwrap(),
        };
        let opened = |world: &World, id: &str| {
            let Ok(Decided::Commit(commit)) = world.decide(&c2(id), log[opened_c1].at) else { panic!("c2 opens") };
            let contact = commit.events.iter().find_map(|e| match &e.event {
                convo_wire::Event::Conversation(ConversationEvent::ConversationOpened(o)) => Some(o.contact.clone()),
                _ => None,
            });
            let requests = commit.events.iter().any(|e| {
                matches!(e.event, convo_wire::Event::Conversation(ConversationEvent::ContactRequested { .. }))
            });
            (contact.unwrap(), requests)
        };
        assert_eq!(opened(&world, "wa-0002"), (spec.id.clone(), false), "the pending contact, asked for once");
        world.follow_up_done(&follow_up.id);
        let (other, requests) = opened(&world, "wa-0002");
        assert!(other != spec.id && requests, "no longer pending: a contact of its own, asked for");
    }

    fn world_after(fixture: &str) -> World {
        world_and_log(fixture).0
    }

    /// Runs a fixture's commands through the machine, committing at once:
    /// the world after, and the commits in log order.
    fn world_and_log(fixture: &str) -> (World, Vec<Commit>) {
        let text = std::fs::read_to_string(format!(
            "{}/../../replay-fixtures/{fixture}/input.jsonl",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let mut machine = crate::Machine::new(crate::MachineConfig::stepwise());
        let mut seq = 0;
        let mut log = Vec::new();
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
            machine.handle_request(0, envelope, at);
            while let Some(output) = machine.poll() {
                if let crate::machine::Output::Append { io, commit, .. } = output {
                    seq += 1;
                    log.push(commit.clone());
                    machine.handle_appended(io, commit, Ok(seq));
                }
            }
        }
        (std::mem::take(machine.world_mut()), log)
    }

    #[test]
    fn eviction_takes_closed_conversations_only_by_age_then_by_count() {
        let mut world = world_after("routing-fifo-capacity");
        assert_eq!(world.loaded_conversations(), 3);
        // Nothing closed before the epoch; the memory bound is not reached.
        assert_eq!(world.evict_closed(Timestamp::from_millis(0), 10, |_, _| false), 0);
        // A conversation with a command under way stays, whatever its age.
        let mut busy = world_after("routing-fifo-capacity");
        assert_eq!(busy.evict_closed(Timestamp::from_millis(i64::MAX), 0, |_, _| true), 0);
        // A bound of 1 evicts the two oldest closed conversations.
        assert_eq!(world.evict_closed(Timestamp::from_millis(0), 1, |_, _| false), 2);
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
