//! The JSON-lines view of the simulator's output: one object per line with
//! the event's time, account, stream (conversation, entity or agent), sequence,
//! command id, actor, `type` and fields. Keys keep this order, so the same run
//! gives the same bytes.

use serde_json::{Map, Value};

use crate::world::Record;

fn head(at: convo_domain::Timestamp, account: &convo_domain::AccountId) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("at".into(), Value::String(at.to_rfc3339()));
    map.insert("account".into(), Value::String(account.to_string()));
    map
}

fn event<E: serde::Serialize>(
    account: &convo_domain::AccountId,
    stream: (&str, String),
    record: &convo_domain::Recorded<E>,
) -> Value {
    let view = convo_domain::json_view(&record.event);
    convo_wire::event_json(record.at, account, stream, record.seq, &record.command, &record.actor, view)
}

/// The JSON object of one record.
pub fn to_value(record: &Record) -> Value {
    match record {
        Record::Conversation { account, conversation, record } => {
            event(account, ("conversation", conversation.to_string()), record)
        }
        Record::Config { account, record } => event(account, ("entity", record.event.entity()), record),
        Record::Agent { account, agent, record } => event(account, ("agent", agent.to_string()), record),
        Record::Contact { account, record } => {
            event(account, ("entity", format!("contact/{}", record.event.contact())), record)
        }
        Record::Rejected { at, account, command, kind, code, reason, line } => {
            let mut map = head(*at, account);
            map.insert("command".into(), Value::String(command.to_string()));
            map.insert("rejected".into(), Value::String((*kind).to_owned()));
            map.insert("code".into(), Value::String((*code).to_owned()));
            map.insert("reason".into(), Value::String(reason.clone()));
            if let Some(line) = line {
                map.insert("line".into(), Value::from(*line));
            }
            Value::Object(map)
        }
        Record::Duplicate { at, account, command, first_seq, last_seq, line } => {
            let mut map = head(*at, account);
            map.insert("command".into(), Value::String(command.to_string()));
            map.insert("duplicate_of".into(), serde_json::json!({ "first_seq": first_seq, "last_seq": last_seq }));
            if let Some(line) = line {
                map.insert("line".into(), Value::from(*line));
            }
            Value::Object(map)
        }
    }
}

/// One output line (without the newline).
pub fn to_line(record: &Record) -> String {
    to_value(record).to_string()
}
