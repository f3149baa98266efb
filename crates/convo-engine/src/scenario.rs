//! Scenario files: the public input format of `convo simulate` and
//! `convo replay-traffic`. JSON lines, one timed command per line; the
//! format is documented in `replay-fixtures/README.md`.
//!
//! Parsing is strict: an unknown key, a bad value or a line earlier than the
//! one before it stops the whole file with the line number and the field, so
//! nothing after a mistake is silently skipped.

use std::fmt;

use convo_domain::command::{ReceiveMessage, RequestError, parse_actor, parse_client_id, parse_command};
use convo_domain::{AccountId, Actor, Command, CommandEnvelope, CommandId, Timestamp};

/// The longest scenario line accepted, in bytes.
pub const LINE_BYTES_MAX: usize = 256 * 1024;
/// The most inputs one scenario may hold.
pub const INPUTS_MAX: usize = 5_000_000;
/// The account a line belongs to when it names none.
pub const DEFAULT_ACCOUNT: &str = "default";
/// The actor of a line that names none (contact commands default to the contact).
pub const DEFAULT_SYSTEM_ACTOR: &str = "scenario";

/// One timed command of a scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub at: Timestamp,
    pub envelope: CommandEnvelope,
    /// Where it came from (1-based line number), when read from a file.
    pub line: Option<usize>,
}

/// A scenario line that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioError {
    pub line: usize,
    /// The offending field (`at`, `command.sla_low_secs`…), empty for the line as a whole.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "line {}: {}", self.line, self.message)
        } else {
            write!(f, "line {}: field `{}`: {}", self.line, self.field, self.message)
        }
    }
}

impl std::error::Error for ScenarioError {}

const KEYS: [&str; 5] = ["at", "account", "id", "actor", "command"];

/// Parses a whole scenario. Blank lines and lines starting with `#` are skipped.
pub fn parse(text: &str) -> Result<Vec<Input>, ScenarioError> {
    let mut inputs = Vec::new();
    let mut previous: Option<(Timestamp, usize)> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let input = parse_line(trimmed, line)?;
        if let Some((before, before_line)) = previous
            && input.at < before
        {
            return Err(err(
                line,
                "at",
                format!("{} is earlier than line {before_line} ({before}); lines must be in time order", input.at),
            ));
        }
        previous = Some((input.at, line));
        if inputs.len() == INPUTS_MAX {
            return Err(err(line, "", format!("a scenario holds at most {INPUTS_MAX} inputs")));
        }
        inputs.push(input);
    }
    Ok(inputs)
}

fn err(line: usize, field: &str, message: impl Into<String>) -> ScenarioError {
    ScenarioError { line, field: field.into(), message: message.into() }
}

/// Parses one line (already trimmed).
pub fn parse_line(text: &str, line: usize) -> Result<Input, ScenarioError> {
    if text.len() > LINE_BYTES_MAX {
        return Err(err(line, "", format!("the line has {} bytes; at most {LINE_BYTES_MAX}", text.len())));
    }
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| err(line, "", format!("not JSON: {e}")))?;
    let serde_json::Value::Object(mut map) = value else {
        return Err(err(line, "", "a scenario line is a JSON object with `at` and `command`"));
    };
    if let Some(key) = map.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(err(line, key, format!("unknown key; a line has {}", KEYS.join(", "))));
    }
    let at = match map.remove("at") {
        Some(serde_json::Value::String(s)) => Timestamp::parse_rfc3339(&s)
            .map_err(|e| err(line, "at", format!("{s:?} is not an RFC 3339 instant: {e}")))?,
        Some(_) => {
            return Err(err(line, "at", "must be an RFC 3339 string such as \"2026-03-02T09:00:00Z\""));
        }
        None => return Err(err(line, "at", "missing; every line says when it happens")),
    };
    let account = match map.remove("account") {
        Some(serde_json::Value::String(s)) => AccountId::new(&s).map_err(|e| err(line, "account", e.to_string()))?,
        Some(_) => return Err(err(line, "account", "must be a string")),
        None => AccountId::new(DEFAULT_ACCOUNT).expect("valid"),
    };
    let at_field = |e: RequestError| err(line, &e.field, e.message);
    let id = match map.remove("id") {
        Some(v) => parse_client_id(v).map_err(at_field)?,
        None => CommandId::new(&format!("line-{line}")).expect("valid"),
    };
    let actor = map.remove("actor").map(parse_actor).transpose().map_err(at_field)?;
    let command = match map.remove("command") {
        Some(v) => parse_command(v).map_err(at_field)?,
        None => {
            return Err(err(line, "command", "missing; every line carries a command"));
        }
    };
    let actor = actor.unwrap_or_else(|| default_actor(&command));
    Ok(Input { at, envelope: CommandEnvelope { id, account, actor, command }, line: Some(line) })
}

/// Inbound messages naming their contact by id come from that contact;
/// anything else (a message naming a handle included: the gateway knows no
/// id) from the system.
fn default_actor(command: &Command) -> Actor {
    match command {
        Command::ReceiveMessage(ReceiveMessage { contact: Some(contact), .. }) => Actor::Contact(contact.clone()),
        _ => Actor::system(DEFAULT_SYSTEM_ACTOR),
    }
}

/// The JSON line of an input (how the random workload writes a scenario).
pub fn to_line(input: &Input) -> String {
    let mut map = serde_json::Map::new();
    map.insert("at".into(), serde_json::Value::String(input.at.to_rfc3339()));
    if input.envelope.account.as_str() != DEFAULT_ACCOUNT {
        map.insert("account".into(), serde_json::Value::String(input.envelope.account.to_string()));
    }
    map.insert("id".into(), serde_json::Value::String(input.envelope.id.to_string()));
    if input.envelope.actor != default_actor(&input.envelope.command) {
        map.insert("actor".into(), serde_json::to_value(&input.envelope.actor).expect("actors serialize"));
    }
    map.insert("command".into(), input.envelope.command.to_json());
    serde_json::Value::Object(map).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_line_and_the_field() {
        let good = r#"{"at":"2026-03-02T09:00:00Z","command":{"type":"tick","conversation":"c1"}}"#;
        assert_eq!(parse(good).unwrap().len(), 1);
        let cases = [
            (r#"{"at":"yesterday","command":{"type":"tick","conversation":"c1"}}"#, "at"),
            (r#"{"command":{"type":"tick","conversation":"c1"}}"#, "at"),
            (r#"{"at":"2026-03-02T09:00:00Z"}"#, "command"),
            (r#"{"at":"2026-03-02T09:00:00Z","comand":{}}"#, "comand"),
            (r#"{"at":"2026-03-02T09:00:00Z","command":{"type":"tick"}}"#, "command.conversation"),
            (r#"{"at":"2026-03-02T09:00:00Z","id":"_tick-2","command":{"type":"tick","conversation":"c1"}}"#, "id"),
            (
                r#"{"at":"2026-03-02T09:00:00Z","command":{"type":"answer_survey","conversation":"c1","rating":"5","solved":true}}"#,
                "command.rating",
            ),
            (
                r#"{"at":"2026-03-02T09:00:00Z","actor":{"user":{"id":"u1","ip":"nowhere"}},"command":{"type":"tick","conversation":"c1"}}"#,
                "actor.user.ip",
            ),
            (
                r#"{"at":"2026-03-02T09:00:00Z","command":{"type":"define_schedule","id":"s","name":"s","time_zone":"Mars/Base","week":{}}}"#,
                "command.time_zone",
            ),
            (
                r#"{"at":"2026-03-02T09:00:00Z","command":{"type":"define_schedule","id":"s","name":"s","time_zone":"UTC","week":{"mon":["9-17"]}}}"#,
                "command.week.mon[0]",
            ),
        ];
        for (text, field) in cases {
            let text = format!("{good}\n\n# a comment\n{text}\n{good}");
            let e = parse(&text).unwrap_err();
            assert_eq!((e.line, e.field.as_str()), (4, field), "{e}");
        }
        let e = parse(&format!(
            "{good}\n{{\"at\":\"2026-03-02T08:00:00Z\",\"command\":{{\"type\":\"tick\",\"conversation\":\"c1\"}}}}"
        ))
        .unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (2, "at"), "{e}");
        let e = parse("{not json").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.to_string().starts_with("line 1: not JSON"), "{e}");
    }

    #[test]
    fn lines_round_trip() {
        let text = r#"{"at":"2026-03-02T09:00:00Z","id":"c-9","actor":{"user":{"id":"ana","ip":"10.0.0.7"}},"command":{"type":"close","conversation":"c1","typification":"sale"}}"#;
        let input = parse_line(text, 1).unwrap();
        assert_eq!(to_line(&input), text);
    }
}
