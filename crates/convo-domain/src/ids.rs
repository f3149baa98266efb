//! Identifiers as newtypes, so an agent id can never be passed where a
//! campaign id is expected.
//!
//! Every id is text chosen by the caller (the domain never generates one): a
//! UUID, a CRM key or a readable name such as `sales-mx`. Ids travel inside NATS
//! subjects (`convo.<account>.conv.<id>.<kind>`), so they are limited to
//! `[A-Za-z0-9_-]` and [`ID_BYTES_MAX`] bytes; anything else is refused when the
//! id is parsed, with the reason.

use std::fmt;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest id accepted, in bytes (a UUID is 36).
pub const ID_BYTES_MAX: usize = 64;

/// Ids starting with this belong to the engine (its own command ids,
/// `_tick-…`, `_route-…`): no entity a client names may start with it.
pub const RESERVED_PREFIX: char = '_';

/// The JSON Schema of an id: what [`check_id`] accepts, and — for every id
/// but a command's, which may be the engine's — not in the engine's
/// namespace ([`RESERVED_PREFIX`]).
fn id_schema(engine_may_use: bool) -> schemars::Schema {
    let pattern = if engine_may_use { "^[A-Za-z0-9_-]+$" } else { "^[A-Za-z0-9-][A-Za-z0-9_-]*$" };
    schemars::json_schema!({
        "type": "string",
        "pattern": pattern,
        "minLength": 1,
        "maxLength": ID_BYTES_MAX,
    })
}

/// Why a piece of text is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("an id cannot be empty")]
    Empty,
    #[error("an id is at most {ID_BYTES_MAX} bytes, this one has {0}")]
    TooLong(usize),
    #[error("an id may hold only letters, digits, '-' and '_'; found {0:?}")]
    BadChar(char),
    #[error("ids starting with '_' belong to the engine; choose one that starts with a letter, a digit or '-'")]
    Reserved,
}

/// Checks the id rules shared by every id kind.
pub fn check_id(text: &str) -> Result<(), IdError> {
    if text.is_empty() {
        return Err(IdError::Empty);
    }
    if text.len() > ID_BYTES_MAX {
        return Err(IdError::TooLong(text.len()));
    }
    match text.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        Some(c) => Err(IdError::BadChar(c)),
        None => Ok(()),
    }
}

/// Checks an id a client chooses for an entity: [`check_id`], and not in
/// the engine's namespace ([`RESERVED_PREFIX`]).
pub fn check_client_id(text: &str) -> Result<(), IdError> {
    check_id(text)?;
    if text.starts_with(RESERVED_PREFIX) {
        return Err(IdError::Reserved);
    }
    Ok(())
}

/// Deserializes a newtype over text, validating it with a parser.
pub(crate) struct TextVisitor<T, E>(pub(crate) fn(&str) -> Result<T, E>, pub(crate) &'static str);

impl<'de, T, E: fmt::Display> serde::de::Visitor<'de> for TextVisitor<T, E> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} (text)", self.1)
    }

    fn visit_str<Er: serde::de::Error>(self, v: &str) -> Result<T, Er> {
        (self.0)(v).map_err(Er::custom)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        (self.0)(&text).map_err(serde::de::Error::custom)
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        id_type!($(#[$doc])* $name, engine_may_use = false);
    };
    ($(#[$doc:meta])* $name:ident, engine_may_use = $engine:literal) => {
        $(#[$doc])*
        ///
        /// Cheap to clone (shared text).
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Parses and validates an id.
            pub fn new(text: &str) -> Result<Self, IdError> {
                check_id(text)?;
                Ok(Self(Arc::from(text)))
            }

            /// Parses an id a client chose: [`Self::new`], and not in the
            /// engine's namespace (unless the engine may use this kind of id).
            pub fn parse_client(text: &str) -> Result<Self, IdError> {
                if !$engine {
                    check_client_id(text)?;
                }
                Self::new(text)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        /// A newtype over text: the same bytes as a string in JSON and
        /// postcard, and a named type for schema tracing.
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_newtype_struct(stringify!($name), &*self.0)
            }
        }

        /// JSON is what clients write (requests, scenario files): there an
        /// id is checked as a client's ([`Self::parse_client`]). postcard is
        /// the stream, which keeps whatever was committed before the rule.
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let parse = if d.is_human_readable() { Self::parse_client } else { Self::new };
                d.deserialize_newtype_struct(stringify!($name), TextVisitor(parse, stringify!($name)))
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                id_schema($engine)
            }
        }
    };
}

id_type!(
    /// A tenant of the platform: the hard isolation boundary.
    AccountId
);
id_type!(
    /// A company served by an account; owns the SLA and inactivity policy.
    ClientId
);
id_type!(
    /// Groups the campaigns of a client.
    ProjectId
);
id_type!(
    /// Where agents attend conversations.
    CampaignId
);
id_type!(
    /// A concrete inbound endpoint: a WhatsApp number, a web widget…
    ChannelId
);
id_type!(
    /// One conversation, from its first message to its closure.
    ConversationId
);
id_type!(
    /// The person writing in: an opaque id, never a handle (SPEC §13). The
    /// engine's own (`_ct-…`, made for a contact first known by a handle)
    /// may be named by clients; only the engine defines one.
    ContactId,
    engine_may_use = true
);
id_type!(
    /// A user of the platform: agent, supervisor or admin.
    UserId
);
id_type!(
    /// The caller-chosen id of a command; repeating it repeats nothing. The
    /// engine's own start with `_` (a client's may not: `parse_client_id`).
    CommandId,
    engine_may_use = true
);
id_type!(
    /// A weekly schedule with holidays.
    ScheduleId
);
id_type!(
    /// A closing disposition code.
    TypificationId
);
id_type!(
    /// An API key of an account (the public half of a credential; the secret is never stored).
    KeyId
);
id_type!(
    /// An API client of an account (a CRM, a channel gateway…), acting with scopes.
    IntegrationId
);
id_type!(
    /// A webhook endpoint of an account.
    WebhookId
);
id_type!(
    /// A team: a named group of agents of an account, with its supervisors.
    TeamId
);
id_type!(
    /// A macro: a named list of actions an agent runs on a conversation at once.
    MacroId
);
id_type!(
    /// An automation: a rule "when EVENT and CONDITIONS then ACTIONS".
    AutomationId
);

/// The id of one event, derived from where it stands in its stream, so the
/// same history always carries the same ids (the domain generates nothing).
/// Any language computes it: UUID v5 in the namespace
/// [`EventId::NAMESPACE`] over the UTF-8 text `<account>/<stream path>/<seq>`
/// (`acme/conv/c1/3`, `acme/agent/ana/1`, `acme/config/7`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct EventId(pub uuid::Uuid);

impl JsonSchema for EventId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "EventId".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "format": "uuid"})
    }
}

impl EventId {
    /// Namespace of convo's event ids (UUID v5 over `account/stream/seq`):
    /// `6c0a7f1e-4d2b-4c8e-9a51-0d3f2b7ec401`.
    pub const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6c0a_7f1e_4d2b_4c8e_9a51_0d3f_2b7e_c401);

    pub fn derive(account: &AccountId, stream: &str, seq: u64) -> Self {
        let name = format!("{account}/{stream}/{seq}");
        Self(uuid::Uuid::new_v5(&Self::NAMESPACE, name.as_bytes()))
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        assert!(CampaignId::new("sales-mx_2").is_ok());
        assert!(CampaignId::new("3f0e2a9c-8d57-4b1e-a3c4-6f2d9e0b1a77").is_ok());
        assert_eq!(CampaignId::new(""), Err(IdError::Empty));
        assert_eq!(CampaignId::new("a.b"), Err(IdError::BadChar('.')));
        assert_eq!(CampaignId::new("a*"), Err(IdError::BadChar('*')));
        assert_eq!(CampaignId::new(&"x".repeat(65)), Err(IdError::TooLong(65)));
        // The engine's namespace: closed to a client's entities, in JSON; the stream keeps what it has.
        assert_eq!(UserId::parse_client("_root"), Err(IdError::Reserved));
        assert!(serde_json::from_str::<UserId>("\"_root\"").is_err());
        assert!(serde_json::from_str::<CommandId>("\"_tick-1\"").is_ok());
        assert!(UserId::new("_root").is_ok());
    }

    #[test]
    fn event_ids_are_stable() {
        let account = AccountId::new("acme").unwrap();
        let a = EventId::derive(&account, "conv/c1", 1);
        assert_eq!(a, EventId::derive(&account, "conv/c1", 1));
        assert_ne!(a, EventId::derive(&account, "conv/c1", 2));
    }
}
