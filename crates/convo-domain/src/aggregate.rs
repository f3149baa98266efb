//! What every aggregate shares: recorded events with their sequence, the
//! outcome of a decision, and the bounded memory of recent command ids that
//! makes commands idempotent.

use std::collections::VecDeque;
use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{CommandId, ContactId, IntegrationId, UserId};
use crate::time::Timestamp;

/// How many command ids an aggregate remembers for idempotency. An older
/// repeat is decided again (the broker's de-duplication window is the second
/// guard); a conversation rarely sees this many commands.
pub const COMMAND_IDS_REMEMBERED_MAX: usize = 128;

/// Who caused an event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    /// A platform user (agent, supervisor, admin), with the address they acted from.
    User {
        id: UserId,
        #[serde(default)]
        ip: Option<IpAddr>,
    },
    /// The contact (customer) of a conversation.
    Contact(ContactId),
    /// A rule of the engine (`sla`, `contact_inactivity`, `routing`…), or a
    /// trusted offline input (a replayed scenario). Never a network client.
    System(String),
    /// An API client of the account, authenticated by its key; what it may do
    /// is bounded by its scopes at the front door.
    Integration {
        id: IntegrationId,
        #[serde(default)]
        ip: Option<IpAddr>,
    },
    /// The platform operator: creates accounts and acts across them.
    Operator {
        #[serde(default)]
        ip: Option<IpAddr>,
    },
}

/// The system actors the engine itself acts as: its timers, routing and
/// rules, and the automated messages they send. No client may claim one of
/// these names (a close "by contact_inactivity" must be the engine's own).
pub const ENGINE_ACTORS: [&str; 18] = [
    "access",
    "timer",
    "routing",
    "sla",
    "agent_inactivity",
    "contact_inactivity",
    "auto_resolve",
    "out_of_hours",
    "welcome_message",
    "out_of_hours_message",
    "inactivity_alert_message",
    "transfer_notice_message",
    "closing_message",
    "survey_message",
    "automation",
    "automation_message",
    "retention",
    "contacts",
];

impl Actor {
    pub fn system(rule: &str) -> Self {
        Actor::System(rule.to_owned())
    }

    /// The address the actor acted from, as the server saw it.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Actor::User { ip, .. } | Actor::Integration { ip, .. } | Actor::Operator { ip } => *ip,
            Actor::Contact(_) | Actor::System(_) => None,
        }
    }

    /// Whether the actor is trusted like the engine's own rules (the system,
    /// the platform operator, an integration within its scopes).
    pub fn is_trusted(&self) -> bool {
        matches!(self, Actor::System(_) | Actor::Integration { .. } | Actor::Operator { .. })
    }

    pub fn user_id(&self) -> Option<&UserId> {
        match self {
            Actor::User { id, .. } => Some(id),
            _ => None,
        }
    }
}

/// One event as recorded in its stream: its place, time, cause and actor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Recorded<E> {
    /// Position in the aggregate's own stream, from 1, one per event.
    pub seq: u64,
    pub at: Timestamp,
    pub command: CommandId,
    pub actor: Actor,
    pub event: E,
}

/// The outcome of a command that broke no rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision<E> {
    /// New events to append, in order (possibly none: nothing to do).
    Commit(Vec<Recorded<E>>),
    /// The command id was already applied: these were its events; nothing new.
    Duplicate { first_seq: u64, last_seq: u64 },
}

impl<E> Decision<E> {
    pub fn events(&self) -> &[Recorded<E>] {
        match self {
            Decision::Commit(events) => events,
            Decision::Duplicate { .. } => &[],
        }
    }

    pub fn into_events(self) -> Vec<Recorded<E>> {
        match self {
            Decision::Commit(events) => events,
            Decision::Duplicate { .. } => Vec::new(),
        }
    }
}

/// Recent command ids and the events each produced, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecentCommands {
    entries: VecDeque<(CommandId, u64, u64)>,
}

impl RecentCommands {
    pub fn find(&self, id: &CommandId) -> Option<(u64, u64)> {
        self.entries.iter().rev().find(|(c, _, _)| c == id).map(|&(_, first, last)| (first, last))
    }

    /// Notes that event `seq` was caused by command `id` (called by `evolve`).
    pub fn note(&mut self, id: &CommandId, seq: u64) {
        if let Some(last) = self.entries.back_mut()
            && &last.0 == id
        {
            last.2 = seq;
            return;
        }
        if self.entries.len() == COMMAND_IDS_REMEMBERED_MAX {
            self.entries.pop_front();
        }
        // Room for one at first (most queued conversations have seen one
        // command), then growing as usual.
        if self.entries.capacity() == 0 {
            self.entries.reserve_exact(1);
        }
        self.entries.push_back((id.clone(), seq, seq));
    }
}

/// Builds the records of one decision: consecutive sequences from the
/// aggregate's current one, the command's time and id.
#[derive(Debug)]
pub(crate) struct Emitter<E> {
    next_seq: u64,
    at: Timestamp,
    command: CommandId,
    actor: Actor,
    pub(crate) out: Vec<Recorded<E>>,
}

impl<E> Emitter<E> {
    pub(crate) fn new(seq: u64, at: Timestamp, command: &CommandId, actor: &Actor) -> Self {
        Self { next_seq: seq + 1, at, command: command.clone(), actor: actor.clone(), out: Vec::new() }
    }

    /// The instant the records are made at.
    pub(crate) fn at(&self) -> Timestamp {
        self.at
    }

    pub(crate) fn emit(&mut self, event: E) -> &Recorded<E> {
        let actor = self.actor.clone();
        self.emit_as(actor, event)
    }

    pub(crate) fn emit_as(&mut self, actor: Actor, event: E) -> &Recorded<E> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.out.push(Recorded { seq, at: self.at, command: self.command.clone(), actor, event });
        self.out.last().expect("just pushed")
    }

    /// Takes records decided ahead (on a scratch state from this emitter's
    /// position): they follow what was emitted so far.
    pub(crate) fn absorb(&mut self, records: Vec<Recorded<E>>) {
        if let Some(last) = records.last() {
            self.next_seq = last.seq + 1;
        }
        self.out.extend(records);
    }

    pub(crate) fn finish(self) -> Decision<E> {
        Decision::Commit(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_commands_forget_the_oldest() {
        let mut recent = RecentCommands::default();
        let id = |n: usize| CommandId::new(&format!("c{n}")).unwrap();
        recent.note(&id(0), 1);
        recent.note(&id(0), 2);
        assert_eq!(recent.find(&id(0)), Some((1, 2)));
        for n in 1..=COMMAND_IDS_REMEMBERED_MAX {
            recent.note(&id(n), 2 + n as u64);
        }
        assert_eq!(recent.find(&id(0)), None);
        assert!(recent.find(&id(1)).is_some());
    }
}
