//! What the engine answers to a request, over NATS and HTTP alike: one typed
//! shape (`schemas/json/reply.schema.json` is generated from it).

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

/// Every reply of the engine to a request, over NATS and HTTP alike
/// (`schemas/json/reply.schema.json`).
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Reply {
    /// Executed and durable: the commit's stream sequence (resume any feed
    /// after it), its events' ids and types, and their JSON views when the
    /// request asked for them (`"reply_events": true`).
    Committed {
        log_seq: u64,
        event_ids: Vec<convo_domain::EventId>,
        /// Each event's type, in the order of `event_ids`.
        event_types: Vec<&'static str>,
        #[schemars(schema_with = "event_views")]
        #[serde(default, skip_serializing_if = "Option::is_none")]
        events: Option<Vec<Value>>,
        /// `issue_api_key` only, shown this once.
        #[serde(skip_serializing_if = "Option::is_none")]
        credential: Option<Credential>,
    },
    /// Executed, and nothing needed doing (a tick with nothing due).
    Nothing,
    /// The command id was already executed: these are its events' sequences, nothing was applied again.
    Duplicate { first_seq: u64, last_seq: u64 },
    /// A rule of the domain refused it (`code` names the rule; `class` the
    /// kind of refusal: `invalid`, `forbidden`, `not_found`, `conflict`).
    Rejected {
        code: String,
        reason: String,
        class: &'static str,
        /// For a `forbidden` refusal, the access rule (`role`, `network`, `assignment`, `campaign`).
        #[serde(skip_serializing_if = "Option::is_none")]
        rule: Option<&'static str>,
    },
    /// Not executed: the request or the principal was refused, or the engine could not now.
    Error {
        code: String,
        message: String,
        /// The field at fault (`invalid`).
        #[serde(skip_serializing_if = "Option::is_none")]
        field: Option<String>,
        /// The access rule that refused it (`unauthenticated`, `forbidden`).
        #[serde(skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
    },
    /// A read the principal may make, over which part of the account, and
    /// whether it reads text the account's redaction rules mask (`unredacted`
    /// scope; recorded) or masked, as everyone else does.
    Authorized { principal: String, scope: Value, unredacted: bool },
}

/// A new API key's secrets.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Credential {
    /// The bearer token (`Authorization: Bearer …`, and the NATS request header).
    pub token: String,
    pub nats: NatsLogin,
}

/// A key's NATS login.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct NatsLogin {
    /// The nkey seed (`SU…`) to connect with.
    pub nkey_seed: String,
    /// The prefix of the reply inboxes the key may receive on.
    pub inbox_prefix: String,
}

fn event_views(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {"$ref": "event.schema.json"},
        "description": "the commit's events, as `convo tail` prints them (only when the request has `\"reply_events\": true`)"
    })
}

impl Reply {
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).expect("replies serialize")
    }

    /// The reply's bytes, as sent (no intermediate JSON tree).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("replies serialize")
    }

    pub fn error(code: &str, message: impl Into<String>) -> Self {
        Reply::Error { code: code.into(), message: message.into(), field: None, rule: None }
    }

    /// No room for the command now (`why`); the client retries later.
    pub fn overloaded(why: &str) -> Self {
        Reply::error("overloaded", format!("{why}; retry later"))
    }
}
