//! Partition snapshots: what a partition's owner needs in memory (every
//! commit of its accounts' catalogs and agents, and of their conversations
//! not closed) as of a stream sequence, so a takeover loads it and reads
//! only the tail of the log.
//!
//! Kept in the JetStream object store `<STREAM>_SNAPSHOTS`, one object per
//! partition (`partition-<n>-of-<count>`), replaced on each write. The
//! encoding is versioned: `CONVOSNP`, the format version (u16, big endian),
//! the SHA-256 of the body, then the body (postcard: the stream, the
//! partition, the count, the sequence covered, and each commit as the log
//! holds it: sequence, subject, schema version, bytes, so commits are
//! decoded, upcast, like any read of the log). A snapshot of an unknown
//! version, a corrupt one, or one of another stream or partitioning is
//! refused with the reason, and recovery reads the log instead.

use std::time::Duration;

use async_nats::jetstream::object_store;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{StoreError, StoredCommit};

/// The encoding's version.
pub const SNAPSHOT_VERSION: u16 = 1;
const MAGIC: &[u8; 8] = b"CONVOSNP";
/// How long a snapshot object is kept without being replaced.
pub const SNAPSHOT_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Why a snapshot is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a snapshot (no CONVOSNP header)")]
    NotASnapshot,
    #[error("snapshot format version {0}; this build reads version {SNAPSHOT_VERSION}")]
    UnknownVersion(u16),
    #[error("corrupt: {0}")]
    Corrupt(String),
    #[error("made for {0}, not for this stream and partitioning")]
    Mismatch(String),
}

#[derive(Serialize, Deserialize)]
struct Body {
    stream: String,
    partition: u32,
    count: u32,
    covered: u64,
    entries: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    seq: u64,
    subject: String,
    version: u16,
    bytes: Vec<u8>,
}

/// A partition's state as of `covered`: the commits to apply, in stream order.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub partition: usize,
    pub count: usize,
    /// The last stream sequence the snapshot accounts for.
    pub covered: u64,
    pub commits: Vec<StoredCommit>,
}

impl Snapshot {
    /// The versioned bytes, for `stream`.
    pub fn encode(&self, stream: &str) -> Result<Vec<u8>, StoreError> {
        let mut entries = Vec::with_capacity(self.commits.len());
        for stored in &self.commits {
            let bytes = stored.commit.encode().map_err(|e| StoreError::Refused(e.to_string()))?;
            entries.push(Entry {
                seq: stored.stream_seq,
                subject: stored.subject.clone(),
                version: convo_wire::SCHEMA_VERSION,
                bytes,
            });
        }
        let body = Body {
            stream: stream.to_owned(),
            partition: self.partition as u32,
            count: self.count as u32,
            covered: self.covered,
            entries,
        };
        let body = postcard::to_allocvec(&body).map_err(|e| StoreError::Refused(e.to_string()))?;
        let mut out = Vec::with_capacity(body.len() + 42);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
        out.extend_from_slice(&Sha256::digest(&body));
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Reads a snapshot of `stream`'s partition `partition` of `count`;
    /// anything else is refused with the reason.
    pub fn decode(bytes: &[u8], stream: &str, partition: usize, count: usize) -> Result<Self, SnapshotError> {
        if bytes.len() < 42 || &bytes[..8] != MAGIC {
            return Err(SnapshotError::NotASnapshot);
        }
        let version = u16::from_be_bytes([bytes[8], bytes[9]]);
        if version != SNAPSHOT_VERSION {
            return Err(SnapshotError::UnknownVersion(version));
        }
        let (sum, body) = (&bytes[10..42], &bytes[42..]);
        if Sha256::digest(body).as_slice() != sum {
            return Err(SnapshotError::Corrupt("its checksum does not match its contents".into()));
        }
        let body: Body = postcard::from_bytes(body).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
        if body.stream != stream || body.partition as usize != partition || body.count as usize != count {
            return Err(SnapshotError::Mismatch(format!(
                "stream {}, partition {} of {}",
                body.stream, body.partition, body.count
            )));
        }
        let mut commits = Vec::with_capacity(body.entries.len());
        for entry in body.entries {
            let commit = convo_wire::decode(entry.version, &entry.bytes)
                .map_err(|e| SnapshotError::Corrupt(format!("the commit at {}: {e}", entry.seq)))?;
            commits.push(StoredCommit { stream_seq: entry.seq, subject: entry.subject, commit });
        }
        if commits.windows(2).any(|w| w[0].stream_seq >= w[1].stream_seq)
            || commits.last().is_some_and(|c| c.stream_seq > body.covered)
        {
            return Err(SnapshotError::Corrupt("its commits are out of order".into()));
        }
        Ok(Self { partition, count, covered: body.covered, commits })
    }
}

/// Where partition snapshots are kept.
#[derive(Clone)]
pub struct Snapshots {
    bucket: object_store::ObjectStore,
    stream: String,
}

impl std::fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshots").field("stream", &self.stream).finish()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// A snapshot's object name.
pub fn object_name(partition: usize, count: usize) -> String {
    format!("partition-{partition}-of-{count}")
}

/// The object store bucket of `stream`'s snapshots.
pub fn bucket_name(stream: &str) -> String {
    format!("{stream}_SNAPSHOTS")
}

/// The JetStream stream behind the bucket of `stream`'s snapshots.
pub fn backing_stream(stream: &str) -> String {
    format!("OBJ_{}", bucket_name(stream))
}

impl Snapshots {
    /// The bucket of `stream`'s snapshots, created if absent with `replicas`.
    pub async fn open(js: &async_nats::jetstream::Context, stream: &str, replicas: usize) -> Result<Self, StoreError> {
        let name = bucket_name(stream);
        let bucket = match js.get_object_store(&name).await {
            Ok(bucket) => bucket,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: name,
                    description: Some(format!("the engine's partition snapshots of stream {stream}")),
                    max_age: SNAPSHOT_MAX_AGE,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(unavailable)?,
        };
        Ok(Self { bucket, stream: stream.to_owned() })
    }

    /// Writes (replaces) a partition's snapshot; its size in bytes.
    pub async fn put(&self, snapshot: &Snapshot) -> Result<usize, StoreError> {
        let bytes = snapshot.encode(&self.stream)?;
        let meta = object_store::ObjectMetadata {
            name: object_name(snapshot.partition, snapshot.count),
            description: Some(format!(
                "partition {} of {} as of stream sequence {}",
                snapshot.partition, snapshot.count, snapshot.covered
            )),
            metadata: [
                ("covered".to_owned(), snapshot.covered.to_string()),
                ("commits".to_owned(), snapshot.commits.len().to_string()),
            ]
            .into(),
            ..Default::default()
        };
        self.bucket.put(meta, &mut bytes.as_slice()).await.map_err(unavailable)?;
        Ok(bytes.len())
    }

    /// Writes any bytes as a partition's snapshot, bypassing the encoding:
    /// for tests and tools that must put what a faulty or older writer could.
    pub async fn put_raw(&self, partition: usize, count: usize, bytes: &[u8]) -> Result<(), StoreError> {
        let name = object_name(partition, count);
        self.bucket.put(name.as_str(), &mut &bytes[..]).await.map_err(unavailable)?;
        Ok(())
    }

    /// A partition's snapshot: `Ok(None)` when there is none, `Err` with
    /// the reason when there is one that cannot be used.
    pub async fn get(&self, partition: usize, count: usize) -> Result<Option<Snapshot>, String> {
        use tokio::io::AsyncReadExt;
        let name = object_name(partition, count);
        let mut object = match self.bucket.get(&name).await {
            Ok(object) => object,
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {name}: {e}")),
        };
        let mut bytes = Vec::new();
        object.read_to_end(&mut bytes).await.map_err(|e| format!("cannot read {name}: {e}"))?;
        Snapshot::decode(&bytes, &self.stream, partition, count).map(Some).map_err(|e| format!("{name}: {e}"))
    }

    /// Every partition's snapshot: name, size, when written, and the stream sequence it covers.
    pub async fn list(&self) -> Result<Vec<(String, usize, String, u64)>, StoreError> {
        use futures::StreamExt;
        let mut list = self.bucket.list().await.map_err(unavailable)?;
        let mut out = Vec::new();
        while let Some(info) = list.next().await {
            let info = info.map_err(unavailable)?;
            let modified = info.modified.map(|m| m.to_string()).unwrap_or_default();
            let covered = info.metadata.get("covered").and_then(|c| c.parse().ok()).unwrap_or(0);
            out.push((info.name, info.size, modified, covered));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty(covered: u64) -> Snapshot {
        Snapshot { partition: 1, count: 3, covered, commits: Vec::new() }
    }

    #[test]
    fn a_snapshot_reads_back_and_anything_else_is_refused_with_the_reason() {
        let bytes = empty(42).encode("CONVO").unwrap();
        assert_eq!(Snapshot::decode(&bytes, "CONVO", 1, 3).unwrap(), empty(42));
        // Another stream or partitioning.
        assert!(matches!(Snapshot::decode(&bytes, "OTHER", 1, 3), Err(SnapshotError::Mismatch(_))));
        assert!(matches!(Snapshot::decode(&bytes, "CONVO", 1, 4), Err(SnapshotError::Mismatch(_))));
        // A version this build does not know.
        let mut newer = bytes.clone();
        newer[8..10].copy_from_slice(&(SNAPSHOT_VERSION + 1).to_be_bytes());
        assert_eq!(Snapshot::decode(&newer, "CONVO", 1, 3), Err(SnapshotError::UnknownVersion(SNAPSHOT_VERSION + 1)));
        // A flipped bit, a cut, garbage.
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(Snapshot::decode(&flipped, "CONVO", 1, 3), Err(SnapshotError::Corrupt(_))));
        assert!(matches!(Snapshot::decode(&bytes[..bytes.len() - 1], "CONVO", 1, 3), Err(SnapshotError::Corrupt(_))));
        assert_eq!(Snapshot::decode(b"hello", "CONVO", 1, 3), Err(SnapshotError::NotASnapshot));
    }
}
