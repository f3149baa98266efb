//! # convo-sim
//!
//! Deterministic simulation of convo. It runs configuration and timed commands
//! through the real domain code on a virtual clock: between inputs, every due
//! timer fires in time order (an input and a deadline at the same instant: the
//! input first), routing assigns queued conversations, and after the last input
//! timers keep firing until nothing is due (or until `until`). The engine's
//! partition machine ([`convo_engine::machine`]) decides every step, so the
//! simulator and the engine share one ordering rule. The output is
//! JSON lines, one event (or rejection) per line; the same input gives the same
//! bytes.
//!
//! Two drivers feed it: a scenario file ([`scenario`]) and a seeded random day
//! of traffic ([`workload`]) whose run is checked against an independent model
//! of the SLA and inactivity rules ([`model`]).

pub mod directory;
pub mod faults;
pub mod model;
pub mod output;
pub mod summary;
pub mod workload;

/// The scenario file format lives with the engine, whose `replay-traffic` reads it too.
pub use convo_engine::scenario;

/// The engine's deterministic core, which the simulator drives directly.
pub mod world {
    pub use convo_engine::core::*;
}

use convo_domain::{CommandEnvelope, Timestamp};
use convo_engine::Refusal;
use convo_engine::machine::{Failure, Machine, MachineConfig, Origin, Outcome, Output};

pub use scenario::{Input, ScenarioError};
pub use world::{Record, World};

/// Where the inputs of a run come from.
pub trait Driver {
    /// When the next input is due, if any.
    fn next_at(&mut self) -> Option<Timestamp>;
    /// Takes the next input (called right after `next_at` returned `Some`).
    fn take(&mut self) -> Option<Input>;
    /// Sees what the last step produced (a reactive workload schedules from it).
    fn observe(&mut self, _records: &[Record]) {}
}

/// Plays a fixed list of inputs.
#[derive(Debug)]
pub struct Scripted {
    inputs: std::vec::IntoIter<Input>,
    peeked: Option<Input>,
}

impl Scripted {
    pub fn new(inputs: Vec<Input>) -> Self {
        Self { inputs: inputs.into_iter(), peeked: None }
    }
}

impl Driver for Scripted {
    fn next_at(&mut self) -> Option<Timestamp> {
        if self.peeked.is_none() {
            self.peeked = self.inputs.next();
        }
        self.peeked.as_ref().map(|i| i.at)
    }

    fn take(&mut self) -> Option<Input> {
        self.peeked.take().or_else(|| self.inputs.next())
    }
}

/// What a run did besides its records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    pub inputs: u64,
    pub ticks: u64,
    /// Inputs left unapplied because they come after `until`.
    pub inputs_after_until: u64,
}

/// One step of a run: the input applied (none for a timer), then every
/// record it caused, routing's assignments included.
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
    pub input: Option<&'a Input>,
    pub records: &'a [Record],
}

/// Runs a driver to the end, handing each step to `sink`, in order. The
/// engine's partition machine decides, in virtual time, one step at a time,
/// and every append is committed at once.
pub fn run(driver: &mut dyn Driver, until: Option<Timestamp>, mut sink: impl FnMut(Step<'_>)) -> RunStats {
    let mut machine = Machine::new(MachineConfig::stepwise());
    let mut log_seq = 0;
    let mut stats = RunStats::default();
    let mut step = Vec::new();
    let within = |at: Timestamp| until.is_none_or(|u| at <= u);
    loop {
        let input_at = driver.next_at().filter(|at| within(*at));
        let timer_at = machine.poll_timeout().filter(|at| within(*at));
        let input = match (input_at, timer_at) {
            (None, None) => break,
            (Some(i), Some(t)) if t < i => None, // same instant: the input first
            (None, Some(_)) => None,
            _ => Some(driver.take().expect("an input is due")),
        };
        match &input {
            None => {
                stats.ticks += 1;
                machine.handle_timeout(timer_at.expect("a timer is due"));
            }
            Some(input) => {
                stats.inputs += 1;
                machine.handle_request(0, input.envelope.clone(), input.at);
            }
        }
        commit_at_once(&mut machine, &mut log_seq, input.as_ref().and_then(|i| i.line), &mut step);
        driver.observe(&step);
        sink(Step { input: input.as_ref(), records: &step });
        step.clear();
    }
    while driver.next_at().is_some() {
        driver.take();
        stats.inputs_after_until += 1;
    }
    stats
}

/// Performs a machine's outputs with a log that commits every append at
/// once, describing what happened in `out` (`line` names the input's line).
pub fn commit_at_once(machine: &mut Machine, log_seq: &mut u64, line: Option<usize>, out: &mut Vec<Record>) {
    while let Some(output) = machine.poll() {
        match output {
            Output::Append { io, commit, .. } => {
                *log_seq += 1;
                out.extend(Record::of_commit(&commit));
                machine.handle_appended(io, commit, Ok(*log_seq));
            }
            // Nothing is evicted in virtual time, and the log never conflicts.
            Output::Load { io, .. } => machine.handle_loaded(io, Ok(Vec::new())),
            Output::Reply { origin, envelope, now, result } => {
                let line = if origin == Origin::Request(0) { line } else { None };
                out.extend(reply_record(&envelope, now, line, result));
            }
        }
    }
}

/// The line of the simulator's output that a reply makes, if any.
pub fn reply_record(
    envelope: &CommandEnvelope,
    at: Timestamp,
    line: Option<usize>,
    result: Result<Outcome, Failure>,
) -> Option<Record> {
    let account = envelope.account.clone();
    let command = envelope.id.clone();
    let (code, reason) = match result {
        Ok(Outcome::Committed { .. } | Outcome::Nothing) => return None,
        Ok(Outcome::Duplicate { first_seq, last_seq }) => {
            return Some(Record::Duplicate { at, account, command, first_seq, last_seq, line });
        }
        Ok(Outcome::Refused(Refusal::Rejected(r))) => (r.code(), r.to_string()),
        Ok(Outcome::Refused(other)) => ("unrecordable", other.to_string()),
        Err(Failure::Overloaded(why)) => ("overloaded", why),
        Err(other) => ("unavailable", other.to_string()),
    };
    Some(Record::Rejected { at, account, command, kind: envelope.command.type_name(), code, reason, line })
}
