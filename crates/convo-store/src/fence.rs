//! The partition fence (DESIGN.md, "The service and its ownership"): a lease
//! alone never makes a lone writer — an owner paused through its lease's
//! expiry wakes up believing it still holds it — so the log itself refuses a
//! deposed owner's appends.
//!
//! Each partition has a fence subject in the commits' stream,
//! `<prefix>.~fence.<partition>`. An owner that takes the partition first
//! publishes a marker there, expecting the marker it read last (so two
//! takers cannot both win); the marker's stream sequence is its **epoch**.
//! Every commit it then appends carries `Nats-Expected-Last-Subject-Sequence:
//! <epoch>` with `…-Subject: <prefix>.~fence.<partition>`: the server stores
//! it only while no newer marker exists. Its successor's marker therefore
//! refuses every append of the deposed owner that reaches the server after
//! it — in flight, buffered before a pause, or decided after one — so no
//! commit of a deposed owner follows its successor's first (the successor
//! recovers only after its marker is stored).
//!
//! Commits do not move the fence, so an owner's appends stay pipelined. The
//! expectation header pair is spent on the fence, not on the aggregate:
//! within one owner the partition machine keeps one command in flight per
//! aggregate, and an append whose outcome is unknown (a timeout, a lost
//! acknowledgement) makes the owner **advance its own fence** before it reads
//! any aggregate back ([`Fence::dirty`]): whatever of its old epoch is still on
//! the way is refused, so what the reload sees is final. (JetStream's atomic
//! batches could carry both checks in one write; measured on this machine a
//! batch of a guard and a commit per append stores ~800 commits/s against
//! ~26,000 single appends, so they wait for group commit.)
//!
//! Markers are on a 3-token subject, outside the commits' `<prefix>.*.*.>`:
//! readers of the log never see them, and the log's end is the last commit's.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The subject token of the fences.
pub const FENCE_TOKEN: &str = "~fence";

/// A partition's fence subject under `prefix`.
pub fn subject(prefix: &str, partition: usize) -> String {
    format!("{prefix}.{FENCE_TOKEN}.{partition}")
}

/// Whether `subject` is a fence's (not a commit's).
pub fn is_fence(prefix: &str, subject: &str) -> bool {
    subject
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|rest| rest.strip_prefix(FENCE_TOKEN).is_some_and(|n| n.starts_with('.') && !n[1..].contains('.')))
}

/// One owner's hold on a partition's fence: the epoch its appends carry,
/// and whether it must advance the fence before it reads anything back.
#[derive(Debug)]
pub struct Fence {
    pub partition: usize,
    /// Who holds it (written in the markers).
    pub holder: String,
    epoch: AtomicU64,
    dirty: AtomicBool,
    /// One advance at a time.
    pub(crate) advancing: tokio::sync::Mutex<()>,
}

impl Fence {
    /// A hold at `epoch` (the sequence of the marker this holder stored).
    pub fn new(partition: usize, holder: &str, epoch: u64) -> Self {
        Self {
            partition,
            holder: holder.to_owned(),
            epoch: AtomicU64::new(epoch),
            dirty: AtomicBool::new(false),
            advancing: tokio::sync::Mutex::new(()),
        }
    }

    /// The epoch appends carry now.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub(crate) fn set_epoch(&self, epoch: u64) {
        self.epoch.store(epoch, Ordering::Release);
    }

    /// An append's outcome is unknown: the fence must move before the next read-back.
    pub fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    /// Whether the fence must move before the next read-back.
    pub fn dirty(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }

    pub(crate) fn clean(&self) {
        self.dirty.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_subjects_are_not_commit_subjects() {
        assert_eq!(subject("convo", 3), "convo.~fence.3");
        assert!(is_fence("convo", "convo.~fence.3"));
        assert!(!is_fence("convo", "convo.acme.conv.c1.opened"));
        assert!(!is_fence("convo", "convo.~fence.3.x"));
        assert!(!is_fence("convox", "convo.~fence.3"));
    }
}
