//! # convo-inbox
//!
//! Agents' inboxes (HiBot's "Inbound"): per agent, the conversations
//! assigned to them and those waiting in the queues of their campaigns (a
//! team's queue only for its members), each with the contact's last message
//! and its SLA state.
//!
//! It folds the same facts as the live dashboard (`convo_live::apply_commit`)
//! and indexes them so one agent's inbox is read without scanning the
//! account: `i/<account>/<agent>/<conversation>` for each assigned
//! conversation, `q/<account>/<campaign>/<conversation>` for each queued one.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use convo_live::{Card, View};
use convo_projector::{Projection, Staged};
use convo_store::StoredCommit;

pub const NAME: &str = "inbox";
/// The most queued conversations one inbox lists (the longest waiting first).
pub const QUEUED_SHOWN_MAX: usize = 200;

fn assigned_key(account: &str, card: &Card) -> Option<String> {
    card.agent.as_ref().map(|agent| format!("i/{account}/{agent}/{}", card.conversation))
}

fn queued_key(account: &str, card: &Card) -> Option<String> {
    (card.status == "queued").then(|| format!("q/{account}/{}/{}", card.campaign, card.conversation))
}

/// The inboxes' read model.
#[derive(Debug, Default, Clone, Copy)]
pub struct Inbox;

impl Projection for Inbox {
    fn name(&self) -> &'static str {
        NAME
    }

    fn apply(&mut self, staged: &mut Staged<'_>, stored: &StoredCommit) -> Result<(), String> {
        let change = convo_live::apply_commit(staged, stored)?;
        let account = stored.commit.account.as_str();
        if let Some((before, after)) = change.card {
            for index in [assigned_key, queued_key] {
                let old = before.as_ref().and_then(|c| index(account, c));
                let new = after.as_ref().and_then(|c| index(account, c));
                if old != new {
                    if let Some(old) = old {
                        staged.remove(old.into_bytes());
                    }
                    if let Some(new) = new {
                        staged.insert(new.into_bytes(), Vec::new());
                    }
                }
            }
        }
        Ok(())
    }
}

fn cards_under(tree: &sled::Tree, account: &str, prefix: &str) -> Result<Vec<Card>, sled::Error> {
    let mut out = Vec::new();
    for item in tree.scan_prefix(prefix.as_bytes()) {
        let (k, _) = item?;
        let key = String::from_utf8_lossy(&k);
        let conversation = key.rsplit('/').next().unwrap_or("");
        if let Some(card) = convo_live::card(tree, account, conversation)? {
            out.push(card);
        }
    }
    Ok(out)
}

/// One agent's inbox at `view.now`: their state and load, the conversations
/// assigned to them (the longest wait first), and those queued in their
/// campaigns (the oldest first).
pub fn inbox(tree: &sled::Tree, account: &str, agent: &str, view: &View) -> Result<Value, sled::Error> {
    let campaigns = convo_live::campaigns(tree, account)?;
    let row = convo_live::agent(tree, account, agent)?;
    let mut assigned: Vec<Value> = cards_under(tree, account, &format!("i/{account}/{agent}/"))?
        .iter()
        .map(|c| convo_live::card_view(c, &campaigns, view))
        .collect();
    assigned.sort_by_key(|v| {
        (std::cmp::Reverse(v["wait_secs"].as_u64().unwrap_or(0)), v["conversation"].as_str().map(str::to_owned))
    });
    let theirs: Vec<&String> =
        campaigns.values().filter(|c| c.agents.iter().any(|a| a == agent)).map(|c| &c.campaign).collect();
    // A conversation in a team's queue is offered to the team's members only.
    let teams = convo_live::teams(tree, account)?;
    let offered = |card: &Card| {
        card.team.as_ref().is_none_or(|t| teams.get(t).is_some_and(|t| t.members.iter().any(|m| m == agent)))
    };
    let mut queued = Vec::new();
    for campaign in &theirs {
        queued.extend(cards_under(tree, account, &format!("q/{account}/{campaign}/"))?.into_iter().filter(offered));
    }
    queued.sort_by(|a, b| (a.queued_since, &a.conversation).cmp(&(b.queued_since, &b.conversation)));
    let truncated = queued.len() > QUEUED_SHOWN_MAX;
    queued.truncate(QUEUED_SHOWN_MAX);
    let queued: Vec<Value> = queued.iter().map(|c| convo_live::card_view(c, &campaigns, view)).collect();
    // What the campaigns are called, for a page that shows names, not ids.
    let names: BTreeMap<&String, &String> =
        theirs.iter().filter_map(|id| campaigns.get(*id).map(|c| (*id, &c.name))).collect();
    Ok(json!({
        "account": account, "agent": agent, "at": view.now, "state": row.state, "since": row.since,
        "load": row.load, "campaigns": theirs, "campaign_names": names, "assigned": assigned, "queued": queued,
        "truncated": truncated,
    }))
}

/// Every agent's inbox (those with a state, a conversation or a campaign),
/// per account at its last instant with the default margin: the export a
/// fixture pins and a rebuild is compared with.
pub fn export_all(tree: &sled::Tree) -> Result<Vec<Value>, sled::Error> {
    let mut out = Vec::new();
    for account in convo_live::accounts(tree)? {
        let now = convo_live::last_instant(tree, &account)?.unwrap_or_default();
        let view = View { now, margin_secs: convo_live::DEFAULT_RISK_MARGIN_SECS, campaigns: None };
        let mut agents = std::collections::BTreeSet::new();
        for c in convo_live::campaigns(tree, &account)?.into_values() {
            agents.extend(c.agents);
        }
        for item in tree.scan_prefix(format!("a/{account}/").as_bytes()) {
            let (k, _) = item?;
            agents.insert(String::from_utf8_lossy(&k).rsplit('/').next().unwrap_or("").to_owned());
        }
        for agent in agents {
            out.push(inbox(tree, &account, &agent, &view)?);
        }
    }
    Ok(out)
}
