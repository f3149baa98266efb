//! # convo-reports
//!
//! The reports read model (SPEC §8): for each account, client, campaign,
//! agent and channel, per hour and per day (UTC), counters of conversations
//! opened and closed, closures by reason and typification, SLA classes,
//! transfers, out-of-hours arrivals, and sums and fixed-bucket histograms of
//! first response time, response time and handle time, plus CSAT. Buckets are
//! fixed, so percentiles are the same on every run and every rebuild.
//!
//! Layout: `c/<account>/<dimension>/<value>/<period>/<bucket>/<metric>` holds
//! a counter (u64, big-endian); `x/<account>/<conversation>` the context later
//! events need (client, campaign, channel, agent, opening time).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use convo_domain::conversation::{CloseReason, Destination, SlaClass};
use convo_domain::{ConversationEvent, Timestamp};
use convo_projector::{Projection, Staged, json_bytes};
use convo_store::StoredCommit;
use convo_wire::{Event, StreamRef};

pub const NAME: &str = "reports";

/// Upper bounds (seconds) of the time histograms' buckets; the last is open.
pub const TIME_BUCKETS_SECS: [u64; 19] =
    [5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240, 300, 450, 600, 900, 1200, 1800, 3600, 7200];

/// The breakdowns a report can be by.
pub const DIMENSIONS: [&str; 5] = ["account", "client", "campaign", "agent", "channel"];

fn bucket_of(secs: u64) -> usize {
    TIME_BUCKETS_SECS.iter().position(|b| secs <= *b).unwrap_or(TIME_BUCKETS_SECS.len())
}

fn periods(at: Timestamp) -> [(&'static str, String); 2] {
    let text = at.to_rfc3339();
    [("hour", text[..13].to_owned()), ("day", text[..10].to_owned())]
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Ctx {
    client: String,
    campaign: String,
    channel: String,
    agent: Option<String>,
    opened_at: i64,
}

impl Ctx {
    fn to_json(&self) -> Value {
        json!({"client": self.client, "campaign": self.campaign, "channel": self.channel, "agent": self.agent, "opened_at": self.opened_at})
    }

    fn from_json(v: &Value) -> Self {
        let s = |k: &str| v[k].as_str().unwrap_or("").to_owned();
        Self {
            client: s("client"),
            campaign: s("campaign"),
            channel: s("channel"),
            agent: v["agent"].as_str().map(str::to_owned),
            opened_at: v["opened_at"].as_i64().unwrap_or(0),
        }
    }

    /// The (dimension, value) pairs a conversation's events count under.
    fn dims(&self, account: &str, agent: Option<&str>) -> Vec<(&'static str, String)> {
        let mut d = vec![
            ("account", account.to_owned()),
            ("client", self.client.clone()),
            ("campaign", self.campaign.clone()),
            ("channel", self.channel.clone()),
        ];
        if let Some(agent) = agent.or(self.agent.as_deref()) {
            d.push(("agent", agent.to_owned()));
        }
        d
    }
}

/// The reports projection.
#[derive(Debug, Default, Clone, Copy)]
pub struct Reports;

fn add(staged: &mut Staged<'_>, key: String, by: u64) -> Result<(), String> {
    let key = key.into_bytes();
    let now = staged.get(&key)?.and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok()).map_or(0, u64::from_be_bytes);
    staged.insert(key, (now + by).to_be_bytes().to_vec());
    Ok(())
}

fn count(
    staged: &mut Staged<'_>,
    account: &str,
    dims: &[(&'static str, String)],
    at: Timestamp,
    metric: &str,
    by: u64,
) -> Result<(), String> {
    for (dim, value) in dims {
        for (period, bucket) in periods(at) {
            add(staged, format!("c/{account}/{dim}/{value}/{period}/{bucket}/{metric}"), by)?;
        }
    }
    Ok(())
}

fn time(
    staged: &mut Staged<'_>,
    account: &str,
    dims: &[(&'static str, String)],
    at: Timestamp,
    name: &str,
    secs: u64,
) -> Result<(), String> {
    count(staged, account, dims, at, &format!("{name}_n"), 1)?;
    count(staged, account, dims, at, &format!("{name}_sum"), secs)?;
    count(staged, account, dims, at, &format!("{name}_b{:02}", bucket_of(secs)), 1)
}

impl Projection for Reports {
    fn name(&self) -> &'static str {
        NAME
    }

    fn apply(&mut self, staged: &mut Staged<'_>, stored: &StoredCommit) -> Result<(), String> {
        let StreamRef::Conversation(id) = &stored.commit.stream else { return Ok(()) };
        let account = stored.commit.account.as_str();
        let at = stored.commit.at;
        let ctx_key = format!("x/{account}/{id}").into_bytes();
        let mut ctx = match staged.get(&ctx_key)? {
            Some(bytes) => Ctx::from_json(&serde_json::from_slice(&bytes).map_err(|e| e.to_string())?),
            None => Ctx::default(),
        };
        for e in &stored.commit.events {
            let Event::Conversation(event) = &e.event else { continue };
            match event {
                ConversationEvent::ConversationOpened(o) => {
                    ctx = Ctx {
                        client: o.client.to_string(),
                        campaign: o.campaign.to_string(),
                        channel: o.channel.to_string(),
                        agent: None,
                        opened_at: at.millis(),
                    };
                    let dims = ctx.dims(account, None);
                    count(staged, account, &dims, at, "opened", 1)?;
                    if o.out_of_hours {
                        count(staged, account, &dims, at, "out_of_hours", 1)?;
                    }
                }
                ConversationEvent::AgentAssigned { agent, .. } => ctx.agent = Some(agent.to_string()),
                ConversationEvent::ConversationTransferred { to, .. } => {
                    count(staged, account, &ctx.dims(account, None), at, "transfers", 1)?;
                    ctx.agent = None;
                    if let Destination::Campaign(change) = to {
                        ctx.campaign = change.campaign.to_string();
                        ctx.client = change.client.to_string();
                    }
                }
                ConversationEvent::ResponseRecorded { agent, response_secs, class, first, .. } => {
                    let dims = ctx.dims(account, Some(agent.as_str()));
                    let class = match class {
                        SlaClass::Optimal => "sla_optimal",
                        SlaClass::Low => "sla_low",
                        SlaClass::Breached => "sla_breached",
                    };
                    count(staged, account, &dims, at, class, 1)?;
                    time(staged, account, &dims, at, "rt", *response_secs)?;
                    if *first {
                        time(staged, account, &dims, at, "frt", *response_secs)?;
                    }
                }
                ConversationEvent::ConversationClosed { reason, typification, .. } => {
                    let dims = ctx.dims(account, None);
                    count(staged, account, &dims, at, "closed", 1)?;
                    let reason = match reason {
                        CloseReason::Resolved => "resolved",
                        CloseReason::System => "system",
                        CloseReason::Inactivity => "inactivity",
                        CloseReason::AutoResolve => "auto_resolve",
                        CloseReason::OutOfHours => "out_of_hours",
                    };
                    count(staged, account, &dims, at, &format!("reason:{reason}"), 1)?;
                    if let Some(t) = typification {
                        count(staged, account, &dims, at, &format!("typ:{t}"), 1)?;
                    }
                    let handled = at.secs_since(Timestamp::from_millis(ctx.opened_at));
                    time(staged, account, &dims, at, "ht", handled)?;
                }
                ConversationEvent::SurveyAnswered { rating, solved } => {
                    let dims = ctx.dims(account, None);
                    count(staged, account, &dims, at, "csat_n", 1)?;
                    count(staged, account, &dims, at, "csat_sum", u64::from(*rating))?;
                    count(staged, account, &dims, at, "solved", u64::from(*solved))?;
                }
                _ => {}
            }
        }
        staged.insert(ctx_key, json_bytes(&ctx.to_json()));
        Ok(())
    }
}

/// One row of a report: a dimension value in one period bucket, with its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub value: String,
    pub bucket: String,
    pub counters: BTreeMap<String, u64>,
}

/// The rows of `account` by `dimension` and `period`, within [from, to]
/// (bucket labels compared as text: `2026-03-02` or `2026-03-02T14`).
pub fn rows(
    tree: &sled::Tree,
    account: &str,
    dimension: &str,
    period: &str,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<Vec<Row>, sled::Error> {
    let prefix = format!("c/{account}/{dimension}/");
    let mut rows: BTreeMap<(String, String), BTreeMap<String, u64>> = BTreeMap::new();
    for item in tree.scan_prefix(prefix.as_bytes()) {
        let (k, v) = item?;
        let key = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
        let mut parts = key.splitn(4, '/');
        let (Some(value), Some(p), Some(bucket), Some(metric)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let cut = |t: &str| t.get(..bucket.len()).unwrap_or(t).to_owned();
        if p != period || from.is_some_and(|f| bucket < cut(f).as_str()) || to.is_some_and(|t| bucket > cut(t).as_str())
        {
            continue;
        }
        let n = <[u8; 8]>::try_from(v.as_ref()).map_or(0, u64::from_be_bytes);
        rows.entry((value.to_owned(), bucket.to_owned())).or_default().insert(metric.to_owned(), n);
    }
    Ok(rows.into_iter().map(|((value, bucket), counters)| Row { value, bucket, counters }).collect())
}

/// The p-th percentile (0-100) from a histogram: the upper bound of the bucket
/// it falls in (`None` without data; the open bucket reports its lower bound).
pub fn percentile(counters: &BTreeMap<String, u64>, name: &str, p: u64) -> Option<u64> {
    let n = *counters.get(&format!("{name}_n"))?;
    if n == 0 {
        return None;
    }
    let rank = (n * p).div_ceil(100).max(1);
    let mut seen = 0;
    for i in 0..=TIME_BUCKETS_SECS.len() {
        seen += counters.get(&format!("{name}_b{i:02}")).copied().unwrap_or(0);
        if seen >= rank {
            return Some(TIME_BUCKETS_SECS.get(i).copied().unwrap_or(TIME_BUCKETS_SECS[TIME_BUCKETS_SECS.len() - 1]));
        }
    }
    None
}

/// The mean of a timed metric, in whole seconds.
pub fn mean(counters: &BTreeMap<String, u64>, name: &str) -> Option<u64> {
    let n = *counters.get(&format!("{name}_n")).filter(|n| **n > 0)?;
    Some(counters.get(&format!("{name}_sum")).copied().unwrap_or(0) / n)
}

/// A row as the JSON a report prints: counters plus derived figures.
pub fn row_json(dimension: &str, row: &Row) -> Value {
    let c = &row.counters;
    let get = |k: &str| c.get(k).copied().unwrap_or(0);
    let responses = get("sla_optimal") + get("sla_low") + get("sla_breached");
    let pct = |k: &str| {
        if responses == 0 { Value::Null } else { json!((get(k) as f64 * 1000.0 / responses as f64).round() / 10.0) }
    };
    let mut out = json!({
        dimension: row.value, "bucket": row.bucket,
        "opened": get("opened"), "closed": get("closed"), "out_of_hours": get("out_of_hours"), "transfers": get("transfers"),
        "sla_optimal": get("sla_optimal"), "sla_low": get("sla_low"), "sla_breached": get("sla_breached"),
        "sla_optimal_pct": pct("sla_optimal"), "sla_low_pct": pct("sla_low"), "sla_breached_pct": pct("sla_breached"),
        "inactivity_closures": get("reason:inactivity"),
        "frt_count": get("frt_n"), "frt_mean_secs": mean(c, "frt"), "frt_p50_secs": percentile(c, "frt", 50), "frt_p90_secs": percentile(c, "frt", 90),
        "rt_count": get("rt_n"), "rt_mean_secs": mean(c, "rt"), "rt_p50_secs": percentile(c, "rt", 50), "rt_p90_secs": percentile(c, "rt", 90),
        "handle_mean_secs": mean(c, "ht"),
        "csat_answers": get("csat_n"),
        "csat_mean": if get("csat_n") == 0 { Value::Null } else { json!((get("csat_sum") as f64 * 100.0 / get("csat_n") as f64).round() / 100.0) },
    });
    let closures: BTreeMap<&str, u64> = c.iter().filter_map(|(k, v)| k.strip_prefix("typ:").map(|t| (t, *v))).collect();
    let reasons: BTreeMap<&str, u64> =
        c.iter().filter_map(|(k, v)| k.strip_prefix("reason:").map(|t| (t, *v))).collect();
    out["closures_by_typification"] = json!(closures);
    out["closures_by_reason"] = json!(reasons);
    out
}

/// Every report row of every account, dimension and period, as JSON lines
/// (the export a rebuild is compared with).
pub fn export_all(tree: &sled::Tree) -> Result<Vec<Value>, sled::Error> {
    let mut accounts = std::collections::BTreeSet::new();
    for item in tree.scan_prefix(b"c/") {
        let (k, _) = item?;
        if let Some(account) = String::from_utf8_lossy(&k).split('/').nth(1) {
            accounts.insert(account.to_owned());
        }
    }
    let mut out = Vec::new();
    for account in accounts {
        for dimension in DIMENSIONS {
            for period in ["hour", "day"] {
                for row in rows(tree, &account, dimension, period, None, None)? {
                    let mut line = json!({"account": account, "dimension": dimension, "period": period});
                    if let (Value::Object(target), Value::Object(fields)) = (&mut line, row_json(dimension, &row)) {
                        target.extend(fields);
                    }
                    out.push(line);
                }
            }
        }
    }
    Ok(out)
}
