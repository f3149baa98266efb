//! # convo-sim
//!
//! Deterministic simulation of convo. It runs configuration and timed commands
//! through the real domain code on a virtual clock: between inputs, every due
//! timer fires in time order (an input and a deadline at the same instant: the
//! input first), routing assigns queued conversations, and after the last input
//! timers keep firing until nothing is due (or until `until`). The output is
//! JSON lines, one event (or rejection) per line; the same input gives the same
//! bytes.
//!
//! Two drivers feed it: a scenario file ([`scenario`]) and a seeded random day
//! of traffic ([`workload`]) whose run is checked against an independent model
//! of the SLA and inactivity rules ([`model`]).

pub mod model;
pub mod output;
pub mod scenario;
pub mod summary;
pub mod workload;

/// The engine's deterministic core, which the simulator drives directly.
pub mod world {
    pub use convo_engine::core::*;
}

use convo_domain::Timestamp;

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

/// Runs a driver to the end, handing each step to `sink`, in order.
pub fn run(driver: &mut dyn Driver, until: Option<Timestamp>, mut sink: impl FnMut(Step<'_>)) -> RunStats {
    let mut world = World::new();
    let mut log_seq = 0;
    let mut stats = RunStats::default();
    let mut step = Vec::new();
    let within = |at: Timestamp| until.is_none_or(|u| at <= u);
    loop {
        let input_at = driver.next_at().filter(|at| within(*at));
        let timer_at = world.next_timer().filter(|at| within(*at));
        let timer_first = match (input_at, timer_at) {
            (None, None) => break,
            (Some(i), Some(t)) => t < i, // same instant: the input first
            (None, Some(_)) => true,
            (Some(_), None) => false,
        };
        let (now, input) = if timer_first {
            stats.ticks += 1;
            (world.fire_next_timer(&mut log_seq, &mut step).expect("a timer is due"), None)
        } else {
            let input = driver.take().expect("an input is due");
            stats.inputs += 1;
            world.apply(&input.envelope, input.at, input.line, &mut log_seq, &mut step);
            (input.at, Some(input))
        };
        world.route(now, &mut log_seq, &mut step);
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
