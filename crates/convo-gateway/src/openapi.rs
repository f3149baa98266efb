//! The OpenAPI 3.1 document of the gateway, generated from the code: the
//! routes of [`crate::router`], one command path per command type of the
//! domain ([`convo_domain::Command::TYPE_NAMES`]), the report kinds, and the
//! statuses of [`crate::status_of`]. `schemas/openapi.json` is this document,
//! committed; a test fails when they drift, and another validates it with
//! `openapi-spec-validator`.

use serde_json::{Map, Value, json};

/// The engine's own command types (the door refuses them to clients).
fn convo_engine_only(kind: &str) -> bool {
    matches!(kind, "record_denied" | "record_read")
}

/// The command types a client may send (the engine's own are left out).
fn client_commands() -> impl Iterator<Item = &'static str> {
    convo_domain::Command::TYPE_NAMES.into_iter().filter(|t| !convo_engine_only(t))
}

fn error_responses(codes: &[u16]) -> Map<String, Value> {
    let mut out = Map::new();
    for code in codes {
        let description = match code {
            400 => "Not a valid request (`code`: malformed_json, invalid with the `field`, subject_mismatch)",
            401 => "No credential, or not a valid one (unknown, revoked, expired)",
            403 => "The principal may not do this (`rule`: tenant, scope, role, network, engine_only…)",
            404 => "Unknown command type, conversation or entity",
            409 => "Rejected by a rule of the domain (`code` and `reason`)",
            413 => "The request is larger than the engine accepts",
            429 => "Overloaded: retry later",
            _ => "Unavailable: the engine or its store cannot answer now",
        };
        out.insert(
            code.to_string(),
            json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
        );
    }
    out
}

fn account_param() -> Value {
    json!({"name": "account", "in": "path", "required": true, "description": "The account (tenant)", "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}})
}

/// The document.
pub fn document() -> Value {
    let (mut schemas, shapes) = crate::shapes::components();
    let shape = |name: &str| shapes[name].clone();
    let mut paths = Map::new();
    paths.insert(
        "/v1/health".into(),
        json!({"get": {"operationId": "health", "summary": "Whether the gateway is up (no credential needed)", "security": [],
            "responses": {"200": {"description": "Up", "content": {"application/json": {"schema": shape("health")}}}}}}),
    );
    paths.insert(
        "/metrics".into(),
        json!({"get": {"operationId": "metrics", "summary": "The engine's metrics in the Prometheus text format (no credential needed; no label names an account)", "security": [],
            "responses": {"200": {"description": "The metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}}}),
    );
    paths.insert(
        "/health/live".into(),
        json!({"get": {"operationId": "live", "summary": "The process is up (no credential needed)", "security": [],
            "responses": {"200": {"description": "Up", "content": {"application/json": {"schema": shape("health")}}}}}}),
    );
    paths.insert(
        "/health/ready".into(),
        json!({"get": {"operationId": "ready", "summary": "Whether the engine has recovered from the stream and serves (no credential needed)", "security": [],
            "responses": {"200": {"description": "Ready", "content": {"application/json": {"schema": shape("ready")}}},
                          "503": {"description": "Not ready: recovering, joining the cluster, partitions unowned or read models catching up (`status` says which)", "content": {"application/json": {"schema": shape("ready")}}}}}}),
    );
    paths.insert(
        "/v1/openapi.json".into(),
        json!({"get": {"operationId": "openapi", "summary": "This document", "security": [],
            "responses": {"200": {"description": "The OpenAPI document", "content": {"application/json": {"schema": shape("openapi")}}}}}}),
    );
    for kind in client_commands() {
        let mut responses = Map::new();
        responses.insert(
            "200".into(),
            json!({"description": "Done: committed (with the events' ids and types, and their JSON views when asked), nothing to do, or a duplicate of an earlier command",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Reply"}}}}),
        );
        responses.extend(error_responses(&[400, 401, 403, 404, 409, 413, 429, 503]));
        paths.insert(
            format!("/v1/accounts/{{account}}/commands/{kind}"),
            json!({"post": {
                "operationId": format!("command_{kind}"),
                "summary": format!("Send a `{kind}` command"),
                "parameters": [account_param()],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["id", "command"], "additionalProperties": false,
                    "properties": {
                        "id": {"type": "string", "description": "The command's id: a retry with the same id repeats nothing"},
                        "command": {"type": "object", "required": ["type"], "properties": {"type": {"const": kind}}},
                        "reply_events": {"type": "boolean", "default": false, "description": "Whether the reply carries every event's JSON view (otherwise their ids and types only)"}
                    }}}}},
                "responses": responses,
            }}),
        );
    }
    // Every read says where it stands: the stream sequence its read model (or the feed's
    // page) holds, and the stream's end when it answered.
    let position_headers = json!({
        "Convo-Read-Position": {"description": "The stream sequence the answer holds the stream as far as", "schema": {"type": "integer", "minimum": 0}},
        "Convo-Stream-End": {"description": "The stream's last sequence when the read was answered", "schema": {"type": "integer", "minimum": 0}}});
    let errors = error_responses(&[400, 401, 403, 404, 429, 503]);
    let read_responses = |name: &str| {
        let mut responses = Map::new();
        responses.insert(
            "200".into(),
            json!({"description": "The entries", "headers": position_headers.clone(), "content": {"application/json": {"schema": shape(name)}}}),
        );
        responses.extend(errors.clone());
        responses
    };
    // Reads of what no read model holds (a contact's export from the stream, the webhook
    // deliveries' own records) carry no position.
    let unpositioned_responses = |name: &str| {
        let mut responses = Map::new();
        responses.insert(
            "200".into(),
            json!({"description": "The document", "content": {"application/json": {"schema": shape(name)}}}),
        );
        responses.extend(errors.clone());
        responses
    };
    let mut report_responses = read_responses("report");
    report_responses.insert(
        "200".into(),
        json!({"description": "The rows: JSON, or with format=csv a header line and one RFC 4180 line per row (the kind's columns)",
            "headers": position_headers,
            "content": {"application/json": {"schema": shape("report")}, "text/csv": {"schema": {"type": "string"}}}}),
    );
    let query = |name: &str, description: &str| json!({"name": name, "in": "query", "required": false, "description": description, "schema": {"type": "string"}});
    paths.insert(
        "/v1/accounts/{account}/audit".into(),
        json!({"get": {"operationId": "audit", "summary": "The audit log (admins, the operator, integrations with the `audit` read scope)",
            "parameters": [account_param(), query("from", "RFC 3339, inclusive"), query("to", "RFC 3339, inclusive"),
                query("actor", "user:ana, ana, integration:crm…"), query("action", "an event type"), query("conversation", "a conversation id"),
                query("ip", "the address an action came from"),
                {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": crate::AUDIT_ENTRIES_MAX}}],
            "responses": read_responses("audit")}}),
    );
    let stream_responses = || {
        let mut responses = Map::new();
        responses.insert(
            "200".into(),
            json!({"description": "Every entry the filters take, streamed (no limit)", "content": {
            "application/x-ndjson": {"schema": {"type": "string"}}, "text/csv": {"schema": {"type": "string"}}}}),
        );
        responses.extend(error_responses(&[400, 401, 403, 429, 503]));
        responses
    };
    paths.insert(
        "/v1/accounts/{account}/audit/export".into(),
        json!({"get": {"operationId": "auditExport", "summary": "The audit log streamed as JSON lines or CSV, with the same filters (admins, the operator, `audit` integrations)",
            "parameters": [account_param(), query("from", "RFC 3339, inclusive"), query("to", "RFC 3339, inclusive"),
                query("actor", "user:ana, ana, integration:crm…"), query("action", "an event type"), query("conversation", "a conversation id"),
                query("ip", "the address an action came from"),
                {"name": "format", "in": "query", "required": false, "schema": {"enum": ["jsonl", "csv"]}}],
            "responses": stream_responses()}}),
    );
    paths.insert(
        "/v1/audit/verify".into(),
        json!({"get": {"operationId": "auditVerify", "summary": "The operator's verification of the whole audit log against a refold of the stream, and of the engine's anchors: `intact`, `entries`, `checkpoint`, `behind`, `first_divergence`, `not_in_record`, `anchors`",
            "responses": read_responses("verify")}}),
    );
    paths.insert(
        "/v1/accounts/{account}/contacts/{contact}/history".into(),
        json!({"get": {"operationId": "contactHistory", "summary": "A contact's last closed conversations, newest first, the number masked unless the campaign shows it; once the contact is erased, `erased` names the reason and time and personal values read `[erased]` (admins, the operator, `contact_history` integrations; supervisors: their campaigns)",
            "parameters": [account_param(), {"name": "contact", "in": "path", "required": true, "schema": {"type": "string"}}],
            "responses": read_responses("history")}}),
    );
    paths.insert(
        "/v1/accounts/{account}/contacts/{contact}/export".into(),
        json!({"get": {"operationId": "contactExport", "summary": "Everything held about a contact in one JSON document (subject access, SPEC §13): `identity` (the contact book's, with attributes), `erased` (the erasure's reason and time, once erased), `contact_book` (its events) and `conversations`, each with its events and texts (admins and the operator only; no read scope grants it). Personal values of an erased contact read `[erased]`.",
            "parameters": [account_param(), {"name": "contact", "in": "path", "required": true, "schema": {"type": "string"}}],
            "responses": unpositioned_responses("export")}}),
    );
    let margin = json!({"name": "margin_secs", "in": "query", "required": false, "description": "A wait this close to its next SLA threshold is at risk (seconds; the server's --risk-margin-secs by default)", "schema": {"type": "integer", "minimum": 0, "maximum": crate::reads::RISK_MARGIN_MAX_SECS}});
    paths.insert(
        "/v1/accounts/{account}/live".into(),
        json!({"get": {"operationId": "liveDashboard", "summary": "The live dashboard now: per campaign the open, queued and assigned conversations, the longest queue wait, those at SLA risk and breached; agents with state, time in state and load; the conversations at risk; the conversations, longest wait first (admins, the operator, `live` integrations; supervisors: their campaigns)",
            "parameters": [account_param(), margin.clone()],
            "responses": read_responses("live")}}),
    );
    paths.insert(
        "/v1/accounts/{account}/inbox".into(),
        json!({"get": {"operationId": "inbox", "summary": "An agent's inbox: their state and load, the conversations assigned to them and those queued in their campaigns, each with the contact's last message and SLA state (an agent: their own; supervisors: their campaigns' agents; admins, the operator, `inbox` integrations: anyone's)",
            "parameters": [account_param(), query("agent", "whose inbox (an agent's own without it)"), margin],
            "responses": read_responses("inbox")}}),
    );
    paths.insert(
        "/v1/accounts/{account}/conversations/{conversation}/timeline".into(),
        json!({"get": {"operationId": "conversationTimeline", "summary": "One conversation's audit entries in order, as `convo audit replay` prints them (whoever reads `audit`: any conversation; a supervisor: one of their campaigns' conversations; an agent: one in their inbox; 404 for a conversation the reader may not see)",
            "parameters": [account_param(), {"name": "conversation", "in": "path", "required": true, "description": "The conversation", "schema": {"type": "string"}}],
            "responses": read_responses("timeline")}}),
    );
    paths.insert(
        "/dashboard".into(),
        json!({"get": {"operationId": "dashboard", "summary": "The live dashboard page (HTML; it asks for a credential, or takes #account=…&key=… from its URL fragment)", "security": [],
            "responses": {"200": {"description": "The page", "content": {"text/html": {"schema": {"type": "string"}}}}}}}),
    );
    paths.insert(
        "/v1/accounts/{account}/reports/{kind}".into(),
        json!({"get": {"operationId": "report", "summary": "Report rows (admins, the operator, `reports` integrations; supervisors: their campaigns)",
            "parameters": [account_param(),
                {"name": "kind", "in": "path", "required": true, "schema": {"enum": convo_reports::KINDS}},
                {"name": "by", "in": "query", "required": false, "schema": {"enum": convo_reports::DIMENSIONS}},
                {"name": "period", "in": "query", "required": false, "schema": {"enum": ["hour", "day"]}},
                query("from", "a bucket label, in the report's zone: 2026-03-02 or 2026-03-02T14"), query("to", "a bucket label"),
                {"name": "format", "in": "query", "required": false, "description": "json (default) or csv (the columns of the kind)", "schema": {"enum": ["json", "csv"]}},
                query("tz", "the IANA time zone whose hours and days the buckets are (the account's time_zone by default; whole hours from UTC); the answer names it (`time_zone`, or the CSV's Convo-Time-Zone header)")],
            "responses": report_responses}}),
    );
    paths.insert(
        "/v1/accounts/{account}/events".into(),
        json!({"get": {"operationId": "events", "summary": "The account's events after a cursor, as CloudEvents 1.0 (`events`, each as schemas/json/cloudevent.schema.json) and `next`, the cursor for the next read (admins, the operator, integrations with the `events` read scope)",
            "parameters": [account_param(),
                {"name": "after", "in": "query", "required": false, "description": "The stream sequence already seen (the `next` of the previous read, a reply's `log_seq` or an event's `streamseq`; 0 from the start)", "schema": {"type": "integer", "minimum": 0}},
                {"name": "limit", "in": "query", "required": false, "description": "At most this many events (whole commits)", "schema": {"type": "integer", "minimum": 1, "maximum": crate::FEED_EVENTS_MAX}},
                query("conversation", "a conversation id"),
                {"name": "type", "in": "query", "required": false, "description": "only events of this type", "schema": {"enum": convo_wire::EVENT_TYPES.as_slice()}}],
            "responses": read_responses("events")}}),
    );
    paths.insert(
        "/v1/accounts/{account}/webhooks/deliveries".into(),
        json!({"get": {"operationId": "webhookDeliveries", "summary": "The account's webhook deliveries: `pending` (queued or retrying), `dead` (dead-lettered: re-drive with the redrive_webhook command) and `attempts`, the newest first (each with outcome, status, error, latency_ms) (admins, the operator, `webhooks` integrations)",
            "parameters": [account_param(), query("webhook", "one webhook's only"),
                {"name": "limit", "in": "query", "required": false, "description": "At most this many of each", "schema": {"type": "integer", "minimum": 1, "maximum": convo_webhooks::LOG_READ_MAX}}],
            "responses": unpositioned_responses("deliveries")}}),
    );
    paths.insert(
        "/v1/accounts/{account}/events/stream".into(),
        json!({"get": {"operationId": "eventStream", "summary": "The account's events live, as server-sent events: `id` <stream sequence>.<index>, `event` the type, `data` the CloudEvent. Reconnect with `Last-Event-ID` to resume. The credential is checked again every second: once it may no longer read (a revoked key, an expired token), the stream ends with an `access_denied` event whose `data` is the refusal. Text the account's redact rules match is masked unless the key has the `unredacted` read scope.",
            "parameters": [account_param(),
                {"name": "after", "in": "query", "required": false, "description": "Start after this stream sequence (when there is no Last-Event-ID)", "schema": {"type": "integer", "minimum": 0}},
                {"name": "Last-Event-ID", "in": "header", "required": false, "description": "The id of the last event received", "schema": {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?$"}},
                query("conversation", "a conversation id"),
                {"name": "type", "in": "query", "required": false, "description": "only events of this type", "schema": {"enum": convo_wire::EVENT_TYPES.as_slice()}}],
            "responses": {"200": {"description": "The event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                "429": {"description": "Too many event streams are open", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}}}),
    );
    let mut document = json!({
        "openapi": "3.1.0",
        "info": {"title": "convo gateway", "version": env!("CARGO_PKG_VERSION"),
            "description": "Commands and reads of the convo engine over HTTP. Every request but health carries `Authorization: Bearer <credential>`: an account's API key, the platform operator's credential, or a JWT from the configured identity provider. Who acts comes from the credential and the connection, never from the body."},
        "servers": [{"url": "http://127.0.0.1:8080"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Reply": {"type": "object", "required": ["outcome"], "properties": {
                    "outcome": {"enum": ["committed", "nothing", "duplicate"]},
                    "log_seq": {"type": "integer", "description": "the commit's stream sequence: resume a feed after it"},
                    "event_ids": {"type": "array", "items": {"type": "string", "format": "uuid"}, "description": "the ids of the commit's events (each CloudEvent's `id`)"},
                    "event_types": {"type": "array", "items": {"type": "string"}, "description": "each event's type, in the order of `event_ids`"},
                    "events": {"type": "array", "items": {"type": "object"}, "description": "the events' JSON views (schemas/json/event.schema.json), when the request has `reply_events: true`"},
                    "credential": {"type": "object", "description": "issue_api_key only, shown this once: the key's bearer `token`, and its NATS login (`nats.nkey_seed`, `nats.inbox_prefix`)",
                        "properties": {"token": {"type": "string"}, "nats": {"type": "object", "properties": {
                            "nkey_seed": {"type": "string"}, "inbox_prefix": {"type": "string"}}}}}}},
                "Error": {"type": "object", "required": ["outcome", "code"], "properties": {
                    "outcome": {"enum": ["error", "rejected"]}, "code": {"type": "string"},
                    "rule": {"type": "string"}, "field": {"type": "string"},
                    "message": {"type": "string"}, "reason": {"type": "string"}}}
            }
        }
    });
    // The reads' answers, generated from their types (crate::shapes).
    if let Some(components) = document["components"]["schemas"].as_object_mut() {
        components.append(&mut schemas);
    }
    document
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    fn committed() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas/openapi.json")
    }

    fn text() -> String {
        serde_json::to_string_pretty(&super::document()).expect("JSON") + "\n"
    }

    /// `schemas/openapi.json` is the document the code makes;
    /// `UPDATE_SCHEMAS=1` (or `just schemas`) rewrites it.
    #[test]
    fn the_committed_document_is_the_generated_one() {
        if std::env::var_os("UPDATE_SCHEMAS").is_some() {
            std::fs::write(committed(), text()).expect("write schemas/openapi.json");
        }
        let on_disk = std::fs::read_to_string(committed()).unwrap_or_default();
        assert!(
            on_disk == text(),
            "schemas/openapi.json differs from the gateway's document: run `just schemas` and commit the result"
        );
    }

    /// An independent validator (openapi-spec-validator, from pip; `just
    /// validators` installs it into .tools/py) accepts the committed document.
    #[test]
    fn an_independent_validator_accepts_the_document() {
        let tools = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/py");
        assert!(
            tools.join("openapi_spec_validator").is_dir(),
            "openapi-spec-validator is not installed in {}: run `just validators`",
            tools.display()
        );
        let out = std::process::Command::new("python3")
            .args(["-m", "openapi_spec_validator"])
            .arg(committed())
            .env("PYTHONPATH", &tools)
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "openapi-spec-validator refused schemas/openapi.json:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
