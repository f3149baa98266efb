//! Which fields of a commit are personal data (SPEC §13), and the shape of
//! a sealed one. The crypto lives in the store (`convo_store::keys`); this
//! module only says where personal data is and under which data key it is
//! sealed:
//!
//! - a contact-book event's name, handles and attribute values: the
//!   contact's key ([`KeyScope::Contact`]);
//! - a conversation event's texts, attachments, field values and the
//!   contact name it carries: the conversation's key
//!   ([`KeyScope::Conversation`]), itself kept under its contact's key, so
//!   erasing a contact makes all its conversations unreadable at once.
//!
//! Ids, times, types, SLA facts, reasons, typifications, queue and agent
//! facts stay clear: the rules, the reports and replays never need a key.
//!
//! A sealed value is self-describing text, so any reader holding it (a
//! commit, a read model's JSON) can open it:
//! `pd:v1:<c|v>.<account>.<id>:<base64url of nonce and ciphertext>`. A value
//! whose key was destroyed reads [`ERASED`].

use convo_domain::contact::ContactEvent;
use convo_domain::conversation::ConversationEvent;
use convo_domain::{AccountId, ContactId, ConversationId};

use crate::{Commit, Event, StreamRef};

/// The prefix of every sealed personal value.
pub const SEALED_PERSONAL_PREFIX: &str = "pd:v1:";
/// What a personal value reads once its key is destroyed (erasure or retention).
pub use convo_domain::conversation::ERASED;

/// The fields of each event type that hold personal data, as its JSON view
/// names them (the ones [`visit_mut`] seals): what the schemas mark as
/// possibly reading [`ERASED`].
pub const PERSONAL_FIELDS: [(&str, &[&str]); 9] = [
    ("conversation_opened", &["contact_name"]),
    ("message_received", &["text", "attachments"]),
    ("message_sent", &["text", "attachments"]),
    ("dynamic_field_set", &["value"]),
    ("contact_attribute_requested", &["value"]),
    ("contact_requested", &["handle", "name"]),
    ("contact_defined", &["name", "identities", "attributes"]),
    ("contact_updated", &["name", "identities", "attributes"]),
    ("contact_attribute_set", &["value"]),
];

/// How the schemas describe a personal field.
pub const PERSONAL_NOTE: &str = "Personal data (SPEC §13): sealed in the event stream with a data key; reads \
    `[erased]` once its contact is erased or its content's retention has passed (in an array or a map: each text \
    in it — attachments' `url` and `name`, identities' `handle`, attributes' values).";

/// The data key a personal value is sealed with.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyScope {
    /// A contact's identity: name, handles, attribute values.
    Contact(AccountId, ContactId),
    /// A conversation's content: texts, attachments, field values, the contact name it carries.
    Conversation(AccountId, ConversationId),
}

impl KeyScope {
    /// `c.<account>.<contact>` or `v.<account>.<conversation>` (ids hold no dots).
    pub fn token(&self) -> String {
        match self {
            KeyScope::Contact(account, id) => format!("c.{account}.{id}"),
            KeyScope::Conversation(account, id) => format!("v.{account}.{id}"),
        }
    }

    /// The scope a [`KeyScope::token`] names.
    pub fn parse(token: &str) -> Option<Self> {
        let mut parts = token.split('.');
        let (kind, account, id) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let account = AccountId::new(account).ok()?;
        match kind {
            "c" => Some(KeyScope::Contact(account, ContactId::new(id).ok()?)),
            "v" => Some(KeyScope::Conversation(account, ConversationId::new(id).ok()?)),
            _ => None,
        }
    }

    pub fn account(&self) -> &AccountId {
        match self {
            KeyScope::Contact(account, _) | KeyScope::Conversation(account, _) => account,
        }
    }
}

/// A sealed personal value split into its scope and its sealed body;
/// `None` for any other text (plaintext from before sealing, or no personal value).
pub fn split_sealed(value: &str) -> Option<(KeyScope, &str)> {
    let rest = value.strip_prefix(SEALED_PERSONAL_PREFIX)?;
    let (scope, body) = rest.split_once(':')?;
    Some((KeyScope::parse(scope)?, body))
}

/// Whether `value` is a sealed personal value.
pub fn is_sealed(value: &str) -> bool {
    value.starts_with(SEALED_PERSONAL_PREFIX)
}

/// Calls `f` with every non-empty personal value of `commit`, its key's
/// scope and where it sits (`<event seq>/<field>`, so equal texts in one
/// conversation seal differently), in a fixed order.
pub fn visit_mut(commit: &mut Commit, f: &mut dyn FnMut(&KeyScope, &str, &mut String)) {
    let account = commit.account.clone();
    let conversation = match &commit.stream {
        StreamRef::Conversation(id) => Some(KeyScope::Conversation(account.clone(), id.clone())),
        _ => None,
    };
    for e in &mut commit.events {
        let seq = e.seq;
        let mut field = |scope: &KeyScope, name: &str, value: &mut String| {
            if !value.is_empty() {
                f(scope, &format!("{seq}/{name}"), value);
            }
        };
        match (&mut e.event, &conversation) {
            (Event::Conversation(event), Some(scope)) => conversation_fields(event, scope, &mut field),
            (Event::Contact(event), _) => {
                let scope = KeyScope::Contact(account.clone(), event.contact().clone());
                contact_fields(event, &scope, &mut field);
            }
            _ => {}
        }
    }
}

fn conversation_fields(
    event: &mut ConversationEvent,
    scope: &KeyScope,
    field: &mut dyn FnMut(&KeyScope, &str, &mut String),
) {
    let attachments = |items: &mut Vec<convo_domain::command::Attachment>,
                       field: &mut dyn FnMut(&KeyScope, &str, &mut String)| {
        for (i, a) in items.iter_mut().enumerate() {
            field(scope, &format!("attachments/{i}/url"), &mut a.url);
            if let Some(name) = a.name.as_mut() {
                field(scope, &format!("attachments/{i}/name"), name);
            }
        }
    };
    match event {
        ConversationEvent::ConversationOpened(opened) => {
            if let Some(name) = opened.contact_name.as_mut() {
                field(scope, "contact_name", name);
            }
        }
        ConversationEvent::MessageReceived { text, attachments: items }
        | ConversationEvent::MessageSent { text, attachments: items, .. } => {
            field(scope, "text", text);
            attachments(items, field);
        }
        ConversationEvent::DynamicFieldSet { value, .. }
        | ConversationEvent::ContactAttributeRequested { value, .. } => field(scope, "value", value),
        // Under the conversation's key (wrapped by the contact's): gone with either.
        ConversationEvent::ContactRequested { handle, name, .. } => {
            field(scope, "handle", handle);
            if let Some(name) = name.as_mut() {
                field(scope, "name", name);
            }
        }
        _ => {}
    }
}

fn contact_fields(event: &mut ContactEvent, scope: &KeyScope, field: &mut dyn FnMut(&KeyScope, &str, &mut String)) {
    match event {
        ContactEvent::ContactDefined(spec) | ContactEvent::ContactUpdated(spec) => {
            field(scope, "name", &mut spec.name);
            for (i, identity) in spec.identities.iter_mut().enumerate() {
                field(scope, &format!("identities/{i}/handle"), &mut identity.handle);
            }
            for (name, value) in spec.attributes.iter_mut() {
                field(scope, &format!("attributes/{name}"), value);
            }
        }
        ContactEvent::ContactAttributeSet(set) => field(scope, "value", &mut set.value),
        _ => {}
    }
}

/// The data keys `commit`'s personal values are sealed with, each once, in
/// order; with, for a conversation key, the contact the commit opens it for
/// (`None` when the commit does not open the conversation).
pub fn scopes(commit: &Commit) -> Vec<(KeyScope, Option<ContactId>)> {
    let mut out: Vec<(KeyScope, Option<ContactId>)> = Vec::new();
    let opened_for = commit.events.iter().find_map(|e| match &e.event {
        Event::Conversation(ConversationEvent::ConversationOpened(o)) => Some(o.contact.clone()),
        _ => None,
    });
    let mut probe = commit.clone();
    visit_mut(&mut probe, &mut |scope, _, value| {
        // A value already erased needs no key.
        if value != ERASED && !out.iter().any(|(s, _)| s == scope) {
            let contact = matches!(scope, KeyScope::Conversation(..)).then(|| opened_for.clone()).flatten();
            out.push((scope.clone(), contact));
        }
    });
    if let (Some(contact), StreamRef::Conversation(id)) = (&opened_for, &commit.stream) {
        // An opening with no text still gets its key now, under its contact.
        let scope = KeyScope::Conversation(commit.account.clone(), id.clone());
        if !out.iter().any(|(s, _)| *s == scope) {
            out.push((scope, Some(contact.clone())));
        }
    }
    out
}

/// The data keys `commit` orders destroyed, in order: an erased contact's
/// (`contact_erased`), a conversation's whose content expired
/// (`content_expired`).
pub fn shredded_by(commit: &Commit) -> Vec<KeyScope> {
    let account = &commit.account;
    commit
        .events
        .iter()
        .filter_map(|e| match (&e.event, &commit.stream) {
            (Event::Contact(ContactEvent::ContactErased(erased)), _) => {
                Some(KeyScope::Contact(account.clone(), erased.contact.clone()))
            }
            (Event::Conversation(ConversationEvent::ContentExpired { .. }), StreamRef::Conversation(id)) => {
                Some(KeyScope::Conversation(account.clone(), id.clone()))
            }
            _ => None,
        })
        .collect()
}

/// Whether a personal value is in clear: neither sealed nor [`ERASED`].
pub fn in_clear(value: &str) -> bool {
    !is_sealed(value) && value != ERASED
}

/// The scopes of `commit`'s values in clear, each once, in order, and how
/// many values in clear it holds.
pub fn in_clear_scopes(commit: &Commit) -> (Vec<KeyScope>, u64) {
    let (mut scopes, mut values) = (Vec::new(), 0);
    let mut probe = commit.clone();
    visit_mut(&mut probe, &mut |scope, _, value| {
        if in_clear(value) {
            values += 1;
            if !scopes.contains(scope) {
                scopes.push(scope.clone());
            }
        }
    });
    (scopes, values)
}

/// Whether `commit` holds a personal value in clear (written before sealing,
/// or by an engine without keys).
pub fn holds_plaintext(commit: &Commit) -> bool {
    in_clear_scopes(commit).1 > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_tokens_round_trip_and_sealed_values_split() {
        let account = AccountId::new("acme").unwrap();
        for scope in [
            KeyScope::Contact(account.clone(), ContactId::new("k-1").unwrap()),
            KeyScope::Conversation(account.clone(), ConversationId::new("c_9").unwrap()),
        ] {
            assert_eq!(KeyScope::parse(&scope.token()), Some(scope.clone()));
            let sealed = format!("{SEALED_PERSONAL_PREFIX}{}:AAAA", scope.token());
            assert_eq!(split_sealed(&sealed), Some((scope, "AAAA")));
        }
        assert_eq!(KeyScope::parse("x.acme.k"), None);
        assert_eq!(KeyScope::parse("c.acme.k.extra"), None);
        assert_eq!(split_sealed("hola"), None);
        assert_eq!(split_sealed(ERASED), None);
    }
}
