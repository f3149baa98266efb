//! The partition machine on an event store, one step at a time: the driver
//! of `convo replay-traffic` (virtual time) and of tests.
//!
//! [`Engine::recover`] reads the log into a [`Machine`]; [`Engine::execute`]
//! hands it one command and performs its appends and loads until the
//! command is answered; [`Engine::replay`] runs timed inputs in virtual time
//! in exactly the simulator's order (due timers first, an input winning a
//! tie, routing after each step). The service's pipelined driver is
//! [`crate::serve`].

use futures::StreamExt;

use convo_domain::{CommandEnvelope, Timestamp};
use convo_store::{EventStore, StoreError};

pub use crate::machine::Partition;
use crate::machine::{Failure, Machine, MachineConfig, Origin, Outcome, Output, recover_into};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Failed(#[from] Failure),
}

/// Reads the whole log into one machine per partition; returns them and the
/// newest sequence read.
pub async fn recover_machines<S: EventStore>(
    store: &S,
    count: usize,
    config: MachineConfig,
) -> Result<(Vec<Machine>, u64), StoreError> {
    let mut machines: Vec<Machine> = (0..count.max(1)).map(|_| Machine::new(config)).collect();
    let mut log = store.read(1).await?;
    let mut newest = 0;
    while let Some(item) = log.next().await {
        if let Err(e @ (StoreError::Unavailable(_) | StoreError::Refused(_))) = &item {
            return Err(e.clone());
        }
        newest = newest.max(recover_into(&mut machines, item));
    }
    Ok((machines, newest))
}

/// The engine over a store `S`, stepped one command at a time.
#[derive(Debug)]
pub struct Engine<S> {
    machine: Machine,
    store: S,
}

impl<S: EventStore> Engine<S> {
    /// Starts from the log, in virtual time (ticks at their deadlines).
    pub async fn recover(store: S) -> Result<Self, EngineError> {
        Self::recover_with(store, MachineConfig::stepwise()).await
    }

    pub async fn recover_with(store: S, config: MachineConfig) -> Result<Self, EngineError> {
        let (mut machines, _) = recover_machines(&store, 1, config).await?;
        Ok(Self { machine: machines.remove(0), store })
    }

    /// Wraps a machine recovered otherwise (a partition's, from its snapshot).
    pub fn with_machine(machine: Machine, store: S) -> Self {
        Self { machine, store }
    }

    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    pub fn world(&self) -> &crate::World {
        self.machine.world()
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// The earliest pending timer.
    pub fn next_timer(&mut self) -> Option<Timestamp> {
        self.machine.poll_timeout()
    }

    /// Performs the machine's outputs until it is idle; returns the replies.
    async fn drive(&mut self) -> Vec<(Origin, Result<Outcome, Failure>)> {
        let mut replies = Vec::new();
        while let Some(output) = self.machine.poll() {
            match output {
                Output::Append { io, commit, expected } => {
                    let result = self.store.append(&commit, expected).await;
                    self.machine.handle_appended(io, commit, result);
                }
                Output::Load { io, account, stream } => {
                    let result = self.store.load(&account, &stream).await;
                    self.machine.handle_loaded(io, result);
                }
                Output::Reply { origin, result, .. } => replies.push((origin, result)),
            }
        }
        replies
    }

    /// Decides, appends and applies one command at `now` (and whatever
    /// routing does after it); returns the command's own outcome.
    pub async fn execute(&mut self, envelope: &CommandEnvelope, now: Timestamp) -> Result<Outcome, EngineError> {
        self.machine.handle_request(0, envelope.clone(), now);
        let mut own = None;
        for (origin, result) in self.drive().await {
            if origin == Origin::Request(0) {
                own = Some(result);
            }
        }
        Ok(own.expect("the machine answers every request")?)
    }

    /// Fires every timer due at or before `now` (and routing after each);
    /// returns their outcomes.
    pub async fn fire_due(&mut self, now: Timestamp) -> Vec<Result<Outcome, Failure>> {
        self.machine.handle_timeout(now);
        self.drive().await.into_iter().map(|(_, r)| r).collect()
    }

    /// Runs timed inputs in virtual time, exactly as the simulator orders
    /// them: due timers first (an input wins a tie), then the input, then
    /// routing; after the last input, timers until nothing is due. Stops at
    /// the first failure (a store that is down).
    pub async fn replay(
        &mut self,
        inputs: impl IntoIterator<Item = (CommandEnvelope, Timestamp)>,
    ) -> Result<Vec<Outcome>, EngineError> {
        self.replay_until(inputs, None).await
    }

    /// [`Self::replay`] up to `until` (as `convo simulate --until`): inputs
    /// and timers after it are not run.
    pub async fn replay_until(
        &mut self,
        inputs: impl IntoIterator<Item = (CommandEnvelope, Timestamp)>,
        until: Option<Timestamp>,
    ) -> Result<Vec<Outcome>, EngineError> {
        let within = |at: Timestamp| until.is_none_or(|u| at <= u);
        let mut out = Vec::new();
        let mut keep = |replies: Vec<(Origin, Result<Outcome, Failure>)>| -> Result<(), EngineError> {
            for (_, result) in replies {
                out.push(result?);
            }
            Ok(())
        };
        for (envelope, at) in inputs {
            if !within(at) {
                break;
            }
            while let Some(deadline) = self.machine.poll_timeout().filter(|d| *d < at) {
                self.machine.handle_timeout(deadline);
                keep(self.drive().await)?;
            }
            self.machine.handle_request(0, envelope, at);
            keep(self.drive().await)?;
        }
        while let Some(deadline) = self.machine.poll_timeout().filter(|d| within(*d)) {
            self.machine.handle_timeout(deadline);
            keep(self.drive().await)?;
        }
        Ok(out)
    }
}
