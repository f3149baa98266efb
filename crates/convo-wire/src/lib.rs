//! # convo-wire
//!
//! What crosses the wire. One decision of an aggregate is one **commit**: all
//! the events that one command produced, appended together as one message, so
//! a command's effect is all-or-nothing. This crate defines the commit, its
//! subject and headers (what routing and integrators need without decoding),
//! its compact encoding (postcard) with versions and an upcaster hook, the
//! per-event envelope, the JSON view people and integrators read, and the
//! generated description of every event in `schemas/`.
//!
//! postcard is positional: fields and variants are never reordered or
//! removed. A change of shape is a new [`SCHEMA_VERSION`] with an upcaster in
//! [`decode`]; the drift check (`tests/it`) fails when the code's shape no
//! longer matches the committed `schemas/`.

pub mod cloud_json;
pub mod json_schema;
pub mod personal;
pub mod redact;
pub mod schema;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use convo_domain::contact::Identity;
use convo_domain::{
    AccountId, Actor, AgentEvent, CommandId, ConfigEvent, ContactEvent, ConversationEvent, ConversationId, EventId,
    Recorded, Timestamp, UserId,
};

/// The version of the commit encoding written today.
pub const SCHEMA_VERSION: u16 = 1;
/// The largest encoded commit, in bytes (a NATS message is 1 MiB by default).
pub const COMMIT_BYTES_MAX: usize = 512 * 1024;
/// The most events one commit may hold.
pub const EVENTS_PER_COMMIT_MAX: usize = 1024;
/// The subject prefix when none is configured.
pub const DEFAULT_PREFIX: &str = "convo";

/// Header names carried by every commit message.
pub mod headers {
    /// The commit's headline kind (`opened`, `message`, `closed`…).
    pub const KIND: &str = "Convo-Kind";
    /// The event types in the commit, comma-separated, in order.
    pub const EVENTS: &str = "Convo-Events";
    /// The encoding version of the payload.
    pub const SCHEMA: &str = "Convo-Schema";
    pub const COMMAND: &str = "Convo-Command";
    pub const CORRELATION: &str = "Convo-Correlation";
    pub const ACCOUNT: &str = "Convo-Account";
}

pub use convo_domain::EVENT_TYPES;

/// Any event of the domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Config(ConfigEvent),
    Agent(AgentEvent),
    Conversation(ConversationEvent),
    // appended
    Contact(ContactEvent),
}

impl Event {
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::Config(e) => config_type_name(e),
            Event::Agent(e) => e.type_name(),
            Event::Conversation(e) => e.type_name(),
            Event::Contact(e) => e.type_name(),
        }
    }

    /// The event's JSON view (`{"type": …, fields…}`).
    pub fn json_view(&self) -> Value {
        match self {
            Event::Config(e) => convo_domain::json_view(e),
            Event::Agent(e) => convo_domain::json_view(e),
            Event::Conversation(e) => convo_domain::json_view(e),
            Event::Contact(e) => convo_domain::json_view(e),
        }
    }
}

fn config_type_name(event: &ConfigEvent) -> &'static str {
    match event {
        ConfigEvent::AccountConfigured(_) => "account_configured",
        ConfigEvent::ClientDefined(_) => "client_defined",
        ConfigEvent::ClientUpdated(_) => "client_updated",
        ConfigEvent::ProjectDefined(_) => "project_defined",
        ConfigEvent::ProjectUpdated(_) => "project_updated",
        ConfigEvent::ScheduleDefined(_) => "schedule_defined",
        ConfigEvent::ScheduleUpdated(_) => "schedule_updated",
        ConfigEvent::ChannelDefined(_) => "channel_defined",
        ConfigEvent::ChannelUpdated(_) => "channel_updated",
        ConfigEvent::UserDefined(_) => "user_defined",
        ConfigEvent::UserUpdated(_) => "user_updated",
        ConfigEvent::CampaignDefined(_) => "campaign_defined",
        ConfigEvent::CampaignUpdated(_) => "campaign_updated",
        ConfigEvent::Activated(_) => "activated",
        ConfigEvent::Inactivated(_) => "inactivated",
        ConfigEvent::ApiKeyIssued(_) => "api_key_issued",
        ConfigEvent::ApiKeyRevoked(_) => "api_key_revoked",
        ConfigEvent::AccessDenied(_) => "access_denied",
        ConfigEvent::UnredactedRead(_) => "unredacted_read",
        ConfigEvent::WebhookDefined(_) => "webhook_defined",
        ConfigEvent::WebhookUpdated(_) => "webhook_updated",
        ConfigEvent::WebhookRedriven(_) => "webhook_redriven",
        ConfigEvent::SlaModeSet(_) => "sla_mode_set",
        ConfigEvent::RetentionSet(_) => "retention_set",
        ConfigEvent::TeamDefined(_) => "team_defined",
        ConfigEvent::TeamUpdated(_) => "team_updated",
        ConfigEvent::MacroDefined(_) => "macro_defined",
        ConfigEvent::MacroUpdated(_) => "macro_updated",
        ConfigEvent::AutomationDefined(_) => "automation_defined",
        ConfigEvent::AutomationUpdated(_) => "automation_updated",
        ConfigEvent::ContactAttributeDefined(_) => "contact_attribute_defined",
        ConfigEvent::ContactAttributeUpdated(_) => "contact_attribute_updated",
    }
}

/// The aggregate stream a commit belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamRef {
    /// The account's configuration catalog.
    Catalog,
    Agent(UserId),
    Conversation(ConversationId),
    /// The account's contact book (appended).
    Contacts,
}

impl StreamRef {
    /// The stream's path inside its account (`conv/c1`, `agent/ana`, `config`),
    /// from which event ids are derived.
    pub fn path(&self) -> String {
        match self {
            StreamRef::Catalog => "config".into(),
            StreamRef::Agent(id) => format!("agent/{id}"),
            StreamRef::Conversation(id) => format!("conv/{id}"),
            StreamRef::Contacts => "contacts".into(),
        }
    }

    /// The stream as subject tokens (`conv.c1`, `agent.ana`, `config`): the
    /// JSON stream's subjects and the webhook queues name streams so.
    pub fn token(&self) -> String {
        match self {
            StreamRef::Catalog => "config".into(),
            StreamRef::Agent(id) => format!("agent.{id}"),
            StreamRef::Conversation(id) => format!("conv.{id}"),
            StreamRef::Contacts => "contacts".into(),
        }
    }

    /// The wildcard subject of all the stream's commits (for the append
    /// expectation and for loading).
    pub fn filter_subject(&self, prefix: &str, account: &AccountId) -> String {
        match self {
            StreamRef::Catalog => format!("{prefix}.{account}.config.*"),
            StreamRef::Agent(id) => format!("{prefix}.{account}.agent.{id}.*"),
            StreamRef::Conversation(id) => format!("{prefix}.{account}.conv.{id}.*"),
            StreamRef::Contacts => format!("{prefix}.{account}.contacts.*"),
        }
    }
}

/// The account and aggregate a commit subject names
/// (`<prefix>.<account>.conv.<id>.<kind>`, `….agent.<id>.state`,
/// `….config.<entity>`), whatever the payload says; `None` for a subject of
/// another shape. The broker's per-aggregate sequence follows the subject, so
/// even a message that cannot be applied moves its aggregate's expectation.
pub fn parse_subject(subject: &str) -> Option<(AccountId, StreamRef)> {
    let tokens: Vec<&str> = subject.split('.').collect();
    let account = AccountId::new(tokens.get(1)?).ok()?;
    let stream = match (tokens.get(2).copied()?, tokens.len()) {
        ("conv", 5) => StreamRef::Conversation(ConversationId::new(tokens[3]).ok()?),
        ("agent", 5) => StreamRef::Agent(UserId::new(tokens[3]).ok()?),
        ("config", 4) => StreamRef::Catalog,
        ("contacts", 4) => StreamRef::Contacts,
        _ => return None,
    };
    Some((account, stream))
}

/// One event inside a commit, with its place in the stream and who caused it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitEvent {
    pub seq: u64,
    pub actor: Actor,
    pub event: Event,
}

/// Every event one decision produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Commit {
    pub account: AccountId,
    pub stream: StreamRef,
    pub command: CommandId,
    /// The command that started the chain this one belongs to (itself, for a
    /// command from outside).
    pub correlation: CommandId,
    pub at: Timestamp,
    pub events: Vec<CommitEvent>,
}

/// One event with everything an integrator needs to place it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Envelope<'a> {
    pub event_id: EventId,
    pub command_id: &'a CommandId,
    pub correlation_id: &'a CommandId,
    pub account: &'a AccountId,
    pub stream: &'a StreamRef,
    pub seq: u64,
    pub occurred_at: Timestamp,
    pub schema_version: u16,
    pub actor: &'a Actor,
}

/// Why a payload could not be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("schema version {found} is unknown to this build (it reads up to {SCHEMA_VERSION}); upgrade convo")]
    UnknownVersion { found: u16 },
    #[error("the payload is not a valid version {version} commit: {reason}")]
    Malformed { version: u16, reason: String },
    #[error("the commit is {bytes} bytes, over the {max}-byte limit")]
    TooLarge { bytes: usize, max: usize },
    #[error("a commit holds 1 to {EVENTS_PER_COMMIT_MAX} events, this one {0}")]
    EventCount(usize),
    #[error("missing or unreadable header {0}")]
    Header(&'static str),
    /// A readable commit stored on a subject that is not its own (a copy
    /// republished elsewhere, or a forgery): applying it would credit it to the
    /// wrong account or aggregate.
    #[error("stored on {subject}, but the commit belongs on {expected}")]
    Misplaced { subject: String, expected: String },
    /// A message the engine's key does not vouch for: not appended by this
    /// engine, or altered since.
    #[error("not signed by the engine: {0}")]
    Unsigned(String),
}

impl Commit {
    /// The commit of a decision's records (consecutive, one command, one instant).
    pub fn new<E: Into<Event>>(
        account: &AccountId,
        stream: StreamRef,
        correlation: Option<&CommandId>,
        records: Vec<Recorded<E>>,
    ) -> Result<Self, WireError> {
        let first = records.first().ok_or(WireError::EventCount(0))?;
        if records.len() > EVENTS_PER_COMMIT_MAX {
            return Err(WireError::EventCount(records.len()));
        }
        let (command, at) = (first.command.clone(), first.at);
        Ok(Self {
            account: account.clone(),
            stream,
            correlation: correlation.unwrap_or(&command).clone(),
            command,
            at,
            events: records
                .into_iter()
                .map(|r| CommitEvent { seq: r.seq, actor: r.actor, event: r.event.into() })
                .collect(),
        })
    }

    pub fn first_seq(&self) -> u64 {
        self.events.first().map_or(0, |e| e.seq)
    }

    pub fn last_seq(&self) -> u64 {
        self.events.last().map_or(0, |e| e.seq)
    }

    /// Whether this commit follows an aggregate whose last event is `last`:
    /// its events are `last + 1`, `last + 2`… A republished copy, a forgery
    /// at a used sequence or a commit after a gap does not, and the reason
    /// says so. The engine and every read model apply only commits that do.
    pub fn follows(&self, last: u64) -> Result<(), String> {
        for (offset, event) in self.events.iter().enumerate() {
            if event.seq != last + 1 + offset as u64 {
                return Err(format!(
                    "out of sequence: {} is at event {last}, so the next is {}, but this commit holds event {}",
                    self.stream.path(),
                    last + 1,
                    event.seq
                ));
            }
        }
        Ok(())
    }

    /// The headline of the commit, the last token of its subject.
    pub fn kind(&self) -> &'static str {
        self.kind_in(&CONVERSATION_KINDS)
    }

    fn kind_in(&self, order: &[&'static str]) -> &'static str {
        match &self.stream {
            StreamRef::Catalog => match self.events.first().map(|e| &e.event) {
                Some(Event::Config(e)) => config_kind(e),
                _ => "config",
            },
            StreamRef::Agent(_) => "state",
            StreamRef::Contacts => "contact",
            StreamRef::Conversation(_) => {
                let kinds: Vec<&str> = self
                    .events
                    .iter()
                    .filter_map(|e| match &e.event {
                        Event::Conversation(c) => Some(conversation_kind(c)),
                        _ => None,
                    })
                    .collect();
                order.iter().find(|k| kinds.contains(k)).copied().unwrap_or("timer")
            }
        }
    }

    /// The subject the commit is published on.
    pub fn subject(&self, prefix: &str) -> String {
        let account = &self.account;
        match &self.stream {
            StreamRef::Catalog => format!("{prefix}.{account}.config.{}", self.kind()),
            StreamRef::Agent(id) => format!("{prefix}.{account}.agent.{id}.state"),
            StreamRef::Conversation(id) => format!("{prefix}.{account}.conv.{id}.{}", self.kind()),
            StreamRef::Contacts => format!("{prefix}.{account}.contacts.contact"),
        }
    }

    /// Whether `subject` is where this commit belongs: its subject today, or
    /// the one version 1 of the headline order gave it (a commit that opened
    /// and closed a conversation at once, appended before closures came
    /// first, stays on `….opened`).
    pub fn belongs_on(&self, prefix: &str, subject: &str) -> bool {
        if self.subject(prefix) == subject {
            return true;
        }
        match &self.stream {
            StreamRef::Conversation(id) => {
                format!("{prefix}.{}.conv.{id}.{}", self.account, self.kind_in(&CONVERSATION_KINDS_V1)) == subject
            }
            _ => false,
        }
    }

    /// The event types the commit holds, in order, each once.
    pub fn event_types(&self) -> Vec<&'static str> {
        let mut types: Vec<&'static str> = Vec::new();
        for e in &self.events {
            let name = e.event.type_name();
            if !types.contains(&name) {
                types.push(name);
            }
        }
        types
    }

    /// The headers of the commit message (besides the broker's own).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        vec![
            (headers::KIND, self.kind().to_owned()),
            (headers::EVENTS, self.event_types().join(",")),
            (headers::SCHEMA, SCHEMA_VERSION.to_string()),
            (headers::COMMAND, self.command.to_string()),
            (headers::CORRELATION, self.correlation.to_string()),
            (headers::ACCOUNT, self.account.to_string()),
        ]
    }

    /// The compact payload (postcard, version [`SCHEMA_VERSION`]).
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let bytes = postcard::to_allocvec(self)
            .map_err(|e| WireError::Malformed { version: SCHEMA_VERSION, reason: e.to_string() })?;
        if bytes.len() > COMMIT_BYTES_MAX {
            return Err(WireError::TooLarge { bytes: bytes.len(), max: COMMIT_BYTES_MAX });
        }
        Ok(bytes)
    }

    /// Each event with its envelope.
    pub fn envelopes(&self) -> impl Iterator<Item = (Envelope<'_>, &Event)> {
        let path = self.stream.path();
        self.events.iter().map(move |e| {
            let envelope = Envelope {
                event_id: EventId::derive(&self.account, &path, e.seq),
                command_id: &self.command,
                correlation_id: &self.correlation,
                account: &self.account,
                stream: &self.stream,
                seq: e.seq,
                occurred_at: self.at,
                schema_version: SCHEMA_VERSION,
                actor: &e.actor,
            };
            (envelope, &e.event)
        })
    }

    /// The conversation events, as the aggregate replays them.
    pub fn conversation_records(&self) -> Vec<Recorded<ConversationEvent>> {
        self.records(|e| match e {
            Event::Conversation(c) => Some(c.clone()),
            _ => None,
        })
    }

    /// The contacts this commit made for new handles (`contact_requested`),
    /// each with the identity it was made for.
    pub fn requested_contacts(&self) -> impl Iterator<Item = (&convo_domain::ContactId, Identity)> {
        self.events.iter().filter_map(|e| match &e.event {
            Event::Conversation(ConversationEvent::ContactRequested { contact, channel, handle, .. }) => {
                Some((contact, Identity { channel: channel.clone(), handle: handle.clone() }))
            }
            _ => None,
        })
    }

    pub fn agent_records(&self) -> Vec<Recorded<AgentEvent>> {
        self.records(|e| match e {
            Event::Agent(a) => Some(a.clone()),
            _ => None,
        })
    }

    pub fn contact_records(&self) -> Vec<Recorded<ContactEvent>> {
        self.records(|e| match e {
            Event::Contact(c) => Some(c.clone()),
            _ => None,
        })
    }

    pub fn config_records(&self) -> Vec<Recorded<ConfigEvent>> {
        self.records(|e| match e {
            Event::Config(c) => Some(c.clone()),
            _ => None,
        })
    }

    fn records<E>(&self, pick: impl Fn(&Event) -> Option<E>) -> Vec<Recorded<E>> {
        self.events
            .iter()
            .filter_map(|e| {
                pick(&e.event).map(|event| Recorded {
                    seq: e.seq,
                    at: self.at,
                    command: self.command.clone(),
                    actor: e.actor.clone(),
                    event,
                })
            })
            .collect()
    }

    /// The JSON view: one object per event, as `convo simulate` and `convo tail` print it.
    pub fn json_lines(&self) -> Vec<Value> {
        self.events.iter().map(|e| self.json_line(e)).collect()
    }

    /// One event's JSON line (see [`Commit::json_lines`]).
    pub(crate) fn json_line(&self, e: &CommitEvent) -> Value {
        event_json(
            self.at,
            &self.account,
            self.stream_key(&e.event),
            e.seq,
            &self.command,
            &e.actor,
            e.event.json_view(),
        )
    }

    /// The key that names an event's stream in its JSON line, and the name:
    /// (`conversation`, id), (`agent`, id) or (`entity`, what the catalog or
    /// contact book event is about).
    pub(crate) fn stream_key(&self, event: &Event) -> (&'static str, String) {
        match (&self.stream, event) {
            (StreamRef::Conversation(id), _) => ("conversation", id.to_string()),
            (StreamRef::Agent(id), _) => ("agent", id.to_string()),
            (StreamRef::Catalog, Event::Config(c)) => ("entity", c.entity()),
            (StreamRef::Catalog, _) => ("entity", "config".into()),
            (StreamRef::Contacts, Event::Contact(c)) => ("entity", format!("contact/{}", c.contact())),
            (StreamRef::Contacts, _) => ("entity", "contacts".into()),
        }
    }

    /// An event's CloudEvent `subject`: the name its JSON line gives its
    /// stream ([`Commit::stream_key`]), a contact by its id alone.
    pub(crate) fn cloud_subject(&self, event: &Event) -> String {
        match (&self.stream, event) {
            (StreamRef::Contacts, Event::Contact(c)) => c.contact().to_string(),
            _ => self.stream_key(event).1,
        }
    }
}

/// The CloudEvents 1.0 `type` of an event type: `io.convo.<type>.v<version>`.
pub fn cloud_event_type(event_type: &str) -> String {
    format!("io.convo.{event_type}.v{SCHEMA_VERSION}")
}

impl Commit {
    /// Each event as a CloudEvent (1.0, structured JSON): `id` the event id,
    /// `source` `/<prefix>/<account>/<stream path>`, `type`
    /// `io.convo.<event type>.v<version>`, `time`, `subject` (the
    /// conversation, agent or entity), `data` the JSON view, and the
    /// extensions `streamseq` (the commit's stream sequence, to resume
    /// after), `eventindex`, `commandid` and `correlationid`. See
    /// `schemas/json/cloudevent.schema.json`.
    pub fn cloud_events(&self, prefix: &str, stream_seq: u64) -> Vec<Value> {
        let path = self.stream.path();
        let source = format!("/{prefix}/{}/{path}", self.account);
        (0..self.events.len()).map(|index| self.cloud_event(&source, &path, stream_seq, index)).collect()
    }

    /// Event `index` as a CloudEvent (see [`Commit::cloud_events`]);
    /// `source` and `path` are the commit's.
    pub(crate) fn cloud_event(&self, source: &str, path: &str, stream_seq: u64, index: usize) -> Value {
        let e = &self.events[index];
        let mut map = Map::new();
        map.insert("specversion".into(), "1.0".into());
        map.insert("id".into(), EventId::derive(&self.account, path, e.seq).to_string().into());
        map.insert("source".into(), source.into());
        map.insert("type".into(), cloud_event_type(e.event.type_name()).into());
        map.insert("time".into(), self.at.to_rfc3339().into());
        map.insert("subject".into(), self.cloud_subject(&e.event).into());
        map.insert("datacontenttype".into(), "application/json".into());
        map.insert("streamseq".into(), stream_seq.into());
        map.insert("eventindex".into(), index.into());
        map.insert("commandid".into(), self.command.to_string().into());
        map.insert("correlationid".into(), self.correlation.to_string().into());
        map.insert("data".into(), self.json_line(e));
        Value::Object(map)
    }

    /// The subject of each event on the JSON stream:
    /// `<prefix>.<account>.json.conv.<id>.<type>`, `….json.agent.<id>.<type>`,
    /// `….json.config.<type>` (by account, stream and event type).
    pub fn json_subjects(&self, prefix: &str) -> Vec<String> {
        let (account, stream) = (&self.account, self.stream.token());
        self.events.iter().map(|e| format!("{prefix}.{account}.json.{stream}.{}", e.event.type_name())).collect()
    }

    /// The ids of the commit's events, in order.
    pub fn event_ids(&self) -> Vec<EventId> {
        let path = self.stream.path();
        self.events.iter().map(|e| EventId::derive(&self.account, &path, e.seq)).collect()
    }
}

/// One event's JSON line: time, account, stream, sequence, command, actor,
/// then `type` and the fields. Keys keep this order, so equal runs print
/// equal bytes.
pub fn event_json(
    at: Timestamp,
    account: &AccountId,
    stream: (&str, String),
    seq: u64,
    command: &CommandId,
    actor: &Actor,
    view: Value,
) -> Value {
    let mut map = Map::new();
    map.insert("at".into(), Value::String(at.to_rfc3339()));
    map.insert("account".into(), Value::String(account.to_string()));
    map.insert(stream.0.into(), Value::String(stream.1));
    map.insert("seq".into(), Value::from(seq));
    map.insert("command".into(), Value::String(command.to_string()));
    map.insert("actor".into(), serde_json::to_value(actor).expect("actors serialize"));
    if let Value::Object(fields) = view {
        map.extend(fields);
    }
    Value::Object(map)
}

/// Decodes a commit payload of the given schema version. This is the upcaster
/// hook: an older version is decoded with its own shape and converted to the
/// current [`Commit`]; an unknown (newer) version is refused, never guessed.
pub fn decode(version: u16, bytes: &[u8]) -> Result<Commit, WireError> {
    if bytes.len() > COMMIT_BYTES_MAX {
        return Err(WireError::TooLarge { bytes: bytes.len(), max: COMMIT_BYTES_MAX });
    }
    let commit: Commit = match version {
        1 => postcard::from_bytes(bytes).map_err(|e| WireError::Malformed { version, reason: e.to_string() })?,
        // 2 => upcast_v1_to_v2(postcard::from_bytes::<v1::Commit>(bytes)?), when a version 2 exists.
        found => return Err(WireError::UnknownVersion { found }),
    };
    if commit.events.is_empty() || commit.events.len() > EVENTS_PER_COMMIT_MAX {
        return Err(WireError::EventCount(commit.events.len()));
    }
    Ok(commit)
}

/// Reads the schema version from a header value.
pub fn parse_version(header: Option<&str>) -> Result<u16, WireError> {
    header.and_then(|v| v.trim().parse().ok()).ok_or(WireError::Header(headers::SCHEMA))
}

fn config_kind(event: &ConfigEvent) -> &'static str {
    match event {
        ConfigEvent::AccountConfigured(_) => "account",
        ConfigEvent::ClientDefined(_) | ConfigEvent::ClientUpdated(_) => "client",
        ConfigEvent::ProjectDefined(_) | ConfigEvent::ProjectUpdated(_) => "project",
        ConfigEvent::ScheduleDefined(_) | ConfigEvent::ScheduleUpdated(_) => "schedule",
        ConfigEvent::ChannelDefined(_) | ConfigEvent::ChannelUpdated(_) => "channel",
        ConfigEvent::UserDefined(_) | ConfigEvent::UserUpdated(_) => "user",
        ConfigEvent::CampaignDefined(_) | ConfigEvent::CampaignUpdated(_) => "campaign",
        ConfigEvent::Activated(_) | ConfigEvent::Inactivated(_) => "status",
        ConfigEvent::ApiKeyIssued(_) | ConfigEvent::ApiKeyRevoked(_) => "api_key",
        ConfigEvent::AccessDenied(_) => "denied",
        ConfigEvent::UnredactedRead(_) => "read",
        ConfigEvent::WebhookDefined(_) | ConfigEvent::WebhookUpdated(_) | ConfigEvent::WebhookRedriven(_) => "webhook",
        // Under the entity it is about: no subject kind of its own.
        ConfigEvent::SlaModeSet(m) if m.client.is_some() => "client",
        ConfigEvent::SlaModeSet(_) => "campaign",
        ConfigEvent::RetentionSet(r) if r.campaign.is_some() => "campaign",
        ConfigEvent::RetentionSet(_) => "account",
        ConfigEvent::TeamDefined(_) | ConfigEvent::TeamUpdated(_) => "team",
        ConfigEvent::MacroDefined(_) | ConfigEvent::MacroUpdated(_) => "macro",
        ConfigEvent::AutomationDefined(_) | ConfigEvent::AutomationUpdated(_) => "automation",
        ConfigEvent::ContactAttributeDefined(_) | ConfigEvent::ContactAttributeUpdated(_) => "contact_attribute",
    }
}

fn conversation_kind(event: &ConversationEvent) -> &'static str {
    match event {
        ConversationEvent::ConversationOpened(_) | ConversationEvent::ContactRequested { .. } => "opened",
        ConversationEvent::ConversationClosed { .. } | ConversationEvent::ContentRetentionScheduled { .. } => "closed",
        ConversationEvent::ContentExpired { .. } => "expired",
        ConversationEvent::ConversationTransferred { .. } => "transferred",
        ConversationEvent::AgentAssigned { .. } | ConversationEvent::ConversationQueued { .. } => "assigned",
        ConversationEvent::MessageReceived { .. }
        | ConversationEvent::MessageSent { .. }
        | ConversationEvent::ResponseRecorded { .. } => "message",
        ConversationEvent::SurveyAnswered { .. } => "survey",
        // A macro's or an automation's record: the headline is what its actions did.
        ConversationEvent::DynamicFieldSet { .. }
        | ConversationEvent::MacroApplied { .. }
        | ConversationEvent::AutomationTriggered { .. }
        | ConversationEvent::AutomationActionRefused { .. }
        | ConversationEvent::AutomationsStopped { .. }
        | ConversationEvent::ContactAttributeRequested { .. } => "field",
        ConversationEvent::LabelAdded { .. } | ConversationEvent::LabelRemoved { .. } => "label",
        ConversationEvent::SlaThresholdCrossed { .. }
        | ConversationEvent::InactivityWarningSent { .. }
        | ConversationEvent::AgentInactivityAlerted { .. }
        | ConversationEvent::SlaClockSet { .. } => "timer",
    }
}

/// Every commit kind a conversation subject can end with, in headline order:
/// whatever commit closes a conversation is `closed` (one that opens and
/// closes it at once, out of hours, included), so every closure reaches the
/// subscribers of closures; `expired`: a closed conversation's content
/// reached the end of its retention (SPEC §13).
pub const CONVERSATION_KINDS: [&str; 10] =
    ["closed", "opened", "transferred", "assigned", "message", "survey", "field", "label", "timer", "expired"];

/// The headlines of commits outside conversations: an agent's `state`, and
/// the configuration entity a catalog commit is about.
pub const OTHER_KINDS: [&str; 17] = [
    "state",
    "account",
    "client",
    "project",
    "schedule",
    "channel",
    "user",
    "campaign",
    "status",
    "api_key",
    "denied",
    "webhook",
    "team",
    "macro",
    "automation",
    "contact_attribute",
    "contact",
];

/// The headline order of version 1 of the subjects (before 2026-11), when a
/// commit that opened and closed a conversation at once was `opened`. Commits
/// appended then stay on those subjects; readers accept either.
const CONVERSATION_KINDS_V1: [&str; 9] =
    ["opened", "closed", "transferred", "assigned", "message", "survey", "field", "label", "timer"];

impl From<ConversationEvent> for Event {
    fn from(e: ConversationEvent) -> Self {
        Event::Conversation(e)
    }
}

impl From<ConfigEvent> for Event {
    fn from(e: ConfigEvent) -> Self {
        Event::Config(e)
    }
}

impl From<ContactEvent> for Event {
    fn from(e: ContactEvent) -> Self {
        Event::Contact(e)
    }
}

impl From<AgentEvent> for Event {
    fn from(e: AgentEvent) -> Self {
        Event::Agent(e)
    }
}
