//! # convo-contact-history
//!
//! Per contact, the last `max_history_conversations` closed conversations
//! (SPEC §8): campaign, channel, agents, typification, dynamic fields, times
//! and message count. The contact's number is masked unless the campaign has
//! `show_contact_number`. The client's limit and the campaign's permission are
//! read from the configuration events in the same stream, as they stood when
//! the conversation closed.
//!
//! Layout: `h/<account>/<contact>/<closed_at:020>/<conversation>` holds an
//! entry (JSON); `x/<account>/<conversation>` an open conversation's context;
//! `k/<account>/client/<id>` and `k/<account>/campaign/<id>` the settings;
//! `p/<account>/<contact>` the contact book's name of the contact (an entry
//! names the contact by it when the conversation carried no name);
//! `e/<account>/<contact>` when and why the contact was erased;
//! `r/<account>/<conversation>` the entry of a conversation whose content
//! awaits its retention's end (SPEC §13): when it comes, the entry's
//! contact name and field values read `[erased]` (times, agents,
//! typification and counts stay).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use convo_domain::{ConfigEvent, ContactEvent, ConversationEvent, conversation::Destination};
use convo_projector::{Projection, Staged, json_bytes};
use convo_store::StoredCommit;
use convo_wire::{Event, StreamRef};

pub const NAME: &str = "contact-history";
/// The limit when the client's is unknown.
pub const DEFAULT_HISTORY: u64 = 10;

/// Masks all but the last four characters (`********2233`).
pub use convo_wire::redact::mask_contact as mask;

/// The contact-history projection. Within a batch it keeps each open
/// conversation's context in memory (the latest; `None` once closed) and
/// writes it when the batch is written.
#[derive(Debug, Default, Clone)]
pub struct ContactHistory {
    contexts: std::collections::HashMap<String, Option<Value>>,
}

fn read(staged: &Staged<'_>, key: &str) -> Result<Option<Value>, String> {
    staged.get(key.as_bytes())?.map(|b| serde_json::from_slice(&b).map_err(|e| e.to_string())).transpose()
}

impl Projection for ContactHistory {
    fn name(&self) -> &'static str {
        NAME
    }

    fn apply(&mut self, staged: &mut Staged<'_>, stored: &StoredCommit) -> Result<(), String> {
        let account = stored.commit.account.as_str();
        let at = stored.commit.at;
        match &stored.commit.stream {
            StreamRef::Catalog => {
                for e in &stored.commit.events {
                    match &e.event {
                        Event::Config(ConfigEvent::ClientDefined(c) | ConfigEvent::ClientUpdated(c)) => {
                            let key = format!("k/{account}/client/{}", c.id);
                            staged.insert(
                                key.into_bytes(),
                                json_bytes(&json!({"max_history": c.max_history_conversations})),
                            );
                        }
                        Event::Config(ConfigEvent::CampaignDefined(c) | ConfigEvent::CampaignUpdated(c)) => {
                            let key = format!("k/{account}/campaign/{}", c.id);
                            staged.insert(
                                key.into_bytes(),
                                json_bytes(&json!({"show_contact_number": c.permissions.show_contact_number})),
                            );
                        }
                        _ => {}
                    }
                }
                Ok(())
            }
            StreamRef::Agent(_) => Ok(()),
            // The contact book: a contact's name, for conversations that did not carry one.
            StreamRef::Contacts => {
                for e in &stored.commit.events {
                    match &e.event {
                        Event::Contact(ContactEvent::ContactDefined(c) | ContactEvent::ContactUpdated(c)) => {
                            let key = format!("p/{account}/{}", c.id);
                            staged.insert(key.into_bytes(), json_bytes(&json!({"name": c.name})));
                        }
                        // Their entries' texts are sealed with keys now gone; the history says so.
                        Event::Contact(ContactEvent::ContactErased(erased)) => {
                            staged.remove(format!("p/{account}/{}", erased.contact).into_bytes());
                            let key = format!("e/{account}/{}", erased.contact);
                            let mark = json!({"erased_at": at.to_rfc3339(), "by": e.actor, "reason": erased.reason});
                            staged.insert(key.into_bytes(), json_bytes(&mark));
                        }
                        _ => {}
                    }
                }
                Ok(())
            }
            StreamRef::Conversation(id) => {
                let ctx_key = format!("x/{account}/{id}");
                let mut ctx = match self.contexts.get(&ctx_key) {
                    Some(held) => held.clone().unwrap_or(Value::Null),
                    None => read(staged, &ctx_key)?.unwrap_or(Value::Null),
                };
                for e in &stored.commit.events {
                    let Event::Conversation(event) = &e.event else { continue };
                    match event {
                        ConversationEvent::ConversationOpened(o) => {
                            ctx = json!({"conversation": id.as_str(), "contact": o.contact.as_str(), "contact_name": o.contact_name,
                                "campaign": o.campaign.as_str(), "client": o.client.as_str(), "channel": o.channel.as_str(),
                                "agents": [], "fields": {}, "messages": 0, "opened_at": at.to_rfc3339()});
                        }
                        ConversationEvent::MessageReceived { .. } | ConversationEvent::MessageSent { .. } => {
                            ctx["messages"] = json!(ctx["messages"].as_u64().unwrap_or(0) + 1);
                        }
                        ConversationEvent::AgentAssigned { agent, .. } => {
                            if let Some(agents) = ctx["agents"].as_array_mut()
                                && !agents.iter().any(|a| a == agent.as_str())
                            {
                                agents.push(json!(agent.as_str()));
                            }
                        }
                        ConversationEvent::ConversationTransferred { to: Destination::Campaign(change), .. } => {
                            ctx["campaign"] = json!(change.campaign.as_str());
                            ctx["client"] = json!(change.client.as_str());
                        }
                        ConversationEvent::DynamicFieldSet { field, value } => ctx["fields"][field] = json!(value),
                        ConversationEvent::ConversationClosed { reason, typification, .. } => {
                            close(staged, account, &mut ctx, at, reason, typification.as_ref().map(|t| t.as_str()))?;
                        }
                        ConversationEvent::ContentRetentionScheduled { .. } => {
                            if let Some(entry) = ctx["entry"].as_str() {
                                staged.insert(format!("r/{account}/{id}").into_bytes(), json_bytes(&json!(entry)));
                            }
                        }
                        ConversationEvent::ContentExpired { .. } => expire(staged, account, id.as_str(), at)?,
                        _ => {}
                    }
                }
                if ctx.is_null() {
                    return Ok(());
                }
                let closed = ctx["closed"].as_bool() == Some(true);
                self.contexts.insert(ctx_key, (!closed).then_some(ctx));
                Ok(())
            }
        }
    }

    fn flush(&mut self, staged: &mut Staged<'_>) -> Result<(), String> {
        for (key, ctx) in self.contexts.drain() {
            match ctx {
                Some(ctx) => staged.insert(key.into_bytes(), json_bytes(&ctx)),
                None => staged.remove(key.into_bytes()),
            }
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.contexts.clear();
    }
}

fn close(
    staged: &mut Staged<'_>,
    account: &str,
    ctx: &mut Value,
    at: convo_domain::Timestamp,
    reason: &convo_domain::conversation::CloseReason,
    typification: Option<&str>,
) -> Result<(), String> {
    let contact = ctx["contact"].as_str().unwrap_or("").to_owned();
    let campaign = ctx["campaign"].as_str().unwrap_or("").to_owned();
    let client = ctx["client"].as_str().unwrap_or("").to_owned();
    let show =
        read(staged, &format!("k/{account}/campaign/{campaign}"))?.is_some_and(|v| v["show_contact_number"] == true);
    let limit = read(staged, &format!("k/{account}/client/{client}"))?
        .and_then(|v| v["max_history"].as_u64())
        .unwrap_or(DEFAULT_HISTORY);
    // The name the conversation carried, else the contact book's.
    let name = match &ctx["contact_name"] {
        Value::Null => read(staged, &format!("p/{account}/{contact}"))?.map_or(Value::Null, |p| p["name"].clone()),
        name => name.clone(),
    };
    let entry = json!({
        "conversation": ctx["conversation"], "contact": if show { json!(contact) } else { json!(mask(&contact)) },
        "contact_name": name, "campaign": campaign, "channel": ctx["channel"], "agents": ctx["agents"],
        "typification": typification, "reason": serde_json::to_value(reason).unwrap_or(Value::Null),
        "fields": ctx["fields"], "messages": ctx["messages"], "opened_at": ctx["opened_at"], "closed_at": at.to_rfc3339(),
    });
    let prefix = format!("h/{account}/{contact}/");
    let key = format!("{prefix}{:020}/{}", at.millis(), ctx["conversation"].as_str().unwrap_or(""));
    staged.insert(key.clone().into_bytes(), json_bytes(&entry));
    ctx["entry"] = json!(key);
    // Keep only the newest `limit` conversations of the contact.
    let kept = staged.scan_prefix(prefix.as_bytes())?;
    let excess = kept.len().saturating_sub(limit as usize);
    for (old, _) in kept.into_iter().take(excess) {
        staged.remove(old);
    }
    ctx["closed"] = json!(true);
    Ok(())
}

/// A conversation's content expired: its entry (if the history still holds
/// it) keeps everything but what was personal.
fn expire(
    staged: &mut Staged<'_>,
    account: &str,
    conversation: &str,
    at: convo_domain::Timestamp,
) -> Result<(), String> {
    let index = format!("r/{account}/{conversation}");
    let Some(key) = read(staged, &index)?.and_then(|k| k.as_str().map(str::to_owned)) else { return Ok(()) };
    staged.remove(index.into_bytes());
    let Some(mut entry) = read(staged, &key)? else { return Ok(()) };
    let erased = json!(convo_wire::personal::ERASED);
    if !entry["contact_name"].is_null() {
        entry["contact_name"] = erased.clone();
    }
    if let Some(fields) = entry["fields"].as_object_mut() {
        fields.values_mut().for_each(|v| *v = erased.clone());
    }
    entry["content_expired_at"] = json!(at.to_rfc3339());
    staged.insert(key.into_bytes(), json_bytes(&entry));
    Ok(())
}

/// A contact's history, newest first.
pub fn history(tree: &sled::Tree, account: &str, contact: &str) -> Result<Vec<Value>, sled::Error> {
    let mut entries: BTreeMap<Vec<u8>, Value> = BTreeMap::new();
    for item in tree.scan_prefix(format!("h/{account}/{contact}/").as_bytes()) {
        let (k, v) = item?;
        if let Ok(entry) = serde_json::from_slice(&v) {
            entries.insert(k.to_vec(), entry);
        }
    }
    Ok(entries.into_values().rev().collect())
}

/// When and why a contact was erased (SPEC §13), if they were.
pub fn erased(tree: &sled::Tree, account: &str, contact: &str) -> Result<Option<Value>, sled::Error> {
    Ok(tree.get(format!("e/{account}/{contact}").as_bytes())?.and_then(|v| serde_json::from_slice(&v).ok()))
}

/// Every contact's history (the export a rebuild is compared with): by
/// account and contact, newest first within each.
pub fn export_all(tree: &sled::Tree) -> Result<Vec<Value>, sled::Error> {
    let mut by_contact: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for item in tree.scan_prefix(b"h/") {
        let (k, v) = item?;
        let key = String::from_utf8_lossy(&k).into_owned();
        let owner = key.rsplitn(3, '/').nth(2).unwrap_or("").to_owned();
        if let Ok(entry) = serde_json::from_slice(&v) {
            by_contact.entry(owner).or_default().push(entry);
        }
    }
    Ok(by_contact.into_values().flat_map(|entries| entries.into_iter().rev()).collect())
}
