//! Group commit as a sans-IO machine (DESIGN.md, "Durable group commit").
//!
//! Between a partition machine's appends and the store: a few writes are in
//! flight at once, and the appends the machine decides meanwhile wait and go
//! together in the next write — one atomic batch (one acknowledgement, one
//! flush to disk) when enough are waiting, else one by one, pipelined. Under
//! light load an append leaves at once; under load a write carries what
//! accumulated while the earlier ones were on disk's way, so one fsync serves
//! many requests (Postgres, Kafka and TigerBeetle batch the same way).
//!
//! Every commit of a batch carries its own expectation (the fence's epoch or
//! its aggregate's last sequence): the machine keeps one command in flight
//! per aggregate, so a batch never holds two commits of one aggregate. A
//! batch is stored whole or not at all; when it fails — refused (a conflict,
//! a duplicate, a limit) or with its outcome unknown (a lost acknowledgement)
//! — its commits are appended again one by one, each with the id that makes
//! a repeat a duplicate, so each learns its own outcome: nothing is lost and
//! nothing is written twice.
//!
//! Inputs: [`GroupCommit::push`] (an append the machine asked for),
//! [`GroupCommit::handle_batch`] and [`GroupCommit::handle_single`] (what the
//! store answered). Output: [`GroupCommit::poll`] says what to write next;
//! the handlers return the appends whose outcome is known, for
//! [`crate::Machine::handle_appended`]. No I/O, no clock.

use std::collections::VecDeque;

use convo_store::StoreError;
use convo_wire::Commit;

use crate::machine::IoId;

/// Writes (batches, or groups of single appends) in flight at once, per partition.
pub const WRITES_IN_FLIGHT_MAX: usize = 2;
/// The fewest waiting appends that go as one atomic batch (fewer go one by
/// one, pipelined): a batch costs the server about a millisecond whatever
/// its size (nats-server 2.15 stages it in a store of its own), so batches
/// of 8 store ~7,000 commits/s against ~13,000 durable single appends, and
/// batches of 32 ~20,000 (BENCHMARKS.md, "Group commit").
pub const BATCH_COMMITS_MIN: usize = 32;

/// The group commit's settings.
#[derive(Debug, Clone, Copy)]
pub struct GroupCommitConfig {
    pub writes_in_flight_max: usize,
    pub batch_commits_min: usize,
    /// The store's limit ([`convo_store::EventStore::batch_commits_max`]);
    /// 1: no batches, every append leaves at once, pipelined.
    pub batch_commits_max: usize,
    /// Deliberately broken (the fault simulator's self-test): a batch that
    /// failed is taken as stored instead of appended again one by one.
    pub break_fallback: bool,
}

impl GroupCommitConfig {
    /// The service's settings for a store taking batches of
    /// `batch_commits_max`; `serial`: one write at a time (a replicated
    /// stream, [`convo_store::EventStore::serial_writes`]), so everything
    /// waiting goes in it, batched from two commits on.
    pub fn serve(batch_commits_max: usize, serial: bool) -> Self {
        Self {
            writes_in_flight_max: if serial { 1 } else { WRITES_IN_FLIGHT_MAX },
            batch_commits_min: if serial { 2 } else { BATCH_COMMITS_MIN },
            batch_commits_max: batch_commits_max.max(1),
            break_fallback: false,
        }
    }
}

/// An append the machine asked for ([`crate::Output::Append`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Append {
    pub io: IoId,
    pub commit: Commit,
    pub expected: u64,
}

/// What to write next.
#[derive(Debug)]
pub enum Write {
    /// Append these together, all or none
    /// ([`convo_store::EventStore::append_batch`]); hand them back with the
    /// result to [`GroupCommit::handle_batch`].
    Batch(Vec<Append>),
    /// Append this one alone; hand it back with the result to
    /// [`GroupCommit::handle_single`].
    Single(Append),
}

/// An append whose outcome is known.
#[derive(Debug)]
pub struct Appended {
    pub io: IoId,
    pub commit: Commit,
    pub result: Result<u64, StoreError>,
}

/// What group commit has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    pub batches: u64,
    pub batched_commits: u64,
    pub singles: u64,
    /// Batches that failed, whose commits were appended again one by one.
    pub fallbacks: u64,
    pub largest_batch: usize,
}

/// A group of single appends in flight (one write slot until all are answered).
#[derive(Debug)]
struct Singles {
    group: u64,
    left: usize,
}

/// Group commit for one partition (see the module's documentation).
#[derive(Debug)]
pub struct GroupCommit {
    config: GroupCommitConfig,
    waiting: VecDeque<Append>,
    /// Appends of failed batches, to go one by one before anything else.
    fallback: VecDeque<Append>,
    /// Batches in flight.
    batches: usize,
    /// Groups of singles in flight, oldest first; a single's group is found by its io.
    singles: VecDeque<Singles>,
    single_group: std::collections::HashMap<IoId, u64>,
    next_group: u64,
    /// Writes `poll` is handing out now (a group of singles goes one by one).
    handing: VecDeque<Append>,
    stats: GroupCommitStats,
}

impl GroupCommit {
    pub fn new(config: GroupCommitConfig) -> Self {
        Self {
            config,
            waiting: VecDeque::new(),
            fallback: VecDeque::new(),
            batches: 0,
            singles: VecDeque::new(),
            single_group: std::collections::HashMap::new(),
            next_group: 0,
            handing: VecDeque::new(),
            stats: GroupCommitStats::default(),
        }
    }

    /// An append the machine asked for.
    pub fn push(&mut self, append: Append) {
        self.waiting.push_back(append);
    }

    /// The next write to make, if one may start now.
    pub fn poll(&mut self) -> Option<Write> {
        if let Some(append) = self.handing.pop_front() {
            return Some(Write::Single(append));
        }
        // A failed batch's appends go at once (they were in flight already).
        if !self.fallback.is_empty() {
            let group: Vec<Append> = self.fallback.drain(..).collect();
            return self.singles(group);
        }
        if self.config.batch_commits_max <= 1 && self.config.writes_in_flight_max > 1 {
            return self.waiting.pop_front().map(Write::Single); // nothing to group: no write slots either
        }
        if self.waiting.is_empty() || self.batches + self.singles.len() >= self.config.writes_in_flight_max {
            return None;
        }
        let batchable = self.config.batch_commits_max > 1 && self.waiting.len() >= self.config.batch_commits_min;
        if batchable {
            let n = self.waiting.len().min(self.config.batch_commits_max);
            let batch: Vec<Append> = self.waiting.drain(..n).collect();
            self.batches += 1;
            self.stats.batches += 1;
            self.stats.batched_commits += batch.len() as u64;
            self.stats.largest_batch = self.stats.largest_batch.max(batch.len());
            return Some(Write::Batch(batch));
        }
        let group: Vec<Append> = self.waiting.drain(..).collect();
        self.singles(group)
    }

    /// Hands `group` out one by one, as one write slot.
    fn singles(&mut self, group: Vec<Append>) -> Option<Write> {
        self.next_group += 1;
        let id = self.next_group;
        for append in &group {
            self.single_group.insert(append.io, id);
        }
        self.singles.push_back(Singles { group: id, left: group.len() });
        self.stats.singles += group.len() as u64;
        self.handing.extend(group);
        self.handing.pop_front().map(Write::Single)
    }

    /// What the store answered a batch: its appends' outcomes when it was
    /// stored; when it failed, they go again one by one ([`GroupCommit::poll`]).
    pub fn handle_batch(&mut self, batch: Vec<Append>, result: Result<Vec<u64>, StoreError>) -> Vec<Appended> {
        self.batches = self.batches.saturating_sub(1);
        match result {
            Ok(seqs) if seqs.len() == batch.len() => batch
                .into_iter()
                .zip(seqs)
                .map(|(a, seq)| Appended { io: a.io, commit: a.commit, result: Ok(seq) })
                .collect(),
            Ok(_) | Err(_) if self.config.break_fallback => {
                // Broken on purpose: an outcome never learned, taken for success.
                batch.into_iter().map(|a| Appended { io: a.io, commit: a.commit, result: Ok(0) }).collect()
            }
            Ok(_) | Err(_) => {
                self.stats.fallbacks += 1;
                self.fallback.extend(batch);
                Vec::new()
            }
        }
    }

    /// What the store answered a single append.
    pub fn handle_single(&mut self, append: Append, result: Result<u64, StoreError>) -> Appended {
        if let Some(group) = self.single_group.remove(&append.io)
            && let Some(at) = self.singles.iter().position(|s| s.group == group)
        {
            self.singles[at].left -= 1;
            if self.singles[at].left == 0 {
                self.singles.remove(at);
            }
        }
        Appended { io: append.io, commit: append.commit, result }
    }

    /// Appends waiting for a write (not yet handed to the store).
    pub fn waiting(&self) -> usize {
        self.waiting.len() + self.fallback.len() + self.handing.len()
    }

    /// Writes in flight.
    pub fn writes_in_flight(&self) -> usize {
        self.batches + self.singles.len()
    }

    /// Nothing waits and nothing is in flight.
    pub fn is_idle(&self) -> bool {
        self.waiting() == 0 && self.writes_in_flight() == 0
    }

    pub fn stats(&self) -> GroupCommitStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use convo_domain::{AccountId, Actor, CommandId, ConversationEvent, ConversationId, Recorded, Timestamp};
    use convo_wire::StreamRef;

    /// An append of one event to conversation `c<n>`.
    fn append(n: u64) -> Append {
        let record = Recorded {
            seq: 1,
            at: Timestamp::from_millis(1_000),
            command: CommandId::new(&format!("cmd-{n}")).unwrap(),
            actor: Actor::system("test"),
            event: ConversationEvent::LabelAdded { label: "l".into() },
        };
        let stream = StreamRef::Conversation(ConversationId::new(&format!("c{n}")).unwrap());
        let commit = Commit::new(&AccountId::new("acme").unwrap(), stream, None, vec![record]).unwrap();
        Append { io: IoId(n), commit, expected: 0 }
    }

    fn config(min: usize) -> GroupCommitConfig {
        GroupCommitConfig {
            writes_in_flight_max: 2,
            batch_commits_min: min,
            batch_commits_max: 4,
            break_fallback: false,
        }
    }

    #[test]
    fn light_load_goes_one_by_one_and_load_accumulates_into_batches() {
        let mut gc = GroupCommit::new(config(2));
        gc.push(append(1));
        let Some(Write::Single(first)) = gc.poll() else { panic!("one waiting goes alone") };
        gc.push(append(2));
        let Some(Write::Single(second)) = gc.poll() else { panic!("a second slot") };
        assert!(gc.poll().is_none());
        for n in 3..=8 {
            gc.push(append(n)); // both slots busy: they wait
        }
        assert!(gc.poll().is_none());
        gc.handle_single(first, Ok(1));
        let Some(Write::Batch(batch)) = gc.poll() else { panic!("what waited goes together") };
        assert_eq!(batch.iter().map(|a| a.io.0).collect::<Vec<_>>(), vec![3, 4, 5, 6]);
        let done = gc.handle_batch(batch, Ok(vec![10, 11, 12, 13]));
        assert_eq!(done.iter().map(|d| d.result.clone().unwrap()).collect::<Vec<_>>(), vec![10, 11, 12, 13]);
        gc.handle_single(second, Ok(2));
        let Some(Write::Batch(rest)) = gc.poll() else { panic!("the rest") };
        assert_eq!(rest.len(), 2);
        assert_eq!(gc.stats().largest_batch, 4);
    }

    #[test]
    fn a_failed_batch_is_appended_again_one_by_one() {
        let mut gc = GroupCommit::new(config(2));
        for n in 1..=3 {
            gc.push(append(n));
        }
        let Some(Write::Batch(batch)) = gc.poll() else { panic!("a batch") };
        let done = gc.handle_batch(batch, Err(StoreError::Unavailable("lost".into())));
        assert!(done.is_empty(), "no outcome is invented");
        let mut again = Vec::new();
        while let Some(write) = gc.poll() {
            let Write::Single(a) = write else { panic!("one by one") };
            again.push(a);
        }
        assert_eq!(again.iter().map(|a| a.io.0).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(gc.writes_in_flight(), 1);
        for (n, a) in again.into_iter().enumerate() {
            let done = gc.handle_single(a, Ok(n as u64 + 1));
            assert!(done.result.is_ok());
        }
        assert!(gc.is_idle());
        assert_eq!(gc.stats().fallbacks, 1);
    }
}
