//! # convo-live
//!
//! The live dashboard (SPEC §8): per campaign the conversations queued and
//! assigned with their wait and SLA state, the agents per state with their
//! load and time in state, and the conversations at SLA risk.
//!
//! The tree holds facts only (when a wait started, which threshold the engine
//! has crossed), never a duration: durations and "at risk" are computed by
//! [`dashboard`] for an instant the caller gives (the server's clock when
//! served, the account's last event in the fixtures), so the same events give
//! the same bytes.
//!
//! Layout (JSON values): `c/<account>/<conversation>` an open conversation's
//! [`Card`]; `a/<account>/<agent>` an [`AgentRow`]; `k/<account>/<campaign>`
//! a [`CampaignRow`]; `m/<account>/<team>` a [`TeamRow`]; `t/<account>` the
//! instant of the account's last commit.
//! The inbox read model (`convo-inbox`) folds the same facts with
//! [`apply_commit`] and indexes them per agent.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use convo_domain::conversation::{Destination, Threshold};
use convo_domain::{ConfigEvent, ConversationEvent, Timestamp};
use convo_projector::{Projection, Staged};
use convo_store::StoredCommit;
use convo_wire::{Event, StreamRef};

pub const NAME: &str = "live";
/// How close to a threshold a wait is "at risk" unless the caller says.
pub const DEFAULT_RISK_MARGIN_SECS: u64 = 30;
/// The most conversations one dashboard lists (the longest waits first);
/// the counts per campaign always cover every one.
pub const CONVERSATIONS_SHOWN_MAX: usize = 500;
/// The characters of the contact's last message a card keeps.
pub const PREVIEW_CHARS_MAX: usize = 200;

/// A message's preview: its first [`PREVIEW_CHARS_MAX`] characters.
pub fn preview(text: &str) -> String {
    text.chars().take(PREVIEW_CHARS_MAX).collect()
}

/// Cuts every `last_message.text` in a dashboard's or an inbox's JSON to
/// its preview (for texts kept sealed whole, once opened).
pub fn cut_previews(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Array(items) => items.iter_mut().for_each(cut_previews),
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::String(text)) = map.get_mut("last_message").and_then(|m| m.get_mut("text")) {
                *text = preview(text);
            }
            map.values_mut().for_each(cut_previews);
        }
        _ => {}
    }
}

/// An open conversation as the floor sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Card {
    pub conversation: String,
    pub campaign: String,
    pub client: String,
    pub channel: String,
    /// The contact's number, whole (masked when shown, unless the campaign shows numbers).
    pub contact: String,
    pub contact_name: Option<String>,
    /// `open` (not queued yet: a bot, or waiting for opening hours), `queued` or `assigned`.
    pub status: String,
    pub agent: Option<String>,
    pub opened_at: Timestamp,
    pub queued_since: Option<Timestamp>,
    pub assigned_at: Option<Timestamp>,
    pub sla_optimal_secs: u32,
    pub sla_low_secs: u32,
    /// When the SLA clock of the first wait starts (the next opening, out of hours).
    pub sla_clock_starts_at: Timestamp,
    /// The contact's unanswered wait, if any.
    pub wait: Option<Wait>,
    /// The contact's last message (its first [`PREVIEW_CHARS_MAX`] characters).
    pub last_message: Option<LastMessage>,
    pub messages: u64,
    /// The schedule SLA waits count open time on (business-hours mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sla_hours: Option<convo_domain::schedule::ScheduleSpec>,
    /// The team it was routed or transferred to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
}

/// A team's members (the agents its queue is offered to).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TeamRow {
    pub team: String,
    pub members: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wait {
    pub started_at: Timestamp,
    /// The last threshold the engine recorded as crossed: `optimal` or `low`.
    pub crossed: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastMessage {
    pub text: String,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRow {
    pub agent: String,
    pub state: String,
    /// Since when (`None`: never seen changing state).
    pub since: Option<Timestamp>,
    /// Open conversations assigned to the agent.
    pub load: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignRow {
    pub campaign: String,
    pub name: String,
    pub agents: Vec<String>,
    pub show_contact_number: bool,
}

/// Folds one conversation event into its card (`None`: not open).
pub fn fold_card(card: &mut Option<Card>, id: &str, event: &ConversationEvent, at: Timestamp) {
    if let ConversationEvent::ConversationOpened(o) = event {
        *card = Some(Card {
            conversation: id.to_owned(),
            campaign: o.campaign.as_str().to_owned(),
            client: o.client.as_str().to_owned(),
            channel: o.channel.as_str().to_owned(),
            contact: o.contact.as_str().to_owned(),
            contact_name: o.contact_name.clone(),
            status: "open".into(),
            agent: None,
            opened_at: at,
            queued_since: None,
            assigned_at: None,
            sla_optimal_secs: o.policy.sla_optimal_secs,
            sla_low_secs: o.policy.sla_low_secs,
            sla_clock_starts_at: o.sla_clock_starts_at,
            wait: None,
            last_message: None,
            messages: 0,
            sla_hours: None,
            team: None,
        });
        return;
    }
    let Some(c) = card.as_mut() else { return };
    match event {
        ConversationEvent::MessageReceived { text, .. } => {
            c.messages += 1;
            // A sealed text is kept whole (cut, it would not open): readers cut it once opened ([`preview`]).
            let text = if convo_wire::personal::is_sealed(text) { text.clone() } else { preview(text) };
            c.last_message = Some(LastMessage { text, at });
            if c.wait.is_none() {
                c.wait = Some(Wait { started_at: at.max(c.sla_clock_starts_at), crossed: None });
            }
        }
        ConversationEvent::MessageSent { .. } => c.messages += 1,
        ConversationEvent::ConversationQueued { campaign, waiting_since } => {
            c.status = "queued".into();
            c.campaign = campaign.as_str().to_owned();
            c.queued_since = Some(*waiting_since);
            c.agent = None;
        }
        ConversationEvent::AgentAssigned { agent, .. } => {
            c.status = "assigned".into();
            c.agent = Some(agent.as_str().to_owned());
            c.assigned_at = Some(at);
            c.queued_since = None;
        }
        ConversationEvent::ConversationTransferred { to, .. } => {
            c.agent = None;
            c.assigned_at = None;
            c.status = "open".into();
            match to {
                Destination::Campaign(change) => {
                    c.campaign = change.campaign.as_str().to_owned();
                    c.client = change.client.as_str().to_owned();
                    c.sla_optimal_secs = change.policy.sla_optimal_secs;
                    c.sla_low_secs = change.policy.sla_low_secs;
                    c.team = None;
                }
                Destination::Team(team) => c.team = Some(team.as_str().to_owned()),
                Destination::Agent(_) => {}
            }
        }
        ConversationEvent::SlaThresholdCrossed { threshold, .. } => {
            if let Some(wait) = c.wait.as_mut() {
                wait.crossed = Some(threshold_name(*threshold).into());
            }
        }
        ConversationEvent::ResponseRecorded { .. } => c.wait = None,
        ConversationEvent::SlaClockSet { schedule, .. } => c.sla_hours = schedule.clone(),
        ConversationEvent::ConversationClosed { .. } => *card = None,
        _ => {}
    }
}

fn threshold_name(t: Threshold) -> &'static str {
    match t {
        Threshold::Optimal => "optimal",
        Threshold::Low => "low",
    }
}

fn read<T: for<'de> Deserialize<'de>>(staged: &Staged<'_>, key: &str) -> Result<Option<T>, String> {
    staged.get(key.as_bytes())?.map(|b| serde_json::from_slice(&b).map_err(|e| format!("{key}: {e}"))).transpose()
}

fn write<T: Serialize>(staged: &mut Staged<'_>, key: String, value: &T) {
    staged.insert(key.into_bytes(), serde_json::to_vec(value).expect("rows serialize"));
}

/// What a commit changed on the floor, for readers that index it.
#[derive(Debug, Default)]
pub struct Change {
    /// The card before and after the commit (a conversation's commit only).
    pub card: Option<(Option<Card>, Option<Card>)>,
}

/// Folds one commit into the floor's facts: cards, agents (state and load),
/// campaigns, the account's last instant.
pub fn apply_commit(staged: &mut Staged<'_>, stored: &StoredCommit) -> Result<Change, String> {
    let commit = &stored.commit;
    let account = commit.account.as_str();
    let at = commit.at;
    write(staged, format!("t/{account}"), &at);
    let mut change = Change::default();
    match &commit.stream {
        StreamRef::Catalog => {
            for e in &commit.events {
                if let Event::Config(ConfigEvent::CampaignDefined(c) | ConfigEvent::CampaignUpdated(c)) = &e.event {
                    let row = CampaignRow {
                        campaign: c.id.as_str().to_owned(),
                        name: c.name.clone(),
                        agents: c.agents.iter().map(|a| a.as_str().to_owned()).collect(),
                        show_contact_number: c.permissions.show_contact_number,
                    };
                    write(staged, format!("k/{account}/{}", c.id), &row);
                }
                if let Event::Config(ConfigEvent::TeamDefined(t) | ConfigEvent::TeamUpdated(t)) = &e.event {
                    let row = TeamRow {
                        team: t.id.as_str().to_owned(),
                        members: t.members.iter().map(|a| a.as_str().to_owned()).collect(),
                    };
                    write(staged, format!("m/{account}/{}", t.id), &row);
                }
            }
        }
        // Contacts are not on the floor.
        StreamRef::Contacts => {}
        StreamRef::Agent(agent) => {
            for e in &commit.events {
                if let Event::Agent(convo_domain::AgentEvent::AgentStateChanged { state, .. }) = &e.event {
                    let key = format!("a/{account}/{agent}");
                    let mut row = read::<AgentRow>(staged, &key)?.unwrap_or_else(|| offline(agent.as_str()));
                    row.state = state.clone();
                    row.since = Some(at);
                    write(staged, key, &row);
                }
            }
        }
        StreamRef::Conversation(id) => {
            let key = format!("c/{account}/{id}");
            let before: Option<Card> = read(staged, &key)?;
            let mut card = before.clone();
            for e in &commit.events {
                if let Event::Conversation(event) = &e.event {
                    fold_card(&mut card, id.as_str(), event, at);
                }
            }
            match &card {
                Some(c) => write(staged, key, c),
                None => staged.remove(key.into_bytes()),
            }
            let (old, new) =
                (before.as_ref().and_then(|c| c.agent.clone()), card.as_ref().and_then(|c| c.agent.clone()));
            if old != new {
                if let Some(agent) = old {
                    add_load(staged, account, &agent, -1)?;
                }
                if let Some(agent) = new {
                    add_load(staged, account, &agent, 1)?;
                }
            }
            change.card = Some((before, card));
        }
    }
    Ok(change)
}

fn offline(agent: &str) -> AgentRow {
    AgentRow { agent: agent.to_owned(), state: convo_domain::config::STATE_OFFLINE.into(), since: None, load: 0 }
}

fn add_load(staged: &mut Staged<'_>, account: &str, agent: &str, delta: i64) -> Result<(), String> {
    let key = format!("a/{account}/{agent}");
    let mut row = read::<AgentRow>(staged, &key)?.unwrap_or_else(|| offline(agent));
    row.load = u32::try_from((i64::from(row.load) + delta).max(0)).unwrap_or(u32::MAX);
    write(staged, key, &row);
    Ok(())
}

/// The live dashboard's read model.
#[derive(Debug, Default, Clone, Copy)]
pub struct Live;

impl Projection for Live {
    fn name(&self) -> &'static str {
        NAME
    }

    fn apply(&mut self, staged: &mut Staged<'_>, stored: &StoredCommit) -> Result<(), String> {
        apply_commit(staged, stored).map(|_| ())
    }
}

/// What a dashboard is computed for.
#[derive(Debug, Clone)]
pub struct View {
    /// The instant waits are measured to.
    pub now: Timestamp,
    /// A wait this close to its next threshold (seconds) is at risk.
    pub margin_secs: u64,
    /// Only these campaigns (a supervisor's); `None`: the whole account.
    pub campaigns: Option<Vec<String>>,
}

impl View {
    fn shows(&self, campaign: &str) -> bool {
        self.campaigns.as_ref().is_none_or(|list| list.iter().any(|c| c == campaign))
    }
}

/// A wait's SLA class now, its next threshold and the seconds until the
/// instant it is crossed, from the thresholds' instants as the aggregate
/// computes them (open time walked on the schedule in business hours: a
/// wait over a night is not at risk before the morning; a clock not started
/// yet, out of hours, counts from its start).
fn sla_now(card: &Card, wait: &Wait, now: Timestamp) -> (Value, Value, Value) {
    let (optimal_at, low_at) = convo_domain::conversation::threshold_instants(
        wait.started_at,
        card.sla_optimal_secs,
        card.sla_low_secs,
        card.sla_hours.as_ref(),
    );
    let passed = |t: Option<Timestamp>| t.is_some_and(|t| now >= t);
    let crossed = wait.crossed.as_deref();
    let until = |t: Option<Timestamp>| t.map_or(Value::Null, |t| json!(t.secs_since(now)));
    if crossed == Some("low") || passed(low_at) {
        (json!("breached"), Value::Null, Value::Null)
    } else if crossed == Some("optimal") || passed(optimal_at) {
        (json!("low"), json!("low"), until(low_at))
    } else {
        (json!("optimal"), json!("optimal"), until(optimal_at))
    }
}

/// A card as shown at `view.now`: the contact masked unless the campaign
/// shows numbers; the wait in seconds; the SLA class the wait is in now, the
/// next threshold and the seconds to it; whether it is at risk.
pub fn card_view(card: &Card, campaigns: &BTreeMap<String, CampaignRow>, view: &View) -> Value {
    let show = campaigns.get(&card.campaign).is_some_and(|c| c.show_contact_number);
    let contact = if show { card.contact.clone() } else { convo_wire::redact::mask_contact(&card.contact) };
    let (sla, next, secs_to) = match &card.wait {
        None => (Value::Null, Value::Null, Value::Null),
        Some(wait) => sla_now(card, wait, view.now),
    };
    let at_risk = secs_to.as_u64().is_some_and(|s| s <= view.margin_secs);
    json!({
        "conversation": card.conversation, "campaign": card.campaign, "client": card.client,
        "channel": card.channel, "contact": contact, "contact_name": card.contact_name,
        "status": card.status, "agent": card.agent, "team": card.team, "opened_at": card.opened_at,
        "queued_since": card.queued_since,
        "queued_secs": card.queued_since.map(|q| view.now.secs_since(q)),
        "assigned_at": card.assigned_at,
        "wait_started_at": card.wait.as_ref().map(|w| w.started_at),
        "wait_secs": card.wait.as_ref().map(|w| view.now.secs_since(w.started_at)),
        "sla": sla, "next_threshold": next, "secs_to_threshold": secs_to, "at_risk": at_risk,
        "last_message": card.last_message, "messages": card.messages,
    })
}

fn scan<T: for<'de> Deserialize<'de>>(tree: &sled::Tree, prefix: &str) -> Result<Vec<T>, sled::Error> {
    let mut out = Vec::new();
    for item in tree.scan_prefix(prefix.as_bytes()) {
        let (_, v) = item?;
        if let Ok(row) = serde_json::from_slice(&v) {
            out.push(row);
        }
    }
    Ok(out)
}

fn get<T: for<'de> Deserialize<'de>>(tree: &sled::Tree, key: &str) -> Result<Option<T>, sled::Error> {
    Ok(tree.get(key.as_bytes())?.and_then(|v| serde_json::from_slice(&v).ok()))
}

/// The account's campaigns, by id.
pub fn campaigns(tree: &sled::Tree, account: &str) -> Result<BTreeMap<String, CampaignRow>, sled::Error> {
    Ok(scan::<CampaignRow>(tree, &format!("k/{account}/"))?.into_iter().map(|c| (c.campaign.clone(), c)).collect())
}

/// The account's teams by id.
pub fn teams(tree: &sled::Tree, account: &str) -> Result<BTreeMap<String, TeamRow>, sled::Error> {
    Ok(scan::<TeamRow>(tree, &format!("m/{account}/"))?.into_iter().map(|t| (t.team.clone(), t)).collect())
}

/// An agent's row (offline with no load when never seen).
pub fn agent(tree: &sled::Tree, account: &str, agent: &str) -> Result<AgentRow, sled::Error> {
    Ok(get(tree, &format!("a/{account}/{agent}"))?.unwrap_or_else(|| offline(agent)))
}

/// An open conversation's card.
pub fn card(tree: &sled::Tree, account: &str, conversation: &str) -> Result<Option<Card>, sled::Error> {
    get(tree, &format!("c/{account}/{conversation}"))
}

/// The instant of the account's last commit the read model holds.
pub fn last_instant(tree: &sled::Tree, account: &str) -> Result<Option<Timestamp>, sled::Error> {
    get(tree, &format!("t/{account}"))
}

/// The accounts the read model knows, in order.
pub fn accounts(tree: &sled::Tree) -> Result<Vec<String>, sled::Error> {
    let mut out = Vec::new();
    for item in tree.scan_prefix(b"t/") {
        let (k, _) = item?;
        out.push(String::from_utf8_lossy(&k[2..]).into_owned());
    }
    Ok(out)
}

/// The account's dashboard at `view.now`.
pub fn dashboard(tree: &sled::Tree, account: &str, view: &View) -> Result<Value, sled::Error> {
    let campaigns = campaigns(tree, account)?;
    let cards: Vec<Card> =
        scan::<Card>(tree, &format!("c/{account}/"))?.into_iter().filter(|c| view.shows(&c.campaign)).collect();
    let views: Vec<Value> = cards.iter().map(|c| card_view(c, &campaigns, view)).collect();

    // Per campaign in scope (every defined one, and any a conversation is in).
    let mut per: BTreeMap<String, Value> = BTreeMap::new();
    let names = campaigns.keys().filter(|c| view.shows(c)).chain(cards.iter().map(|c| &c.campaign));
    for campaign in names {
        per.entry(campaign.clone()).or_insert_with(|| {
            json!({"campaign": campaign, "name": campaigns.get(campaign).map(|c| c.name.clone()),
                "open": 0, "queued": 0, "assigned": 0, "longest_queued_secs": 0, "at_risk": 0, "breached": 0})
        });
    }
    for v in &views {
        let Some(row) = per.get_mut(v["campaign"].as_str().unwrap_or("")) else { continue };
        let status = v["status"].as_str().unwrap_or("open");
        row[status] = json!(row[status].as_u64().unwrap_or(0) + 1);
        let queued = v["queued_secs"].as_u64().unwrap_or(0);
        if status == "queued" && queued > row["longest_queued_secs"].as_u64().unwrap_or(0) {
            row["longest_queued_secs"] = json!(queued);
        }
        if v["at_risk"] == true {
            row["at_risk"] = json!(row["at_risk"].as_u64().unwrap_or(0) + 1);
        }
        if v["sla"] == "breached" {
            row["breached"] = json!(row["breached"].as_u64().unwrap_or(0) + 1);
        }
    }

    // Agents: the whole account's, or those of the campaigns in scope.
    let in_scope: Option<BTreeSet<&str>> = view.campaigns.as_ref().map(|_| {
        campaigns
            .values()
            .filter(|c| view.shows(&c.campaign))
            .flat_map(|c| c.agents.iter().map(String::as_str))
            .collect()
    });
    let mut agents: Vec<AgentRow> = scan::<AgentRow>(tree, &format!("a/{account}/"))?;
    let seen: BTreeSet<String> = agents.iter().map(|a| a.agent.clone()).collect();
    if let Some(scope) = &in_scope {
        agents.retain(|a| scope.contains(a.agent.as_str()));
        agents.extend(scope.iter().filter(|a| !seen.contains(**a)).map(|a| offline(a)));
        agents.sort_by(|a, b| a.agent.cmp(&b.agent));
    }
    let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
    for a in &agents {
        *by_state.entry(a.state.clone()).or_default() += 1;
    }
    let agents: Vec<Value> = agents
        .iter()
        .map(|a| {
            json!({"agent": a.agent, "state": a.state, "since": a.since, "load": a.load,
                "secs_in_state": a.since.map(|since| view.now.secs_since(since))})
        })
        .collect();

    let mut at_risk: Vec<&Value> = views.iter().filter(|v| v["at_risk"] == true).collect();
    at_risk.sort_by_key(|v| (v["secs_to_threshold"].as_u64(), v["conversation"].as_str().map(str::to_owned)));
    let mut listed: Vec<&Value> = views.iter().collect();
    listed.sort_by_key(|v| {
        (std::cmp::Reverse(v["wait_secs"].as_u64().unwrap_or(0)), v["conversation"].as_str().map(str::to_owned))
    });
    let truncated = listed.len() > CONVERSATIONS_SHOWN_MAX;
    listed.truncate(CONVERSATIONS_SHOWN_MAX);
    Ok(json!({
        "account": account, "at": view.now, "risk_margin_secs": view.margin_secs,
        "campaigns": per.into_values().collect::<Vec<_>>(),
        "agents": agents, "agents_by_state": by_state,
        "at_risk": at_risk, "conversations": listed, "truncated": truncated,
    }))
}

/// Every account's dashboard at its last instant, with the default margin
/// (the export a fixture pins and a rebuild is compared with).
pub fn export_all(tree: &sled::Tree) -> Result<Vec<Value>, sled::Error> {
    let mut out = Vec::new();
    for account in accounts(tree)? {
        let now = last_instant(tree, &account)?.unwrap_or_default();
        out.push(dashboard(tree, &account, &View { now, margin_secs: DEFAULT_RISK_MARGIN_SECS, campaigns: None })?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(optimal: u32, low: u32, started: i64, crossed: Option<&str>) -> Card {
        Card {
            conversation: "c1".into(),
            campaign: "ventas".into(),
            client: "acme".into(),
            channel: "wa".into(),
            contact: "5215550001122".into(),
            contact_name: None,
            status: "queued".into(),
            agent: None,
            opened_at: Timestamp::from_millis(0),
            queued_since: Some(Timestamp::from_millis(0)),
            assigned_at: None,
            sla_optimal_secs: optimal,
            sla_low_secs: low,
            sla_clock_starts_at: Timestamp::from_millis(0),
            wait: Some(Wait { started_at: Timestamp::from_millis(started * 1000), crossed: crossed.map(Into::into) }),
            last_message: None,
            messages: 1,
            sla_hours: None,
            team: None,
        }
    }

    /// A business-hours wait is at risk only while the schedule runs it
    /// towards its threshold: over a night it waits for the morning.
    #[test]
    fn a_business_hours_wait_counts_open_time() {
        let none = BTreeMap::new();
        let schedule: convo_domain::schedule::ScheduleSpec = serde_json::from_value(json!({
            "id": "office", "name": "Office", "time_zone": "UTC",
            "week": {"mon": ["08:00-18:00"], "tue": ["08:00-18:00"]}
        }))
        .unwrap();
        // Monday 2026-03-02 17:59:40 UTC; 60 s optimal, 3600 s low.
        let monday = Timestamp::parse_rfc3339("2026-03-02T17:59:40Z").unwrap().millis() / 1000;
        let mut c = card(60, 3600, monday, None);
        c.sla_hours = Some(schedule);
        let v = card_view(&c, &none, &at(monday + 10, 30));
        // 20 s of the day left, then 40 s on Tuesday from 08:00: the crossing is a night away.
        assert_eq!((v["sla"].as_str(), v["at_risk"].as_bool()), (Some("optimal"), Some(false)));
        let tuesday = Timestamp::parse_rfc3339("2026-03-03T08:00:20Z").unwrap().millis() / 1000;
        let v = card_view(&c, &none, &at(tuesday, 30));
        assert_eq!((v["secs_to_threshold"].as_u64(), v["at_risk"].as_bool()), (Some(20), Some(true)));
        let v = card_view(&c, &none, &at(tuesday + 30, 30));
        assert_eq!((v["sla"].as_str(), v["next_threshold"].as_str()), (Some("low"), Some("low")));
    }

    fn at(secs: i64, margin: u64) -> View {
        View { now: Timestamp::from_millis(secs * 1000), margin_secs: margin, campaigns: None }
    }

    #[test]
    fn sla_state_and_risk_follow_the_clock_and_the_engine() {
        let none = BTreeMap::new();
        // 60 s optimal, 300 s low; the wait began at 0.
        let c = card(60, 300, 0, None);
        let v = card_view(&c, &none, &at(20, 30));
        assert_eq!(
            (v["sla"].as_str(), v["secs_to_threshold"].as_u64(), v["at_risk"].as_bool()),
            (Some("optimal"), Some(40), Some(false))
        );
        let v = card_view(&c, &none, &at(30, 30));
        assert_eq!((v["secs_to_threshold"].as_u64(), v["at_risk"].as_bool()), (Some(30), Some(true)));
        let v = card_view(&c, &none, &at(61, 30));
        assert_eq!(
            (v["sla"].as_str(), v["next_threshold"].as_str(), v["secs_to_threshold"].as_u64()),
            (Some("low"), Some("low"), Some(239))
        );
        let v = card_view(&c, &none, &at(300, 30));
        assert_eq!((v["sla"].as_str(), v["at_risk"].as_bool()), (Some("breached"), Some(false)));
        // The engine's crossing counts even when the reader's clock is behind it.
        let v = card_view(&card(60, 300, 0, Some("low")), &none, &at(10, 30));
        assert_eq!(v["sla"], "breached");
        // A clock that starts later (out of hours) counts from its start.
        let v = card_view(&card(60, 300, 100, None), &none, &at(40, 30));
        assert_eq!((v["wait_secs"].as_u64(), v["secs_to_threshold"].as_u64()), (Some(0), Some(120)));
        // Masked unless the campaign shows numbers.
        assert_eq!(v["contact"], "*********1122");
        let shows = BTreeMap::from([(
            "ventas".to_owned(),
            CampaignRow { campaign: "ventas".into(), name: "Ventas".into(), agents: vec![], show_contact_number: true },
        )]);
        assert_eq!(card_view(&c, &shows, &at(0, 30))["contact"], "5215550001122");
    }
}
