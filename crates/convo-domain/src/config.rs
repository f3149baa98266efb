//! The configuration model (SPEC §3) and its aggregate, the [`Catalog`].
//!
//! Configuration is event-sourced like everything else: one catalog stream per
//! account records every define / update / activate / inactivate, so the audit
//! log can say who changed an SLA and when. Specs are validated into the
//! catalog; a refusal names the offending field (`sla_low_secs`,
//! `dynamic_fields[2].name`…).

use std::collections::BTreeMap;
use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::aggregate::{Actor, Decision, Emitter, RecentCommands, Recorded};
use crate::automation::{self, Armed, AutomationSpec, MacroSpec, On};
use crate::command::{Command, CommandEnvelope};
use crate::contact::{self, ContactAttributeSpec};
use crate::ids::{
    AccountId, AutomationId, CampaignId, ChannelId, ClientId, IntegrationId, KeyId, MacroId, ProjectId, ScheduleId,
    TeamId, TypificationId, UserId, WebhookId, check_id,
};
use crate::rejection::Rejection;
use crate::schedule::{ScheduleSpec, Zone};
use crate::template;
use crate::time::Timestamp;

/// The longest name, code, e-mail or short text, in bytes.
pub const NAME_BYTES_MAX: usize = 200;
/// At most this many inactivity warnings before the closure.
pub const INACTIVITY_ATTEMPTS_MAX: u32 = 100;
/// The longest SLA or inactivity period, in seconds (30 days).
pub const PERIOD_SECS_MAX: u32 = 30 * 24 * 3600;
/// The most past conversations kept in a contact's history.
pub const HISTORY_CONVERSATIONS_MAX: u32 = 1000;
/// The most conversations one user may attend at once.
pub const CONCURRENT_CONVERSATIONS_MAX: u32 = 1000;
/// The longest `auto_resolve_after_days`.
pub const AUTO_RESOLVE_DAYS_MAX: u32 = 365;
/// The longest content retention, in days (ten years).
pub const RETENTION_DAYS_MAX: u32 = 3650;
/// Limits on list lengths in a spec.
pub const CHANNELS_PER_CAMPAIGN_MAX: usize = 64;
pub const AGENTS_PER_CAMPAIGN_MAX: usize = 5000;
pub const TYPIFICATIONS_MAX: usize = 500;
pub const DYNAMIC_FIELDS_MAX: usize = 64;
pub const LABELS_MAX: usize = 500;
pub const CANNED_RESPONSES_MAX: usize = 1000;
pub const AGENT_STATES_MAX: usize = 32;
pub const REGEX_RULES_MAX: usize = 100;
pub const ALLOWED_NETWORKS_MAX: usize = 100;
/// The most API keys an account may have issued (revoked ones count: a key id is never reused).
pub const API_KEYS_MAX: usize = 10_000;
/// The most entries in one of an integration's scope lists.
pub const SCOPES_MAX: usize = 64;
/// The system actor under which the front door records denied attempts.
pub const DENIED_ACTOR: &str = "access";
/// The read models and feeds an integration's `reads` scope may name, and
/// [`UNREDACTED`].
pub const READ_SCOPES: [&str; 8] =
    ["audit", "reports", "contact_history", "events", "webhooks", "live", "inbox", UNREDACTED];
/// The read of one conversation's timeline (its audit entries; not a scope
/// of its own): whoever reads the audit log reads any (an integration with
/// the `audit` scope); a supervisor, scoped to their campaigns, and an
/// agent, to their own inbox, read those the live read model shows them
/// (the gateway checks which).
pub const TIMELINE_READ: &str = "timeline";
/// The read scope that lets a key read text the account's redaction rules
/// mask for everyone else (every such read is recorded); the only scope a
/// user's key may carry.
pub const UNREDACTED: &str = "unredacted";

/// The agent state in which routing offers work.
pub const STATE_AVAILABLE: &str = "available";
/// The agent state of someone not at work.
pub const STATE_OFFLINE: &str = "offline";

// ---------------------------------------------------------------- specs

/// A company served by the account; owns the SLA and inactivity policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientSpec {
    pub id: ClientId,
    pub name: String,
    /// Unique per account.
    pub code: String,
    pub sla_optimal_secs: u32,
    /// Must be ≥ `sla_optimal_secs`.
    pub sla_low_secs: u32,
    #[serde(default = "default_history")]
    pub max_history_conversations: u32,
    /// The silence after which contact inactivity warns (and agents are alerted).
    pub max_inactivity_secs: u32,
    /// Warnings before the inactivity closure (0: close at the first period).
    #[serde(default)]
    pub inactivity_attempts: u32,
}

fn default_history() -> u32 {
    10
}

/// Groups campaigns of a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectSpec {
    pub id: ProjectId,
    pub client: ClientId,
    pub name: String,
}

/// What happens to a conversation opened while the schedule is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutOfHoursAction {
    Close,
    Enqueue,
}

/// An automated message: a switch and a template.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AutoMessage {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub text: String,
}

impl AutoMessage {
    /// The template when the switch is on.
    pub fn active(&self) -> Option<&str> {
        self.enabled.then_some(self.text.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutOfHours {
    #[serde(default = "enqueue")]
    pub action: OutOfHoursAction,
    #[serde(default)]
    pub message: AutoMessage,
}

/// A campaign's permissions (all off unless configured).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Permissions {
    /// Agents may send attachments.
    #[serde(default)]
    pub allow_external_resources: bool,
    /// Agents may close without having replied.
    #[serde(default)]
    pub allow_close_without_reply: bool,
    /// Agents may transfer to another agent.
    #[serde(default)]
    pub allow_agent_transfer: bool,
    /// Agents may use emoji.
    #[serde(default)]
    pub allow_emoji: bool,
    /// Agent-facing read models show the contact's number unmasked.
    #[serde(default)]
    pub show_contact_number: bool,
    /// Agents see past conversations of the contact inside the conversation.
    #[serde(default)]
    pub history_in_conversation: bool,
    #[serde(default)]
    pub history_hours: u32,
}

/// A typed custom field at conversation level.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DynamicField {
    /// The field's key (id rules).
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub mandatory: bool,
    /// The value an integration (CRM, API) maps this field to.
    #[serde(default)]
    pub integration_value: Option<String>,
}

/// At most this many teams in an account.
pub const TEAMS_MAX: usize = 500;
/// At most this many members (or supervisors) in a team.
pub const TEAM_MEMBERS_MAX: usize = 5000;

/// A named group of agents (`members`) with its `supervisors`. A conversation
/// routed or transferred to a team is offered only to its members who are
/// agents of the conversation's campaign; the team's supervisors may act on
/// the team's conversations like the campaign's supervisors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TeamSpec {
    pub id: TeamId,
    pub name: String,
    #[serde(default)]
    pub members: Vec<UserId>,
    #[serde(default)]
    pub supervisors: Vec<UserId>,
}

/// How SLA waits are counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SlaMode {
    /// Every second counts (the default).
    #[default]
    Elapsed,
    /// Only the seconds the campaign's schedule is open count (holidays and
    /// the gaps between ranges, a lunch break, pause the clock).
    BusinessHours,
}

/// Sets how a client's SLA is counted, or overrides it for one campaign.
/// Exactly one of `client` and `campaign`; a campaign's `mode` left out (or
/// null) goes back to its client's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlaModeSpec {
    #[serde(default)]
    pub client: Option<ClientId>,
    #[serde(default)]
    pub campaign: Option<CampaignId>,
    #[serde(default)]
    pub mode: Option<SlaMode>,
}

/// How long a closed conversation's content (message texts, the contact name
/// it carried, field values: SPEC §13) is kept: for the account, or for one
/// `campaign` overriding it. `content_days` from 1 to [`RETENTION_DAYS_MAX`];
/// left out (or null) the account keeps content (the default) and a campaign
/// goes back to the account's. A conversation closing under a period records
/// when its content expires (`content_retention_scheduled`); at that instant
/// the engine's timer records `content_expired` and the content's key is
/// destroyed. Ids, times, SLA facts and typifications stay. Admins, the
/// operator and the system only: never an integration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetentionSpec {
    #[serde(default)]
    pub campaign: Option<CampaignId>,
    #[serde(default)]
    pub content_days: Option<u32>,
}

/// Where agents attend conversations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CampaignSpec {
    pub id: CampaignId,
    pub client: ClientId,
    pub project: ProjectId,
    pub name: String,
    /// Inbound channels; a channel belongs to at most one campaign.
    #[serde(default)]
    pub channels: Vec<ChannelId>,
    /// The opening hours; none named: the built-in 24/7 schedule `always`.
    #[serde(default = "always_open")]
    pub schedule: ScheduleId,
    /// What happens outside the hours; none named: queue the conversation.
    #[serde(default)]
    pub out_of_hours: OutOfHours,
    pub inactivity_typification: TypificationId,
    pub transfer_typification: TypificationId,
    /// The only typifications an agent may close with.
    pub closing_typifications: Vec<TypificationId>,
    #[serde(default)]
    pub ignore_comment_typification: Option<TypificationId>,
    #[serde(default)]
    pub permissions: Permissions,
    #[serde(default)]
    pub dynamic_fields: Vec<DynamicField>,
    /// Agents and supervisors assigned to the campaign.
    #[serde(default)]
    pub agents: Vec<UserId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    Whatsapp,
    Messenger,
    Instagram,
    Telegram,
    Webchat,
    Sms,
    Email,
    Api,
    Line,
    Mercadolibre,
}

/// A channel's automated messages (SPEC §6); the out-of-hours one is the campaign's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelMessages {
    #[serde(default)]
    pub welcome: AutoMessage,
    #[serde(default)]
    pub inactivity_alert: AutoMessage,
    #[serde(default)]
    pub transfer_notice: AutoMessage,
    #[serde(default)]
    pub closing: AutoMessage,
    /// Sent after an agent or supervisor closes; asks for a 1–5 rating and
    /// whether the problem was solved.
    #[serde(default)]
    pub survey: AutoMessage,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelSpec {
    pub id: ChannelId,
    pub kind: ChannelKind,
    /// The endpoint at the provider (a phone number, a page id…).
    pub external_id: String,
    #[serde(default)]
    pub messages: ChannelMessages,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Agent,
    Supervisor,
    Admin,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    pub id: UserId,
    pub name: String,
    pub email: String,
    pub role: Role,
    #[serde(default = "default_concurrent")]
    pub max_concurrent_conversations: u32,
}

fn default_concurrent() -> u32 {
    5
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Typification {
    pub id: TypificationId,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CannedResponse {
    /// Invoked as `/shortcode` in an agent message.
    pub shortcode: String,
    pub text: String,
}

/// The most memory one compiled regex rule may take (matching is linear-time).
pub const REGEX_BYTES_MAX: usize = 1 << 20;

/// A named pattern for field validation and redaction of sensitive data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegexRule {
    pub name: String,
    pub pattern: String,
    #[serde(default)]
    pub redact: bool,
}

/// Account-wide settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountSettings {
    pub name: String,
    #[serde(default = "default_language")]
    pub language: String,
    #[serde(default)]
    pub notification_email: String,
    #[serde(default)]
    pub time_zone: Zone,
    /// Close a conversation with no human message for this many days (0: never).
    #[serde(default)]
    pub auto_resolve_after_days: u32,
    /// Presence states; must include `available` and `offline`.
    #[serde(default = "default_states")]
    pub agent_states: Vec<String>,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub canned_responses: Vec<CannedResponse>,
    #[serde(default)]
    pub typifications: Vec<Typification>,
    #[serde(default)]
    pub regex_rules: Vec<RegexRule>,
    /// CIDR blocks users may act from; empty means anywhere.
    #[serde(default)]
    pub allowed_networks: Vec<String>,
}

fn default_language() -> String {
    "es".into()
}

fn default_states() -> Vec<String> {
    ["available", "break", "lunch", "training", "offline"].map(String::from).to_vec()
}

impl Default for AccountSettings {
    fn default() -> Self {
        Self {
            name: String::new(),
            language: default_language(),
            notification_email: String::new(),
            time_zone: Zone::default(),
            auto_resolve_after_days: 0,
            agent_states: default_states(),
            labels: Vec::new(),
            canned_responses: Vec::new(),
            typifications: Vec::new(),
            regex_rules: Vec::new(),
            allowed_networks: Vec::new(),
        }
    }
}

/// An entity that can be activated or inactivated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntityRef {
    Client(ClientId),
    Project(ProjectId),
    Campaign(CampaignId),
    Channel(ChannelId),
    User(UserId),
    // appended
    Team(TeamId),
    Macro(MacroId),
    Automation(AutomationId),
}

impl std::fmt::Display for EntityRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EntityRef::Client(id) => write!(f, "client {id}"),
            EntityRef::Project(id) => write!(f, "project {id}"),
            EntityRef::Campaign(id) => write!(f, "campaign {id}"),
            EntityRef::Channel(id) => write!(f, "channel {id}"),
            EntityRef::User(id) => write!(f, "user {id}"),
            EntityRef::Team(id) => write!(f, "team {id}"),
            EntityRef::Macro(id) => write!(f, "macro {id}"),
            EntityRef::Automation(id) => write!(f, "automation {id}"),
        }
    }
}

/// Who an API key speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyHolder {
    /// A user of the account: the key acts with the user's role.
    User(UserId),
    /// An integration: the key acts within its scopes.
    Integration(IntegrationId),
}

/// What an integration may do: the command types it may send, and the read
/// models and feeds (`audit`, `reports`, `contact_history`, `events`) it may read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scopes {
    #[serde(default)]
    pub commands: Vec<String>,
    #[serde(default)]
    pub reads: Vec<String>,
}

/// An API key of the account. The secret itself is never part of it: the
/// engine generates the secret, answers it once, and records only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySpec {
    pub key: KeyId,
    pub holder: KeyHolder,
    /// For an integration's key; a user's key acts with the user's role.
    #[serde(default)]
    pub scopes: Scopes,
    /// Filled by the engine when it generates the secret (64 hex digits); a
    /// client never sends it.
    #[serde(default)]
    pub secret_sha256: String,
    /// The public nkey (`U…`, 56 characters) of the key's NATS login, derived
    /// by the engine from the secret; empty for a key without one. Public: it
    /// lets NATS check a signature, never sign.
    #[serde(default)]
    pub nats_nkey: String,
}

/// The most webhook endpoints an account defines.
pub const WEBHOOKS_MAX: usize = 20;
/// The longest webhook URL, in bytes.
pub const WEBHOOK_URL_BYTES_MAX: usize = 2048;

/// A webhook endpoint (SPEC §10): where the account's events are POSTed,
/// which types, signed with which secret, on or off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    pub id: WebhookId,
    /// `https://…` (or `http://…`); private, loopback and link-local
    /// addresses are refused at delivery unless the operator allows them.
    pub url: String,
    /// The event types delivered (`conversation_closed`…); empty: every type.
    #[serde(default)]
    pub events: Vec<String>,
    /// The signing secret (Standard Webhooks): `whsec_` and the base64 of 24
    /// to 64 random bytes. Every JSON view shows it masked.
    pub secret: WebhookSecret,
    /// Off: nothing is delivered (and nothing queued) until it is on again.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

fn always_open() -> ScheduleId {
    ScheduleId::new(crate::schedule::ALWAYS).expect("a valid id")
}

fn enqueue() -> OutOfHoursAction {
    OutOfHoursAction::Enqueue
}

impl Default for OutOfHours {
    fn default() -> Self {
        Self { action: OutOfHoursAction::Enqueue, message: AutoMessage::default() }
    }
}

/// A webhook's signing secret: masked (`whsec_********`) in every JSON view
/// and log. A client sends it as `whsec_…`; the engine's front door seals it
/// ([`SEALED_PREFIX`], with a key derived from the engine's) before the
/// command is decided, so the stream keeps it sealed (commits from before
/// sealing keep it whole).
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(String);

/// The prefix of a secret sealed by the engine (`sealed:v1:…`).
pub const SEALED_PREFIX: &str = "sealed:v1:";

impl WebhookSecret {
    /// The masked form every JSON view shows.
    pub const MASKED: &str = "whsec_********";

    /// A secret the engine sealed, as the stream keeps it.
    pub fn sealed(text: &str) -> Result<Self, String> {
        if text.starts_with(SEALED_PREFIX) && text.len() > SEALED_PREFIX.len() && text.len() <= 512 {
            Ok(Self(text.to_owned()))
        } else {
            Err(format!("a sealed webhook secret is `{SEALED_PREFIX}` and at most 512 bytes"))
        }
    }

    /// Whether the engine sealed it (otherwise it is `whsec_…` in clear).
    pub fn is_sealed(&self) -> bool {
        self.0.starts_with(SEALED_PREFIX)
    }

    /// As the stream may hold it: sealed, or (from before sealing) in clear.
    fn parse_stored(text: &str) -> Result<Self, String> {
        if text.starts_with(SEALED_PREFIX) { Self::sealed(text) } else { Self::parse(text) }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        use base64::Engine as _;
        let bad = || "a webhook secret is `whsec_` and the base64 of 24 to 64 random bytes".to_owned();
        let body = text.strip_prefix("whsec_").ok_or_else(bad)?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(body).map_err(|_| bad())?;
        if !(24..=64).contains(&bytes.len()) {
            return Err(bad());
        }
        Ok(Self(text.to_owned()))
    }

    /// The secret itself, for whoever signs with it (never for a view).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The key the signatures are made with (the base64 after `whsec_`, decoded).
    pub fn key(&self) -> Vec<u8> {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.decode(&self.0["whsec_".len()..]).unwrap_or_default()
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(Self::MASKED)
    }
}

impl Serialize for WebhookSecret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = if s.is_human_readable() { Self::MASKED } else { self.0.as_str() };
        s.serialize_newtype_struct("WebhookSecret", text)
    }
}

/// A client writes `whsec_…` (JSON); the stream (postcard) may hold it sealed.
impl<'de> Deserialize<'de> for WebhookSecret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let parse = if d.is_human_readable() { Self::parse } else { Self::parse_stored };
        d.deserialize_newtype_struct("WebhookSecret", crate::ids::TextVisitor(parse, "WebhookSecret"))
    }
}

impl JsonSchema for WebhookSecret {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "WebhookSecret".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^whsec_[A-Za-z0-9+/=*]+$",
            "description": "`whsec_` and the base64 of 24 to 64 random bytes; views show `whsec_********`"
        })
    }
}

/// A webhook whose dead-lettered deliveries are to be tried again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookRef {
    pub webhook: WebhookId,
}

/// A key to revoke.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyRef {
    pub key: KeyId,
}

/// A request the front door refused, as the audit log keeps it. Recorded by
/// the engine only (a sample of them: `unrecorded_before` counts the refusals
/// of the account not recorded since the previous sample).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeniedAttempt {
    /// Who tried: `user:ana`, `integration:crm`, `operator`, or `anonymous`.
    pub principal: String,
    /// The address the request came from, when the transport knows it.
    #[serde(default)]
    pub ip: Option<String>,
    /// The command type or read asked for.
    pub action: String,
    /// The rule that refused it (`credential`, `tenant`, `scope`, `role`, `network`…).
    pub rule: String,
    pub message: String,
    #[serde(default)]
    pub unrecorded_before: u64,
}

/// A read the front door served with the text the account's redaction
/// rules would mask, as the audit log keeps it: whose key, from where, which
/// read. Recorded by the engine only, sampled as refusals are
/// (`unrecorded_before` counts the account's reads not recorded since the previous one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadRecord {
    /// Who read: `user:ana`, `integration:crm`.
    pub principal: String,
    /// The address the request came from, when the transport knows it.
    #[serde(default)]
    pub ip: Option<String>,
    /// The read model or feed read (`audit`, `live`…).
    pub read: String,
    #[serde(default)]
    pub unrecorded_before: u64,
}

/// An issued key and whether it still works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub spec: ApiKeySpec,
    pub revoked: bool,
}

// ---------------------------------------------------------------- events

/// What happened to an account's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConfigEvent {
    AccountConfigured(AccountSettings),
    ClientDefined(ClientSpec),
    ClientUpdated(ClientSpec),
    ProjectDefined(ProjectSpec),
    ProjectUpdated(ProjectSpec),
    ScheduleDefined(ScheduleSpec),
    ScheduleUpdated(ScheduleSpec),
    ChannelDefined(ChannelSpec),
    ChannelUpdated(ChannelSpec),
    UserDefined(UserSpec),
    UserUpdated(UserSpec),
    CampaignDefined(CampaignSpec),
    CampaignUpdated(CampaignSpec),
    Activated(EntityRef),
    Inactivated(EntityRef),
    ApiKeyIssued(ApiKeySpec),
    ApiKeyRevoked(KeyRef),
    AccessDenied(DeniedAttempt),
    // appended: the order is part of the encoding
    WebhookDefined(WebhookSpec),
    WebhookUpdated(WebhookSpec),
    WebhookRedriven(WebhookRef),
    // appended
    SlaModeSet(SlaModeSpec),
    TeamDefined(TeamSpec),
    TeamUpdated(TeamSpec),
    MacroDefined(MacroSpec),
    MacroUpdated(MacroSpec),
    AutomationDefined(AutomationSpec),
    AutomationUpdated(AutomationSpec),
    ContactAttributeDefined(ContactAttributeSpec),
    ContactAttributeUpdated(ContactAttributeSpec),
    // appended
    UnredactedRead(ReadRecord),
    // appended
    RetentionSet(RetentionSpec),
}

impl ConfigEvent {
    /// The entity the event is about, as `kind/id` (`account` for settings).
    pub fn entity(&self) -> String {
        match self {
            Self::AccountConfigured(_) => "account".into(),
            Self::ClientDefined(s) | Self::ClientUpdated(s) => format!("client/{}", s.id),
            Self::ProjectDefined(s) | Self::ProjectUpdated(s) => format!("project/{}", s.id),
            Self::ScheduleDefined(s) | Self::ScheduleUpdated(s) => format!("schedule/{}", s.id),
            Self::ChannelDefined(s) | Self::ChannelUpdated(s) => format!("channel/{}", s.id),
            Self::UserDefined(s) | Self::UserUpdated(s) => format!("user/{}", s.id),
            Self::CampaignDefined(s) | Self::CampaignUpdated(s) => format!("campaign/{}", s.id),
            Self::Activated(e) | Self::Inactivated(e) => entity_path(e),
            Self::ApiKeyIssued(s) => format!("api_key/{}", s.key),
            Self::ApiKeyRevoked(k) => format!("api_key/{}", k.key),
            Self::AccessDenied(_) | Self::UnredactedRead(_) => "access".into(),
            Self::WebhookDefined(s) | Self::WebhookUpdated(s) => format!("webhook/{}", s.id),
            Self::WebhookRedriven(w) => format!("webhook/{}", w.webhook),
            Self::RetentionSet(s) => match &s.campaign {
                Some(id) => format!("campaign/{id}"),
                None => "account".into(),
            },
            Self::SlaModeSet(s) => match (&s.client, &s.campaign) {
                (Some(id), _) => format!("client/{id}"),
                (None, Some(id)) => format!("campaign/{id}"),
                (None, None) => "account".into(),
            },
            Self::TeamDefined(s) | Self::TeamUpdated(s) => format!("team/{}", s.id),
            Self::MacroDefined(s) | Self::MacroUpdated(s) => format!("macro/{}", s.id),
            Self::AutomationDefined(s) | Self::AutomationUpdated(s) => format!("automation/{}", s.id),
            Self::ContactAttributeDefined(s) | Self::ContactAttributeUpdated(s) => {
                format!("contact_attribute/{}", s.name)
            }
        }
    }
}

fn entity_path(e: &EntityRef) -> String {
    match e {
        EntityRef::Client(id) => format!("client/{id}"),
        EntityRef::Project(id) => format!("project/{id}"),
        EntityRef::Campaign(id) => format!("campaign/{id}"),
        EntityRef::Channel(id) => format!("channel/{id}"),
        EntityRef::User(id) => format!("user/{id}"),
        EntityRef::Team(id) => format!("team/{id}"),
        EntityRef::Macro(id) => format!("macro/{id}"),
        EntityRef::Automation(id) => format!("automation/{id}"),
    }
}

// ---------------------------------------------------------------- catalog

/// A configured entity and whether it is active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<T> {
    pub spec: T,
    pub active: bool,
}

/// How many conversations are active in a campaign; answered by whoever keeps
/// the live view (the simulator's or the engine's), since conversations are
/// other aggregates.
pub trait Occupancy {
    fn active_conversations(&self, campaign: &CampaignId) -> u32;
    /// How many open conversations are with a team.
    fn team_conversations(&self, team: &TeamId) -> u32;
}

/// An account's configuration: the state of its catalog stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    pub account: AccountId,
    pub seq: u64,
    pub settings: AccountSettings,
    pub clients: BTreeMap<ClientId, Entry<ClientSpec>>,
    pub projects: BTreeMap<ProjectId, Entry<ProjectSpec>>,
    pub schedules: BTreeMap<ScheduleId, ScheduleSpec>,
    pub channels: BTreeMap<ChannelId, Entry<ChannelSpec>>,
    pub users: BTreeMap<UserId, Entry<UserSpec>>,
    pub campaigns: BTreeMap<CampaignId, Entry<CampaignSpec>>,
    /// Derived: which campaign each channel is attached to.
    pub channel_campaign: BTreeMap<ChannelId, CampaignId>,
    /// The account's API keys, revoked ones included.
    pub keys: BTreeMap<KeyId, ApiKey>,
    /// The account's webhook endpoints.
    pub webhooks: BTreeMap<WebhookId, WebhookSpec>,
    /// Clients whose SLA counts business hours (absent: elapsed time).
    pub client_sla_modes: BTreeMap<ClientId, SlaMode>,
    /// Campaigns that override their client's SLA mode.
    pub campaign_sla_modes: BTreeMap<CampaignId, SlaMode>,
    /// How many days the account keeps a closed conversation's content (absent: always).
    pub retention_days: Option<u32>,
    /// Campaigns that override the account's retention.
    pub campaign_retention_days: BTreeMap<CampaignId, u32>,
    pub teams: BTreeMap<TeamId, Entry<TeamSpec>>,
    /// The custom attributes contacts may carry, by name.
    pub contact_attributes: BTreeMap<String, ContactAttributeSpec>,
    pub macros: BTreeMap<MacroId, Entry<MacroSpec>>,
    pub automations: BTreeMap<AutomationId, Entry<AutomationSpec>>,
    /// Derived: the active automations on each event, in id order, with
    /// their compiled patterns.
    automations_on: [Vec<Armed>; On::ALL.len()],
    /// Derived: the allowed networks, parsed once when the settings change.
    networks: Vec<Cidr>,
    recent: RecentCommands,
}

fn check_name(field: &str, text: &str) -> Result<(), Rejection> {
    if text.trim().is_empty() {
        return Err(Rejection::invalid(field, "must not be empty"));
    }
    if text.len() > NAME_BYTES_MAX {
        return Err(Rejection::invalid(field, format!("at most {NAME_BYTES_MAX} bytes")));
    }
    Ok(())
}

fn check_template(field: &str, message: &AutoMessage) -> Result<(), Rejection> {
    if message.enabled && message.text.trim().is_empty() {
        return Err(Rejection::invalid(format!("{field}.text"), "an enabled message needs text"));
    }
    template::check(&message.text).map_err(|reason| Rejection::invalid(format!("{field}.text"), reason))
}

/// A webhook's URL (scheme, host, no credentials in it) and event types.
fn check_webhook(s: &WebhookSpec) -> Result<(), Rejection> {
    if s.url.len() > WEBHOOK_URL_BYTES_MAX {
        return Err(Rejection::invalid("url", format!("at most {WEBHOOK_URL_BYTES_MAX} bytes")));
    }
    let rest = s.url.strip_prefix("https://").or_else(|| s.url.strip_prefix("http://"));
    let Some(rest) = rest else {
        return Err(Rejection::invalid("url", "an http:// or https:// URL"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') || s.url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Rejection::invalid("url", "an http(s) URL with a host, no spaces and no credentials in it"));
    }
    check_max("events", &s.events, crate::EVENT_TYPES.len())?;
    for (i, kind) in s.events.iter().enumerate() {
        if !crate::EVENT_TYPES.contains(&kind.as_str()) {
            return Err(Rejection::invalid(format!("events[{i}]"), format!("no event type `{kind}`")));
        }
    }
    Ok(())
}

/// A definition would take an account past its limit of `what`.
fn check_room(define: bool, count: usize, max: usize, field: &str, what: &str) -> Result<(), Rejection> {
    if define && count >= max {
        return Err(Rejection::invalid(field, format!("an account defines at most {max} {what}")));
    }
    Ok(())
}

fn check_max<T>(field: &str, list: &[T], max: usize) -> Result<(), Rejection> {
    if list.len() > max { Err(Rejection::invalid(field, format!("at most {max} entries"))) } else { Ok(()) }
}

fn check_unique<'a>(field: &str, items: impl Iterator<Item = &'a str>) -> Result<(), Rejection> {
    let mut seen = std::collections::BTreeSet::new();
    for (i, item) in items.enumerate() {
        if !seen.insert(item) {
            return Err(Rejection::invalid(format!("{field}[{i}]"), format!("{item:?} appears twice")));
        }
    }
    Ok(())
}

/// A parsed CIDR block (`10.0.0.0/8`, `2001:db8::/32`, or a single address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    base: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let base: IpAddr = addr.parse().map_err(|_| format!("{text:?} is not an address or CIDR block"))?;
        let width = if base.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= width)
                .ok_or_else(|| format!("{text:?} has a bad prefix length"))?,
            None => width,
        };
        Ok(Self { base, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        fn masked(bits: u128, prefix: u8, width: u8) -> u128 {
            if prefix == 0 { 0 } else { bits >> (width - prefix) }
        }
        match (self.base, ip) {
            (IpAddr::V4(b), IpAddr::V4(i)) => {
                masked(u32::from(b).into(), self.prefix, 32) == masked(u32::from(i).into(), self.prefix, 32)
            }
            (IpAddr::V6(b), IpAddr::V6(i)) => {
                masked(u128::from(b), self.prefix, 128) == masked(u128::from(i), self.prefix, 128)
            }
            _ => false,
        }
    }
}

impl Catalog {
    pub fn new(account: AccountId) -> Self {
        Self {
            account,
            seq: 0,
            settings: AccountSettings::default(),
            clients: BTreeMap::new(),
            projects: BTreeMap::new(),
            schedules: BTreeMap::new(),
            channels: BTreeMap::new(),
            users: BTreeMap::new(),
            campaigns: BTreeMap::new(),
            channel_campaign: BTreeMap::new(),
            keys: BTreeMap::new(),
            webhooks: BTreeMap::new(),
            client_sla_modes: BTreeMap::new(),
            campaign_sla_modes: BTreeMap::new(),
            retention_days: None,
            campaign_retention_days: BTreeMap::new(),
            teams: BTreeMap::new(),
            contact_attributes: BTreeMap::new(),
            macros: BTreeMap::new(),
            automations: BTreeMap::new(),
            automations_on: Default::default(),
            networks: Vec::new(),
            recent: RecentCommands::default(),
        }
    }

    // ----- lookups used by every aggregate

    pub fn client(&self, id: &ClientId) -> Result<&ClientSpec, Rejection> {
        active(self.clients.get(id), || format!("client {id}"))
    }

    pub fn project(&self, id: &ProjectId) -> Result<&ProjectSpec, Rejection> {
        active(self.projects.get(id), || format!("project {id}"))
    }

    pub fn campaign(&self, id: &CampaignId) -> Result<&CampaignSpec, Rejection> {
        active(self.campaigns.get(id), || format!("campaign {id}"))
    }

    pub fn channel(&self, id: &ChannelId) -> Result<&ChannelSpec, Rejection> {
        active(self.channels.get(id), || format!("channel {id}"))
    }

    pub fn user(&self, id: &UserId) -> Result<&UserSpec, Rejection> {
        active(self.users.get(id), || format!("user {id}"))
    }

    pub fn macro_spec(&self, id: &MacroId) -> Result<&MacroSpec, Rejection> {
        active(self.macros.get(id), || format!("macro {id}"))
    }

    /// The active automations on `on`, in id order, with their compiled patterns.
    pub fn automations_on(&self, on: On) -> &[Armed] {
        &self.automations_on[on as usize]
    }

    /// Whether any automation is active (the common case has none to evaluate).
    pub fn has_automations(&self) -> bool {
        self.automations_on.iter().any(|list| !list.is_empty())
    }

    pub fn team(&self, id: &TeamId) -> Result<&TeamSpec, Rejection> {
        active(self.teams.get(id), || format!("team {id}"))
    }

    pub fn schedule(&self, id: &ScheduleId) -> Result<&ScheduleSpec, Rejection> {
        match self.schedules.get(id) {
            Some(spec) => Ok(spec),
            None if id.as_str() == crate::schedule::ALWAYS => Ok(ScheduleSpec::always()),
            None => Err(Rejection::Unknown { entity: format!("schedule {id}") }),
        }
    }

    /// The user's name, or the id when the user is unknown.
    pub fn user_name(&self, id: &UserId) -> String {
        self.users.get(id).map(|u| u.spec.name.clone()).unwrap_or_else(|| id.to_string())
    }

    /// Checks the actor is allowed to act from where it acts: a user must be
    /// active and, when the account restricts networks, inside one of them.
    pub fn check_actor(&self, actor: &Actor) -> Result<Option<&UserSpec>, Rejection> {
        let Actor::User { id, ip } = actor else {
            return Ok(None);
        };
        let user = self.user(id)?;
        if !self.networks.is_empty() {
            let inside = ip.is_some_and(|ip| self.networks.iter().any(|n| n.contains(ip)));
            if !inside {
                let ip = ip.map(|ip| ip.to_string()).unwrap_or_else(|| "an unknown address".into());
                return Err(Rejection::NetworkNotAllowed { user: id.clone(), ip });
            }
        }
        Ok(Some(user))
    }

    /// How a campaign's SLA is counted: its own override, else its client's.
    pub fn sla_mode(&self, campaign: &CampaignSpec) -> SlaMode {
        self.campaign_sla_modes
            .get(&campaign.id)
            .or_else(|| self.client_sla_modes.get(&campaign.client))
            .copied()
            .unwrap_or_default()
    }

    /// How many days a conversation of `campaign` keeps its content after
    /// closing: the campaign's override, else the account's; `None`: always.
    pub fn retention_days(&self, campaign: &CampaignId) -> Option<u32> {
        self.campaign_retention_days.get(campaign).copied().or(self.retention_days)
    }

    fn typification_known(&self, id: &TypificationId) -> bool {
        self.settings.typifications.iter().any(|t| &t.id == id)
    }

    // ----- decide

    /// Decides a configuration command. `occupancy` answers how many
    /// conversations are active per campaign (for the inactivation rule).
    pub fn decide(
        &self,
        envelope: &CommandEnvelope,
        now: Timestamp,
        occupancy: &dyn Occupancy,
    ) -> Result<Decision<ConfigEvent>, Rejection> {
        if let Some((first_seq, last_seq)) = self.recent.find(&envelope.id) {
            return Ok(Decision::Duplicate { first_seq, last_seq });
        }
        let door = match &envelope.command {
            Command::RecordDenied(d) => Some(ConfigEvent::AccessDenied(d.clone())),
            Command::RecordRead(r) => Some(ConfigEvent::UnredactedRead(r.clone())),
            _ => None,
        };
        if let Some(event) = door {
            if envelope.actor != Actor::system(DENIED_ACTOR) {
                return Err(Rejection::Forbidden {
                    action: envelope.command.type_name(),
                    needed: "the engine's front door",
                });
            }
            if self.seq == 0 {
                return Err(Rejection::Unknown { entity: format!("account {}", self.account) });
            }
            let mut out = Emitter::new(self.seq, now, &envelope.id, &envelope.actor);
            out.emit(event);
            return Ok(out.finish());
        }
        if self.seq == 0 && !matches!(envelope.actor, Actor::Operator { .. } | Actor::System(_)) {
            return Err(Rejection::Forbidden { action: "creating an account", needed: "the platform operator" });
        }
        match self.check_actor(&envelope.actor)? {
            None if envelope.actor.is_trusted() => {}
            Some(user) if user.role == Role::Admin => {}
            _ => {
                return Err(Rejection::Forbidden {
                    action: "changing configuration",
                    needed: "an admin user or the system",
                });
            }
        }
        let keys = matches!(envelope.command, Command::IssueApiKey(_) | Command::RevokeApiKey(_));
        if keys && matches!(envelope.actor, Actor::Integration { .. }) {
            return Err(Rejection::Forbidden { action: "issuing or revoking API keys", needed: "an admin user" });
        }
        // A webhook receives every event it names: an integration could widen its own reads with one.
        let webhooks = matches!(
            envelope.command,
            Command::DefineWebhook(_) | Command::UpdateWebhook(_) | Command::RedriveWebhook(_)
        );
        if webhooks && matches!(envelope.actor, Actor::Integration { .. }) {
            return Err(Rejection::Forbidden { action: "defining or changing webhooks", needed: "an admin user" });
        }
        // A retention period destroys content when it passes: a person decides it.
        if matches!(envelope.command, Command::SetRetention(_)) && matches!(envelope.actor, Actor::Integration { .. }) {
            return Err(Rejection::Forbidden { action: "setting a content retention", needed: "an admin user" });
        }
        // An automation acts as the engine on every conversation: an
        // integration could do with one what its scopes do not let it.
        let automations = match &envelope.command {
            Command::DefineAutomation(_) | Command::UpdateAutomation(_) => true,
            Command::Activate(e) | Command::Inactivate(e) => matches!(e, EntityRef::Automation(_)),
            _ => false,
        };
        if automations && matches!(envelope.actor, Actor::Integration { .. }) {
            return Err(Rejection::Forbidden { action: "defining or switching automations", needed: "an admin user" });
        }
        let mut out = Emitter::new(self.seq, now, &envelope.id, &envelope.actor);
        let event = match &envelope.command {
            Command::ConfigureAccount(s) => {
                self.check_settings(s)?;
                ConfigEvent::AccountConfigured(s.clone())
            }
            Command::DefineClient(s) | Command::UpdateClient(s) => {
                let define = matches!(envelope.command, Command::DefineClient(_));
                self.expect_defined(self.clients.contains_key(&s.id), define, || format!("client {}", s.id))?;
                self.check_client(s)?;
                if define { ConfigEvent::ClientDefined(s.clone()) } else { ConfigEvent::ClientUpdated(s.clone()) }
            }
            Command::DefineProject(s) | Command::UpdateProject(s) => {
                let define = matches!(envelope.command, Command::DefineProject(_));
                self.expect_defined(self.projects.contains_key(&s.id), define, || format!("project {}", s.id))?;
                check_name("name", &s.name)?;
                self.client(&s.client)
                    .map_err(|_| Rejection::invalid("client", format!("no active client {}", s.client)))?;
                if define { ConfigEvent::ProjectDefined(s.clone()) } else { ConfigEvent::ProjectUpdated(s.clone()) }
            }
            Command::DefineSchedule(s) | Command::UpdateSchedule(s) => {
                let define = matches!(envelope.command, Command::DefineSchedule(_));
                self.expect_defined(self.schedules.contains_key(&s.id), define, || format!("schedule {}", s.id))?;
                check_name("name", &s.name)?;
                s.check().map_err(|(field, reason)| Rejection::invalid(field, reason))?;
                if define { ConfigEvent::ScheduleDefined(s.clone()) } else { ConfigEvent::ScheduleUpdated(s.clone()) }
            }
            Command::DefineChannel(s) | Command::UpdateChannel(s) => {
                let define = matches!(envelope.command, Command::DefineChannel(_));
                self.expect_defined(self.channels.contains_key(&s.id), define, || format!("channel {}", s.id))?;
                check_name("external_id", &s.external_id)?;
                let m = &s.messages;
                check_template("messages.welcome", &m.welcome)?;
                check_template("messages.inactivity_alert", &m.inactivity_alert)?;
                check_template("messages.transfer_notice", &m.transfer_notice)?;
                check_template("messages.closing", &m.closing)?;
                check_template("messages.survey", &m.survey)?;
                if define { ConfigEvent::ChannelDefined(s.clone()) } else { ConfigEvent::ChannelUpdated(s.clone()) }
            }
            Command::DefineUser(s) | Command::UpdateUser(s) => {
                let define = matches!(envelope.command, Command::DefineUser(_));
                self.expect_defined(self.users.contains_key(&s.id), define, || format!("user {}", s.id))?;
                check_name("name", &s.name)?;
                check_name("email", &s.email)?;
                if !s.email.contains('@') {
                    return Err(Rejection::invalid("email", "not an e-mail address"));
                }
                if s.max_concurrent_conversations == 0 || s.max_concurrent_conversations > CONCURRENT_CONVERSATIONS_MAX
                {
                    return Err(Rejection::invalid(
                        "max_concurrent_conversations",
                        format!("must be 1 to {CONCURRENT_CONVERSATIONS_MAX}"),
                    ));
                }
                if define { ConfigEvent::UserDefined(s.clone()) } else { ConfigEvent::UserUpdated(s.clone()) }
            }
            Command::DefineCampaign(s) | Command::UpdateCampaign(s) => {
                let define = matches!(envelope.command, Command::DefineCampaign(_));
                self.expect_defined(self.campaigns.contains_key(&s.id), define, || format!("campaign {}", s.id))?;
                self.check_campaign(s)?;
                if define { ConfigEvent::CampaignDefined(s.clone()) } else { ConfigEvent::CampaignUpdated(s.clone()) }
            }
            Command::Activate(e) | Command::Inactivate(e) => {
                let activate = matches!(envelope.command, Command::Activate(_));
                let Some(is_active) = self.is_active(e) else {
                    return Err(Rejection::Unknown { entity: e.to_string() });
                };
                if is_active == activate {
                    return Ok(out.finish()); // already so: nothing to record
                }
                if let (false, EntityRef::Campaign(id)) = (activate, e) {
                    let spec = &self.campaigns[id].spec;
                    if !spec.agents.is_empty() {
                        return Err(Rejection::CampaignHasAssignedAgents {
                            campaign: id.clone(),
                            count: spec.agents.len(),
                        });
                    }
                    let count = occupancy.active_conversations(id);
                    if count > 0 {
                        return Err(Rejection::CampaignHasActiveConversations { campaign: id.clone(), count });
                    }
                }
                if let (false, EntityRef::Team(id)) = (activate, e) {
                    let count = occupancy.team_conversations(id);
                    if count > 0 {
                        return Err(Rejection::TeamHasActiveConversations { team: id.clone(), count });
                    }
                }
                if activate { ConfigEvent::Activated(e.clone()) } else { ConfigEvent::Inactivated(e.clone()) }
            }
            Command::IssueApiKey(s) => {
                self.check_key(s)?;
                ConfigEvent::ApiKeyIssued(s.clone())
            }
            Command::RevokeApiKey(k) => match self.keys.get(&k.key) {
                None => return Err(Rejection::Unknown { entity: format!("API key {}", k.key) }),
                Some(key) if key.revoked => return Ok(out.finish()), // already revoked: nothing to record
                Some(_) => ConfigEvent::ApiKeyRevoked(k.clone()),
            },
            Command::DefineWebhook(s) | Command::UpdateWebhook(s) => {
                let define = matches!(envelope.command, Command::DefineWebhook(_));
                self.expect_defined(self.webhooks.contains_key(&s.id), define, || format!("webhook {}", s.id))?;
                check_room(define, self.webhooks.len(), WEBHOOKS_MAX, "id", "webhooks")?;
                check_webhook(s)?;
                if define { ConfigEvent::WebhookDefined(s.clone()) } else { ConfigEvent::WebhookUpdated(s.clone()) }
            }
            Command::DefineTeam(s) | Command::UpdateTeam(s) => {
                let define = matches!(envelope.command, Command::DefineTeam(_));
                self.expect_defined(self.teams.contains_key(&s.id), define, || format!("team {}", s.id))?;
                check_room(define, self.teams.len(), TEAMS_MAX, "id", "teams")?;
                self.check_team(s)?;
                if define { ConfigEvent::TeamDefined(s.clone()) } else { ConfigEvent::TeamUpdated(s.clone()) }
            }
            Command::DefineMacro(s) | Command::UpdateMacro(s) => {
                let define = matches!(envelope.command, Command::DefineMacro(_));
                self.expect_defined(self.macros.contains_key(&s.id), define, || format!("macro {}", s.id))?;
                check_room(define, self.macros.len(), automation::MACROS_MAX, "id", "macros")?;
                check_name("name", &s.name)?;
                automation::check_actions(&s.actions, false)?;
                if define { ConfigEvent::MacroDefined(s.clone()) } else { ConfigEvent::MacroUpdated(s.clone()) }
            }
            Command::DefineAutomation(s) | Command::UpdateAutomation(s) => {
                let define = matches!(envelope.command, Command::DefineAutomation(_));
                let exists = self.automations.contains_key(&s.id);
                self.expect_defined(exists, define, || format!("automation {}", s.id))?;
                check_room(define, self.automations.len(), automation::AUTOMATIONS_MAX, "id", "automations")?;
                check_name("name", &s.name)?;
                automation::check_conditions(&s.conditions)?;
                automation::check_actions(&s.actions, true)?;
                if define {
                    ConfigEvent::AutomationDefined(s.clone())
                } else {
                    ConfigEvent::AutomationUpdated(s.clone())
                }
            }
            Command::DefineContactAttribute(s) | Command::UpdateContactAttribute(s) => {
                let define = matches!(envelope.command, Command::DefineContactAttribute(_));
                let exists = self.contact_attributes.contains_key(&s.name);
                self.expect_defined(exists, define, || format!("contact attribute {}", s.name))?;
                let count = self.contact_attributes.len();
                check_room(define, count, contact::CONTACT_ATTRIBUTES_MAX, "name", "contact attributes")?;
                contact::check_definition(s)?;
                for (i, campaign) in s.required_to_close.iter().enumerate() {
                    if !self.campaigns.contains_key(campaign) {
                        return Err(Rejection::invalid(
                            format!("required_to_close[{i}]"),
                            format!("no campaign {campaign}"),
                        ));
                    }
                }
                if define {
                    ConfigEvent::ContactAttributeDefined(s.clone())
                } else {
                    ConfigEvent::ContactAttributeUpdated(s.clone())
                }
            }
            Command::SetSlaMode(m) => {
                match (&m.client, &m.campaign) {
                    (Some(client), None) => {
                        self.client(client)
                            .map_err(|_| Rejection::invalid("client", format!("no active client {client}")))?;
                    }
                    (None, Some(campaign)) => {
                        if !self.campaigns.contains_key(campaign) {
                            return Err(Rejection::invalid("campaign", format!("no campaign {campaign}")));
                        }
                    }
                    _ => return Err(Rejection::invalid("client", "name exactly one of `client` and `campaign`")),
                }
                ConfigEvent::SlaModeSet(m.clone())
            }
            Command::SetRetention(r) => {
                if let Some(campaign) = &r.campaign
                    && !self.campaigns.contains_key(campaign)
                {
                    return Err(Rejection::invalid("campaign", format!("no campaign {campaign}")));
                }
                if let Some(days) = r.content_days
                    && !(1..=RETENTION_DAYS_MAX).contains(&days)
                {
                    let why = format!("1 to {RETENTION_DAYS_MAX} days (leave it out to keep content)");
                    return Err(Rejection::invalid("content_days", why));
                }
                ConfigEvent::RetentionSet(r.clone())
            }
            Command::RedriveWebhook(w) => {
                if !self.webhooks.contains_key(&w.webhook) {
                    return Err(Rejection::Unknown { entity: format!("webhook {}", w.webhook) });
                }
                ConfigEvent::WebhookRedriven(w.clone())
            }
            other => {
                return Err(Rejection::WrongAggregate {
                    command: other.type_name(),
                    aggregate: "the configuration catalog",
                });
            }
        };
        out.emit(event);
        Ok(out.finish())
    }

    fn expect_defined(&self, exists: bool, define: bool, entity: impl Fn() -> String) -> Result<(), Rejection> {
        match (exists, define) {
            (true, true) => Err(Rejection::AlreadyDefined { entity: entity() }),
            (false, false) => Err(Rejection::Unknown { entity: entity() }),
            _ => Ok(()),
        }
    }

    fn is_active(&self, e: &EntityRef) -> Option<bool> {
        match e {
            EntityRef::Client(id) => self.clients.get(id).map(|x| x.active),
            EntityRef::Project(id) => self.projects.get(id).map(|x| x.active),
            EntityRef::Campaign(id) => self.campaigns.get(id).map(|x| x.active),
            EntityRef::Channel(id) => self.channels.get(id).map(|x| x.active),
            EntityRef::User(id) => self.users.get(id).map(|x| x.active),
            EntityRef::Team(id) => self.teams.get(id).map(|x| x.active),
            EntityRef::Macro(id) => self.macros.get(id).map(|x| x.active),
            EntityRef::Automation(id) => self.automations.get(id).map(|x| x.active),
        }
    }

    fn check_team(&self, s: &TeamSpec) -> Result<(), Rejection> {
        check_name("name", &s.name)?;
        for (field, users, roles) in [
            ("members", &s.members, &[Role::Agent][..]),
            ("supervisors", &s.supervisors, &[Role::Supervisor, Role::Admin][..]),
        ] {
            check_max(field, users, TEAM_MEMBERS_MAX)?;
            check_unique(field, users.iter().map(|u| u.as_str()))?;
            for (i, user) in users.iter().enumerate() {
                match self.users.get(user) {
                    None => return Err(Rejection::invalid(format!("{field}[{i}]"), format!("no user {user}"))),
                    Some(u) if !roles.contains(&u.spec.role) => {
                        let wanted = if field == "members" { "agents" } else { "supervisors and admins" };
                        return Err(Rejection::invalid(
                            format!("{field}[{i}]"),
                            format!("{user} is not one of the {wanted} a team's {field} are"),
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }

    fn check_client(&self, s: &ClientSpec) -> Result<(), Rejection> {
        check_name("name", &s.name)?;
        check_name("code", &s.code)?;
        if let Some(other) = self.clients.values().find(|c| c.spec.code == s.code && c.spec.id != s.id) {
            return Err(Rejection::invalid(
                "code",
                format!("{:?} is already the code of client {}", s.code, other.spec.id),
            ));
        }
        let period = |field: &str, v: u32| {
            if v == 0 || v > PERIOD_SECS_MAX {
                Err(Rejection::invalid(field, format!("must be 1 to {PERIOD_SECS_MAX} seconds")))
            } else {
                Ok(())
            }
        };
        period("sla_optimal_secs", s.sla_optimal_secs)?;
        period("sla_low_secs", s.sla_low_secs)?;
        if s.sla_low_secs < s.sla_optimal_secs {
            return Err(Rejection::invalid(
                "sla_low_secs",
                format!(
                    "{} is below sla_optimal_secs ({}); the low threshold comes after the optimal one",
                    s.sla_low_secs, s.sla_optimal_secs
                ),
            ));
        }
        period("max_inactivity_secs", s.max_inactivity_secs)?;
        if s.inactivity_attempts > INACTIVITY_ATTEMPTS_MAX {
            return Err(Rejection::invalid("inactivity_attempts", format!("at most {INACTIVITY_ATTEMPTS_MAX}")));
        }
        if s.max_history_conversations > HISTORY_CONVERSATIONS_MAX {
            return Err(Rejection::invalid(
                "max_history_conversations",
                format!("at most {HISTORY_CONVERSATIONS_MAX}"),
            ));
        }
        Ok(())
    }

    fn check_settings(&self, s: &AccountSettings) -> Result<(), Rejection> {
        check_name("name", &s.name)?;
        if s.auto_resolve_after_days > AUTO_RESOLVE_DAYS_MAX {
            return Err(Rejection::invalid("auto_resolve_after_days", format!("at most {AUTO_RESOLVE_DAYS_MAX}")));
        }
        check_max("agent_states", &s.agent_states, AGENT_STATES_MAX)?;
        for (i, state) in s.agent_states.iter().enumerate() {
            check_id(state).map_err(|e| Rejection::invalid(format!("agent_states[{i}]"), e.to_string()))?;
        }
        check_unique("agent_states", s.agent_states.iter().map(String::as_str))?;
        for needed in [STATE_AVAILABLE, STATE_OFFLINE] {
            if !s.agent_states.iter().any(|x| x == needed) {
                return Err(Rejection::invalid("agent_states", format!("must include {needed:?}")));
            }
        }
        check_max("labels", &s.labels, LABELS_MAX)?;
        for (i, label) in s.labels.iter().enumerate() {
            check_name(&format!("labels[{i}]"), label)?;
        }
        check_unique("labels", s.labels.iter().map(String::as_str))?;
        check_max("canned_responses", &s.canned_responses, CANNED_RESPONSES_MAX)?;
        for (i, c) in s.canned_responses.iter().enumerate() {
            check_id(&c.shortcode)
                .map_err(|e| Rejection::invalid(format!("canned_responses[{i}].shortcode"), e.to_string()))?;
            template::check(&c.text).map_err(|r| Rejection::invalid(format!("canned_responses[{i}].text"), r))?;
        }
        check_unique("canned_responses", s.canned_responses.iter().map(|c| c.shortcode.as_str()))?;
        check_max("typifications", &s.typifications, TYPIFICATIONS_MAX)?;
        for (i, t) in s.typifications.iter().enumerate() {
            check_name(&format!("typifications[{i}].name"), &t.name)?;
        }
        check_unique("typifications", s.typifications.iter().map(|t| t.id.as_str()))?;
        for campaign in self.campaigns.values() {
            for used in campaign_typifications(&campaign.spec) {
                if !s.typifications.iter().any(|t| &t.id == used) {
                    return Err(Rejection::invalid(
                        "typifications",
                        format!("{used} is used by campaign {}", campaign.spec.id),
                    ));
                }
            }
        }
        check_max("regex_rules", &s.regex_rules, REGEX_RULES_MAX)?;
        for (i, r) in s.regex_rules.iter().enumerate() {
            check_name(&format!("regex_rules[{i}].name"), &r.name)?;
            if r.name.chars().any(char::is_control) {
                return Err(Rejection::invalid(format!("regex_rules[{i}].name"), "no control characters"));
            }
            check_name(&format!("regex_rules[{i}].pattern"), &r.pattern)?;
            regex::RegexBuilder::new(&r.pattern).size_limit(REGEX_BYTES_MAX).build().map_err(|e| {
                Rejection::invalid(format!("regex_rules[{i}].pattern"), format!("not a valid regular expression: {e}"))
            })?;
        }
        check_max("allowed_networks", &s.allowed_networks, ALLOWED_NETWORKS_MAX)?;
        for (i, n) in s.allowed_networks.iter().enumerate() {
            Cidr::parse(n).map_err(|r| Rejection::invalid(format!("allowed_networks[{i}]"), r))?;
        }
        Ok(())
    }

    fn check_campaign(&self, s: &CampaignSpec) -> Result<(), Rejection> {
        check_name("name", &s.name)?;
        self.client(&s.client).map_err(|_| Rejection::invalid("client", format!("no active client {}", s.client)))?;
        let project = self
            .projects
            .get(&s.project)
            .ok_or_else(|| Rejection::invalid("project", format!("no project {}", s.project)))?;
        if project.spec.client != s.client {
            return Err(Rejection::invalid(
                "project",
                format!("project {} belongs to client {}, not {}", s.project, project.spec.client, s.client),
            ));
        }
        if self.schedule(&s.schedule).is_err() {
            return Err(Rejection::invalid("schedule", format!("no schedule {}", s.schedule)));
        }
        check_max("channels", &s.channels, CHANNELS_PER_CAMPAIGN_MAX)?;
        check_unique("channels", s.channels.iter().map(|c| c.as_str()))?;
        for (i, channel) in s.channels.iter().enumerate() {
            if !self.channels.contains_key(channel) {
                return Err(Rejection::invalid(format!("channels[{i}]"), format!("no channel {channel}")));
            }
            if let Some(owner) = self.channel_campaign.get(channel).filter(|owner| **owner != s.id) {
                return Err(Rejection::invalid(
                    format!("channels[{i}]"),
                    format!("channel {channel} already belongs to campaign {owner}"),
                ));
            }
        }
        check_template("out_of_hours.message", &s.out_of_hours.message)?;
        if s.closing_typifications.is_empty() {
            return Err(Rejection::invalid(
                "closing_typifications",
                "a campaign needs at least one closing typification",
            ));
        }
        check_max("closing_typifications", &s.closing_typifications, TYPIFICATIONS_MAX)?;
        let single = [
            ("inactivity_typification", Some(&s.inactivity_typification)),
            ("transfer_typification", Some(&s.transfer_typification)),
            ("ignore_comment_typification", s.ignore_comment_typification.as_ref()),
        ];
        for (field, id) in single {
            if let Some(id) = id.filter(|id| !self.typification_known(id)) {
                return Err(Rejection::invalid(field, format!("{id} is not one of the account's typifications")));
            }
        }
        for (i, id) in s.closing_typifications.iter().enumerate() {
            if !self.typification_known(id) {
                return Err(Rejection::invalid(
                    format!("closing_typifications[{i}]"),
                    format!("{id} is not one of the account's typifications"),
                ));
            }
        }
        if s.permissions.history_hours > 24 * 365 {
            return Err(Rejection::invalid("permissions.history_hours", "at most a year"));
        }
        check_max("dynamic_fields", &s.dynamic_fields, DYNAMIC_FIELDS_MAX)?;
        for (i, f) in s.dynamic_fields.iter().enumerate() {
            check_id(&f.name).map_err(|e| Rejection::invalid(format!("dynamic_fields[{i}].name"), e.to_string()))?;
        }
        check_unique("dynamic_fields", s.dynamic_fields.iter().map(|f| f.name.as_str()))?;
        check_max("agents", &s.agents, AGENTS_PER_CAMPAIGN_MAX)?;
        check_unique("agents", s.agents.iter().map(|a| a.as_str()))?;
        for (i, agent) in s.agents.iter().enumerate() {
            match self.users.get(agent) {
                None => {
                    return Err(Rejection::invalid(format!("agents[{i}]"), format!("no user {agent}")));
                }
                Some(u) if u.spec.role == Role::Admin => {
                    return Err(Rejection::invalid(
                        format!("agents[{i}]"),
                        format!("{agent} is an admin; campaigns take agents and supervisors"),
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    fn check_key(&self, s: &ApiKeySpec) -> Result<(), Rejection> {
        if self.keys.contains_key(&s.key) {
            return Err(Rejection::AlreadyDefined { entity: format!("API key {}", s.key) });
        }
        if self.keys.len() >= API_KEYS_MAX {
            return Err(Rejection::invalid("key", format!("an account issues at most {API_KEYS_MAX} keys")));
        }
        if s.secret_sha256.len() != 64 || !s.secret_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Rejection::invalid(
                "secret_sha256",
                "the engine fills it (64 hex digits) when it issues the key",
            ));
        }
        let nkey_chars = |c: u8| c.is_ascii_uppercase() || (b'2'..=b'7').contains(&c);
        let nkey_ok = s.nats_nkey.len() == 56 && s.nats_nkey.starts_with('U') && s.nats_nkey.bytes().all(nkey_chars);
        if !s.nats_nkey.is_empty() && !nkey_ok {
            return Err(Rejection::invalid(
                "nats_nkey",
                "the engine fills it (a public user nkey, `U` and 55 base32 characters) when it issues the key",
            ));
        }
        match &s.holder {
            KeyHolder::User(id) => {
                self.user(id).map_err(|_| Rejection::invalid("holder.user", format!("no active user {id}")))?;
                let unredacted = Scopes { commands: Vec::new(), reads: vec![UNREDACTED.to_owned()] };
                if s.scopes != Scopes::default() && s.scopes != unredacted {
                    return Err(Rejection::invalid(
                        "scopes",
                        format!(
                            "a user's key acts with the user's role; its only scope may be reads [\"{UNREDACTED}\"]"
                        ),
                    ));
                }
            }
            KeyHolder::Integration(_) => {
                check_max("scopes.commands", &s.scopes.commands, SCOPES_MAX)?;
                check_max("scopes.reads", &s.scopes.reads, SCOPES_MAX)?;
                for (i, c) in s.scopes.commands.iter().enumerate() {
                    if !Command::TYPE_NAMES.contains(&c.as_str()) {
                        return Err(Rejection::invalid(
                            format!("scopes.commands[{i}]"),
                            format!("no command type `{c}`"),
                        ));
                    }
                    if matches!(c.as_str(), "issue_api_key" | "revoke_api_key" | "record_denied" | "record_read") {
                        return Err(Rejection::invalid(
                            format!("scopes.commands[{i}]"),
                            "keys are issued by admins only: an integration cannot widen its own access",
                        ));
                    }
                }
                for (i, r) in s.scopes.reads.iter().enumerate() {
                    if !READ_SCOPES.contains(&r.as_str()) {
                        return Err(Rejection::invalid(
                            format!("scopes.reads[{i}]"),
                            format!("`{r}` is not one of {}", READ_SCOPES.join(", ")),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The key with this id, unless it was revoked (or never issued).
    pub fn live_key(&self, id: &KeyId) -> Option<&ApiKeySpec> {
        self.keys.get(id).filter(|k| !k.revoked).map(|k| &k.spec)
    }

    // ----- evolve

    /// Applies one recorded event. Asserts it is the next in sequence.
    pub fn evolve(&mut self, record: &Recorded<ConfigEvent>) {
        assert_eq!(record.seq, self.seq + 1, "catalog of {}: event out of sequence", self.account);
        self.seq = record.seq;
        self.recent.note(&record.command, record.seq);
        match &record.event {
            ConfigEvent::AccountConfigured(s) => {
                self.networks = s.allowed_networks.iter().filter_map(|n| Cidr::parse(n).ok()).collect();
                self.settings = s.clone();
            }
            ConfigEvent::ClientDefined(s) | ConfigEvent::ClientUpdated(s) => upsert(&mut self.clients, s.id.clone(), s),
            ConfigEvent::ProjectDefined(s) | ConfigEvent::ProjectUpdated(s) => {
                upsert(&mut self.projects, s.id.clone(), s)
            }
            ConfigEvent::ScheduleDefined(s) | ConfigEvent::ScheduleUpdated(s) => {
                self.schedules.insert(s.id.clone(), s.clone());
            }
            ConfigEvent::ChannelDefined(s) | ConfigEvent::ChannelUpdated(s) => {
                upsert(&mut self.channels, s.id.clone(), s)
            }
            ConfigEvent::UserDefined(s) | ConfigEvent::UserUpdated(s) => upsert(&mut self.users, s.id.clone(), s),
            ConfigEvent::CampaignDefined(s) | ConfigEvent::CampaignUpdated(s) => {
                self.channel_campaign.retain(|_, owner| owner != &s.id);
                for channel in &s.channels {
                    self.channel_campaign.insert(channel.clone(), s.id.clone());
                }
                upsert(&mut self.campaigns, s.id.clone(), s);
            }
            ConfigEvent::Activated(e) => self.set_active(e, true),
            ConfigEvent::Inactivated(e) => self.set_active(e, false),
            ConfigEvent::ApiKeyIssued(s) => {
                self.keys.insert(s.key.clone(), ApiKey { spec: s.clone(), revoked: false });
            }
            ConfigEvent::ApiKeyRevoked(k) => {
                if let Some(key) = self.keys.get_mut(&k.key) {
                    key.revoked = true;
                }
            }
            ConfigEvent::AccessDenied(_) | ConfigEvent::UnredactedRead(_) | ConfigEvent::WebhookRedriven(_) => {}
            ConfigEvent::TeamDefined(s) | ConfigEvent::TeamUpdated(s) => upsert(&mut self.teams, s.id.clone(), s),
            ConfigEvent::MacroDefined(s) | ConfigEvent::MacroUpdated(s) => upsert(&mut self.macros, s.id.clone(), s),
            ConfigEvent::ContactAttributeDefined(s) | ConfigEvent::ContactAttributeUpdated(s) => {
                self.contact_attributes.insert(s.name.clone(), s.clone());
            }
            ConfigEvent::AutomationDefined(s) | ConfigEvent::AutomationUpdated(s) => {
                upsert(&mut self.automations, s.id.clone(), s);
                self.index_automations();
            }
            ConfigEvent::RetentionSet(r) => match &r.campaign {
                None => self.retention_days = r.content_days,
                Some(id) => match r.content_days {
                    Some(days) => {
                        self.campaign_retention_days.insert(id.clone(), days);
                    }
                    None => {
                        self.campaign_retention_days.remove(id);
                    }
                },
            },
            ConfigEvent::SlaModeSet(m) => match (&m.client, &m.campaign, m.mode) {
                (Some(id), _, Some(mode)) => {
                    self.client_sla_modes.insert(id.clone(), mode);
                }
                (Some(id), _, None) => {
                    self.client_sla_modes.remove(id);
                }
                (None, Some(id), Some(mode)) => {
                    self.campaign_sla_modes.insert(id.clone(), mode);
                }
                (None, Some(id), None) => {
                    self.campaign_sla_modes.remove(id);
                }
                (None, None, _) => {}
            },
            ConfigEvent::WebhookDefined(s) | ConfigEvent::WebhookUpdated(s) => {
                self.webhooks.insert(s.id.clone(), s.clone());
            }
        }
    }

    /// Rebuilds the index of active automations by event (patterns compiled
    /// once here; one that no longer compiles is left out).
    fn index_automations(&mut self) {
        self.automations_on = Default::default();
        for entry in self.automations.values().filter(|e| e.active) {
            let Ok(patterns) = automation::check_conditions(&entry.spec.conditions) else { continue };
            self.automations_on[entry.spec.on as usize].push(Armed { spec: entry.spec.clone(), patterns });
        }
    }

    fn set_active(&mut self, e: &EntityRef, active: bool) {
        let slot = match e {
            EntityRef::Client(id) => self.clients.get_mut(id).map(|x| &mut x.active),
            EntityRef::Project(id) => self.projects.get_mut(id).map(|x| &mut x.active),
            EntityRef::Campaign(id) => self.campaigns.get_mut(id).map(|x| &mut x.active),
            EntityRef::Channel(id) => self.channels.get_mut(id).map(|x| &mut x.active),
            EntityRef::User(id) => self.users.get_mut(id).map(|x| &mut x.active),
            EntityRef::Team(id) => self.teams.get_mut(id).map(|x| &mut x.active),
            EntityRef::Macro(id) => self.macros.get_mut(id).map(|x| &mut x.active),
            EntityRef::Automation(id) => self.automations.get_mut(id).map(|x| &mut x.active),
        };
        if let Some(slot) = slot {
            *slot = active;
        }
        if matches!(e, EntityRef::Automation(_)) {
            self.index_automations();
        }
    }
}

fn campaign_typifications(s: &CampaignSpec) -> impl Iterator<Item = &TypificationId> {
    [&s.inactivity_typification, &s.transfer_typification]
        .into_iter()
        .chain(s.ignore_comment_typification.iter())
        .chain(s.closing_typifications.iter())
}

fn active<T>(entry: Option<&Entry<T>>, name: impl Fn() -> String) -> Result<&T, Rejection> {
    match entry {
        None => Err(Rejection::Unknown { entity: name() }),
        Some(e) if !e.active => Err(Rejection::Inactive { entity: name() }),
        Some(e) => Ok(&e.spec),
    }
}

/// Defines keep an entity active; updates keep its status.
fn upsert<K: Ord, T: Clone>(map: &mut BTreeMap<K, Entry<T>>, id: K, spec: &T) {
    map.entry(id).and_modify(|e| e.spec = spec.clone()).or_insert_with(|| Entry { spec: spec.clone(), active: true });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_blocks() {
        let n = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(n.contains("10.1.200.3".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("2001:db8::/32").unwrap().contains("2001:db8::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("192.168.1.7").unwrap().contains("192.168.1.7".parse().unwrap()));
    }

    struct Idle;
    impl Occupancy for Idle {
        fn active_conversations(&self, _: &CampaignId) -> u32 {
            0
        }
        fn team_conversations(&self, _: &TeamId) -> u32 {
            0
        }
    }

    /// A 24/7 campaign names no schedule and no out-of-hours policy: it gets
    /// the built-in `always` schedule and queues (nothing is ever out of hours).
    /// Account `acme` with a client, a project and campaign `ventas` (no
    /// schedule), then `more`, each decided as the system and applied.
    fn configured(more: &[serde_json::Value]) -> Catalog {
        let account = AccountId::new("acme").unwrap();
        let mut catalog = Catalog::new(account.clone());
        let commands = [
            serde_json::json!({"type": "configure_account", "name": "Acme",
                "typifications": [{"id": "venta", "name": "Venta"}, {"id": "i", "name": "I"}, {"id": "t", "name": "T"}]}),
            serde_json::json!({"type": "define_client", "id": "acme", "name": "Acme", "code": "1", "sla_optimal_secs": 60,
                "sla_low_secs": 180, "max_inactivity_secs": 600, "inactivity_attempts": 0}),
            serde_json::json!({"type": "define_project", "id": "p", "client": "acme", "name": "P"}),
            serde_json::json!({"type": "define_campaign", "id": "ventas", "client": "acme", "project": "p", "name": "Ventas",
                "inactivity_typification": "i", "transfer_typification": "t", "closing_typifications": ["venta"]}),
        ];
        for (n, command) in commands.iter().chain(more).enumerate() {
            let envelope = CommandEnvelope {
                id: crate::ids::CommandId::new(&format!("c{n}")).unwrap(),
                account: account.clone(),
                actor: Actor::system("setup"),
                command: Command::from_json(command.clone()).unwrap(),
            };
            let decided = catalog.decide(&envelope, Timestamp::from_millis(0), &Idle).unwrap();
            decided.events().iter().for_each(|r| catalog.evolve(r));
        }
        catalog
    }

    #[test]
    fn a_campaign_without_hours_is_open_around_the_clock() {
        let catalog = configured(&[]);
        let campaign = &catalog.campaigns[&CampaignId::new("ventas").unwrap()].spec;
        assert_eq!(campaign.schedule.as_str(), crate::schedule::ALWAYS);
        assert_eq!(campaign.out_of_hours.action, OutOfHoursAction::Enqueue);
        let hours = catalog.schedule(&campaign.schedule).unwrap();
        assert!(hours.week.days().iter().all(|(_, ranges)| ranges.len() == 1), "open every day");
    }

    /// Retention: the account's period and a campaign's override, the
    /// campaign's winning; bounds checked; an integration may not set one
    /// (a period destroys content when it passes).
    #[test]
    fn retention_is_bounded_overridden_by_campaign_and_kept_from_integrations() {
        let catalog = configured(&[
            serde_json::json!({"type": "set_retention", "content_days": 30}),
            serde_json::json!({"type": "set_retention", "campaign": "ventas", "content_days": 7}),
        ]);
        let envelope = |n: usize, actor: Actor, command: serde_json::Value| CommandEnvelope {
            id: crate::ids::CommandId::new(&format!("r{n}")).unwrap(),
            account: catalog.account.clone(),
            actor,
            command: Command::from_json(command).unwrap(),
        };
        let ventas = CampaignId::new("ventas").unwrap();
        assert_eq!(catalog.retention_days(&ventas), Some(7));
        assert_eq!(catalog.retention_days(&CampaignId::new("other").unwrap()), Some(30));
        let refused = |n: usize, actor: Actor, command: serde_json::Value| {
            catalog.decide(&envelope(n, actor, command), Timestamp::from_millis(0), &Idle).unwrap_err().to_string()
        };
        let system = || Actor::system("setup");
        let too_long = refused(10, system(), serde_json::json!({"type": "set_retention", "content_days": 3651}));
        assert!(too_long.contains("content_days"), "{too_long}");
        let zero = refused(11, system(), serde_json::json!({"type": "set_retention", "content_days": 0}));
        assert!(zero.contains("content_days"), "{zero}");
        let unknown =
            refused(12, system(), serde_json::json!({"type": "set_retention", "campaign": "nope", "content_days": 5}));
        assert!(unknown.contains("no campaign nope"), "{unknown}");
        let integration = Actor::Integration { id: crate::ids::IntegrationId::new("crm").unwrap(), ip: None };
        let kept = refused(13, integration, serde_json::json!({"type": "set_retention", "content_days": 1}));
        assert!(kept.contains("setting a content retention"), "{kept}");
    }

    /// Webhooks: defined by an admin (or the system), never by an
    /// integration (it could send itself every event); URLs, types and
    /// secrets checked; the secret masked in the JSON view.
    #[test]
    fn webhooks_are_checked_and_kept_from_integrations() {
        let account = AccountId::new("acme").unwrap();
        let mut catalog = Catalog::new(account.clone());
        let at = Timestamp::from_millis(0);
        let mut run = |id: &str, actor: Actor, command: serde_json::Value| {
            let envelope = CommandEnvelope {
                id: crate::ids::CommandId::new(id).unwrap(),
                account: account.clone(),
                actor,
                command: Command::from_json(command).unwrap(),
            };
            let decided = catalog.decide(&envelope, at, &Idle);
            if let Ok(Decision::Commit(records)) = &decided {
                records.iter().for_each(|r| catalog.evolve(r));
            }
            decided.map(|_| ())
        };
        let system = Actor::system("setup");
        run("a", system.clone(), serde_json::json!({"type": "configure_account", "name": "Acme"})).unwrap();
        let hook = |url: &str, events: serde_json::Value| {
            serde_json::json!({"type": "define_webhook", "id": "crm", "url": url, "events": events,
                               "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"})
        };
        let crm = Actor::Integration { id: IntegrationId::new("crm").unwrap(), ip: None };
        let refused = run("w0", crm, hook("https://crm.example.com/in", serde_json::json!([])));
        assert!(matches!(refused, Err(Rejection::Forbidden { .. })), "{refused:?}");
        for (url, events) in [
            ("ftp://x/in", serde_json::json!([])),
            ("https://user:pw@x/in", serde_json::json!([])),
            ("https://crm.example.com/in", serde_json::json!(["conversation_exploded"])),
        ] {
            let refused = run("w1", system.clone(), hook(url, events));
            assert!(matches!(refused, Err(Rejection::Invalid { .. })), "{url}: {refused:?}");
        }
        run("w2", system.clone(), hook("https://crm.example.com/in", serde_json::json!(["conversation_closed"])))
            .unwrap();
        // Automations act as the engine: an integration may not define or switch one.
        let crm = Actor::Integration { id: IntegrationId::new("crm").unwrap(), ip: None };
        let automation = serde_json::json!({"type": "define_automation", "id": "a1", "name": "A", "on": "label_added",
            "actions": [{"close": "venta"}]});
        let refused = run("a1", crm.clone(), automation.clone());
        assert!(matches!(refused, Err(Rejection::Forbidden { .. })), "{refused:?}");
        run("a2", system.clone(), automation).unwrap();
        let refused = run("a3", crm, serde_json::json!({"type": "inactivate", "automation": "a1"}));
        assert!(matches!(refused, Err(Rejection::Forbidden { .. })), "{refused:?}");
        assert_eq!(catalog.webhooks.len(), 1);
        let secret = &catalog.webhooks[&WebhookId::new("crm").unwrap()].secret;
        assert_eq!(serde_json::to_value(secret).unwrap(), WebhookSecret::MASKED);
        assert_eq!(secret.key().len(), 24);
        assert!(WebhookSecret::parse("whsec_c2hvcnQ=").is_err(), "too short");
    }
}
