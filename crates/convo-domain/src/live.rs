//! The live floor: which agents are in which state with how much work, and
//! which conversations wait in which campaign queue. It is a fold over the
//! conversation and agent events (the live dashboard of SPEC §8), kept by
//! whoever runs the aggregates; commands read it for capacity and availability,
//! and the routing rule of SPEC §7 reads it to offer work.

use std::collections::{BTreeMap, BTreeSet};

use crate::agent::AgentEvent;
use crate::aggregate::Recorded;
use crate::config::{Catalog, Occupancy, Role, STATE_AVAILABLE, STATE_OFFLINE};
use crate::conversation::{ConversationEvent, Destination};
use crate::ids::{CampaignId, ConversationId, TeamId, UserId};
use crate::time::Timestamp;

/// An agent as routing sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentLive {
    pub state: String,
    pub state_since: Timestamp,
    /// Open conversations assigned to the agent.
    pub load: u32,
    pub last_assigned_at: Option<Timestamp>,
}

impl AgentLive {
    /// Routing's "longest idle": since the later of the last assignment and
    /// the last state change.
    pub fn idle_since(&self) -> Timestamp {
        self.last_assigned_at.map_or(self.state_since, |a| a.max(self.state_since))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ConversationLive {
    campaign: CampaignId,
    team: Option<TeamId>,
    assignee: Option<UserId>,
    /// The queue key while queued.
    queued: Option<Timestamp>,
}

/// A queue: a campaign's own (no team), or a team's within the campaign.
type QueueKey = (CampaignId, Option<TeamId>);

/// One account's floor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Floor {
    agents: BTreeMap<UserId, AgentLive>,
    conversations: BTreeMap<ConversationId, ConversationLive>,
    /// One queue per campaign, and one per team within it.
    queues: BTreeMap<QueueKey, BTreeSet<(Timestamp, ConversationId)>>,
    active: BTreeMap<CampaignId, u32>,
    teams: BTreeMap<TeamId, u32>,
}

/// A candidate for a conversation (SPEC §7).
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub agent: &'a UserId,
    pub state: &'a str,
    pub load: u32,
    pub max_concurrent: u32,
    pub idle_since: Timestamp,
}

/// The routing choice: among agents who are `available` and under their
/// maximum, the least loaded, then the longest idle, then the smallest id
/// (so the choice is total and deterministic).
pub fn choose_agent<'a>(candidates: impl IntoIterator<Item = Candidate<'a>>) -> Option<&'a UserId> {
    candidates
        .into_iter()
        .filter(|c| c.state == STATE_AVAILABLE && c.load < c.max_concurrent)
        .min_by(|a, b| (a.load, a.idle_since, a.agent).cmp(&(b.load, b.idle_since, b.agent)))
        .map(|c| c.agent)
}

static OFFLINE: AgentLive =
    AgentLive { state: String::new(), state_since: Timestamp::from_millis(0), load: 0, last_assigned_at: None };

impl Floor {
    /// The agent's live state (offline with no load when never seen).
    pub fn agent(&self, id: &UserId) -> AgentView<'_> {
        match self.agents.get(id) {
            Some(a) => AgentView { state: &a.state, load: a.load, live: a },
            None => AgentView { state: STATE_OFFLINE, load: 0, live: &OFFLINE },
        }
    }

    pub fn agents(&self) -> impl Iterator<Item = (&UserId, &AgentLive)> {
        self.agents.iter()
    }

    /// Queued conversations of a campaign: its own queue, then each team's,
    /// each oldest wait first.
    pub fn queue<'a>(&'a self, campaign: &'a CampaignId) -> impl Iterator<Item = &'a ConversationId> + 'a {
        self.queues.iter().filter(move |((c, _), _)| c == campaign).flat_map(|(_, q)| q.iter().map(|(_, c)| c))
    }

    pub fn open_conversations(&self) -> usize {
        self.conversations.len()
    }

    pub fn apply_agent(&mut self, agent: &UserId, record: &Recorded<AgentEvent>) {
        let AgentEvent::AgentStateChanged { state, .. } = &record.event;
        let live = self.agents.entry(agent.clone()).or_insert_with(|| OFFLINE.clone());
        live.state = state.clone();
        live.state_since = record.at;
    }

    pub fn apply_conversation(&mut self, id: &ConversationId, record: &Recorded<ConversationEvent>) {
        match &record.event {
            ConversationEvent::ConversationOpened(o) => {
                self.conversations.insert(
                    id.clone(),
                    ConversationLive { campaign: o.campaign.clone(), team: None, assignee: None, queued: None },
                );
                *self.active.entry(o.campaign.clone()).or_default() += 1;
            }
            ConversationEvent::ConversationQueued { campaign, waiting_since } => {
                self.dequeue(id);
                if let Some(live) = self.conversations.get_mut(id) {
                    live.queued = Some(*waiting_since);
                    let key = (campaign.clone(), live.team.clone());
                    self.queues.entry(key).or_default().insert((*waiting_since, id.clone()));
                }
            }
            ConversationEvent::AgentAssigned { agent, .. } => {
                self.dequeue(id);
                if let Some(live) = self.conversations.get_mut(id) {
                    live.assignee = Some(agent.clone());
                }
                let a = self.agents.entry(agent.clone()).or_insert_with(|| OFFLINE.clone());
                a.load += 1;
                // Never backwards: an old conversation read back from the log
                // does not make its agent look idle longer.
                a.last_assigned_at = Some(a.last_assigned_at.map_or(record.at, |t| t.max(record.at)));
            }
            ConversationEvent::ConversationTransferred { to, .. } => {
                // Out of the queue it is in, before that queue's key changes.
                self.dequeue(id);
                self.release(id);
                match (to, self.conversations.get_mut(id)) {
                    (Destination::Campaign(change), Some(live)) => {
                        let old = std::mem::replace(&mut live.campaign, change.campaign.clone());
                        decrement(&mut self.active, &old);
                        *self.active.entry(change.campaign.clone()).or_default() += 1;
                        if let Some(team) = live.team.take() {
                            decrement(&mut self.teams, &team);
                        }
                    }
                    (Destination::Team(team), Some(live)) => {
                        if let Some(old) = live.team.replace(team.clone()) {
                            decrement(&mut self.teams, &old);
                        }
                        *self.teams.entry(team.clone()).or_default() += 1;
                    }
                    _ => {}
                }
            }
            ConversationEvent::ConversationClosed { .. } => {
                self.dequeue(id);
                self.release(id);
                if let Some(live) = self.conversations.remove(id) {
                    decrement(&mut self.active, &live.campaign);
                    if let Some(team) = &live.team {
                        decrement(&mut self.teams, team);
                    }
                }
            }
            _ => {}
        }
    }

    fn dequeue(&mut self, id: &ConversationId) {
        if let Some(live) = self.conversations.get_mut(id)
            && let Some(since) = live.queued.take()
        {
            let key = (live.campaign.clone(), live.team.clone());
            if let Some(queue) = self.queues.get_mut(&key) {
                queue.remove(&(since, id.clone()));
                if queue.is_empty() {
                    self.queues.remove(&key);
                }
            }
        }
    }

    fn release(&mut self, id: &ConversationId) {
        if let Some(agent) = self.conversations.get_mut(id).and_then(|live| live.assignee.take())
            && let Some(a) = self.agents.get_mut(&agent)
        {
            a.load = a.load.saturating_sub(1);
        }
    }

    /// The next assignment routing would make: the oldest queued conversation
    /// (across campaigns and teams) whose queue has an agent to take it, and
    /// that agent. A team's queue is offered to the team's members who are
    /// agents of the campaign.
    pub fn next_assignment(&self, catalog: &Catalog) -> Option<(ConversationId, UserId)> {
        let mut heads: Vec<(&(Timestamp, ConversationId), &QueueKey)> =
            self.queues.iter().filter_map(|(key, q)| q.first().map(|head| (head, key))).collect();
        heads.sort();
        heads.into_iter().find_map(|((_, conversation), (campaign, team))| {
            let spec = catalog.campaign(campaign).ok()?;
            let members = match team {
                Some(team) => Some(&catalog.team(team).ok()?.members),
                None => None,
            };
            let candidates = spec.agents.iter().filter(|a| members.is_none_or(|m| m.contains(a))).filter_map(|agent| {
                let user = catalog.user(agent).ok().filter(|u| u.role == Role::Agent)?;
                let live = self.agent(agent);
                Some(Candidate {
                    agent,
                    state: live.state,
                    load: live.load,
                    max_concurrent: user.max_concurrent_conversations,
                    idle_since: live.live.idle_since(),
                })
            });
            choose_agent(candidates).map(|agent| (conversation.clone(), agent.clone()))
        })
    }
}

fn decrement<K: Ord>(map: &mut BTreeMap<K, u32>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl Occupancy for Floor {
    fn active_conversations(&self, campaign: &CampaignId) -> u32 {
        self.active.get(campaign).copied().unwrap_or(0)
    }

    fn team_conversations(&self, team: &TeamId) -> u32 {
        self.teams.get(team).copied().unwrap_or(0)
    }
}

/// A read-only view of one agent on the floor.
#[derive(Debug, Clone, Copy)]
pub struct AgentView<'a> {
    pub state: &'a str,
    pub load: u32,
    pub live: &'a AgentLive,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_prefers_least_loaded_then_longest_idle() {
        let ids: Vec<UserId> = ["a", "b", "c", "d"].iter().map(|x| UserId::new(x).unwrap()).collect();
        let t = Timestamp::from_millis;
        let c = |i: usize, state, load, idle| Candidate {
            agent: &ids[i],
            state,
            load,
            max_concurrent: 2,
            idle_since: t(idle),
        };
        // d is on a break, c is full: a and b have one each; b idles longer.
        let pick = choose_agent([
            c(0, "available", 1, 50),
            c(1, "available", 1, 10),
            c(2, "available", 2, 0),
            c(3, "break", 0, 0),
        ]);
        assert_eq!(pick, Some(&ids[1]));
        // Fewer conversations beats idle time.
        assert_eq!(choose_agent([c(0, "available", 0, 99), c(1, "available", 1, 0)]), Some(&ids[0]));
        assert_eq!(choose_agent([c(2, "available", 2, 0), c(3, "lunch", 0, 0)]), None);
    }
}
