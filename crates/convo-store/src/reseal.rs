//! Rewriting a stream whose older commits hold personal data in clear
//! (written before sealing, or by an engine without keys) into a sealed one
//! (SPEC §13, "Upgrade"; `convo seal-stream`).
//!
//! JetStream cannot change a stored message, and two streams cannot share
//! subjects, so the rewrite goes through a staging stream and keeps every
//! message at its **stream sequence** (read models, webhook and JSON
//! checkpoints, anchors and the key file's `unsigned_through` all name
//! sequences, and stay true):
//!
//! 1. **Scan** the stream: every message must be part of the record (a
//!    message the engine's key does not vouch for, or that cannot be read,
//!    is refused: `convo doctor` lists it; nothing unverified is re-signed),
//!    and the erasures and expiries it holds are noted.
//! 2. **Stage**: each commit holding a value in clear is written again with
//!    that value sealed under its key (made as the engine would: a contact's
//!    under the master key, a conversation's under its contact's) — or, if
//!    its contact was erased or its content expired *later* in the stream,
//!    as `[erased]` (a rewrite never brings back what was forgotten) — and
//!    signed again (commits the key did not vouch for stay unsigned). Every
//!    other message (sealed commits, fence markers) is copied byte for
//!    byte. Each rewritten commit is opened again and compared with what it
//!    held before it is staged. The staging stream (`<STREAM>_RESEAL`) ends
//!    with a marker holding the original stream's settings.
//! 3. **Switch**: the original stream's messages that held values in clear
//!    are removed with the server's secure erase (the message overwritten),
//!    the stream is deleted and made again with its settings from its first
//!    sequence, the staged messages are copied back in order (a gap in the
//!    original — a purged message — is kept as a gap), and the count and the
//!    last sequence are checked.
//! 4. The snapshots (commits as the original logged them) are erased
//!    message by message with their bucket — the engine writes new ones —
//!    and the staging stream is deleted.
//!
//! Each step can be run again: a rewrite cut short (a crash, a lost
//! connection) resumes where it stopped when the command is run again. The
//! engine must be stopped (the caller checks): nothing may append meanwhile.
//! The read models and the audit chain's re-anchoring are the caller's
//! (they live in the data directory).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::stream::Config;
use async_nats::jetstream::{self};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use convo_domain::conversation::ConversationEvent;
use convo_domain::{AccountId, ContactId, ConversationId};
use convo_wire::personal::{self, ERASED, KeyScope};
use convo_wire::{Commit, Event, StreamRef};

use crate::keys::Keyring;
use crate::signing::{SIGNATURE_HEADER, Signing};
use crate::{JetStreamStore, Raw, StoreError};

/// Commits sealed per round of key preparation (and messages staged per
/// round of acknowledgements).
pub const CHUNK_MESSAGES: usize = 256;
/// How long a read of the stream may wait for its next message.
pub const READ_IDLE: Duration = Duration::from_secs(30);
/// The header naming, on a staged message, the subject it goes back to.
const SUBJECT_HEADER: &str = "Convo-Reseal-Subject";
/// The header naming, on a staged message, its stream sequence.
const SEQ_HEADER: &str = "Convo-Reseal-Seq";
/// The header marking a staged message whose original held values in clear.
const REWRITTEN_HEADER: &str = "Convo-Reseal-Rewritten";
/// Stream metadata: the rewrite that made this stream (kept).
const RESEALED_BY: &str = "convo-resealed-by";
/// Stream metadata: the stream is being filled from the staging stream.
const FILLING: &str = "convo-reseal-filling";

/// The staging stream's name for `stream`.
pub fn staging_name(stream: &str) -> String {
    format!("{stream}_RESEAL")
}

fn staging_prefix(stream: &str) -> String {
    format!("convo-reseal.{stream}")
}

/// Where a gap's stand-in goes while the stream is filled (removed at once).
fn gap_subject(stream: &str) -> String {
    format!("convo-reseal-gap.{stream}")
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("rewriting the stream: {e}"))
}

fn refused(text: impl Into<String>) -> StoreError {
    StoreError::Refused(text.into())
}

/// What a rewrite did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The id of this rewrite (kept in the new stream's metadata).
    pub id: String,
    /// The stream's first and last sequences, and how many messages it holds.
    pub first: u64,
    pub last: u64,
    pub messages: u64,
    /// Commits that held values in clear, written again.
    pub rewritten: u64,
    /// Values sealed, and values written as `[erased]` (their contact was
    /// erased, or their content expired, later in the stream).
    pub sealed: u64,
    pub erased: u64,
    /// Sequences missing in the original (kept missing).
    pub gaps: u64,
    /// Whether this run finished an earlier one cut short.
    pub resumed: bool,
    /// Messages of the snapshots' bucket erased (with it).
    pub snapshot_messages: u64,
}

/// The staging stream's last message: the rewrite and the original's settings.
#[derive(Serialize, Deserialize)]
struct Done {
    report: Report,
    config: Config,
}

/// What [`reseal`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every commit is sealed already: nothing was written.
    AlreadySealed { messages: u64 },
    /// The stream was rewritten.
    Rewritten(Report),
}

/// The steps, for progress: the step's name, done so far, and of how many.
pub type Progress<'a> = &'a (dyn Fn(&str, u64, u64) + Sync);

/// What a rewrite would do, read without writing anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Survey {
    /// Messages in the stream, and its last sequence.
    pub messages: u64,
    pub last: u64,
    /// Commits holding a value in clear (what a rewrite writes again).
    pub plaintext_commits: u64,
    /// Contacts erased and conversations expired (their values in clear read `[erased]` after).
    pub erased_contacts: usize,
    pub expired_conversations: usize,
    /// An earlier rewrite was cut short (a rewrite finishes it).
    pub unfinished: bool,
}

/// Reads the stream as a rewrite would and says what it would do (every
/// message must be part of the record: see [`reseal`]).
pub async fn survey(store: &JetStreamStore, signing: &Signing, progress: Progress<'_>) -> Result<Survey, StoreError> {
    let js = store.jetstream();
    let mut main = js.get_stream(&store.config().stream).await.map_err(unavailable)?;
    let state = main.info().await.map_err(unavailable)?.state.clone();
    let history = scan(store, signing, state.last_sequence, progress).await?;
    Ok(Survey {
        messages: state.messages,
        last: state.last_sequence,
        plaintext_commits: history.plaintext,
        erased_contacts: history.erasures.len(),
        expired_conversations: history.expiries.len(),
        unfinished: existing(js, &staging_name(&store.config().stream)).await?.is_some(),
    })
}

/// Removes a stream of this engine's (a bucket's) with every message in it
/// overwritten first (the server's secure erase): what a snapshot held in
/// clear leaves nothing in the server's files. Returns how many messages
/// were erased (none: there was no such stream).
pub async fn erase_stream(js: &jetstream::Context, name: &str) -> Result<u64, StoreError> {
    let Some(mut stream) = existing(js, name).await? else { return Ok(0) };
    let state = stream.info().await.map_err(unavailable)?.state.clone();
    let mut erased = 0;
    // (an empty stream's range is empty: it may still name a first sequence)
    let last = if state.messages == 0 { 0 } else { state.last_sequence };
    let seqs = state.first_sequence.max(1)..=last;
    for seq in seqs {
        match stream.delete_message(seq).await {
            Ok(_) => erased += 1,
            Err(e) if crate::already_gone(&e) => {}
            Err(e) => return Err(unavailable(e)),
        }
    }
    js.delete_stream(name).await.map_err(unavailable)?;
    Ok(erased)
}

/// Rewrites `store`'s stream into a sealed one (see the module docs).
/// `keys` makes and opens the data keys; `signing` is the engine's key.
pub async fn reseal(
    store: &JetStreamStore,
    keys: &Keyring,
    signing: &Signing,
    progress: Progress<'_>,
) -> Result<Outcome, StoreError> {
    reseal_until(store, keys, signing, progress, None).await
}

/// Where a rewrite can be cut short (a crash, a lost connection): the
/// tests stop it there to see the next run finish it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The staging stream is complete; the original untouched.
    Staged,
    /// The original's messages in clear are erased; the stream not yet deleted.
    Erased,
    /// The stream is made again and half filled.
    HalfFilled,
    /// The stream is filled; the staging stream not yet deleted.
    Filled,
}

/// [`reseal`], stopped at `cut` as if the process had died there (an
/// `Unavailable` error says so).
pub async fn reseal_until(
    store: &JetStreamStore,
    keys: &Keyring,
    signing: &Signing,
    progress: Progress<'_>,
    cut: Option<Cut>,
) -> Result<Outcome, StoreError> {
    let stop = |at: Cut| if cut == Some(at) { Err(unavailable(format!("cut short at {at:?}"))) } else { Ok(()) };
    let js = store.jetstream();
    let name = store.config().stream.clone();
    let staging = staging_name(&name);
    let mut main = js.get_stream(&name).await.map_err(unavailable)?;
    let main_info = main.info().await.map_err(unavailable)?.clone();
    let done = match existing(js, &staging).await? {
        Some(mut staged) => {
            let done = read_done(&mut staged, &name).await?;
            if done.is_none() {
                // A staging cut short: made again from the start.
                tracing::info!("an earlier rewrite of {name} stopped while staging: staging again");
                js.delete_stream(&staging).await.map_err(unavailable)?;
            }
            done
        }
        None => None,
    };
    let filled_by = main_info.config.metadata.get(RESEALED_BY);
    let untouched = |done: &Done| filled_by != Some(&done.report.id) && main_info.state.last_sequence > 0;
    let done = match done {
        // Staged, but the stream moved on since (an engine appended): staged again. (Fewer
        // messages is no move: an earlier run cut short may have erased some originals.)
        Some(done) if untouched(&done) && main_info.state.last_sequence != done.report.last => {
            tracing::warn!("{name} moved on since an earlier rewrite staged it: staging again");
            js.delete_stream(&staging).await.map_err(unavailable)?;
            None
        }
        done => done,
    };
    let mut done = match done {
        Some(mut done) => {
            done.report.resumed = true;
            done
        }
        None => {
            if main_info.state.messages == 0 {
                return Ok(Outcome::AlreadySealed { messages: 0 });
            }
            let history = scan(store, signing, main_info.state.last_sequence, progress).await?;
            if history.plaintext == 0 {
                return Ok(Outcome::AlreadySealed { messages: main_info.state.messages });
            }
            stage(store, keys, signing, &history, &main_info, progress).await?
        }
    };
    stop(Cut::Staged)?;
    let filled_by_us = filled_by == Some(&done.report.id);
    let filling = main_info.config.metadata.contains_key(FILLING);
    if filled_by_us && !filling {
        // Only the staging stream's removal was left.
    } else {
        // The original (not an empty one a connection made after it was deleted): erased first.
        if untouched(&done) {
            erase_originals(js, &name, &staging, progress).await?;
        }
        stop(Cut::Erased)?;
        js.delete_stream(&name).await.map_err(unavailable)?;
        fill(js, &name, &staging, &mut done, progress, cut == Some(Cut::HalfFilled)).await?;
    }
    stop(Cut::Filled)?;
    // The snapshots hold commits as the original logged them (the engine writes new ones).
    done.report.snapshot_messages = erase_stream(js, &crate::snapshot::backing_stream(&name)).await?;
    js.delete_stream(&staging).await.map_err(unavailable)?;
    Ok(Outcome::Rewritten(done.report))
}

use crate::jetstream::existing;

/// The staging stream's end marker, if it was written.
async fn read_done(staged: &mut jetstream::stream::Stream, stream: &str) -> Result<Option<Done>, StoreError> {
    match staged.get_last_raw_message_by_subject(&format!("{}.done", staging_prefix(stream))).await {
        Ok(message) => serde_json::from_slice(&message.payload)
            .map(Some)
            .map_err(|e| refused(format!("the staging stream's end marker is damaged: {e}"))),
        Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(unavailable(e)),
    }
}

/// Every message of `stream` from its first, in order, until `last`.
async fn each_message(
    js: &jetstream::Context,
    stream: &str,
    last: u64,
    mut each: impl AsyncFnMut(jetstream::Message, u64) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut handle = js.get_stream(stream).await.map_err(unavailable)?;
    if last == 0 || handle.info().await.map_err(unavailable)?.state.messages == 0 {
        return Ok(());
    }
    let consumer = handle
        .create_consumer(OrderedConfig { deliver_policy: DeliverPolicy::All, ..Default::default() })
        .await
        .map_err(unavailable)?;
    let name = consumer.cached_info().name.clone();
    let mut messages = consumer.messages().await.map_err(unavailable)?;
    let outcome = async {
        loop {
            let message = match tokio::time::timeout(READ_IDLE, messages.next()).await {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(e))) => return Err(unavailable(e)),
                Ok(None) => return Err(unavailable(format!("the read of {stream} ended before sequence {last}"))),
                Err(_) => return Err(unavailable(format!("{stream} sent nothing for {READ_IDLE:?}"))),
            };
            let info = message.info().map_err(unavailable)?;
            // The last message may not be at `last` (one removed from the end leaves its sequence).
            let (seq, end) = (info.stream_sequence, info.pending == 0 || info.stream_sequence >= last);
            each(message, seq).await?;
            if end {
                return Ok(());
            }
        }
    }
    .await;
    let _ = handle.delete_consumer(&name).await;
    outcome
}

/// What a scan of the stream learned: when each contact was erased and
/// each conversation's content expired, and each conversation's contact.
#[derive(Default)]
struct History {
    erasures: HashMap<(AccountId, ContactId), Vec<u64>>,
    expiries: HashMap<(AccountId, ConversationId), u64>,
    contact_of: HashMap<(AccountId, ConversationId), ContactId>,
    /// Commits holding a value in clear.
    plaintext: u64,
}

impl History {
    fn learn(&mut self, seq: u64, commit: &Commit) {
        for e in &commit.events {
            if let (Event::Conversation(ConversationEvent::ConversationOpened(o)), StreamRef::Conversation(id)) =
                (&e.event, &commit.stream)
            {
                self.contact_of.insert((commit.account.clone(), id.clone()), o.contact.clone());
            }
        }
        for scope in personal::shredded_by(commit) {
            match scope {
                KeyScope::Contact(account, contact) => self.erasures.entry((account, contact)).or_default().push(seq),
                KeyScope::Conversation(account, id) => {
                    self.expiries.entry((account, id)).or_insert(seq);
                }
            }
        }
        self.plaintext += u64::from(personal::holds_plaintext(commit));
    }

    fn erased_after(&self, account: &AccountId, contact: &ContactId, seq: u64) -> bool {
        self.erasures.get(&(account.clone(), contact.clone())).is_some_and(|at| at.iter().any(|e| *e > seq))
    }

    /// Whether a value under `scope` written at `seq` was forgotten later.
    fn forgotten(&self, scope: &KeyScope, seq: u64) -> bool {
        match scope {
            KeyScope::Contact(account, contact) => self.erased_after(account, contact, seq),
            KeyScope::Conversation(account, id) => {
                let key = (account.clone(), id.clone());
                self.expiries.get(&key).is_some_and(|at| *at > seq)
                    || self.contact_of.get(&key).is_some_and(|contact| self.erased_after(account, contact, seq))
            }
        }
    }
}

/// The message's header `name`, if any.
fn header<'m>(message: &'m jetstream::Message, name: &str) -> Option<&'m str> {
    message.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str())
}

/// The message as a commit of the record (a fence marker: `None`), or why it is not part of it.
fn decoded(
    prefix: &str,
    signing: &Signing,
    message: &jetstream::Message,
    seq: u64,
) -> Result<Option<Commit>, StoreError> {
    if crate::fence::is_fence(prefix, &message.subject) {
        return Ok(None);
    }
    let raw = Raw {
        seq,
        subject: message.subject.to_string(),
        version: header(message, convo_wire::headers::SCHEMA),
        signature: header(message, SIGNATURE_HEADER),
        payload: &message.payload,
    };
    match crate::decode_signed(prefix, Some(signing), raw) {
        Ok(stored) => Ok(Some(stored.commit)),
        Err(e) => Err(refused(format!(
            "{e}. A rewrite re-signs what it seals, so it takes only messages that are part of the record: \
             `convo doctor` lists those that are not and `convo doctor --purge` removes them; then run this again"
        ))),
    }
}

async fn scan(
    store: &JetStreamStore,
    signing: &Signing,
    last: u64,
    progress: Progress<'_>,
) -> Result<History, StoreError> {
    let prefix = store.config().prefix.clone();
    let mut history = History::default();
    each_message(store.jetstream(), &store.config().stream, last, async |message, seq| {
        if let Some(commit) = decoded(&prefix, signing, &message, seq)? {
            history.learn(seq, &commit);
        }
        progress("reading the stream", seq, last);
        Ok(())
    })
    .await?;
    Ok(history)
}

/// The message's headers without the append's expectations and id (a copy
/// is no append: the server must store it where it is put).
fn copied_headers(message: &jetstream::Message) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, values) in message.headers.iter().flat_map(HeaderMap::iter) {
        let text: &str = name.as_ref();
        if text.starts_with("Nats-Expected") || text == "Nats-Msg-Id" {
            continue;
        }
        for value in values {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

/// A message on its way to the staging stream.
struct Staged {
    seq: u64,
    subject: String,
    headers: HeaderMap,
    payload: bytes::Bytes,
    /// The commit to seal (its forgotten values already `[erased]`).
    seal: Option<Commit>,
}

async fn stage(
    store: &JetStreamStore,
    keys: &Keyring,
    signing: &Signing,
    history: &History,
    main: &jetstream::stream::Info,
    progress: Progress<'_>,
) -> Result<Done, StoreError> {
    let js = store.jetstream();
    let name = &store.config().stream;
    let prefix = store.config().prefix.clone();
    let staging = staging_name(name);
    js.create_stream(Config {
        name: staging.clone(),
        description: Some(format!("stream {name} being rewritten with its personal data sealed (convo seal-stream)")),
        subjects: vec![format!("{}.>", staging_prefix(name))],
        storage: main.config.storage,
        num_replicas: main.config.num_replicas,
        allow_direct: true,
        ..Default::default()
    })
    .await
    .map_err(unavailable)?;
    let mut report = Report {
        id: random_id()?,
        first: main.state.first_sequence,
        last: main.state.last_sequence,
        messages: main.state.messages,
        gaps: (main.state.last_sequence + 1 - main.state.first_sequence).saturating_sub(main.state.messages),
        ..Report::default()
    };
    let mut chunk: Vec<Staged> = Vec::with_capacity(CHUNK_MESSAGES);
    let mut made: HashSet<KeyScope> = HashSet::new();
    let last = main.state.last_sequence;
    each_message(js, name, last, async |message, seq| {
        let headers = copied_headers(&message);
        let mut seal = None;
        if let Some(commit) = decoded(&prefix, signing, &message, seq)?
            && personal::holds_plaintext(&commit)
        {
            let mut kept = commit;
            personal::visit_mut(&mut kept, &mut |scope, _, value| {
                if personal::in_clear(value) && history.forgotten(scope, seq) {
                    *value = ERASED.to_owned();
                    report.erased += 1;
                }
            });
            seal = Some(kept);
        }
        chunk.push(Staged {
            seq,
            subject: message.subject.to_string(),
            headers,
            payload: message.payload.clone(),
            seal,
        });
        if chunk.len() >= CHUNK_MESSAGES {
            put_chunk(store, keys, signing, history, &mut made, &mut chunk, &mut report).await?;
        }
        progress("sealing into the staging stream", seq, last);
        Ok(())
    })
    .await?;
    put_chunk(store, keys, signing, history, &mut made, &mut chunk, &mut report).await?;
    let done = Done { report, config: main.config.clone() };
    let payload = serde_json::to_vec(&done).map_err(|e| refused(e.to_string()))?;
    let ack = js.publish(format!("{}.done", staging_prefix(name)), payload.into()).await.map_err(unavailable)?;
    ack.await.map_err(unavailable)?;
    Ok(done)
}

/// Seals the chunk's commits (keys made for it in two round trips), checks
/// each opens to what it held, and writes the chunk to the staging stream.
async fn put_chunk(
    store: &JetStreamStore,
    keys: &Keyring,
    signing: &Signing,
    history: &History,
    made: &mut HashSet<KeyScope>,
    chunk: &mut Vec<Staged>,
    report: &mut Report,
) -> Result<(), StoreError> {
    // The keys the chunk needs: a conversation's made under its contact (known from its opening).
    let mut wanted: Vec<(KeyScope, Option<ContactId>)> = Vec::new();
    for staged in chunk.iter() {
        let Some(kept) = &staged.seal else { continue };
        for scope in personal::in_clear_scopes(kept).0 {
            if wanted.iter().any(|(s, _)| *s == scope) {
                continue;
            }
            let contact = match &scope {
                KeyScope::Conversation(account, id) if !made.contains(&scope) => {
                    history.contact_of.get(&(account.clone(), id.clone())).cloned()
                }
                _ => None,
            };
            wanted.push((scope, contact));
        }
    }
    let prepared = keys.prepare_scopes(wanted).await?;
    made.extend(prepared.keys().cloned());
    let js = store.jetstream();
    let name = &store.config().stream;
    let mut acks = Vec::with_capacity(chunk.len());
    for staged in chunk.drain(..) {
        let Staged { seq, subject, mut headers, mut payload, seal } = staged;
        if let Some(kept) = seal {
            let sealed = Keyring::seal(&kept, &prepared);
            // Checked below: every value in clear was sealed.
            let sealed_count = personal::in_clear_scopes(&kept).1;
            let mut reopened = sealed.clone();
            keys.open(&mut reopened).await?;
            if reopened != kept || personal::holds_plaintext(&sealed) {
                return Err(refused(format!(
                    "message {seq} on {subject} did not seal to what it held; nothing was switched (the staging \
                     stream {} is left for a look)",
                    staging_name(name)
                )));
            }
            payload = sealed.encode().map_err(|e| refused(e.to_string()))?.into();
            headers = HeaderMap::new();
            for (header_name, value) in sealed.headers() {
                headers.insert(header_name, value.as_str());
            }
            if seq > signing.unsigned_through() {
                let signature = signing.sign(&subject, &convo_wire::SCHEMA_VERSION.to_string(), &payload);
                headers.insert(SIGNATURE_HEADER, signature.as_str());
            }
            headers.insert(REWRITTEN_HEADER, "1");
            report.rewritten += 1;
            report.sealed += sealed_count;
        }
        headers.insert(SUBJECT_HEADER, subject.as_str());
        headers.insert(SEQ_HEADER, seq.to_string().as_str());
        let ack = js
            .publish_with_headers(format!("{}.m", staging_prefix(name)), headers, payload)
            .await
            .map_err(unavailable)?;
        acks.push(ack);
    }
    for ack in acks {
        ack.await.map_err(unavailable)?;
    }
    Ok(())
}

/// Removes, with the server's secure erase, every message of the original
/// stream that held values in clear (as the staging stream marks them).
async fn erase_originals(
    js: &jetstream::Context,
    name: &str,
    staging: &str,
    progress: Progress<'_>,
) -> Result<(), StoreError> {
    let main = js.get_stream(name).await.map_err(unavailable)?;
    let mut staged = js.get_stream(staging).await.map_err(unavailable)?;
    let last = staged.info().await.map_err(unavailable)?.state.last_sequence;
    each_message(js, staging, last, async |message, at| {
        if header(&message, REWRITTEN_HEADER).is_some()
            && let Some(seq) = header(&message, SEQ_HEADER).and_then(|s| s.parse::<u64>().ok())
        {
            match main.delete_message(seq).await {
                Ok(_) => {}
                Err(e) if crate::already_gone(&e) => {} // erased by an earlier run
                Err(e) => return Err(unavailable(e)),
            }
        }
        progress("erasing the originals", at, last);
        Ok(())
    })
    .await
}

/// Makes the stream again with its settings and fills it from the staging
/// stream, each message at its sequence.
async fn fill(
    js: &jetstream::Context,
    name: &str,
    staging: &str,
    done: &mut Done,
    progress: Progress<'_>,
    half: bool,
) -> Result<(), StoreError> {
    let original = done.config.clone();
    let mut config = original.clone();
    config.first_sequence = (done.report.first > 1).then_some(done.report.first);
    config.subjects.push(gap_subject(name));
    config.metadata.insert(RESEALED_BY.into(), done.report.id.clone());
    config.metadata.insert(FILLING.into(), "1".into());
    let created = js.create_stream(config).await.map_err(unavailable)?;
    let mut staged = js.get_stream(staging).await.map_err(unavailable)?;
    let staged_last = staged.info().await.map_err(unavailable)?.state.last_sequence;
    let mut next = done.report.first.max(1);
    let mut pending: Vec<Pending> = Vec::new();
    each_message(js, staging, staged_last, async |message, at| {
        let (Some(subject), Some(seq)) =
            (header(&message, SUBJECT_HEADER), header(&message, SEQ_HEADER).and_then(|s| s.parse::<u64>().ok()))
        else {
            return Ok(()); // the end marker
        };
        while next < seq {
            let ack = js.publish(gap_subject(name), bytes::Bytes::new()).await.map_err(unavailable)?;
            pending.push(Pending { seq: next, ack, gap: true });
            next += 1;
        }
        let mut headers = HeaderMap::new();
        for (header_name, values) in message.headers.iter().flat_map(HeaderMap::iter) {
            let text: &str = header_name.as_ref();
            if [SUBJECT_HEADER, SEQ_HEADER, REWRITTEN_HEADER].contains(&text) {
                continue;
            }
            for value in values {
                headers.append(header_name.clone(), value.clone());
            }
        }
        let ack =
            js.publish_with_headers(subject.to_owned(), headers, message.payload.clone()).await.map_err(unavailable)?;
        pending.push(Pending { seq, ack, gap: false });
        next = seq + 1;
        if half && seq >= done.report.first + (done.report.last - done.report.first) / 2 {
            settle(&created, &mut pending).await?;
            return Err(unavailable("cut short at HalfFilled"));
        }
        if pending.len() >= CHUNK_MESSAGES {
            settle(&created, &mut pending).await?;
        }
        progress("filling the stream", at, staged_last);
        Ok(())
    })
    .await?;
    // Messages removed from the end of the original leave their sequences behind too.
    while next <= done.report.last {
        let ack = js.publish(gap_subject(name), bytes::Bytes::new()).await.map_err(unavailable)?;
        pending.push(Pending { seq: next, ack, gap: true });
        next += 1;
    }
    settle(&created, &mut pending).await?;
    // Its own subjects again, and no longer being filled.
    let mut info = js.get_stream(name).await.map_err(unavailable)?;
    let state = info.info().await.map_err(unavailable)?.state.clone();
    if state.messages != done.report.messages || state.last_sequence != done.report.last {
        return Err(refused(format!(
            "the rewritten stream holds {} messages up to sequence {}, the original {} up to {}: stopped (run the \
             command again to start the copy over)",
            state.messages, state.last_sequence, done.report.messages, done.report.last
        )));
    }
    let mut settled = original;
    settled.metadata.insert(RESEALED_BY.into(), done.report.id.clone());
    js.update_stream(settled).await.map_err(unavailable)?;
    Ok(())
}

/// A copy on its way into the stream: where it must land, and whether it
/// stands in for a gap (removed once it has landed).
struct Pending {
    seq: u64,
    ack: jetstream::context::PublishAckFuture,
    gap: bool,
}

/// Waits for the copies under way: each must land at its sequence.
async fn settle(stream: &jetstream::stream::Stream, pending: &mut Vec<Pending>) -> Result<(), StoreError> {
    for Pending { seq, ack, gap } in pending.drain(..) {
        let at = ack.await.map_err(unavailable)?.sequence;
        if at != seq {
            return Err(refused(format!(
                "the copy of message {seq} landed at {at}: stopped (run the command again to start the copy over)"
            )));
        }
        if gap {
            stream.delete_message(seq).await.map_err(unavailable)?;
        }
    }
    Ok(())
}

/// A random id for a rewrite.
fn random_id() -> Result<String, StoreError> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).map_err(|e| refused(format!("no randomness for the rewrite's id: {e}")))?;
    Ok(crate::signing::hex(&bytes))
}
