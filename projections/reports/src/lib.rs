//! # convo-reports
//!
//! The reports read model (SPEC §8): for each account, client, campaign,
//! agent, channel and team, per hour and per day (kept in UTC, read in the
//! account's time zone: [`rows_in`]), counters of conversations
//! opened and closed, closures by reason and typification, SLA classes,
//! transfers, out-of-hours arrivals, and sums and histograms of first
//! response time, response time and handle time, plus CSAT. The histograms
//! keep every whole second below 1000 s and three significant digits above
//! ([`value_bucket`]), so a percentile is the nearest-rank value itself below
//! 1000 s and within 1% of it above — the same on every run and rebuild.
//!
//! Layout ([`LAYOUT`] 2): `r/<account>/<dimension>/<value>/<period>/<bucket>`
//! holds a row, every counter of that value in that bucket
//! ([`encode_counters`]), merged once per batch; `x/<account>/<conversation>`
//! the context later events need (client, campaign, channel, agent, opening
//! time); `z/<account>` the account's time zone. (Layout 1 kept one key per
//! counter, `c/…/<metric>`: 0.74 keys per event, as large as the stream.)

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};

use convo_domain::config::ConfigEvent;
use convo_domain::conversation::{CloseReason, Destination, SlaClass};
use convo_domain::schedule::Zone;
use convo_domain::{ConversationEvent, Timestamp};
use convo_projector::{Projection, Staged, json_bytes};
use convo_store::StoredCommit;
use convo_wire::{Event, StreamRef};

pub const NAME: &str = "reports";

/// The histograms keep whole seconds exactly below this; above, three significant digits.
pub const EXACT_BELOW_SECS: u64 = 1000;

/// The breakdowns a report can be by.
pub const DIMENSIONS: [&str; 6] = ["account", "client", "campaign", "agent", "channel", "team"];

/// The histogram bucket of a time: the time itself below
/// [`EXACT_BELOW_SECS`], else rounded down to three significant digits (a
/// bucket is at most 1% of its lower bound wide).
pub fn value_bucket(secs: u64) -> u64 {
    if secs < EXACT_BELOW_SECS {
        return secs;
    }
    let mut unit = 1;
    while secs / unit >= 1000 {
        unit *= 10;
    }
    secs / unit * unit
}

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// A name interned for the projection's run (accounts, dimension values,
/// typifications): counters are keyed by numbers, and named when written.
type NameId = u32;

#[derive(Debug, Default, Clone)]
struct Names {
    ids: HashMap<String, NameId>,
    names: Vec<String>,
}

impl Names {
    fn id(&mut self, name: &str) -> NameId {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = self.names.len() as NameId;
        self.names.push(name.to_owned());
        self.ids.insert(name.to_owned(), id);
        id
    }

    fn name(&self, id: NameId) -> &str {
        &self.names[id as usize]
    }
}

/// What a counter counts (its key's last segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Metric {
    Fixed(&'static str),
    /// `<name>_v<bucket:020>`: a histogram bucket of a timed metric.
    Histogram(&'static str, u64),
    /// `typ:<typification>`.
    Typification(NameId),
}

/// The read model's layout: a tree of another layout is folded again from
/// the start ([`convo_projector::Projection::layout`]).
pub const LAYOUT: u32 = 2;

/// A row: one dimension value in one period bucket, the bucket as its
/// number of hours or days since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct RowId {
    account: NameId,
    dimension: u8,
    value: NameId,
    hourly: bool,
    bucket: i64,
}

impl RowId {
    /// `r/<account>/<dimension>/<value>/<period>/<bucket>`.
    fn text(&self, names: &Names) -> String {
        let (period, start, cut) =
            if self.hourly { ("hour", self.bucket * HOUR_MS, 13) } else { ("day", self.bucket * DAY_MS, 10) };
        let bucket = Timestamp::from_millis(start).to_rfc3339();
        format!(
            "r/{}/{}/{}/{period}/{}",
            names.name(self.account),
            DIMENSIONS[self.dimension as usize],
            names.name(self.value),
            &bucket[..cut]
        )
    }
}

/// A row's counters changed by a batch: the fixed metrics in a short list
/// (a linear search over at most a few dozen names), histogram buckets and
/// typifications hashed.
#[derive(Debug, Clone, Default)]
struct RowCounts {
    fixed: Vec<(&'static str, u64)>,
    other: HashMap<Metric, u64, BuildFx>,
}

impl RowCounts {
    fn add(&mut self, metric: Metric, by: u64) {
        match metric {
            Metric::Fixed(name) => match self.fixed.iter_mut().find(|(n, _)| *n == name) {
                Some((_, n)) => *n += by,
                None => self.fixed.push((name, by)),
            },
            other => *self.other.entry(other).or_default() += by,
        }
    }
}

impl Metric {
    fn text(&self, names: &Names) -> String {
        match *self {
            Metric::Fixed(name) => name.to_owned(),
            Metric::Histogram(name, value) => format!("{name}_v{value:020}"),
            Metric::Typification(id) => format!("typ:{}", names.name(id)),
        }
    }
}

/// The longest metric name a row holds (a typification id is at most this long with its prefix).
const METRIC_NAME_BYTES_MAX: usize = u16::MAX as usize;

/// A row's counters as bytes: for each, in name order, the name's length
/// (u16, big-endian), the name, and the count (u64, big-endian).
pub fn encode_counters(counters: &BTreeMap<String, u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(counters.len() * 24);
    for (name, n) in counters {
        let name = &name.as_bytes()[..name.len().min(METRIC_NAME_BYTES_MAX)];
        out.extend_from_slice(&(name.len() as u16).to_be_bytes());
        out.extend_from_slice(name);
        out.extend_from_slice(&n.to_be_bytes());
    }
    out
}

/// A row's counters from [`encode_counters`]' bytes (what is cut short is left out).
pub fn decode_counters(mut bytes: &[u8]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    while bytes.len() >= 2 {
        let len = u16::from_be_bytes([bytes[0], bytes[1]]) as usize;
        let Some((name, rest)) = bytes[2..].split_at_checked(len) else { break };
        let Some((n, rest)) = rest.split_first_chunk::<8>() else { break };
        out.insert(String::from_utf8_lossy(name).into_owned(), u64::from_be_bytes(*n));
        bytes = rest;
    }
    out
}

/// The (dimension, value) pairs an event counts under: at most one per dimension.
#[derive(Debug, Clone, Copy, Default)]
struct Dims {
    pairs: [(u8, NameId); DIMENSIONS.len()],
    len: usize,
}

impl Dims {
    fn same(&self, other: &Dims) -> bool {
        self.pairs[..self.len] == other.pairs[..other.len]
    }
}

/// One commit's counter changes, merged into the batch's when the commit is
/// taken whole: each run of metrics counted under the same dimensions is
/// kept together, so a row is looked up once per run, not once per metric.
struct Counts {
    account: NameId,
    hour: i64,
    day: i64,
    runs: Vec<(Dims, Vec<(Metric, u64)>)>,
}

impl Counts {
    fn new(account: NameId, at: Timestamp) -> Self {
        let ms = at.millis();
        Self { account, hour: ms.div_euclid(HOUR_MS), day: ms.div_euclid(DAY_MS), runs: Vec::new() }
    }

    fn count(&mut self, dims: &Dims, metric: Metric, by: u64) {
        match self.runs.last_mut() {
            Some((d, metrics)) if d.same(dims) => metrics.push((metric, by)),
            _ => self.runs.push((*dims, vec![(metric, by)])),
        }
    }

    /// A timed metric: its count, its sum and its histogram bucket.
    fn time(&mut self, dims: &Dims, (n, sum, name): (&'static str, &'static str, &'static str), secs: u64) {
        self.count(dims, Metric::Fixed(n), 1);
        self.count(dims, Metric::Fixed(sum), secs);
        self.count(dims, Metric::Histogram(name, value_bucket(secs)), 1);
    }

    /// Adds the commit's changes to the batch's rows.
    fn merge_into(self, rows: &mut HashMap<RowId, RowCounts, BuildFx>) {
        for (dims, metrics) in self.runs {
            for &(dimension, value) in &dims.pairs[..dims.len] {
                for (hourly, bucket) in [(true, self.hour), (false, self.day)] {
                    let row =
                        rows.entry(RowId { account: self.account, dimension, value, hourly, bucket }).or_default();
                    for &(metric, by) in &metrics {
                        row.add(metric, by);
                    }
                }
            }
        }
    }
}

const RT: (&str, &str, &str) = ("rt_n", "rt_sum", "rt");
const FRT: (&str, &str, &str) = ("frt_n", "frt_sum", "frt");
const HT: (&str, &str, &str) = ("ht_n", "ht_sum", "ht");

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Ctx {
    client: String,
    campaign: String,
    channel: String,
    agent: Option<String>,
    opened_at: i64,
    /// Set while the conversation's SLA counts business hours.
    business_hours: bool,
    /// The team it was routed or transferred to, if any.
    team: Option<String>,
}

impl Ctx {
    fn to_json(&self) -> Value {
        json!({"client": self.client, "campaign": self.campaign, "channel": self.channel, "agent": self.agent, "opened_at": self.opened_at, "business_hours": self.business_hours, "team": self.team})
    }

    fn from_json(v: &Value) -> Self {
        let s = |k: &str| v[k].as_str().unwrap_or("").to_owned();
        Self {
            client: s("client"),
            campaign: s("campaign"),
            channel: s("channel"),
            agent: v["agent"].as_str().map(str::to_owned),
            opened_at: v["opened_at"].as_i64().unwrap_or(0),
            business_hours: v["business_hours"].as_bool().unwrap_or(false),
            team: v["team"].as_str().map(str::to_owned),
        }
    }

    /// The (dimension, value) pairs a conversation's events count under.
    fn dims(&self, names: &mut Names, account: &str, agent: Option<&str>) -> Dims {
        let mut dims = Dims::default();
        let values = [
            Some(account),
            Some(self.client.as_str()),
            Some(self.campaign.as_str()),
            agent.or(self.agent.as_deref()),
            Some(self.channel.as_str()),
            self.team.as_deref(),
        ];
        for (dimension, value) in values.into_iter().enumerate() {
            if let Some(value) = value {
                dims.pairs[dims.len] = (dimension as u8, names.id(value));
                dims.len += 1;
            }
        }
        dims
    }
}

/// The reports projection. Within a batch it keeps the counters' changes
/// (one merged delta per key) and each conversation's latest context in
/// memory, and writes them when the batch is written.
#[derive(Debug, Default, Clone)]
pub struct Reports {
    names: Names,
    rows: HashMap<RowId, RowCounts, BuildFx>,
    contexts: HashMap<Vec<u8>, Ctx>,
}

type BuildFx = std::hash::BuildHasherDefault<fxhash::FxHasher>;

impl Projection for Reports {
    fn name(&self) -> &'static str {
        NAME
    }

    fn layout(&self) -> u32 {
        LAYOUT
    }

    fn apply(&mut self, staged: &mut Staged<'_>, stored: &StoredCommit) -> Result<(), String> {
        if stored.commit.stream == StreamRef::Catalog {
            // The account's time zone: the reports' buckets by default.
            for e in &stored.commit.events {
                if let Event::Config(ConfigEvent::AccountConfigured(settings)) = &e.event {
                    let name = settings.time_zone.0.name().as_bytes().to_vec();
                    staged.insert(zone_key(stored.commit.account.as_str()), name);
                }
            }
            return Ok(());
        }
        let StreamRef::Conversation(id) = &stored.commit.stream else { return Ok(()) };
        let account = stored.commit.account.as_str();
        let at = stored.commit.at;
        let ctx_key = format!("x/{account}/{id}").into_bytes();
        // Taken out of the batch's contexts: nothing below can fail, so it goes back.
        let mut ctx = match self.contexts.remove(&ctx_key) {
            Some(ctx) => ctx,
            None => match staged.get(&ctx_key)? {
                Some(bytes) => Ctx::from_json(&serde_json::from_slice(&bytes).map_err(|e| e.to_string())?),
                None => Ctx::default(),
            },
        };
        let names = &mut self.names;
        let mut counts = Counts::new(names.id(account), at);
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
                        business_hours: false,
                        team: None,
                    };
                    let dims = ctx.dims(names, account, None);
                    counts.count(&dims, Metric::Fixed("opened"), 1);
                    if o.out_of_hours {
                        counts.count(&dims, Metric::Fixed("out_of_hours"), 1);
                    }
                }
                ConversationEvent::AgentAssigned { agent, .. } => ctx.agent = Some(agent.to_string()),
                ConversationEvent::ConversationTransferred { to, .. } => {
                    counts.count(&ctx.dims(names, account, None), Metric::Fixed("transfers"), 1);
                    ctx.agent = None;
                    match to {
                        Destination::Campaign(change) => {
                            ctx.campaign = change.campaign.to_string();
                            ctx.client = change.client.to_string();
                            ctx.team = None;
                        }
                        Destination::Team(team) => ctx.team = Some(team.to_string()),
                        Destination::Agent(_) => {}
                    }
                }
                ConversationEvent::ResponseRecorded { agent, response_secs, class, first, .. } => {
                    let dims = ctx.dims(names, account, Some(agent.as_str()));
                    let class = match class {
                        SlaClass::Optimal => "sla_optimal",
                        SlaClass::Low => "sla_low",
                        SlaClass::Breached => "sla_breached",
                    };
                    counts.count(&dims, Metric::Fixed(class), 1);
                    if ctx.business_hours {
                        counts.count(&dims, Metric::Fixed("sla_business_hours"), 1);
                    }
                    counts.time(&dims, RT, *response_secs);
                    if *first {
                        counts.time(&dims, FRT, *response_secs);
                    }
                }
                ConversationEvent::ConversationClosed { reason, typification, .. } => {
                    let dims = ctx.dims(names, account, None);
                    counts.count(&dims, Metric::Fixed("closed"), 1);
                    let reason = match reason {
                        CloseReason::Resolved => "reason:resolved",
                        CloseReason::System => "reason:system",
                        CloseReason::Inactivity => "reason:inactivity",
                        CloseReason::AutoResolve => "reason:auto_resolve",
                        CloseReason::OutOfHours => "reason:out_of_hours",
                    };
                    counts.count(&dims, Metric::Fixed(reason), 1);
                    if let Some(t) = typification {
                        counts.count(&dims, Metric::Typification(names.id(t.as_str())), 1);
                    }
                    let handled = at.secs_since_rounded_up(Timestamp::from_millis(ctx.opened_at));
                    counts.time(&dims, HT, handled);
                }
                ConversationEvent::SlaClockSet { mode, .. } => {
                    ctx.business_hours = *mode == convo_domain::config::SlaMode::BusinessHours;
                }
                ConversationEvent::SurveyAnswered { rating, solved } => {
                    let dims = ctx.dims(names, account, None);
                    counts.count(&dims, Metric::Fixed("csat_n"), 1);
                    counts.count(&dims, Metric::Fixed("csat_sum"), u64::from(*rating));
                    counts.count(&dims, Metric::Fixed("solved"), u64::from(*solved));
                }
                _ => {}
            }
        }
        // The commit is taken whole: its changes join the batch's.
        counts.merge_into(&mut self.rows);
        self.contexts.insert(ctx_key, ctx);
        Ok(())
    }

    fn flush(&mut self, staged: &mut Staged<'_>) -> Result<(), String> {
        // One read and one write per row the batch touched, every counter merged in.
        for (row, counts) in self.rows.drain() {
            let key = row.text(&self.names).into_bytes();
            let mut counters = staged.get(&key)?.map(|bytes| decode_counters(&bytes)).unwrap_or_default();
            for (name, by) in counts.fixed {
                match counters.get_mut(name) {
                    Some(n) => *n += by,
                    None => {
                        counters.insert(name.to_owned(), by);
                    }
                }
            }
            for (metric, by) in counts.other {
                *counters.entry(metric.text(&self.names)).or_default() += by;
            }
            staged.insert(key, encode_counters(&counters));
        }
        for (key, ctx) in self.contexts.drain() {
            staged.insert(key, json_bytes(&ctx.to_json()));
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.rows.clear();
        self.contexts.clear();
        self.names = Names::default();
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
    let prefix = format!("r/{account}/{dimension}/");
    let mut rows = Vec::new();
    for item in tree.scan_prefix(prefix.as_bytes()) {
        let (k, v) = item?;
        let key = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
        let mut parts = key.splitn(3, '/');
        let (Some(value), Some(p), Some(bucket)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if p != period || !within(bucket, from, to) {
            continue;
        }
        rows.push(Row { value: value.to_owned(), bucket: bucket.to_owned(), counters: decode_counters(&v) });
    }
    // By value, then bucket (key order differs where a value is another's prefix: `a-b/` sorts before `a/`).
    rows.sort_by(|a, b| (&a.value, &a.bucket).cmp(&(&b.value, &b.bucket)));
    Ok(rows)
}

/// The key holding an account's time zone (its settings').
fn zone_key(account: &str) -> Vec<u8> {
    format!("z/{account}").into_bytes()
}

/// The time zone `account`'s reports are bucketed in unless a reader asks
/// for another: its settings' (`configure_account`'s `time_zone`), UTC
/// before it has any.
pub fn zone(tree: &sled::Tree, account: &str) -> Result<Zone, sled::Error> {
    Ok(tree
        .get(zone_key(account))?
        .and_then(|name| Zone::parse(&String::from_utf8_lossy(&name)).ok())
        .unwrap_or(Zone(chrono_tz::UTC)))
}

/// Why report rows cannot be read.
#[derive(Debug)]
pub enum ReadError {
    Store(sled::Error),
    /// Counters are kept per UTC hour: a zone whose offset is not whole hours
    /// then cannot be bucketed (half its hour would be the next one's).
    NotWholeHours {
        zone: String,
        offset_minutes: i32,
    },
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Store(e) => write!(f, "{e}"),
            Self::NotWholeHours { zone, offset_minutes } => write!(
                f,
                "{zone} is {offset_minutes} minutes from UTC: reports are kept per UTC hour, so only zones whole hours \
                 from UTC can be bucketed; ask for UTC or such a zone"
            ),
        }
    }
}

impl From<sled::Error> for ReadError {
    fn from(e: sled::Error) -> Self {
        Self::Store(e)
    }
}

/// [`rows`] bucketed in `zone` (labels are the zone's local hours and
/// days, `from`/`to` too): each UTC hour's counters go to the local hour
/// it is (daylight saving time followed hour by hour), and a local day sums
/// its hours — counts and histograms add, so percentiles stay exact.
pub fn rows_in(
    tree: &sled::Tree,
    account: &str,
    dimension: &str,
    period: &str,
    from: Option<&str>,
    to: Option<&str>,
    zone: &Zone,
) -> Result<Vec<Row>, ReadError> {
    use chrono::{Offset, TimeZone};
    if zone.0 == chrono_tz::UTC {
        return Ok(rows(tree, account, dimension, period, from, to)?);
    }
    let mut merged: BTreeMap<(String, String), BTreeMap<String, u64>> = BTreeMap::new();
    for row in rows(tree, account, dimension, "hour", None, None)? {
        let Ok(utc) = chrono::NaiveDateTime::parse_from_str(&format!("{}:00", row.bucket), "%Y-%m-%dT%H:%M") else {
            continue;
        };
        let offset = zone.0.offset_from_utc_datetime(&utc).fix().local_minus_utc();
        if offset % 3_600 != 0 {
            return Err(ReadError::NotWholeHours { zone: zone.0.name().to_owned(), offset_minutes: offset / 60 });
        }
        let local = utc + chrono::Duration::seconds(i64::from(offset));
        let label = local.format(if period == "hour" { "%Y-%m-%dT%H" } else { "%Y-%m-%d" }).to_string();
        if !within(&label, from, to) {
            continue;
        }
        let counters = merged.entry((row.value, label)).or_default();
        for (metric, n) in row.counters {
            *counters.entry(metric).or_default() += n;
        }
    }
    Ok(merged.into_iter().map(|((value, bucket), counters)| Row { value, bucket, counters }).collect())
}

/// Whether bucket `label` is within [from, to], compared on their common
/// length: an hour's bucket is within a day's bound, and the reverse.
fn within(label: &str, from: Option<&str>, to: Option<&str>) -> bool {
    let before = from.is_some_and(|f| {
        let (b, f) = common_prefix(label, f);
        b < f
    });
    let after = to.is_some_and(|t| {
        let (b, t) = common_prefix(label, t);
        b > t
    });
    !before && !after
}

/// Two labels cut to their common length (`2026-03-02T14` and `2026-03-02`
/// compare as days).
fn common_prefix<'a, 'b>(a: &'a str, b: &'b str) -> (&'a str, &'b str) {
    let n = a.len().min(b.len());
    (a.get(..n).unwrap_or(a), b.get(..n).unwrap_or(b))
}

/// The p-th percentile (0-100), nearest rank (as `convo simulate --summary`
/// computes it from the values): exact below [`EXACT_BELOW_SECS`], within 1%
/// above (the bucket's lower bound). `None` without data.
pub fn percentile(counters: &BTreeMap<String, u64>, name: &str, p: u64) -> Option<u64> {
    let n = *counters.get(&format!("{name}_n"))?;
    if n == 0 {
        return None;
    }
    let rank = (n * p).div_ceil(100).max(1);
    let prefix = format!("{name}_v");
    let mut seen = 0;
    // Keys are zero-padded, so the map holds them in value order.
    for (key, count) in counters.range(prefix.clone()..).take_while(|(k, _)| k.starts_with(&prefix)) {
        seen += count;
        if seen >= rank {
            return key[prefix.len()..].parse().ok();
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
        "sla_business_hours": get("sla_business_hours"),
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
    for item in tree.scan_prefix(b"r/") {
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

/// The report kinds (`overview` is every figure).
pub const KINDS: [&str; 6] = ["overview", "volume", "sla", "times", "closures", "csat"];

/// The columns a report kind shows (after the dimension and the bucket).
pub fn columns(kind: &str) -> Vec<&'static str> {
    let volume = ["opened", "closed", "out_of_hours", "transfers", "inactivity_closures"];
    let sla = [
        "sla_optimal",
        "sla_low",
        "sla_breached",
        "sla_optimal_pct",
        "sla_low_pct",
        "sla_breached_pct",
        "sla_business_hours",
    ];
    let times = [
        "frt_count",
        "frt_mean_secs",
        "frt_p50_secs",
        "frt_p90_secs",
        "rt_count",
        "rt_mean_secs",
        "rt_p50_secs",
        "rt_p90_secs",
        "handle_mean_secs",
    ];
    let closures = ["closed", "closures_by_reason", "closures_by_typification"];
    let csat = ["csat_answers", "csat_mean"];
    match kind {
        "volume" => volume.to_vec(),
        "sla" => sla.to_vec(),
        "times" => times.to_vec(),
        "closures" => closures.to_vec(),
        "csat" => csat.to_vec(),
        _ => [&volume[..], &sla[..], &times[..], &csat[..], &closures[1..]].concat(),
    }
}

/// Rows (as [`row_json`] makes them) as CSV with the given columns: a
/// header line, then one line per row; maps as `key:value` pairs.
pub fn csv(header: &[&str], rows: &[Value]) -> String {
    let cell = |v: &Value| match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Object(m) => m.iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(" "),
        other => other.to_string(),
    };
    // RFC 4180 quoting by the `csv` crate (a field with a comma, a quote or a line break is quoted).
    let mut writer = csv::WriterBuilder::new().terminator(csv::Terminator::Any(b'\n')).from_writer(Vec::new());
    writer.write_record(header).expect("writing to memory");
    for row in rows {
        writer.write_record(header.iter().map(|c| cell(&row[*c]))).expect("writing to memory");
    }
    String::from_utf8(writer.into_inner().expect("writing to memory")).expect("fields are UTF-8")
}

/// Whether `text` is a bucket as reports name them: a day (`2026-03-02`) or
/// an hour (`2026-03-02T14`), UTC.
pub fn is_bucket(text: &str) -> bool {
    let (day, hour) = match text.split_once('T') {
        Some((day, hour)) => (day, Some(hour)),
        None => (text, None),
    };
    chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").is_ok()
        && hour.is_none_or(|h| h.len() == 2 && h.parse::<u8>().is_ok_and(|h| h < 24))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(values: &[u64]) -> BTreeMap<String, u64> {
        let mut counters = BTreeMap::new();
        for v in values {
            *counters.entry("frt_n".to_owned()).or_default() += 1;
            *counters.entry(format!("frt_v{:020}", value_bucket(*v))).or_default() += 1;
        }
        counters
    }

    /// Known values: one first response of 8 s is a p50 of 8 s (not the
    /// bucket bound 10 s), ranks are nearest-rank, and above 1000 s a
    /// percentile is within 1% of the true value.
    #[test]
    fn percentiles_are_the_values_themselves() {
        assert_eq!(percentile(&histogram(&[8]), "frt", 50), Some(8));
        let hundred: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&histogram(&hundred), "frt", 50), Some(50));
        assert_eq!(percentile(&histogram(&hundred), "frt", 90), Some(90));
        assert_eq!(percentile(&histogram(&[100, 140]), "frt", 50), Some(100));
        assert_eq!(percentile(&histogram(&[100, 140]), "frt", 90), Some(140));
        assert_eq!(percentile(&histogram(&[]), "frt", 50), None);
        for truth in [1000, 1009, 12_345, 99_999, 3_600_000, 86_400 * 30 + 7] {
            let got = percentile(&histogram(&[truth]), "frt", 50).unwrap();
            assert!(got <= truth && (truth - got) as f64 <= truth as f64 * 0.01, "{truth}: {got}");
        }
        assert_eq!(value_bucket(999), 999);
        assert_eq!(value_bucket(12_345), 12_300);
    }
}
