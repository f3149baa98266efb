//! Leases in a JetStream KV bucket (`<STREAM>_LEASE`): a key created only
//! if absent, renewed by revision, expiring [`LEASE_TTL_MS`] after its last
//! renewal (the bucket's max age, which is each key's time to live since
//! its last write). Engine instances hold one per partition they decide for
//! (`partition.<n>`, see [`crate::cluster`]). The holder stops deciding
//! before its lease can have expired, measured on its own monotonic clock
//! (see [`Lease::valid_for`]); another takes the key only once it is gone
//! (released, or expired), so two holders never overlap.

use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};
use bytes::Bytes;

use crate::StoreError;

/// How long a lease lives without renewal.
pub const LEASE_TTL_MS: u64 = 10_000;
/// How often the holder renews it.
pub const LEASE_RENEW_MS: u64 = 2_000;
/// The holder stops this long before the lease could expire (clock drift,
/// a slow renewal in flight).
pub const LEASE_MARGIN_MS: u64 = 3_000;

/// Why a lease could not be taken or kept.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LeaseError {
    #[error("{key} of stream {stream} is held by {holder} (if it died, its lease expires within {} s)", LEASE_TTL_MS / 1000)]
    Held { stream: String, key: String, holder: String },
    #[error("{key} of stream {stream} was taken over by {holder}; this instance stops deciding for it")]
    Lost { stream: String, key: String, holder: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A held lease.
#[derive(Debug)]
pub struct Lease {
    kv: kv::Store,
    stream: String,
    key: String,
    holder: String,
    revision: u64,
    /// When the last successful renewal was sent (monotonic).
    renewed: Instant,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl Lease {
    /// The bucket of `stream`'s leases, created if absent with `replicas`.
    pub async fn bucket(
        js: &async_nats::jetstream::Context,
        stream: &str,
        replicas: usize,
    ) -> Result<kv::Store, StoreError> {
        let config = kv::Config {
            bucket: format!("{stream}_LEASE"),
            description: format!("the engine instances' leases on stream {stream}"),
            history: 1,
            max_age: Duration::from_millis(LEASE_TTL_MS),
            num_replicas: replicas,
            ..Default::default()
        };
        match js.get_key_value(config.bucket.clone()).await {
            Ok(kv) => {
                // Opened as it is only if it keeps what the code assumes: keys living LEASE_TTL_MS.
                let mut stream = js.get_stream(format!("KV_{}", config.bucket)).await.map_err(unavailable)?;
                let info = stream.info().await.map_err(unavailable)?;
                if info.config.max_age != config.max_age {
                    return Err(StoreError::Refused(format!(
                        "the lease bucket {} keeps keys {:?}, not the {:?} this engine's leases and heartbeats assume; \
                         delete it with the engines stopped (`nats kv del {}`) and start again",
                        config.bucket, info.config.max_age, config.max_age, config.bucket
                    )));
                }
                Ok(kv)
            }
            Err(_) => js.create_key_value(config).await.map_err(unavailable),
        }
    }

    /// Takes `key` in a lease bucket of `stream` for `holder`, or says who holds it.
    pub async fn take(kv: &kv::Store, stream: &str, key: &str, holder: &str) -> Result<Self, LeaseError> {
        let sent = Instant::now();
        let lease = |revision| Self {
            kv: kv.clone(),
            stream: stream.to_owned(),
            key: key.to_owned(),
            holder: holder.to_owned(),
            revision,
            renewed: sent,
        };
        match kv.create(key, Bytes::from(holder.to_owned())).await {
            Ok(revision) => Ok(lease(revision)),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                let current = kv.get(key).await.ok().flatten();
                let holder = current.map_or("unknown".into(), |b| String::from_utf8_lossy(&b).into_owned());
                Err(LeaseError::Held { stream: stream.to_owned(), key: key.to_owned(), holder })
            }
            Err(e) => Err(unavailable(e).into()),
        }
    }

    /// The key this lease holds.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Renews the lease; an error of kind [`LeaseError::Lost`] means another
    /// engine has it now, and this one must stop deciding at once.
    pub async fn renew(&mut self) -> Result<(), LeaseError> {
        let sent = Instant::now();
        match self.kv.update(&self.key, Bytes::from(self.holder.clone()), self.revision).await {
            Ok(revision) => {
                self.revision = revision;
                self.renewed = sent;
                Ok(())
            }
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                let current = self.kv.get(&self.key).await.ok().flatten();
                let holder = current.map_or("nobody".into(), |b| String::from_utf8_lossy(&b).into_owned());
                Err(LeaseError::Lost { stream: self.stream.clone(), key: self.key.clone(), holder })
            }
            Err(e) => Err(unavailable(e).into()),
        }
    }

    /// How much longer this holder may decide (zero: stop now). Counted
    /// from when the last successful renewal was *sent*, less a margin.
    pub fn valid_for(&self) -> Duration {
        let life = Duration::from_millis(LEASE_TTL_MS - LEASE_MARGIN_MS);
        life.saturating_sub(self.renewed.elapsed())
    }

    /// Gives the lease up (a graceful stop): another engine may start at once.
    pub async fn release(self) -> Result<(), StoreError> {
        self.kv.delete_expect_revision(&self.key, Some(self.revision)).await.map_err(unavailable)
    }
}
