//! JSON Schema (2020-12) of the JSON views: every command request, every
//! event as `convo tail` and the feeds print it, and the CloudEvents envelope
//! around an event. Generated from the types themselves (schemars, which reads
//! the same serde attributes the JSON is made with), written to
//! `schemas/json/` and checked against the code by the drift test.
//!
//! The views are not serde's externally tagged form (`{"close": {…}}`) but the
//! flat form people write and read (`{"type": "close", …}`, see
//! [`convo_domain::json_view`]): [`flatten_tagged`] turns one into the other,
//! so the schema says exactly what the JSON is. Each file stands alone (its
//! own `$defs`), so a validator needs no resolver.

use std::collections::{BTreeMap, BTreeSet};

use schemars::generate::{Contract, SchemaSettings};
use schemars::{JsonSchema, Schema};
use serde_json::{Map, Value, json};

use convo_domain::{Actor, AgentEvent, Command, ConfigEvent, ConversationEvent};

use crate::SCHEMA_VERSION;

/// The JSON Schema dialect of every file.
pub const DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

/// A schema of a type and the named types it uses.
struct Generated {
    root: Value,
    defs: Map<String, Value>,
}

fn generate<T: JsonSchema>(contract: Contract) -> Generated {
    let mut settings = SchemaSettings::draft2020_12();
    settings.contract = contract;
    let mut generator = settings.into_generator();
    let schema: Schema = generator.root_schema_for::<T>();
    let mut root = schema.to_value();
    let defs = match root.as_object_mut().and_then(|o| o.remove("$defs")) {
        Some(Value::Object(defs)) => defs,
        _ => Map::new(),
    };
    if let Some(o) = root.as_object_mut() {
        o.remove("$schema");
        o.remove("title");
    }
    Generated { root, defs }
}

fn resolve<'a>(schema: &'a Value, defs: &'a Map<String, Value>) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => r.strip_prefix("#/$defs/").and_then(|name| defs.get(name)).unwrap_or(schema),
        None => schema,
    }
}

/// The variants of an externally tagged enum's schema, as (name, schema of
/// its content or `None` for a unit variant).
fn variants(schema: &Value) -> Vec<(String, Option<Value>)> {
    let mut out = Vec::new();
    let alternatives = schema.get("oneOf").and_then(Value::as_array).cloned().unwrap_or_else(|| vec![schema.clone()]);
    for alt in alternatives {
        if let Some(names) = alt.get("enum").and_then(Value::as_array) {
            out.extend(names.iter().filter_map(Value::as_str).map(|n| (n.to_owned(), None)));
        } else if let Some(name) = alt.get("const").and_then(Value::as_str) {
            out.push((name.to_owned(), None));
        } else if let Some(props) = alt.get("properties").and_then(Value::as_object)
            && props.len() == 1
        {
            let (name, inner) = props.iter().next().expect("one property");
            let mut inner = inner.clone();
            if let (Some(desc), Some(o)) = (alt.get("description"), inner.as_object_mut()) {
                o.entry("description").or_insert(desc.clone());
            }
            out.push((name.clone(), Some(inner)));
        }
    }
    out
}

/// The flat view of one variant: `{"type": name}` plus the content's fields
/// (an object's fields are merged in; anything else is under `value`), as
/// [`convo_domain::json_view`] writes it. `closed` forbids other fields.
fn flat_variant(name: &str, content: Option<&Value>, defs: &Map<String, Value>, closed: bool) -> Value {
    let tag = json!({"const": name});
    let Some(content) = content else {
        return json!({"type": "object", "properties": {"type": tag}, "required": ["type"], "additionalProperties": !closed});
    };
    let resolved = resolve(content, defs);
    if let Some(alternatives) = resolved.get("oneOf").and_then(Value::as_array) {
        // An enum inside: each of its shapes, flattened the same way.
        let shapes: Vec<Value> = alternatives.iter().map(|alt| flat_variant(name, Some(alt), defs, closed)).collect();
        return json!({"oneOf": shapes});
    }
    if resolved.get("type").and_then(Value::as_str) == Some("object")
        && let Some(props) = resolved.get("properties").and_then(Value::as_object)
    {
        let mut properties = Map::new();
        properties.insert("type".into(), tag);
        properties.extend(props.clone());
        let mut required = vec![Value::from("type")];
        required.extend(resolved.get("required").and_then(Value::as_array).cloned().unwrap_or_default());
        let mut out = json!({"type": "object", "properties": properties, "required": required});
        if closed {
            out["additionalProperties"] = Value::Bool(false);
        }
        if let Some(desc) = resolved.get("description").or_else(|| content.get("description")) {
            out["description"] = desc.clone();
        }
        return out;
    }
    json!({
        "type": "object",
        "properties": {"type": tag, "value": content},
        "required": ["type", "value"],
        "additionalProperties": !closed,
    })
}

/// The flat form of an externally tagged enum: one alternative per variant,
/// told apart by `type`.
pub fn flatten_tagged(schema: &Value, defs: &Map<String, Value>, closed: bool) -> BTreeMap<String, Value> {
    variants(schema)
        .into_iter()
        .map(|(name, content)| {
            let flat = flat_variant(&name, content.as_ref(), defs, closed);
            (name, flat)
        })
        .collect()
}

/// Every `$defs` entry reachable from `roots`.
fn used_defs(roots: &[&Value], defs: &Map<String, Value>) -> Map<String, Value> {
    fn refs(value: &Value, out: &mut BTreeSet<String>) {
        match value {
            Value::Object(o) => {
                if let Some(name) = o.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/$defs/")) {
                    out.insert(name.to_owned());
                }
                o.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut todo = BTreeSet::new();
    roots.iter().for_each(|r| refs(r, &mut todo));
    let mut out = Map::new();
    while let Some(name) = todo.pop_first() {
        if out.contains_key(&name) {
            continue;
        }
        if let Some(def) = defs.get(&name) {
            let mut more = BTreeSet::new();
            refs(def, &mut more);
            out.insert(name, def.clone());
            todo.extend(more.into_iter().filter(|n| !out.contains_key(n)));
        }
    }
    out.sort_keys();
    out
}

fn document(id: &str, title: &str, description: &str, mut body: Value, defs: Map<String, Value>) -> Value {
    let mut doc = Map::new();
    doc.insert("$schema".into(), DIALECT.into());
    doc.insert("$id".into(), format!("https://convo.invalid/schemas/json/{id}").into());
    doc.insert("title".into(), title.into());
    doc.insert("description".into(), description.into());
    if let Value::Object(fields) = body.take() {
        for (k, v) in fields {
            if k != "description" {
                doc.insert(k, v);
            }
        }
    }
    if !defs.is_empty() {
        doc.insert("$defs".into(), Value::Object(defs));
    }
    Value::Object(doc)
}

/// The flat schema of every event's view, by type, with the defs they use.
pub(crate) fn event_views() -> (BTreeMap<String, Value>, Map<String, Value>) {
    let mut views = BTreeMap::new();
    let mut all_defs = Map::new();
    fn named<T: JsonSchema>(defs: &mut Map<String, Value>) {
        let generated = generate::<T>(Contract::Serialize);
        defs.extend(generated.defs);
        defs.insert(T::schema_name().into_owned(), generated.root);
    }
    named::<Actor>(&mut all_defs);
    named::<convo_domain::Timestamp>(&mut all_defs);
    named::<convo_domain::AccountId>(&mut all_defs);
    named::<convo_domain::CommandId>(&mut all_defs);
    for (family, stream_key, stream_doc, generated) in [
        (
            "config",
            "entity",
            "the entity the event is about: `account`, `client/<id>`, `campaign/<id>`, `api_key/<id>`, `access`…",
            generate::<ConfigEvent>(Contract::Serialize),
        ),
        ("agent", "agent", "the agent (user id) whose presence this is", generate::<AgentEvent>(Contract::Serialize)),
        ("conversation", "conversation", "the conversation id", generate::<ConversationEvent>(Contract::Serialize)),
        (
            "contact",
            "entity",
            "the contact the event is about: `contact/<id>`",
            generate::<convo_domain::ContactEvent>(Contract::Serialize),
        ),
    ] {
        for (name, flat) in flatten_tagged(&generated.root, &generated.defs, true) {
            views.insert(name, with_envelope(flat, family, stream_key, stream_doc));
        }
        all_defs.extend(generated.defs);
    }
    for (name, fields) in crate::personal::PERSONAL_FIELDS {
        let Some(properties) = views.get_mut(name).and_then(|v| v.get_mut("properties")) else { continue };
        for field in fields {
            if let Some(Value::Object(property)) = properties.get_mut(*field) {
                let note = match property.get("description").and_then(Value::as_str) {
                    Some(said) => format!("{said} {}", crate::personal::PERSONAL_NOTE),
                    None => crate::personal::PERSONAL_NOTE.to_owned(),
                };
                property.insert("description".into(), Value::String(note));
            }
        }
    }
    (views, all_defs)
}

/// An event view: the envelope fields every event line starts with, then the
/// event's own (which win on a clash, as in the JSON line).
fn with_envelope(flat: Value, family: &str, stream_key: &str, stream_doc: &str) -> Value {
    if let Some(alternatives) = flat.get("oneOf").and_then(Value::as_array) {
        let shapes: Vec<Value> =
            alternatives.iter().map(|a| with_envelope(a.clone(), family, stream_key, stream_doc)).collect();
        return json!({"oneOf": shapes});
    }
    let mut properties = Map::new();
    properties.insert("at".into(), json!({"$ref": "#/$defs/Timestamp", "description": "when the command was decided"}));
    properties.insert("account".into(), json!({"$ref": "#/$defs/AccountId", "description": "the account (tenant)"}));
    properties.insert(stream_key.into(), json!({"type": "string", "description": stream_doc}));
    properties.insert(
        "seq".into(),
        json!({"type": "integer", "minimum": 1, "description": format!("the event's place in its {family} stream, from 1")}),
    );
    properties
        .insert("command".into(), json!({"$ref": "#/$defs/CommandId", "description": "the command that caused it"}));
    properties.insert("actor".into(), json!({"$ref": "#/$defs/Actor"}));
    let mut required: Vec<Value> = ["at", "account", stream_key, "seq", "command", "actor"].map(Value::from).to_vec();
    if let Some(props) = flat.get("properties").and_then(Value::as_object) {
        properties.extend(props.clone());
    }
    for r in flat.get("required").and_then(Value::as_array).cloned().unwrap_or_default() {
        if !required.contains(&r) {
            required.push(r);
        }
    }
    let mut out =
        json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false});
    if let Some(desc) = flat.get("description") {
        out["description"] = desc.clone();
    }
    out
}

/// The CloudEvents 1.0 envelope (structured JSON) around `data`.
fn cloudevent_schema(data: Value) -> Value {
    json!({
        "type": "object",
        "properties": {
            "specversion": {"const": "1.0"},
            "id": {"type": "string", "format": "uuid", "description": "the event id (UUID v5 of account/stream/seq): the receiver's idempotency key"},
            "source": {"type": "string", "minLength": 1, "description": "/<prefix>/<account>/<stream path>, e.g. /convo/acme/conv/c1"},
            "type": {"type": "string", "pattern": "^io\\.convo\\.[a-z_]+\\.v[0-9]+$", "description": "io.convo.<event type>.v<version>"},
            "time": {"type": "string", "format": "date-time"},
            "subject": {"type": "string", "minLength": 1, "description": "the conversation, agent or configuration entity"},
            "datacontenttype": {"const": "application/json"},
            "streamseq": {"type": "integer", "minimum": 1, "description": "the stream sequence of the commit holding the event: resume a feed after it"},
            "eventindex": {"type": "integer", "minimum": 0, "description": "the event's place inside its commit, from 0"},
            "commandid": {"type": "string", "description": "the command that caused the event"},
            "correlationid": {"type": "string", "description": "the command that started the chain (itself, for a command from outside)"},
            "data": data,
        },
        "required": ["specversion", "id", "source", "type", "time", "subject", "datacontenttype", "streamseq", "eventindex", "commandid", "correlationid", "data"],
        "additionalProperties": false,
    })
}

/// The files of `schemas/json/` (path relative to it, contents).
pub fn files() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let version = SCHEMA_VERSION;
    let (views, defs) = event_views();
    for (name, view) in &views {
        let used = used_defs(&[view], &defs);
        let doc = document(
            &format!("events/{name}.v{version}.schema.json"),
            &format!("{name} (v{version})"),
            &format!(
                "The JSON view of one `{name}` event: the line `convo tail` prints, the `data` of its CloudEvent."
            ),
            view.clone(),
            used,
        );
        out.insert(format!("events/{name}.v{version}.schema.json"), pretty(&doc));
    }
    // Any event: `type` picks its view (if/then, so a validator checks one
    // view, not all of them, and names the fields wrong in that one).
    let names: Vec<&String> = views.keys().collect();
    let picks: Vec<Value> = names
        .iter()
        .map(|name| {
            json!({"if": {"properties": {"type": {"const": name}}}, "then": {"$ref": format!("#/$defs/{}", view_def(name))}})
        })
        .collect();
    let any_event = json!({
        "type": "object",
        "properties": {"type": {"enum": names, "description": "the event type; the rest of the fields follow from it"}},
        "required": ["type"],
        "allOf": picks,
    });
    let mut used = used_defs(&views.values().collect::<Vec<_>>(), &defs);
    for (name, view) in &views {
        used.insert(view_def(name), view.clone());
    }
    used.sort_keys();
    out.insert(
        "event.schema.json".into(),
        pretty(&document(
            "event.schema.json",
            "convo event",
            "The JSON view of any convo event, told apart by `type`.",
            any_event.clone(),
            used.clone(),
        )),
    );
    used.insert("Event".into(), any_event);
    used.sort_keys();
    out.insert(
        "cloudevent.schema.json".into(),
        pretty(&document(
            "cloudevent.schema.json",
            "convo event as a CloudEvent",
            "One event as CloudEvents 1.0 structured JSON, as the HTTP feed, SSE, the NATS JSON stream and webhooks carry it.",
            cloudevent_schema(json!({"$ref": "#/$defs/Event"})),
            used,
        )),
    );
    let commands = generate::<Command>(Contract::Deserialize);
    let flat = flatten_tagged(&commands.root, &commands.defs, true);
    out.insert("command.schema.json".into(), pretty(&command_schema(&flat, &commands.defs)));
    out.extend(command_schemas(flat, &commands.defs));
    out
}

/// One request schema per command type (`commands/<type>.schema.json`),
/// the payload of its own subject and URL.
fn command_schemas(flat: BTreeMap<String, Value>, all_defs: &Map<String, Value>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (name, variant) in flat {
        let body = request_body(json!({"$ref": "#/$defs/Command"}));
        let mut defs = used_defs(&[&variant], all_defs);
        defs.insert("Command".into(), variant);
        defs.sort_keys();
        let id = format!("commands/{name}.schema.json");
        let doc = document(
            &id,
            &format!("convo command request: {name}"),
            &format!(
                "A `{name}` request, over HTTP (`POST /v1/accounts/{{account}}/commands/{name}`) and NATS \
                 (`<prefix>.<account>.cmd.{name}`). Who acts comes from the credential, never the body."
            ),
            body,
            defs,
        );
        out.insert(id, pretty(&doc));
    }
    out
}

fn request_body(command: Value) -> Value {
    json!({
        "type": "object",
        "properties": {
            "id": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$", "minLength": 1, "maxLength": convo_domain::ID_BYTES_MAX,
                   "description": "the client's id of this command: a retry with the same id is answered `duplicate`, never applied twice"},
            "command": command,
            "reply_events": {"type": "boolean", "default": false,
                   "description": "whether the reply carries every event's JSON view (otherwise their ids and types only)"},
        },
        "required": ["id", "command"],
        "additionalProperties": false,
    })
}

/// The `$defs` name of an event type's view (`ConversationClosedView`).
fn view_def(event_type: &str) -> String {
    let mut out = String::new();
    for word in event_type.split('_') {
        let mut chars = word.chars();
        if let Some(first) = chars.next() {
            out.extend(first.to_uppercase());
            out.push_str(chars.as_str());
        }
    }
    out + "View"
}

/// The request of any command: `{"id": …, "command": {"type": …, …}}`.
fn command_schema(flat: &BTreeMap<String, Value>, all_defs: &Map<String, Value>) -> Value {
    let mut alternatives = Vec::new();
    for (name, variant) in flat {
        let mut variant = variant.clone();
        variant["title"] = Value::from(name.clone());
        alternatives.push(variant);
    }
    let command = json!({"oneOf": alternatives});
    let body = request_body(json!({"$ref": "#/$defs/Command"}));
    let mut defs = used_defs(&[&command], all_defs);
    defs.insert("Command".into(), command);
    defs.sort_keys();
    document(
        "command.schema.json",
        "convo command request",
        "A command request, over HTTP (`POST /v1/accounts/{account}/commands/{type}`) and NATS \
         (`<prefix>.<account>.cmd.<type>`): one schema for both. Who acts comes from the credential, never the body.",
        body,
        defs,
    )
}

/// Pretty JSON with a final newline (the files' bytes).
pub fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(value).expect("JSON values serialize");
    text.push('\n');
    text
}

#[cfg(test)]
mod personal_tests {
    use super::*;

    #[test]
    fn every_personal_field_is_in_its_event_view_and_says_it_may_read_erased() {
        let (views, _) = event_views();
        for (name, fields) in crate::personal::PERSONAL_FIELDS {
            for field in fields {
                let description = views[name]["properties"][field]["description"].as_str().unwrap_or("");
                assert!(description.contains("[erased]"), "{name}.{field}: {description:?}");
            }
        }
    }
}
