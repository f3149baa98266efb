//! # convo-domain
//!
//! The pure domain of convo, an event-sourced conversation engine for contact
//! centers: identifiers, the configuration model, commands and events, and the
//! three aggregates —
//!
//! - [`Catalog`]: an account's configuration (clients, campaigns, channels…);
//! - [`AgentPresence`]: one agent's presence state;
//! - [`Conversation`]: one conversation, enforcing SLA, inactivity,
//!   out-of-hours, transfer and closing rules.
//!
//! Each aggregate has `decide(&state, …, &command, now) -> Result<Decision, Rejection>`
//! and `evolve(&mut state, &event)`. Nothing here performs I/O, reads a clock,
//! generates an id or draws a random number: time and ids arrive with commands,
//! so the same inputs always give the same events (a test checks the crate's
//! source for the usual ways of breaking this).

pub mod agent;
pub mod aggregate;
pub mod automation;
pub mod command;
pub mod config;
pub mod contact;
pub mod conversation;
pub mod ids;
pub mod live;
pub mod rejection;
pub mod schedule;
pub mod template;
pub mod time;

pub use agent::{AgentEvent, AgentPresence};
pub use aggregate::{Actor, Decision, ENGINE_ACTORS, Recorded};
pub use command::{Command, CommandEnvelope, CommandParseError, Target};
pub use config::{Catalog, ConfigEvent, Occupancy};
pub use contact::{ContactBook, ContactEvent};
pub use conversation::{Context, Conversation, ConversationEvent};
pub use ids::*;
pub use live::Floor;
pub use rejection::{Rejection, RejectionClass};
pub use time::Timestamp;

/// Every event type, as the JSON view's `type` names it (convo-wire's tests keep
/// it equal to the types).
pub const EVENT_TYPES: [&str; 61] = [
    "account_configured",
    "client_defined",
    "client_updated",
    "project_defined",
    "project_updated",
    "schedule_defined",
    "schedule_updated",
    "channel_defined",
    "channel_updated",
    "user_defined",
    "user_updated",
    "campaign_defined",
    "campaign_updated",
    "activated",
    "inactivated",
    "api_key_issued",
    "api_key_revoked",
    "access_denied",
    "agent_state_changed",
    "conversation_opened",
    "conversation_queued",
    "agent_assigned",
    "message_received",
    "message_sent",
    "response_recorded",
    "sla_threshold_crossed",
    "inactivity_warning_sent",
    "agent_inactivity_alerted",
    "conversation_transferred",
    "dynamic_field_set",
    "label_added",
    "label_removed",
    "survey_answered",
    "conversation_closed",
    "webhook_defined",
    "webhook_updated",
    "webhook_redriven",
    "sla_mode_set",
    "sla_clock_set",
    "team_defined",
    "team_updated",
    "macro_defined",
    "macro_updated",
    "automation_defined",
    "automation_updated",
    "macro_applied",
    "automation_triggered",
    "automation_action_refused",
    "automations_stopped",
    "contact_attribute_defined",
    "contact_attribute_updated",
    "contact_defined",
    "contact_updated",
    "contact_attribute_set",
    "contact_attribute_requested",
    "contact_erased",
    "unredacted_read",
    "retention_set",
    "content_retention_scheduled",
    "content_expired",
    "contact_requested",
];

/// The JSON view of a domain enum: `{"type": variant, fields…}`.
///
/// Enums derive serde's externally tagged form (`{"variant": {fields}}`), which
/// the compact binary encoding needs; people and integrators read this flatter
/// form instead. A newtype variant holding a non-object is kept as `value`.
pub fn json_view<T: serde::Serialize>(value: &T) -> serde_json::Value {
    use serde_json::{Map, Value};
    match serde_json::to_value(value) {
        Ok(Value::Object(map)) if map.len() == 1 => {
            let (kind, inner) = map.into_iter().next().expect("one entry");
            let mut out = Map::new();
            out.insert("type".into(), Value::String(kind));
            match inner {
                Value::Object(fields) => out.extend(fields),
                other => {
                    out.insert("value".into(), other);
                }
            }
            Value::Object(out)
        }
        Ok(Value::String(kind)) => Value::Object([("type".to_string(), Value::String(kind))].into_iter().collect()),
        Ok(other) => other,
        Err(e) => Value::String(format!("unserializable: {e}")),
    }
}
