//! An independent model of the SLA and inactivity rules (the auditor).
//!
//! It is written apart from the domain on purpose, in another style: no
//! deadlines or ticks, only arithmetic over the gaps between stimuli. It reads
//! what the workload sent (contact and agent messages, transfers, closes) and
//! the assignments routing made, predicts every response class, threshold
//! crossing, warning, agent alert and rule-driven closure with its instant, and
//! [`Model::check`] compares that with what the engine recorded.

use std::collections::BTreeMap;
use std::fmt;

use convo_domain::conversation::{CloseReason, Threshold};
use convo_domain::{Command, ConversationEvent, ConversationId, Timestamp};

use crate::Input;
use crate::summary::{class_name, reason_name};
use crate::world::Record;

/// The thresholds the model applies (all conversations share them).
#[derive(Debug, Clone)]
pub struct Rules {
    pub optimal_secs: u32,
    pub low_secs: u32,
    pub inactivity_secs: u32,
    pub attempts: u32,
    pub auto_resolve_days: u32,
    /// Channels whose campaign opens only daily between these UTC seconds of
    /// the day (`from`, `to`); a conversation opened outside waits, for SLA
    /// purposes, from the next opening. Other channels are always open.
    pub daily_hours: BTreeMap<ConversationChannel, (u32, u32)>,
    /// The campaign each channel opens conversations in.
    pub channel_campaigns: BTreeMap<ConversationChannel, String>,
    /// Campaigns whose SLA counts only open time: open daily between these
    /// UTC seconds of the day; waits in other campaigns count every second.
    pub business_hours: BTreeMap<String, (u32, u32)>,
    /// An automation: a contact message holding this word (any case) labels
    /// the conversation with this label, once.
    pub keyword_label: Option<(String, String)>,
}

/// A channel id as text (the model keeps to plain values).
pub type ConversationChannel = String;

impl Rules {
    /// When the SLA clock of a conversation opened at `at` on `channel` starts.
    fn clock_start(&self, channel: &str, at: Timestamp) -> Timestamp {
        let Some(&(from, to)) = self.daily_hours.get(channel) else { return at };
        let day_ms = 86_400_000;
        let ms_of_day = at.millis().rem_euclid(day_ms);
        let midnight = at.millis() - ms_of_day;
        let (from_ms, to_ms) = (i64::from(from) * 1000, i64::from(to) * 1000);
        if ms_of_day < from_ms {
            Timestamp::from_millis(midnight + from_ms)
        } else if ms_of_day >= to_ms {
            Timestamp::from_millis(midnight + day_ms + from_ms)
        } else {
            at
        }
    }
}

const DAY_MS: i64 = 86_400_000;

/// Open milliseconds of a daily window between `a` and `b` (day by day).
fn open_ms((from, to): (u32, u32), a: Timestamp, b: Timestamp) -> u64 {
    let (from, to) = (i64::from(from) * 1000, i64::from(to) * 1000);
    let mut total = 0;
    let mut day = a.millis().div_euclid(DAY_MS) * DAY_MS;
    while day < b.millis() {
        let lo = (day + from).max(a.millis());
        let hi = (day + to).min(b.millis());
        total += (hi - lo).max(0) as u64;
        day += DAY_MS;
    }
    total
}

/// The instant `ms` of open time after `a` in a daily window.
fn after_open((from, to): (u32, u32), a: Timestamp, ms: u64) -> Timestamp {
    let (from, to) = (i64::from(from) * 1000, i64::from(to) * 1000);
    let mut left = ms as i64;
    let mut day = a.millis().div_euclid(DAY_MS) * DAY_MS;
    loop {
        let lo = (day + from).max(a.millis());
        let hi = day + to;
        if hi > lo {
            if left <= hi - lo {
                return Timestamp::from_millis(lo + left);
            }
            left -= hi - lo;
        }
        day += DAY_MS;
    }
}

/// One predicted (or recorded) outcome: what, where, when.
pub type Fact = (String, ConversationId, Timestamp);

#[derive(Debug, Clone, Copy)]
struct Wait {
    start: Timestamp,
    optimal: bool,
    low: bool,
    alerted: bool,
}

#[derive(Debug, Clone, Default)]
struct Conv {
    /// Where the SLA clock starts (later than the opening out of hours).
    clock: Timestamp,
    /// The campaign it is in, and since when (SLA thresholds a move leaves
    /// behind are crossed at the move).
    campaign: String,
    moved_at: Timestamp,
    closed: bool,
    wait: Option<Wait>,
    silence: Option<(Timestamp, u32)>,
    assigned_at: Option<Timestamp>,
    last_human: Timestamp,
    /// The automation's label is on.
    labeled: bool,
}

#[derive(Debug)]
pub struct Model {
    rules: Rules,
    convs: BTreeMap<ConversationId, Conv>,
    predicted: Vec<Fact>,
    recorded: Vec<Fact>,
    rejected: Vec<String>,
}

const NEVER: Timestamp = Timestamp::from_millis(i64::MAX);

/// Ranks of simultaneous deadlines (the earlier rank happens first).
const RANK_SLA: u8 = 0;
const RANK_AGENT: u8 = 2;
const RANK_CONTACT: u8 = 3;
const RANK_AUTO: u8 = 4;

impl Model {
    pub fn new(rules: Rules) -> Self {
        Self { rules, convs: BTreeMap::new(), predicted: Vec::new(), recorded: Vec::new(), rejected: Vec::new() }
    }

    fn secs(&self, secs: u32) -> u64 {
        u64::from(secs)
    }

    /// Lets the silence between stimuli play out up to (not including) `until`.
    fn advance(&mut self, id: &ConversationId, until: Timestamp) {
        let rules = &self.rules;
        let Some(c) = self.convs.get_mut(id) else {
            return;
        };
        if c.closed {
            return;
        }
        let auto = if rules.auto_resolve_days > 0 {
            c.last_human.plus_secs(u64::from(rules.auto_resolve_days) * 86_400)
        } else {
            NEVER
        };
        let before_auto = |t: Timestamp, rank: u8| (t, rank) < (auto, RANK_AUTO);
        let mut facts = Vec::new();
        if let Some(w) = c.wait.as_mut() {
            let window = rules.business_hours.get(&c.campaign).copied();
            let crossings =
                [(rules.optimal_secs, &mut w.optimal, "crossed:optimal"), (rules.low_secs, &mut w.low, "crossed:low")];
            for (secs, done, name) in crossings {
                let t = match window {
                    Some(window) => after_open(window, w.start, u64::from(secs) * 1000),
                    None => w.start.plus_secs(u64::from(secs)),
                }
                .max(c.moved_at);
                if !*done && t < until && before_auto(t, RANK_SLA) {
                    *done = true;
                    facts.push((name.to_string(), t));
                }
            }
            if let Some(assigned) = c.assigned_at {
                let t = w.start.max(assigned).plus_secs(u64::from(rules.inactivity_secs));
                if !w.alerted && t < until && before_auto(t, RANK_AGENT) {
                    w.alerted = true;
                    facts.push(("agent_alert".into(), t));
                }
            }
        } else if let Some((since, warnings)) = c.silence.as_mut() {
            let period = u64::from(rules.inactivity_secs);
            while *warnings < rules.attempts {
                let t = since.plus_secs(period * u64::from(*warnings + 1));
                if t < until && before_auto(t, RANK_CONTACT) {
                    *warnings += 1;
                    facts.push(("warning".into(), t));
                } else {
                    break;
                }
            }
            let close = since.plus_secs(period * u64::from(rules.attempts + 1));
            if *warnings == rules.attempts && close < until && before_auto(close, RANK_CONTACT) {
                c.closed = true;
                facts.push(("closed:inactivity".into(), close));
            }
        }
        if !c.closed && auto < until {
            c.closed = true;
            facts.push(("closed:auto_resolve".into(), auto));
        }
        self.predicted.extend(facts.into_iter().map(|(what, t)| (what, id.clone(), t)));
    }

    /// Feeds one step of the run: the input applied (if any), then what it caused.
    pub fn observe(&mut self, input: Option<&Input>, records: &[Record]) {
        if let Some(input) = input {
            self.stimulus(input);
        }
        for record in records {
            match record {
                Record::Rejected { command, code, reason, .. } => {
                    // A command for a conversation the rules had already closed by
                    // its instant is refused, as the model expects (a client that
                    // retried after a failure, later than it meant to).
                    let expected = *code == "conversation_closed"
                        && input
                            .and_then(|i| target_conversation(i))
                            .is_some_and(|id| self.convs.get(id).is_some_and(|c| c.closed));
                    if !expected {
                        self.rejected.push(format!("{command}: {code}: {reason}"))
                    }
                }
                Record::Conversation { conversation, record, .. } => {
                    if let ConversationEvent::AgentAssigned { .. } = record.event {
                        self.advance(conversation, record.at);
                        if let Some(c) = self.convs.get_mut(conversation) {
                            c.assigned_at = Some(record.at);
                        }
                    }
                    if let Some(what) = fact_of(&record.event) {
                        self.recorded.push((what, conversation.clone(), record.at));
                    }
                    if let ConversationEvent::LabelAdded { label } = &record.event
                        && record.actor == convo_domain::Actor::system("automation")
                    {
                        self.recorded.push((format!("labeled:{label}"), conversation.clone(), record.at));
                    }
                }
                _ => {}
            }
        }
    }

    fn stimulus(&mut self, input: &Input) {
        let at = input.at;
        let Some(id) = target_conversation(input) else { return };
        self.advance(id, at);
        let optimal_ms = self.secs(self.rules.optimal_secs) * 1000;
        let low_ms = self.secs(self.rules.low_secs) * 1000;
        let (clock, campaign) = match &input.envelope.command {
            Command::ReceiveMessage(m) => (
                self.rules.clock_start(m.channel.as_str(), at),
                self.rules.channel_campaigns.get(m.channel.as_str()).cloned().unwrap_or_default(),
            ),
            _ => (at, String::new()),
        };
        let c = self.convs.entry(id.clone()).or_insert_with(|| Conv { clock, campaign, ..Conv::default() });
        let window = self.rules.business_hours.get(&c.campaign).copied();
        if c.closed {
            return; // the engine refuses it; the rejection is reported separately
        }
        match &input.envelope.command {
            Command::ReceiveMessage(m) => {
                if let Some((word, label)) = &self.rules.keyword_label
                    && !c.labeled
                    && m.text.to_lowercase().contains(&word.to_lowercase())
                {
                    c.labeled = true;
                    self.predicted.push((format!("labeled:{label}"), id.clone(), at));
                }
                c.last_human = at;
                c.silence = None;
                c.wait.get_or_insert(Wait { start: at.max(c.clock), optimal: false, low: false, alerted: false });
            }
            Command::SendMessage(_) => {
                c.last_human = at;
                if let Some(w) = c.wait.take() {
                    let ms = match window {
                        Some(window) => open_ms(window, w.start, at),
                        None => at.millis_since(w.start),
                    };
                    let class = if ms <= optimal_ms {
                        "optimal"
                    } else if ms <= low_ms {
                        "low"
                    } else {
                        "breached"
                    };
                    self.predicted.push((format!("response:{class}"), id.clone(), at));
                }
                c.silence = Some((at, 0));
            }
            Command::Transfer(t) => {
                c.assigned_at = None;
                if let convo_domain::command::TransferTarget::Campaign(to) = &t.to {
                    c.campaign = to.to_string();
                    c.moved_at = at;
                }
            }
            Command::Close(_) => c.closed = true,
            _ => {}
        }
    }

    /// Compares the prediction with the record after the run.
    pub fn check(mut self) -> Result<Agreement, Box<Disagreement>> {
        let ids: Vec<ConversationId> = self.convs.keys().cloned().collect();
        for id in &ids {
            self.advance(id, NEVER);
        }
        self.predicted.sort();
        self.recorded.sort();
        let counts = |facts: &[Fact]| {
            let mut map: BTreeMap<String, u64> = BTreeMap::new();
            for (what, _, _) in facts {
                *map.entry(what.clone()).or_default() += 1;
            }
            map
        };
        let predicted = counts(&self.predicted);
        let recorded = counts(&self.recorded);
        if self.predicted == self.recorded && self.rejected.is_empty() {
            return Ok(Agreement { counts: recorded });
        }
        let first = self
            .predicted
            .iter()
            .zip(&self.recorded)
            .find(|(a, b)| a != b)
            .map(|(a, b)| (Some(a.clone()), Some(b.clone())));
        let first = first.unwrap_or_else(|| {
            let n = self.predicted.len().min(self.recorded.len());
            (self.predicted.get(n).cloned(), self.recorded.get(n).cloned())
        });
        Err(Box::new(Disagreement { predicted, recorded, first, rejected: self.rejected }))
    }
}

/// The conversation a stimulus is about, for the commands the model follows.
fn target_conversation(input: &Input) -> Option<&ConversationId> {
    match &input.envelope.command {
        Command::ReceiveMessage(c) => Some(&c.conversation),
        Command::SendMessage(c) => Some(&c.conversation),
        Command::Transfer(c) => Some(&c.conversation),
        Command::Close(c) => Some(&c.conversation),
        _ => None,
    }
}

fn fact_of(event: &ConversationEvent) -> Option<String> {
    Some(match event {
        ConversationEvent::ResponseRecorded { class, .. } => {
            format!("response:{}", class_name(*class))
        }
        ConversationEvent::SlaThresholdCrossed { threshold: Threshold::Optimal, .. } => "crossed:optimal".into(),
        ConversationEvent::SlaThresholdCrossed { threshold: Threshold::Low, .. } => "crossed:low".into(),
        ConversationEvent::InactivityWarningSent { .. } => "warning".into(),
        ConversationEvent::AgentInactivityAlerted { .. } => "agent_alert".into(),
        ConversationEvent::ConversationClosed {
            reason: reason @ (CloseReason::Inactivity | CloseReason::AutoResolve),
            ..
        } => {
            format!("closed:{}", reason_name(*reason))
        }
        _ => return None,
    })
}

/// The run agreed with the model; counts per kind of fact.
#[derive(Debug)]
pub struct Agreement {
    pub counts: BTreeMap<String, u64>,
}

impl fmt::Display for Agreement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
        write!(f, "{}", parts.join(", "))
    }
}

/// Where the run and the model part ways.
#[derive(Debug)]
pub struct Disagreement {
    pub predicted: BTreeMap<String, u64>,
    pub recorded: BTreeMap<String, u64>,
    /// The first differing fact: (model's, engine's).
    pub first: (Option<Fact>, Option<Fact>),
    pub rejected: Vec<String>,
}

impl fmt::Display for Disagreement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: std::collections::BTreeSet<&String> = self.predicted.keys().chain(self.recorded.keys()).collect();
        for key in keys {
            let (p, r) = (self.predicted.get(key).copied().unwrap_or(0), self.recorded.get(key).copied().unwrap_or(0));
            let mark = if p == r { "" } else { "   <- differs" };
            writeln!(f, "  {key:<22} model {p:>8}  engine {r:>8}{mark}")?;
        }
        let show =
            |fact: &Option<Fact>| fact.as_ref().map_or("nothing".to_string(), |(w, c, t)| format!("{w} in {c} at {t}"));
        writeln!(f, "  first difference: model has {}, engine has {}", show(&self.first.0), show(&self.first.1))?;
        for r in self.rejected.iter().take(5) {
            writeln!(f, "  unexpected rejection: {r}")?;
        }
        Ok(())
    }
}
