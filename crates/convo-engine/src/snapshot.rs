//! Building a partition's snapshot ([`convo_store::snapshot`]): the last
//! snapshot, folded forward with the log's tail. What it keeps is what
//! recovery needs in memory: every commit of the partition's catalogs and
//! agents, and of its conversations not closed (a closed conversation is
//! read back from the log if a command ever comes for it, as after an
//! eviction), and the closing commit of a closed conversation whose content
//! awaits its expiry (SPEC §13: recovery queues the expiry from it without
//! holding the conversation), or that made a contact for a new handle the
//! book has not recorded yet (recovery then owes the book that contact, as
//! the engine did). Recovery applies the snapshot's commits as it
//! applies the log, so the state it rebuilds is the one the engine's own
//! rules make.

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;

use convo_domain::conversation::ConversationEvent;
use convo_domain::{AccountId, ContactEvent, ContactId};
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
    /// Closed conversations whose content awaits expiry, or whose closing
    /// commit made a contact the book has not recorded yet: that commit.
    retained: BTreeMap<Key, StoredCommit>,
    /// Contacts the book has recorded.
    defined: BTreeSet<(AccountId, ContactId)>,
    /// Retained closing commits that made a contact, by that contact: kept
    /// until the book records it.
    owed: BTreeMap<(AccountId, ContactId), BTreeSet<Key>>,
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
            defined: BTreeSet::new(),
            owed: BTreeMap::new(),
        };
        if let Some(snapshot) = previous {
            builder.covered = snapshot.covered;
            // In stream order, as the log was folded: a contact recorded after the
            // commit that made it is what lets that commit go.
            for stored in snapshot.commits {
                builder.note_defined(&stored);
                let key = (stored.commit.account.clone(), stored.commit.stream.clone());
                if closes(&stored) {
                    builder.note_owed(&key, &stored);
                    builder.retained.insert(key, stored);
                } else {
                    builder.aggregates.entry(key).or_default().push(stored);
                }
            }
        }
        builder
    }

    /// Notes the contacts a contact-book commit records; a closing commit
    /// kept only because it made one of them goes.
    fn note_defined(&mut self, stored: &StoredCommit) {
        if stored.commit.stream != StreamRef::Contacts {
            return;
        }
        for e in &stored.commit.events {
            if let Event::Contact(ContactEvent::ContactDefined(spec)) = &e.event {
                let contact = (stored.commit.account.clone(), spec.id.clone());
                for key in self.owed.remove(&contact).unwrap_or_default() {
                    if self.retained.get(&key).is_some_and(|kept| !crate::core::awaits_expiry(&kept.commit)) {
                        self.retained.remove(&key);
                    }
                }
                self.defined.insert(contact);
            }
        }
    }

    /// Whether a closing commit made a contact the book has not recorded
    /// yet (noted, so the book's record of it lets the commit go).
    fn note_owed(&mut self, key: &Key, stored: &StoredCommit) -> bool {
        let account = &stored.commit.account;
        let owed: Vec<ContactId> = (stored.commit.requested_contacts())
            .map(|(contact, _)| contact)
            .filter(|c| !self.defined.contains(&(account.clone(), (*c).clone())))
            .cloned()
            .collect();
        for contact in &owed {
            self.owed.entry((account.clone(), contact.clone())).or_default().insert(key.clone());
        }
        !owed.is_empty()
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
        self.note_defined(&stored);
        if let StreamRef::Conversation(_) = commit.stream {
            if closes(&stored) {
                self.aggregates.remove(&key);
                self.reload.remove(&key);
                let owes = self.note_owed(&key, &stored);
                if crate::core::awaits_expiry(&stored.commit) || owes {
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

#[cfg(test)]
mod tests {
    use super::*;
    use convo_domain::contact::{ContactSpec, Identity};
    use convo_domain::conversation::CloseReason;
    use convo_domain::{ChannelId, CommandId, ConversationId, Recorded, Timestamp};
    use convo_wire::Commit;

    fn stored(seq: u64, commit: Commit) -> StoredCommit {
        StoredCommit { stream_seq: seq, subject: String::new(), commit }
    }

    fn account() -> AccountId {
        AccountId::new("acme").unwrap()
    }

    /// An opening closed at once (out of hours) by a handle no contact
    /// held: it made contact `_ct-1`.
    fn opened_and_closed() -> Commit {
        let record = |seq: u64, event: ConversationEvent| Recorded {
            seq,
            at: Timestamp::from_millis(1_000),
            command: CommandId::new("m-1").unwrap(),
            actor: convo_domain::Actor::system("gateway"),
            event,
        };
        let requested = ConversationEvent::ContactRequested {
            contact: ContactId::new("_ct-1").unwrap(),
            channel: ChannelId::new("wa").unwrap(),
            handle: "+57300".into(),
            name: None,
        };
        let closed = ConversationEvent::ConversationClosed {
            reason: CloseReason::OutOfHours,
            typification: None,
            agent: None,
            segment: 0,
        };
        let stream = StreamRef::Conversation(ConversationId::new("c1").unwrap());
        Commit::new(&account(), stream, None, vec![record(1, requested), record(2, closed)]).unwrap()
    }

    fn defined() -> Commit {
        let spec = ContactSpec {
            id: ContactId::new("_ct-1").unwrap(),
            name: "+57300".into(),
            identities: vec![Identity { channel: ChannelId::new("wa").unwrap(), handle: "+57300".into() }],
            attributes: Default::default(),
            labels: Vec::new(),
        };
        let record = Recorded {
            seq: 1,
            at: Timestamp::from_millis(1_001),
            command: CommandId::new("_contact-1").unwrap(),
            actor: convo_domain::Actor::system("contacts"),
            event: ContactEvent::ContactDefined(spec),
        };
        Commit::new(&account(), StreamRef::Contacts, None, vec![record]).unwrap()
    }

    /// A closed conversation whose commit made a contact the book has not
    /// recorded yet stays in the snapshot (recovery owes the book that
    /// contact), until the book's record of it, folded later, lets it go.
    #[tokio::test]
    async fn a_closing_commit_that_made_a_contact_stays_until_the_book_records_it() {
        let store = convo_store::MemoryStore::new("convo");
        let mut builder = Builder::new(None, 0, 1);
        builder.fold(Ok(stored(1, opened_and_closed())));
        let snapshot = builder.finish(&store).await.unwrap();
        assert_eq!(snapshot.commits.len(), 1, "kept: the book does not have the contact yet");
        let mut builder = Builder::new(Some(snapshot), 0, 1);
        builder.fold(Ok(stored(2, defined())));
        let snapshot = builder.finish(&store).await.unwrap();
        let kept: Vec<&StreamRef> = snapshot.commits.iter().map(|c| &c.commit.stream).collect();
        assert_eq!(kept, [&StreamRef::Contacts], "the closing commit went once the book recorded the contact");
    }
}
