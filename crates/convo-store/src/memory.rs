//! The same contract in memory: the simulator's store, and a reference the
//! JetStream store is tested against. Commits are kept encoded, so the wire
//! format is exercised here too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio::sync::watch;

use convo_domain::AccountId;
use convo_wire::{Commit, SCHEMA_VERSION, StreamRef};

use crate::{CommitStream, EventStore, LogItem, StoreError, decode_stored};

/// The most commits a memory store holds.
pub const MEMORY_COMMITS_MAX: usize = 10_000_000;

#[derive(Debug, Default)]
struct Log {
    entries: Vec<(String, Vec<u8>)>,
    /// The log sequence of each aggregate's last commit.
    last: HashMap<(AccountId, StreamRef), u64>,
}

#[derive(Debug)]
pub struct MemoryStore {
    prefix: String,
    log: Arc<Mutex<Log>>,
    appended: watch::Sender<u64>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(convo_wire::DEFAULT_PREFIX)
    }
}

impl MemoryStore {
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned(), log: Arc::default(), appended: watch::channel(0).0 }
    }
}

/// The commit at log sequence `seq`, decoded.
fn entry(prefix: &str, log: &Mutex<Log>, seq: u64) -> Option<LogItem> {
    let log = log.lock().expect("not poisoned");
    let (subject, bytes) = log.entries.get(seq.checked_sub(1)? as usize)?;
    Some(decode_stored(prefix, seq, subject.clone(), Some(&SCHEMA_VERSION.to_string()), bytes))
}

impl EventStore for MemoryStore {
    async fn append(&self, commit: &Commit, expected: u64) -> Result<u64, StoreError> {
        Ok(self.append_batch(&[(commit, expected)]).await?[0])
    }

    async fn append_batch(&self, appends: &[(&Commit, u64)]) -> Result<Vec<u64>, StoreError> {
        let mut encoded = Vec::with_capacity(appends.len());
        for (commit, _) in appends {
            encoded.push(commit.encode().map_err(|e| StoreError::Refused(e.to_string()))?);
        }
        let seqs = {
            let mut log = self.log.lock().expect("not poisoned");
            // Every check before any write: all or none.
            let mut keys = std::collections::HashSet::new();
            for (commit, expected) in appends {
                let key = (commit.account.clone(), commit.stream.clone());
                let actual = log.last.get(&key).copied().unwrap_or(0);
                if actual != *expected || !keys.insert(key) {
                    return Err(StoreError::Conflict {
                        stream: commit.stream.filter_subject(&self.prefix, &commit.account),
                        expected: *expected,
                    });
                }
            }
            if log.entries.len() + appends.len() > MEMORY_COMMITS_MAX {
                return Err(StoreError::Refused(format!(
                    "the memory store holds at most {MEMORY_COMMITS_MAX} commits"
                )));
            }
            let mut seqs = Vec::with_capacity(appends.len());
            for ((commit, _), bytes) in appends.iter().zip(encoded) {
                log.entries.push((commit.subject(&self.prefix), bytes));
                let seq = log.entries.len() as u64;
                log.last.insert((commit.account.clone(), commit.stream.clone()), seq);
                seqs.push(seq);
            }
            seqs
        };
        if let Some(last) = seqs.last() {
            self.appended.send_replace(*last);
        }
        Ok(seqs)
    }

    fn batch_commits_max(&self) -> usize {
        crate::BATCH_COMMITS_MAX
    }

    async fn load(&self, account: &AccountId, stream: &StreamRef) -> Result<Vec<LogItem>, StoreError> {
        let len = self.log.lock().expect("not poisoned").entries.len() as u64;
        let mut out = Vec::new();
        for seq in 1..=len {
            let item = entry(&self.prefix, &self.log, seq).expect("in range");
            let mine = match &item {
                Ok(stored) => &stored.commit.account == account && &stored.commit.stream == stream,
                Err(StoreError::Decode { subject, .. }) => {
                    convo_wire::parse_subject(subject).is_some_and(|(a, s)| &a == account && &s == stream)
                }
                Err(_) => false,
            };
            if mine {
                out.push(item);
            }
        }
        Ok(out)
    }

    async fn subscribe(&self, from_seq: u64) -> Result<CommitStream, StoreError> {
        let receiver = self.appended.subscribe();
        let (log, prefix) = (Arc::clone(&self.log), self.prefix.clone());
        let start = from_seq.max(1);
        Ok(futures::stream::unfold((start, receiver, log), move |(next, mut receiver, log)| {
            let prefix = prefix.clone();
            async move {
                loop {
                    if let Some(item) = entry(&prefix, &log, next) {
                        return Some((item, (next + 1, receiver, log)));
                    }
                    if receiver.changed().await.is_err() {
                        return None;
                    }
                }
            }
        })
        .boxed())
    }

    async fn read(&self, from_seq: u64) -> Result<CommitStream, StoreError> {
        let end = self.last_seq().await?;
        let items: Vec<LogItem> =
            (from_seq.max(1)..=end).filter_map(|seq| entry(&self.prefix, &self.log, seq)).collect();
        Ok(futures::stream::iter(items).boxed())
    }

    async fn last_seq(&self) -> Result<u64, StoreError> {
        Ok(self.log.lock().expect("not poisoned").entries.len() as u64)
    }
}
