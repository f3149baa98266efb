//! Why a command was refused: one variant per broken rule.
//!
//! A rejection produces no event. Its `Display` is a sentence a supervisor or
//! an integrator understands; its [`Rejection::code`] is a stable snake_case
//! name for programs (and for the expected output of replay fixtures).

use crate::ids::{CampaignId, ChannelId, ContactId, ConversationId, MacroId, TeamId, TypificationId, UserId};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    // --- input and configuration ---
    #[error("invalid `{field}`: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{entity} is already defined; use the update command to change it")]
    AlreadyDefined { entity: String },
    #[error("{entity} does not exist")]
    Unknown { entity: String },
    #[error("{entity} is inactive")]
    Inactive { entity: String },
    #[error("campaign {campaign} cannot be inactivated while {count} agent(s) are assigned to it")]
    CampaignHasAssignedAgents { campaign: CampaignId, count: usize },
    #[error("campaign {campaign} cannot be inactivated while {count} conversation(s) are active in it")]
    CampaignHasActiveConversations { campaign: CampaignId, count: u32 },

    #[error("{handle} on channel {channel} is already contact {contact}'s")]
    IdentityTaken { channel: ChannelId, handle: String, contact: ContactId },
    #[error(
        "contact attribute `{attribute}` of contact {contact} must be set before closing (the campaign requires it)"
    )]
    ContactAttributeMissing { attribute: String, contact: ContactId },
    #[error("macro {macro_id}: action {index} ({action}) is refused, so none applies: {reason}")]
    MacroActionRefused { macro_id: MacroId, index: usize, action: &'static str, reason: Box<Rejection> },
    #[error("team {team} cannot be inactivated while {count} conversation(s) are active with it")]
    TeamHasActiveConversations { team: TeamId, count: u32 },

    // --- access ---
    #[error("{action} needs {needed}")]
    Forbidden { action: &'static str, needed: &'static str },
    #[error("user {user} may not act from {ip}: it is outside the account's allowed networks")]
    NetworkNotAllowed { user: UserId, ip: String },

    // --- conversation lifecycle ---
    #[error("conversation {0} does not exist; only a contact's message or an outbound start opens one")]
    UnknownConversation(ConversationId),
    #[error("conversation {0} already exists")]
    ConversationExists(ConversationId),
    #[error("conversation {0} is closed; the contact's next message opens a new one")]
    ConversationClosed(ConversationId),
    #[error("conversation {conversation} belongs to contact {expected} on channel {channel}, not to this sender")]
    NotThisConversation { conversation: ConversationId, expected: String, channel: ChannelId },
    #[error("channel {0} is not attached to any active campaign")]
    ChannelWithoutCampaign(ChannelId),
    #[error("conversation is already assigned to {0}")]
    AlreadyAssigned(UserId),
    #[error("conversation is not assigned to any agent")]
    NotAssigned,
    #[error("only the assigned agent ({assigned}) or a supervisor may do this in the conversation")]
    NotTheAssignedAgent { assigned: UserId },
    #[error("user {agent} is not an agent of campaign {campaign}")]
    NotInCampaign { agent: UserId, campaign: CampaignId },
    #[error("agent {agent} is in state `{state}`, not available")]
    AgentUnavailable { agent: UserId, state: String },
    #[error("agent {agent} already attends {max} conversation(s), the maximum")]
    AgentAtCapacity { agent: UserId, max: u32 },

    // --- messages ---
    #[error("a message needs text or an attachment")]
    EmptyMessage,
    #[error("campaign {0} does not allow agents to send attachments")]
    AttachmentsNotAllowed(CampaignId),
    #[error("campaign {0} does not allow emoji in agent messages")]
    EmojiNotAllowed(CampaignId),
    #[error("no canned response has the shortcode /{0}")]
    UnknownShortcode(String),

    // --- transfer ---
    #[error("campaign {0} does not allow agents to transfer to another agent")]
    AgentTransferNotAllowed(CampaignId),
    #[error("the conversation is already with {0}")]
    TransferToSelf(String),

    // --- close ---
    #[error("typification {typification} is not one of campaign {campaign}'s closing typifications")]
    TypificationNotAllowed { typification: TypificationId, campaign: CampaignId },
    #[error("mandatory field `{0}` must be set before closing")]
    MandatoryFieldMissing(String),
    #[error("{0} must reply in the conversation before closing it (the campaign requires a reply)")]
    ReplyRequired(UserId),

    // --- fields, labels, survey ---
    #[error("`{field}` is not a dynamic field of campaign {campaign}")]
    UnknownField { field: String, campaign: CampaignId },
    #[error("label `{0}` is not defined in the account settings")]
    UnknownLabel(String),
    #[error("no satisfaction survey was sent in this conversation")]
    SurveyNotSent,
    #[error("the satisfaction survey was already answered")]
    SurveyAlreadyAnswered,

    // --- agent presence ---
    #[error("`{0}` is not one of the account's agent states")]
    UnknownAgentState(String),

    // --- programming errors at the edge ---
    #[error("command {command} is not for {aggregate}")]
    WrongAggregate { command: &'static str, aggregate: &'static str },
}

/// What kind of refusal a rejection is, as whoever answers a client maps it
/// (HTTP 400, 403, 404, 409): the rejection declares it, so a new rule
/// needs no list elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionClass {
    /// The command is not valid as written.
    Invalid,
    /// The actor may not do this (its role, its network, the assignment).
    Forbidden,
    /// What the command names does not exist.
    NotFound,
    /// The state of things refuses it now.
    Conflict,
}

impl RejectionClass {
    /// Its name in replies (`class`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
        }
    }
}

impl Rejection {
    /// The kind of refusal (what status a client gets).
    pub fn class(&self) -> RejectionClass {
        match self {
            Self::Invalid { .. } | Self::WrongAggregate { .. } => RejectionClass::Invalid,
            Self::Forbidden { .. }
            | Self::NetworkNotAllowed { .. }
            | Self::NotTheAssignedAgent { .. }
            | Self::NotInCampaign { .. } => RejectionClass::Forbidden,
            Self::Unknown { .. } | Self::UnknownConversation(_) => RejectionClass::NotFound,
            _ => RejectionClass::Conflict,
        }
    }

    /// For a forbidden refusal, the access rule it names (`role`, `network`,
    /// `assignment`, `campaign`), as the front door names its own.
    pub fn rule(&self) -> Option<&'static str> {
        match self {
            Self::Forbidden { .. } => Some("role"),
            Self::NetworkNotAllowed { .. } => Some("network"),
            Self::NotTheAssignedAgent { .. } => Some("assignment"),
            Self::NotInCampaign { .. } => Some("campaign"),
            _ => None,
        }
    }

    /// A stable, machine-readable name of the broken rule.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid { .. } => "invalid",
            Self::AlreadyDefined { .. } => "already_defined",
            Self::Unknown { .. } => "unknown",
            Self::Inactive { .. } => "inactive",
            Self::CampaignHasAssignedAgents { .. } => "campaign_has_assigned_agents",
            Self::CampaignHasActiveConversations { .. } => "campaign_has_active_conversations",
            Self::Forbidden { .. } => "forbidden",
            Self::NetworkNotAllowed { .. } => "network_not_allowed",
            Self::UnknownConversation(_) => "unknown_conversation",
            Self::ConversationExists(_) => "conversation_exists",
            Self::ConversationClosed(_) => "conversation_closed",
            Self::NotThisConversation { .. } => "not_this_conversation",
            Self::ChannelWithoutCampaign(_) => "channel_without_campaign",
            Self::AlreadyAssigned(_) => "already_assigned",
            Self::NotAssigned => "not_assigned",
            Self::NotTheAssignedAgent { .. } => "not_the_assigned_agent",
            Self::NotInCampaign { .. } => "not_in_campaign",
            Self::AgentUnavailable { .. } => "agent_unavailable",
            Self::AgentAtCapacity { .. } => "agent_at_capacity",
            Self::EmptyMessage => "empty_message",
            Self::AttachmentsNotAllowed(_) => "attachments_not_allowed",
            Self::EmojiNotAllowed(_) => "emoji_not_allowed",
            Self::UnknownShortcode(_) => "unknown_shortcode",
            Self::AgentTransferNotAllowed(_) => "agent_transfer_not_allowed",
            Self::TransferToSelf(_) => "transfer_to_self",
            Self::TypificationNotAllowed { .. } => "typification_not_allowed",
            Self::MandatoryFieldMissing(_) => "mandatory_field_missing",
            Self::ReplyRequired(_) => "reply_required",
            Self::UnknownField { .. } => "unknown_field",
            Self::UnknownLabel(_) => "unknown_label",
            Self::SurveyNotSent => "survey_not_sent",
            Self::SurveyAlreadyAnswered => "survey_already_answered",
            Self::UnknownAgentState(_) => "unknown_agent_state",
            Self::WrongAggregate { .. } => "wrong_aggregate",
            Self::TeamHasActiveConversations { .. } => "team_has_active_conversations",
            Self::MacroActionRefused { .. } => "macro_action_refused",
            Self::IdentityTaken { .. } => "identity_taken",
            Self::ContactAttributeMissing { .. } => "contact_attribute_missing",
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), reason: reason.into() }
    }
}
