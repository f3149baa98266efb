//! A readable summary of a run, for people: conversations, SLA classes,
//! response times, inactivity, transfers and closures by reason and
//! typification.

use std::collections::BTreeMap;
use std::fmt;

use convo_domain::conversation::{CloseReason, Direction, SlaClass, Threshold};
use convo_domain::{ConversationEvent, Timestamp};

use crate::world::Record;

#[derive(Debug, Default, Clone)]
pub struct Summary {
    first_at: Option<Timestamp>,
    last_at: Option<Timestamp>,
    pub events: u64,
    pub rejected: u64,
    pub duplicates: u64,
    pub opened: u64,
    pub outbound: u64,
    pub out_of_hours: u64,
    pub closed: u64,
    pub responses: BTreeMap<&'static str, u64>,
    pub first_response_secs: Vec<u64>,
    pub response_secs: Vec<u64>,
    pub crossings_optimal: u64,
    pub crossings_low: u64,
    pub warnings: u64,
    pub agent_alerts: u64,
    pub transfers: u64,
    pub closures_by_reason: BTreeMap<&'static str, u64>,
    pub closures_by_typification: BTreeMap<String, u64>,
    pub surveys: Vec<u8>,
    pub rejections_by_code: BTreeMap<&'static str, u64>,
}

pub fn class_name(class: SlaClass) -> &'static str {
    match class {
        SlaClass::Optimal => "optimal",
        SlaClass::Low => "low",
        SlaClass::Breached => "breached",
    }
}

pub fn reason_name(reason: CloseReason) -> &'static str {
    match reason {
        CloseReason::Resolved => "resolved",
        CloseReason::System => "system",
        CloseReason::Inactivity => "inactivity",
        CloseReason::AutoResolve => "auto_resolve",
        CloseReason::OutOfHours => "out_of_hours",
    }
}

impl Summary {
    pub fn observe(&mut self, records: &[Record]) {
        for record in records {
            let at = record.at();
            self.first_at.get_or_insert(at);
            self.last_at = Some(at);
            match record {
                Record::Rejected { code, .. } => {
                    self.rejected += 1;
                    *self.rejections_by_code.entry(code).or_default() += 1;
                }
                Record::Duplicate { .. } => self.duplicates += 1,
                Record::Config { .. } | Record::Agent { .. } | Record::Contact { .. } => self.events += 1,
                Record::Conversation { record, .. } => {
                    self.events += 1;
                    self.conversation_event(&record.event);
                }
            }
        }
    }

    fn conversation_event(&mut self, event: &ConversationEvent) {
        match event {
            ConversationEvent::ConversationOpened(o) => {
                self.opened += 1;
                self.outbound += u64::from(o.direction == Direction::Outbound);
                self.out_of_hours += u64::from(o.out_of_hours);
            }
            ConversationEvent::ResponseRecorded { response_secs, class, first, .. } => {
                *self.responses.entry(class_name(*class)).or_default() += 1;
                self.response_secs.push(*response_secs);
                if *first {
                    self.first_response_secs.push(*response_secs);
                }
            }
            ConversationEvent::SlaThresholdCrossed { threshold, .. } => match threshold {
                Threshold::Optimal => self.crossings_optimal += 1,
                Threshold::Low => self.crossings_low += 1,
            },
            ConversationEvent::InactivityWarningSent { .. } => self.warnings += 1,
            ConversationEvent::AgentInactivityAlerted { .. } => self.agent_alerts += 1,
            ConversationEvent::ConversationTransferred { .. } => self.transfers += 1,
            ConversationEvent::ConversationClosed { reason, typification, .. } => {
                self.closed += 1;
                *self.closures_by_reason.entry(reason_name(*reason)).or_default() += 1;
                let key = typification.as_ref().map_or_else(|| "(none)".to_string(), ToString::to_string);
                *self.closures_by_typification.entry(key).or_default() += 1;
            }
            ConversationEvent::SurveyAnswered { rating, .. } => self.surveys.push(*rating),
            _ => {}
        }
    }
}

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 { "-".into() } else { format!("{:.1}%", part as f64 * 100.0 / whole as f64) }
}

fn times(values: &[u64]) -> String {
    if values.is_empty() {
        return "none".into();
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = |p: usize| sorted[((sorted.len() * p).div_ceil(100)).clamp(1, sorted.len()) - 1];
    let mean = sorted.iter().sum::<u64>() as f64 / sorted.len() as f64;
    format!(
        "{} | mean {mean:.0} s | p50 {} s | p90 {} s | max {} s",
        sorted.len(),
        rank(50),
        rank(90),
        sorted[sorted.len() - 1]
    )
}

fn tally<K: fmt::Display>(map: &BTreeMap<K, u64>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    map.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(" | ")
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let responses: u64 = self.responses.values().sum();
        let class = |c: &str| self.responses.get(c).copied().unwrap_or(0);
        writeln!(f, "== summary ==")?;
        if let (Some(a), Some(b)) = (self.first_at, self.last_at) {
            writeln!(f, "period               {a} .. {b}")?;
        }
        writeln!(
            f,
            "events               {} (rejected commands {}, repeated commands {})",
            self.events, self.rejected, self.duplicates
        )?;
        writeln!(
            f,
            "conversations        opened {} (outbound {}, out of hours {}) | closed {} | still open {}",
            self.opened,
            self.outbound,
            self.out_of_hours,
            self.closed,
            self.opened.saturating_sub(self.closed)
        )?;
        writeln!(
            f,
            "SLA responses        {responses}: optimal {} ({}) | low {} ({}) | breached {} ({})",
            class("optimal"),
            pct(class("optimal"), responses),
            class("low"),
            pct(class("low"), responses),
            class("breached"),
            pct(class("breached"), responses)
        )?;
        writeln!(f, "first response       {}", times(&self.first_response_secs))?;
        writeln!(f, "all responses        {}", times(&self.response_secs))?;
        writeln!(
            f,
            "SLA thresholds       optimal crossed {} | low crossed (breach) {}",
            self.crossings_optimal, self.crossings_low
        )?;
        writeln!(f, "inactivity           contact warnings {} | agent alerts {}", self.warnings, self.agent_alerts)?;
        writeln!(f, "transfers            {}", self.transfers)?;
        writeln!(f, "closures by reason   {}", tally(&self.closures_by_reason))?;
        writeln!(f, "closures by typif.   {}", tally(&self.closures_by_typification))?;
        if !self.surveys.is_empty() {
            let mean = self.surveys.iter().map(|r| u64::from(*r)).sum::<u64>() as f64 / self.surveys.len() as f64;
            writeln!(f, "CSAT                 {} answers, mean rating {mean:.2} / 5", self.surveys.len())?;
        }
        if !self.rejections_by_code.is_empty() {
            writeln!(f, "rejections           {}", tally(&self.rejections_by_code))?;
        }
        Ok(())
    }
}
