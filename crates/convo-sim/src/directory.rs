//! The simulated directory the fault simulator's instances share: the KV
//! bucket of heartbeats and leases as JetStream KV keeps it (revisions,
//! create-if-absent, update-at-revision, keys that expire `ttl_ms` after
//! their last write), on the simulator's clock. Its answers go back to the
//! instances through the simulator's network (delayed, reordered, lost).

use std::collections::BTreeMap;

use convo_engine::ownership::{DirectoryView, RenewError, Resource, TakeError};

/// A key's value: who wrote it, at which revision, when.
#[derive(Debug, Clone)]
struct Entry {
    holder: String,
    revision: u64,
    written_ms: u64,
}

/// The bucket: members (heartbeats) and leases.
#[derive(Debug)]
pub struct Directory {
    ttl_ms: u64,
    revision: u64,
    members: BTreeMap<String, u64>,
    leases: BTreeMap<Resource, Entry>,
}

impl Directory {
    pub fn new(ttl_ms: u64) -> Self {
        Self { ttl_ms, revision: 0, members: BTreeMap::new(), leases: BTreeMap::new() }
    }

    /// Forgets what expired by `now` (the bucket's max_age).
    fn expire(&mut self, now: u64) {
        let ttl = self.ttl_ms;
        self.members.retain(|_, at| now.saturating_sub(*at) < ttl);
        self.leases.retain(|_, e| now.saturating_sub(e.written_ms) < ttl);
    }

    fn next_revision(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    pub fn heartbeat(&mut self, instance: &str, now: u64) {
        self.expire(now);
        self.next_revision();
        self.members.insert(instance.to_owned(), now);
    }

    /// Creates the lease (`over: None`) or replaces a dead holder's at its revision.
    pub fn take(&mut self, resource: &Resource, instance: &str, over: Option<u64>, now: u64) -> Result<u64, TakeError> {
        self.expire(now);
        let current = self.leases.get(resource);
        let allowed = match (current, over) {
            (None, None) => true,
            (Some(entry), Some(revision)) => entry.revision == revision,
            // Over a revision that expired meanwhile: the key is gone, an update fails.
            (None, Some(_)) => false,
            (Some(_), None) => false,
        };
        if !allowed {
            let holder = current.map_or_else(|| "nobody".to_owned(), |e| e.holder.clone());
            return Err(TakeError::Held { holder });
        }
        let revision = self.next_revision();
        self.leases.insert(resource.clone(), Entry { holder: instance.to_owned(), revision, written_ms: now });
        Ok(revision)
    }

    pub fn renew(&mut self, resource: &Resource, instance: &str, revision: u64, now: u64) -> Result<u64, RenewError> {
        self.expire(now);
        match self.leases.get(resource) {
            None => Err(RenewError::Lost { holder: None }),
            Some(entry) if entry.holder != instance || entry.revision != revision => {
                Err(RenewError::Lost { holder: Some(entry.holder.clone()) })
            }
            Some(_) => {
                let revision = self.next_revision();
                self.leases.insert(resource.clone(), Entry { holder: instance.to_owned(), revision, written_ms: now });
                Ok(revision)
            }
        }
    }

    pub fn release(&mut self, resource: &Resource, revision: u64, now: u64) {
        self.expire(now);
        if self.leases.get(resource).is_some_and(|e| e.revision == revision) {
            self.next_revision();
            self.leases.remove(resource);
        }
    }

    /// What a watcher sees: each member with its heartbeat's age, the leases.
    pub fn snapshot(&mut self, now: u64) -> Snapshot {
        self.expire(now);
        Snapshot {
            members: self.members.iter().map(|(id, at)| (id.clone(), now - at)).collect(),
            leases: self.leases.iter().map(|(r, e)| (r.clone(), (e.holder.clone(), e.revision))).collect(),
        }
    }

    /// Who holds `resource`, if anyone (for the auditor's view).
    pub fn holder(&self, resource: &Resource) -> Option<&str> {
        self.leases.get(resource).map(|e| e.holder.as_str())
    }
}

/// The directory as sent to an instance: ages, not instants (each instance
/// has its own clock).
#[derive(Debug, Clone)]
pub struct Snapshot {
    members: BTreeMap<String, u64>,
    leases: BTreeMap<Resource, (String, u64)>,
}

impl Snapshot {
    /// The view on an instance whose clock reads `now`.
    pub fn view(&self, now: u64) -> DirectoryView {
        DirectoryView {
            members: self.members.iter().map(|(id, age)| (id.clone(), now.saturating_sub(*age))).collect(),
            leases: self.leases.clone(),
        }
    }
}
