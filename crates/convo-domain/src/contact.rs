//! Contacts (SPEC §11): the people who write in, as an aggregate of the
//! account — its contact book, one stream per account — so that a
//! contact's channel identities are unique in the account by construction
//! (one writer decides every claim).
//!
//! A contact has a name, channel identities (a phone on WhatsApp, an e-mail,
//! a page-scoped handle), custom attributes typed by the account's
//! definitions (`define_contact_attribute`; a definition may be required
//! before closing a conversation in some campaigns) and labels. Its id is
//! the id conversations name as their contact, so its history (SPEC §8) is
//! keyed by it.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::aggregate::Actor;
use crate::aggregate::{Decision, Emitter, RecentCommands, Recorded};
use crate::command::{Command, CommandEnvelope};
use crate::config::{Catalog, NAME_BYTES_MAX, Role};
use crate::ids::{AccountId, CampaignId, ChannelId, ContactId, check_id};
use crate::rejection::Rejection;
use crate::time::Timestamp;

/// At most this many identities, attributes and labels on one contact.
pub const IDENTITIES_PER_CONTACT_MAX: usize = 16;
pub const ATTRIBUTES_PER_CONTACT_MAX: usize = 64;
pub const LABELS_PER_CONTACT_MAX: usize = 32;
/// At most this many contacts in an account's book.
pub const CONTACTS_PER_ACCOUNT_MAX: usize = 1_000_000;
/// At most this many attribute definitions in an account.
pub const CONTACT_ATTRIBUTES_MAX: usize = 200;
/// The longest attribute value, in bytes (as a dynamic field's).
pub const ATTRIBUTE_VALUE_BYTES_MAX: usize = crate::conversation::FIELD_VALUE_BYTES_MAX;

/// A contact's address on a channel: a phone number on a WhatsApp line, an
/// e-mail on an e-mail channel, a handle on Instagram.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub channel: ChannelId,
    pub handle: String,
}

/// The type of a contact attribute's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttributeKind {
    /// Any text up to 1024 bytes.
    Text,
    /// A decimal number (`42`, `-3.5`).
    Number,
    /// `true` or `false`.
    Boolean,
    /// A date, `YYYY-MM-DD`.
    Date,
}

/// A custom attribute contacts of the account may carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactAttributeSpec {
    /// The attribute's key (id rules).
    pub name: String,
    pub kind: AttributeKind,
    #[serde(default)]
    pub description: String,
    /// Campaigns where a conversation cannot be closed until its contact has
    /// a value for this attribute.
    #[serde(default)]
    pub required_to_close: Vec<CampaignId>,
}

/// A contact, whole (define and update replace it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactSpec {
    pub id: ContactId,
    pub name: String,
    #[serde(default)]
    pub identities: Vec<Identity>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: Vec<String>,
}

/// Sets (or, with an empty value, clears) one attribute of a contact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetContactAttribute {
    pub contact: ContactId,
    pub name: String,
    pub value: String,
}

/// The longest reason an erasure may give, in bytes.
pub const ERASE_REASON_BYTES_MAX: usize = 500;

/// Erases a contact (SPEC §13): every piece of personal data about them and
/// the content of all their conversations becomes unreadable everywhere the
/// engine keeps or sent it. Names the contact by id, or by a channel and
/// handle the book holds. An admin's or the operator's, with a reason
/// (recorded in clear: it must not itself name the person).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EraseContact {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<ContactId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<ChannelId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
    pub reason: String,
}

/// A contact erased: who is recorded by the envelope; no personal data here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactErased {
    pub contact: ContactId,
    pub reason: String,
}

/// What happened in an account's contact book. Variants are only appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ContactEvent {
    ContactDefined(ContactSpec),
    ContactUpdated(ContactSpec),
    ContactAttributeSet(SetContactAttribute),
    // appended
    ContactErased(ContactErased),
}

impl ContactEvent {
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::ContactDefined(_) => "contact_defined",
            Self::ContactUpdated(_) => "contact_updated",
            Self::ContactAttributeSet(_) => "contact_attribute_set",
            Self::ContactErased(_) => "contact_erased",
        }
    }

    /// The contact the event is about.
    pub fn contact(&self) -> &ContactId {
        match self {
            Self::ContactDefined(s) | Self::ContactUpdated(s) => &s.id,
            Self::ContactAttributeSet(s) => &s.contact,
            Self::ContactErased(s) => &s.contact,
        }
    }
}

/// An account's contacts: the state of its contact-book stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactBook {
    pub account: AccountId,
    pub seq: u64,
    pub contacts: BTreeMap<ContactId, ContactSpec>,
    /// Derived: who holds each identity.
    identities: BTreeMap<Identity, ContactId>,
    recent: RecentCommands,
}

/// Checks a value against its attribute's type.
pub fn check_value(kind: AttributeKind, value: &str) -> Result<(), String> {
    if value.len() > ATTRIBUTE_VALUE_BYTES_MAX {
        return Err(format!("at most {ATTRIBUTE_VALUE_BYTES_MAX} bytes"));
    }
    let ok = match kind {
        AttributeKind::Text => true,
        AttributeKind::Number => value.trim().parse::<f64>().is_ok_and(f64::is_finite),
        AttributeKind::Boolean => matches!(value, "true" | "false"),
        AttributeKind::Date => chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d").is_ok(),
    };
    if ok { Ok(()) } else { Err(format!("{value:?} is not a {kind:?} value").to_lowercase()) }
}

/// Checks a channel handle: 1 to [`NAME_BYTES_MAX`] bytes, no control characters.
pub fn check_handle(field: &str, handle: &str) -> Result<(), Rejection> {
    if handle.trim().is_empty() || handle.len() > NAME_BYTES_MAX || handle.chars().any(char::is_control) {
        let reason = format!("1 to {NAME_BYTES_MAX} bytes, no control characters");
        return Err(Rejection::invalid(field, reason));
    }
    Ok(())
}

/// The read a contact's export (SPEC §13, subject access) is authorized as:
/// the engine records every one in the account's audit log
/// (`unredacted_read`, read `contact_export`), since it is their personal
/// data in full.
pub const EXPORT_READ: &str = "contact_export";

/// The prefix of the contact ids the engine makes (in its namespace: no
/// client may define a contact with one).
pub const MINTED_CONTACT_PREFIX: &str = "_ct-";

/// The id the engine makes for a contact first known by a handle no contact
/// holds (SPEC §13): derived from the command that brought it — its account,
/// conversation and command id — so a replay makes the same one, opaque (a
/// UUID v5: nothing of the handle is in it) and in the engine's namespace.
pub fn minted_contact_id(
    account: &AccountId,
    conversation: &crate::ids::ConversationId,
    command: &crate::ids::CommandId,
) -> ContactId {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x3b1d_52c6_8f0e_4a97_b2d4_7c61_e9a0_58f3);
    let name = format!("{account}/{conversation}/{command}");
    let id = uuid::Uuid::new_v5(&NAMESPACE, name.as_bytes()).simple();
    ContactId::new(&format!("{MINTED_CONTACT_PREFIX}{id}")).expect("a minted contact id is a valid id")
}

impl ContactBook {
    pub fn new(account: AccountId) -> Self {
        Self {
            account,
            seq: 0,
            contacts: BTreeMap::new(),
            identities: BTreeMap::new(),
            recent: RecentCommands::default(),
        }
    }

    pub fn contact(&self, id: &ContactId) -> Option<&ContactSpec> {
        self.contacts.get(id)
    }

    /// The contact holding an identity, if any.
    pub fn holder(&self, identity: &Identity) -> Option<&ContactId> {
        self.identities.get(identity)
    }

    /// Decides a contact command.
    pub fn decide(
        &self,
        catalog: &Catalog,
        envelope: &CommandEnvelope,
        now: Timestamp,
    ) -> Result<Decision<ContactEvent>, Rejection> {
        if let Some((first_seq, last_seq)) = self.recent.find(&envelope.id) {
            return Ok(Decision::Duplicate { first_seq, last_seq });
        }
        if catalog.check_actor(&envelope.actor)?.is_none() && !envelope.actor.is_trusted() {
            return Err(Rejection::Forbidden { action: "changing contacts", needed: "a user or the system" });
        }
        let mut out = Emitter::new(self.seq, now, &envelope.id, &envelope.actor);
        let event = match &envelope.command {
            Command::DefineContact(s) | Command::UpdateContact(s) => {
                let define = matches!(envelope.command, Command::DefineContact(_));
                match (self.contacts.get(&s.id), define) {
                    // A contact the engine made for a handle, asked for again by a second
                    // conversation's opening while the first's was under way: already there.
                    (Some(held), true)
                        if envelope.id.as_str().starts_with(crate::command::ENGINE_ID_PREFIX)
                            && s.id.as_str().starts_with(MINTED_CONTACT_PREFIX)
                            && s.identities.iter().all(|i| held.identities.contains(i)) =>
                    {
                        return Ok(out.finish());
                    }
                    (Some(_), true) => {
                        return Err(Rejection::AlreadyDefined { entity: format!("contact {}", s.id) });
                    }
                    (None, false) => return Err(Rejection::Unknown { entity: format!("contact {}", s.id) }),
                    _ => {}
                }
                if define
                    && s.id.as_str().starts_with(crate::ids::RESERVED_PREFIX)
                    && !envelope.id.as_str().starts_with(crate::command::ENGINE_ID_PREFIX)
                {
                    let reason = format!(
                        "ids starting with {:?} are the engine's (contacts it makes for a new handle)",
                        crate::ids::RESERVED_PREFIX
                    );
                    return Err(Rejection::invalid("id", reason));
                }
                if define && self.contacts.len() >= CONTACTS_PER_ACCOUNT_MAX {
                    let reason = format!("an account holds at most {CONTACTS_PER_ACCOUNT_MAX} contacts");
                    return Err(Rejection::invalid("id", reason));
                }
                self.check(catalog, s)?;
                if self.contacts.get(&s.id) == Some(s) {
                    return Ok(out.finish()); // nothing changes
                }
                if define { ContactEvent::ContactDefined(s.clone()) } else { ContactEvent::ContactUpdated(s.clone()) }
            }
            Command::SetContactAttribute(s) => {
                let Some(contact) = self.contacts.get(&s.contact) else {
                    return Err(Rejection::Unknown { entity: format!("contact {}", s.contact) });
                };
                check_setting(catalog, ("name", "value"), &s.name, &s.value)?;
                let current = contact.attributes.get(&s.name).map_or("", String::as_str);
                if current == s.value {
                    return Ok(out.finish());
                }
                if !s.value.is_empty() && !contact.attributes.contains_key(&s.name) {
                    check_count("attributes", contact.attributes.len() + 1, ATTRIBUTES_PER_CONTACT_MAX)?;
                }
                ContactEvent::ContactAttributeSet(s.clone())
            }
            Command::EraseContact(s) => ContactEvent::ContactErased(self.erasure(catalog, envelope, s)?),
            other => {
                return Err(Rejection::WrongAggregate { command: other.type_name(), aggregate: "the contact book" });
            }
        };
        out.emit(event);
        Ok(out.finish())
    }

    /// Checks an erasure: an admin's or the operator's (or a trusted replay's,
    /// never an integration's), with a reason, naming a contact by id or by
    /// an identity the book holds.
    fn erasure(
        &self,
        catalog: &Catalog,
        envelope: &CommandEnvelope,
        s: &EraseContact,
    ) -> Result<ContactErased, Rejection> {
        let allowed = match &envelope.actor {
            Actor::Operator { .. } | Actor::System(_) => true,
            Actor::User { .. } => catalog.check_actor(&envelope.actor)?.is_some_and(|u| u.role == Role::Admin),
            _ => false,
        };
        if !allowed {
            return Err(Rejection::Forbidden { action: "erasing a contact", needed: "an admin or the operator" });
        }
        let reason = s.reason.trim();
        if reason.is_empty() || s.reason.len() > ERASE_REASON_BYTES_MAX || s.reason.chars().any(char::is_control) {
            let why = format!(
                "1 to {ERASE_REASON_BYTES_MAX} bytes, no control characters (and no personal data: it is kept in clear)"
            );
            return Err(Rejection::invalid("reason", why));
        }
        let contact = match (&s.contact, &s.channel, &s.handle) {
            (Some(id), None, None) => id.clone(),
            (None, Some(channel), Some(handle)) => {
                let identity = Identity { channel: channel.clone(), handle: handle.clone() };
                match self.identities.get(&identity) {
                    Some(id) => id.clone(),
                    None => {
                        return Err(Rejection::Unknown {
                            entity: format!("a contact with that handle on channel {channel}"),
                        });
                    }
                }
            }
            _ => {
                return Err(Rejection::invalid(
                    "contact",
                    "name the contact by `contact`, or by `channel` and `handle`",
                ));
            }
        };
        Ok(ContactErased { contact, reason: s.reason.clone() })
    }

    fn check(&self, catalog: &Catalog, s: &ContactSpec) -> Result<(), Rejection> {
        if s.name.trim().is_empty() || s.name.len() > NAME_BYTES_MAX {
            return Err(Rejection::invalid("name", format!("1 to {NAME_BYTES_MAX} bytes")));
        }
        check_count("identities", s.identities.len(), IDENTITIES_PER_CONTACT_MAX)?;
        for (i, identity) in s.identities.iter().enumerate() {
            let field = format!("identities[{i}]");
            catalog.channels.get(&identity.channel).ok_or_else(|| {
                Rejection::invalid(format!("{field}.channel"), format!("no channel {}", identity.channel))
            })?;
            let handle = &identity.handle;
            check_handle(&format!("{field}.handle"), handle)?;
            if s.identities[..i].contains(identity) {
                return Err(Rejection::invalid(field, "listed twice"));
            }
            if let Some(holder) = self.identities.get(identity).filter(|holder| **holder != s.id) {
                return Err(Rejection::IdentityTaken {
                    channel: identity.channel.clone(),
                    handle: handle.clone(),
                    contact: holder.clone(),
                });
            }
        }
        check_count("attributes", s.attributes.len(), ATTRIBUTES_PER_CONTACT_MAX)?;
        for (name, value) in &s.attributes {
            check_attribute(catalog, &format!("attributes.{name}"), name, value)?;
        }
        check_count("labels", s.labels.len(), LABELS_PER_CONTACT_MAX)?;
        for (i, label) in s.labels.iter().enumerate() {
            if !catalog.settings.labels.contains(label) {
                return Err(Rejection::invalid(format!("labels[{i}]"), format!("label {label:?} is not defined")));
            }
            if s.labels[..i].contains(label) {
                return Err(Rejection::invalid(format!("labels[{i}]"), "listed twice"));
            }
        }
        Ok(())
    }

    /// Applies one recorded event. Asserts it is the next in sequence.
    pub fn evolve(&mut self, record: &Recorded<ContactEvent>) {
        assert_eq!(record.seq, self.seq + 1, "contact book of {}: event out of sequence", self.account);
        self.seq = record.seq;
        self.recent.note(&record.command, record.seq);
        match &record.event {
            ContactEvent::ContactDefined(s) | ContactEvent::ContactUpdated(s) => {
                if let Some(old) = self.contacts.get(&s.id) {
                    for identity in &old.identities {
                        self.identities.remove(identity);
                    }
                }
                for identity in &s.identities {
                    self.identities.insert(identity.clone(), s.id.clone());
                }
                self.contacts.insert(s.id.clone(), s.clone());
            }
            ContactEvent::ContactErased(s) => {
                if let Some(old) = self.contacts.remove(&s.contact) {
                    for identity in &old.identities {
                        self.identities.remove(identity);
                    }
                }
            }
            ContactEvent::ContactAttributeSet(s) => {
                if let Some(contact) = self.contacts.get_mut(&s.contact) {
                    if s.value.is_empty() {
                        contact.attributes.remove(&s.name);
                    } else {
                        contact.attributes.insert(s.name.clone(), s.value.clone());
                    }
                }
            }
        }
    }
}

fn check_count(field: &str, count: usize, max: usize) -> Result<(), Rejection> {
    if count > max { Err(Rejection::invalid(field, format!("at most {max}"))) } else { Ok(()) }
}

/// Checks an attribute is defined and the value fits its type.
fn check_attribute(catalog: &Catalog, field: &str, name: &str, value: &str) -> Result<(), Rejection> {
    let spec = catalog
        .contact_attributes
        .get(name)
        .ok_or_else(|| Rejection::invalid(field, format!("no contact attribute {name:?}")))?;
    check_value(spec.kind, value).map_err(|reason| Rejection::invalid(field, reason))
}

/// Checks one attribute's new value (empty: cleared), naming the `(name,
/// value)` fields of whoever asks: the contact book's command, or a macro's
/// or an automation's action.
pub(crate) fn check_setting(
    catalog: &Catalog,
    (name_field, value_field): (&str, &str),
    name: &str,
    value: &str,
) -> Result<(), Rejection> {
    let Some(spec) = catalog.contact_attributes.get(name) else {
        return Err(Rejection::invalid(name_field, format!("no contact attribute {name:?}")));
    };
    if value.is_empty() {
        return Ok(());
    }
    check_value(spec.kind, value).map_err(|reason| Rejection::invalid(value_field, reason))
}

/// Checks an attribute definition's shape.
pub fn check_definition(s: &ContactAttributeSpec) -> Result<(), Rejection> {
    check_id(&s.name).map_err(|e| Rejection::invalid("name", e.to_string()))?;
    if s.description.len() > NAME_BYTES_MAX {
        return Err(Rejection::invalid("description", format!("at most {NAME_BYTES_MAX} bytes")));
    }
    check_count("required_to_close", s.required_to_close.len(), crate::config::CHANNELS_PER_CAMPAIGN_MAX)?;
    Ok(())
}
