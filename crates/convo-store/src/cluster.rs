//! The engine instances sharing a stream's partitions, in the stream's lease
//! bucket (`<STREAM>_LEASE`, see [`crate::lease`]):
//!
//! - `instance.<id>`: each instance's heartbeat (JSON: who it is, where its
//!   gateway listens, what it owns and how far its partitions have read),
//!   written every [`crate::lease::LEASE_RENEW_MS`], gone
//!   [`crate::lease::LEASE_TTL_MS`] after the last one;
//! - `partition.<n>`: the lease of partition `n`, its value the holder's
//!   instance id.
//!
//! Nothing here decides who should own what; the engine's coordinator does,
//! from [`Directory::members`].

use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;

use crate::StoreError;
use crate::lease::{Lease, LeaseError};

const INSTANCE: &str = "instance.";
const PARTITION: &str = "partition.";

/// One instance as its last heartbeat described it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub id: String,
    pub info: Value,
    /// Since the heartbeat was written (by the server's clock against ours).
    pub age: Duration,
}

/// A partition's lease as the bucket holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Owner {
    pub partition: usize,
    /// The holder's instance id.
    pub instance: String,
    /// Since the lease was last renewed.
    pub age: Duration,
}

/// A change the directory's watcher saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryEvent {
    /// `key` written, holding `value`, at `revision`, `age` ago (by the server's clock).
    Put { key: String, value: Vec<u8>, revision: u64, age: Duration },
    /// `key` deleted (a release, a graceful leave).
    Gone { key: String },
}

/// Why a lease operation of the ownership driver did not succeed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KeyError {
    /// Another holder has it (`None`: nobody; the key is gone).
    #[error("held by {}", .0.as_deref().unwrap_or("nobody"))]
    Held(Option<String>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The stream's directory of instances and partition leases.
#[derive(Debug, Clone)]
pub struct Directory {
    kv: kv::Store,
    stream: String,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn age_of(entry: &kv::Entry) -> Duration {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let created = Duration::from_nanos(entry.created.unix_timestamp_nanos().max(0) as u64);
    now.saturating_sub(created)
}

impl Directory {
    pub fn new(kv: kv::Store, stream: &str) -> Self {
        Self { kv, stream: stream.to_owned() }
    }

    /// Writes this instance's heartbeat.
    pub async fn heartbeat(&self, id: &str, info: &Value) -> Result<(), StoreError> {
        let body = serde_json::to_vec(info).unwrap_or_default();
        self.kv.put(format!("{INSTANCE}{id}"), Bytes::from(body)).await.map_err(unavailable)?;
        Ok(())
    }

    /// Removes this instance's heartbeat (a graceful stop).
    pub async fn leave(&self, id: &str) -> Result<(), StoreError> {
        self.kv.delete(format!("{INSTANCE}{id}")).await.map_err(unavailable)
    }

    async fn entries(&self, prefix: &str) -> Result<Vec<(String, kv::Entry)>, StoreError> {
        let mut keys = self.kv.keys().await.map_err(unavailable)?;
        let mut out = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(unavailable)?;
            let Some(name) = key.strip_prefix(prefix) else { continue };
            // A direct get may be answered by a replica that has not yet seen a
            // key the listing (from the leader) holds: read that one from the leader.
            let entry = match self.kv.entry(&key).await.map_err(unavailable)? {
                Some(entry) => Some(entry),
                None => self.leader_entry(&key).await?,
            };
            if let Some(entry) = entry
                && entry.operation == kv::Operation::Put
            {
                out.push((name.to_owned(), entry));
            }
        }
        Ok(out)
    }

    /// A key's last entry as the bucket's leader holds it (`None`: no such key).
    async fn leader_entry(&self, key: &str) -> Result<Option<kv::Entry>, StoreError> {
        let subject = format!("{}{key}", self.kv.prefix);
        let message = match self.kv.stream.get_last_raw_message_by_subject(&subject).await {
            Ok(message) => message,
            Err(e) if e.kind() == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                return Ok(None);
            }
            Err(e) => return Err(unavailable(e)),
        };
        let operation = match message.headers.get("KV-Operation").map(|v| v.as_str()) {
            Some("DEL") => kv::Operation::Delete,
            Some("PURGE") => kv::Operation::Purge,
            _ => kv::Operation::Put,
        };
        Ok(Some(kv::Entry {
            bucket: self.kv.name.clone(),
            key: key.to_owned(),
            value: message.payload,
            revision: message.sequence,
            delta: 0,
            created: message.time,
            operation,
            seen_current: true,
        }))
    }

    /// The instances alive now (their heartbeat not expired), by id.
    pub async fn members(&self) -> Result<Vec<Member>, StoreError> {
        let mut members: Vec<Member> = self
            .entries(INSTANCE)
            .await?
            .into_iter()
            .map(|(id, entry)| Member {
                id,
                info: serde_json::from_slice(&entry.value).unwrap_or(Value::Null),
                age: age_of(&entry),
            })
            .collect();
        members.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(members)
    }

    /// The partitions' leases held now, by partition.
    pub async fn owners(&self) -> Result<Vec<Owner>, StoreError> {
        let mut owners: Vec<Owner> = self
            .entries(PARTITION)
            .await?
            .into_iter()
            .filter_map(|(n, entry)| {
                Some(Owner {
                    partition: n.parse().ok()?,
                    instance: String::from_utf8_lossy(&entry.value).into_owned(),
                    age: age_of(&entry),
                })
            })
            .collect();
        owners.sort_by_key(|o| o.partition);
        Ok(owners)
    }

    /// Takes the lease of a role one instance plays for the whole stream
    /// (`role.<name>`: the JSON stream and the webhooks) for instance `id`.
    pub async fn take_role(&self, name: &str, id: &str) -> Result<Lease, LeaseError> {
        Lease::take(&self.kv, &self.stream, &format!("role.{name}"), id).await
    }

    /// Who plays each role now.
    pub async fn roles(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self
            .entries("role.")
            .await?
            .into_iter()
            .map(|(name, entry)| (name, String::from_utf8_lossy(&entry.value).into_owned()))
            .collect())
    }

    /// Follows every key: what is there now, then each change, until dropped
    /// (one consumer for the watcher's life, not one per look).
    pub async fn watch(
        &self,
    ) -> Result<impl futures::Stream<Item = Result<DirectoryEvent, StoreError>> + Send + use<>, StoreError> {
        let watch = self.kv.watch_all_from_revision(1).await.map_err(unavailable)?;
        Ok(watch.map(|entry| {
            let entry = entry.map_err(unavailable)?;
            Ok(match entry.operation {
                kv::Operation::Put => DirectoryEvent::Put {
                    age: age_of(&entry),
                    key: entry.key,
                    value: entry.value.to_vec(),
                    revision: entry.revision,
                },
                kv::Operation::Delete | kv::Operation::Purge => DirectoryEvent::Gone { key: entry.key },
            })
        }))
    }

    /// The holder a key names now (`None`: the key is gone).
    async fn holder_of(&self, key: &str) -> Option<String> {
        let entry = self.kv.entry(key).await.ok().flatten()?;
        (entry.operation == kv::Operation::Put).then(|| String::from_utf8_lossy(&entry.value).into_owned())
    }

    /// Takes `key` for `holder`: created if absent, or — `over` a dead
    /// holder's revision — written over it; its revision.
    pub async fn take_key(&self, key: &str, holder: &str, over: Option<u64>) -> Result<u64, KeyError> {
        let value = Bytes::from(holder.to_owned());
        if let Some(revision) = over
            && let Ok(revision) = self.kv.update(key, value.clone(), revision).await
        {
            return Ok(revision);
        }
        match self.kv.create(key, value).await {
            Ok(revision) => Ok(revision),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Err(KeyError::Held(self.holder_of(key).await)),
            Err(e) => Err(KeyError::Store(unavailable(e))),
        }
    }

    /// Renews `key` at `revision`; its new revision.
    pub async fn renew_key(&self, key: &str, holder: &str, revision: u64) -> Result<u64, KeyError> {
        let value = Bytes::from(holder.to_owned());
        match self.kv.update(key, value.clone(), revision).await {
            Ok(revision) => Ok(revision),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                // Still ours at another revision: an earlier renewal's answer was lost on its way back.
                match self.kv.entry(key).await {
                    Ok(Some(entry)) if entry.operation == kv::Operation::Put && entry.value == value => {
                        self.kv.update(key, value, entry.revision).await.map_err(|e| KeyError::Store(unavailable(e)))
                    }
                    Ok(Some(entry)) if entry.operation == kv::Operation::Put => {
                        Err(KeyError::Held(Some(String::from_utf8_lossy(&entry.value).into_owned())))
                    }
                    Ok(_) => Err(KeyError::Held(None)),
                    Err(e) => Err(KeyError::Store(unavailable(e))),
                }
            }
            Err(e) => Err(KeyError::Store(unavailable(e))),
        }
    }

    /// Gives `key` up, if `holder` still holds it: at `revision`, or at a
    /// later one of its own (a renewal crossed the release, or its answer was lost).
    pub async fn release_key(&self, key: &str, holder: &str, revision: u64) -> Result<(), StoreError> {
        if self.kv.delete_expect_revision(key, Some(revision)).await.is_ok() {
            return Ok(());
        }
        match self.kv.entry(key).await.map_err(unavailable)? {
            Some(entry) if entry.operation == kv::Operation::Put && entry.value == holder.as_bytes() => {
                self.kv.delete_expect_revision(key, Some(entry.revision)).await.map_err(unavailable)
            }
            _ => Ok(()), // gone, or another instance's now: nothing of ours to give up
        }
    }

    /// Takes partition `index`'s lease for instance `id`.
    pub async fn take(&self, index: usize, id: &str) -> Result<Lease, LeaseError> {
        Lease::take(&self.kv, &self.stream, &format!("{PARTITION}{index}"), id).await
    }
}
