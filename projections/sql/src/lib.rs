//! # convo-sql
//!
//! The SQL projection (SPEC §8, DESIGN "Reporting in SQL"): the stream's
//! facts kept in PostgreSQL for a reporting team's own tools — one row per
//! conversation, per response (its wait, SLA class and business-hours flag),
//! per SLA threshold crossed, per agent segment, transfer, closure, agent
//! state interval and survey answer, plus conversation labels and contact
//! attributes — with views of the reports the HTTP API serves, bucketed in
//! each account's time zone ([`ddl`]).
//!
//! Exactly once: every batch of commits is written in one transaction
//! together with the checkpoint (the last stream sequence it holds), after
//! checking that the checkpoint is still where this writer left it; a crash
//! loses at most the batch in hand, and a second writer on the same schema
//! makes the other start again from the checkpoint, never write a row twice.
//! A commit that does not follow its aggregate's last one (a copy, a
//! forgery) or cannot be decoded goes to `dead_letters`, as in every read
//! model.
//!
//! Personal data (SPEC §13): no message text, name, handle or field value is
//! written; contact attribute values are written opened, masked by the
//! account's redaction rules in force when they were set, and deleted when
//! the contact is erased. Contact ids, as the stream keeps them, are the
//! join key with a CRM.
//!
//! A rebuild ([`rebuild`]) folds the whole stream into `<schema>_rebuild`
//! and swaps it in by renaming, in one transaction: readers see the old
//! schema until then.

pub mod launcher;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::sync::watch;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

use convo_domain::config::{ConfigEvent, RegexRule};
use convo_domain::contact::ContactEvent;
use convo_domain::conversation::Destination;
use convo_domain::{AgentEvent, ConversationEvent, Timestamp};
use convo_store::keys::Keyring;
use convo_store::{EventStore, StoreError, StoredCommit};
use convo_wire::redact::Rules;
use convo_wire::{Event, StreamRef};

/// The projection's name (in metrics and logs).
pub const NAME: &str = "postgres";
/// The schema the projection keeps its tables in unless told another.
pub const SCHEMA_DEFAULT: &str = "convo";
/// The longest schema name (PostgreSQL's limit is 63 bytes; a rebuild adds `_rebuild`).
pub const SCHEMA_NAME_BYTES_MAX: usize = 48;
/// Commits written in one transaction while following.
pub const BATCH_COMMITS_MAX: usize = 2_000;
/// Commits written in one transaction while rebuilding (no reader sees the
/// fresh schema before the swap).
pub const REBUILD_BATCH_COMMITS_MAX: usize = 10_000;
/// Conversations whose current context is kept in memory between batches;
/// past it the cache is emptied and read back from `conversations` as needed.
pub const CONTEXTS_CACHED_MAX: usize = 100_000;
/// How long a connection attempt may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the follower waits after a failure before trying again.
pub const RETRY_AFTER: Duration = Duration::from_secs(2);
/// The longest password file.
pub const PASSWORD_BYTES_MAX: usize = 1_024;
/// The tables' layout: a schema of another layout is refused (rebuild it).
pub const LAYOUT_VERSION: i64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("{0}")]
    Setting(String),
    #[error("PostgreSQL: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the schema {schema} holds layout {found}, this convo writes layout {LAYOUT_VERSION}: rebuild it \
         (convo project postgres --rebuild)"
    )]
    Layout { schema: String, found: i64 },
    #[error(
        "another writer moved the checkpoint of {schema} to {found} (this one was at {expected}): going on from it"
    )]
    Moved { schema: String, expected: u64, found: u64 },
}

impl SqlError {
    fn db(e: tokio_postgres::Error, what: &str) -> Self {
        let detail = e.as_db_error().map(|d| format!("{}: {}", d.code().code(), d.message()));
        Self::Setting(format!("PostgreSQL, {what}: {}", detail.unwrap_or_else(|| e.to_string())))
    }
}

/// Where the projection writes: a server (on loopback: convo speaks to it
/// without TLS), a user, a database and a schema.
#[derive(Clone)]
pub struct Target {
    config: tokio_postgres::Config,
    pub schema: String,
    /// Commits written per transaction while following (at most [`REBUILD_BATCH_COMMITS_MAX`]).
    pub batch_commits: usize,
    shown: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (schema {})", self.shown, self.schema)
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

impl Target {
    /// Checks the settings (`--postgres`, `--postgres-password-file`,
    /// `--postgres-schema`): a bad one is refused, naming the fix.
    pub fn new(url: &str, password_file: Option<&Path>, schema: &str) -> Result<Self, SqlError> {
        let shown = convo_store::strip_userinfo(url);
        let setting = |why: String| SqlError::Setting(format!("--postgres {shown}: {why}"));
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|e| setting(format!("not a PostgreSQL URL (postgres://USER@127.0.0.1:5432/DATABASE): {e}")))?;
        if config.get_password().is_some() {
            return Err(setting(
                "the URL holds a password, which every user of this machine can read in the process list: \
                 put it in a file only you can read and give --postgres-password-file"
                    .into(),
            ));
        }
        if config.get_user().is_none() {
            return Err(setting("names no user (postgres://USER@127.0.0.1:5432/DATABASE)".into()));
        }
        if config.get_hosts().is_empty() {
            return Err(setting("names no host (postgres://USER@127.0.0.1:5432/DATABASE)".into()));
        }
        for host in config.get_hosts() {
            if let tokio_postgres::config::Host::Tcp(name) = host {
                let loopback = name == "localhost"
                    || name.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
                if !loopback {
                    return Err(setting(format!(
                        "{name} is not on this machine, and convo speaks to PostgreSQL without TLS: reach the server \
                         on loopback or a local socket (an SSH tunnel or a local pgbouncer that speaks TLS onward)"
                    )));
                }
            }
        }
        if let Some(file) = password_file {
            let bytes = convo_store::private::read_secret(file, "the PostgreSQL password", 1)
                .map_err(|e| SqlError::Setting(format!("--postgres-password-file: {e}")))?;
            if bytes.len() > PASSWORD_BYTES_MAX {
                return Err(SqlError::Setting(format!(
                    "--postgres-password-file {}: longer than {PASSWORD_BYTES_MAX} bytes",
                    file.display()
                )));
            }
            config.password(bytes);
        }
        check_schema_name(schema)?;
        config.connect_timeout(CONNECT_TIMEOUT).application_name("convo");
        Ok(Self { config, schema: schema.to_owned(), batch_commits: BATCH_COMMITS_MAX, shown })
    }

    /// The same target writing `commits` per transaction while following
    /// (between 1 and [`REBUILD_BATCH_COMMITS_MAX`]).
    pub fn with_batch_commits(mut self, commits: usize) -> Self {
        self.batch_commits = commits.clamp(1, REBUILD_BATCH_COMMITS_MAX);
        self
    }

    /// A connection (its driver runs on this runtime until the client is dropped).
    pub async fn connect(&self) -> Result<Client, SqlError> {
        let (client, connection) =
            self.config.connect(NoTls).await.map_err(|e| SqlError::db(e, &format!("connecting to {}", self.shown)))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("the PostgreSQL connection ended: {e}");
            }
        });
        Ok(client)
    }

    /// Connects and makes (or checks) the schema: what `convo serve
    /// --postgres` does before it starts, so a bad setting stops it.
    pub async fn open(&self) -> Result<Sql, SqlError> {
        Sql::open(self.connect().await?, &self.schema).await
    }
}

fn check_schema_name(schema: &str) -> Result<(), SqlError> {
    let ok = !schema.is_empty()
        && schema.len() <= SCHEMA_NAME_BYTES_MAX
        && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && schema.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(SqlError::Setting(format!(
            "--postgres-schema {schema:?}: a schema name is lowercase letters, digits and `_`, starting with a letter \
             or `_`, at most {SCHEMA_NAME_BYTES_MAX} bytes"
        )))
    }
}

/// The tables and views of the projection in `schema` (a name
/// [`check_schema_name`] accepted). Times are `timestamptz`; durations whole
/// seconds; `event_seq` is the event's sequence in its conversation or agent.
pub fn ddl(schema: &str) -> String {
    r#"
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.checkpoint (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    seq bigint NOT NULL,
    layout bigint NOT NULL
);
INSERT INTO {s}.checkpoint (only_row, seq, layout) VALUES (true, 0, {layout}) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS {s}.accounts (
    account text PRIMARY KEY,
    time_zone text NOT NULL,
    redact_rules text NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.conversations (
    account text NOT NULL, conversation text NOT NULL,
    contact text, channel text, client text, campaign text, project text, direction text,
    opened_at timestamptz, out_of_hours boolean,
    agent text, segment bigint, team text, business_hours boolean,
    transfers bigint NOT NULL, responses bigint NOT NULL, first_response_secs bigint,
    closed_at timestamptz, close_reason text, typification text, handle_secs bigint,
    survey_rating bigint, survey_solved boolean,
    PRIMARY KEY (account, conversation)
);
CREATE TABLE IF NOT EXISTS {s}.responses (
    account text NOT NULL, conversation text NOT NULL, event_seq bigint NOT NULL,
    at timestamptz NOT NULL, wait_started_at timestamptz NOT NULL, response_secs bigint NOT NULL,
    first boolean NOT NULL, sla_class text NOT NULL, business_hours boolean NOT NULL,
    agent text NOT NULL, client text, campaign text, channel text, team text,
    PRIMARY KEY (account, conversation, event_seq)
);
CREATE TABLE IF NOT EXISTS {s}.sla_crossings (
    account text NOT NULL, conversation text NOT NULL, event_seq bigint NOT NULL,
    at timestamptz NOT NULL, threshold text NOT NULL, wait_started_at timestamptz NOT NULL,
    agent text, client text, campaign text, channel text, team text,
    PRIMARY KEY (account, conversation, event_seq)
);
CREATE TABLE IF NOT EXISTS {s}.segments (
    account text NOT NULL, conversation text NOT NULL, segment bigint NOT NULL,
    agent text, campaign text, started_at timestamptz, ended_at timestamptz, ended_by text,
    PRIMARY KEY (account, conversation, segment)
);
CREATE TABLE IF NOT EXISTS {s}.transfers (
    account text NOT NULL, conversation text NOT NULL, event_seq bigint NOT NULL,
    at timestamptz NOT NULL, from_agent text, segment bigint NOT NULL, typification text NOT NULL,
    to_kind text NOT NULL, to_value text NOT NULL, from_campaign text, client text,
    PRIMARY KEY (account, conversation, event_seq)
);
CREATE TABLE IF NOT EXISTS {s}.closures (
    account text NOT NULL, conversation text NOT NULL, event_seq bigint NOT NULL,
    at timestamptz NOT NULL, reason text NOT NULL, typification text, agent text,
    client text, campaign text, channel text, team text, handle_secs bigint NOT NULL,
    PRIMARY KEY (account, conversation, event_seq)
);
CREATE TABLE IF NOT EXISTS {s}.agent_states (
    account text NOT NULL, agent text NOT NULL, event_seq bigint NOT NULL,
    state text, previous text, started_at timestamptz, ended_at timestamptz,
    PRIMARY KEY (account, agent, event_seq)
);
CREATE TABLE IF NOT EXISTS {s}.csat (
    account text NOT NULL, conversation text NOT NULL, event_seq bigint NOT NULL,
    at timestamptz NOT NULL, rating bigint NOT NULL, solved boolean NOT NULL,
    agent text, client text, campaign text, channel text,
    PRIMARY KEY (account, conversation, event_seq)
);
CREATE TABLE IF NOT EXISTS {s}.labels (
    account text NOT NULL, conversation text NOT NULL, label text NOT NULL, added_at timestamptz NOT NULL,
    PRIMARY KEY (account, conversation, label)
);
CREATE TABLE IF NOT EXISTS {s}.contact_attributes (
    account text NOT NULL, contact text NOT NULL, name text NOT NULL, value text NOT NULL, set_at timestamptz NOT NULL,
    PRIMARY KEY (account, contact, name)
);
CREATE TABLE IF NOT EXISTS {s}.contacts_erased (
    account text NOT NULL, contact text NOT NULL, erased_at timestamptz NOT NULL,
    PRIMARY KEY (account, contact)
);
CREATE TABLE IF NOT EXISTS {s}.heads (
    account text NOT NULL, stream text NOT NULL, last_seq bigint NOT NULL,
    PRIMARY KEY (account, stream)
);
CREATE TABLE IF NOT EXISTS {s}.dead_letters (
    seq bigint PRIMARY KEY, reason text NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_by_time ON {s}.responses (account, at);
CREATE INDEX IF NOT EXISTS closures_by_time ON {s}.closures (account, at);
CREATE INDEX IF NOT EXISTS open_agent_states ON {s}.agent_states (account, agent) WHERE ended_at IS NULL;

-- Each account's zone (UTC before its settings name one): the views' buckets.
CREATE OR REPLACE VIEW {s}.zones AS
    SELECT a.account, a.time_zone FROM {s}.accounts a;

-- SLA classes of responses per campaign and hour (or day) in the account's
-- time, as `GET /v1/accounts/{account}/reports?kind=sla&by=campaign` counts them.
CREATE OR REPLACE VIEW {s}.sla_by_campaign_hour AS
SELECT r.account, r.campaign, to_char(r.at AT TIME ZONE coalesce(z.time_zone, 'UTC'), 'YYYY-MM-DD"T"HH24') AS hour,
       coalesce(z.time_zone, 'UTC') AS time_zone,
       count(*) FILTER (WHERE r.sla_class = 'optimal') AS sla_optimal,
       count(*) FILTER (WHERE r.sla_class = 'low') AS sla_low,
       count(*) FILTER (WHERE r.sla_class = 'breached') AS sla_breached,
       round(100.0 * count(*) FILTER (WHERE r.sla_class = 'optimal') / count(*), 1) AS sla_optimal_pct,
       round(100.0 * count(*) FILTER (WHERE r.sla_class = 'low') / count(*), 1) AS sla_low_pct,
       round(100.0 * count(*) FILTER (WHERE r.sla_class = 'breached') / count(*), 1) AS sla_breached_pct,
       count(*) FILTER (WHERE r.business_hours) AS sla_business_hours
FROM {s}.responses r LEFT JOIN {s}.zones z USING (account)
GROUP BY 1, 2, 3, 4;

CREATE OR REPLACE VIEW {s}.sla_by_campaign_day AS
SELECT account, campaign, left(hour, 10) AS day, time_zone,
       sum(sla_optimal)::bigint AS sla_optimal, sum(sla_low)::bigint AS sla_low, sum(sla_breached)::bigint AS sla_breached
FROM {s}.sla_by_campaign_hour GROUP BY 1, 2, 3, 4;

-- First response times per campaign and hour: count, mean (whole seconds,
-- rounded down) and nearest-rank percentiles (exact; the HTTP reports keep
-- three significant digits above 1000 s).
CREATE OR REPLACE VIEW {s}.first_response_by_campaign_hour AS
SELECT r.account, r.campaign, to_char(r.at AT TIME ZONE coalesce(z.time_zone, 'UTC'), 'YYYY-MM-DD"T"HH24') AS hour,
       coalesce(z.time_zone, 'UTC') AS time_zone,
       count(*) AS frt_count, sum(r.response_secs) / count(*) AS frt_mean_secs,
       percentile_disc(0.5) WITHIN GROUP (ORDER BY r.response_secs) AS frt_p50_secs,
       percentile_disc(0.9) WITHIN GROUP (ORDER BY r.response_secs) AS frt_p90_secs
FROM {s}.responses r LEFT JOIN {s}.zones z USING (account)
WHERE r.first
GROUP BY 1, 2, 3, 4;

-- Closures per campaign, day, reason and typification in the account's time.
CREATE OR REPLACE VIEW {s}.closures_by_campaign_day AS
SELECT c.account, c.campaign, to_char(c.at AT TIME ZONE coalesce(z.time_zone, 'UTC'), 'YYYY-MM-DD') AS day,
       c.reason, c.typification, count(*) AS closed, sum(c.handle_secs) / count(*) AS handle_mean_secs
FROM {s}.closures c LEFT JOIN {s}.zones z USING (account)
GROUP BY 1, 2, 3, 4, 5;

-- Survey answers per campaign and day in the account's time.
CREATE OR REPLACE VIEW {s}.csat_by_campaign_day AS
SELECT c.account, c.campaign, to_char(c.at AT TIME ZONE coalesce(z.time_zone, 'UTC'), 'YYYY-MM-DD') AS day,
       count(*) AS csat_answers, round(avg(c.rating), 2) AS csat_mean, count(*) FILTER (WHERE c.solved) AS solved
FROM {s}.csat c LEFT JOIN {s}.zones z USING (account)
GROUP BY 1, 2, 3;

-- Time each agent spent in each state (an interval still open counts up to now).
CREATE OR REPLACE VIEW {s}.agent_time_in_state AS
SELECT account, agent, state, count(*) AS intervals,
       sum(extract(epoch FROM coalesce(ended_at, now()) - started_at))::bigint AS seconds
FROM {s}.agent_states WHERE state IS NOT NULL
GROUP BY 1, 2, 3;
"#
    .replace("{s}", schema)
    .replace("{layout}", &LAYOUT_VERSION.to_string())
}

/// What one run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    pub commits: u64,
    pub batches: u64,
    pub dead_letters: u64,
    pub checkpoint: u64,
    /// Rows written (inserted or updated).
    pub rows: u64,
}

/// A conversation as the projection knows it now (its `conversations` row).
#[derive(Debug, Clone, Default, PartialEq)]
struct Conv {
    contact: Option<String>,
    channel: Option<String>,
    client: Option<String>,
    campaign: Option<String>,
    project: Option<String>,
    direction: Option<String>,
    opened_at: Option<DateTime<Utc>>,
    out_of_hours: Option<bool>,
    agent: Option<String>,
    segment: Option<i64>,
    team: Option<String>,
    business_hours: bool,
    transfers: i64,
    responses: i64,
    first_response_secs: Option<i64>,
    closed_at: Option<DateTime<Utc>>,
    close_reason: Option<String>,
    typification: Option<String>,
    handle_secs: Option<i64>,
    survey_rating: Option<i64>,
    survey_solved: Option<bool>,
}

/// One cell of a row, by its SQL type.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Cell {
    Text(Option<String>),
    Int(Option<i64>),
    Bool(Option<bool>),
    Time(Option<DateTime<Utc>>),
}

fn text(v: impl Into<String>) -> Cell {
    Cell::Text(Some(v.into()))
}

fn opt(v: Option<&str>) -> Cell {
    Cell::Text(v.map(str::to_owned))
}

fn int(v: i64) -> Cell {
    Cell::Int(Some(v))
}

fn time(t: Timestamp) -> Cell {
    Cell::Time(Some(t.to_datetime()))
}

/// How a batch's rows meet rows already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnConflict {
    /// A fact is written once: a second copy is an error (exactly once).
    Fail,
    /// The row is replaced by the batch's.
    Replace,
    /// The batch's non-null cells replace the row's (an interval's end joins its start).
    Fill,
}

/// A table the batch writes: its columns (name, SQL type), how many of
/// them make its key, and how a row meets an existing one.
#[derive(Debug)]
struct Table {
    name: &'static str,
    columns: &'static [(&'static str, &'static str)],
    key: usize,
    on_conflict: OnConflict,
}

const CONVERSATIONS: Table = Table {
    name: "conversations",
    columns: &[
        ("account", "text"),
        ("conversation", "text"),
        ("contact", "text"),
        ("channel", "text"),
        ("client", "text"),
        ("campaign", "text"),
        ("project", "text"),
        ("direction", "text"),
        ("opened_at", "timestamptz"),
        ("out_of_hours", "boolean"),
        ("agent", "text"),
        ("segment", "bigint"),
        ("team", "text"),
        ("business_hours", "boolean"),
        ("transfers", "bigint"),
        ("responses", "bigint"),
        ("first_response_secs", "bigint"),
        ("closed_at", "timestamptz"),
        ("close_reason", "text"),
        ("typification", "text"),
        ("handle_secs", "bigint"),
        ("survey_rating", "bigint"),
        ("survey_solved", "boolean"),
    ],
    key: 2,
    on_conflict: OnConflict::Replace,
};

const RESPONSES: Table = Table {
    name: "responses",
    columns: &[
        ("account", "text"),
        ("conversation", "text"),
        ("event_seq", "bigint"),
        ("at", "timestamptz"),
        ("wait_started_at", "timestamptz"),
        ("response_secs", "bigint"),
        ("first", "boolean"),
        ("sla_class", "text"),
        ("business_hours", "boolean"),
        ("agent", "text"),
        ("client", "text"),
        ("campaign", "text"),
        ("channel", "text"),
        ("team", "text"),
    ],
    key: 3,
    on_conflict: OnConflict::Fail,
};

const SLA_CROSSINGS: Table = Table {
    name: "sla_crossings",
    columns: &[
        ("account", "text"),
        ("conversation", "text"),
        ("event_seq", "bigint"),
        ("at", "timestamptz"),
        ("threshold", "text"),
        ("wait_started_at", "timestamptz"),
        ("agent", "text"),
        ("client", "text"),
        ("campaign", "text"),
        ("channel", "text"),
        ("team", "text"),
    ],
    key: 3,
    on_conflict: OnConflict::Fail,
};

const SEGMENTS: Table = Table {
    name: "segments",
    columns: &[
        ("account", "text"),
        ("conversation", "text"),
        ("segment", "bigint"),
        ("agent", "text"),
        ("campaign", "text"),
        ("started_at", "timestamptz"),
        ("ended_at", "timestamptz"),
        ("ended_by", "text"),
    ],
    key: 3,
    on_conflict: OnConflict::Fill,
};

const TRANSFERS: Table = Table {
    name: "transfers",
    columns: &[
        ("account", "text"),
        ("conversation", "text"),
        ("event_seq", "bigint"),
        ("at", "timestamptz"),
        ("from_agent", "text"),
        ("segment", "bigint"),
        ("typification", "text"),
        ("to_kind", "text"),
        ("to_value", "text"),
        ("from_campaign", "text"),
        ("client", "text"),
    ],
    key: 3,
    on_conflict: OnConflict::Fail,
};

const CLOSURES: Table = Table {
    name: "closures",
    columns: &[
        ("account", "text"),
        ("conversation", "text"),
        ("event_seq", "bigint"),
        ("at", "timestamptz"),
        ("reason", "text"),
        ("typification", "text"),
        ("agent", "text"),
        ("client", "text"),
        ("campaign", "text"),
        ("channel", "text"),
        ("team", "text"),
        ("handle_secs", "bigint"),
    ],
    key: 3,
    on_conflict: OnConflict::Fail,
};

const AGENT_STATES: Table = Table {
    name: "agent_states",
    columns: &[
        ("account", "text"),
        ("agent", "text"),
        ("event_seq", "bigint"),
        ("state", "text"),
        ("previous", "text"),
        ("started_at", "timestamptz"),
        ("ended_at", "timestamptz"),
    ],
    key: 3,
    on_conflict: OnConflict::Fill,
};

const CSAT: Table = Table {
    name: "csat",
    columns: &[
        ("account", "text"),
        ("conversation", "text"),
        ("event_seq", "bigint"),
        ("at", "timestamptz"),
        ("rating", "bigint"),
        ("solved", "boolean"),
        ("agent", "text"),
        ("client", "text"),
        ("campaign", "text"),
        ("channel", "text"),
    ],
    key: 3,
    on_conflict: OnConflict::Fail,
};

const LABELS: Table = Table {
    name: "labels",
    columns: &[("account", "text"), ("conversation", "text"), ("label", "text"), ("added_at", "timestamptz")],
    key: 3,
    on_conflict: OnConflict::Replace,
};

const CONTACT_ATTRIBUTES: Table = Table {
    name: "contact_attributes",
    columns: &[
        ("account", "text"),
        ("contact", "text"),
        ("name", "text"),
        ("value", "text"),
        ("set_at", "timestamptz"),
    ],
    key: 3,
    on_conflict: OnConflict::Replace,
};

const CONTACTS_ERASED: Table = Table {
    name: "contacts_erased",
    columns: &[("account", "text"), ("contact", "text"), ("erased_at", "timestamptz")],
    key: 2,
    on_conflict: OnConflict::Replace,
};

const ACCOUNTS: Table = Table {
    name: "accounts",
    columns: &[("account", "text"), ("time_zone", "text"), ("redact_rules", "text")],
    key: 1,
    on_conflict: OnConflict::Replace,
};

const HEADS: Table = Table {
    name: "heads",
    columns: &[("account", "text"), ("stream", "text"), ("last_seq", "bigint")],
    key: 2,
    on_conflict: OnConflict::Replace,
};

const DEAD_LETTERS: Table = Table {
    name: "dead_letters",
    columns: &[("seq", "bigint"), ("reason", "text")],
    key: 1,
    on_conflict: OnConflict::Replace,
};

/// The order tables are written in (every table of the batch).
const TABLES: [&Table; 14] = [
    &ACCOUNTS,
    &CONVERSATIONS,
    &RESPONSES,
    &SLA_CROSSINGS,
    &SEGMENTS,
    &TRANSFERS,
    &CLOSURES,
    &AGENT_STATES,
    &CSAT,
    &LABELS,
    &CONTACT_ATTRIBUTES,
    &CONTACTS_ERASED,
    &HEADS,
    &DEAD_LETTERS,
];

/// Every table of the projection, by name (the checkpoint first).
pub fn table_names() -> impl Iterator<Item = &'static str> {
    std::iter::once("checkpoint").chain(TABLES.iter().map(|t| t.name))
}

/// A table's rows in a batch, by key (a later row for the same key merges
/// into the earlier one as the table's [`OnConflict`] says).
#[derive(Debug, Default)]
struct Rows {
    rows: BTreeMap<Vec<Cell>, Vec<Cell>>,
    /// Keys deleted in this batch (before the upserts are written, a key
    /// written again after its deletion is an upsert only).
    deleted: Vec<Vec<Cell>>,
}

/// A batch's writes, per table.
#[derive(Debug, Default)]
struct Batch {
    tables: HashMap<&'static str, Rows>,
    /// Contacts whose attributes were all cleared in this batch (erased, or
    /// defined again): those already written go first.
    cleared_contacts: Vec<(String, String)>,
    /// Conversations the batch changed (their rows are written whole).
    touched: std::collections::HashSet<(String, String)>,
}

impl Batch {
    fn put(&mut self, table: &Table, row: Vec<Cell>) {
        debug_assert_eq!(row.len(), table.columns.len(), "{}", table.name);
        let key = row[..table.key].to_vec();
        let rows = self.tables.entry(table.name).or_default();
        match (table.on_conflict, rows.rows.get_mut(&key)) {
            (OnConflict::Fill, Some(existing)) => {
                for (old, new) in existing.iter_mut().zip(row) {
                    if !is_null(&new) {
                        *old = new;
                    }
                }
            }
            _ => {
                rows.rows.insert(key, row);
            }
        }
    }

    fn delete(&mut self, table: &Table, key: Vec<Cell>) {
        let rows = self.tables.entry(table.name).or_default();
        rows.rows.remove(&key);
        rows.deleted.push(key);
    }

    /// Every attribute of the contact goes (those written before this batch, and this batch's).
    fn clear_attributes(&mut self, account: &str, contact: &str) {
        let attributes = self.tables.entry(CONTACT_ATTRIBUTES.name).or_default();
        let owner = [text(account), text(contact)];
        attributes.rows.retain(|k, _| k[..2] != owner);
        attributes.deleted.retain(|k| k[..2] != owner);
        self.cleared_contacts.push((account.to_owned(), contact.to_owned()));
    }

    fn rows(&self) -> u64 {
        self.tables.values().map(|t| (t.rows.len() + t.deleted.len()) as u64).sum::<u64>()
            + self.cleared_contacts.len() as u64
    }
}

fn is_null(cell: &Cell) -> bool {
    matches!(cell, Cell::Text(None) | Cell::Int(None) | Cell::Bool(None) | Cell::Time(None))
}

/// A column of cells as one array parameter.
fn column(cells: Vec<Cell>, sql_type: &str) -> Box<dyn ToSql + Sync + Send> {
    match sql_type {
        "text" => Box::new(
            cells.into_iter().map(|c| if let Cell::Text(v) = c { v } else { None }).collect::<Vec<Option<String>>>(),
        ),
        "bigint" => Box::new(
            cells.into_iter().map(|c| if let Cell::Int(v) = c { v } else { None }).collect::<Vec<Option<i64>>>(),
        ),
        "boolean" => Box::new(
            cells.into_iter().map(|c| if let Cell::Bool(v) = c { v } else { None }).collect::<Vec<Option<bool>>>(),
        ),
        _ => Box::new(
            cells
                .into_iter()
                .map(|c| if let Cell::Time(v) = c { v } else { None })
                .collect::<Vec<Option<DateTime<Utc>>>>(),
        ),
    }
}

/// The rows as column arrays, one per column.
fn columns(table: &Table, rows: Vec<Vec<Cell>>, width: usize) -> Vec<Box<dyn ToSql + Sync + Send>> {
    let mut cols: Vec<Vec<Cell>> = (0..width).map(|_| Vec::with_capacity(rows.len())).collect();
    for row in rows {
        for (col, cell) in cols.iter_mut().zip(row) {
            col.push(cell);
        }
    }
    cols.into_iter().zip(table.columns).map(|(cells, (_, t))| column(cells, t)).collect()
}

fn upsert_sql(schema: &str, table: &Table) -> String {
    let names: Vec<&str> = table.columns.iter().map(|(n, _)| *n).collect();
    let arrays: Vec<String> =
        table.columns.iter().enumerate().map(|(i, (_, t))| format!("${}::{t}[]", i + 1)).collect();
    let key = names[..table.key].join(", ");
    let rest = &names[table.key..];
    let conflict = match table.on_conflict {
        OnConflict::Fail => String::new(),
        OnConflict::Replace if rest.is_empty() => format!(" ON CONFLICT ({key}) DO NOTHING"),
        OnConflict::Replace => format!(
            " ON CONFLICT ({key}) DO UPDATE SET {}",
            rest.iter().map(|c| format!("{c} = EXCLUDED.{c}")).collect::<Vec<_>>().join(", ")
        ),
        OnConflict::Fill => format!(
            " ON CONFLICT ({key}) DO UPDATE SET {}",
            rest.iter().map(|c| format!("{c} = coalesce(EXCLUDED.{c}, t.{c})")).collect::<Vec<_>>().join(", ")
        ),
    };
    format!(
        "INSERT INTO {schema}.{} AS t ({}) SELECT * FROM unnest({}){conflict}",
        table.name,
        names.join(", "),
        arrays.join(", ")
    )
}

fn delete_sql(schema: &str, table: &Table) -> String {
    let names: Vec<&str> = table.columns[..table.key].iter().map(|(n, _)| *n).collect();
    let arrays: Vec<String> =
        table.columns[..table.key].iter().enumerate().map(|(i, (_, t))| format!("${}::{t}[]", i + 1)).collect();
    format!(
        "DELETE FROM {schema}.{} t USING unnest({}) AS d({}) WHERE {}",
        table.name,
        arrays.join(", "),
        names.join(", "),
        names.iter().map(|n| format!("t.{n} = d.{n}")).collect::<Vec<_>>().join(" AND ")
    )
}

/// The projection over one connection and schema.
#[derive(Debug)]
pub struct Sql {
    client: Client,
    schema: String,
    /// Conversations' current rows, by (account, conversation).
    contexts: HashMap<(String, String), Conv>,
    /// Each aggregate's last event folded, by (account, stream path).
    heads: HashMap<(String, String), u64>,
    /// Each account's redaction rules (from its settings).
    accounts: HashMap<String, Rules>,
    /// Each agent's open state interval: its event's sequence.
    open_states: HashMap<(String, String), i64>,
    loaded: bool,
}

impl Sql {
    /// Makes the schema's tables and views if missing, and checks its layout.
    pub async fn open(client: Client, schema: &str) -> Result<Self, SqlError> {
        check_schema_name(schema)?;
        let mut sql = Self {
            client,
            schema: schema.to_owned(),
            contexts: HashMap::new(),
            heads: HashMap::new(),
            accounts: HashMap::new(),
            open_states: HashMap::new(),
            loaded: false,
        };
        sql.make_schema().await?;
        Ok(sql)
    }

    async fn make_schema(&mut self) -> Result<(), SqlError> {
        let tx = self.client.transaction().await?;
        // One maker at a time (two instances starting together).
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&format!("convo-sql:{}", self.schema)])
            .await
            .map_err(|e| SqlError::db(e, "locking the schema"))?;
        tx.batch_execute(&ddl(&self.schema)).await.map_err(|e| SqlError::db(e, &format!("making {}", self.schema)))?;
        let layout: i64 = tx.query_one(&format!("SELECT layout FROM {}.checkpoint", self.schema), &[]).await?.get(0);
        tx.commit().await?;
        if layout != LAYOUT_VERSION {
            return Err(SqlError::Layout { schema: self.schema.clone(), found: layout });
        }
        Ok(())
    }

    /// The last stream sequence the schema holds.
    pub async fn checkpoint(&self) -> Result<u64, SqlError> {
        let seq: i64 = self.client.query_one(&format!("SELECT seq FROM {}.checkpoint", self.schema), &[]).await?.get(0);
        Ok(seq as u64)
    }

    /// Forgets what it keeps in memory (after a failed write, nothing of it may count).
    fn reset(&mut self) {
        self.contexts.clear();
        self.heads.clear();
        self.accounts.clear();
        self.open_states.clear();
        self.loaded = false;
    }

    /// Reads back the small state every batch needs: accounts' rules and agents' open intervals.
    async fn load(&mut self) -> Result<(), SqlError> {
        if self.loaded {
            return Ok(());
        }
        let s = &self.schema;
        for row in self.client.query(&format!("SELECT account, redact_rules FROM {s}.accounts"), &[]).await? {
            let rules: Vec<RegexRule> = serde_json::from_str(row.get(1)).unwrap_or_default();
            self.accounts.insert(row.get(0), Rules::from_catalog(&rules));
        }
        let open = format!("SELECT account, agent, event_seq FROM {s}.agent_states WHERE ended_at IS NULL");
        for row in self.client.query(&open, &[]).await? {
            self.open_states.insert((row.get(0), row.get(1)), row.get(2));
        }
        self.loaded = true;
        Ok(())
    }

    /// Reads the contexts and heads the batch's commits need and the cache lacks.
    async fn prefetch(&mut self, commits: &[&StoredCommit]) -> Result<(), SqlError> {
        if self.contexts.len() > CONTEXTS_CACHED_MAX {
            self.contexts.clear();
        }
        if self.heads.len() > CONTEXTS_CACHED_MAX {
            self.heads.clear();
        }
        let (mut conv_accounts, mut conv_ids) = (Vec::new(), Vec::new());
        let (mut head_accounts, mut head_streams) = (Vec::new(), Vec::new());
        for stored in commits {
            let account = stored.commit.account.to_string();
            let path = stored.commit.stream.path();
            if !self.heads.contains_key(&(account.clone(), path.clone())) {
                head_accounts.push(account.clone());
                head_streams.push(path);
            }
            if let StreamRef::Conversation(id) = &stored.commit.stream
                && !self.contexts.contains_key(&(account.clone(), id.to_string()))
            {
                conv_accounts.push(account);
                conv_ids.push(id.to_string());
            }
        }
        let s = &self.schema;
        if !head_accounts.is_empty() {
            let query = format!(
                "SELECT h.account, h.stream, h.last_seq FROM {s}.heads h JOIN unnest($1::text[], $2::text[]) AS w(account, stream) \
                 USING (account, stream)"
            );
            for row in self.client.query(&query, &[&head_accounts, &head_streams]).await? {
                let last: i64 = row.get(2);
                self.heads.insert((row.get(0), row.get(1)), last as u64);
            }
        }
        if !conv_accounts.is_empty() {
            let names: Vec<&str> = CONVERSATIONS.columns.iter().map(|(n, _)| *n).collect();
            let query = format!(
                "SELECT {} FROM {s}.conversations c JOIN unnest($1::text[], $2::text[]) AS w(account, conversation) \
                 USING (account, conversation)",
                names.iter().map(|n| format!("c.{n}")).collect::<Vec<_>>().join(", ")
            );
            for row in self.client.query(&query, &[&conv_accounts, &conv_ids]).await? {
                let conv = Conv {
                    contact: row.get(2),
                    channel: row.get(3),
                    client: row.get(4),
                    campaign: row.get(5),
                    project: row.get(6),
                    direction: row.get(7),
                    opened_at: row.get(8),
                    out_of_hours: row.get(9),
                    agent: row.get(10),
                    segment: row.get(11),
                    team: row.get(12),
                    business_hours: row.get::<_, Option<bool>>(13).unwrap_or(false),
                    transfers: row.get(14),
                    responses: row.get(15),
                    first_response_secs: row.get(16),
                    closed_at: row.get(17),
                    close_reason: row.get(18),
                    typification: row.get(19),
                    handle_secs: row.get(20),
                    survey_rating: row.get(21),
                    survey_solved: row.get(22),
                };
                self.contexts.insert((row.get(0), row.get(1)), conv);
            }
        }
        Ok(())
    }

    /// Folds the stream from the checkpoint up to its end (or `until`), a
    /// transaction of at most `batch_max` commits at a time; `on_progress`
    /// hears (checkpoint, last).
    pub async fn catch_up<S: EventStore>(
        &mut self,
        store: &S,
        keys: Option<&Keyring>,
        batch_max: usize,
        until: Option<u64>,
        on_progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<RunStats, SqlError> {
        let ran = self.fold(store, keys, batch_max.max(1), until, on_progress).await;
        if ran.is_err() {
            self.reset();
        }
        ran
    }

    async fn fold<S: EventStore>(
        &mut self,
        store: &S,
        keys: Option<&Keyring>,
        batch_max: usize,
        until: Option<u64>,
        on_progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<RunStats, SqlError> {
        self.load().await?;
        let mut stats = RunStats { checkpoint: self.checkpoint().await?, ..RunStats::default() };
        let end = store.last_seq().await?;
        let last = until.map_or(end, |u| u.min(end));
        if stats.checkpoint >= last {
            return Ok(stats);
        }
        let mut follow = store.read_as_logged(stats.checkpoint + 1).await?;
        loop {
            let mut items = Vec::new();
            let mut done = false;
            while items.len() < batch_max {
                let Some(item) = follow.next().await else {
                    done = true;
                    break;
                };
                let seq = match &item {
                    Ok(stored) => stored.stream_seq,
                    Err(StoreError::Decode { seq, .. }) => *seq,
                    Err(e) => return Err(e.clone().into()),
                };
                if seq > last {
                    done = true; // appended after this fold began: the next one takes it
                    break;
                }
                items.push(item);
                if seq >= last {
                    done = true;
                    break;
                }
            }
            let mut to = match items.last() {
                Some(Ok(stored)) => stored.stream_seq,
                Some(Err(StoreError::Decode { seq, .. })) => *seq,
                _ => stats.checkpoint,
            };
            if done && to < last && until.is_none() {
                to = last; // the newest messages were deleted: the fold has covered the log
            }
            if to > stats.checkpoint {
                let (commits, dead, rows) = self.write(&items, keys, stats.checkpoint, to).await?;
                stats.commits += commits;
                stats.dead_letters += dead;
                stats.rows += rows;
                stats.batches += 1;
                stats.checkpoint = to;
                on_progress(to, last);
            }
            if done || stats.checkpoint >= last {
                return Ok(stats);
            }
        }
    }

    /// Folds one batch and writes it with its checkpoint in one transaction.
    async fn write(
        &mut self,
        items: &[Result<StoredCommit, StoreError>],
        keys: Option<&Keyring>,
        from: u64,
        to: u64,
    ) -> Result<(u64, u64, u64), SqlError> {
        let commits: Vec<&StoredCommit> = items.iter().filter_map(|i| i.as_ref().ok()).collect();
        self.prefetch(&commits).await?;
        let mut batch = Batch::default();
        let (mut folded, mut dead) = (0, 0);
        for item in items {
            let outcome = match item {
                Ok(stored) => match self.follows(stored) {
                    Ok(()) => {
                        self.apply(&mut batch, stored, keys).await?;
                        let key = (stored.commit.account.to_string(), stored.commit.stream.path());
                        let last = stored.commit.last_seq();
                        batch.put(&HEADS, vec![text(key.0.clone()), text(key.1.clone()), int(last as i64)]);
                        self.heads.insert(key, last);
                        Ok(())
                    }
                    Err(why) => Err((stored.stream_seq, why)),
                },
                Err(StoreError::Decode { seq, subject, error }) => {
                    Err((*seq, format!("cannot apply {subject}: {error}")))
                }
                Err(e) => return Err(e.clone().into()),
            };
            match outcome {
                Ok(()) => folded += 1,
                Err((seq, reason)) => {
                    dead += 1;
                    batch.put(&DEAD_LETTERS, vec![int(seq as i64), text(reason)]);
                }
            }
        }
        for (account, id) in std::mem::take(&mut batch.touched) {
            if let Some(conv) = self.contexts.get(&(account.clone(), id.clone())) {
                batch.put(&CONVERSATIONS, conv_row(&account, &id, conv));
            }
        }
        let rows = batch.rows();
        self.commit(batch, from, to).await?;
        Ok((folded, dead, rows))
    }

    /// Whether a commit follows its aggregate's last folded event (as the engine applies it).
    fn follows(&self, stored: &StoredCommit) -> Result<(), String> {
        let key = (stored.commit.account.to_string(), stored.commit.stream.path());
        let last = self.heads.get(&key).copied().unwrap_or(0);
        stored.commit.follows(last).map_err(|why| format!("{why} (a copy or a forgery: the engine does not apply it)"))
    }

    async fn commit(&mut self, mut batch: Batch, from: u64, to: u64) -> Result<(), SqlError> {
        let s = self.schema.clone();
        let tx = self.client.transaction().await?;
        let at: i64 = tx.query_one(&format!("SELECT seq FROM {s}.checkpoint FOR UPDATE"), &[]).await?.get(0);
        if at as u64 != from {
            return Err(SqlError::Moved { schema: s, expected: from, found: at as u64 });
        }
        if !batch.cleared_contacts.is_empty() {
            let (accounts, contacts): (Vec<String>, Vec<String>) = batch.cleared_contacts.drain(..).unzip();
            tx.execute(
                &format!(
                    "DELETE FROM {s}.contact_attributes t USING unnest($1::text[], $2::text[]) AS d(account, contact) \
                     WHERE t.account = d.account AND t.contact = d.contact"
                ),
                &[&accounts, &contacts],
            )
            .await?;
        }
        for table in TABLES {
            let Some(rows) = batch.tables.remove(table.name) else { continue };
            if !rows.deleted.is_empty() {
                let keys = columns(table, rows.deleted, table.key);
                let params: Vec<&(dyn ToSql + Sync)> = keys.iter().map(|c| c.as_ref() as &(dyn ToSql + Sync)).collect();
                tx.execute(&delete_sql(&s, table), &params)
                    .await
                    .map_err(|e| SqlError::db(e, &format!("deleting from {s}.{}", table.name)))?;
            }
            if !rows.rows.is_empty() {
                let cols = columns(table, rows.rows.into_values().collect(), table.columns.len());
                let params: Vec<&(dyn ToSql + Sync)> = cols.iter().map(|c| c.as_ref() as &(dyn ToSql + Sync)).collect();
                tx.execute(&upsert_sql(&s, table), &params)
                    .await
                    .map_err(|e| SqlError::db(e, &format!("writing {s}.{}", table.name)))?;
            }
        }
        tx.execute(&format!("UPDATE {s}.checkpoint SET seq = $1"), &[&(to as i64)]).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Folds one commit into the batch (and the contexts).
    async fn apply(
        &mut self,
        batch: &mut Batch,
        stored: &StoredCommit,
        keys: Option<&Keyring>,
    ) -> Result<(), SqlError> {
        let commit = &stored.commit;
        let account = commit.account.to_string();
        let at = commit.at;
        match &commit.stream {
            StreamRef::Catalog => {
                for e in &commit.events {
                    if let Event::Config(ConfigEvent::AccountConfigured(settings)) = &e.event {
                        let rules = serde_json::to_string(&settings.regex_rules).unwrap_or_else(|_| "[]".into());
                        batch.put(
                            &ACCOUNTS,
                            vec![text(account.clone()), text(settings.time_zone.0.name()), text(rules)],
                        );
                        self.accounts.insert(account.clone(), Rules::from_catalog(&settings.regex_rules));
                    }
                }
            }
            StreamRef::Agent(agent) => {
                for e in &commit.events {
                    let Event::Agent(AgentEvent::AgentStateChanged { state, previous }) = &e.event else { continue };
                    let key = (account.clone(), agent.to_string());
                    if let Some(open) = self.open_states.remove(&key) {
                        let end = vec![
                            text(key.0.clone()),
                            text(key.1.clone()),
                            int(open),
                            Cell::Text(None),
                            Cell::Text(None),
                            Cell::Time(None),
                            time(at),
                        ];
                        batch.put(&AGENT_STATES, end);
                    }
                    let row = vec![
                        text(key.0.clone()),
                        text(key.1.clone()),
                        int(e.seq as i64),
                        text(state.clone()),
                        opt(previous.as_deref()),
                        time(at),
                        Cell::Time(None),
                    ];
                    batch.put(&AGENT_STATES, row);
                    self.open_states.insert(key, e.seq as i64);
                }
            }
            StreamRef::Contacts => {
                for e in &commit.events {
                    let Event::Contact(event) = &e.event else { continue };
                    let contact = event.contact().to_string();
                    let sets: Vec<(&str, &str)> = match event {
                        // A definition or an update replaces the contact's attributes.
                        ContactEvent::ContactDefined(spec) | ContactEvent::ContactUpdated(spec) => {
                            batch.clear_attributes(&account, &contact);
                            spec.attributes.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
                        }
                        ContactEvent::ContactAttributeSet(set) => vec![(set.name.as_str(), set.value.as_str())],
                        ContactEvent::ContactErased(_) => {
                            batch.clear_attributes(&account, &contact);
                            batch.put(&CONTACTS_ERASED, vec![text(account.clone()), text(contact.clone()), time(at)]);
                            Vec::new()
                        }
                    };
                    for (name, value) in sets {
                        let key = vec![text(account.clone()), text(contact.clone()), text(name)];
                        if value.is_empty() {
                            batch.delete(&CONTACT_ATTRIBUTES, key);
                            continue;
                        }
                        let value = self.shown(&account, value, keys).await?;
                        let mut row = key;
                        row.extend([text(value), time(at)]);
                        batch.put(&CONTACT_ATTRIBUTES, row);
                    }
                }
            }
            StreamRef::Conversation(id) => {
                let id = id.to_string();
                let key = (account.clone(), id.clone());
                let mut conv = self.contexts.remove(&key).unwrap_or_default();
                for e in &commit.events {
                    let Event::Conversation(event) = &e.event else { continue };
                    conversation_event(batch, &account, &id, &mut conv, e.seq as i64, at, event);
                }
                batch.touched.insert(key.clone());
                self.contexts.insert(key, conv);
            }
        }
        Ok(())
    }

    /// A contact attribute's value as the projection writes it: opened (or
    /// `[erased]`), masked by the account's redaction rules.
    async fn shown(&self, account: &str, value: &str, keys: Option<&Keyring>) -> Result<String, SqlError> {
        let opened = match keys {
            Some(keys) => keys.open_text(value).await?,
            None => value.to_owned(),
        };
        let mut holder = serde_json::json!({ "value": opened });
        if let Some(rules) = self.accounts.get(account) {
            rules.apply(&mut holder);
        }
        Ok(holder["value"].as_str().unwrap_or_default().to_owned())
    }
}

/// Folds one conversation event into the batch and the conversation's row.
#[allow(clippy::too_many_arguments)]
fn conversation_event(
    batch: &mut Batch,
    account: &str,
    id: &str,
    conv: &mut Conv,
    seq: i64,
    at: Timestamp,
    event: &ConversationEvent,
) {
    let head = |seq: i64| vec![text(account), text(id), int(seq), time(at)];
    match event {
        ConversationEvent::ConversationOpened(o) => {
            *conv = Conv {
                contact: Some(o.contact.to_string()),
                channel: Some(o.channel.to_string()),
                client: Some(o.client.to_string()),
                campaign: Some(o.campaign.to_string()),
                project: Some(o.project.to_string()),
                direction: Some(name_of(&o.direction)),
                opened_at: Some(at.to_datetime()),
                out_of_hours: Some(o.out_of_hours),
                ..Conv::default()
            };
        }
        ConversationEvent::AgentAssigned { agent, segment } => {
            conv.agent = Some(agent.to_string());
            conv.segment = Some(i64::from(*segment));
            let row = vec![
                text(account),
                text(id),
                int(i64::from(*segment)),
                text(agent.to_string()),
                opt(conv.campaign.as_deref()),
                time(at),
                Cell::Time(None),
                Cell::Text(None),
            ];
            batch.put(&SEGMENTS, row);
        }
        ConversationEvent::ConversationTransferred { from_agent, segment, typification, to } => {
            end_segment(batch, account, id, conv, at, "transfer");
            let (kind, value) = match to {
                Destination::Agent(agent) => ("agent", agent.to_string()),
                Destination::Campaign(change) => ("campaign", change.campaign.to_string()),
                Destination::Team(team) => ("team", team.to_string()),
            };
            let mut row = head(seq);
            row.extend([
                opt(from_agent.as_ref().map(|a| a.as_str())),
                int(i64::from(*segment)),
                text(typification.to_string()),
                text(kind),
                text(value),
                opt(conv.campaign.as_deref()),
                opt(conv.client.as_deref()),
            ]);
            batch.put(&TRANSFERS, row);
            conv.transfers += 1;
            conv.agent = None;
            match to {
                Destination::Campaign(change) => {
                    conv.campaign = Some(change.campaign.to_string());
                    conv.client = Some(change.client.to_string());
                    conv.project = Some(change.project.to_string());
                    conv.team = None;
                }
                Destination::Team(team) => conv.team = Some(team.to_string()),
                Destination::Agent(_) => {}
            }
        }
        ConversationEvent::SlaThresholdCrossed { threshold, wait_started_at } => {
            let mut row = head(seq);
            row.extend([
                text(name_of(threshold)),
                time(*wait_started_at),
                opt(conv.agent.as_deref()),
                opt(conv.client.as_deref()),
                opt(conv.campaign.as_deref()),
                opt(conv.channel.as_deref()),
                opt(conv.team.as_deref()),
            ]);
            batch.put(&SLA_CROSSINGS, row);
        }
        ConversationEvent::ResponseRecorded { agent, wait_started_at, response_secs, class, first } => {
            let secs = i64::try_from(*response_secs).unwrap_or(i64::MAX);
            let mut row = head(seq);
            row.extend([
                time(*wait_started_at),
                int(secs),
                Cell::Bool(Some(*first)),
                text(name_of(class)),
                Cell::Bool(Some(conv.business_hours)),
                text(agent.to_string()),
                opt(conv.client.as_deref()),
                opt(conv.campaign.as_deref()),
                opt(conv.channel.as_deref()),
                opt(conv.team.as_deref()),
            ]);
            batch.put(&RESPONSES, row);
            conv.responses += 1;
            if *first {
                conv.first_response_secs = Some(secs);
            }
        }
        ConversationEvent::ConversationClosed { reason, typification, agent, .. } => {
            end_segment(batch, account, id, conv, at, "closure");
            // Whole seconds rounded up, as the reports count them.
            let opened = conv.opened_at.map_or(at, |t| Timestamp::from_datetime(&t));
            let handled = i64::try_from(at.secs_since_rounded_up(opened)).unwrap_or(i64::MAX);
            let agent = agent.as_ref().map(ToString::to_string).or_else(|| conv.agent.clone());
            let mut row = head(seq);
            row.extend([
                text(name_of(reason)),
                opt(typification.as_ref().map(|t| t.as_str())),
                opt(agent.as_deref()),
                opt(conv.client.as_deref()),
                opt(conv.campaign.as_deref()),
                opt(conv.channel.as_deref()),
                opt(conv.team.as_deref()),
                int(handled),
            ]);
            batch.put(&CLOSURES, row);
            conv.closed_at = Some(at.to_datetime());
            conv.close_reason = Some(name_of(reason));
            conv.typification = typification.as_ref().map(ToString::to_string);
            conv.handle_secs = Some(handled);
        }
        ConversationEvent::SlaClockSet { mode, .. } => {
            conv.business_hours = *mode == convo_domain::config::SlaMode::BusinessHours;
        }
        ConversationEvent::SurveyAnswered { rating, solved } => {
            let mut row = head(seq);
            row.extend([
                int(i64::from(*rating)),
                Cell::Bool(Some(*solved)),
                opt(conv.agent.as_deref()),
                opt(conv.client.as_deref()),
                opt(conv.campaign.as_deref()),
                opt(conv.channel.as_deref()),
            ]);
            batch.put(&CSAT, row);
            conv.survey_rating = Some(i64::from(*rating));
            conv.survey_solved = Some(*solved);
        }
        ConversationEvent::LabelAdded { label } => {
            batch.put(&LABELS, vec![text(account), text(id), text(label.clone()), time(at)]);
        }
        ConversationEvent::LabelRemoved { label } => {
            batch.delete(&LABELS, vec![text(account), text(id), text(label.clone())]);
        }
        _ => {}
    }
}

/// The agent's segment (if one is open) ends.
fn end_segment(batch: &mut Batch, account: &str, id: &str, conv: &Conv, at: Timestamp, by: &str) {
    if let (Some(segment), Some(_)) = (conv.segment, conv.agent.as_ref()) {
        let row = vec![
            text(account),
            text(id),
            int(segment),
            Cell::Text(None),
            Cell::Text(None),
            Cell::Time(None),
            time(at),
            text(by),
        ];
        batch.put(&SEGMENTS, row);
    }
}

/// An enum's name as its JSON view spells it (`optimal`, `auto_resolve`).
fn name_of(value: &impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

fn conv_row(account: &str, id: &str, c: &Conv) -> Vec<Cell> {
    vec![
        text(account),
        text(id),
        opt(c.contact.as_deref()),
        opt(c.channel.as_deref()),
        opt(c.client.as_deref()),
        opt(c.campaign.as_deref()),
        opt(c.project.as_deref()),
        opt(c.direction.as_deref()),
        Cell::Time(c.opened_at),
        Cell::Bool(c.out_of_hours),
        opt(c.agent.as_deref()),
        Cell::Int(c.segment),
        opt(c.team.as_deref()),
        Cell::Bool(Some(c.business_hours)),
        int(c.transfers),
        int(c.responses),
        Cell::Int(c.first_response_secs),
        Cell::Time(c.closed_at),
        opt(c.close_reason.as_deref()),
        opt(c.typification.as_deref()),
        Cell::Int(c.handle_secs),
        Cell::Int(c.survey_rating),
        Cell::Bool(c.survey_solved),
    ]
}

/// Folds the whole stream into `<schema>_rebuild`, swaps it in for
/// `<schema>` in one transaction (readers see the old one until then), and
/// brings it up to the stream's end.
pub async fn rebuild<S: EventStore>(
    target: &Target,
    store: &S,
    keys: Option<&Keyring>,
    on_progress: &mut (dyn FnMut(u64, u64) + Send),
) -> Result<RunStats, SqlError> {
    let fresh = format!("{}_rebuild", target.schema);
    let client = target.connect().await?;
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {fresh} CASCADE")).await?;
    let mut sql = Sql::open(client, &fresh).await?;
    let mut stats = sql.catch_up(store, keys, REBUILD_BATCH_COMMITS_MAX, None, on_progress).await?;
    let s = &target.schema;
    let tx = sql.client.transaction().await?;
    let exists: bool =
        tx.query_one("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", &[s]).await?.get(0);
    if exists {
        // Waits for a follower's transaction in hand; its next one finds the new schema.
        tx.batch_execute(&format!("LOCK TABLE {s}.checkpoint IN ACCESS EXCLUSIVE MODE; DROP SCHEMA {s} CASCADE"))
            .await?;
    }
    tx.batch_execute(&format!("ALTER SCHEMA {fresh} RENAME TO {s}")).await?;
    tx.commit().await?;
    sql.schema = s.clone();
    let after = sql.catch_up(store, keys, BATCH_COMMITS_MAX, None, on_progress).await?;
    stats.commits += after.commits;
    stats.batches += after.batches;
    stats.dead_letters += after.dead_letters;
    stats.rows += after.rows;
    stats.checkpoint = after.checkpoint;
    Ok(stats)
}

/// Keeps the projection current inside `convo serve` (on `opened`, the
/// connection the settings were checked with, if given): folds whenever `ends`
/// (the stream's last sequence) moves past the checkpoint, until `stop`;
/// connects again after a failure (saying so, every [`RETRY_AFTER`]). The
/// returned position is the checkpoint, for `/metrics`.
pub fn follow<S>(
    target: Target,
    opened: Option<Sql>,
    store: S,
    keys: Option<Arc<Keyring>>,
    mut ends: watch::Receiver<u64>,
    stop: CancellationToken,
) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>)
where
    S: EventStore + Send + Sync + 'static,
{
    let position = Arc::new(AtomicU64::new(0));
    let at = position.clone();
    let task = tokio::spawn(async move {
        let mut failing = false;
        // The connection `serve` opened to check the settings serves first; after a failure, a new one.
        let mut opened = opened;
        loop {
            let ran = async {
                let mut sql = match opened.take() {
                    Some(sql) => sql,
                    None => target.open().await?,
                };
                at.store(sql.checkpoint().await?, Ordering::Relaxed);
                loop {
                    let now = at.load(Ordering::Relaxed);
                    if ends.wait_for(|end| *end > now).await.is_err() {
                        return Ok::<(), SqlError>(()); // the watcher is gone: serve is stopping
                    }
                    let mut progress = |to: u64, _| at.store(to, Ordering::Relaxed);
                    let stats =
                        sql.catch_up(&store, keys.as_deref(), target.batch_commits, None, &mut progress).await?;
                    at.store(stats.checkpoint, Ordering::Relaxed);
                    if failing {
                        tracing::info!(
                            projection = NAME,
                            "the {NAME} projection follows the stream again, at {}",
                            stats.checkpoint
                        );
                        failing = false;
                    }
                    if stats.dead_letters > 0 {
                        tracing::error!(
                            projection = NAME,
                            dead_letters = stats.dead_letters,
                            "the {NAME} projection put {} commits aside (see its dead_letters table)",
                            stats.dead_letters
                        );
                    }
                }
            };
            let outcome = tokio::select! {
                _ = stop.cancelled() => return,
                outcome = ran => outcome,
            };
            match outcome {
                Ok(()) => return,
                Err(e @ SqlError::Moved { .. }) => tracing::info!(projection = NAME, "{e}"),
                Err(e) => {
                    failing = true;
                    tracing::warn!(
                        projection = NAME,
                        "the {NAME} projection ({target}) cannot follow the stream now: {e}; retrying"
                    );
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(RETRY_AFTER) => {}
            }
        }
    });
    (position, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_would_open_a_door_are_refused() {
        let refused = |url: &str| Target::new(url, None, "convo").unwrap_err().to_string();
        assert!(refused("postgres://report:secret@127.0.0.1/db").contains("--postgres-password-file"));
        assert!(!refused("postgres://report:secret@127.0.0.1/db").contains("secret"));
        assert!(refused("postgres://report@db.example.com/db").contains("without TLS"));
        assert!(refused("postgres://127.0.0.1/db").contains("names no user"));
        assert!(refused("mysql://x").contains("not a PostgreSQL URL"));
        assert!(Target::new("postgres://report@127.0.0.1:5432/db", None, "convo").is_ok());
        assert!(Target::new("postgres://report@localhost/db", None, "reports_2026").is_ok());
        assert!(Target::new("postgres://report@[::1]/db", None, "convo").is_ok());
        for bad in ["", "Convo", "convo;drop", "1convo", &"x".repeat(SCHEMA_NAME_BYTES_MAX + 1)] {
            let e = Target::new("postgres://report@127.0.0.1/db", None, bad).unwrap_err().to_string();
            assert!(e.contains("--postgres-schema"), "{bad}: {e}");
        }
    }

    #[test]
    fn statements_name_every_column_once() {
        let sql = upsert_sql("convo", &SEGMENTS);
        assert!(sql.contains(
            "ON CONFLICT (account, conversation, segment) DO UPDATE SET agent = coalesce(EXCLUDED.agent, t.agent)"
        ));
        assert!(upsert_sql("convo", &RESPONSES).ends_with("$14::text[])"), "{}", upsert_sql("convo", &RESPONSES));
        assert!(delete_sql("convo", &LABELS).contains("t.label = d.label"));
        let mut batch = Batch::default();
        let start = vec![
            text("a"),
            text("c"),
            int(1),
            text("ana"),
            text("x"),
            Cell::Time(Some(Utc::now())),
            Cell::Time(None),
            Cell::Text(None),
        ];
        batch.put(&SEGMENTS, start.clone());
        let end = vec![
            text("a"),
            text("c"),
            int(1),
            Cell::Text(None),
            Cell::Text(None),
            Cell::Time(None),
            Cell::Time(Some(Utc::now())),
            text("closure"),
        ];
        batch.put(&SEGMENTS, end);
        let merged = &batch.tables["segments"].rows[&start[..3].to_vec()];
        assert_eq!(merged[3], text("ana"));
        assert_eq!(merged[7], text("closure"));
    }
}
