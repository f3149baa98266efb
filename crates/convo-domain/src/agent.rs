//! The agent presence aggregate: one per user, recording each change of
//! presence state (available, break, lunch…), so time in state is reportable
//! and routing knows who can take work.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::aggregate::{Actor, Decision, Emitter, RecentCommands, Recorded};
use crate::command::{Command, CommandEnvelope};
use crate::config::{Catalog, Role};
use crate::ids::UserId;
use crate::rejection::Rejection;
use crate::time::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentEvent {
    AgentStateChanged { state: String, previous: Option<String> },
}

impl AgentEvent {
    pub fn type_name(&self) -> &'static str {
        match self {
            AgentEvent::AgentStateChanged { .. } => "agent_state_changed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPresence {
    pub agent: UserId,
    pub seq: u64,
    pub state: Option<String>,
    pub since: Timestamp,
    recent: RecentCommands,
}

impl AgentPresence {
    pub fn new(agent: UserId) -> Self {
        Self { agent, seq: 0, state: None, since: Timestamp::default(), recent: RecentCommands::default() }
    }

    pub fn decide(
        &self,
        catalog: &Catalog,
        envelope: &CommandEnvelope,
        now: Timestamp,
    ) -> Result<Decision<AgentEvent>, Rejection> {
        if let Some((first_seq, last_seq)) = self.recent.find(&envelope.id) {
            return Ok(Decision::Duplicate { first_seq, last_seq });
        }
        let Command::SetAgentState(c) = &envelope.command else {
            return Err(Rejection::WrongAggregate {
                command: envelope.command.type_name(),
                aggregate: "an agent's presence",
            });
        };
        if let Some(actor) = catalog.check_actor(&envelope.actor)?
            && actor.id != c.agent
            && actor.role == Role::Agent
        {
            return Err(Rejection::Forbidden {
                action: "changing another user's state",
                needed: "that user, a supervisor or an admin",
            });
        }
        if matches!(envelope.actor, Actor::Contact(_)) {
            return Err(Rejection::Forbidden { action: "set_agent_state", needed: "a user or the system" });
        }
        catalog.user(&c.agent)?;
        if !catalog.settings.agent_states.contains(&c.state) {
            return Err(Rejection::UnknownAgentState(c.state.clone()));
        }
        let mut out = Emitter::new(self.seq, now, &envelope.id, &envelope.actor);
        if self.state.as_deref() != Some(c.state.as_str()) {
            out.emit(AgentEvent::AgentStateChanged { state: c.state.clone(), previous: self.state.clone() });
        }
        Ok(out.finish())
    }

    pub fn evolve(&mut self, record: &Recorded<AgentEvent>) {
        assert_eq!(record.seq, self.seq + 1, "agent {}: event out of sequence", self.agent);
        self.seq = record.seq;
        self.recent.note(&record.command, record.seq);
        match &record.event {
            AgentEvent::AgentStateChanged { state, .. } => {
                self.state = Some(state.clone());
                self.since = record.at;
            }
        }
    }
}
