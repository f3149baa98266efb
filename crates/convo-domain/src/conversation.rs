//! The conversation aggregate: one per conversation, single writer.
//!
//! `decide` checks a command against the state and the account's catalog and
//! returns the events it causes (or the rule it breaks); `evolve` applies one
//! event. The SLA, inactivity and auto-resolve rules of SPEC §5 live here, as
//! deadlines: [`Conversation::next_deadline`] says when the next one is due and
//! a `tick` command at or after that instant fires everything due.
//!
//! Thresholds (SLA, inactivity, auto-resolve) are captured in a [`Policy`] when
//! the conversation opens or moves to another campaign, so the aggregate can
//! answer `next_deadline()` from its own events. Typifications, permissions and
//! automated messages are read from the catalog when a command is decided.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::aggregate::{Actor, Decision, Emitter, RecentCommands, Recorded};
use crate::automation::{self, Action, Condition, On};
use crate::command::{ATTACHMENTS_PER_MESSAGE_MAX, Attachment, Command, CommandEnvelope, TransferTarget};
use crate::config::{
    CampaignSpec, Catalog, ChannelSpec, ClientSpec, NAME_BYTES_MAX, Role, STATE_AVAILABLE, SlaMode, UserSpec,
};
use crate::ids::{
    AutomationId, CampaignId, ChannelId, ClientId, ContactId, ConversationId, MacroId, ProjectId, TeamId,
    TypificationId, UserId,
};
use crate::live::Floor;
use crate::rejection::Rejection;
use crate::schedule::ScheduleSpec;
use crate::template::{self, TEXT_BYTES_MAX, Values};
use crate::time::{MS_PER_SEC, Timestamp};

/// The longest value of a dynamic field, in bytes.
pub const FIELD_VALUE_BYTES_MAX: usize = 1024;
/// At most this many labels on one conversation.
pub const LABELS_PER_CONVERSATION_MAX: usize = 32;
/// At most this many timers fire in one tick (a tick long overdue fires them
/// in order; the conversation closes long before this).
pub const TIMER_FIRINGS_PER_TICK_MAX: usize = 256;

const SECS_PER_DAY: u64 = 86_400;

/// The thresholds a conversation runs on, taken from its client (and the
/// account's auto-resolve setting) when it opened or changed campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Policy {
    pub sla_optimal_secs: u32,
    pub sla_low_secs: u32,
    pub inactivity_secs: u32,
    pub inactivity_attempts: u32,
    /// 0: never auto-resolve.
    pub auto_resolve_after_days: u32,
}

impl Policy {
    pub fn of(client: &ClientSpec, catalog: &Catalog) -> Self {
        Self {
            sla_optimal_secs: client.sla_optimal_secs,
            sla_low_secs: client.sla_low_secs,
            inactivity_secs: client.max_inactivity_secs,
            inactivity_attempts: client.inactivity_attempts,
            auto_resolve_after_days: catalog.settings.auto_resolve_after_days,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
}

/// Which automated message a system message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Welcome,
    OutOfHours,
    InactivityAlert,
    TransferNotice,
    Closing,
    Survey,
    /// An automation's message (appended).
    Automation,
}

impl Trigger {
    fn rule(self) -> &'static str {
        match self {
            Trigger::Welcome => "welcome_message",
            Trigger::OutOfHours => "out_of_hours_message",
            Trigger::InactivityAlert => "inactivity_alert_message",
            Trigger::TransferNotice => "transfer_notice_message",
            Trigger::Closing => "closing_message",
            Trigger::Survey => "survey_message",
            Trigger::Automation => "automation_message",
        }
    }
}

/// Who wrote a message sent to the contact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Author {
    /// A human: the assigned agent or a supervisor.
    Agent(UserId),
    /// A conversational bot (not human: it ends no SLA wait).
    Bot(String),
    /// An automated message (never starts, ends or restarts anything).
    System(Trigger),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Threshold {
    Optimal,
    Low,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SlaClass {
    Optimal,
    Low,
    Breached,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// Closed by the assigned agent or a supervisor.
    Resolved,
    /// Closed by an integration acting as the system.
    System,
    /// The contact stayed silent through every warning.
    Inactivity,
    /// No human message for `auto_resolve_after_days`.
    AutoResolve,
    /// Opened while the campaign was closed, and the campaign closes such conversations.
    OutOfHours,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Opened {
    pub contact: ContactId,
    #[serde(default)]
    pub contact_name: Option<String>,
    pub channel: ChannelId,
    pub campaign: CampaignId,
    pub client: ClientId,
    pub project: ProjectId,
    pub direction: Direction,
    /// Opened while the campaign's schedule was closed.
    pub out_of_hours: bool,
    /// When the SLA clock of the first wait starts (the next opening, out of hours).
    pub sla_clock_starts_at: Timestamp,
    pub policy: Policy,
}

/// A move to another campaign, with the thresholds of its client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CampaignChange {
    pub campaign: CampaignId,
    pub client: ClientId,
    pub project: ProjectId,
    pub policy: Policy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Destination {
    Agent(UserId),
    Campaign(CampaignChange),
    /// The team's queue in the same campaign (appended).
    Team(TeamId),
}

/// What happened in a conversation. Variants and fields are only appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConversationEvent {
    ConversationOpened(Opened),
    MessageReceived {
        text: String,
        attachments: Vec<Attachment>,
    },
    MessageSent {
        author: Author,
        text: String,
        attachments: Vec<Attachment>,
        /// The canned response used, when the agent typed `/shortcode`.
        shortcode: Option<String>,
    },
    ConversationQueued {
        campaign: CampaignId,
        /// Queue order: oldest wait first.
        waiting_since: Timestamp,
    },
    AgentAssigned {
        agent: UserId,
        /// The segment this assignment starts (1 for the first agent).
        segment: u32,
    },
    ConversationTransferred {
        from_agent: Option<UserId>,
        /// The segment the transfer ends (0 when no agent had it).
        segment: u32,
        typification: TypificationId,
        to: Destination,
    },
    SlaThresholdCrossed {
        threshold: Threshold,
        wait_started_at: Timestamp,
    },
    ResponseRecorded {
        agent: UserId,
        wait_started_at: Timestamp,
        /// Whole seconds, rounded up (so `optimal` means ≤ `sla_optimal_secs`).
        response_secs: u64,
        class: SlaClass,
        /// The conversation's first response.
        first: bool,
    },
    InactivityWarningSent {
        attempt: u32,
        silent_since: Timestamp,
    },
    AgentInactivityAlerted {
        agent: UserId,
        wait_started_at: Timestamp,
    },
    DynamicFieldSet {
        field: String,
        value: String,
    },
    LabelAdded {
        label: String,
    },
    LabelRemoved {
        label: String,
    },
    ConversationClosed {
        reason: CloseReason,
        typification: Option<TypificationId>,
        /// The agent who had it, if any.
        agent: Option<UserId>,
        segment: u32,
    },
    SurveyAnswered {
        rating: u8,
        solved: bool,
    },
    // appended: the order is part of the encoding
    /// How the conversation's SLA waits are counted from here on: in
    /// business hours on the campaign's schedule (captured here, like the
    /// thresholds), or elapsed time again. Recorded when a conversation
    /// opens in a business-hours campaign, and when a move to another
    /// campaign changes the mode or the schedule.
    SlaClockSet {
        mode: SlaMode,
        schedule: Option<ScheduleSpec>,
    },
    /// An agent ran a macro; its actions' events follow in the same commit.
    MacroApplied {
        #[serde(rename = "macro")]
        macro_id: MacroId,
        actions: u32,
    },
    /// An automation's event and conditions held; its actions' events (or
    /// refusals) follow in the same commit.
    AutomationTriggered {
        automation: AutomationId,
        on: On,
    },
    /// An automation's action broke a rule: nothing of it applied.
    AutomationActionRefused {
        automation: AutomationId,
        /// The action's place in the automation's list, from 0.
        action: u32,
        code: String,
        reason: String,
    },
    /// A chain of automation runs reached a bound (`command`: runs in one
    /// command; `conversation`: runs in its life; `events`: what the runs
    /// added to the commit): this automation, and any after it, did not run.
    AutomationsStopped {
        automation: AutomationId,
        bound: String,
    },
    /// A macro's or an automation's action asks the contact book to set an
    /// attribute of the conversation's contact (checked against the
    /// definition and the book when decided): the engine then sends
    /// `set_contact_attribute` to the book, under an id derived from this
    /// event (`_contact-<event id>`).
    ContactAttributeRequested {
        name: String,
        value: String,
    },
    // appended: personal data (SPEC §13)
    /// The conversation closed under a content retention period (its
    /// campaign's, else its account's: `set_retention`): its content
    /// expires at `expires_at`, `days` after the closure.
    ContentRetentionScheduled {
        expires_at: Timestamp,
        days: u32,
    },
    /// The retention period passed (recorded by the engine's timer, actor
    /// `retention`): the conversation's content is gone. On a running engine
    /// its key is destroyed, so its texts, the contact name it carried and
    /// its field values read `[erased]` everywhere; ids, times, SLA facts and
    /// typifications stay.
    ContentExpired {
        expires_at: Timestamp,
    },
    /// The conversation opened for a handle no contact held (SPEC §13): the
    /// engine made the contact `contact` for it and then sends
    /// `define_contact` to the book (the handle as the identity on
    /// `channel`, the name if the message gave one, else the handle), under
    /// an id derived from this event (`_contact-<event id>`). `handle` and
    /// `name` are personal data.
    ContactRequested {
        contact: ContactId,
        channel: ChannelId,
        handle: String,
        #[serde(default)]
        name: Option<String>,
    },
}

impl ConversationEvent {
    /// The event's `type` in its JSON view.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::ConversationOpened(_) => "conversation_opened",
            Self::MessageReceived { .. } => "message_received",
            Self::MessageSent { .. } => "message_sent",
            Self::ConversationQueued { .. } => "conversation_queued",
            Self::AgentAssigned { .. } => "agent_assigned",
            Self::ConversationTransferred { .. } => "conversation_transferred",
            Self::SlaThresholdCrossed { .. } => "sla_threshold_crossed",
            Self::ResponseRecorded { .. } => "response_recorded",
            Self::InactivityWarningSent { .. } => "inactivity_warning_sent",
            Self::AgentInactivityAlerted { .. } => "agent_inactivity_alerted",
            Self::DynamicFieldSet { .. } => "dynamic_field_set",
            Self::LabelAdded { .. } => "label_added",
            Self::LabelRemoved { .. } => "label_removed",
            Self::ConversationClosed { .. } => "conversation_closed",
            Self::SurveyAnswered { .. } => "survey_answered",
            Self::SlaClockSet { .. } => "sla_clock_set",
            Self::MacroApplied { .. } => "macro_applied",
            Self::AutomationTriggered { .. } => "automation_triggered",
            Self::AutomationActionRefused { .. } => "automation_action_refused",
            Self::AutomationsStopped { .. } => "automations_stopped",
            Self::ContactAttributeRequested { .. } => "contact_attribute_requested",
            Self::ContentRetentionScheduled { .. } => "content_retention_scheduled",
            Self::ContentExpired { .. } => "content_expired",
            Self::ContactRequested { .. } => "contact_requested",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Status {
    /// Nothing recorded yet.
    #[default]
    New,
    Queued,
    Assigned,
    Closed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub contact: ContactId,
    pub contact_name: Option<String>,
    pub channel: ChannelId,
    pub campaign: CampaignId,
    pub client: ClientId,
    pub project: ProjectId,
    pub policy: Policy,
    pub opened_at: Timestamp,
    pub sla_clock_starts_at: Timestamp,
    /// The schedule whose open time SLA waits count, in business-hours mode.
    pub sla_hours: Option<Arc<ScheduleSpec>>,
    /// The team the conversation was routed or transferred to, if any.
    pub team: Option<TeamId>,
}

/// An open SLA wait: the contact wrote and no human agent has answered yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    pub started_at: Timestamp,
    /// When the optimal and low thresholds are passed (`None`: never, a
    /// business-hours schedule that does not open for years).
    pub optimal_at: Option<Timestamp>,
    pub low_at: Option<Timestamp>,
    pub optimal_crossed: bool,
    pub low_crossed: bool,
    pub agent_alerted: bool,
}

/// The conversation waits on the contact since `since`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Silence {
    pub since: Timestamp,
    pub warnings: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Survey {
    #[default]
    NotSent,
    Sent,
    Answered,
}

/// A deadline of the conversation, in the order simultaneous ones fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Timer {
    SlaOptimal,
    SlaLow,
    AgentInactivity,
    ContactInactivity,
    AutoResolve,
    /// A closed conversation's content retention ends.
    ContentExpiry,
}

/// The state of one conversation, rebuilt from its events alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub id: ConversationId,
    pub seq: u64,
    pub status: Status,
    pub facts: Option<Facts>,
    pub assignee: Option<UserId>,
    pub assigned_at: Timestamp,
    /// The current (or last) segment; 0 before the first assignment.
    pub segment: u32,
    pub wait: Option<Wait>,
    pub responses: u32,
    pub silence: Option<Silence>,
    /// The latest message by a human (contact or agent).
    pub last_human_at: Timestamp,
    /// Writers, fields and labels, when the conversation has any.
    extras: Option<Box<Extras>>,
    pub survey: Survey,
    pub messages: u32,
    /// How many times automations ran in this conversation.
    pub automation_runs: u32,
    /// When its content expires (closed under a retention period), until it has.
    pub content_expires_at: Option<Timestamp>,
    /// Its content expired (SPEC §13): what it held reads `[erased]`.
    pub content_expired: bool,
    recent: RecentCommands,
}

/// What a conversation holds only once people work on it: boxed apart, so
/// the many that wait in a queue cost a pointer, not three empty collections.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Extras {
    /// Users who wrote at least once (for reply-before-close).
    writers: Vec<UserId>,
    fields: BTreeMap<String, String>,
    labels: BTreeSet<String>,
}

static NO_FIELDS: BTreeMap<String, String> = BTreeMap::new();
static NO_LABELS: BTreeSet<String> = BTreeSet::new();

/// What a command may read besides the conversation: the account's
/// configuration and the live floor (agent presence and load).
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub catalog: &'a Catalog,
    pub floor: &'a Floor,
    /// The account's contacts (for attributes a campaign requires at close,
    /// and the contact holding an inbound message's handle).
    pub contacts: Option<&'a crate::contact::ContactBook>,
    /// Contacts the engine made for a new handle whose definition the book
    /// has not recorded yet (`contact_requested` → `define_contact`), so a
    /// second message from the same handle names the same contact.
    pub pending_contacts: Option<&'a BTreeMap<crate::contact::Identity, ContactId>>,
    /// Contacts made for new handles by decisions whose commits are not
    /// applied yet (the engine's appends under way or of unknown outcome):
    /// a message naming such a handle names the same contact and asks for
    /// it again (the commit that made it may fail; a second request of the
    /// same contact changes nothing).
    pub claimed_contacts: Option<&'a BTreeMap<crate::contact::Identity, ContactId>>,
}

impl<'a> Context<'a> {
    /// A context with no contact book (tests, tools that decide alone).
    pub fn bare(catalog: &'a Catalog, floor: &'a Floor) -> Self {
        Self { catalog, floor, contacts: None, pending_contacts: None, claimed_contacts: None }
    }

    /// The contact holding an identity: the book's, else one the engine
    /// made and the book has not recorded yet.
    pub fn holder(&self, identity: &crate::contact::Identity) -> Option<&'a ContactId> {
        self.contacts
            .and_then(|book| book.holder(identity))
            .or_else(|| self.pending_contacts.and_then(|pending| pending.get(identity)))
    }
}

/// Who an inbound message names: its contact id, or the contact holding its
/// handle, or — for a handle no contact holds — a contact the engine makes
/// (`new`: the identity to record in the book).
fn inbound_contact(
    ctx: &Context<'_>,
    envelope: &CommandEnvelope,
    c: &crate::command::ReceiveMessage,
) -> Result<(ContactId, Option<crate::contact::Identity>), Rejection> {
    match (&c.contact, &c.handle) {
        (Some(id), None) => Ok((id.clone(), None)),
        (None, Some(handle)) => {
            crate::contact::check_handle("handle", handle)?;
            let identity = crate::contact::Identity { channel: c.channel.clone(), handle: handle.clone() };
            if let Some(id) = ctx.holder(&identity) {
                return Ok((id.clone(), None));
            }
            let id = match ctx.claimed_contacts.and_then(|claimed| claimed.get(&identity)) {
                Some(id) => id.clone(),
                None => crate::contact::minted_contact_id(&envelope.account, &c.conversation, &envelope.id),
            };
            Ok((id, Some(identity)))
        }
        (Some(_), Some(_)) => {
            Err(Rejection::invalid("handle", "name the contact by `contact` or by `handle`, not both"))
        }
        (None, None) => Err(Rejection::invalid(
            "contact",
            "name the contact by `contact` (an opaque id) or by `handle` (its address on the channel)",
        )),
    }
}

/// The actor of a command as the rules see it.
enum Who<'a> {
    Contact,
    /// An agent; `assigned` when it is this conversation's agent.
    Agent(&'a UserSpec, bool),
    /// A supervisor of the campaign, or an admin.
    Supervisor(&'a UserSpec),
    System,
}

fn rule(name: &str) -> Actor {
    Actor::system(name)
}

/// Contact commands come from that contact, or from the system (a gateway).
fn require_contact(actor: &Actor, contact: &ContactId, action: &'static str) -> Result<(), Rejection> {
    match actor {
        Actor::Contact(id) if id == contact => Ok(()),
        trusted if trusted.is_trusted() => Ok(()),
        _ => Err(Rejection::Forbidden { action, needed: "the conversation's contact or the system" }),
    }
}

/// Where a conversation comes in: the channel, the active campaign that owns
/// it, and that campaign's client (whose policy the conversation runs on).
struct Entrance<'a> {
    channel: &'a ChannelSpec,
    campaign: &'a CampaignSpec,
    client: &'a ClientSpec,
}

impl<'a> Entrance<'a> {
    fn of(catalog: &'a Catalog, channel: &ChannelId) -> Result<Self, Rejection> {
        let spec = catalog.channel(channel)?;
        let campaign =
            catalog.channel_campaign.get(channel).ok_or_else(|| Rejection::ChannelWithoutCampaign(channel.clone()))?;
        let campaign = catalog.campaign(campaign)?;
        let client = catalog.client(&campaign.client)?;
        catalog.project(&campaign.project)?;
        Ok(Self { channel: spec, campaign, client })
    }

    fn opened(
        &self,
        catalog: &Catalog,
        contact: &ContactId,
        contact_name: &Option<String>,
        direction: Direction,
        sla_clock_starts_at: Timestamp,
        out_of_hours: bool,
    ) -> Opened {
        Opened {
            contact: contact.clone(),
            contact_name: contact_name.clone(),
            channel: self.channel.id.clone(),
            campaign: self.campaign.id.clone(),
            client: self.client.id.clone(),
            project: self.campaign.project.clone(),
            direction,
            out_of_hours,
            sla_clock_starts_at,
            policy: Policy::of(self.client, catalog),
        }
    }
}

fn check_text(text: &str, attachments: &[Attachment]) -> Result<(), Rejection> {
    if text.trim().is_empty() && attachments.is_empty() {
        return Err(Rejection::EmptyMessage);
    }
    if text.len() > TEXT_BYTES_MAX {
        return Err(Rejection::invalid("text", format!("at most {TEXT_BYTES_MAX} bytes, found {}", text.len())));
    }
    if attachments.len() > ATTACHMENTS_PER_MESSAGE_MAX {
        return Err(Rejection::invalid("attachments", format!("at most {ATTACHMENTS_PER_MESSAGE_MAX}")));
    }
    for (i, a) in attachments.iter().enumerate() {
        if a.url.is_empty() || a.url.len() > TEXT_BYTES_MAX {
            return Err(Rejection::invalid(format!("attachments[{i}].url"), "must be 1 to 4096 bytes"));
        }
    }
    Ok(())
}

/// The system actor automations act as.
const AUTOMATION: &str = "automation";

/// What personal data reads once its key is gone (SPEC §13).
pub const ERASED: &str = "[erased]";

/// Records when a conversation closing now under `campaign` loses its
/// content, if its campaign (else its account) has a retention period.
fn schedule_retention(ctx: Context<'_>, campaign: Option<&CampaignId>, out: &mut Emitter<ConversationEvent>) {
    let Some(days) = campaign.and_then(|c| ctx.catalog.retention_days(c)) else { return };
    let expires_at = out.at().plus_secs(u64::from(days) * SECS_PER_DAY);
    out.emit_as(rule("retention"), ConversationEvent::ContentRetentionScheduled { expires_at, days });
}

/// The event an automation can run on that `event` is.
fn trigger_of(event: &ConversationEvent) -> Option<On> {
    Some(match event {
        ConversationEvent::ConversationOpened(_) => On::ConversationOpened,
        ConversationEvent::MessageReceived { .. } => On::MessageReceived,
        ConversationEvent::ConversationClosed { .. } => On::ConversationClosed,
        ConversationEvent::LabelAdded { .. } => On::LabelAdded,
        ConversationEvent::SlaThresholdCrossed { .. } => On::SlaCrossed,
        ConversationEvent::InactivityWarningSent { .. } => On::InactivityWarned,
        _ => return None,
    })
}

/// The message text an event at `i` is about: its own (a message), or, for
/// an opening, the message that opened it.
fn event_text(events: &[Recorded<ConversationEvent>], i: usize) -> Option<&str> {
    fn message(e: &Recorded<ConversationEvent>) -> Option<&str> {
        match &e.event {
            ConversationEvent::MessageReceived { text, .. } => Some(text.as_str()),
            _ => None,
        }
    }
    match &events[i].event {
        ConversationEvent::ConversationOpened(_) => events[i..].iter().find_map(message),
        _ => message(&events[i]),
    }
}

/// Whether the text holds an emoji (pictographs and flags, symbols, dingbats).
fn has_emoji(text: &str) -> bool {
    text.chars().any(|c| matches!(u32::from(c), 0x1F000..=0x1FAFF | 0x2600..=0x27BF | 0x2B50..=0x2B55 | 0xFE0F))
}

impl Conversation {
    pub fn new(id: ConversationId) -> Self {
        Self {
            id,
            seq: 0,
            status: Status::New,
            facts: None,
            assignee: None,
            assigned_at: Timestamp::default(),
            segment: 0,
            wait: None,
            responses: 0,
            silence: None,
            last_human_at: Timestamp::default(),
            extras: None,
            survey: Survey::NotSent,
            messages: 0,
            automation_runs: 0,
            content_expires_at: None,
            content_expired: false,
            recent: RecentCommands::default(),
        }
    }

    /// Users who wrote at least once (for reply-before-close).
    pub fn writers(&self) -> &[UserId] {
        self.extras.as_ref().map_or(&[], |e| &e.writers)
    }

    /// Replaces the personal values this state holds (the contact name it
    /// opened with, the dynamic fields' values) with `erased`: what the log
    /// reads for them once their keys are destroyed.
    pub fn scrub_personal_data(&mut self, erased: &str) {
        if let Some(name) = self.facts.as_mut().and_then(|f| f.contact_name.as_mut()) {
            *name = erased.to_owned();
        }
        if let Some(extras) = self.extras.as_mut() {
            extras.fields.values_mut().for_each(|v| *v = erased.to_owned());
        }
    }

    /// The dynamic fields set, by name.
    pub fn fields(&self) -> &BTreeMap<String, String> {
        self.extras.as_ref().map_or(&NO_FIELDS, |e| &e.fields)
    }

    pub fn labels(&self) -> &BTreeSet<String> {
        self.extras.as_ref().map_or(&NO_LABELS, |e| &e.labels)
    }

    fn extras_mut(&mut self) -> &mut Extras {
        self.extras.get_or_insert_with(Box::default)
    }

    /// A copy to decide ahead on (within one decision): everything but the
    /// memory of command ids, which a decision in progress never reads.
    fn scratch(&self) -> Self {
        Self {
            id: self.id.clone(),
            seq: self.seq,
            status: self.status,
            facts: self.facts.clone(),
            assignee: self.assignee.clone(),
            assigned_at: self.assigned_at,
            segment: self.segment,
            wait: self.wait,
            responses: self.responses,
            silence: self.silence,
            last_human_at: self.last_human_at,
            extras: self.extras.clone(),
            survey: self.survey,
            messages: self.messages,
            automation_runs: self.automation_runs,
            content_expires_at: self.content_expires_at,
            content_expired: self.content_expired,
            recent: RecentCommands::default(),
        }
    }

    /// Rebuilds a conversation from its events.
    pub fn replay<'a>(id: ConversationId, events: impl IntoIterator<Item = &'a Recorded<ConversationEvent>>) -> Self {
        let mut state = Self::new(id);
        for event in events {
            state.evolve(event);
        }
        state
    }

    pub fn is_open(&self) -> bool {
        matches!(self.status, Status::Queued | Status::Assigned)
    }

    // ------------------------------------------------------------ deadlines

    /// The earliest deadline and what it is, if any.
    pub fn due_timer(&self) -> Option<(Timestamp, Timer)> {
        if !self.is_open() {
            return self
                .content_expires_at
                .filter(|_| self.status == Status::Closed)
                .map(|at| (at, Timer::ContentExpiry));
        }
        let policy = self.facts.as_ref()?.policy;
        let mut best: Option<(Timestamp, Timer)> = None;
        let mut offer = |at: Timestamp, timer: Timer| {
            if best.is_none_or(|b| (at, timer) < b) {
                best = Some((at, timer));
            }
        };
        if let Some(wait) = &self.wait {
            if let Some(at) = wait.optimal_at.filter(|_| !wait.optimal_crossed) {
                offer(at, Timer::SlaOptimal);
            }
            if let Some(at) = wait.low_at.filter(|_| !wait.low_crossed) {
                offer(at, Timer::SlaLow);
            }
            if self.assignee.is_some() && !wait.agent_alerted {
                let from = wait.started_at.max(self.assigned_at);
                offer(from.plus_secs(policy.inactivity_secs.into()), Timer::AgentInactivity);
            }
        } else if let Some(silence) = &self.silence {
            let periods = u64::from(silence.warnings) + 1;
            offer(silence.since.plus_secs(periods * u64::from(policy.inactivity_secs)), Timer::ContactInactivity);
        }
        if policy.auto_resolve_after_days > 0 {
            offer(
                self.last_human_at.plus_secs(u64::from(policy.auto_resolve_after_days) * SECS_PER_DAY),
                Timer::AutoResolve,
            );
        }
        best
    }

    /// When the next timer is due: send a `tick` at (or after) this instant.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.due_timer().map(|(at, _)| at)
    }

    // ------------------------------------------------------------ decide

    /// Decides a command at `now`. A rejection names the broken rule and
    /// produces nothing; a repeated command id returns its original events' range.
    pub fn decide(
        &self,
        ctx: Context<'_>,
        envelope: &CommandEnvelope,
        now: Timestamp,
    ) -> Result<Decision<ConversationEvent>, Rejection> {
        if let Some((first_seq, last_seq)) = self.recent.find(&envelope.id) {
            return Ok(Decision::Duplicate { first_seq, last_seq });
        }
        let mut events = self.decide_fresh(ctx, envelope, now)?;
        if ctx.catalog.has_automations() && !events.is_empty() {
            self.automate(ctx, envelope, now, &mut events);
        }
        Ok(Decision::Commit(events))
    }

    /// Decides a command as if it were new (a macro's and an automation's
    /// actions are decided so, under the command that runs them).
    fn decide_fresh(
        &self,
        ctx: Context<'_>,
        envelope: &CommandEnvelope,
        now: Timestamp,
    ) -> Result<Vec<Recorded<ConversationEvent>>, Rejection> {
        let mut out = Emitter::new(self.seq, now, &envelope.id, &envelope.actor);
        match &envelope.command {
            Command::ReceiveMessage(c) => {
                let (contact, new) = inbound_contact(&ctx, envelope, c)?;
                if self.status == Status::New {
                    self.open_inbound(ctx, envelope, c, (&contact, new), now, &mut out)?;
                } else {
                    let facts = self.require_open()?;
                    require_contact(&envelope.actor, &contact, "receive_message")?;
                    if facts.contact != contact || facts.channel != c.channel {
                        return Err(Rejection::NotThisConversation {
                            conversation: self.id.clone(),
                            expected: facts.contact.to_string(),
                            channel: facts.channel.clone(),
                        });
                    }
                    check_text(&c.text, &c.attachments)?;
                    out.emit(ConversationEvent::MessageReceived {
                        text: c.text.clone(),
                        attachments: c.attachments.clone(),
                    });
                }
            }
            Command::StartOutbound(c) => self.open_outbound(ctx, envelope, c, now, &mut out)?,
            Command::SendMessage(c) => {
                let facts = self.require_open()?;
                let campaign = ctx.catalog.campaign(&facts.campaign)?;
                let user = match self.who(ctx, &envelope.actor)? {
                    Who::Agent(user, true) | Who::Supervisor(user) => user,
                    Who::Agent(..) => return Err(self.not_assigned()),
                    _ => {
                        return Err(Rejection::Forbidden {
                            action: "send_message",
                            needed: "a user: the assigned agent or a supervisor",
                        });
                    }
                };
                check_text(&c.text, &c.attachments)?;
                if !c.attachments.is_empty() && !campaign.permissions.allow_external_resources {
                    return Err(Rejection::AttachmentsNotAllowed(campaign.id.clone()));
                }
                if !campaign.permissions.allow_emoji && has_emoji(&c.text) {
                    return Err(Rejection::EmojiNotAllowed(campaign.id.clone()));
                }
                let (text, shortcode) = self.expand_shortcode(ctx, &c.text, user)?;
                out.emit(ConversationEvent::MessageSent {
                    author: Author::Agent(user.id.clone()),
                    text,
                    attachments: c.attachments.clone(),
                    shortcode,
                });
                if let Some(wait) = &self.wait {
                    let ms = match &facts.sla_hours {
                        Some(schedule) => schedule.open_millis(wait.started_at, now),
                        None => now.millis_since(wait.started_at),
                    };
                    let policy = facts.policy;
                    let class = if ms <= u64::from(policy.sla_optimal_secs) * MS_PER_SEC as u64 {
                        SlaClass::Optimal
                    } else if ms <= u64::from(policy.sla_low_secs) * MS_PER_SEC as u64 {
                        SlaClass::Low
                    } else {
                        SlaClass::Breached
                    };
                    out.emit(ConversationEvent::ResponseRecorded {
                        agent: user.id.clone(),
                        wait_started_at: wait.started_at,
                        response_secs: ms.div_ceil(MS_PER_SEC as u64),
                        class,
                        first: self.responses == 0,
                    });
                }
            }
            Command::SendBotMessage(c) => {
                self.require_open()?;
                if !envelope.actor.is_trusted() {
                    return Err(Rejection::Forbidden {
                        action: "send_bot_message",
                        needed: "the system (a bot integration)",
                    });
                }
                if c.bot.trim().is_empty() || c.bot.len() > NAME_BYTES_MAX {
                    return Err(Rejection::invalid("bot", format!("must be 1 to {NAME_BYTES_MAX} bytes")));
                }
                check_text(&c.text, &[])?;
                out.emit(ConversationEvent::MessageSent {
                    author: Author::Bot(c.bot.clone()),
                    text: c.text.clone(),
                    attachments: Vec::new(),
                    shortcode: None,
                });
            }
            Command::Assign(c) => {
                let facts = self.require_open()?;
                let by_routing = match self.who(ctx, &envelope.actor)? {
                    Who::System => true,
                    Who::Supervisor(_) => false,
                    _ => {
                        return Err(Rejection::Forbidden {
                            action: "assign",
                            needed: "a supervisor or the routing rule",
                        });
                    }
                };
                if let Some(current) = &self.assignee {
                    return Err(Rejection::AlreadyAssigned(current.clone()));
                }
                let campaign = ctx.catalog.campaign(&facts.campaign)?;
                self.check_can_take(ctx, campaign, &c.agent, by_routing)?;
                out.emit(ConversationEvent::AgentAssigned { agent: c.agent.clone(), segment: self.segment + 1 });
            }
            Command::Transfer(c) => self.transfer(ctx, envelope, &c.to, now, &mut out)?,
            Command::SetField(c) => {
                let facts = self.require_open()?;
                self.require_attendant(ctx, &envelope.actor, "set_field")?;
                let campaign = ctx.catalog.campaign(&facts.campaign)?;
                if !campaign.dynamic_fields.iter().any(|f| f.name == c.field) {
                    return Err(Rejection::UnknownField { field: c.field.clone(), campaign: campaign.id.clone() });
                }
                if c.value.len() > FIELD_VALUE_BYTES_MAX {
                    return Err(Rejection::invalid("value", format!("at most {FIELD_VALUE_BYTES_MAX} bytes")));
                }
                if self.fields().get(&c.field) != Some(&c.value) {
                    out.emit(ConversationEvent::DynamicFieldSet { field: c.field.clone(), value: c.value.clone() });
                }
            }
            Command::AddLabel(c) | Command::RemoveLabel(c) => {
                self.require_open()?;
                self.require_attendant(ctx, &envelope.actor, "labels")?;
                if !ctx.catalog.settings.labels.contains(&c.label) {
                    return Err(Rejection::UnknownLabel(c.label.clone()));
                }
                let present = self.labels().contains(&c.label);
                if matches!(envelope.command, Command::AddLabel(_)) {
                    if !present {
                        if self.labels().len() >= LABELS_PER_CONVERSATION_MAX {
                            return Err(Rejection::invalid(
                                "label",
                                format!("at most {LABELS_PER_CONVERSATION_MAX} labels on a conversation"),
                            ));
                        }
                        out.emit(ConversationEvent::LabelAdded { label: c.label.clone() });
                    }
                } else if present {
                    out.emit(ConversationEvent::LabelRemoved { label: c.label.clone() });
                }
            }
            Command::Close(c) => {
                let facts = self.require_open()?;
                let closer = match self.who(ctx, &envelope.actor)? {
                    Who::Agent(user, true) | Who::Supervisor(user) => Some(user),
                    Who::System => None,
                    Who::Agent(..) => return Err(self.not_assigned()),
                    Who::Contact => {
                        return Err(Rejection::Forbidden {
                            action: "close",
                            needed: "the assigned agent, a supervisor or the system",
                        });
                    }
                };
                let campaign = ctx.catalog.campaign(&facts.campaign)?;
                if !campaign.closing_typifications.contains(&c.typification) {
                    return Err(Rejection::TypificationNotAllowed {
                        typification: c.typification.clone(),
                        campaign: campaign.id.clone(),
                    });
                }
                if let Some(missing) = campaign
                    .dynamic_fields
                    .iter()
                    .find(|f| f.mandatory && self.fields().get(&f.name).is_none_or(|v| v.trim().is_empty()))
                {
                    return Err(Rejection::MandatoryFieldMissing(missing.name.clone()));
                }
                self.check_contact_attributes(ctx, facts)?;
                if let Some(user) = closer
                    && !campaign.permissions.allow_close_without_reply
                    && !self.writers().contains(&user.id)
                {
                    return Err(Rejection::ReplyRequired(user.id.clone()));
                }
                let reason = if closer.is_some() { CloseReason::Resolved } else { CloseReason::System };
                self.emit_close(ctx, &mut out, reason, Some(c.typification.clone()), closer.is_some());
            }
            Command::AnswerSurvey(c) => {
                if self.status == Status::New {
                    return Err(Rejection::UnknownConversation(self.id.clone()));
                }
                let facts = self.facts.as_ref().ok_or_else(|| Rejection::UnknownConversation(self.id.clone()))?;
                require_contact(&envelope.actor, &facts.contact, "answer_survey")?;
                match self.survey {
                    Survey::NotSent => return Err(Rejection::SurveyNotSent),
                    Survey::Answered => return Err(Rejection::SurveyAlreadyAnswered),
                    Survey::Sent => {}
                }
                if !(1..=5).contains(&c.rating) {
                    return Err(Rejection::invalid("rating", format!("must be 1 to 5, found {}", c.rating)));
                }
                out.emit(ConversationEvent::SurveyAnswered { rating: c.rating, solved: c.solved });
            }
            Command::RunMacro(c) => {
                self.require_open()?;
                match self.who(ctx, &envelope.actor)? {
                    Who::Agent(_, true) | Who::Supervisor(_) => {}
                    Who::Agent(..) => return Err(self.not_assigned()),
                    _ => {
                        return Err(Rejection::Forbidden {
                            action: "run_macro",
                            needed: "the assigned agent or a supervisor",
                        });
                    }
                }
                let spec = ctx.catalog.macro_spec(&c.macro_id)?;
                let mut state = self.scratch();
                state.evolve(out.emit(ConversationEvent::MacroApplied {
                    macro_id: c.macro_id.clone(),
                    actions: spec.actions.len() as u32,
                }));
                for (index, action) in spec.actions.iter().enumerate() {
                    let records = state.act(ctx, envelope, action, now, None).map_err(|reason| {
                        Rejection::MacroActionRefused {
                            macro_id: c.macro_id.clone(),
                            index,
                            action: action.name(),
                            reason: Box::new(reason),
                        }
                    })?;
                    for record in &records {
                        state.evolve(record);
                    }
                    out.absorb(records);
                }
            }
            Command::Tick(_) => {
                if self.status == Status::New {
                    return Err(Rejection::UnknownConversation(self.id.clone()));
                }
                self.fire_due(ctx, now, &mut out);
            }
            other => {
                return Err(Rejection::WrongAggregate { command: other.type_name(), aggregate: "a conversation" });
            }
        }
        Ok(out.out)
    }

    /// Every contact attribute the campaign requires at close is set on the
    /// conversation's contact.
    fn check_contact_attributes(&self, ctx: Context<'_>, facts: &Facts) -> Result<(), Rejection> {
        let contact = ctx.contacts.and_then(|book| book.contact(&facts.contact));
        for spec in ctx.catalog.contact_attributes.values() {
            if !spec.required_to_close.contains(&facts.campaign) {
                continue;
            }
            let set = contact.and_then(|c| c.attributes.get(&spec.name)).is_some_and(|v| !v.trim().is_empty());
            if !set {
                return Err(Rejection::ContactAttributeMissing {
                    attribute: spec.name.clone(),
                    contact: facts.contact.clone(),
                });
            }
        }
        Ok(())
    }

    fn require_open(&self) -> Result<&Facts, Rejection> {
        match (self.status, &self.facts) {
            (Status::Closed, _) => Err(Rejection::ConversationClosed(self.id.clone())),
            (Status::Queued | Status::Assigned, Some(facts)) => Ok(facts),
            _ => Err(Rejection::UnknownConversation(self.id.clone())),
        }
    }

    fn not_assigned(&self) -> Rejection {
        match &self.assignee {
            Some(assigned) => Rejection::NotTheAssignedAgent { assigned: assigned.clone() },
            None => Rejection::NotAssigned,
        }
    }

    fn who<'a>(&self, ctx: Context<'a>, actor: &'a Actor) -> Result<Who<'a>, Rejection> {
        match actor {
            Actor::Contact(_) => Ok(Who::Contact),
            Actor::System(_) | Actor::Integration { .. } | Actor::Operator { .. } => Ok(Who::System),
            Actor::User { .. } => {
                let user = ctx.catalog.check_actor(actor)?.expect("a user actor yields a user");
                match user.role {
                    Role::Admin => Ok(Who::Supervisor(user)),
                    Role::Agent => Ok(Who::Agent(user, self.assignee.as_ref() == Some(&user.id))),
                    Role::Supervisor => match self.facts.as_ref().map(|f| &f.campaign) {
                        // Before the conversation exists, membership is checked by the command.
                        None => Ok(Who::Supervisor(user)),
                        Some(campaign) => {
                            let member =
                                ctx.catalog.campaigns.get(campaign).is_some_and(|c| c.spec.agents.contains(&user.id));
                            let team = self.facts.as_ref().and_then(|f| f.team.as_ref());
                            let supervises = team
                                .and_then(|t| ctx.catalog.teams.get(t))
                                .is_some_and(|t| t.active && t.spec.supervisors.contains(&user.id));
                            if member || supervises {
                                Ok(Who::Supervisor(user))
                            } else {
                                Err(Rejection::NotInCampaign { agent: user.id.clone(), campaign: campaign.clone() })
                            }
                        }
                    },
                }
            }
        }
    }

    /// Field and label changes: the assigned agent, a supervisor or the system.
    fn require_attendant(&self, ctx: Context<'_>, actor: &Actor, action: &'static str) -> Result<(), Rejection> {
        match self.who(ctx, actor)? {
            Who::Agent(_, true) | Who::Supervisor(_) | Who::System => Ok(()),
            Who::Agent(..) => Err(self.not_assigned()),
            Who::Contact => {
                Err(Rejection::Forbidden { action, needed: "the assigned agent, a supervisor or the system" })
            }
        }
    }

    /// Whether `agent` may take this conversation in `campaign` now.
    fn check_can_take(
        &self,
        ctx: Context<'_>,
        campaign: &CampaignSpec,
        agent: &UserId,
        must_be_available: bool,
    ) -> Result<(), Rejection> {
        let user = ctx.catalog.user(agent)?;
        if user.role == Role::Admin || !campaign.agents.contains(agent) {
            return Err(Rejection::NotInCampaign { agent: agent.clone(), campaign: campaign.id.clone() });
        }
        let live = ctx.floor.agent(agent);
        if must_be_available && live.state != STATE_AVAILABLE {
            return Err(Rejection::AgentUnavailable { agent: agent.clone(), state: live.state.to_string() });
        }
        if live.load >= user.max_concurrent_conversations {
            return Err(Rejection::AgentAtCapacity { agent: agent.clone(), max: user.max_concurrent_conversations });
        }
        Ok(())
    }

    fn expand_shortcode(
        &self,
        ctx: Context<'_>,
        text: &str,
        agent: &UserSpec,
    ) -> Result<(String, Option<String>), Rejection> {
        let trimmed = text.trim();
        let Some(code) = trimmed.strip_prefix('/').filter(|c| !c.is_empty() && !c.contains(char::is_whitespace)) else {
            return Ok((text.to_owned(), None));
        };
        let canned = ctx
            .catalog
            .settings
            .canned_responses
            .iter()
            .find(|c| c.shortcode == code)
            .ok_or_else(|| Rejection::UnknownShortcode(code.to_owned()))?;
        let filled = self.fill(ctx, &canned.text, Some(&agent.name));
        Ok((filled, Some(code.to_owned())))
    }

    /// Fills a template with this conversation's placeholders.
    fn fill(&self, ctx: Context<'_>, text: &str, agent_name: Option<&str>) -> String {
        let Some(facts) = &self.facts else {
            return text.to_owned();
        };
        let catalog = ctx.catalog;
        let assignee_name = self.assignee.as_ref().map(|a| catalog.user_name(a));
        let values = Values {
            company: catalog.clients.get(&facts.client).map_or("", |c| c.spec.name.as_str()),
            // The team's name where one is set; otherwise the project's, as before teams.
            team: match facts.team.as_ref().and_then(|t| catalog.teams.get(t)) {
                Some(team) => team.spec.name.as_str(),
                None => catalog.projects.get(&facts.project).map_or("", |p| p.spec.name.as_str()),
            },
            campaign: catalog.campaigns.get(&facts.campaign).map_or("", |c| c.spec.name.as_str()),
            contact_name: facts.contact_name.as_deref().unwrap_or(""),
            agent_name: agent_name.or(assignee_name.as_deref()).unwrap_or(""),
        };
        template::fill(text, &values)
    }

    fn channel<'a>(&self, ctx: Context<'a>) -> Option<&'a ChannelSpec> {
        self.facts.as_ref().and_then(|f| ctx.catalog.channels.get(&f.channel)).map(|c| &c.spec)
    }

    fn campaign<'a>(&self, ctx: Context<'a>) -> Option<&'a CampaignSpec> {
        self.facts.as_ref().and_then(|f| ctx.catalog.campaigns.get(&f.campaign)).map(|c| &c.spec)
    }

    /// Decides one action of a macro (as the agent running it) or of an
    /// automation (as `automation`, the system actor automations act as).
    fn act(
        &self,
        ctx: Context<'_>,
        envelope: &CommandEnvelope,
        action: &Action,
        now: Timestamp,
        automation: Option<&Actor>,
    ) -> Result<Vec<Recorded<ConversationEvent>>, Rejection> {
        use crate::command::{Assign, Close, LabelChange, SendMessage, SetField, Transfer};
        let conversation = self.id.clone();
        let command = match action {
            Action::SendMessage(text) if automation.is_some() => {
                self.require_open()?;
                crate::template::check(text).map_err(|reason| Rejection::invalid("send_message", reason))?;
                let mut out = Emitter::new(self.seq, now, &envelope.id, &envelope.actor);
                self.auto_message(ctx, &mut out, Trigger::Automation, Some(text), None);
                return Ok(out.out);
            }
            Action::SendMessage(text) => {
                Command::SendMessage(SendMessage { conversation, text: text.clone(), attachments: Vec::new() })
            }
            Action::AddLabel(label) => Command::AddLabel(LabelChange { conversation, label: label.clone() }),
            Action::RemoveLabel(label) => Command::RemoveLabel(LabelChange { conversation, label: label.clone() }),
            Action::SetField { field, value } => {
                Command::SetField(SetField { conversation, field: field.clone(), value: value.clone() })
            }
            Action::Transfer(to) => Command::Transfer(Transfer { conversation, to: to.clone() }),
            Action::Assign(agent) => Command::Assign(Assign { conversation, agent: agent.clone() }),
            Action::Close(typification) => Command::Close(Close { conversation, typification: typification.clone() }),
            Action::SetContactAttribute { name, value } => {
                // A closed conversation may still update its contact (an automation on closure).
                let facts = self.facts.as_ref().ok_or_else(|| Rejection::UnknownConversation(self.id.clone()))?;
                let fields = ("set_contact_attribute.name", "set_contact_attribute.value");
                crate::contact::check_setting(ctx.catalog, fields, name, value)?;
                if ctx.contacts.and_then(|book| book.contact(&facts.contact)).is_none() {
                    return Err(Rejection::Unknown {
                        entity: format!("contact {} in the contact book", facts.contact),
                    });
                }
                let actor = automation.unwrap_or(&envelope.actor);
                let mut out = Emitter::new(self.seq, now, &envelope.id, actor);
                out.emit(ConversationEvent::ContactAttributeRequested { name: name.clone(), value: value.clone() });
                return Ok(out.out);
            }
        };
        let actor = automation.unwrap_or(&envelope.actor).clone();
        let sub = CommandEnvelope { id: envelope.id.clone(), account: envelope.account.clone(), actor, command };
        self.decide_fresh(ctx, &sub, now)
    }

    /// Runs the account's automations on the events of a decision (see
    /// [`crate::automation`] for the order and the bounds), appending what
    /// they cause to `events`.
    fn automate(
        &self,
        ctx: Context<'_>,
        envelope: &CommandEnvelope,
        now: Timestamp,
        events: &mut Vec<Recorded<ConversationEvent>>,
    ) {
        let catalog = ctx.catalog;
        let mut state: Option<Conversation> = None;
        let mut applied = 0;
        // Which automation caused each event from `own` on (before it: the command itself).
        let own = events.len();
        let mut causes: Vec<AutomationId> = Vec::new();
        let actor = rule(AUTOMATION);
        let mut runs = 0;
        let mut i = 0;
        while i < events.len() {
            let Some(on) = trigger_of(&events[i].event) else {
                i += 1;
                continue;
            };
            for armed in catalog.automations_on(on) {
                let (spec, id) = (&armed.spec, &armed.spec.id);
                if i >= own && &causes[i - own] == id {
                    continue; // an automation never reacts to what it did itself
                }
                let label = match &events[i].event {
                    ConversationEvent::LabelAdded { label } => Some(label.as_str()),
                    _ => None,
                };
                if !armed.event_allows(label, event_text(events, i)) {
                    continue;
                }
                // The conversation as the decision so far leaves it.
                let st = state.get_or_insert_with(|| self.scratch());
                while applied < events.len() {
                    st.evolve(&events[applied]);
                    applied += 1;
                }
                if !st.holds(ctx, &spec.conditions, events[i].at) {
                    continue;
                }
                let mut out = Emitter::new(st.seq, now, &envelope.id, &actor);
                let added = &events[own..];
                let text_bytes: usize = added
                    .iter()
                    .map(|r| match &r.event {
                        ConversationEvent::MessageSent { text, .. } => text.len(),
                        _ => 0,
                    })
                    .sum();
                let bound = if runs >= automation::AUTOMATION_RUNS_PER_COMMAND_MAX {
                    Some("command")
                } else if st.automation_runs >= automation::AUTOMATION_RUNS_PER_CONVERSATION_MAX {
                    Some("conversation")
                } else if added.len() >= automation::AUTOMATION_EVENTS_PER_COMMAND_MAX
                    || text_bytes >= automation::AUTOMATION_TEXT_BYTES_PER_COMMAND_MAX
                {
                    Some("events")
                } else {
                    None
                };
                if let Some(bound) = bound {
                    out.emit(ConversationEvent::AutomationsStopped { automation: id.clone(), bound: bound.into() });
                    events.extend(out.out);
                    return;
                }
                runs += 1;
                st.evolve(out.emit(ConversationEvent::AutomationTriggered { automation: id.clone(), on }));
                for (index, action) in spec.actions.iter().enumerate() {
                    let records = match st.act(ctx, envelope, action, now, Some(&actor)) {
                        Ok(records) => records,
                        Err(refused) => {
                            let mut note = Emitter::new(st.seq, now, &envelope.id, &actor);
                            note.emit(ConversationEvent::AutomationActionRefused {
                                automation: id.clone(),
                                action: index as u32,
                                code: refused.code().into(),
                                reason: refused.to_string(),
                            });
                            note.out
                        }
                    };
                    for record in &records {
                        st.evolve(record);
                    }
                    out.absorb(records);
                }
                causes.extend(std::iter::repeat_n(id.clone(), out.out.len()));
                events.extend(out.out);
                applied = events.len();
            }
            i += 1;
        }
    }

    /// Whether an automation's conditions on the conversation hold for an
    /// event at `at` (those on the event itself are
    /// [`automation::Armed::event_allows`]'s).
    fn holds(&self, ctx: Context<'_>, conditions: &[Condition], at: Timestamp) -> bool {
        let Some(facts) = &self.facts else { return false };
        let lower = |t: &str| t.to_lowercase();
        conditions.iter().all(|condition| match condition {
            Condition::Channel(list) => list.contains(&facts.channel),
            Condition::Campaign(list) => list.contains(&facts.campaign),
            Condition::Team(list) => facts.team.as_ref().is_some_and(|t| list.contains(t)),
            Condition::HasLabel(label) => self.labels().contains(label),
            Condition::LacksLabel(label) => !self.labels().contains(label),
            Condition::Label(_) | Condition::TextContains(_) | Condition::TextMatches(_) => true,
            Condition::Field { field, equals } => self.fields().get(field) == Some(equals),
            Condition::ContactNameContains(needle) => {
                facts.contact_name.as_deref().is_some_and(|n| lower(n).contains(&lower(needle)))
            }
            Condition::ContactAttribute { name, equals } => ctx
                .contacts
                .and_then(|book| book.contact(&facts.contact))
                .is_some_and(|c| c.attributes.get(name) == Some(equals)),
            Condition::OfficeHours(open) => ctx
                .catalog
                .campaigns
                .get(&facts.campaign)
                .and_then(|c| ctx.catalog.schedule(&c.spec.schedule).ok())
                .is_some_and(|s| s.is_open(at) == *open),
        })
    }

    /// The SLA clock a conversation in `campaign` runs on, when it differs
    /// from the one it runs on now (elapsed time, until told otherwise).
    fn sla_clock_change(&self, catalog: &Catalog, campaign: &CampaignSpec) -> Option<ConversationEvent> {
        let mode = catalog.sla_mode(campaign);
        let schedule = match mode {
            SlaMode::BusinessHours => Some(catalog.schedule(&campaign.schedule).ok()?.clone()),
            SlaMode::Elapsed => None,
        };
        let now = self.facts.as_ref().and_then(|f| f.sla_hours.as_deref());
        (now != schedule.as_ref()).then_some(ConversationEvent::SlaClockSet { mode, schedule })
    }

    /// Emits an automated message when its switch is on.
    fn auto_message(
        &self,
        ctx: Context<'_>,
        out: &mut Emitter<ConversationEvent>,
        trigger: Trigger,
        template: Option<&str>,
        agent_name: Option<&str>,
    ) {
        if let Some(template) = template {
            let text = self.fill(ctx, template, agent_name);
            out.emit_as(
                rule(trigger.rule()),
                ConversationEvent::MessageSent {
                    author: Author::System(trigger),
                    text,
                    attachments: Vec::new(),
                    shortcode: None,
                },
            );
        }
    }

    fn open_inbound(
        &self,
        ctx: Context<'_>,
        envelope: &CommandEnvelope,
        c: &crate::command::ReceiveMessage,
        (contact, new): (&ContactId, Option<crate::contact::Identity>),
        now: Timestamp,
        out: &mut Emitter<ConversationEvent>,
    ) -> Result<(), Rejection> {
        require_contact(&envelope.actor, contact, "receive_message")?;
        let catalog = ctx.catalog;
        let entrance = Entrance::of(catalog, &c.channel)?;
        let (channel, campaign) = (entrance.channel, entrance.campaign);
        let schedule = catalog.schedule(&campaign.schedule)?;
        check_text(&c.text, &c.attachments)?;
        if let Some(name) = &c.contact_name
            && name.len() > NAME_BYTES_MAX
        {
            return Err(Rejection::invalid("contact_name", format!("at most {NAME_BYTES_MAX} bytes")));
        }
        let in_hours = schedule.is_open(now);
        let sla_clock_starts_at = if in_hours { now } else { schedule.next_opening(now).unwrap_or(now) };
        let opened =
            entrance.opened(catalog, contact, &c.contact_name, Direction::Inbound, sla_clock_starts_at, !in_hours);
        // Later events are shaped by the opened state (placeholders).
        let mut scratch = self.scratch();
        scratch.evolve(out.emit(ConversationEvent::ConversationOpened(opened)));
        if let Some(identity) = new {
            scratch.evolve(out.emit(ConversationEvent::ContactRequested {
                contact: contact.clone(),
                channel: identity.channel,
                handle: identity.handle,
                name: c.contact_name.clone(),
            }));
        }
        if let Some(clock) = scratch.sla_clock_change(catalog, campaign) {
            scratch.evolve(out.emit(clock));
        }
        out.emit(ConversationEvent::MessageReceived { text: c.text.clone(), attachments: c.attachments.clone() });
        if in_hours {
            scratch.auto_message(ctx, out, Trigger::Welcome, channel.messages.welcome.active(), None);
            out.emit(ConversationEvent::ConversationQueued { campaign: campaign.id.clone(), waiting_since: now });
        } else {
            scratch.auto_message(ctx, out, Trigger::OutOfHours, campaign.out_of_hours.message.active(), None);
            match campaign.out_of_hours.action {
                crate::config::OutOfHoursAction::Close => {
                    out.emit_as(
                        rule("out_of_hours"),
                        ConversationEvent::ConversationClosed {
                            reason: CloseReason::OutOfHours,
                            typification: None,
                            agent: None,
                            segment: 0,
                        },
                    );
                    schedule_retention(ctx, Some(&campaign.id), out);
                }
                crate::config::OutOfHoursAction::Enqueue => {
                    out.emit(ConversationEvent::ConversationQueued {
                        campaign: campaign.id.clone(),
                        waiting_since: sla_clock_starts_at,
                    });
                }
            }
        }
        Ok(())
    }

    fn open_outbound(
        &self,
        ctx: Context<'_>,
        envelope: &CommandEnvelope,
        c: &crate::command::StartOutbound,
        now: Timestamp,
        out: &mut Emitter<ConversationEvent>,
    ) -> Result<(), Rejection> {
        if self.status != Status::New {
            return Err(Rejection::ConversationExists(self.id.clone()));
        }
        let catalog = ctx.catalog;
        let Some(user) = catalog.check_actor(&envelope.actor)? else {
            return Err(Rejection::Forbidden {
                action: "start_outbound",
                needed: "an agent or supervisor of the campaign",
            });
        };
        let entrance = Entrance::of(catalog, &c.channel)?;
        let campaign = entrance.campaign;
        self.check_can_take(ctx, campaign, &user.id, false)?;
        check_text(&c.text, &[])?;
        if !campaign.permissions.allow_emoji && has_emoji(&c.text) {
            return Err(Rejection::EmojiNotAllowed(campaign.id.clone()));
        }
        let opened = entrance.opened(catalog, &c.contact, &c.contact_name, Direction::Outbound, now, false);
        out.emit(ConversationEvent::ConversationOpened(opened));
        if let Some(clock) = self.sla_clock_change(catalog, campaign) {
            out.emit(clock);
        }
        out.emit(ConversationEvent::AgentAssigned { agent: user.id.clone(), segment: 1 });
        out.emit(ConversationEvent::MessageSent {
            author: Author::Agent(user.id.clone()),
            text: c.text.clone(),
            attachments: Vec::new(),
            shortcode: None,
        });
        Ok(())
    }

    fn transfer(
        &self,
        ctx: Context<'_>,
        envelope: &CommandEnvelope,
        to: &TransferTarget,
        now: Timestamp,
        out: &mut Emitter<ConversationEvent>,
    ) -> Result<(), Rejection> {
        let facts = self.require_open()?;
        let catalog = ctx.catalog;
        let by_agent = match self.who(ctx, &envelope.actor)? {
            Who::Agent(_, true) => true,
            Who::Supervisor(_) | Who::System => false,
            Who::Agent(..) => return Err(self.not_assigned()),
            Who::Contact => {
                return Err(Rejection::Forbidden { action: "transfer", needed: "the assigned agent or a supervisor" });
            }
        };
        let campaign = catalog.campaign(&facts.campaign)?;
        let ended = |to: Destination| ConversationEvent::ConversationTransferred {
            from_agent: self.assignee.clone(),
            segment: if self.assignee.is_some() { self.segment } else { 0 },
            typification: campaign.transfer_typification.clone(),
            to,
        };
        let notice = self.channel(ctx).and_then(|c| c.messages.transfer_notice.active());
        match to {
            TransferTarget::Agent(agent) => {
                if by_agent && !campaign.permissions.allow_agent_transfer {
                    return Err(Rejection::AgentTransferNotAllowed(campaign.id.clone()));
                }
                if self.assignee.as_ref() == Some(agent) {
                    return Err(Rejection::TransferToSelf(format!("agent {agent}")));
                }
                self.check_can_take(ctx, campaign, agent, true)?;
                out.emit(ended(Destination::Agent(agent.clone())));
                let name = catalog.user_name(agent);
                self.auto_message(ctx, out, Trigger::TransferNotice, notice, Some(&name));
                out.emit(ConversationEvent::AgentAssigned { agent: agent.clone(), segment: self.segment + 1 });
            }
            TransferTarget::Team(team) => {
                catalog.team(team)?;
                if facts.team.as_ref() == Some(team) && self.assignee.is_none() {
                    return Err(Rejection::TransferToSelf(format!("team {team}")));
                }
                // The notice names the new team (`{team}`).
                let mut scratch = self.scratch();
                scratch.evolve(out.emit(ended(Destination::Team(team.clone()))));
                scratch.auto_message(ctx, out, Trigger::TransferNotice, notice, Some(""));
                let waiting_since = self.wait.map_or(now, |w| w.started_at);
                out.emit(ConversationEvent::ConversationQueued { campaign: facts.campaign.clone(), waiting_since });
            }
            TransferTarget::Campaign(target) => {
                if target == &facts.campaign {
                    return Err(Rejection::TransferToSelf(format!("campaign {target}")));
                }
                let next = catalog.campaign(target)?;
                let client = catalog.client(&next.client)?;
                catalog.project(&next.project)?;
                let change = CampaignChange {
                    campaign: next.id.clone(),
                    client: client.id.clone(),
                    project: next.project.clone(),
                    policy: Policy::of(client, catalog),
                };
                out.emit(ended(Destination::Campaign(change)));
                if let Some(clock) = self.sla_clock_change(catalog, next) {
                    out.emit(clock);
                }
                self.auto_message(ctx, out, Trigger::TransferNotice, notice, Some(""));
                let waiting_since = self.wait.map_or(now, |w| w.started_at);
                out.emit(ConversationEvent::ConversationQueued { campaign: next.id.clone(), waiting_since });
            }
        }
        Ok(())
    }

    /// Emits the closing messages and the closure.
    fn emit_close(
        &self,
        ctx: Context<'_>,
        out: &mut Emitter<ConversationEvent>,
        reason: CloseReason,
        typification: Option<TypificationId>,
        survey: bool,
    ) {
        if let Some(channel) = self.channel(ctx) {
            self.auto_message(ctx, out, Trigger::Closing, channel.messages.closing.active(), None);
            if survey {
                self.auto_message(ctx, out, Trigger::Survey, channel.messages.survey.active(), None);
            }
        }
        let actor = match reason {
            CloseReason::Inactivity => Some(rule("contact_inactivity")),
            CloseReason::AutoResolve => Some(rule("auto_resolve")),
            _ => None,
        };
        let closed = ConversationEvent::ConversationClosed {
            reason,
            typification,
            agent: self.assignee.clone(),
            segment: self.segment,
        };
        match actor {
            Some(actor) => out.emit_as(actor, closed),
            None => out.emit(closed),
        };
        schedule_retention(ctx, self.facts.as_ref().map(|f| &f.campaign), out);
    }

    /// Fires every timer due at or before `now`, in deadline order.
    fn fire_due(&self, ctx: Context<'_>, now: Timestamp, out: &mut Emitter<ConversationEvent>) {
        let mut state = self.scratch();
        for _ in 0..TIMER_FIRINGS_PER_TICK_MAX {
            let Some((at, timer)) = state.due_timer() else {
                break;
            };
            if at > now {
                break;
            }
            let before = out.out.len();
            state.fire(ctx, timer, out);
            for record in &out.out[before..] {
                state.evolve(record);
            }
        }
    }

    fn fire(&self, ctx: Context<'_>, timer: Timer, out: &mut Emitter<ConversationEvent>) {
        let Some(facts) = &self.facts else { return };
        let wait_started_at = self.wait.map(|w| w.started_at).unwrap_or_default();
        let inactivity_typification = || self.campaign(ctx).map(|c| c.inactivity_typification.clone());
        match timer {
            Timer::SlaOptimal | Timer::SlaLow => {
                let threshold = if timer == Timer::SlaOptimal { Threshold::Optimal } else { Threshold::Low };
                out.emit_as(rule("sla"), ConversationEvent::SlaThresholdCrossed { threshold, wait_started_at });
            }
            Timer::AgentInactivity => {
                let agent = self.assignee.clone().expect("the agent timer runs only while assigned");
                out.emit_as(
                    rule("agent_inactivity"),
                    ConversationEvent::AgentInactivityAlerted { agent, wait_started_at },
                );
            }
            Timer::ContactInactivity => {
                let silence = self.silence.expect("the contact timer runs only during a silence");
                if silence.warnings < facts.policy.inactivity_attempts {
                    let alert = self.channel(ctx).and_then(|c| c.messages.inactivity_alert.active());
                    self.auto_message(ctx, out, Trigger::InactivityAlert, alert, None);
                    out.emit_as(
                        rule("contact_inactivity"),
                        ConversationEvent::InactivityWarningSent {
                            attempt: silence.warnings + 1,
                            silent_since: silence.since,
                        },
                    );
                } else {
                    self.emit_close(ctx, out, CloseReason::Inactivity, inactivity_typification(), false);
                }
            }
            Timer::AutoResolve => self.emit_close(ctx, out, CloseReason::AutoResolve, inactivity_typification(), false),
            Timer::ContentExpiry => {
                if let Some(expires_at) = self.content_expires_at {
                    out.emit_as(rule("retention"), ConversationEvent::ContentExpired { expires_at });
                }
            }
        }
    }

    // ------------------------------------------------------------ evolve

    /// Applies one event. Asserts it is the next in sequence (the positive
    /// space) and that an opened conversation is never opened again.
    pub fn evolve(&mut self, record: &Recorded<ConversationEvent>) {
        assert_eq!(record.seq, self.seq + 1, "conversation {}: event {} out of sequence", self.id, record.seq);
        self.seq = record.seq;
        self.recent.note(&record.command, record.seq);
        let at = record.at;
        match &record.event {
            ConversationEvent::ConversationOpened(o) => {
                assert_eq!(self.status, Status::New, "conversation {} opened twice", self.id);
                self.status = Status::Queued;
                self.last_human_at = at;
                self.facts = Some(Facts {
                    contact: o.contact.clone(),
                    contact_name: o.contact_name.clone(),
                    channel: o.channel.clone(),
                    campaign: o.campaign.clone(),
                    client: o.client.clone(),
                    project: o.project.clone(),
                    policy: o.policy,
                    opened_at: at,
                    sla_clock_starts_at: o.sla_clock_starts_at,
                    sla_hours: None,
                    team: None,
                });
            }
            ConversationEvent::MessageReceived { .. } => {
                self.messages += 1;
                self.last_human_at = at;
                self.silence = None;
                if self.wait.is_none() {
                    let clock = self.facts.as_ref().map_or(at, |f| f.sla_clock_starts_at);
                    self.wait = Some(Wait {
                        started_at: at.max(clock),
                        optimal_at: None,
                        low_at: None,
                        optimal_crossed: false,
                        low_crossed: false,
                        agent_alerted: false,
                    });
                    self.time_wait(at);
                }
            }
            ConversationEvent::MessageSent { author, .. } => {
                self.messages += 1;
                match author {
                    Author::Agent(user) => {
                        self.last_human_at = at;
                        self.silence = Some(Silence { since: at, warnings: 0 });
                        if !self.writers().contains(user) {
                            self.extras_mut().writers.push(user.clone());
                        }
                    }
                    Author::Bot(_) => {
                        if self.wait.is_none() {
                            self.silence = Some(Silence { since: at, warnings: 0 });
                        }
                    }
                    Author::System(Trigger::Survey) => self.survey = Survey::Sent,
                    Author::System(_) => {}
                }
            }
            ConversationEvent::ConversationQueued { .. } => self.status = Status::Queued,
            ConversationEvent::AgentAssigned { agent, segment } => {
                self.status = Status::Assigned;
                self.assignee = Some(agent.clone());
                self.assigned_at = at;
                self.segment = *segment;
            }
            ConversationEvent::ConversationTransferred { to, .. } => {
                self.assignee = None;
                self.status = Status::Queued;
                match (to, self.facts.as_mut()) {
                    (Destination::Campaign(change), Some(facts)) => {
                        facts.campaign = change.campaign.clone();
                        facts.client = change.client.clone();
                        facts.project = change.project.clone();
                        facts.policy = change.policy;
                        facts.team = None;
                    }
                    (Destination::Team(team), Some(facts)) => facts.team = Some(team.clone()),
                    _ => {}
                }
                self.time_wait(at);
            }
            ConversationEvent::SlaThresholdCrossed { threshold, .. } => {
                if let Some(wait) = self.wait.as_mut() {
                    match threshold {
                        Threshold::Optimal => wait.optimal_crossed = true,
                        Threshold::Low => wait.low_crossed = true,
                    }
                }
            }
            ConversationEvent::ResponseRecorded { .. } => {
                self.responses += 1;
                self.wait = None;
            }
            ConversationEvent::InactivityWarningSent { attempt, .. } => {
                if let Some(silence) = self.silence.as_mut() {
                    silence.warnings = *attempt;
                }
            }
            ConversationEvent::AgentInactivityAlerted { .. } => {
                if let Some(wait) = self.wait.as_mut() {
                    wait.agent_alerted = true;
                }
            }
            ConversationEvent::DynamicFieldSet { field, value } => {
                self.extras_mut().fields.insert(field.clone(), value.clone());
            }
            ConversationEvent::LabelAdded { label } => {
                self.extras_mut().labels.insert(label.clone());
            }
            ConversationEvent::LabelRemoved { label } => {
                if let Some(extras) = self.extras.as_mut() {
                    extras.labels.remove(label);
                }
            }
            ConversationEvent::ConversationClosed { .. } => {
                self.status = Status::Closed;
                self.wait = None;
                self.silence = None;
            }
            ConversationEvent::SurveyAnswered { .. } => self.survey = Survey::Answered,
            ConversationEvent::ContentRetentionScheduled { expires_at, .. } => {
                self.content_expires_at = Some(*expires_at);
            }
            ConversationEvent::ContentExpired { .. } => {
                self.content_expires_at = None;
                self.content_expired = true;
                self.scrub_personal_data(ERASED);
            }
            ConversationEvent::AutomationTriggered { .. } => self.automation_runs += 1,
            ConversationEvent::MacroApplied { .. }
            | ConversationEvent::AutomationActionRefused { .. }
            | ConversationEvent::AutomationsStopped { .. }
            | ConversationEvent::ContactAttributeRequested { .. }
            | ConversationEvent::ContactRequested { .. } => {}
            ConversationEvent::SlaClockSet { schedule, .. } => {
                if let Some(facts) = self.facts.as_mut() {
                    facts.sla_hours = schedule.clone().map(Arc::new);
                }
                self.time_wait(at);
            }
        }
    }

    /// Works out when the open wait passes its thresholds, on the policy and
    /// clock the conversation runs on now (walking the schedule in
    /// business-hours mode, so deadlines are computed once per change). A
    /// threshold a change at `at` leaves behind (a move to a campaign with
    /// shorter thresholds, or from business hours to elapsed time) is
    /// crossed at `at`, never in the past.
    fn time_wait(&mut self, at: Timestamp) {
        let (Some(wait), Some(facts)) = (self.wait.as_mut(), self.facts.as_ref()) else { return };
        let (optimal, low) = (facts.policy.sla_optimal_secs, facts.policy.sla_low_secs);
        let (optimal_at, low_at) = threshold_instants(wait.started_at, optimal, low, facts.sla_hours.as_deref());
        wait.optimal_at = optimal_at.map(|t| t.max(at));
        wait.low_at = low_at.map(|t| t.max(at));
    }
}

/// When a wait that started at `started_at` passes its optimal and low SLA
/// thresholds: after that many seconds of elapsed time, or of open time on
/// `schedule` (business hours; `None` when the schedule opens too little
/// within the walk's bound). The one place the arithmetic lives: the
/// aggregate's deadlines and the live view's "next threshold" both use it.
pub fn threshold_instants(
    started_at: Timestamp,
    optimal_secs: u32,
    low_secs: u32,
    schedule: Option<&crate::schedule::ScheduleSpec>,
) -> (Option<Timestamp>, Option<Timestamp>) {
    let after = |secs: u32| match schedule {
        Some(schedule) => schedule.after_open_millis(started_at, u64::from(secs) * MS_PER_SEC as u64),
        None => Some(started_at.plus_secs(secs.into())),
    };
    (after(optimal_secs), after(low_secs))
}
