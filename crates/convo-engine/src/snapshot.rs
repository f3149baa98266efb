//! Building a partition's snapshot ([`convo_store::snapshot`]): the last
//! snapshot, folded forward with the log's tail. What it keeps is what
//! recovery needs in memory: every commit of the partition's catalogs and
//! agents, and of its conversations not closed (a closed conversation is
//! read back from the log if a command ever comes for it, as after an
//! eviction), and the closing commit of a closed conversation whose content
//! awaits its expiry (SPEC §13: recovery queues the expiry from it without
//! holding the conversation). Recovery applies the snapshot's commits as it
//! applies the log, so the state it rebuilds is the one the engine's own
//! rules make.

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;

use convo_domain::AccountId;
use convo_domain::conversation::ConversationEvent;
use convo_store::snapshot::{Snapshot, Snapshots};
use convo_store::{EventStore, LogItem, StoreError, StoredCommit};
use convo_wire::{Event, StreamRef};

use crate::machine::Partition;

type Key = (AccountId, StreamRef);

/// A snapshot being folded forward.
#[derive(Debug)]
pub struct Builder {
    partition: usize,
    count: usize,
    covered: u64,
    aggregates: BTreeMap<Key, Vec<StoredCommit>>,
    /// Conversations seen again after they closed: read back whole at the end.
    reload: BTreeSet<Key>,
    /// Closed conversations whose content awaits expiry: their closing commit.
    retained: BTreeMap<Key, StoredCommit>,
}

fn has(stored: &StoredCommit, wanted: impl Fn(&ConversationEvent) -> bool) -> bool {
    stored.commit.events.iter().any(|e| matches!(&e.event, Event::Conversation(event) if wanted(event)))
}

/// The commit ends what recovery must hold of its conversation: it closes
/// it, or its content expired.
fn closes(stored: &StoredCommit) -> bool {
    has(stored, |e| {
        matches!(e, ConversationEvent::ConversationClosed { .. } | ConversationEvent::ContentExpired { .. })
    })
}

impl Builder {
    /// Starts from `previous` (or from nothing).
    pub fn new(previous: Option<Snapshot>, partition: usize, count: usize) -> Self {
        let mut builder = Self {
            partition,
            count,
            covered: 0,
            aggregates: BTreeMap::new(),
            reload: BTreeSet::new(),
            retained: BTreeMap::new(),
        };
        if let Some(snapshot) = previous {
            builder.covered = snapshot.covered;
            for stored in snapshot.commits {
                let key = (stored.commit.account.clone(), stored.commit.stream.clone());
                if closes(&stored) {
                    builder.retained.insert(key, stored);
                } else {
                    builder.aggregates.entry(key).or_default().push(stored);
                }
            }
        }
        builder
    }

    /// The last stream sequence folded.
    pub fn covered(&self) -> u64 {
        self.covered
    }

    /// Folds one message of the log.
    pub fn fold(&mut self, item: LogItem) {
        let stored = match item {
            Ok(stored) => stored,
            Err(StoreError::Decode { seq, .. }) => {
                self.covered = self.covered.max(seq);
                return;
            }
            Err(_) => return,
        };
        self.covered = self.covered.max(stored.stream_seq);
        let commit = &stored.commit;
        if Partition::of(&commit.account, self.count) != self.partition {
            return;
        }
        let key = (commit.account.clone(), commit.stream.clone());
        if let StreamRef::Conversation(_) = commit.stream {
            if closes(&stored) {
                self.aggregates.remove(&key);
                self.reload.remove(&key);
                if crate::core::awaits_expiry(&stored.commit) {
                    self.retained.insert(key, stored);
                } else {
                    self.retained.remove(&key);
                }
                return;
            }
            let opens = commit.first_seq() == 1;
            if !opens && !self.aggregates.contains_key(&key) {
                self.reload.insert(key); // its start is behind a closure: read it whole
                return;
            }
        }
        self.aggregates.entry(key).or_default().push(stored);
    }

    /// The snapshot: conversations seen again after closing are read back
    /// whole from the log; every commit in stream order.
    pub async fn finish(mut self, store: &impl EventStore) -> Result<Snapshot, StoreError> {
        for (account, stream) in std::mem::take(&mut self.reload) {
            let history: Vec<StoredCommit> =
                store.load_as_logged(&account, &stream).await?.into_iter().flatten().collect();
            if history.last().is_some_and(|last| !closes(last)) {
                self.aggregates.insert((account, stream), history);
            }
        }
        let mut commits: Vec<StoredCommit> = self.aggregates.into_values().flatten().collect();
        commits.extend(self.retained.into_values());
        commits.sort_by_key(|c| c.stream_seq);
        commits.dedup_by_key(|c| c.stream_seq);
        commits.retain(|c| c.stream_seq <= self.covered);
        Ok(Snapshot { partition: self.partition, count: self.count, covered: self.covered, commits })
    }
}

/// Writes a fresh snapshot of one partition: the last one (if usable)
/// folded forward to the stream's end. Returns it, with its size in bytes.
pub async fn refresh<S: EventStore>(
    store: &S,
    snapshots: &Snapshots,
    partition: usize,
    count: usize,
) -> Result<(Snapshot, usize), StoreError> {
    let previous = match snapshots.get(partition, count).await {
        Ok(previous) => previous,
        Err(why) => {
            tracing::warn!(partition, "ignoring the last snapshot ({why}); folding the log from its start");
            None
        }
    };
    let mut builder = Builder::new(previous, partition, count);
    let end = store.last_seq().await?;
    if end > builder.covered() {
        // As the log holds them: a snapshot keeps personal values sealed.
        let mut log = store.read_as_logged(builder.covered() + 1).await?;
        while let Some(item) = log.next().await {
            if let Err(e @ (StoreError::Unavailable(_) | StoreError::Refused(_))) = &item {
                return Err(e.clone());
            }
            builder.fold(item);
        }
    }
    let snapshot = builder.finish(store).await?;
    let size = snapshots.put(&snapshot).await?;
    Ok((snapshot, size))
}
