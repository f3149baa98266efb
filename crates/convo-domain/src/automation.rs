//! Macros and automations (SPEC §11): actions on a conversation, run by an
//! agent in one command (a macro) or by the engine when an event happens
//! (an automation: "when EVENT and CONDITIONS then ACTIONS").
//!
//! An action is one of the conversation commands, decided by the same rules
//! as if its actor had sent it: the agent running the macro, or the system
//! actor `automation`. A macro applies all its actions in one commit or none
//! ([`crate::Rejection::MacroActionRefused`] names the first refused). An
//! automation's actions are decided within the commit of the event that
//! triggered it, in order; a refused action is recorded
//! (`automation_action_refused`) and the next one is tried. The order of
//! evaluation: the commit's events in order; for each, the active
//! automations on that event in id order; the events their actions cause are
//! evaluated in turn (never by the automation that caused them), up to
//! [`AUTOMATION_RUNS_PER_COMMAND_MAX`] runs in one command and
//! [`AUTOMATION_RUNS_PER_CONVERSATION_MAX`] in a conversation's life, and
//! while they have added fewer than [`AUTOMATION_EVENTS_PER_COMMAND_MAX`]
//! events and [`AUTOMATION_TEXT_BYTES_PER_COMMAND_MAX`] bytes of messages to
//! the commit; the run a bound stops is recorded (`automations_stopped`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::command::TransferTarget;
use crate::ids::{AutomationId, CampaignId, ChannelId, MacroId, TeamId, TypificationId, UserId};
use crate::rejection::Rejection;
use crate::template;

/// At most this many actions in a macro or an automation.
pub const ACTIONS_MAX: usize = 20;
/// At most this many conditions in an automation (all must hold).
pub const CONDITIONS_MAX: usize = 20;
/// At most this many macros, and automations, in an account.
pub const MACROS_MAX: usize = 500;
pub const AUTOMATIONS_MAX: usize = 200;
/// At most this many automation runs within one command (its own events and
/// those its automations cause): a chain of reactions stops there.
pub const AUTOMATION_RUNS_PER_COMMAND_MAX: u32 = 16;
/// At most this many events, and bytes of message text, automations add to
/// one command's commit before a chain stops (a commit is at most 1024
/// events and 512 KiB).
pub const AUTOMATION_EVENTS_PER_COMMAND_MAX: usize = 128;
pub const AUTOMATION_TEXT_BYTES_PER_COMMAND_MAX: usize = 128 * 1024;
/// At most this many automation runs in one conversation's life.
pub const AUTOMATION_RUNS_PER_CONVERSATION_MAX: u32 = 256;
/// At most this many channels, campaigns or teams in one condition.
pub const CONDITION_LIST_MAX: usize = 64;
/// The most memory one condition's compiled pattern may take.
pub const PATTERN_BYTES_MAX: usize = 1 << 16;

/// One action on a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    AddLabel(String),
    RemoveLabel(String),
    SetField {
        field: String,
        value: String,
    },
    /// In a macro, the agent's message (a `/shortcode` expands); in an
    /// automation, an automated message (a template with placeholders).
    SendMessage(String),
    /// To an agent, a campaign or a team.
    Transfer(TransferTarget),
    /// Give a queued conversation to an agent.
    Assign(UserId),
    Close(TypificationId),
    /// Set (or, with an empty value, clear) an attribute of the
    /// conversation's contact in the contact book (appended).
    SetContactAttribute {
        name: String,
        value: String,
    },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::AddLabel(_) => "add_label",
            Action::RemoveLabel(_) => "remove_label",
            Action::SetField { .. } => "set_field",
            Action::SendMessage(_) => "send_message",
            Action::Transfer(_) => "transfer",
            Action::Assign(_) => "assign",
            Action::Close(_) => "close",
            Action::SetContactAttribute { .. } => "set_contact_attribute",
        }
    }
}

/// A named list of actions an agent or supervisor runs on a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MacroSpec {
    pub id: MacroId,
    pub name: String,
    pub actions: Vec<Action>,
}

/// The events an automation can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum On {
    ConversationOpened,
    MessageReceived,
    ConversationClosed,
    LabelAdded,
    SlaCrossed,
    InactivityWarned,
}

impl On {
    pub const ALL: [On; 6] = [
        On::ConversationOpened,
        On::MessageReceived,
        On::ConversationClosed,
        On::LabelAdded,
        On::SlaCrossed,
        On::InactivityWarned,
    ];
}

/// A condition on the conversation when the event happens (all of an
/// automation's must hold). Text conditions read the message of the event
/// (`message_received`, `conversation_opened`), case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// The conversation came in on one of these channels.
    Channel(Vec<ChannelId>),
    /// It is in one of these campaigns.
    Campaign(Vec<CampaignId>),
    /// It is with one of these teams.
    Team(Vec<TeamId>),
    HasLabel(String),
    LacksLabel(String),
    /// The label the event added (`label_added`).
    Label(String),
    TextContains(String),
    /// A regular expression (linear-time matching, bounded size).
    TextMatches(String),
    /// A dynamic field of the conversation has this value.
    Field {
        field: String,
        equals: String,
    },
    /// The contact's name contains this text (case-insensitively).
    ContactNameContains(String),
    /// The campaign's schedule is open (`true`) or closed (`false`) at the event.
    OfficeHours(bool),
    /// An attribute of the conversation's contact (in the contact book) has
    /// this value.
    ContactAttribute {
        name: String,
        equals: String,
    },
}

/// An admin-defined rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AutomationSpec {
    pub id: AutomationId,
    pub name: String,
    pub on: On,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    pub actions: Vec<Action>,
}

/// An active automation as the engine evaluates it: its spec and its
/// compiled patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Armed {
    pub spec: AutomationSpec,
    pub patterns: Vec<Pattern>,
}

impl Armed {
    /// Whether the conditions that read only the event hold (the label it
    /// added, its message's text): checked before anything else is looked at.
    pub fn event_allows(&self, label: Option<&str>, text: Option<&str>) -> bool {
        let mut patterns = self.patterns.iter();
        self.spec.conditions.iter().all(|condition| match condition {
            Condition::Label(wanted) => label == Some(wanted.as_str()),
            Condition::TextContains(needle) => text.is_some_and(|t| t.to_lowercase().contains(&needle.to_lowercase())),
            Condition::TextMatches(_) => {
                let pattern = patterns.next();
                text.is_some_and(|t| pattern.is_some_and(|p| p.0.is_match(t)))
            }
            _ => true,
        })
    }
}

/// A compiled `text_matches` pattern (compared by its source).
#[derive(Debug, Clone)]
pub struct Pattern(pub regex::Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Eq for Pattern {}

pub fn compile(pattern: &str) -> Result<Pattern, String> {
    regex::RegexBuilder::new(pattern)
        .case_insensitive(true)
        .size_limit(PATTERN_BYTES_MAX)
        .build()
        .map(Pattern)
        .map_err(|e| format!("not a valid regular expression: {e}"))
}

fn invalid(field: String, reason: impl Into<String>) -> Rejection {
    Rejection::Invalid { field, reason: reason.into() }
}

fn check_text(field: String, text: &str) -> Result<(), Rejection> {
    if text.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if text.len() > template::TEXT_BYTES_MAX {
        return Err(invalid(field, format!("at most {} bytes", template::TEXT_BYTES_MAX)));
    }
    Ok(())
}

/// Checks a list of actions' shape (what the rules check when they run is
/// left to them): its length, texts, and that message templates name known
/// placeholders.
pub fn check_actions(actions: &[Action], automated: bool) -> Result<(), Rejection> {
    if actions.is_empty() || actions.len() > ACTIONS_MAX {
        return Err(invalid("actions".into(), format!("1 to {ACTIONS_MAX} actions")));
    }
    for (i, action) in actions.iter().enumerate() {
        let field = |name: &str| format!("actions[{i}].{name}");
        match action {
            Action::AddLabel(label) | Action::RemoveLabel(label) => check_text(field(action.name()), label)?,
            Action::SetField { field: name, value } => {
                check_text(field("set_field.field"), name)?;
                if value.len() > crate::conversation::FIELD_VALUE_BYTES_MAX {
                    return Err(invalid(field("set_field.value"), "too long"));
                }
            }
            Action::SendMessage(text) => {
                check_text(field("send_message"), text)?;
                if automated {
                    template::check(text).map_err(|reason| invalid(field("send_message"), reason))?;
                }
            }
            Action::SetContactAttribute { name, value } => {
                check_text(field("set_contact_attribute.name"), name)?;
                if value.len() > crate::contact::ATTRIBUTE_VALUE_BYTES_MAX {
                    return Err(invalid(field("set_contact_attribute.value"), "too long"));
                }
            }
            Action::Transfer(_) | Action::Assign(_) | Action::Close(_) => {}
        }
    }
    Ok(())
}

fn check_list(field: String, len: usize) -> Result<(), Rejection> {
    if len == 0 || len > CONDITION_LIST_MAX {
        return Err(invalid(field, format!("name 1 to {CONDITION_LIST_MAX}")));
    }
    Ok(())
}

/// Checks an automation's conditions; returns its compiled patterns.
pub fn check_conditions(conditions: &[Condition]) -> Result<Vec<Pattern>, Rejection> {
    if conditions.len() > CONDITIONS_MAX {
        return Err(invalid("conditions".into(), format!("at most {CONDITIONS_MAX}")));
    }
    let mut patterns = Vec::new();
    for (i, condition) in conditions.iter().enumerate() {
        let field = format!("conditions[{i}]");
        match condition {
            Condition::Channel(list) => check_list(field, list.len())?,
            Condition::Campaign(list) => check_list(field, list.len())?,
            Condition::Team(list) => check_list(field, list.len())?,
            Condition::HasLabel(text)
            | Condition::LacksLabel(text)
            | Condition::Label(text)
            | Condition::TextContains(text)
            | Condition::ContactNameContains(text) => check_text(field, text)?,
            Condition::TextMatches(pattern) => {
                check_text(field.clone(), pattern)?;
                patterns.push(compile(pattern).map_err(|reason| invalid(field, reason))?);
            }
            Condition::Field { field: name, .. } => check_text(format!("{field}.field"), name)?,
            Condition::ContactAttribute { name, .. } => check_text(format!("{field}.name"), name)?,
            Condition::OfficeHours(_) => {}
        }
    }
    Ok(patterns)
}
