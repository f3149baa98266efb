//! The integrator contract as files: the reply's JSON Schema and the
//! AsyncAPI 3 document of every NATS subject (command channels with their
//! requests and replies, the commits, the JSON event stream), generated from
//! the code. The event and command schemas come from
//! [`convo_wire::json_schema`]; the AsyncAPI payloads reference those files.

use std::collections::BTreeMap;

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use convo_domain::Command;
use convo_wire::json_schema::{DIALECT, pretty};

use crate::reply::Reply;

/// `schemas/json/reply.schema.json`: every reply to a request.
pub fn reply_schema() -> Value {
    let mut schema = SchemaSettings::draft2020_12().into_generator().root_schema_for::<Reply>().to_value();
    let o = schema.as_object_mut().expect("an object schema");
    o.insert("$schema".into(), DIALECT.into());
    o.insert("$id".into(), "https://convo.invalid/schemas/json/reply.schema.json".into());
    o.insert("title".into(), "convo reply".into());
    o.insert(
        "description".into(),
        "The reply to a command or read request, over NATS and HTTP alike, told apart by `outcome`.".into(),
    );
    schema
}

fn command_types() -> Vec<&'static str> {
    let engine_only = crate::intake::ENGINE_ONLY_COMMANDS;
    Command::TYPE_NAMES.iter().copied().filter(|t| !engine_only.contains(t)).collect()
}

/// `schemas/asyncapi.json`: the NATS side of the contract, AsyncAPI 3.0.
pub fn asyncapi() -> Value {
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    let param = |description: &str| json!({"description": description});
    let prefix_account = || {
        json!({
            "prefix": {"$ref": "#/components/parameters/prefix"},
            "account": {"$ref": "#/components/parameters/account"},
        })
    };

    channels.insert(
        "reply".into(),
        json!({
            "address": null,
            "description": "The requester's reply inbox (`_INBOX.<account>.<key>.…` for an API key's NATS login): \
                            the NATS reply subject of the request. The engine answers nowhere else.",
            "messages": {"reply": {"$ref": "#/components/messages/reply"}},
        }),
    );
    messages.insert(
        "reply".into(),
        json!({
            "name": "reply",
            "title": "Reply",
            "summary": "committed (stream sequence, event ids, events), nothing, duplicate, rejected (code, reason) or error (code, message)",
            "contentType": "application/json",
            "payload": {"$ref": "json/reply.schema.json"},
        }),
    );
    for kind in command_types() {
        let channel = format!("command_{kind}");
        let message = format!("{kind}_request");
        let mut params = prefix_account();
        params.as_object_mut().expect("object").remove("kind");
        channels.insert(
            channel.clone(),
            json!({
                "address": format!("{{prefix}}.{{account}}.cmd.{kind}"),
                "title": format!("{kind} command"),
                "description": format!("Send a `{kind}` request here (NATS request/reply); the body's `command.type` must be `{kind}`."),
                "parameters": params,
                "messages": {message.clone(): {"$ref": format!("#/components/messages/{message}")}},
            }),
        );
        messages.insert(
            message.clone(),
            json!({
                "name": message,
                "title": format!("{kind} request"),
                "contentType": "application/json",
                "headers": {"$ref": "#/components/schemas/requestHeaders"},
                "payload": {"$ref": format!("json/commands/{kind}.schema.json")},
            }),
        );
        operations.insert(
            format!("send_{kind}"),
            json!({
                "action": "send",
                "channel": {"$ref": format!("#/channels/{channel}")},
                "summary": format!("Send a {kind} command and receive the engine's reply"),
                "messages": [{"$ref": format!("#/channels/{channel}/messages/{message}")}],
                "reply": {
                    "channel": {"$ref": "#/channels/reply"},
                    "messages": [{"$ref": "#/channels/reply/messages/reply"}],
                },
            }),
        );
    }

    // The commits, postcard, on the canonical subjects.
    let config_entities: Vec<&str> =
        convo_wire::OTHER_KINDS.iter().copied().filter(|k| !matches!(*k, "state" | "contact")).collect();
    let commit_channels = [
        (
            "conversation_commits",
            "{prefix}.{account}.conv.{conversation}.{kind}",
            "The commits of one conversation. `kind` is the commit's headline: whatever commit closes a \
             conversation is `closed` (one that opens and closes it at once, out of hours, too); then opened, \
             transferred, assigned, message, survey, field, label, timer. Commits appended before closures came \
             first (subjects v1) that opened and closed at once are on `….opened`: read `Convo-Events`, or the \
             JSON stream, which is by event type.",
            json!({"conversation": param("the conversation id"),
                   "kind": {"enum": convo_wire::CONVERSATION_KINDS, "description": "the commit's headline"}}),
        ),
        (
            "agent_commits",
            "{prefix}.{account}.agent.{agent}.state",
            "An agent's presence changes.",
            json!({"agent": param("the user id")}),
        ),
        (
            "configuration_commits",
            "{prefix}.{account}.config.{entity}",
            "The account's configuration changes (audited like everything else).",
            json!({"entity": {"enum": config_entities, "description": "the entity kind"}}),
        ),
        (
            "contact_commits",
            "{prefix}.{account}.contacts.contact",
            "The account's contact book: contacts defined and updated, their attributes set.",
            json!({}),
        ),
    ];
    for (name, address, description, extra) in commit_channels {
        let mut params = prefix_account();
        params.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
        channels.insert(
            name.into(),
            json!({"address": address, "description": description, "parameters": params,
                   "messages": {"commit": {"$ref": "#/components/messages/commit"}}}),
        );
        operations.insert(
            format!("receive_{name}"),
            json!({"action": "receive", "channel": {"$ref": format!("#/channels/{name}")},
                   "messages": [{"$ref": format!("#/channels/{name}/messages/commit")}]}),
        );
    }
    messages.insert(
        "commit".into(),
        json!({
            "name": "commit",
            "title": "Commit (postcard)",
            "summary": "All the events of one decision, postcard-encoded (schemas/postcard/commit.v1.json).",
            "contentType": "application/x-postcard",
            "headers": {"$ref": "#/components/schemas/commitHeaders"},
            "payload": {"type": "string", "format": "binary",
                "description": "A postcard `Commit` (schemas/postcard/commit.v1.json and schemas/postcard/events/); \
                                the version is in `Convo-Schema`. For JSON, subscribe to the JSON stream instead."},
        }),
    );

    // The JSON stream: one CloudEvent per event, by account, stream and type.
    let json_channels = [
        (
            "conversation_events",
            "{prefix}.{account}.json.conv.{conversation}.{type}",
            json!({"conversation": param("the conversation id")}),
        ),
        ("agent_events", "{prefix}.{account}.json.agent.{agent}.{type}", json!({"agent": param("the user id")})),
        ("configuration_events", "{prefix}.{account}.json.config.{type}", json!({})),
        ("contact_events", "{prefix}.{account}.json.contacts.{type}", json!({})),
    ];
    for (name, address, extra) in json_channels {
        let mut params = prefix_account();
        let p = params.as_object_mut().expect("object");
        p.extend(extra.as_object().expect("object").clone());
        p.insert(
            "type".into(),
            json!({"enum": convo_wire::EVENT_TYPES.as_slice(), "description": "the event type (conversation_closed, message_received…)"}),
        );
        channels.insert(
            name.into(),
            json!({
                "address": address,
                "description": "Every event as CloudEvents 1.0 JSON, republished by the engine's JSON projector into \
                                its own JetStream stream (`<STREAM>_JSON`, bounded retention), in stream order. \
                                Filter by subject, e.g. `convo.acme.json.conv.*.conversation_closed`; \
                                resume from the `streamseq` extension with a consumer on that stream.",
                "parameters": params,
                "messages": {"event": {"$ref": "#/components/messages/event"}},
            }),
        );
        operations.insert(
            format!("receive_{name}"),
            json!({"action": "receive", "channel": {"$ref": format!("#/channels/{name}")},
                   "messages": [{"$ref": format!("#/channels/{name}/messages/event")}]}),
        );
    }
    messages.insert(
        "event".into(),
        json!({
            "name": "event",
            "title": "Event (CloudEvents JSON)",
            "contentType": "application/cloudevents+json",
            "headers": {"type": "object", "properties": {
                "Nats-Msg-Id": {"type": "string", "description": "the event id (the broker drops a republished duplicate)"}}},
            "payload": {"$ref": "json/cloudevent.schema.json"},
        }),
    );

    let header = |description: &str| json!({"type": "string", "description": description});
    json!({
        "asyncapi": "3.1.0",
        "info": {
            "title": "convo",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The NATS side of convo. Send commands as JSON requests on \
                `<prefix>.<account>.cmd.<type>` (a reply names the outcome); read every event as CloudEvents JSON on \
                `<prefix>.<account>.json.…` or the compact commits on the canonical subjects. Each API key logs in with \
                its own nkey (answered once when issued) and may publish its account's commands, receive on its inbox \
                and, with the `events` read scope, subscribe to its account's events; nothing else. \
                Event ids are UUID v5 in namespace 6c0a7f1e-4d2b-4c8e-9a51-0d3f2b7ec401 over `<account>/<stream path>/<seq>`.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {
                "host": "{host}",
                "protocol": "nats",
                "description": "The deployment's NATS. The embedded default (`convo serve`) picks a free loopback port \
                    and writes its URL to `<data-dir>/nats.url`.",
                "variables": {"host": {"description": "host:port of the NATS server", "examples": ["127.0.0.1:4222"]}},
                "security": [{"$ref": "#/components/securitySchemes/nkey"}],
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "parameters": {
                "prefix": {"description": "the deployment's subject prefix (default `convo`)", "examples": ["convo"]},
                "account": {"description": "the account (tenant) id; accounts never see each other's subjects"},
            },
            "securitySchemes": {
                "nkey": {"type": "asymmetricEncryption",
                    "description": "An API key's NATS login: its nkey seed (`SU…`, in the reply that issued the key). \
                                    The request also carries the key's bearer token in the `Authorization` header."},
            },
            "schemas": {
                "requestHeaders": {"type": "object", "required": ["Authorization"], "properties": {
                    "Authorization": header("`Bearer <credential>`: who acts comes from it, never from the body")}},
                "commitHeaders": {"type": "object", "properties": {
                    "Convo-Kind": header("the commit's headline (the subject's last token)"),
                    "Convo-Events": header("the event types in the commit, comma-separated, each once, in order"),
                    "Convo-Schema": header("the payload's encoding version (today 1)"),
                    "Convo-Command": header("the id of the command that caused the commit"),
                    "Convo-Correlation": header("the command that started the chain"),
                    "Convo-Account": header("the account"),
                    "Convo-Signature": header("the engine's HMAC-SHA256 of subject, version and payload"),
                }},
            },
            "messages": messages,
        },
    })
}

/// The contract's files this crate generates (path relative to `schemas/`).
pub fn files() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    out.insert("json/reply.schema.json".into(), pretty(&reply_schema()));
    out.insert("asyncapi.json".into(), pretty(&asyncapi()));
    out
}
