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
    mut map: Map<String, Value>,
    stream: (&str, String),
    record: &convo_domain::Recorded<E>,
) -> Value {
    map.insert(stream.0.into(), Value::String(stream.1));
    map.insert("seq".into(), Value::from(record.seq));
    map.insert("command".into(), Value::String(record.command.to_string()));
    map.insert("actor".into(), serde_json::to_value(&record.actor).expect("actors serialize"));
    if let Value::Object(fields) = convo_domain::json_view(&record.event) {
        map.extend(fields);
    }
    Value::Object(map)
}

/// The JSON object of one record.
pub fn to_value(record: &Record) -> Value {
    match record {
        Record::Conversation { account, conversation, record } => {
            event(head(record.at, account), ("conversation", conversation.to_string()), record)
        }
        Record::Config { account, record } => {
            event(head(record.at, account), ("entity", record.event.entity()), record)
        }
        Record::Agent { account, agent, record } => {
            event(head(record.at, account), ("agent", agent.to_string()), record)
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
