//! The JSON answers of the reads, as types. Their JSON Schemas (generated
//! by `schemars`, as the command schemas are) are the response schemas of
//! `openapi.json` (`components/schemas`); the read-contract test validates
//! every read's live answer against them with the Python ecosystem's
//! validator, so a handler that answers otherwise fails the build.
//!
//! The answers are open: a field may be added (integrators ignore what they
//! do not know); one documented here is never dropped or retyped.

#![allow(dead_code)] // the types exist for their schemas: no handler builds them field by field

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde_json::{Map, Value};

/// An RFC 3339 instant, UTC (`2026-03-02T14:05:00Z`).
type Instant = String;

/// `GET /v1/health`, `GET /health/live`: the process is up.
#[derive(Debug, JsonSchema)]
pub struct Health {
    /// `ok`.
    status: String,
}

/// Why the engine is not ready, or that it is.
#[derive(Debug, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum ReadyStatus {
    Ready,
    /// Recovering its partitions from the stream.
    Recovering,
    /// Its heartbeat is not in the cluster's directory yet.
    Joining,
    /// Some partition has nobody answering for it (`unowned_partitions`).
    PartitionsUnowned,
    /// A read model is behind the stream's end as it was at the start.
    CatchingUp,
}

/// `GET /health/ready`: 200 when ready, 503 saying why not.
#[derive(Debug, JsonSchema)]
pub struct Ready {
    status: ReadyStatus,
    /// Why not ready, for a person.
    message: Option<String>,
    /// Each read model's position (the stream sequence it holds).
    read_models: BTreeMap<String, u64>,
    /// The partitions nobody serves now (with `partitions_unowned`).
    unowned_partitions: Option<Vec<u32>>,
}

/// `GET /v1/openapi.json`: this document.
#[derive(Debug, JsonSchema)]
pub struct OpenApiDocument {
    /// `3.1.0`.
    openapi: String,
    info: Map<String, Value>,
    paths: Map<String, Value>,
    components: Map<String, Value>,
}

/// One audit entry: an event as the audit log keeps it, chained by hashes.
#[derive(Debug, JsonSchema)]
pub struct AuditEntry {
    /// Its place in the account's audit chain, from 1.
    n: u64,
    time: Instant,
    account: String,
    /// Who acted: `user:ana`, `integration:crm`, `system:…`, `operator`.
    actor: String,
    /// The address the action came from, when it came through a door.
    ip: Option<String>,
    /// The event type.
    action: String,
    /// What it is about: `conversation/c1`, `agent/ana`, `account`, `contact/k1`…
    target: String,
    /// The event's JSON view (schemas/json/event.schema.json), personal values opened or `[erased]`.
    details: Map<String, Value>,
    /// The event's sequence in its aggregate.
    seq: u64,
    /// Its index in its commit.
    index: u64,
    event_id: String,
    /// The command that made it.
    command: String,
    prev_hash: String,
    hash: String,
}

/// `GET …/audit`: the entries the filters take, oldest first.
#[derive(Debug, JsonSchema)]
pub struct AuditPage {
    account: String,
    entries: Vec<AuditEntry>,
    /// More entries match than `limit` (read on with `from`).
    truncated: bool,
}

/// `GET …/conversations/{conversation}/timeline`: one conversation's entries in order.
#[derive(Debug, JsonSchema)]
pub struct Timeline {
    account: String,
    conversation: String,
    entries: Vec<AuditEntry>,
    truncated: bool,
}

/// What the anchors say (the engine's signed heads of each aggregate).
#[derive(Debug, JsonSchema)]
pub struct AnchorsVerdict {
    /// Whether there was an anchors file to check.
    checked: bool,
    aggregates: u64,
    /// Commits up to this sequence were written before signing.
    unsigned_through: u64,
    findings: Vec<Value>,
    /// Findings past those listed.
    more: u64,
}

/// `GET /v1/audit/verify`: the whole audit log against a refold of the stream.
#[derive(Debug, JsonSchema)]
pub struct Verify {
    intact: bool,
    entries: u64,
    checkpoint: u64,
    stream_end: u64,
    behind: u64,
    /// The first entry that differs from the refold, if any.
    first_divergence: Option<Value>,
    /// Entries the stream does not hold (the first ones).
    not_in_record: Vec<Value>,
    not_in_record_count: u64,
    anchors: AnchorsVerdict,
}

/// One closed conversation in a contact's history.
#[derive(Debug, JsonSchema)]
pub struct HistoryEntry {
    conversation: String,
    /// The contact's number, masked unless the campaign shows it.
    contact: String,
    /// Personal: `[erased]` once erased or expired.
    contact_name: Option<String>,
    campaign: String,
    channel: Option<String>,
    agents: Option<Vec<String>>,
    typification: Option<String>,
    reason: Option<String>,
    /// The conversation's fields (personal values).
    fields: Option<Map<String, Value>>,
    messages: Option<u64>,
    opened_at: Option<Instant>,
    closed_at: Instant,
    content_expired_at: Option<Instant>,
}

/// `GET …/contacts/{contact}/history`: the last closed conversations, newest first.
#[derive(Debug, JsonSchema)]
pub struct ContactHistory {
    account: String,
    contact: String,
    history: Vec<HistoryEntry>,
    /// When and why the contact was erased, once erased.
    erased: Option<Map<String, Value>>,
}

/// One of a contact's conversations, with its events.
#[derive(Debug, JsonSchema)]
pub struct ExportedConversation {
    conversation: String,
    /// Its events' JSON views, with their texts.
    events: Vec<Map<String, Value>>,
}

/// `GET …/contacts/{contact}/export`: everything held about a contact.
#[derive(Debug, JsonSchema)]
pub struct ContactExport {
    account: String,
    contact: String,
    /// The contact book's view of them (with attributes); null once erased or never defined.
    identity: Option<Map<String, Value>>,
    /// The erasure's event, once erased.
    erased: Option<Map<String, Value>>,
    contact_book: Vec<Map<String, Value>>,
    conversations: Vec<ExportedConversation>,
}

/// One campaign's load on the live dashboard.
#[derive(Debug, JsonSchema)]
pub struct CampaignNow {
    campaign: String,
    name: Option<String>,
    open: u64,
    queued: u64,
    assigned: u64,
    longest_queued_secs: u64,
    at_risk: u64,
    breached: u64,
}

/// One agent now.
#[derive(Debug, JsonSchema)]
pub struct AgentNow {
    agent: String,
    state: String,
    since: Option<Instant>,
    load: u64,
    secs_in_state: Option<u64>,
}

/// The SLA class a wait is in now.
#[derive(Debug, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum SlaNow {
    Optimal,
    Low,
    Breached,
}

/// An open conversation as the floor sees it now.
#[derive(Debug, JsonSchema)]
pub struct ConversationNow {
    conversation: String,
    campaign: String,
    client: String,
    channel: String,
    /// The contact's number, masked unless the campaign shows it.
    contact: String,
    contact_name: Option<String>,
    /// `open`, `queued` or `assigned`.
    status: String,
    agent: Option<String>,
    team: Option<String>,
    opened_at: Instant,
    queued_since: Option<Instant>,
    queued_secs: Option<u64>,
    assigned_at: Option<Instant>,
    /// When the contact's unanswered wait started, if one runs.
    wait_started_at: Option<Instant>,
    wait_secs: Option<u64>,
    sla: Option<SlaNow>,
    /// `optimal` or `low`: the threshold the wait crosses next.
    next_threshold: Option<String>,
    secs_to_threshold: Option<u64>,
    at_risk: bool,
    /// The contact's last message (redacted as the account's rules say).
    last_message: Option<Value>,
    messages: u64,
}

/// `GET …/live`: the floor now.
#[derive(Debug, JsonSchema)]
pub struct LiveDashboard {
    account: String,
    at: Instant,
    risk_margin_secs: u64,
    campaigns: Vec<CampaignNow>,
    agents: Vec<AgentNow>,
    agents_by_state: BTreeMap<String, u64>,
    /// The conversations at SLA risk, nearest threshold first.
    at_risk: Vec<ConversationNow>,
    /// Open conversations, longest wait first.
    conversations: Vec<ConversationNow>,
    /// More open conversations than shown.
    truncated: bool,
}

/// `GET …/inbox`: one agent's inbox.
#[derive(Debug, JsonSchema)]
pub struct Inbox {
    account: String,
    agent: String,
    at: Instant,
    state: Option<String>,
    since: Option<Instant>,
    load: u64,
    /// The campaigns whose queue the agent serves.
    campaigns: Vec<String>,
    /// Their names, by id.
    campaign_names: BTreeMap<String, Option<String>>,
    assigned: Vec<ConversationNow>,
    queued: Vec<ConversationNow>,
    truncated: bool,
}

/// One report row: a dimension value (under the dimension's own name:
/// `campaign`, `agent`…) in one bucket, with its figures. Percentages and
/// means are null without data.
#[derive(Debug, JsonSchema)]
pub struct ReportRow {
    /// The hour (`2026-03-02T14`) or day (`2026-03-02`), in the report's zone.
    bucket: String,
    opened: u64,
    closed: u64,
    out_of_hours: u64,
    transfers: u64,
    sla_optimal: u64,
    sla_low: u64,
    sla_breached: u64,
    sla_optimal_pct: Option<f64>,
    sla_low_pct: Option<f64>,
    sla_breached_pct: Option<f64>,
    sla_business_hours: u64,
    inactivity_closures: u64,
    frt_count: u64,
    frt_mean_secs: Option<u64>,
    frt_p50_secs: Option<u64>,
    frt_p90_secs: Option<u64>,
    rt_count: u64,
    rt_mean_secs: Option<u64>,
    rt_p50_secs: Option<u64>,
    rt_p90_secs: Option<u64>,
    handle_mean_secs: Option<u64>,
    csat_answers: u64,
    csat_mean: Option<f64>,
    closures_by_typification: BTreeMap<String, u64>,
    closures_by_reason: BTreeMap<String, u64>,
    /// The dimension's value, under its name.
    #[serde(flatten)]
    dimension: BTreeMap<String, String>,
}

/// `GET …/reports/{kind}`: rows by a dimension and period.
#[derive(Debug, JsonSchema)]
pub struct Report {
    account: String,
    /// The kind asked for.
    report: String,
    /// The dimension (each row names its value under this key).
    by: String,
    /// `hour` or `day`.
    period: String,
    /// The IANA zone the buckets are in.
    time_zone: String,
    rows: Vec<ReportRow>,
}

/// One event as a CloudEvent 1.0 (schemas/json/cloudevent.schema.json).
#[derive(Debug, JsonSchema)]
pub struct CloudEvent {
    specversion: String,
    id: String,
    source: String,
    #[serde(rename = "type")]
    kind: String,
    time: Instant,
    subject: String,
    datacontenttype: String,
    streamseq: u64,
    eventindex: u64,
    commandid: String,
    correlationid: String,
    /// The event's JSON view (schemas/json/event.schema.json).
    data: Map<String, Value>,
}

/// `GET …/events`: the account's events after a cursor.
#[derive(Debug, JsonSchema)]
pub struct Events {
    account: String,
    events: Vec<CloudEvent>,
    /// The cursor for the next read (`after`).
    next: u64,
}

/// One webhook delivery attempt.
#[derive(Debug, JsonSchema)]
pub struct DeliveryAttempt {
    webhook: String,
    event_id: String,
    event_type: String,
    /// Its number among the delivery's attempts, from 1.
    attempt: u64,
    at: Instant,
    /// `delivered`, `failed`, `refused`…
    outcome: String,
    /// The receiver's HTTP status, if it answered.
    status: Option<u16>,
    error: Option<String>,
    latency_ms: u64,
}

/// A delivery queued or dead-lettered (its body left out).
#[derive(Debug, JsonSchema)]
pub struct Delivery {
    webhook: String,
    event_id: String,
    event_type: String,
    stream_seq: u64,
    queued_at: Instant,
    /// Attempts made so far.
    attempts: u64,
    /// When the next attempt is due (milliseconds since the epoch).
    next_at_ms: Option<i64>,
    last_error: Option<String>,
    dead_at: Option<Instant>,
}

/// `GET …/webhooks/deliveries`: what is queued, dead-lettered and attempted.
#[derive(Debug, JsonSchema)]
pub struct Deliveries {
    account: String,
    /// The stream sequence the webhook queue holds.
    checkpoint: u64,
    /// Deliveries queued or retrying.
    pending: Vec<Delivery>,
    /// Deliveries dead-lettered (re-drive with `redrive_webhook`).
    dead: Vec<Delivery>,
    /// The newest attempts first.
    attempts: Vec<DeliveryAttempt>,
}

/// The response schemas, by component name, and the `$ref` of each top-level answer.
pub fn components() -> (Map<String, Value>, BTreeMap<&'static str, Value>) {
    let mut settings = schemars::generate::SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    let mut generator = settings.into_generator();
    let mut refs = BTreeMap::new();
    macro_rules! top {
        ($($name:literal => $t:ty),* $(,)?) => {
            $(refs.insert($name, generator.subschema_for::<$t>().to_value());)*
        };
    }
    top!(
        "health" => Health,
        "ready" => Ready,
        "openapi" => OpenApiDocument,
        "audit" => AuditPage,
        "timeline" => Timeline,
        "verify" => Verify,
        "history" => ContactHistory,
        "export" => ContactExport,
        "live" => LiveDashboard,
        "inbox" => Inbox,
        "report" => Report,
        "events" => Events,
        "deliveries" => Deliveries,
    );
    (generator.take_definitions(true), refs)
}
