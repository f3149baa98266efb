//! Each event of a commit as its CloudEvent's JSON bytes, written straight
//! from the typed commit: what the JSON feed's pages, the NATS JSON stream
//! and webhook bodies carry. The bytes are exactly those of serializing
//! [`Commit::cloud_events`]' values (a test holds every fixture's events to
//! it), without building a `serde_json::Value` tree per event: the event is
//! serialized once, and its fields are copied as they came out.
//!
//! An event whose JSON view is not the usual tagged shape (`{"<type>":
//! {fields}}`, `{"<type>": value}` or `"<type>"`), or whose fields would
//! repeat a key of the line's head, goes through the `Value` view instead:
//! the same bytes, the slow way.

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use convo_domain::EventId;

use crate::{Commit, CommitEvent, Event, cloud_event_type};

/// One event as a CloudEvent: its id (the `id` attribute, also the JSON
/// stream's `Nats-Msg-Id`), its type and the CloudEvent's JSON bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudEventJson {
    pub id: String,
    pub event_type: &'static str,
    pub json: Vec<u8>,
}

impl Commit {
    /// The commit's events as CloudEvent JSON, in order: the same bytes as
    /// `serde_json::to_vec` of each of [`Commit::cloud_events`].
    pub fn cloud_events_json(&self, prefix: &str, stream_seq: u64) -> Vec<CloudEventJson> {
        let path = self.stream.path();
        let source = format!("/{prefix}/{}/{path}", self.account);
        let head = Head {
            source: &source,
            time: self.at.to_rfc3339(),
            account: self.account.to_string(),
            command: self.command.to_string(),
            correlation: self.correlation.to_string(),
            stream_seq,
        };
        self.events
            .iter()
            .enumerate()
            .map(|(index, e)| {
                let id = EventId::derive(&self.account, &path, e.seq).to_string();
                let json = self.typed_json(&head, &id, index, e).unwrap_or_else(|| {
                    serde_json::to_vec(&self.cloud_event(&source, &path, stream_seq, index))
                        .expect("JSON values serialize")
                });
                CloudEventJson { id, event_type: e.event.type_name(), json }
            })
            .collect()
    }

    /// The typed writer; `None` when the event's view is not the usual shape.
    fn typed_json(&self, head: &Head<'_>, id: &str, index: usize, e: &CommitEvent) -> Option<Vec<u8>> {
        let view = match &e.event {
            Event::Config(x) => serde_json::to_string(x),
            Event::Agent(x) => serde_json::to_string(x),
            Event::Conversation(x) => serde_json::to_string(x),
            Event::Contact(x) => serde_json::to_string(x),
        }
        .ok()?;
        let (key, name) = self.stream_key(&e.event);
        let tagged = Tagged::parse(&view, key)?;
        let mut out = Vec::with_capacity(512 + view.len());
        out.extend_from_slice(b"{\"specversion\":\"1.0\",\"id\":");
        string(&mut out, id);
        out.extend_from_slice(b",\"source\":");
        string(&mut out, head.source);
        out.extend_from_slice(b",\"type\":");
        string(&mut out, &cloud_event_type(e.event.type_name()));
        out.extend_from_slice(b",\"time\":");
        string(&mut out, &head.time);
        out.extend_from_slice(b",\"subject\":");
        string(&mut out, &self.cloud_subject(&e.event));
        out.extend_from_slice(b",\"datacontenttype\":\"application/json\",\"streamseq\":");
        out.extend_from_slice(head.stream_seq.to_string().as_bytes());
        out.extend_from_slice(b",\"eventindex\":");
        out.extend_from_slice(index.to_string().as_bytes());
        out.extend_from_slice(b",\"commandid\":");
        string(&mut out, &head.command);
        out.extend_from_slice(b",\"correlationid\":");
        string(&mut out, &head.correlation);
        // `data`: the event's JSON line (see `event_json`).
        out.extend_from_slice(b",\"data\":{\"at\":");
        string(&mut out, &head.time);
        out.extend_from_slice(b",\"account\":");
        string(&mut out, &head.account);
        out.push(b',');
        string(&mut out, key);
        out.push(b':');
        string(&mut out, &name);
        out.extend_from_slice(b",\"seq\":");
        out.extend_from_slice(e.seq.to_string().as_bytes());
        out.extend_from_slice(b",\"command\":");
        string(&mut out, &head.command);
        out.extend_from_slice(b",\"actor\":");
        serde_json::to_writer(&mut out, &e.actor).ok()?;
        out.extend_from_slice(b",\"type\":");
        string(&mut out, tagged.kind);
        for (field, value) in &tagged.fields {
            out.push(b',');
            string(&mut out, field);
            out.push(b':');
            out.extend_from_slice(value.get().as_bytes());
        }
        out.extend_from_slice(b"}}");
        Some(out)
    }
}

/// What every event of a commit shares.
struct Head<'a> {
    source: &'a str,
    time: String,
    account: String,
    command: String,
    correlation: String,
    stream_seq: u64,
}

/// The keys a JSON line starts with (with the stream's key): an event field
/// of the same name would replace its value in place in the `Value` view.
const HEAD_KEYS: [&str; 6] = ["at", "account", "seq", "command", "actor", "type"];

fn string(out: &mut Vec<u8>, text: &str) {
    serde_json::to_writer(out, text).expect("a string serializes");
}

/// An event's serialized JSON split as `convo_domain::json_view` splits it:
/// the variant's name, then the fields (a struct's, or `value` for anything
/// else).
struct Tagged<'a> {
    kind: &'a str,
    fields: Vec<(&'a str, &'a RawValue)>,
}

impl<'a> Tagged<'a> {
    /// `None` also when a field would repeat a key of the line's head
    /// ([`HEAD_KEYS`], or the stream's key `stream_key`).
    fn parse(view: &'a str, stream_key: &str) -> Option<Self> {
        if view.starts_with('"') {
            let kind: &str = serde_json::from_str(view).ok()?;
            return Some(Self { kind, fields: Vec::new() });
        }
        let outer = object_entries(view)?;
        let [(kind, inner)] = outer.as_slice() else { return None };
        let fields = if inner.get().starts_with('{') { object_entries(inner.get())? } else { vec![("value", *inner)] };
        let repeats = |i: usize| fields[..i].iter().any(|(k, _)| *k == fields[i].0);
        if fields.iter().enumerate().any(|(i, (k, _))| HEAD_KEYS.contains(k) || *k == stream_key || repeats(i)) {
            return None;
        }
        Some(Self { kind, fields })
    }
}

/// A JSON object's entries in their order, the values unparsed (`None`:
/// not an object, or a key with escapes).
pub fn object_entries(text: &str) -> Option<Vec<(&str, &RawValue)>> {
    serde_json::from_str::<Entries<'_>>(text).ok().map(|Entries(entries)| entries)
}

struct Entries<'a>(Vec<(&'a str, &'a RawValue)>);

impl<'de> Deserialize<'de> for Entries<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Walk;
        impl<'de> Visitor<'de> for Walk {
            type Value = Entries<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<&'de str, &'de RawValue>()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        deserializer.deserialize_map(Walk)
    }
}
