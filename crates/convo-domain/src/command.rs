//! Commands: what users, contacts, integrations and the engine's own rules ask
//! of the domain. Each carries its own id (for idempotency) and its actor; its
//! time is passed beside it to `decide`.
//!
//! The JSON view of a command is an object with a `type` and the command's
//! fields (`{"type":"close","conversation":"c1","typification":"sale"}`);
//! [`Command::from_json`] parses it and names the offending field on error.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::aggregate::Actor;
use crate::automation::{AutomationSpec, MacroSpec};
use crate::config::{
    AccountSettings, ApiKeySpec, CampaignSpec, ChannelSpec, ClientSpec, DeniedAttempt, EntityRef, KeyRef, ProjectSpec,
    ReadRecord, SlaModeSpec, TeamSpec, UserSpec, WebhookRef, WebhookSpec,
};
use crate::contact::{ContactAttributeSpec, ContactSpec, EraseContact, SetContactAttribute};
use crate::ids::{
    AccountId, CampaignId, ChannelId, CommandId, ContactId, ConversationId, MacroId, TeamId, TypificationId, UserId,
};
use crate::schedule::ScheduleSpec;

/// At most this many attachments on one message.
pub const ATTACHMENTS_PER_MESSAGE_MAX: usize = 10;

/// A command with its id, tenant and actor.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandEnvelope {
    pub id: CommandId,
    pub account: AccountId,
    pub actor: Actor,
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttachmentKind {
    Image,
    Video,
    Audio,
    Document,
    Location,
    Other,
}

/// A file or media item sent with a message (stored elsewhere; referenced by URL).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    pub kind: AttachmentKind,
    pub url: String,
    #[serde(default)]
    pub name: Option<String>,
}

/// A contact's inbound message; the first one opens the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiveMessage {
    pub conversation: ConversationId,
    /// The contact's opaque id (the gateway's or the contact book's). Never
    /// a handle — not a phone number, not an email address: an id is in
    /// subjects, keys and reports, where erasing the contact cannot reach it.
    /// Name the contact by `contact` or by `handle`, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<ContactId>,
    /// The contact's handle on `channel` (a WhatsApp number, an e-mail
    /// address), for a gateway that knows no id (SPEC §13): the engine finds
    /// the contact holding that identity in the account's contact book, or
    /// makes a new one with an opaque id derived from this command
    /// (`_ct-…`, in the reply's `conversation_opened`) and records it in the
    /// book. Personal data: sealed in the log, erasable, never an id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
    pub channel: ChannelId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_name: Option<String>,
    #[serde(default)]
    pub text: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

/// An agent (or the API as a user) starts a conversation with a contact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartOutbound {
    pub conversation: ConversationId,
    /// The contact's opaque id, never a handle (see `receive_message`).
    pub contact: ContactId,
    pub channel: ChannelId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_name: Option<String>,
    pub text: String,
}

/// An agent's (or supervisor's) message; `/shortcode` expands to a canned response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    pub conversation: ConversationId,
    #[serde(default)]
    pub text: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

/// A conversational bot's message (not a human: it ends no SLA wait).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendBotMessage {
    pub conversation: ConversationId,
    pub bot: String,
    pub text: String,
}

/// Give a queued conversation to an agent (routing or a supervisor).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Assign {
    pub conversation: ConversationId,
    pub agent: UserId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransferTarget {
    Agent(UserId),
    Campaign(CampaignId),
    /// The team's queue in the conversation's campaign (appended).
    Team(TeamId),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    pub conversation: ConversationId,
    pub to: TransferTarget,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetField {
    pub conversation: ConversationId,
    pub field: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelChange {
    pub conversation: ConversationId,
    pub label: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Close {
    pub conversation: ConversationId,
    pub typification: TypificationId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnswerSurvey {
    pub conversation: ConversationId,
    /// 1 (bad) to 5 (excellent).
    pub rating: u8,
    /// Was the problem solved?
    pub solved: bool,
}

/// Runs one of the account's macros on a conversation: every action is
/// checked, and all apply in order in one commit, or none does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunMacro {
    pub conversation: ConversationId,
    #[serde(rename = "macro")]
    pub macro_id: MacroId,
}

/// Fire whatever timers of the conversation are due at the command's time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tick {
    pub conversation: ConversationId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetAgentState {
    pub agent: UserId,
    /// One of the account's `agent_states`.
    pub state: String,
}

/// Every command of the domain. Variants are only ever appended (the order is
/// part of the compact encoding).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    // configuration (the account's catalog)
    ConfigureAccount(AccountSettings),
    DefineClient(ClientSpec),
    UpdateClient(ClientSpec),
    DefineProject(ProjectSpec),
    UpdateProject(ProjectSpec),
    DefineSchedule(ScheduleSpec),
    UpdateSchedule(ScheduleSpec),
    DefineChannel(ChannelSpec),
    UpdateChannel(ChannelSpec),
    DefineUser(UserSpec),
    UpdateUser(UserSpec),
    DefineCampaign(CampaignSpec),
    UpdateCampaign(CampaignSpec),
    Activate(EntityRef),
    Inactivate(EntityRef),
    // agent presence
    SetAgentState(SetAgentState),
    // conversations
    ReceiveMessage(ReceiveMessage),
    StartOutbound(StartOutbound),
    SendMessage(SendMessage),
    SendBotMessage(SendBotMessage),
    Assign(Assign),
    Transfer(Transfer),
    SetField(SetField),
    AddLabel(LabelChange),
    RemoveLabel(LabelChange),
    Close(Close),
    AnswerSurvey(AnswerSurvey),
    Tick(Tick),
    // access (appended: the order is part of the encoding)
    IssueApiKey(ApiKeySpec),
    RevokeApiKey(KeyRef),
    /// Only the engine records these (refused at the door for everyone else).
    RecordDenied(DeniedAttempt),
    // webhooks (appended)
    DefineWebhook(WebhookSpec),
    UpdateWebhook(WebhookSpec),
    /// Tries a webhook's dead-lettered deliveries again.
    RedriveWebhook(WebhookRef),
    // business-hours SLA (appended)
    SetSlaMode(SlaModeSpec),
    // teams (appended)
    DefineTeam(TeamSpec),
    UpdateTeam(TeamSpec),
    // macros and automations (appended)
    DefineMacro(MacroSpec),
    UpdateMacro(MacroSpec),
    RunMacro(RunMacro),
    DefineAutomation(AutomationSpec),
    UpdateAutomation(AutomationSpec),
    // contacts (appended)
    DefineContactAttribute(ContactAttributeSpec),
    UpdateContactAttribute(ContactAttributeSpec),
    DefineContact(ContactSpec),
    UpdateContact(ContactSpec),
    SetContactAttribute(SetContactAttribute),
    /// Only the engine records these: a read served with text the account's
    /// rules would mask (the `unredacted` scope), sampled as refusals are.
    RecordRead(ReadRecord),
    // personal data (appended)
    EraseContact(EraseContact),
    SetRetention(crate::config::RetentionSpec),
}

/// Which aggregate decides a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    Catalog,
    Agent(&'a UserId),
    Conversation(&'a ConversationId),
    /// The account's contact book.
    Contacts,
}

/// A command's JSON that could not be parsed: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{path}`: {message}")]
pub struct CommandParseError {
    /// The offending field, as a path (`type`, `week.mon[0]`, `to`…).
    pub path: String,
    pub message: String,
}

impl Command {
    /// Every command type, as named in the JSON view and in command subjects.
    pub const TYPE_NAMES: [&'static str; 50] = [
        "configure_account",
        "define_client",
        "update_client",
        "define_project",
        "update_project",
        "define_schedule",
        "update_schedule",
        "define_channel",
        "update_channel",
        "define_user",
        "update_user",
        "define_campaign",
        "update_campaign",
        "activate",
        "inactivate",
        "set_agent_state",
        "receive_message",
        "start_outbound",
        "send_message",
        "send_bot_message",
        "assign",
        "transfer",
        "set_field",
        "add_label",
        "remove_label",
        "close",
        "answer_survey",
        "tick",
        "issue_api_key",
        "revoke_api_key",
        "record_denied",
        "define_webhook",
        "update_webhook",
        "redrive_webhook",
        "set_sla_mode",
        "define_team",
        "update_team",
        "define_macro",
        "update_macro",
        "run_macro",
        "define_automation",
        "update_automation",
        "define_contact_attribute",
        "update_contact_attribute",
        "define_contact",
        "update_contact",
        "set_contact_attribute",
        "record_read",
        "erase_contact",
        "set_retention",
    ];

    /// The command's `type` in its JSON view.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::ConfigureAccount(_) => "configure_account",
            Self::DefineClient(_) => "define_client",
            Self::UpdateClient(_) => "update_client",
            Self::DefineProject(_) => "define_project",
            Self::UpdateProject(_) => "update_project",
            Self::DefineSchedule(_) => "define_schedule",
            Self::UpdateSchedule(_) => "update_schedule",
            Self::DefineChannel(_) => "define_channel",
            Self::UpdateChannel(_) => "update_channel",
            Self::DefineUser(_) => "define_user",
            Self::UpdateUser(_) => "update_user",
            Self::DefineCampaign(_) => "define_campaign",
            Self::UpdateCampaign(_) => "update_campaign",
            Self::Activate(_) => "activate",
            Self::Inactivate(_) => "inactivate",
            Self::SetAgentState(_) => "set_agent_state",
            Self::ReceiveMessage(_) => "receive_message",
            Self::StartOutbound(_) => "start_outbound",
            Self::SendMessage(_) => "send_message",
            Self::SendBotMessage(_) => "send_bot_message",
            Self::Assign(_) => "assign",
            Self::Transfer(_) => "transfer",
            Self::SetField(_) => "set_field",
            Self::AddLabel(_) => "add_label",
            Self::RemoveLabel(_) => "remove_label",
            Self::Close(_) => "close",
            Self::AnswerSurvey(_) => "answer_survey",
            Self::Tick(_) => "tick",
            Self::IssueApiKey(_) => "issue_api_key",
            Self::RevokeApiKey(_) => "revoke_api_key",
            Self::RecordDenied(_) => "record_denied",
            Self::DefineWebhook(_) => "define_webhook",
            Self::UpdateWebhook(_) => "update_webhook",
            Self::RedriveWebhook(_) => "redrive_webhook",
            Self::SetSlaMode(_) => "set_sla_mode",
            Self::DefineTeam(_) => "define_team",
            Self::UpdateTeam(_) => "update_team",
            Self::DefineMacro(_) => "define_macro",
            Self::UpdateMacro(_) => "update_macro",
            Self::RunMacro(_) => "run_macro",
            Self::DefineAutomation(_) => "define_automation",
            Self::UpdateAutomation(_) => "update_automation",
            Self::DefineContactAttribute(_) => "define_contact_attribute",
            Self::UpdateContactAttribute(_) => "update_contact_attribute",
            Self::DefineContact(_) => "define_contact",
            Self::UpdateContact(_) => "update_contact",
            Self::SetContactAttribute(_) => "set_contact_attribute",
            Self::RecordRead(_) => "record_read",
            Self::EraseContact(_) => "erase_contact",
            Self::SetRetention(_) => "set_retention",
        }
    }

    pub fn target(&self) -> Target<'_> {
        match self {
            Self::SetAgentState(c) => Target::Agent(&c.agent),
            Self::ReceiveMessage(c) => Target::Conversation(&c.conversation),
            Self::StartOutbound(c) => Target::Conversation(&c.conversation),
            Self::SendMessage(c) => Target::Conversation(&c.conversation),
            Self::SendBotMessage(c) => Target::Conversation(&c.conversation),
            Self::Assign(c) => Target::Conversation(&c.conversation),
            Self::Transfer(c) => Target::Conversation(&c.conversation),
            Self::SetField(c) => Target::Conversation(&c.conversation),
            Self::AddLabel(c) | Self::RemoveLabel(c) => Target::Conversation(&c.conversation),
            Self::Close(c) => Target::Conversation(&c.conversation),
            Self::AnswerSurvey(c) => Target::Conversation(&c.conversation),
            Self::Tick(c) => Target::Conversation(&c.conversation),
            Self::RunMacro(c) => Target::Conversation(&c.conversation),
            Self::DefineContact(_) | Self::UpdateContact(_) | Self::SetContactAttribute(_) | Self::EraseContact(_) => {
                Target::Contacts
            }
            _ => Target::Catalog,
        }
    }

    /// Parses the JSON view: an object with `type` and the command's fields.
    pub fn from_json(value: serde_json::Value) -> Result<Self, CommandParseError> {
        let error = |path: &str, message: String| CommandParseError { path: path.into(), message };
        let serde_json::Value::Object(mut fields) = value else {
            return Err(error("", "a command is a JSON object with a \"type\"".into()));
        };
        let kind = match fields.remove("type") {
            Some(serde_json::Value::String(kind)) => kind,
            Some(_) => return Err(error("type", "must be a string".into())),
            None => {
                return Err(error("type", "missing; every command names its type".into()));
            }
        };
        // The externally tagged form `{kind: fields}` is what serde derives.
        let tagged =
            serde_json::Value::Object([(kind.clone(), serde_json::Value::Object(fields))].into_iter().collect());
        serde_path_to_error::deserialize::<_, Command>(tagged)
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner().to_string();
                if path == "." || path == kind {
                    let at = if inner.starts_with("unknown variant") { "type" } else { "" };
                    return error(at, inner);
                }
                // Drop the variant segment: `close.typification` -> `typification`.
                let field = path.split_once('.').map_or(path.as_str(), |(_, rest)| rest);
                error(field, inner)
            })
            .map_err(|mut e| {
                // serde reports a missing field on the struct that lacks it: name the field itself.
                if let Some(name) = e.message.strip_prefix("missing field `").and_then(|m| m.split('`').next()) {
                    e.path = if e.path.is_empty() { name.to_owned() } else { format!("{}.{name}", e.path) };
                }
                e
            })
    }

    /// The JSON view: `{"type": …, fields…}`.
    pub fn to_json(&self) -> serde_json::Value {
        crate::json_view(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_view_round_trips_and_names_fields() {
        let v = serde_json::json!({"type":"close","conversation":"c1","typification":"sale"});
        let c = Command::from_json(v.clone()).unwrap();
        assert_eq!(c.type_name(), "close");
        assert_eq!(c.to_json(), v);

        let e = Command::from_json(serde_json::json!({"type":"close","conversation":"c1"})).unwrap_err();
        assert!(e.message.contains("typification"), "{e}");
        let e = Command::from_json(
            serde_json::json!({"type":"answer_survey","conversation":"c1","rating":"five","solved":true}),
        )
        .unwrap_err();
        assert_eq!(e.path, "rating");
        let e = Command::from_json(serde_json::json!({"type":"closee","conversation":"c1"})).unwrap_err();
        assert_eq!(e.path, "type");
        let e = Command::from_json(serde_json::json!({"conversation":"c1"})).unwrap_err();
        assert_eq!(e.path, "type");
        let e = Command::from_json(serde_json::json!({"type":"tick","conversation":"c 1"})).unwrap_err();
        assert_eq!(e.path, "conversation");
        let e = Command::from_json(serde_json::json!({"type":"tick","conversation":"c1","extra":1})).unwrap_err();
        assert!(e.message.contains("extra"), "{e}");
        let e = Command::from_json(serde_json::json!({"type":"transfer","conversation":"c1","to":{"queue":"x"}}))
            .unwrap_err();
        assert_eq!(e.path, "to");
    }
}

/// The longest name a system actor may carry (`{"system": …}`), in bytes.
pub const SYSTEM_ACTOR_BYTES_MAX: usize = 64;

/// Command ids starting with this belong to the engine's own commands
/// (timers, routing, later automations); no client may use one, so a client
/// can never make the engine's command look like a repeat, or the reverse.
pub const ENGINE_ID_PREFIX: &str = "_";

/// The id of a command the engine makes itself: `_<kind>-<n>`.
pub fn engine_command_id(kind: &str, n: u64) -> CommandId {
    CommandId::new(&format!("{ENGINE_ID_PREFIX}{kind}-{n}")).expect("engine ids are valid ids")
}

/// A part of a request (or of a scenario line) that is not valid: the field's
/// path from the request's root (`id`, `actor.system`, `command.schedule`…) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {message}")]
pub struct RequestError {
    pub field: String,
    pub message: String,
}

fn request_error(field: impl Into<String>, message: impl Into<String>) -> RequestError {
    RequestError { field: field.into(), message: message.into() }
}

/// The one parser of a request's parts, shared by NATS intake and scenario
/// files: a client's command id (not in the engine's namespace).
pub fn parse_client_id(value: serde_json::Value) -> Result<CommandId, RequestError> {
    let serde_json::Value::String(text) = value else {
        return Err(request_error("id", "must be a string"));
    };
    if text.starts_with(ENGINE_ID_PREFIX) {
        return Err(request_error(
            "id",
            format!(
                "ids starting with {ENGINE_ID_PREFIX:?} are reserved for the engine's own commands (timers, routing)"
            ),
        ));
    }
    CommandId::new(&text).map_err(|e| request_error("id", e.to_string()))
}

/// Who acts, with every string bounded.
pub fn parse_actor(value: serde_json::Value) -> Result<Actor, RequestError> {
    let actor: Actor = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path.is_empty() || path == "." { "actor".to_owned() } else { format!("actor.{path}") };
        request_error(field, e.into_inner().to_string())
    })?;
    if let Actor::System(name) = &actor {
        if name.trim().is_empty() || name.len() > SYSTEM_ACTOR_BYTES_MAX {
            return Err(request_error(
                "actor.system",
                format!("a system actor's name is 1 to {SYSTEM_ACTOR_BYTES_MAX} bytes, this one {}", name.len()),
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(request_error("actor.system", "a system actor's name holds no control characters"));
        }
        if crate::aggregate::ENGINE_ACTORS.contains(&name.as_str()) {
            return Err(request_error(
                "actor.system",
                format!("`{name}` is one of the engine's own rules; a client acts under a name of its own"),
            ));
        }
    }
    Ok(actor)
}

/// The longest string any field of a request may hold, in bytes (the
/// longest legitimate one is a message text or an attachment URL; each
/// field's own rule may be stricter).
pub const REQUEST_STRING_BYTES_MAX: usize = crate::template::TEXT_BYTES_MAX;

/// Whether a character may not appear in any string of a request: the C0
/// controls (NUL, escape, bell…) and DEL, but tab, line feed and carriage
/// return (text people write has lines, some ending in CRLF).
pub fn is_forbidden_control(c: char) -> bool {
    c.is_ascii_control() && !matches!(c, '\t' | '\n' | '\r')
}

/// Finds a string anywhere in a value that is longer than
/// [`REQUEST_STRING_BYTES_MAX`] or holds a control character
/// ([`is_forbidden_control`]); returns its path and why.
fn bad_string(value: &serde_json::Value, path: &str) -> Option<(String, String)> {
    match value {
        serde_json::Value::String(s) if s.len() > REQUEST_STRING_BYTES_MAX => {
            Some((path.to_owned(), format!("at most {REQUEST_STRING_BYTES_MAX} bytes, this one {}", s.len())))
        }
        serde_json::Value::String(s) => s.chars().find(|c| is_forbidden_control(*c)).map(|c| {
            (path.to_owned(), format!("control character U+{:04X} is not allowed (tab and line breaks are)", c as u32))
        }),
        serde_json::Value::Array(items) => {
            items.iter().enumerate().find_map(|(i, v)| bad_string(v, &format!("{path}[{i}]")))
        }
        serde_json::Value::Object(map) => map.iter().find_map(|(k, v)| bad_string(v, &format!("{path}.{k}"))),
        _ => None,
    }
}

/// The command, with the offending field's full path in an error
/// (`command.schedule`, `command.type`); no string in it may be longer than
/// [`REQUEST_STRING_BYTES_MAX`] or hold a control character.
pub fn parse_command(value: serde_json::Value) -> Result<Command, RequestError> {
    if let Some((field, message)) = bad_string(&value, "command") {
        return Err(request_error(field, message));
    }
    Command::from_json(value).map_err(|e| {
        let field = if e.path.is_empty() { "command".to_owned() } else { format!("command.{}", e.path) };
        request_error(field, e.message)
    })
}
