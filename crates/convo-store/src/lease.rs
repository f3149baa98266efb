//! The engine's lease on a stream: one key in a JetStream KV bucket, created
//! only if absent, renewed by revision, expiring [`LEASE_TTL_MS`] after its
//! last renewal (the bucket's max age). Until partitions are shared between
//! instances, a second `convo serve` on the same prefix finds the key and
//! refuses to start: it would decide from a catalog and a floor it does not
//! follow. The holder stops deciding before its lease can have expired,
//! measured on its own monotonic clock (see [`Lease::valid_for`]).

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

const KEY: &str = "engine";

/// Why a lease could not be taken or kept.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LeaseError {
    #[error(
        "another engine holds the lease on stream {stream} ({holder}); two engines on one stream would decide from \
         each other's stale state. Stop it first, or use another --prefix. If it died, its lease expires within {} s",
        LEASE_TTL_MS / 1000
    )]
    Held { stream: String, holder: String },
    #[error("the lease on stream {stream} was taken over by another engine ({holder}); this one stops deciding")]
    Lost { stream: String, holder: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A held lease.
#[derive(Debug)]
pub struct Lease {
    kv: kv::Store,
    stream: String,
    holder: String,
    revision: u64,
    /// When the last successful renewal was sent (monotonic).
    renewed: Instant,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl Lease {
    /// Takes the lease on `stream` for `holder` (a readable description:
    /// host, pid, start time), or says who holds it.
    pub async fn acquire(js: &async_nats::jetstream::Context, stream: &str, holder: &str) -> Result<Self, LeaseError> {
        let config = kv::Config {
            bucket: format!("{stream}_LEASE"),
            description: format!("the engine's lease on stream {stream}"),
            history: 1,
            max_age: Duration::from_millis(LEASE_TTL_MS),
            ..Default::default()
        };
        let kv = match js.get_key_value(config.bucket.clone()).await {
            Ok(kv) => kv,
            Err(_) => js.create_key_value(config).await.map_err(unavailable)?,
        };
        let sent = Instant::now();
        match kv.create(KEY, Bytes::from(holder.to_owned())).await {
            Ok(revision) => {
                Ok(Self { kv, stream: stream.to_owned(), holder: holder.to_owned(), revision, renewed: sent })
            }
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                let current = kv.get(KEY).await.ok().flatten();
                let holder = current.map_or("unknown".into(), |b| String::from_utf8_lossy(&b).into_owned());
                Err(LeaseError::Held { stream: stream.to_owned(), holder })
            }
            Err(e) => Err(unavailable(e).into()),
        }
    }

    /// Renews the lease; an error of kind [`LeaseError::Lost`] means another
    /// engine has it now, and this one must stop deciding at once.
    pub async fn renew(&mut self) -> Result<(), LeaseError> {
        let sent = Instant::now();
        match self.kv.update(KEY, Bytes::from(self.holder.clone()), self.revision).await {
            Ok(revision) => {
                self.revision = revision;
                self.renewed = sent;
                Ok(())
            }
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                let current = self.kv.get(KEY).await.ok().flatten();
                let holder = current.map_or("nobody".into(), |b| String::from_utf8_lossy(&b).into_owned());
                Err(LeaseError::Lost { stream: self.stream.clone(), holder })
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
        self.kv.delete_expect_revision(KEY, Some(self.revision)).await.map_err(unavailable)
    }
}
