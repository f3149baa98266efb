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
    /// Each member's last heartbeat: when, at which revision.
    members: BTreeMap<String, (u64, u64)>,
    leases: BTreeMap<Resource, Entry>,
}

impl Directory {
    pub fn new(ttl_ms: u64) -> Self {
        Self { ttl_ms, revision: 0, members: BTreeMap::new(), leases: BTreeMap::new() }
    }

    /// Forgets what expired by `now` (the bucket's max_age).
    fn expire(&mut self, now: u64) {
        let ttl = self.ttl_ms;
        self.members.retain(|_, (at, _)| now.saturating_sub(*at) < ttl);
        self.leases.retain(|_, e| now.saturating_sub(e.written_ms) < ttl);
    }

    fn next_revision(&mut self) -> u64 {
        self.revision += 1;
        self.revision
    }

    pub fn heartbeat(&mut self, instance: &str, now: u64) {
        self.expire(now);
        let revision = self.next_revision();
        self.members.insert(instance.to_owned(), (now, revision));
    }

    /// Creates the lease (`over: None`) or replaces a dead holder's at its revision.
    pub fn take(&mut self, resource: &Resource, instance: &str, over: Option<u64>, now: u64) -> Result<u64, TakeError> {
        self.expire(now);
        let current = self.leases.get(resource);
        // As the store does: an update at the dead holder's revision, else a create (the key expired).
        let allowed = match (current, over) {
            (None, _) => true,
            (Some(entry), Some(revision)) => entry.revision == revision,
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

    pub fn renew(&mut self, resource: &Resource, instance: &str, _revision: u64, now: u64) -> Result<u64, RenewError> {
        self.expire(now);
        match self.leases.get(resource) {
            None => Err(RenewError::Lost { holder: None }),
            // Ours at another revision is still ours (an earlier renewal's answer was lost), as in the store.
            Some(entry) if entry.holder != instance => Err(RenewError::Lost { holder: Some(entry.holder.clone()) }),
            Some(_) => {
                let revision = self.next_revision();
                self.leases.insert(resource.clone(), Entry { holder: instance.to_owned(), revision, written_ms: now });
                Ok(revision)
            }
        }
    }

    /// Gives the lease up if `instance` holds it (at `revision` or a later
    /// revision of its own), as the store does.
    pub fn release(&mut self, resource: &Resource, instance: &str, now: u64) {
        self.expire(now);
        if self.leases.get(resource).is_some_and(|e| e.holder == instance) {
            self.next_revision();
            self.leases.remove(resource);
        }
    }

    /// What a watcher sees: each member with its heartbeat's age, the leases.
    pub fn snapshot(&mut self, now: u64) -> Snapshot {
        self.expire(now);
        Snapshot {
            members: self.members.iter().map(|(id, (_, revision))| (id.clone(), *revision)).collect(),
            leases: self.leases.iter().map(|(r, e)| (r.clone(), (e.holder.clone(), e.revision))).collect(),
        }
    }

    /// Who holds `resource`, if anyone (for the auditor's view).
    pub fn holder(&self, resource: &Resource) -> Option<&str> {
        self.leases.get(resource).map(|e| e.holder.as_str())
    }
}

/// The directory as sent to an instance: each member's heartbeat by its
/// revision (each instance has its own clock, and notes when it saw it).
#[derive(Debug, Clone)]
pub struct Snapshot {
    members: BTreeMap<String, u64>,
    leases: BTreeMap<Resource, (String, u64)>,
}

impl Snapshot {
    /// The view on an instance whose clock reads `now`, as its watcher
    /// keeps it: a heartbeat is seen when a new revision of it arrives
    /// (`seen` holds each member's last revision and when it came).
    pub fn view(&self, now: u64, seen: &mut BTreeMap<String, (u64, u64)>) -> DirectoryView {
        seen.retain(|id, _| self.members.contains_key(id));
        for (id, revision) in &self.members {
            let entry = seen.entry(id.clone()).or_insert((*revision, now));
            if entry.0 < *revision {
                *entry = (*revision, now);
            }
        }
        DirectoryView {
            members: seen.iter().map(|(id, (_, at))| (id.clone(), *at)).collect(),
            leases: self.leases.clone(),
        }
    }
}
