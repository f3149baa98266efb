//! Carrying out erasures (SPEC §13): the feeds role follows the contact
//! books for `contact_erased`, and the conversations for `content_expired`
//! (retention: the conversation's key is destroyed, the JSON stream's
//! events of it that held content are overwritten). For each erasure,
//! without a manual step:
//!
//! 1. destroys the contact's data key ([`crate::keys`]): from that moment
//!    every copy of their identity and of their conversations' content
//!    sealed with it — the stream, snapshots, read models, queued webhook
//!    bodies — reads `[erased]`;
//! 2. waits (at most [`JSON_WAIT`]) until the JSON republisher has passed
//!    the erasure, so nothing it opened before the key went is still on
//!    its way;
//! 3. overwrites (the server's secure erase) every message of the JSON
//!    stream that held their data in clear: the events of their
//!    conversations and the contact book's events about them;
//! 4. purges their conversations' keys (unusable already) from the bucket.
//!
//! Where it stands is kept in the JSON stream's checkpoint bucket
//! ([`CHECKPOINT_KEY`]); an erasure cut short by a crash is carried out
//! again (every step is idempotent). The bound: an erasure is complete
//! within [`POLL`] plus [`JSON_WAIT`] plus the scan of the account's
//! conversation openings and of their JSON events (direct gets, about
//! 10,000 a second on one core) — under 60 s for an account of up to
//! ~300,000 retained JSON events of the contact's conversations and
//! ~1,000,000 conversations.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream::DirectGetErrorKind;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;

use convo_domain::contact::ContactEvent;
use convo_domain::conversation::ConversationEvent;
use convo_domain::{AccountId, ContactId, ConversationId};
use convo_wire::personal::KeyScope;
use convo_wire::{Event, StreamRef};

use crate::keys::Keyring;
use crate::{JetStreamStore, StoreError};

/// How often the contact books are looked at for new erasures.
pub const POLL: Duration = Duration::from_secs(1);
/// The longest an erasure waits for the JSON republisher to pass it.
pub const JSON_WAIT: Duration = Duration::from_secs(20);
/// Where the erasures carried out stand (a key of the JSON checkpoint bucket).
pub const CHECKPOINT_KEY: &str = "erased";

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// What one erasure did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Erased {
    pub conversations: usize,
    /// JSON stream messages overwritten.
    pub json_messages: usize,
    /// Commits of the main stream about the contact written before sealing
    /// (or by an engine without keys): their personal values are still in
    /// clear there, out of the erasure's reach.
    pub plaintext_commits: usize,
}

/// Follows the contact books from the checkpoint and carries out every
/// erasure found, until the subscription ends or fails (the caller calls
/// again after [`POLL`]). `json_at` says how far the JSON republisher has come.
pub async fn follow(
    store: &JetStreamStore,
    keys: &Keyring,
    json: &(jetstream::Context, kv::Store),
    json_at: &(dyn Fn() -> u64 + Send + Sync),
) -> Result<u64, StoreError> {
    let (js, checkpoints) = json;
    let mut done = match checkpoints.get(CHECKPOINT_KEY).await.map_err(unavailable)? {
        Some(value) => std::str::from_utf8(&value).ok().and_then(|v| v.parse().ok()).unwrap_or(0),
        None => 0,
    };
    let mut saved = done;
    let save = |at: u64| checkpoints.put(CHECKPOINT_KEY, Bytes::from(at.to_string()));
    let mut books = store.follow_erasures(done + 1).await?;
    loop {
        // The checkpoint moves when the books are quiet (or after each erasure).
        let item = match tokio::time::timeout(POLL, books.next()).await {
            Ok(Some(item)) => item,
            Ok(None) => return Ok(done),
            Err(_) => {
                if done > saved {
                    save(done).await.map_err(unavailable)?;
                    saved = done;
                }
                continue;
            }
        };
        let stored = match item {
            Ok(stored) => stored,
            Err(StoreError::Decode { seq, .. }) => {
                done = done.max(seq);
                continue;
            }
            Err(e) => return Err(e),
        };
        for scope in convo_wire::personal::shredded_by(&stored.commit) {
            let wait = tokio::time::Instant::now() + JSON_WAIT;
            keys.destroy(&scope).await?;
            while json_at() < stored.stream_seq && tokio::time::Instant::now() < wait {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            match &scope {
                KeyScope::Contact(account, contact) => {
                    let report = erase_contact(store, keys, js, account, contact).await?;
                    if report.plaintext_commits > 0 {
                        tracing::warn!(
                            account = %account,
                            contact = %contact,
                            plaintext_commits = report.plaintext_commits,
                            "contact erased, but commits of theirs from before sealing keep personal data in clear \
                             in the main stream: the erasure cannot reach them until the stream is rewritten \
                             sealed (`convo seal-stream --rewrite`, with every `convo serve` stopped: it writes \
                             their values as [erased])"
                        );
                    }
                    tracing::info!(
                        account = %account,
                        contact = %contact,
                        conversations = report.conversations,
                        json_messages = report.json_messages,
                        "contact erased: keys destroyed, JSON events overwritten"
                    );
                }
                KeyScope::Conversation(account, id) => {
                    let filter = format!("{}.{account}.json.conv.{id}.>", store.config().prefix);
                    let json_messages = overwrite(&json_stream(store, js).await?, &filter, holds_content).await?;
                    tracing::info!(
                        account = %account,
                        conversation = %id,
                        json_messages,
                        "conversation content expired: its key destroyed, JSON events with its content overwritten"
                    );
                }
            }
            save(stored.stream_seq).await.map_err(unavailable)?;
            saved = stored.stream_seq;
        }
        done = stored.stream_seq;
    }
}

/// Destroys the data keys of every erasure and content expiry the log
/// records (what [`follow`] does first, without the JSON stream): how a
/// run of a scenario (`convo replay-traffic`) ends as the running engine
/// would, its erased content reading `[erased]`. Returns how many keys.
pub async fn destroy_recorded_keys(store: &JetStreamStore, keys: &Keyring) -> Result<usize, StoreError> {
    let mut count = 0;
    let mut log = store.read_as_logged(1).await?;
    while let Some(item) = log.next().await {
        let stored = match item {
            Ok(stored) => stored,
            Err(StoreError::Decode { .. }) => continue,
            Err(e) => return Err(e),
        };
        for scope in convo_wire::personal::shredded_by(&stored.commit) {
            keys.destroy(&scope).await?;
            count += 1;
        }
    }
    Ok(count)
}

/// The conversations of `contact` in `account`, from the log's openings.
pub async fn conversations_of(
    store: &JetStreamStore,
    account: &AccountId,
    contact: &ContactId,
) -> Result<Vec<ConversationId>, StoreError> {
    let mut out = Vec::new();
    let mut openings = store.read_openings(account).await?;
    while let Some(item) = openings.next().await {
        // A commit that cannot be decoded is skipped (and said by the readers); one
        // that cannot be read now fails the scan: a shortened list would leave copies behind.
        let stored = match item {
            Ok(stored) => stored,
            Err(StoreError::Decode { .. }) => continue,
            Err(e) => return Err(e),
        };
        let StreamRef::Conversation(id) = &stored.commit.stream else { continue };
        let theirs = stored.commit.events.iter().any(|e| {
            matches!(&e.event, Event::Conversation(ConversationEvent::ConversationOpened(o)) if o.contact == *contact)
        });
        if theirs && !out.contains(id) {
            out.push(id.clone());
        }
    }
    Ok(out)
}

/// Overwrites what the JSON stream holds of `contact` (their
/// conversations' events, the contact book's events about them) and purges
/// their conversations' keys. The contact's key is destroyed first by the caller.
pub async fn erase_contact(
    store: &JetStreamStore,
    keys: &Keyring,
    js: &jetstream::Context,
    account: &AccountId,
    contact: &ContactId,
) -> Result<Erased, StoreError> {
    let prefix = &store.config().prefix;
    let json = json_stream(store, js).await?;
    let conversations = conversations_of(store, account, contact).await?;
    let mut report = Erased { conversations: conversations.len(), ..Erased::default() };
    for id in &conversations {
        let filter = format!("{prefix}.{account}.json.conv.{id}.>");
        report.json_messages += overwrite(&json, &filter, |_| true).await?;
        keys.purge_key(&KeyScope::Conversation(account.clone(), id.clone()), contact).await?;
    }
    let filter = format!("{prefix}.{account}.json.contacts.>");
    report.json_messages += overwrite(&json, &filter, |payload| about(payload, contact)).await?;
    // Last, and never failing the erasure: what it could not reach.
    match plaintext_commits(store, account, contact, &conversations).await {
        Ok(count) => report.plaintext_commits = count,
        Err(e) => tracing::warn!(
            account = %account,
            contact = %contact,
            "could not count the contact's commits from before sealing: {e}"
        ),
    }
    Ok(report)
}

/// How many commits of the main stream about `contact` (their
/// conversations', and the contact book's about them) hold personal values
/// in clear.
async fn plaintext_commits(
    store: &JetStreamStore,
    account: &AccountId,
    contact: &ContactId,
    conversations: &[ConversationId],
) -> Result<usize, StoreError> {
    let mut count = 0;
    for id in conversations {
        for item in store.load_as_logged(account, &StreamRef::Conversation(id.clone())).await? {
            count += usize::from(item.is_ok_and(|s| convo_wire::personal::holds_plaintext(&s.commit)));
        }
    }
    let mut book = store.read_contact_books(Some(account), 1).await?;
    while let Some(item) = book.next().await {
        let stored = match item {
            Ok(stored) => stored,
            Err(StoreError::Decode { .. }) => continue,
            Err(e) => return Err(e),
        };
        let about =
            stored.commit.events.iter().any(|e| matches!(&e.event, Event::Contact(c) if c.contact() == contact));
        count += usize::from(about && convo_wire::personal::holds_plaintext(&stored.commit));
    }
    Ok(count)
}

/// The store's JSON stream.
async fn json_stream(store: &JetStreamStore, js: &jetstream::Context) -> Result<jetstream::stream::Stream, StoreError> {
    js.get_stream(crate::json_stream::stream_name(&store.config().stream)).await.map_err(unavailable)
}

/// Whether a CloudEvent is of a type with personal fields (what a content
/// expiry overwrites; its other events, metadata, stay).
fn holds_content(payload: &[u8]) -> bool {
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(payload) else { return false };
    let kind = event["type"].as_str().unwrap_or_default();
    convo_wire::personal::PERSONAL_FIELDS.iter().any(|(name, _)| kind == convo_wire::cloud_event_type(name))
}

/// Whether a contact-book CloudEvent is about `contact` (`data.id` or `data.contact`).
fn about(payload: &[u8], contact: &ContactId) -> bool {
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(payload) else { return false };
    let data = &event["data"];
    [&data["id"], &data["contact"]].iter().any(|v| v.as_str() == Some(contact.as_str()))
}

/// Overwrites every message on `filter` whose payload `pick` takes; how many.
async fn overwrite(
    stream: &jetstream::stream::Stream,
    filter: &str,
    pick: impl Fn(&[u8]) -> bool,
) -> Result<usize, StoreError> {
    let mut next = 1;
    let mut count = 0;
    loop {
        let message = match stream.direct_get_next_for_subject(filter, Some(next)).await {
            Ok(message) => message,
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(count),
            Err(e) => return Err(unavailable(format!("reading {filter}: {e}"))),
        };
        next = message.sequence + 1;
        if pick(&message.payload) {
            match stream.delete_message(message.sequence).await {
                Ok(_) => count += 1,
                Err(e) if crate::already_gone(&e) => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
    }
}

/// Everything held about a contact (SPEC §13, subject access), in one JSON
/// document: their identity, attributes and labels as the contact book
/// holds them, whether and when they were erased, and every conversation
/// of theirs with all its events (texts opened; erased ones read `[erased]`).
pub async fn export_contact(
    store: &JetStreamStore,
    account: &AccountId,
    contact: &ContactId,
) -> Result<serde_json::Value, StoreError> {
    use crate::EventStore;
    let mut identity = serde_json::Value::Null;
    let mut erased = serde_json::Value::Null;
    let mut book_events = Vec::new();
    let mut books = store.read_contact_books(Some(account), 1).await?;
    while let Some(item) = books.next().await {
        let mut stored = match item {
            Ok(stored) => stored,
            Err(StoreError::Decode { .. }) => continue,
            Err(e) => return Err(e),
        };
        if !stored.commit.events.iter().any(|e| matches!(&e.event, Event::Contact(c) if c.contact() == contact)) {
            continue;
        }
        store.open(&mut stored.commit).await?;
        for (line, e) in stored.commit.json_lines().into_iter().zip(&stored.commit.events) {
            let Event::Contact(event) = &e.event else { continue };
            if event.contact() != contact {
                continue;
            }
            match event {
                ContactEvent::ContactDefined(spec) | ContactEvent::ContactUpdated(spec) => {
                    identity = serde_json::to_value(spec).unwrap_or_default();
                }
                ContactEvent::ContactAttributeSet(set) => {
                    if let Some(attributes) = identity.get_mut("attributes").and_then(|a| a.as_object_mut()) {
                        if set.value.is_empty() {
                            attributes.remove(&set.name);
                        } else {
                            attributes.insert(set.name.clone(), serde_json::Value::String(set.value.clone()));
                        }
                    }
                }
                ContactEvent::ContactErased(_) => {
                    identity = serde_json::Value::Null;
                    erased = line.clone();
                }
            }
            book_events.push(line);
        }
    }
    let mut conversations = Vec::new();
    for id in conversations_of(store, account, contact).await? {
        let mut events = Vec::new();
        for item in store.load(account, &StreamRef::Conversation(id.clone())).await? {
            match item {
                Ok(stored) => events.extend(stored.commit.json_lines()),
                Err(StoreError::Decode { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        conversations.push(serde_json::json!({"conversation": id.as_str(), "events": events}));
    }
    Ok(serde_json::json!({
        "account": account.as_str(),
        "contact": contact.as_str(),
        "identity": identity,
        "erased": erased,
        "contact_book": book_events,
        "conversations": conversations,
    }))
}

/// Keeps erasures carried out until `stop` (the feeds role's share).
pub async fn run(
    store: JetStreamStore,
    keys: Arc<Keyring>,
    json_stream: crate::json_stream::JsonStreamConfig,
    json_at: Arc<dyn Fn() -> u64 + Send + Sync>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut json = None;
    loop {
        let once = async {
            if json.is_none() {
                json = Some(crate::json_stream::ensure(&store, &json_stream).await?);
            }
            follow(&store, &keys, json.as_ref().expect("just made"), &*json_at).await
        };
        tokio::select! {
            _ = &mut stop => return,
            result = once => if let Err(e) = result {
                tracing::warn!("erasures cannot be carried out now ({e}); retrying");
            },
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}
