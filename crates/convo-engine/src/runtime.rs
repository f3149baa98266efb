//! The engine on an event store: the deterministic [`World`] with every
//! decision made durable before it is applied.
//!
//! [`Engine::execute`] decides a command, appends the commit with the
//! aggregate's expected last sequence, and applies it once acknowledged. When
//! another writer got there first (a conflict), the engine reads the commits
//! it had not seen, applies them, and decides again, at most
//! [`CONFLICT_RETRIES_MAX`] times. After a restart, [`Engine::recover`] reads
//! the whole log back, which also rebuilds the timer queue of every open
//! conversation. Commands are executed one after another (appends are not yet
//! pipelined across conversations).

use futures::StreamExt;

use convo_domain::{AccountId, CommandEnvelope, Timestamp};
use convo_store::{EventStore, StoreError};
use convo_wire::{Commit, StreamRef};

use crate::core::{ASSIGNMENTS_PER_STEP_MAX, Decided, Refusal, World};

/// How many times a command is decided again after losing a race to append.
pub const CONFLICT_RETRIES_MAX: u32 = 5;

/// What came of one command.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Appended at `log_seq`.
    Committed { log_seq: u64, commit: Commit },
    /// Valid, but nothing to record.
    Nothing,
    /// A repeated command id: its original events.
    Duplicate { first_seq: u64, last_seq: u64 },
    /// A broken rule (nothing recorded).
    Refused(Refusal),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("still conflicting after {CONFLICT_RETRIES_MAX} retries on {0}")]
    Contention(String),
}

/// Applies to `world` the commits of one aggregate it has not seen (after a
/// lost race, or to read an evicted conversation back); returns the newest
/// log sequence applied (0 if none).
pub async fn refresh<S: EventStore>(
    store: &S,
    world: &mut World,
    account: &AccountId,
    stream: &StreamRef,
) -> Result<u64, StoreError> {
    let known = world.expected(account, stream);
    let mut newest = 0;
    for stored in store.load(account, stream).await? {
        if stored.stream_seq > known {
            world.apply_commit(&stored.commit, stored.stream_seq);
            newest = stored.stream_seq;
        }
    }
    Ok(newest)
}

/// The engine over a store `S`.
#[derive(Debug)]
pub struct Engine<S> {
    world: World,
    store: S,
    /// The newest log sequence applied.
    applied: u64,
    /// Which accounts this engine owns (all, unless partitioned).
    owns: Partition,
}

/// A share of the accounts: those whose id hashes to `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub index: usize,
    pub count: usize,
}

impl Partition {
    pub const ALL: Partition = Partition { index: 0, count: 1 };

    /// The partition of an account: FNV-1a of its id, so every instance and
    /// every run agree.
    pub fn of(account: &AccountId, count: usize) -> usize {
        let hash = account
            .as_str()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
        (hash % count.max(1) as u64) as usize
    }

    pub fn owns(&self, account: &AccountId) -> bool {
        self.count <= 1 || Self::of(account, self.count) == self.index
    }
}

impl<S: EventStore> Engine<S> {
    /// Starts from the log: every commit is applied in order.
    pub async fn recover(store: S) -> Result<Self, EngineError> {
        Self::recover_partition(store, Partition::ALL).await
    }

    /// Starts from the log, keeping only the accounts of one partition.
    pub async fn recover_partition(store: S, owns: Partition) -> Result<Self, EngineError> {
        let mut engine = Self { world: World::new(), store, applied: 0, owns };
        engine.catch_up().await?;
        Ok(engine)
    }

    /// One engine per partition of `count`, recovered in a single read of the log.
    pub async fn recover_partitions(store: S, count: usize) -> Result<Vec<Self>, EngineError>
    where
        S: Clone,
    {
        let count = count.max(1);
        let mut engines: Vec<Self> = (0..count)
            .map(|index| Self {
                world: World::new(),
                store: store.clone(),
                applied: 0,
                owns: Partition { index, count },
            })
            .collect();
        let applied = read_log(&store, 0, |commit, seq| {
            engines[Partition::of(&commit.account, count)].world.apply_commit(commit, seq);
        })
        .await?;
        for engine in &mut engines {
            engine.applied = applied;
        }
        Ok(engines)
    }

    pub fn world(&self) -> &World {
        &self.world
    }

    pub fn world_mut(&mut self) -> &mut World {
        &mut self.world
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// The newest log sequence applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Applies every commit of the log this engine has not seen yet; returns how many.
    pub async fn catch_up(&mut self) -> Result<u64, EngineError> {
        let (owns, world) = (self.owns, &mut self.world);
        let mut count = 0;
        self.applied = read_log(&self.store, self.applied, |commit, seq| {
            if owns.owns(&commit.account) {
                world.apply_commit(commit, seq);
                count += 1;
            }
        })
        .await?;
        Ok(count)
    }

    /// Applies the commits of one aggregate that came after what this engine knows.
    async fn refresh(&mut self, account: &AccountId, stream: &StreamRef) -> Result<(), EngineError> {
        let newest = refresh(&self.store, &mut self.world, account, stream).await?;
        self.applied = self.applied.max(newest);
        Ok(())
    }

    /// Decides, appends and applies one command at `now`.
    pub async fn execute(&mut self, envelope: &CommandEnvelope, now: Timestamp) -> Result<Outcome, EngineError> {
        for _ in 0..=CONFLICT_RETRIES_MAX {
            let commit = match self.world.decide(envelope, now) {
                Ok(Decided::Commit(commit)) => commit,
                Ok(Decided::Nothing) => return Ok(Outcome::Nothing),
                Ok(Decided::Duplicate { first_seq, last_seq }) => {
                    return Ok(Outcome::Duplicate { first_seq, last_seq });
                }
                Err(refusal) => return Ok(Outcome::Refused(refusal)),
            };
            let expected = self.world.expected(&commit.account, &commit.stream);
            match self.store.append(&commit, expected).await {
                Ok(log_seq) => {
                    self.world.apply_commit(&commit, log_seq);
                    self.applied = self.applied.max(log_seq);
                    return Ok(Outcome::Committed { log_seq, commit });
                }
                Err(StoreError::Conflict { .. }) => self.refresh(&commit.account, &commit.stream).await?,
                Err(e) => return Err(e.into()),
            }
        }
        Err(EngineError::Contention(format!("{} {}", envelope.account, envelope.command.type_name())))
    }

    /// Fires every timer due at or before `now`, each at its own deadline
    /// (virtual time) or at `now` (wall clock, `at_deadline` false).
    pub async fn fire_due(&mut self, now: Timestamp, at_deadline: bool) -> Result<Vec<Outcome>, EngineError> {
        let mut out = Vec::new();
        while let Some(deadline) = self.world.next_timer().filter(|d| *d <= now) {
            let Some((tick, _)) = self.world.next_tick() else { break };
            let at = if at_deadline { deadline } else { now };
            match self.execute(&tick, at).await {
                Ok(outcome) => out.push(outcome),
                Err(e) => {
                    // The timer is still due: put it back before reporting.
                    if let convo_domain::Command::Tick(t) = &tick.command {
                        self.world.rearm(&tick.account, &t.conversation);
                    }
                    return Err(e);
                }
            }
            out.extend(self.route(at).await?);
        }
        Ok(out)
    }

    /// Lets routing assign queued conversations to available agents.
    pub async fn route(&mut self, now: Timestamp) -> Result<Vec<Outcome>, EngineError> {
        let mut out = Vec::new();
        for _ in 0..ASSIGNMENTS_PER_STEP_MAX {
            let Some(assign) = self.world.next_assignment() else { break };
            let outcome = self.execute(&assign, now).await?;
            let committed = matches!(outcome, Outcome::Committed { .. });
            out.push(outcome);
            if !committed {
                break; // the floor and the aggregate disagree: stop rather than loop
            }
        }
        Ok(out)
    }

    /// Runs timed inputs in virtual time, exactly as the simulator orders
    /// them: due timers first (an input wins a tie), then the input, then
    /// routing; after the last input, timers until nothing is due.
    pub async fn replay(
        &mut self,
        inputs: impl IntoIterator<Item = (CommandEnvelope, Timestamp)>,
    ) -> Result<Vec<Outcome>, EngineError> {
        let mut out = Vec::new();
        for (envelope, at) in inputs {
            while let Some(deadline) = self.world.next_timer().filter(|d| *d < at) {
                out.extend(self.fire_due(deadline, true).await?);
            }
            out.push(self.execute(&envelope, at).await?);
            out.extend(self.route(at).await?);
        }
        while let Some(deadline) = self.world.next_timer() {
            out.extend(self.fire_due(deadline, true).await?);
        }
        Ok(out)
    }
}

/// Hands every readable commit after `after` up to the log's current end to
/// `apply`, in order; returns the newest log sequence read. A stored message
/// that is not a commit (foreign or corrupt) cannot be applied, and refusing
/// to start over it would stop everything: it is reported and stepped over.
async fn read_log<S: EventStore>(
    store: &S,
    after: u64,
    mut apply: impl FnMut(&Commit, u64),
) -> Result<u64, EngineError> {
    let last = store.last_seq().await?;
    if last <= after {
        return Ok(after);
    }
    let mut follow = store.subscribe(after + 1).await?;
    let mut read = after;
    while read < last {
        let Some(stored) = follow.next().await else { break };
        match stored {
            Ok(stored) => {
                read = stored.stream_seq;
                apply(&stored.commit, stored.stream_seq);
            }
            Err(StoreError::Decode { seq, error }) => {
                eprintln!("convo: skipping stored message {seq}, which is not a readable commit: {error}");
                read = read.max(seq);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_hash_onto_partitions_stably_and_spread() {
        let account = |s: &str| AccountId::new(s).unwrap();
        // Fixed forever: instances and runs must agree on an account's partition.
        assert_eq!(Partition::of(&account("acme"), 4), Partition::of(&account("acme"), 4));
        assert_eq!(Partition::of(&account("acme"), 1), 0);
        let mut used = [0usize; 4];
        for n in 0..400 {
            used[Partition::of(&account(&format!("tenant-{n}")), 4)] += 1;
        }
        assert!(used.iter().all(|u| *u > 50), "{used:?}");
        assert!(Partition::ALL.owns(&account("anyone")));
        let p = Partition { index: Partition::of(&account("acme"), 3), count: 3 };
        assert!(p.owns(&account("acme")));
    }
}
