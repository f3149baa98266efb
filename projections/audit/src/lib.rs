//! # convo-audit
//!
//! The audit log (SPEC §8): one entry per event — time, account, actor, the
//! actor's IP, action, target, details, stream sequence and index of the event
//! in its commit — with a hash chain per account: each entry's hash covers the
//! previous entry's hash and its own content, so a deleted, altered or
//! reordered entry breaks the chain. [`verify`] refolds the stream and names
//! the first entry that differs.
//!
//! Layout in the projection's tree: `e/<account>/<n:020>` holds entry `n` of
//! the account (JSON), `h/<account>` the account's head (`n` and hash).

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use convo_domain::Actor;
use convo_projector::{Projection, Staged, json_bytes};
use convo_store::{EventStore, StoredCommit};
use convo_wire::{Event, StreamRef};

/// The hash before an account's first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The projection's name.
pub const NAME: &str = "audit";

fn entry_key(account: &str, n: u64) -> Vec<u8> {
    format!("e/{account}/{n:020}").into_bytes()
}

fn head_key(account: &str) -> Vec<u8> {
    format!("h/{account}").into_bytes()
}

/// The audit projection.
#[derive(Debug, Default, Clone, Copy)]
pub struct AuditLog;

fn actor_parts(actor: &Actor) -> (String, Value) {
    match actor {
        Actor::User { id, ip } => (format!("user:{id}"), ip.map_or(Value::Null, |ip| Value::String(ip.to_string()))),
        Actor::Contact(id) => (format!("contact:{id}"), Value::Null),
        Actor::System(rule) => (format!("system:{rule}"), Value::Null),
        Actor::Integration { id, ip } => {
            (format!("integration:{id}"), ip.map_or(Value::Null, |ip| Value::String(ip.to_string())))
        }
        Actor::Operator { ip } => ("operator".to_owned(), ip.map_or(Value::Null, |ip| Value::String(ip.to_string()))),
    }
}

fn target(stored: &StoredCommit, event: &Event) -> String {
    match (&stored.commit.stream, event) {
        (StreamRef::Conversation(id), _) => format!("conversation/{id}"),
        (StreamRef::Agent(id), _) => format!("agent/{id}"),
        (StreamRef::Catalog, Event::Config(c)) => c.entity(),
        (StreamRef::Catalog, _) => "config".into(),
        (StreamRef::Contacts, Event::Contact(c)) => format!("contact/{}", c.contact()),
        (StreamRef::Contacts, _) => "contacts".into(),
    }
}

/// The hash of an entry (without its `hash` field) after `prev`.
pub fn chain(prev: &str, entry: &Value) -> String {
    chain_bytes(prev, &json_bytes(entry))
}

/// The hash of an entry's JSON bytes (without its `hash` field) after `prev`.
fn chain_bytes(prev: &str, entry: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prev.as_bytes());
    hasher.update(entry);
    convo_store::signing::hex(&hasher.finalize())
}

/// An entry as it is hashed and stored: the fields in this order (the bytes
/// are those of the JSON object with these keys in this order, then `hash`).
#[derive(serde::Serialize)]
struct Entry<'a> {
    n: u64,
    time: String,
    account: &'a str,
    actor: String,
    ip: Value,
    action: &'static str,
    target: String,
    details: Value,
    seq: u64,
    index: usize,
    event_id: String,
    command: String,
    prev_hash: &'a str,
}

impl Projection for AuditLog {
    fn name(&self) -> &'static str {
        NAME
    }

    fn apply(&mut self, staged: &mut Staged<'_>, stored: &StoredCommit) -> Result<(), String> {
        let account = stored.commit.account.as_str();
        let (mut n, mut prev) = match staged.get(&head_key(account))? {
            Some(bytes) => {
                let head: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
                (head["n"].as_u64().unwrap_or(0), head["hash"].as_str().unwrap_or(GENESIS).to_owned())
            }
            None => (0, GENESIS.to_owned()),
        };
        for (index, (envelope, event)) in stored.commit.envelopes().enumerate() {
            n += 1;
            let (actor, ip) = actor_parts(envelope.actor);
            let entry = Entry {
                n,
                time: envelope.occurred_at.to_rfc3339(),
                account,
                actor,
                ip,
                action: event.type_name(),
                target: target(stored, event),
                details: event.json_view(),
                seq: stored.stream_seq,
                index,
                event_id: envelope.event_id.to_string(),
                command: envelope.command_id.to_string(),
                prev_hash: &prev,
            };
            // Serialized once: hashed, then closed with its hash (`…,"hash":"…"}`).
            let mut bytes = serde_json::to_vec(&entry).map_err(|e| e.to_string())?;
            let hash = chain_bytes(&prev, &bytes);
            bytes.pop();
            bytes.extend_from_slice(b",\"hash\":\"");
            bytes.extend_from_slice(hash.as_bytes());
            bytes.extend_from_slice(b"\"}");
            staged.insert(entry_key(account, n), bytes);
            prev = hash;
        }
        staged.insert(head_key(account), json_bytes(&json!({"n": n, "hash": prev})));
        Ok(())
    }
}

/// Which entries a query wants (all fields optional; times are RFC 3339, inclusive).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub account: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub conversation: Option<String>,
    pub ip: Option<String>,
}

impl Filter {
    fn wants(&self, e: &Value) -> bool {
        let s = |k: &str| e[k].as_str().unwrap_or("");
        let time = convo_domain::Timestamp::parse_rfc3339(s("time")).ok();
        let bound = |b: &Option<String>| b.as_deref().and_then(|t| convo_domain::Timestamp::parse_rfc3339(t).ok());
        self.account.as_deref().is_none_or(|a| s("account") == a)
            && bound(&self.from).is_none_or(|f| time.is_some_and(|t| t >= f))
            && bound(&self.to).is_none_or(|t2| time.is_some_and(|t| t <= t2))
            && self.actor.as_deref().is_none_or(|a| s("actor") == a || s("actor").ends_with(&format!(":{a}")))
            && self.action.as_deref().is_none_or(|a| s("action") == a)
            && self.conversation.as_deref().is_none_or(|c| s("target") == format!("conversation/{c}"))
            && self.ip.as_deref().is_none_or(|ip| s("ip") == ip)
    }
}

/// The entries a filter wants, by account then order.
pub fn entries(tree: &sled::Tree, filter: &Filter) -> Result<Vec<Value>, sled::Error> {
    let mut out = Vec::new();
    each_entry(tree, filter, |entry| {
        out.push(entry);
        true
    })?;
    Ok(out)
}

/// Hands each entry the filter takes to `each`, in order, until it answers
/// `false` (for exports that stream).
pub fn each_entry(tree: &sled::Tree, filter: &Filter, mut each: impl FnMut(Value) -> bool) -> Result<(), sled::Error> {
    let prefix = match &filter.account {
        Some(a) => format!("e/{a}/"),
        None => "e/".to_owned(),
    };
    for item in tree.scan_prefix(prefix.as_bytes()) {
        let (_, v) = item?;
        if let Ok(entry) = serde_json::from_slice::<Value>(&v)
            && filter.wants(&entry)
            && !each(entry)
        {
            break;
        }
    }
    Ok(())
}

/// The CSV columns of an export.
pub const CSV_COLUMNS: [&str; 13] = [
    "n", "time", "account", "actor", "ip", "action", "target", "seq", "index", "event_id", "command", "hash", "details",
];

fn csv_field(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// One CSV line of an entry (no newline), quoted as RFC 4180 says (by the `csv` crate).
pub fn csv_line(entry: &Value) -> String {
    let mut writer = csv::WriterBuilder::new().terminator(csv::Terminator::Any(b'\n')).from_writer(Vec::new());
    writer.write_record(CSV_COLUMNS.iter().map(|c| csv_field(&entry[*c]))).expect("writing to memory");
    let mut line = writer.into_inner().expect("writing to memory");
    line.pop(); // the terminator
    String::from_utf8(line).expect("fields are UTF-8")
}

/// A line of the timeline as a person reads it.
pub fn timeline_line(entry: &Value) -> String {
    let details = entry["details"].as_object().map(|m| {
        m.iter()
            .filter(|(k, _)| *k != "type")
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    }
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    });
    format!(
        "{}  {:<28} {:<26} {}{}",
        entry["time"].as_str().unwrap_or(""),
        entry["actor"].as_str().unwrap_or(""),
        entry["action"].as_str().unwrap_or(""),
        details.unwrap_or_default(),
        entry["ip"].as_str().map(|ip| format!("  (from {ip})")).unwrap_or_default()
    )
}

/// Where the stored log and the stream part ways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Divergence {
    /// The stream has this entry; the log does not.
    Missing { account: String, n: u64 },
    /// The log's entry differs from what the stream says.
    Altered { account: String, n: u64 },
    /// The log has an entry the stream does not explain.
    Unexpected { account: String, n: u64 },
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Divergence::Missing { account, n } => {
                write!(f, "account {account}: entry {n} is missing from the audit log")
            }
            Divergence::Altered { account, n } => {
                write!(f, "account {account}: entry {n} was altered (its content or chain differs from the stream)")
            }
            Divergence::Unexpected { account, n } => {
                write!(f, "account {account}: entry {n} is not explained by the stream")
            }
        }
    }
}

/// The outcome of a verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub entries: u64,
    pub checkpoint: u64,
    pub first_divergence: Option<Divergence>,
    /// Messages of the stream that are not part of the record (copies,
    /// forgeries, commits on another's subject, unreadable): refolding the
    /// stream puts them aside, so a rebuild cannot make them look intact.
    pub not_in_record: Vec<convo_projector::DeadLetter>,
}

/// Recomputes the log from the stream (up to the live checkpoint) in a
/// temporary tree and compares it, entry by entry, with the live one.
pub async fn verify(
    store: &impl EventStore,
    live: &sled::Tree,
) -> Result<Verification, convo_projector::ProjectorError> {
    let checkpoint = convo_projector::checkpoint_of(live)?;
    let expected = convo_projector::scratch_tree("audit")?;
    convo_projector::fold(
        store,
        &expected,
        &mut AuditLog,
        convo_projector::BATCH_COMMITS_MAX,
        Some(checkpoint),
        &mut |_, _| {},
    )
    .await?;
    let parse = |k: &[u8]| {
        let text = String::from_utf8_lossy(k);
        let mut parts = text.trim_start_matches("e/").rsplitn(2, '/');
        let n = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        (parts.next().unwrap_or("").to_owned(), n)
    };
    let mut a = expected.scan_prefix(b"e/");
    let mut b = live.scan_prefix(b"e/");
    let (mut x, mut y) = (a.next().transpose()?, b.next().transpose()?);
    let mut entries = 0;
    loop {
        let divergence = match (&x, &y) {
            (None, None) => None,
            (Some((k, _)), None) => Some({
                let (account, n) = parse(k);
                Divergence::Missing { account, n }
            }),
            (None, Some((k, _))) => Some({
                let (account, n) = parse(k);
                Divergence::Unexpected { account, n }
            }),
            (Some((k1, v1)), Some((k2, v2))) => match k1.cmp(k2) {
                std::cmp::Ordering::Less => Some({
                    let (account, n) = parse(k1);
                    Divergence::Missing { account, n }
                }),
                std::cmp::Ordering::Greater => Some({
                    let (account, n) = parse(k2);
                    Divergence::Unexpected { account, n }
                }),
                std::cmp::Ordering::Equal if v1 != v2 => Some({
                    let (account, n) = parse(k1);
                    Divergence::Altered { account, n }
                }),
                std::cmp::Ordering::Equal => {
                    entries += 1;
                    x = a.next().transpose()?;
                    y = b.next().transpose()?;
                    continue;
                }
            },
        };
        let not_in_record = convo_projector::dead_letters_of(&expected)?;
        return Ok(Verification { entries, checkpoint, first_divergence: divergence, not_in_record });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A text with a comma, quotes, a carriage return and a line break reads
    /// back as itself through an RFC 4180 reader; the other columns stay plain.
    #[test]
    fn a_csv_line_reads_back_field_for_field() {
        let text = "hola, \"mundo\"\r\nsegunda línea";
        let entry = json!({"n": 7, "time": "2026-03-02T14:00:00Z", "account": "acme", "actor": "user:ana",
            "ip": null, "action": "message_sent", "target": "conversation/c1", "seq": 12, "index": 0,
            "event_id": "e", "command": "m1", "hash": "ab", "details": {"text": text}});
        let line = csv_line(&entry);
        let mut reader = csv::ReaderBuilder::new().has_headers(false).from_reader(line.as_bytes());
        let record = reader.records().next().unwrap().unwrap();
        assert_eq!(record.len(), CSV_COLUMNS.len());
        assert_eq!(&record[0], "7");
        assert_eq!(&record[4], "");
        let details: Value = serde_json::from_str(&record[12]).unwrap();
        assert_eq!(details["text"], text);
        assert!(line.starts_with("7,2026-03-02T14:00:00Z,acme,user:ana,,message_sent,"), "{line}");
    }
}
