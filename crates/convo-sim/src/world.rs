//! The simulated world: every account's aggregates held in memory, decided by
//! the real domain code, with a timer queue fed by `next_deadline()` and the
//! routing rule offering queued conversations to available agents.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use convo_domain::command::{Assign, Tick};
use convo_domain::{
    AccountId, Actor, AgentEvent, AgentPresence, Catalog, Command, CommandEnvelope, CommandId, ConfigEvent, Context,
    Conversation, ConversationEvent, ConversationId, Decision, Floor, Recorded, Target, Timestamp, UserId,
};

/// At most this many routing assignments after one step (each one fills an
/// agent slot, so this only bounds a pathological configuration).
pub const ASSIGNMENTS_PER_STEP_MAX: usize = 10_000;

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
}

#[derive(Debug)]
struct Account {
    catalog: Catalog,
    floor: Floor,
    conversations: BTreeMap<ConversationId, Conversation>,
    agents: BTreeMap<UserId, AgentPresence>,
}

/// Every account's state plus the timer queue.
#[derive(Debug, Default)]
pub struct World {
    accounts: BTreeMap<AccountId, Account>,
    /// (deadline, account, conversation); stale entries are skipped when popped.
    timers: BinaryHeap<Reverse<(Timestamp, AccountId, ConversationId)>>,
}

impl World {
    pub fn new() -> Self {
        Self::default()
    }

    fn account<'a>(accounts: &'a mut BTreeMap<AccountId, Account>, id: &AccountId) -> &'a mut Account {
        accounts.entry(id.clone()).or_insert_with(|| Account {
            catalog: Catalog::new(id.clone()),
            floor: Floor::default(),
            conversations: BTreeMap::new(),
            agents: BTreeMap::new(),
        })
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

    /// Applies one command at `now`, appending what happened to `out`.
    pub fn apply(&mut self, envelope: &CommandEnvelope, now: Timestamp, line: Option<usize>, out: &mut Vec<Record>) {
        let account_id = envelope.account.clone();
        let account = Self::account(&mut self.accounts, &account_id);
        let outcome = match envelope.command.target() {
            Target::Catalog => account.catalog.decide(envelope, now, &account.floor).map(|decision| {
                let duplicate = duplicate_of(&decision);
                for record in decision.into_events() {
                    account.catalog.evolve(&record);
                    out.push(Record::Config { account: account_id.clone(), record });
                }
                duplicate
            }),
            Target::Agent(agent) => {
                let presence = account.agents.entry(agent.clone()).or_insert_with(|| AgentPresence::new(agent.clone()));
                presence.decide(&account.catalog, envelope, now).map(|decision| {
                    let duplicate = duplicate_of(&decision);
                    for record in decision.into_events() {
                        presence.evolve(&record);
                        account.floor.apply_agent(agent, &record);
                        out.push(Record::Agent { account: account_id.clone(), agent: agent.clone(), record });
                    }
                    duplicate
                })
            }
            Target::Conversation(id) => {
                let conversation =
                    account.conversations.entry(id.clone()).or_insert_with(|| Conversation::new(id.clone()));
                let ctx = Context { catalog: &account.catalog, floor: &account.floor };
                let result = conversation.decide(ctx, envelope, now).map(|decision| {
                    let duplicate = duplicate_of(&decision);
                    for record in decision.into_events() {
                        conversation.evolve(&record);
                        account.floor.apply_conversation(id, &record);
                        out.push(Record::Conversation {
                            account: account_id.clone(),
                            conversation: id.clone(),
                            record,
                        });
                    }
                    duplicate
                });
                if let Some(deadline) = conversation.next_deadline() {
                    self.timers.push(Reverse((deadline, account_id.clone(), id.clone())));
                }
                if conversation.seq == 0 {
                    account.conversations.remove(id); // nothing recorded: keep no empty shells
                }
                result
            }
        };
        match outcome {
            Ok(None) => {}
            Ok(Some((first_seq, last_seq))) => out.push(Record::Duplicate {
                at: now,
                account: account_id,
                command: envelope.id.clone(),
                first_seq,
                last_seq,
                line,
            }),
            Err(rejection) => out.push(Record::Rejected {
                at: now,
                account: account_id,
                command: envelope.id.clone(),
                kind: envelope.command.type_name(),
                code: rejection.code(),
                reason: rejection.to_string(),
                line,
            }),
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

    /// Fires the earliest pending timer with a `tick` at its deadline.
    pub fn fire_next_timer(&mut self, out: &mut Vec<Record>) -> Option<Timestamp> {
        let at = self.next_timer()?;
        let Reverse((at_, account, id)) = self.timers.pop()?;
        debug_assert_eq!(at, at_);
        let seq = self.accounts[&account].conversations[&id].seq;
        let envelope = CommandEnvelope {
            id: CommandId::new(&format!("tick-{}", seq + 1)).expect("valid"),
            account,
            actor: Actor::system("timer"),
            command: Command::Tick(Tick { conversation: id }),
        };
        self.apply(&envelope, at, None, out);
        Some(at)
    }

    /// Lets routing assign queued conversations to available agents at `now`.
    pub fn route(&mut self, now: Timestamp, out: &mut Vec<Record>) {
        let accounts: Vec<AccountId> = self.accounts.keys().cloned().collect();
        for account in accounts {
            for _ in 0..ASSIGNMENTS_PER_STEP_MAX {
                let a = &self.accounts[&account];
                let Some((conversation, agent)) = a.floor.next_assignment(&a.catalog) else {
                    break;
                };
                let seq = a.conversations.get(&conversation).map_or(0, |c| c.seq);
                let envelope = CommandEnvelope {
                    id: CommandId::new(&format!("route-{}", seq + 1)).expect("valid"),
                    account: account.clone(),
                    actor: Actor::system("routing"),
                    command: Command::Assign(Assign { conversation, agent }),
                };
                let before = out.len();
                self.apply(&envelope, now, None, out);
                if !matches!(out.get(before), Some(Record::Conversation { .. })) {
                    // The floor and the aggregate disagree: stop rather than loop.
                    break;
                }
            }
        }
    }
}

fn duplicate_of<E>(decision: &Decision<E>) -> Option<(u64, u64)> {
    match decision {
        Decision::Duplicate { first_seq, last_seq } => Some((*first_seq, *last_seq)),
        Decision::Commit(_) => None,
    }
}
