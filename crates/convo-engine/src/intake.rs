//! Command intake: JSON commands as NATS requests on
//! `<prefix>.<account>.cmd.<type>`, each answered with the outcome.
//!
//! A request is `{"id": …, "command": {"type": …, …}}` with a bearer
//! credential beside it (the `Authorization` header): the account comes from
//! the subject, the actor from the credential and the connection
//! ([`crate::access`]); a body that names an actor is refused.
//! The reply is one JSON object whose `outcome` is `committed` (with the log
//! sequence and the events), `nothing`, `duplicate`, `rejected` (a broken
//! rule: `code` and `reason`) or `error` (a request that is not a command:
//! `code` `too_large`, `malformed_json`, `invalid` with the `field`,
//! `unknown_command`, `subject_mismatch` (the body's command type is not the
//! one its subject names); or `overloaded`, `unavailable`). A bad request never stops the engine.

use serde_json::{Value, json};

use convo_domain::command::{RequestError, parse_client_id, parse_command};
use convo_domain::config::WebhookSecret;
use convo_domain::{AccountId, Actor, Catalog, Command, CommandEnvelope};
use convo_store::bus::Request;

use crate::access::{self, AccessConfig, Denied, Principal, ReadScope};

use crate::machine::{Failure, Outcome};
pub use crate::reply::{Credential, NatsLogin, Reply};

/// The default of the largest command request accepted, in bytes
/// (`convo serve --command-bytes-max`).
pub const COMMAND_BYTES_MAX: usize = 64 * 1024;

/// Why a request is not a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntakeError {
    #[error("the request is {bytes} bytes; at most {max}")]
    TooLarge { bytes: usize, max: usize },
    #[error("not JSON: {0}")]
    MalformedJson(String),
    #[error("field `{field}`: {message}")]
    Invalid { field: String, message: String },
    #[error("unknown command type `{0}`")]
    UnknownCommand(String),
    #[error(
        "the subject names command type `{subject}` but the body is a `{body}`; send each command on \
         <prefix>.<account>.cmd.<its type>, so that subject permissions can govern command types"
    )]
    SubjectMismatch { subject: String, body: String },
}

impl IntakeError {
    pub fn code(&self) -> &'static str {
        match self {
            IntakeError::TooLarge { .. } => "too_large",
            IntakeError::MalformedJson(_) => "malformed_json",
            IntakeError::Invalid { .. } => "invalid",
            IntakeError::UnknownCommand(_) => "unknown_command",
            IntakeError::SubjectMismatch { .. } => "subject_mismatch",
        }
    }

    pub fn to_json(&self) -> Value {
        let field = match self {
            IntakeError::Invalid { field, .. } => Some(field.clone()),
            _ => None,
        };
        Reply::Error { code: self.code().into(), message: self.to_string(), field, rule: None }.to_json()
    }
}

impl From<RequestError> for IntakeError {
    fn from(e: RequestError) -> Self {
        IntakeError::Invalid { field: e.field, message: e.message }
    }
}

const KEYS: [&str; 3] = ["id", "command", "reply_events"];

/// A request's command, and what its reply should carry.
#[derive(Debug)]
pub struct Parsed {
    pub envelope: CommandEnvelope,
    /// Whether the reply carries every event's JSON view (`"reply_events": true`);
    /// otherwise it names the events' ids and types only.
    pub reply_events: bool,
}

/// Parses a request of at most `bytes_max` bytes, received on a subject
/// naming `account` and command type `kind`, into a command of that account
/// by `actor` (whom the credential names); a body of another type is refused.
pub fn parse_request(
    account: &str,
    kind: &str,
    payload: &[u8],
    bytes_max: usize,
    actor: Actor,
) -> Result<Parsed, IntakeError> {
    if payload.len() > bytes_max {
        return Err(IntakeError::TooLarge { bytes: payload.len(), max: bytes_max });
    }
    let invalid = |field: &str, message: String| IntakeError::Invalid { field: field.into(), message };
    let account = AccountId::parse_client(account).map_err(|e| invalid("account (subject)", e.to_string()))?;
    if let Some(parsed) = parse_typed(&account, kind, payload, &actor) {
        return Ok(parsed);
    }
    let value: Value = serde_json::from_slice(payload).map_err(|e| IntakeError::MalformedJson(e.to_string()))?;
    let Value::Object(mut map) = value else {
        return Err(invalid("", "a request is a JSON object with id, actor and command".into()));
    };
    if map.contains_key("actor") {
        return Err(invalid(
            "actor",
            "who acts comes from the credential and the connection, never from the body; remove `actor`".into(),
        ));
    }
    if let Some(key) = map.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(invalid(key, format!("unknown key; a request has {}", KEYS.join(", "))));
    }
    let id = match map.remove("id") {
        Some(v) => parse_client_id(v)?,
        None => return Err(invalid("id", "every command carries its id (a string), so a retry is recognised".into())),
    };
    let reply_events = match map.remove("reply_events") {
        None | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(_) => return Err(invalid("reply_events", "a boolean: whether the reply carries the events".into())),
    };
    let command = map.remove("command").ok_or_else(|| invalid("command", "missing".into()))?;
    let command = parse_command(command).map_err(|e| {
        if e.field == "command.type" && e.message.starts_with("unknown variant") {
            IntakeError::UnknownCommand(e.message.split('`').nth(1).unwrap_or("?").to_owned())
        } else {
            e.into()
        }
    })?;
    if command.type_name() != kind {
        return Err(IntakeError::SubjectMismatch { subject: kind.to_owned(), body: command.type_name().to_owned() });
    }
    Ok(Parsed { envelope: CommandEnvelope { id, account, actor, command }, reply_events })
}

/// The usual request parsed straight from its bytes, without a
/// `serde_json::Value` tree: `None` sends it the long way (which words every
/// refusal), and so does any request whose strings could break a bound —
/// longer than [`convo_domain::command::REQUEST_STRING_BYTES_MAX`] in all, or
/// holding an escape or byte that could be a control character. What it
/// accepts, the long way accepts the same (a test holds every fixture's
/// commands to it).
fn parse_typed(account: &AccountId, kind: &str, payload: &[u8], actor: &Actor) -> Option<Parsed> {
    use serde_json::value::RawValue;
    if payload.len() > convo_domain::command::REQUEST_STRING_BYTES_MAX
        || payload.trim_ascii_start().first() != Some(&b'{')
        || payload.contains(&0x7f)
        || payload.windows(2).any(|w| w[0] == b'\\' && matches!(w[1], b'u' | b'b' | b'f'))
    {
        return None;
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wire<'a> {
        id: String,
        #[serde(default)]
        reply_events: bool,
        #[serde(borrow)]
        command: &'a RawValue,
    }
    let text = std::str::from_utf8(payload).ok()?;
    let wire: Wire<'_> = serde_json::from_str(text).ok()?;
    let id = convo_domain::command::parse_client_id(Value::String(wire.id)).ok()?;
    // `{"type": t, fields…}` as serde's externally tagged `{t: {fields…}}`.
    let entries = convo_wire::cloud_json::object_entries(wire.command.get())?;
    let mut types = entries.iter().filter(|(k, _)| *k == "type");
    let (Some((_, type_)), None) = (types.next(), types.next()) else { return None };
    let type_: &str = serde_json::from_str(type_.get()).ok()?;
    if type_ != kind {
        return None;
    }
    let mut tagged = String::with_capacity(wire.command.get().len() + 8);
    tagged.push_str("{\"");
    tagged.push_str(type_);
    tagged.push_str("\":{");
    // Keys come borrowed from the text, so they hold no escape: copied as they are.
    for (n, (key, value)) in entries.iter().filter(|(k, _)| *k != "type").enumerate() {
        if n > 0 {
            tagged.push(',');
        }
        tagged.push('"');
        tagged.push_str(key);
        tagged.push_str("\":");
        tagged.push_str(value.get());
    }
    tagged.push_str("}}");
    let command: convo_domain::Command = serde_json::from_str(&tagged).ok()?;
    Some(Parsed {
        envelope: CommandEnvelope { id, account: account.clone(), actor: actor.clone(), command },
        reply_events: wire.reply_events,
    })
}

/// A request that passed the door.
#[derive(Debug)]
pub enum Admitted {
    /// A command to execute; `credential` is what a key being issued needs
    /// (answered once, with the commit, and never stored).
    Command { envelope: Box<CommandEnvelope>, credential: Option<Credential>, reply_events: bool },
    /// A read the principal may make, over this part of the account, and
    /// whether it reads the text the account's rules mask (its key's scope).
    Read { principal: Principal, scope: ReadScope, unredacted: bool },
}

/// A request refused at the door: its reply, and the denial (with who tried)
/// when it was one, for the audit log.
#[derive(Debug)]
pub struct Refused {
    pub reply: Value,
    pub denied: Option<Box<(Denied, String)>>,
    /// Whether the reply may be sent: not when the reply subject is not the sender's own.
    pub answer: bool,
}

impl Refused {
    /// The log line of a request refused at a door (`where_`: which door,
    /// and whether the refusal is recorded), with its code, rule and address.
    pub fn log(&self, request: &Request, where_: &str) {
        let text = |key: &str| self.reply[key].as_str().unwrap_or("").to_owned();
        let ip = request.ip.map_or_else(|| "unknown (NATS)".to_owned(), |ip| ip.to_string());
        tracing::info!(
            account = %request.account,
            kind = %request.kind,
            code = text("code"),
            rule = self.rule(),
            ip = %ip,
            "{where_}: {}",
            text("message")
        );
    }

    /// The rule it names (`credential`, `tenant`, `scope`, `role`, `network`,
    /// `reply_subject`…), or its code when it is not a denial (`invalid`…).
    pub fn rule(&self) -> &str {
        match &self.denied {
            Some(denied) => denied.0.rule(),
            None => self.reply["code"].as_str().unwrap_or("invalid"),
        }
    }
}

impl From<IntakeError> for Refused {
    fn from(e: IntakeError) -> Self {
        Refused { reply: e.to_json(), denied: None, answer: true }
    }
}

/// The command types no client may send, whatever its credential.
pub const ENGINE_ONLY_COMMANDS: [&str; 2] = ["record_denied", "record_read"];

/// Takes a request through the door: its size, its credential (checked
/// against `catalog`, the account's, `None` when there is no such account),
/// what the principal may do, then the body.
pub fn admit(
    access: &AccessConfig,
    catalog: Option<&Catalog>,
    request: &Request,
    bytes_max: usize,
) -> Result<Admitted, Refused> {
    let who = |principal: Option<&Principal>| principal.map_or_else(|| "anonymous".to_owned(), Principal::name);
    // A reply goes to the sender's own inbox only: otherwise nothing is answered at all, not even an error.
    if let Some(subject) = request.reply_subject()
        && let Err(message) = convo_store::bus::reply_allowed(subject, request.credential.as_deref(), request.forwarded)
    {
        let d = Denied::Forbidden { rule: "reply_subject", message };
        let principal = AccountId::parse_client(&request.account)
            .ok()
            .and_then(|account| access::authenticate(access, request.credential.as_deref(), &account, catalog).ok());
        let denied = Some(Box::new((d.clone(), who(principal.as_ref()))));
        return Err(Refused { reply: d.to_json(), denied, answer: false });
    }
    if request.payload.len() > bytes_max {
        return Err(IntakeError::TooLarge { bytes: request.payload.len(), max: bytes_max }.into());
    }
    let account = AccountId::parse_client(&request.account)
        .map_err(|e| IntakeError::Invalid { field: "account".into(), message: e.to_string() })?;
    let principal = access::authenticate(access, request.credential.as_deref(), &account, catalog)
        .map_err(|d| Refused { reply: d.to_json(), denied: Some(Box::new((d, who(None)))), answer: true })?;
    let deny =
        |d: Denied| Refused { reply: d.to_json(), denied: Some(Box::new((d, who(Some(&principal))))), answer: true };
    if request.read {
        let scope = access::authorize_read(&principal, &account, catalog, &request.kind, request.ip).map_err(deny)?;
        // A contact's export is their personal data in full (SPEC §13): recorded as such a read, always.
        let unredacted =
            access::reads_unredacted(&principal, catalog) || request.kind == convo_domain::contact::EXPORT_READ;
        return Ok(Admitted::Read { principal, scope, unredacted });
    }
    if ENGINE_ONLY_COMMANDS.contains(&request.kind.as_str()) {
        return Err(deny(Denied::Forbidden {
            rule: "engine_only",
            message: format!("`{}` is the engine's own command; timers fire by themselves", request.kind),
        }));
    }
    // The body first (a malformed one says so whoever sent it), then what the principal may send.
    let Parsed { mut envelope, reply_events } =
        parse_request(&request.account, &request.kind, &request.payload, bytes_max, principal.actor(request.ip))?;
    envelope.actor = access::authorize_command(&principal, &account, &request.kind, request.ip).map_err(deny)?;
    if let Command::DefineWebhook(spec) | Command::UpdateWebhook(spec) = &mut envelope.command {
        convo_store::egress::check_url(&spec.url, &access.webhook_allowed)
            .map_err(|message| IntakeError::Invalid { field: "command.url".into(), message })?;
        if let Some(sealer) = &access.sealer {
            let context = convo_store::seal::webhook_secret_context(envelope.account.as_str(), spec.id.as_str());
            let sealed = sealer.seal(&context, spec.secret.expose().as_bytes());
            spec.secret = WebhookSecret::sealed(&sealed).map_err(|e| Refused {
                reply: unavailable(&e),
                denied: None,
                answer: true,
            })?;
        }
    }
    let mut credential = None;
    if let Command::IssueApiKey(spec) = &mut envelope.command {
        if !spec.secret_sha256.is_empty() {
            return Err(IntakeError::Invalid {
                field: "command.secret_sha256".into(),
                message: "the engine generates the secret and fills this; leave it out".into(),
            }
            .into());
        }
        if !spec.nats_nkey.is_empty() {
            return Err(IntakeError::Invalid {
                field: "command.nats_nkey".into(),
                message: "the engine derives the key's NATS login from its secret; leave it out".into(),
            }
            .into());
        }
        let secret =
            access::new_secret().map_err(|e| Refused { reply: unavailable(&e), denied: None, answer: true })?;
        let login = access::nats_keypair(&secret).map_err(|e| Refused {
            reply: unavailable(&e),
            denied: None,
            answer: true,
        })?;
        spec.secret_sha256 = access::hex(&access::sha256(&secret));
        spec.nats_nkey = login.public_key();
        credential = Some(Credential {
            token: access::key_token(&envelope.account, &spec.key, &secret),
            nats: NatsLogin {
                nkey_seed: login.seed().map_err(|e| Refused {
                    reply: unavailable(&e.to_string()),
                    denied: None,
                    answer: true,
                })?,
                inbox_prefix: access::nats_inbox(&envelope.account, &spec.key),
            },
        });
    }
    Ok(Admitted::Command { envelope: Box::new(envelope), credential, reply_events })
}

/// The reply to a read the principal may make.
pub fn authorized(principal: &Principal, scope: &ReadScope, unredacted: bool) -> Value {
    let scope = match scope {
        ReadScope::Account => json!("account"),
        ReadScope::Campaigns(list) => json!({"campaigns": list}),
        ReadScope::Agent(id) => json!({"agent": id}),
    };
    Reply::Authorized { principal: principal.name(), scope, unredacted }.to_json()
}

/// What became of a command, as the reply, the logs and the metrics name it:
/// the outcome (`committed`, `nothing`, `duplicate`, `rejected`,
/// `overloaded`, `unavailable`) and, when it was not executed, the code.
pub fn classify(result: &Result<Outcome, Failure>) -> (&'static str, Option<&'static str>) {
    match result {
        Ok(Outcome::Committed { .. }) => ("committed", None),
        Ok(Outcome::Nothing) => ("nothing", None),
        Ok(Outcome::Duplicate { .. }) => ("duplicate", None),
        Ok(Outcome::Refused(crate::Refusal::Rejected(r))) => ("rejected", Some(r.code())),
        Ok(Outcome::Refused(_)) => ("rejected", Some("unrecordable")),
        Err(Failure::Overloaded(_)) => ("overloaded", Some("overloaded")),
        Err(_) => ("unavailable", Some("unavailable")),
    }
}

/// The reply to a command that was executed: with every event's JSON view
/// when `events`, and the credential of a key it issued.
pub fn reply(outcome: &Outcome, events: bool, credential: Option<Credential>) -> Reply {
    match outcome {
        Outcome::Committed { log_seq, commit } => Reply::Committed {
            log_seq: *log_seq,
            event_ids: commit.event_ids(),
            event_types: commit.events.iter().map(|e| e.event.type_name()).collect(),
            events: events.then(|| commit.json_lines()),
            credential,
        },
        Outcome::Nothing => Reply::Nothing,
        Outcome::Duplicate { first_seq, last_seq } => Reply::Duplicate { first_seq: *first_seq, last_seq: *last_seq },
        Outcome::Refused(crate::Refusal::Rejected(r)) => {
            Reply::Rejected { code: r.code().into(), reason: r.to_string(), class: r.class().as_str(), rule: r.rule() }
        }
        Outcome::Refused(other) => Reply::Rejected {
            code: "unrecordable".into(),
            reason: other.to_string(),
            class: convo_domain::RejectionClass::Conflict.as_str(),
            rule: None,
        },
    }
}

/// The reply to a command the machine answered, executed or not.
pub fn result_reply(result: &Result<Outcome, Failure>, events: bool, credential: Option<Credential>) -> Reply {
    match result {
        Ok(outcome) => reply(outcome, events, credential),
        Err(Failure::Overloaded(why)) => Reply::overloaded(why),
        Err(failure) => Reply::error("unavailable", failure.to_string()),
    }
}

/// The reply when the engine has no room for the command now.
pub fn overloaded(why: &str) -> Value {
    Reply::overloaded(why).to_json()
}

/// The reply when the engine could not execute the command (the store is down).
pub fn unavailable(message: &str) -> Value {
    Reply::error("unavailable", message).to_json()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_request(account: &str, kind: &str, payload: &[u8], max: usize) -> Result<CommandEnvelope, IntakeError> {
        super::parse_request(account, kind, payload, max, Actor::system("test")).map(|p| p.envelope)
    }

    /// The request the long way (through a `Value` tree), as if the typed
    /// path had declined it.
    fn parse_by_tree(account: &str, kind: &str, payload: &[u8]) -> Result<Parsed, IntakeError> {
        let long = [payload, b" ".repeat(convo_domain::command::REQUEST_STRING_BYTES_MAX).as_slice()].concat();
        super::parse_request(account, kind, &long, usize::MAX, Actor::system("test"))
    }

    /// Every command of every fixture, as a request: the typed path takes
    /// it (most) and gives what the long way gives; requests it declines
    /// (escapes, bad fields) get the long way's answer.
    #[test]
    fn the_typed_path_parses_requests_as_the_tree_does() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../replay-fixtures");
        let (mut typed, mut all) = (0, 0);
        let account = AccountId::parse_client("acme").unwrap();
        let actor = Actor::system("test");
        for entry in std::fs::read_dir(fixtures).unwrap() {
            let Ok(text) = std::fs::read_to_string(entry.unwrap().path().join("input.jsonl")) else { continue };
            for line in text.lines().filter(|l| l.trim_start().starts_with('{')) {
                let input: Value = serde_json::from_str(line).unwrap();
                let Some(command) = input.get("command") else { continue };
                let kind = command["type"].as_str().unwrap_or_default();
                for reply_events in [None, Some(true)] {
                    let mut request = json!({"id": input["id"].as_str().unwrap_or("x1"), "command": command});
                    if let Some(flag) = reply_events {
                        request["reply_events"] = json!(flag);
                    }
                    let payload = serde_json::to_vec(&request).unwrap();
                    let long = parse_by_tree("acme", kind, &payload);
                    all += 1;
                    if let Some(fast) = parse_typed(&account, kind, &payload, &actor) {
                        typed += 1;
                        let long = long.as_ref().expect("what the typed path takes, the long way takes");
                        assert_eq!(fast.envelope, long.envelope, "{line}");
                        assert_eq!(fast.reply_events, long.reply_events);
                    }
                    let answer = super::parse_request("acme", kind, &payload, COMMAND_BYTES_MAX, actor.clone());
                    assert_eq!(answer.map(|p| p.envelope).ok(), long.map(|p| p.envelope).ok(), "{line}");
                }
            }
        }
        assert!(all > 500 && typed * 10 >= all * 9, "{typed} of {all} requests took the typed path");
        // Refusals are the long way's, word for word.
        for body in [
            r#"{"id":"m1","actor":{"kind":"user"},"command":{"type":"tick","conversation":"c1"}}"#,
            r#"{"id":"m1","command":{"type":"tick","conversation":"c1"},"extra":1}"#,
            r#"{"id":"m1","command":{"type":"tick","conversation":"c\u0007"}}"#,
            r#"{"id":"_t1","command":{"type":"tick","conversation":"c1"}}"#,
            r#"{"id":"m1","reply_events":null,"command":{"type":"tick","conversation":"c1"}}"#,
            r#"{"id":"m1","command":{"type":"close","conversation":"c1"}}"#,
            r#"["m1",false,{"type":"tick","conversation":"c1"}]"#,
        ] {
            assert!(parse_typed(&account, "tick", body.as_bytes(), &actor).is_none(), "{body}");
            assert_eq!(
                super::parse_request("acme", "tick", body.as_bytes(), COMMAND_BYTES_MAX, actor.clone()).unwrap_err(),
                parse_by_tree("acme", "tick", body.as_bytes()).unwrap_err()
            );
        }
    }

    #[test]
    fn requests_are_parsed_or_refused_with_a_code() {
        let ok = br#"{"id":"m1","command":{"type":"receive_message","conversation":"c1","contact":"p1","channel":"wa","text":"hola"}}"#;
        assert_eq!(
            parse_request("acme", "receive_message", ok, COMMAND_BYTES_MAX).unwrap().command.type_name(),
            "receive_message"
        );
        assert_eq!(
            parse_request("acme", "receive_message", b"{not json", COMMAND_BYTES_MAX).unwrap_err().code(),
            "malformed_json"
        );
        assert_eq!(
            parse_request(
                "acme",
                "launch_rocket",
                br#"{"id":"m1","command":{"type":"launch_rocket"}}"#,
                COMMAND_BYTES_MAX
            )
            .unwrap_err(),
            IntakeError::UnknownCommand("launch_rocket".into())
        );
        let e = parse_request(
            "acme",
            "tick",
            br#"{"id":"m1","command":{"type":"tick","conversation":"a b"}}"#,
            COMMAND_BYTES_MAX,
        )
        .unwrap_err();
        assert_eq!((e.code(), e.to_json()["field"].as_str()), ("invalid", Some("command.conversation")));
        assert_eq!(
            parse_request("acme", "tick", br#"{"command":{}}"#, COMMAND_BYTES_MAX).unwrap_err().code(),
            "invalid"
        );
        assert_eq!(
            parse_request("acme", "tick", &vec![b' '; COMMAND_BYTES_MAX + 1], COMMAND_BYTES_MAX).unwrap_err().code(),
            "too_large"
        );
        let kind = |body: &str| {
            serde_json::from_str::<Value>(body).ok().and_then(|v| v["command"]["type"].as_str().map(str::to_owned))
        };
        let field = |body: &str| match parse_request(
            "acme",
            &kind(body).unwrap_or_default(),
            body.as_bytes(),
            COMMAND_BYTES_MAX,
        ) {
            Err(IntakeError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        // The subject's command type binds the body's.
        assert_eq!(
            parse_request(
                "acme",
                "receive_message",
                br#"{"id":"x","command":{"type":"configure_account","name":"A"}}"#,
                COMMAND_BYTES_MAX
            )
            .unwrap_err()
            .code(),
            "subject_mismatch"
        );
        // The engine's namespace is closed to clients.
        assert_eq!(field(r#"{"id":"_tick-5","command":{"type":"tick","conversation":"c1"}}"#), "id");
        // No string in a command is unbounded.
        let label = "l".repeat(5000);
        assert_eq!(
            field(&format!(r#"{{"id":"a","command":{{"type":"add_label","conversation":"c1","label":"{label}"}}}}"#)),
            "command.label"
        );
        // Who acts comes from the credential: a body naming an actor is refused.
        assert_eq!(
            field(
                r#"{"id":"a","actor":{"system":"contact_inactivity"},"command":{"type":"tick","conversation":"c1"}}"#
            ),
            "actor"
        );
        // A missing field is named with its full path.
        assert_eq!(field(r#"{"id":"a","command":{"type":"define_schedule","id":"s1"}}"#), "command.name");
        // No control character in free text (tab and line breaks are text).
        let text = |t: &str| {
            format!(
                r#"{{"id":"a","command":{{"type":"receive_message","conversation":"c1","contact":"p1","channel":"wa","text":{}}}}}"#,
                serde_json::to_string(t).unwrap()
            )
        };
        assert_eq!(field(&text("hola\u{0}")), "command.text");
        assert_eq!(field(&text("\u{1b}[31mrojo")), "command.text");
        assert!(parse_request("acme", "receive_message", text("línea 1\r\n\tlínea 2").as_bytes(), 4096).is_ok());
        // The engine's namespace is closed to every entity a client names.
        assert_eq!(
            field(
                r#"{"id":"a","command":{"type":"define_user","id":"_root","name":"R","email":"r@x.co","role":"admin"}}"#
            ),
            "command.id"
        );
        assert_eq!(
            parse_request("_engine", "tick", br#"{"id":"a","command":{"type":"tick","conversation":"c1"}}"#, 4096)
                .unwrap_err()
                .to_json()["field"],
            "account (subject)"
        );
        // Dates a calendar can hold.
        assert_eq!(
            field(
                r#"{"id":"a","command":{"type":"define_schedule","id":"s1","name":"S","time_zone":"UTC","week":{},"holidays":["99999-01-01"]}}"#
            ),
            "command.holidays[0]"
        );
    }
}
