//! The read models over HTTP, role-scoped by the engine's answer
//! (`access::authorize_read`): admins and the operator read their account,
//! supervisors the campaigns they supervise, agents their own inbox,
//! integrations what their read scopes name.
//!
//! The read models are kept current by followers in `convo serve`
//! ([`ReadModels`]); a read waits (at most [`READ_WAIT_MS`]) until its read
//! model holds the stream as far as it went when the request arrived, so a
//! client reads its own writes, and every answer says where the read model
//! stands: `Convo-Read-Position` (the last stream sequence it holds) and
//! `Convo-Stream-End`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use convo_projector::follow::Followed;

use crate::{AUDIT_ENTRIES_MAX, Allowed, Params, Scope, Shared, authorize, error, reply};

/// How long a read waits for its read model to reach the stream's end as
/// of the request; after that it answers with what the read model holds.
pub const READ_WAIT_MS: u64 = 5_000;
/// Lines of a streamed audit export per chunk.
pub const EXPORT_CHUNK_LINES: usize = 500;

/// The read models this server keeps current, and the stream's end when it
/// started (ready once every one has reached it).
#[derive(Debug, Clone, Default)]
pub struct ReadModels {
    models: BTreeMap<&'static str, Followed>,
    ready_at: u64,
}

impl ReadModels {
    pub fn new(ready_at: u64) -> Self {
        Self { models: BTreeMap::new(), ready_at }
    }

    pub fn insert(&mut self, followed: Followed) {
        self.models.insert(followed.projector.name(), followed);
    }

    /// Each read model and the last stream sequence it holds.
    pub fn positions(&self) -> Vec<(&'static str, u64)> {
        self.models.iter().map(|(name, f)| (*name, f.checkpoint())).collect()
    }

    /// The read models still short of where the stream was at start.
    pub fn behind(&self) -> Vec<(&'static str, u64)> {
        self.positions().into_iter().filter(|(_, at)| *at < self.ready_at).collect()
    }
}

/// Where a read model stood for an answer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Position {
    at: u64,
    end: u64,
}

impl Position {
    /// A read that holds the stream as far as `at`, which ends at `end`.
    pub(crate) fn new(at: u64, end: u64) -> Self {
        Self { at, end }
    }

    /// `response` with the read's position headers.
    pub(crate) fn stamp(self, mut response: Response) -> Response {
        let headers = response.headers_mut();
        headers.insert("convo-read-position", HeaderValue::from(self.at));
        headers.insert("convo-stream-end", HeaderValue::from(self.end));
        response
    }
}

/// The read model `name`'s tree, once it holds the stream as far as it went
/// when asked (or after [`READ_WAIT_MS`], as it is), and where it stands.
pub(crate) async fn read_model(shared: &Shared, name: &'static str) -> Result<(sled::Tree, Position), Response> {
    let unavailable = |why: String| error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &why);
    let Some(followed) = shared.config.read_models.as_ref().and_then(|m| m.models.get(name)) else {
        return Err(unavailable(format!(
            "this server does not keep the {name} read model (see `convo serve --roles`)"
        )));
    };
    let end = convo_store::EventStore::last_seq(&shared.store)
        .await
        .map_err(|e| unavailable(format!("the stream cannot be read now: {e}")))?;
    followed.reached(end, Duration::from_millis(READ_WAIT_MS)).await;
    let tree = followed.projector.tree().map_err(|e| unavailable(format!("the {name} read model: {e}")))?;
    Ok((tree, Position { at: followed.checkpoint(), end }))
}

/// The door of every read of an account's read model: the engine says
/// whether the caller may read `what` (and the scope they may read), then
/// the read model `name`, current as of the request.
async fn authorized_read(
    shared: &Shared,
    account: &str,
    what: &str,
    name: &'static str,
    headers: &HeaderMap,
    peer: std::net::IpAddr,
) -> Result<(Allowed, sled::Tree, Position), Response> {
    let allowed = authorize(shared, account, what, headers, peer).await?;
    let (tree, position) = read_model(shared, name).await?;
    Ok((allowed, tree, position))
}

/// `value` with its sealed personal values opened (an erased one reads
/// `[erased]`); a key store that cannot answer fails the read (503), never
/// serves what it could not open as if it were the text.
pub(crate) async fn opened(shared: &Shared, mut value: Value) -> Result<Value, Response> {
    if let Some(keys) = shared.store.keys() {
        keys.open_json(&mut value).await.map_err(|e| {
            error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &format!("cannot open personal data: {e}"))
        })?;
    }
    Ok(value)
}

fn invalid(field: &str, message: &str) -> Response {
    reply(StatusCode::BAD_REQUEST, json!({"outcome": "error", "code": "invalid", "field": field, "message": message}))
}

fn failed(e: impl std::fmt::Display) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &format!("the read model cannot be read now: {e}"))
}

#[derive(Debug, Deserialize)]
pub(crate) struct AuditQuery {
    from: Option<String>,
    to: Option<String>,
    actor: Option<String>,
    action: Option<String>,
    conversation: Option<String>,
    ip: Option<String>,
    limit: Option<usize>,
    /// For the export: `jsonl` (default) or `csv`.
    format: Option<String>,
}

impl AuditQuery {
    fn filter(&self, account: &str) -> Result<convo_audit::Filter, Box<Response>> {
        for (field, value) in [("from", &self.from), ("to", &self.to)] {
            if let Some(v) = value
                && convo_domain::Timestamp::parse_rfc3339(v).is_err()
            {
                let message = format!("`{field}` is an RFC 3339 instant (2026-03-02T13:00:00Z), not {v:?}");
                return Err(Box::new(invalid(field, &message)));
            }
        }
        Ok(convo_audit::Filter {
            account: Some(account.to_owned()),
            from: self.from.clone(),
            to: self.to.clone(),
            actor: self.actor.clone(),
            action: self.action.clone(),
            conversation: self.conversation.clone(),
            ip: self.ip.clone(),
        })
    }
}

/// `GET …/audit`: entries as JSON, at most [`AUDIT_ENTRIES_MAX`] (`truncated` says when there are more).
pub(crate) async fn audit(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(account): Path<String>,
    Params(q): Params<AuditQuery>,
    headers: HeaderMap,
) -> Response {
    let (allowed, tree, position) =
        match authorized_read(&shared, &account, "audit", convo_audit::NAME, &headers, peer.ip()).await {
            Ok(read) => read,
            Err(response) => return response,
        };
    let filter = match q.filter(&account) {
        Ok(f) => f,
        Err(response) => return *response,
    };
    let limit = q.limit.unwrap_or(AUDIT_ENTRIES_MAX).min(AUDIT_ENTRIES_MAX);
    match shown_entries(&shared, &allowed, &tree, &filter, limit).await {
        Ok((entries, more)) => {
            position.stamp(reply(StatusCode::OK, json!({"account": account, "entries": entries, "truncated": more})))
        }
        Err(response) => response,
    }
}

/// The audit entries `filter` takes, at most `limit` (and whether there
/// were more), their personal values opened and masked as `allowed` reads them.
async fn shown_entries(
    shared: &Shared,
    allowed: &Allowed,
    tree: &sled::Tree,
    filter: &convo_audit::Filter,
    limit: usize,
) -> Result<(Vec<Value>, bool), Response> {
    let mut entries = convo_audit::entries(tree, filter).map_err(failed)?;
    let more = entries.len() > limit;
    entries.truncate(limit);
    let entries = match opened(shared, Value::Array(entries)).await? {
        Value::Array(entries) => entries,
        _ => unreachable!("an array opens to an array"),
    };
    Ok((entries.into_iter().map(|e| allowed.masked(e)).collect(), more))
}

/// `GET …/conversations/{id}/timeline`: one conversation's audit entries in
/// order (`convo audit replay` in the browser), at most
/// [`AUDIT_ENTRIES_MAX`]. Whoever reads the audit log reads any
/// conversation's; a supervisor, a conversation of their campaigns; an
/// agent, one in their inbox (assigned to them, or queued in one of their
/// campaigns) — as the live read model holds it now. A conversation the
/// reader may not see answers 404, as one that does not exist.
pub(crate) async fn timeline(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((account, conversation)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    // One question to the engine (a refused one is recorded as a denial).
    let allowed = match authorize(&shared, &account, convo_domain::config::TIMELINE_READ, &headers, peer.ip()).await {
        Ok(allowed) => allowed,
        Err(response) => return response,
    };
    // A supervisor or an agent: only a conversation on their board or in their inbox.
    match on_board(&shared, &account, &conversation, &allowed.scope).await {
        Ok(true) => {}
        Ok(false) => {
            let message = format!("no conversation {conversation} on your board or in your inbox");
            return error(StatusCode::NOT_FOUND, "not_found", &message);
        }
        Err(response) => return response,
    }
    let (tree, position) = match read_model(&shared, convo_audit::NAME).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    let filter = convo_audit::Filter {
        account: Some(account.clone()),
        conversation: Some(conversation.clone()),
        ..Default::default()
    };
    match shown_entries(&shared, &allowed, &tree, &filter, AUDIT_ENTRIES_MAX).await {
        Ok((entries, _)) if entries.is_empty() => {
            error(StatusCode::NOT_FOUND, "not_found", &format!("no conversation {conversation}"))
        }
        Ok((entries, more)) => {
            let body = json!({"account": account, "conversation": conversation, "entries": entries, "truncated": more});
            position.stamp(reply(StatusCode::OK, body))
        }
        Err(response) => response,
    }
}

/// Whether a reader of `scope` sees `conversation` on their board or in
/// their inbox, as the live read model holds it now: the whole account,
/// any; a supervisor, one of their campaigns'; an agent, one assigned to
/// them or waiting in one of their campaigns.
async fn on_board(shared: &Shared, account: &str, conversation: &str, scope: &Scope) -> Result<bool, Response> {
    if matches!(scope, Scope::Account) {
        return Ok(true);
    }
    let (live, _) = read_model(shared, convo_live::NAME).await?;
    let Some(card) = convo_live::card(&live, account, conversation).map_err(failed)? else { return Ok(false) };
    Ok(match scope {
        Scope::Account => true,
        Scope::Campaigns(theirs) => theirs.contains(&card.campaign),
        Scope::Agent(own) => match &card.agent {
            Some(agent) => agent == own,
            None => convo_live::campaigns(&live, account)
                .map_err(failed)?
                .get(&card.campaign)
                .is_some_and(|c| c.agents.contains(own)),
        },
    })
}

/// `GET …/audit/export?format=jsonl|csv`: every entry the filters take,
/// streamed (no limit), JSON lines or CSV.
pub(crate) async fn audit_export(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(account): Path<String>,
    Params(q): Params<AuditQuery>,
    headers: HeaderMap,
) -> Response {
    let (allowed, tree, position) =
        match authorized_read(&shared, &account, "audit", convo_audit::NAME, &headers, peer.ip()).await {
            Ok(read) => read,
            Err(response) => return response,
        };
    let csv = match q.format.as_deref() {
        None | Some("jsonl") => false,
        Some("csv") => true,
        Some(other) => return invalid("format", &format!("`format` is jsonl or csv, not {other:?}")),
    };
    let filter = match q.filter(&account) {
        Ok(f) => f,
        Err(response) => return *response,
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(4);
    let (keys, runtime) = (shared.store.keys().cloned(), tokio::runtime::Handle::current());
    tokio::task::spawn_blocking(move || {
        let mut chunk = if csv { convo_audit::CSV_COLUMNS.join(",") + "\n" } else { String::new() };
        let mut lines = 0;
        let mut unopened = None;
        let sent = convo_audit::each_entry(&tree, &filter, |mut entry| {
            if let Some(keys) = &keys
                && let Err(e) = runtime.block_on(keys.open_json(&mut entry))
            {
                unopened = Some(e);
                return false;
            }
            let entry = allowed.masked(entry);
            if csv {
                chunk.push_str(&convo_audit::csv_line(&entry));
            } else {
                chunk.push_str(&entry.to_string());
            }
            chunk.push('\n');
            lines += 1;
            if lines % EXPORT_CHUNK_LINES == 0 {
                return tx.blocking_send(Ok(std::mem::take(&mut chunk))).is_ok();
            }
            true
        });
        match sent {
            Ok(()) if unopened.is_some() => {
                let why = format!("cannot open personal data: {}", unopened.expect("checked"));
                let _ = tx.blocking_send(Err(std::io::Error::other(why)));
            }
            Ok(()) => {
                let _ = tx.blocking_send(Ok(chunk));
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        }
    });
    let body = Body::from_stream(futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) }));
    let kind = if csv { "text/csv; charset=utf-8" } else { "application/x-ndjson" };
    position.stamp(([(header::CONTENT_TYPE, kind)], body).into_response())
}

/// The verdict of a verification as JSON: the audit log against a refold of
/// the stream, the messages not part of the record, and (with the engine's
/// key) whether the stream still holds every anchored commit. `intact` is
/// the whole answer; the CLI prints the same verdict.
pub async fn verify_verdict(
    store: &convo_store::JetStreamStore,
    tree: &sled::Tree,
) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
    let verdict = convo_audit::verify(store, tree).await?;
    let end = convo_store::EventStore::last_seq(store).await?;
    let anchors = match &store.config().signing {
        Some(signing) => {
            let anchors = convo_store::signing::check_anchors(store, signing).await?;
            json!({"checked": true, "aggregates": anchors.held, "unsigned_through": signing.unsigned_through(),
                "findings": anchors.findings.iter().map(ToString::to_string).collect::<Vec<_>>(), "more": anchors.more})
        }
        None => json!({"checked": false}),
    };
    let intact = verdict.first_divergence.is_none()
        && verdict.not_in_record.is_empty()
        && anchors["findings"].as_array().is_none_or(Vec::is_empty);
    Ok(json!({
        "intact": intact,
        "entries": verdict.entries,
        "checkpoint": verdict.checkpoint,
        "stream_end": end,
        "behind": end.saturating_sub(verdict.checkpoint),
        "first_divergence": verdict.first_divergence.as_ref().map(ToString::to_string),
        "not_in_record": verdict.not_in_record.iter().take(100)
            .map(|d| json!({"seq": d.seq, "reason": d.reason})).collect::<Vec<_>>(),
        "not_in_record_count": verdict.not_in_record.len(),
        "anchors": anchors,
    }))
}

/// `GET /v1/audit/verify`: the verdict on the whole log, for the operator
/// only (a stream is verified as a whole, and its findings name any
/// account's messages).
pub(crate) async fn audit_verify(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    // Any account will do to authenticate the operator, whose credential is the server's.
    let answer =
        crate::ask(&shared, "default".into(), "audit".into(), true, Default::default(), &headers, peer.ip()).await;
    match answer {
        Ok(answer) if answer["outcome"] == "authorized" && answer["principal"] == "operator" => {}
        Ok(answer) if answer["outcome"] == "authorized" => {
            return error(StatusCode::FORBIDDEN, "forbidden", "only the operator verifies the whole audit log");
        }
        Ok(answer) => return reply(crate::status_of(&answer), answer),
        Err(response) => return response,
    }
    let (tree, position) = match read_model(&shared, convo_audit::NAME).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    let _one = shared.reads.lock().await; // a refold of the stream at a time
    match verify_verdict(&shared.store, &tree).await {
        Ok(verdict) => position.stamp(reply(StatusCode::OK, verdict)),
        Err(e) => failed(e),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct ReportQuery {
    by: Option<String>,
    period: Option<String>,
    from: Option<String>,
    to: Option<String>,
    /// `json` (default) or `csv`.
    format: Option<String>,
    /// The IANA time zone to bucket in (the account's by default).
    tz: Option<String>,
}

/// `GET …/reports/{kind}`: rows by a dimension and period, JSON or CSV.
pub(crate) async fn report(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((account, kind)): Path<(String, String)>,
    Params(q): Params<ReportQuery>,
    headers: HeaderMap,
) -> Response {
    let (allowed, tree, position) =
        match authorized_read(&shared, &account, "reports", convo_reports::NAME, &headers, peer.ip()).await {
            Ok(read) => read,
            Err(response) => return response,
        };
    if !convo_reports::KINDS.contains(&kind.as_str()) {
        let message = format!("no report `{kind}`; one of {}", convo_reports::KINDS.join(", "));
        return error(StatusCode::NOT_FOUND, "unknown", &message);
    }
    let by = q.by.unwrap_or_else(|| "campaign".into());
    let period = q.period.unwrap_or_else(|| "day".into());
    if !convo_reports::DIMENSIONS.contains(&by.as_str()) {
        return invalid("by", &format!("`by` is one of {}", convo_reports::DIMENSIONS.join(", ")));
    }
    if !["hour", "day"].contains(&period.as_str()) {
        return invalid("period", "`period` is hour or day");
    }
    for (field, value) in [("from", &q.from), ("to", &q.to)] {
        if let Some(v) = value
            && !convo_reports::is_bucket(v)
        {
            return invalid(field, &format!("`{field}` is a day (2026-03-02) or an hour (2026-03-02T14), not {v:?}"));
        }
    }
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => return invalid("format", &format!("`format` is json or csv, not {other:?}")),
    };
    // A supervisor reads their campaigns only: rows by campaign, filtered.
    let campaigns = allowed.scope.campaigns();
    if campaigns.is_some() && by != "campaign" {
        let message = "a supervisor reads reports by campaign (of the campaigns they supervise)";
        return error(StatusCode::FORBIDDEN, "forbidden", message);
    }
    let zone = match q.tz.as_deref().map(convo_domain::schedule::Zone::parse) {
        Some(Ok(zone)) => zone,
        Some(Err(why)) => return invalid("tz", &why),
        None => match convo_reports::zone(&tree, &account) {
            Ok(zone) => zone,
            Err(e) => return failed(e),
        },
    };
    let rows = match convo_reports::rows_in(&tree, &account, &by, &period, q.from.as_deref(), q.to.as_deref(), &zone) {
        Ok(rows) => rows,
        Err(e @ convo_reports::ReadError::NotWholeHours { .. }) => return invalid("tz", &e.to_string()),
        Err(e) => return failed(e),
    };
    let zone_name = zone.0.name();
    let rows: Vec<Value> = rows
        .iter()
        .filter(|r| campaigns.is_none_or(|list| list.contains(&r.value)))
        .map(|r| allowed.masked(convo_reports::row_json(&by, r)))
        .collect();
    if csv {
        let mut header = vec![by.as_str(), "bucket"];
        header.extend(convo_reports::columns(&kind));
        let body = convo_reports::csv(&header, &rows);
        let headers = [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (header::HeaderName::from_static("convo-time-zone"), zone_name),
        ];
        return position.stamp((headers, body).into_response());
    }
    position.stamp(reply(
        StatusCode::OK,
        json!({"account": account, "report": kind, "by": by, "period": period, "time_zone": zone_name, "rows": rows}),
    ))
}

/// `GET …/contacts/{contact}/history`: the contact's last closed
/// conversations, newest first (masked unless the campaign shows numbers;
/// a supervisor sees those of their campaigns).
pub(crate) async fn contact_history(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((account, contact)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let (allowed, tree, position) =
        match authorized_read(&shared, &account, "contact_history", convo_contact_history::NAME, &headers, peer.ip())
            .await
        {
            Ok(read) => read,
            Err(response) => return response,
        };
    let campaigns = allowed.scope.campaigns();
    match convo_contact_history::history(&tree, &account, &contact) {
        Ok(entries) => {
            let entries = match opened(&shared, Value::Array(entries)).await {
                Ok(Value::Array(entries)) => entries,
                Ok(_) => unreachable!("an array opens to an array"),
                Err(response) => return response,
            };
            let entries: Vec<Value> = entries
                .into_iter()
                .filter(|e| {
                    campaigns.is_none_or(|list| e["campaign"].as_str().is_some_and(|c| list.iter().any(|x| x == c)))
                })
                .map(|e| allowed.masked(e))
                .collect();
            let erased = match convo_contact_history::erased(&tree, &account, &contact) {
                Ok(erased) => erased,
                Err(e) => return failed(e),
            };
            let mut body = json!({"account": account, "contact": contact, "history": entries});
            if let Some(erased) = erased {
                body["erased"] = erased;
            }
            position.stamp(reply(StatusCode::OK, body))
        }
        Err(e) => failed(e),
    }
}

/// `GET …/contacts/{contact}/export`: everything held about a contact
/// (SPEC §13, subject access) in one JSON document — identity, attributes,
/// every conversation with its texts. Admins and the operator only.
pub(crate) async fn contact_export(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((account, contact)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let allowed = match authorize(&shared, &account, CONTACT_EXPORT, &headers, peer.ip()).await {
        Ok(allowed) => allowed,
        Err(response) => return response,
    };
    if allowed.scope != Scope::Account {
        return error(StatusCode::FORBIDDEN, "forbidden", "a contact's export is an admin's or the operator's");
    }
    let (Ok(account_id), Ok(contact_id)) =
        (convo_domain::AccountId::new(&account), convo_domain::ContactId::new(&contact))
    else {
        return invalid("contact", "the account and the contact are ids (letters, digits, `-`, `_`)");
    };
    match convo_store::erasure::export_contact(&shared.store, &account_id, &contact_id).await {
        Ok(document) => reply(StatusCode::OK, document),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", &e.to_string()),
    }
}

/// What the export is authorized as (no integration holds it: it is no read
/// scope); the engine records every one as an `unredacted_read`.
const CONTACT_EXPORT: &str = convo_domain::contact::EXPORT_READ;

#[derive(Debug, Deserialize)]
pub(crate) struct LiveQuery {
    /// A wait this close to its next threshold is at risk (seconds).
    margin_secs: Option<u64>,
    /// For the inbox: whose (an agent reads their own without it).
    agent: Option<String>,
}

/// The largest risk margin a reader may ask for, in seconds (a day).
pub const RISK_MARGIN_MAX_SECS: u64 = 86_400;

fn view(shared: &Shared, q: &LiveQuery, campaigns: Option<Vec<String>>) -> Result<convo_live::View, Box<Response>> {
    let margin_secs = q.margin_secs.unwrap_or(shared.config.risk_margin_secs);
    if margin_secs > RISK_MARGIN_MAX_SECS {
        return Err(Box::new(invalid("margin_secs", &format!("`margin_secs` is at most {RISK_MARGIN_MAX_SECS}"))));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    Ok(convo_live::View { now: convo_domain::Timestamp::from_millis(now), margin_secs, campaigns })
}

/// `GET …/live`: the live dashboard now (a supervisor's: their campaigns).
pub(crate) async fn live(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(account): Path<String>,
    Params(q): Params<LiveQuery>,
    headers: HeaderMap,
) -> Response {
    let (allowed, tree, position) =
        match authorized_read(&shared, &account, "live", convo_live::NAME, &headers, peer.ip()).await {
            Ok(read) => read,
            Err(response) => return response,
        };
    let view = match view(&shared, &q, allowed.scope.campaigns().map(<[String]>::to_vec)) {
        Ok(v) => v,
        Err(response) => return *response,
    };
    match convo_live::dashboard(&tree, &account, &view) {
        Ok(dashboard) => match opened(&shared, dashboard).await {
            Ok(mut dashboard) => {
                convo_live::cut_previews(&mut dashboard);
                position.stamp(reply(StatusCode::OK, allowed.masked(dashboard)))
            }
            Err(response) => response,
        },
        Err(e) => failed(e),
    }
}

/// `GET …/inbox?agent=`: an agent's inbox. An agent reads their own (no
/// `agent`, or their own id); a supervisor those of agents in their
/// campaigns; admins anyone's.
pub(crate) async fn inbox(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(account): Path<String>,
    Params(q): Params<LiveQuery>,
    headers: HeaderMap,
) -> Response {
    let (allowed, tree, position) =
        match authorized_read(&shared, &account, "inbox", convo_inbox::NAME, &headers, peer.ip()).await {
            Ok(read) => read,
            Err(response) => return response,
        };
    let own = match &allowed.scope {
        Scope::Agent(own) => Some(own.as_str()),
        _ => None,
    };
    let agent = match (own, q.agent.as_deref()) {
        (Some(own), None) => own.to_owned(),
        (Some(own), Some(asked)) if own == asked => own.to_owned(),
        (Some(own), Some(_)) => {
            return error(StatusCode::FORBIDDEN, "forbidden", &format!("an agent reads their own inbox ({own}'s)"));
        }
        (None, Some(asked)) => asked.to_owned(),
        (None, None) => return invalid("agent", "`agent` names whose inbox to read"),
    };
    let view = match view(&shared, &q, None) {
        Ok(v) => v,
        Err(response) => return *response,
    };
    if let Some(theirs) = allowed.scope.campaigns() {
        let ok = convo_live::campaigns(&tree, &account)
            .map(|all| theirs.iter().any(|c| all.get(c).is_some_and(|row| row.agents.contains(&agent))));
        if !ok.unwrap_or(false) {
            let message = format!("{agent} works in none of the campaigns you supervise");
            return error(StatusCode::FORBIDDEN, "forbidden", &message);
        }
    }
    match convo_inbox::inbox(&tree, &account, &agent, &view) {
        Ok(inbox) => match opened(&shared, inbox).await {
            Ok(mut inbox) => {
                convo_live::cut_previews(&mut inbox);
                position.stamp(reply(StatusCode::OK, allowed.masked(inbox)))
            }
            Err(response) => response,
        },
        Err(e) => failed(e),
    }
}
