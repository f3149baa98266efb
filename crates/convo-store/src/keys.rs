//! Data keys for personal data (SPEC §13, DESIGN "Sealed personal data"):
//! crypto-shredding. Every personal value of a commit is sealed before it
//! is appended ([`convo_wire::personal`] says which and with which key)
//! and opened when it is read; destroying a key makes every copy sealed
//! with it unreadable at once — the stream, snapshots, anything that kept
//! the sealed bytes.
//!
//! - A **contact key** per contact (identity: name, handles, attribute
//!   values), kept wrapped by the master key (derived from the engine's key).
//! - A **conversation key** per conversation (content), kept wrapped by its
//!   contact's key: erasing a contact destroys one key and every
//!   conversation of theirs becomes unreadable with it. Retention destroys
//!   one conversation's key alone.
//!
//! Keys are random (a derived key could be derived again: it could not be
//! forgotten) and live in the JetStream stream `<STREAM>_KEYS`, one message
//! per key (subject `convo-keys.<STREAM>.<scope>`), with the event stream's
//! replicas; destroying one overwrites its message (the server's secure
//! erase; a KV bucket's stream refuses message erases). Each process
//! caches keys it used ([`KEYS_CACHED_MAX`], each for at most
//! [`KEY_CACHE_TTL`], so a key destroyed by another process is forgotten
//! here within that time).
//!
//! Sealing is AES-256-GCM-SIV with the nonce derived from the place (event
//! and field) and the plaintext: the same commit sealed twice is the same
//! bytes (a retried append is a duplicate, not a second copy).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::stream::{DirectGetErrorKind, LastRawMessageErrorKind};
use async_nats::jetstream::{self};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use convo_domain::ContactId;
use convo_wire::Commit;
use convo_wire::personal::{self, ERASED, KeyScope, SEALED_PERSONAL_PREFIX};

use crate::StoreError;
use crate::seal::Sealer;

/// The most data keys one process keeps in memory (beyond it the oldest go).
pub const KEYS_CACHED_MAX: usize = 100_000;
/// How long a cached key (or the knowledge that it is gone) is trusted.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(20);
/// A data key's length in bytes (AES-256).
const KEY_BYTES: usize = 32;
/// The keys stream's canary: a known text sealed by the master key
/// ([`Keyring::check_master`]); its name is no scope's token (`c.…`, `v.…`).
const CANARY: &str = "canary";
const CANARY_TEXT: &[u8] = b"convo data keys canary v1";

/// A key as kept in the bucket: sealed by the master key (a contact's) or
/// by its contact's key (a conversation's).
#[derive(Serialize, Deserialize)]
struct StoredKey {
    /// The contact whose key wraps this one (`None`: the master key does).
    wrapped_by: Option<ContactId>,
    sealed: Vec<u8>,
}

#[derive(Clone)]
struct Cached {
    /// `None`: the key is gone (destroyed, or wrapped by a destroyed key).
    key: Option<Arc<Sealer>>,
    wrapped_by: Option<ContactId>,
    at: Instant,
}

enum Backend {
    /// A stream of one message per key (not a KV bucket: those refuse the
    /// message erase that destroying a key needs).
    /// `replicated`: more than one replica (a replica's direct get may lag).
    Stream { js: jetstream::Context, stream: Box<jetstream::stream::Stream>, prefix: String, replicated: bool },
    /// Tests and tools: keys in this process only.
    Memory(Mutex<MemoryKeys>),
}

/// The in-memory backend: the last sequence given, each key's sequence and bytes.
type MemoryKeys = (u64, HashMap<String, (u64, Vec<u8>)>);

/// The data keys of one stream (see the module docs).
pub struct Keyring {
    backend: Backend,
    master: Sealer,
    /// Older masters a rotation not yet finished still opens with (they never wrap).
    retired: Vec<Sealer>,
    cache: Mutex<HashMap<KeyScope, Cached>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keyring")
    }
}

/// What a rotation's [`Keyring::rewrap`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rewrapped {
    /// Keys wrapped again by the new master (the canary included).
    pub rewrapped: u64,
    /// Keys the new master wrapped already (made since, or by a run cut short).
    pub already: u64,
    /// Conversation keys wrapped by their contact's (nothing to do).
    pub under_contacts: u64,
    /// Keys a run cut short had staged, put back.
    pub finished: u64,
    /// Keys no master opens (damaged, or wrapped by a master long gone): left as they are.
    pub unopenable: u64,
}

/// The staging subject's prefix of a key being wrapped again.
const ROTATING: &str = "rotating.";

/// The keys a batch of commits is sealed with.
pub type Prepared = HashMap<KeyScope, Arc<Sealer>>;

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("the data key store: {e}"))
}

/// What a key is sealed for (the wrapping authenticates which key it is).
fn key_context(scope: &KeyScope) -> String {
    format!("data-key/{}", scope.token())
}

impl Keyring {
    /// The bucket of `stream`'s data keys (created with `replicas` if missing),
    /// wrapped by `master` (the engine's key's data-key master); `retired`:
    /// the older masters of a rotation not yet finished (they only open).
    pub async fn connect(
        js: &jetstream::Context,
        stream: &str,
        replicas: usize,
        master: [u8; 32],
        retired: &[[u8; 32]],
    ) -> Result<Self, StoreError> {
        let name = Self::bucket_name(stream);
        let prefix = format!("convo-keys.{stream}");
        let config = jetstream::stream::Config {
            name: name.clone(),
            description: Some(format!("the data keys of stream {stream}'s personal data (wrapped)")),
            subjects: vec![format!("{prefix}.>")],
            max_messages_per_subject: 1,
            num_replicas: replicas,
            allow_direct: true,
            deny_delete: false,
            ..Default::default()
        };
        let keys = js.get_or_create_stream(config).await.map_err(unavailable)?;
        let mut keyring = Self::with_backend(
            Backend::Stream { js: js.clone(), stream: Box::new(keys), prefix, replicated: replicas > 1 },
            master,
        );
        keyring.retired = retired.iter().map(|m| Sealer::new(*m)).collect();
        keyring.check_master().await?;
        Ok(keyring)
    }

    /// Fails closed on a master key that is not this stream's: the keys
    /// stream holds a canary sealed by the master that made it (written by
    /// the first process to connect). An engine started with another
    /// `engine.key` would read every personal value as `[erased]` and seal
    /// new ones with keys no other instance can open, so it stops instead,
    /// saying so.
    pub async fn check_master(&self) -> Result<(), StoreError> {
        const CONTEXT: &str = "data-key/canary";
        loop {
            match self.get(CANARY).await? {
                Some((_, bytes)) => {
                    let opens = postcard::from_bytes::<StoredKey>(&bytes)
                        .ok()
                        .and_then(|stored| self.masters().find_map(|m| m.open_bytes(CONTEXT, &stored.sealed).ok()))
                        .is_some_and(|text| text == CANARY_TEXT);
                    if opens {
                        return Ok(());
                    }
                    return Err(self.not_our_master("its canary"));
                }
                None => {
                    // Keys from before the canary: the first contact key must open.
                    if self.first_contact_key_opens().await? == Some(false) {
                        return Err(self.not_our_master("its first contact key"));
                    }
                    let stored = StoredKey { wrapped_by: None, sealed: self.master.seal_bytes(CONTEXT, CANARY_TEXT) };
                    let bytes = postcard::to_allocvec(&stored).map_err(|e| StoreError::Refused(e.to_string()))?;
                    if self.create(CANARY, bytes, 0).await? {
                        return Ok(());
                    }
                    // Another process wrote it first: check theirs.
                }
            }
        }
    }

    /// The key stream's name for `stream`.
    pub fn bucket_name(stream: &str) -> String {
        format!("{stream}_KEYS")
    }

    /// Keys in this process's memory only (tests, tools).
    pub fn in_memory(master: [u8; 32]) -> Self {
        Self::with_backend(Backend::Memory(Mutex::new((0, HashMap::new()))), master)
    }

    fn with_backend(backend: Backend, master: [u8; 32]) -> Self {
        Self { backend, master: Sealer::new(master), retired: Vec::new(), cache: Mutex::new(HashMap::new()) }
    }

    fn not_our_master(&self, what: &str) -> StoreError {
        let name = match &self.backend {
            Backend::Stream { stream, .. } => stream.cached_info().config.name.clone(),
            Backend::Memory(_) => "memory".into(),
        };
        StoreError::Refused(format!(
            "the engine's key does not open this stream's data keys ({what}, in {name}): it is not the \
             engine.key the stream's personal data was sealed with. Start with that key (copy it from the data \
             directory that made the stream); with another one every message text, name and handle would read \
             [erased] and what it sealed no other instance could open"
        ))
    }

    /// Whether the master opens the first contact key the stream holds
    /// (`None`: it holds none).
    async fn first_contact_key_opens(&self) -> Result<Option<bool>, StoreError> {
        let Backend::Stream { stream, prefix, .. } = &self.backend else { return Ok(None) };
        let message = match stream.direct_get_next_for_subject(format!("{prefix}.c.>"), Some(1)).await {
            Ok(message) => message,
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(unavailable(e)),
        };
        let token = message.subject.strip_prefix(prefix.as_str()).and_then(|t| t.strip_prefix('.')).unwrap_or("");
        let (Some(scope), Ok(stored)) = (KeyScope::parse(token), postcard::from_bytes::<StoredKey>(&message.payload))
        else {
            return Ok(Some(false));
        };
        Ok(Some(stored.wrapped_by.is_none() && self.unwrap_by_master(&scope, &stored.sealed).is_some()))
    }

    /// The key's message: its sequence and bytes.
    async fn get(&self, name: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        match &self.backend {
            Backend::Stream { stream, prefix, replicated, .. } => {
                let subject = format!("{prefix}.{name}");
                match stream.direct_get_last_for_subject(&subject).await {
                    Ok(message) => Ok(Some((message.sequence, message.payload.to_vec()))),
                    // A replica may answer a direct get before it has a new key:
                    // "none" is only believed from the stream's leader.
                    Err(e) if e.kind() == DirectGetErrorKind::NotFound && *replicated => {
                        match stream.get_last_raw_message_by_subject(&subject).await {
                            Ok(message) => Ok(Some((message.sequence, message.payload.to_vec()))),
                            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
                            Err(e) => Err(unavailable(e)),
                        }
                    }
                    Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
                    Err(e) => Err(unavailable(e)),
                }
            }
            Backend::Memory(map) => Ok(map.lock().expect("keys lock").1.get(name).cloned()),
        }
    }

    /// Stores a key where the message at `expected` is (0: none); `false`
    /// when another is there (another writer's), nothing written.
    async fn create(&self, name: &str, value: Vec<u8>, expected: u64) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Stream { js, prefix, .. } => {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, expected.to_string().as_str());
                let subject = format!("{prefix}.{name}");
                let outcome = match js.publish_with_headers(subject, headers, value.into()).await {
                    Ok(ack) => ack.await,
                    Err(e) => Err(e),
                };
                match outcome {
                    Ok(_) => Ok(true),
                    Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(false),
                    Err(e) => Err(unavailable(e)),
                }
            }
            Backend::Memory(map) => {
                let (last, map) = &mut *map.lock().expect("keys lock");
                if map.get(name).map_or(0, |(seq, _)| *seq) != expected {
                    return Ok(false);
                }
                *last += 1;
                map.insert(name.to_owned(), (*last, value));
                Ok(true)
            }
        }
    }

    /// Removes a key: its message overwritten (the server's secure erase),
    /// so nothing of it is left in the stream's files. With `only_wrapped_by`,
    /// only a key wrapped by that contact's (one made since, for a
    /// conversation that went on, stays).
    async fn purge(&self, name: &str, only_wrapped_by: Option<&ContactId>) -> Result<(), StoreError> {
        let ours = |bytes: &[u8]| {
            only_wrapped_by.is_none_or(|contact| {
                postcard::from_bytes::<StoredKey>(bytes).map_or(true, |k| k.wrapped_by.as_ref() == Some(contact))
            })
        };
        match &self.backend {
            Backend::Stream { stream, prefix, .. } => loop {
                // Asked of the stream's leader: a lagging replica's "none" would leave the key there.
                let seq = match stream.get_last_raw_message_by_subject(&format!("{prefix}.{name}")).await {
                    Ok(message) if ours(&message.payload) => message.sequence,
                    Ok(_) => return Ok(()),
                    Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(()),
                    Err(e) => return Err(unavailable(e)),
                };
                match stream.delete_message(seq).await {
                    Ok(_) => {}
                    Err(e) if crate::already_gone(&e) => {}
                    Err(e) => return Err(unavailable(e)),
                }
            },
            Backend::Memory(map) => {
                let map = &mut map.lock().expect("keys lock").1;
                if map.get(name).is_some_and(|(_, bytes)| ours(bytes)) {
                    map.remove(name);
                }
                Ok(())
            }
        }
    }

    fn cached(&self, scope: &KeyScope) -> Option<Cached> {
        let cache = self.cache.lock().expect("key cache lock");
        cache.get(scope).filter(|c| c.at.elapsed() < KEY_CACHE_TTL).cloned()
    }

    fn remember(&self, scope: &KeyScope, key: Option<Arc<Sealer>>, wrapped_by: Option<ContactId>) {
        let mut cache = self.cache.lock().expect("key cache lock");
        if cache.len() >= KEYS_CACHED_MAX {
            // The oldest half go (a full cache is rare: it holds the keys in use).
            let mut ages: Vec<Instant> = cache.values().map(|c| c.at).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            cache.retain(|_, c| c.at > cut);
        }
        cache.insert(scope.clone(), Cached { key, wrapped_by, at: Instant::now() });
    }

    /// The key of `scope` as the bucket holds it; `None` when it is gone.
    async fn fetch(&self, scope: &KeyScope) -> Result<Option<Arc<Sealer>>, StoreError> {
        Ok(self.found(scope).await?.0)
    }

    /// The key of `scope`, and the sequence of its message when the stream
    /// holds one (0: none; a key that cannot be opened any more is there; a
    /// cached gone one says 0: a create that finds one there learns it).
    async fn found(&self, scope: &KeyScope) -> Result<(Option<Arc<Sealer>>, u64), StoreError> {
        if let Some(cached) = self.cached(scope) {
            return Ok((cached.key, 0));
        }
        let (key, wrapped_by, present) = match self.get(&scope.token()).await? {
            None => (None, None, 0),
            Some((seq, bytes)) => {
                let stored: StoredKey = postcard::from_bytes(&bytes)
                    .map_err(|e| StoreError::Refused(format!("data key {} is damaged: {e}", scope.token())))?;
                let key = match &stored.wrapped_by {
                    None => self.unwrap_by_master(scope, &stored.sealed),
                    Some(contact) => {
                        let contact_scope = KeyScope::Contact(scope.account().clone(), contact.clone());
                        match Box::pin(self.fetch(&contact_scope)).await? {
                            Some(wrapper) => self.unwrap_key(&wrapper, scope, &stored.sealed),
                            None => None,
                        }
                    }
                };
                (key, stored.wrapped_by, seq)
            }
        };
        self.remember(scope, key.clone(), wrapped_by);
        Ok((key, present))
    }

    /// The master, then the retired ones.
    fn masters(&self) -> impl Iterator<Item = &Sealer> {
        std::iter::once(&self.master).chain(&self.retired)
    }

    /// A key the master wrapped (or a retired one, before the rotation wrapped it again).
    fn unwrap_by_master(&self, scope: &KeyScope, sealed: &[u8]) -> Option<Arc<Sealer>> {
        self.masters().find_map(|m| self.unwrap_key(m, scope, sealed))
    }

    fn unwrap_key(&self, wrapper: &Sealer, scope: &KeyScope, sealed: &[u8]) -> Option<Arc<Sealer>> {
        let bytes = wrapper.open_bytes(&key_context(scope), sealed).ok()?;
        let key: [u8; KEY_BYTES] = bytes.try_into().ok()?;
        Some(Arc::new(Sealer::new(key)))
    }

    /// The key of `scope`, made (and stored) when there is none — or when
    /// the one there cannot be opened any more (its contact was erased and
    /// the conversation goes on: what follows gets a new key). A new
    /// conversation key is wrapped by `contact`'s key. `fresh`: the scope is
    /// new (a conversation's opening), so the key is made without looking
    /// first; one found there after all (a retried opening) is read back.
    async fn ensure(
        &self,
        scope: &KeyScope,
        contact: Option<&ContactId>,
        mut fresh: bool,
    ) -> Result<Arc<Sealer>, StoreError> {
        loop {
            let expected = if fresh {
                0
            } else {
                match self.found(scope).await? {
                    (Some(key), _) => return Ok(key),
                    (None, present) => present,
                }
            };
            let mut raw = [0u8; KEY_BYTES];
            getrandom::getrandom(&mut raw)
                .map_err(|e| StoreError::Refused(format!("no randomness for a data key: {e}")))?;
            let (wrapper, wrapped_by) = match (scope, contact) {
                (KeyScope::Conversation(account, _), Some(contact)) => {
                    let contact_scope = KeyScope::Contact(account.clone(), contact.clone());
                    (Box::pin(self.ensure(&contact_scope, None, false)).await?, Some(contact.clone()))
                }
                _ => (Arc::new(self.master.clone()), None),
            };
            let stored =
                StoredKey { wrapped_by: wrapped_by.clone(), sealed: wrapper.seal_bytes(&key_context(scope), &raw) };
            let bytes = postcard::to_allocvec(&stored).map_err(|e| StoreError::Refused(e.to_string()))?;
            if self.create(&scope.token(), bytes, expected).await? {
                let key = Arc::new(Sealer::new(raw));
                self.remember(scope, Some(key.clone()), wrapped_by);
                return Ok(key);
            }
            // Another writer made it first (or an earlier attempt did): read theirs.
            self.cache.lock().expect("key cache lock").remove(scope);
            fresh = false;
        }
    }

    /// Makes sure every key `commits` are sealed with exists, and returns
    /// them: the contacts' keys first (those named, and those new
    /// conversation keys are wrapped by), all at once, then the
    /// conversations', all at once — two round trips to the keys stream for
    /// a batch of new conversations, not a few per conversation.
    pub async fn prepare(&self, commits: &[&Commit]) -> Result<Prepared, StoreError> {
        let mut wanted: Vec<(KeyScope, Option<ContactId>)> = Vec::new();
        for commit in commits {
            for (scope, contact) in personal::scopes(commit) {
                if !wanted.iter().any(|(s, _)| *s == scope) {
                    wanted.push((scope, contact));
                }
            }
        }
        self.prepare_scopes(wanted).await
    }

    /// [`Keyring::prepare`] for scopes named outright: each once, with, for
    /// a conversation key, the contact it is made under when it is missing
    /// (`None`: under the master key, as for a conversation whose opening
    /// the caller does not know).
    pub async fn prepare_scopes(&self, wanted: Vec<(KeyScope, Option<ContactId>)>) -> Result<Prepared, StoreError> {
        let mut contacts: Vec<KeyScope> = Vec::new();
        for (scope, contact) in &wanted {
            let wrapper = match (scope, contact) {
                (KeyScope::Contact(..), _) => scope.clone(),
                (KeyScope::Conversation(account, _), Some(contact)) => {
                    KeyScope::Contact(account.clone(), contact.clone())
                }
                (KeyScope::Conversation(..), None) => continue,
            };
            if !contacts.contains(&wrapper) {
                contacts.push(wrapper);
            }
        }
        let keys = futures::future::try_join_all(contacts.iter().map(|s| self.ensure(s, None, false))).await?;
        let mut prepared: Prepared = contacts.into_iter().zip(keys).collect();
        let conversations: Vec<(KeyScope, Option<ContactId>)> =
            wanted.into_iter().filter(|(s, _)| matches!(s, KeyScope::Conversation(..))).collect();
        let keys = futures::future::try_join_all(
            conversations.iter().map(|(scope, contact)| self.ensure(scope, contact.as_ref(), contact.is_some())),
        )
        .await?;
        prepared.extend(conversations.into_iter().map(|(scope, _)| scope).zip(keys));
        Ok(prepared)
    }

    /// `commit` with every personal value sealed with the keys of `prepared`
    /// (values already sealed, or a key missing from `prepared`, stay as they are).
    pub fn seal(commit: &Commit, prepared: &Prepared) -> Commit {
        let mut sealed = commit.clone();
        personal::visit_mut(&mut sealed, &mut |scope, place, value| {
            // Already sealed with this scope's key (a commit sealed before, appended
            // again) stays; a text that only looks sealed is sealed like any other.
            if value == ERASED || Self::sealed_with(prepared, scope, value) {
                return;
            }
            if let Some(key) = prepared.get(scope) {
                let token = scope.token();
                let body = key.seal_placed(&token, place, value.as_bytes());
                *value = format!(
                    "{SEALED_PERSONAL_PREFIX}{token}:{}",
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(body)
                );
            }
        });
        sealed
    }

    /// Opens every sealed personal value of `commit` in place; one whose key
    /// is gone reads [`ERASED`]. Plaintext (from before sealing) stays.
    pub async fn open(&self, commit: &mut Commit) -> Result<(), StoreError> {
        self.open_each(|f| personal::visit_mut(commit, &mut |_, _, value| f(value))).await
    }

    /// Opens every sealed personal value anywhere in `value` (a read
    /// model's entry, a webhook body) in place, as [`Keyring::open`] does.
    pub async fn open_json(&self, value: &mut serde_json::Value) -> Result<(), StoreError> {
        fn walk(value: &mut serde_json::Value, f: &mut dyn FnMut(&mut String)) {
            match value {
                serde_json::Value::String(s) => f(s),
                serde_json::Value::Array(items) => items.iter_mut().for_each(|v| walk(v, f)),
                serde_json::Value::Object(map) => map.values_mut().for_each(|v| walk(v, f)),
                _ => {}
            }
        }
        self.open_each(|f| walk(value, f)).await
    }

    /// Opens the sealed values `visit` hands to its callback: a first visit
    /// learns which keys they need (fetched together), a second opens them.
    async fn open_each(&self, mut visit: impl FnMut(&mut dyn FnMut(&mut String))) -> Result<(), StoreError> {
        let mut wanted: Vec<KeyScope> = Vec::new();
        visit(&mut |value| {
            if let Some((scope, _)) = personal::split_sealed(value)
                && !wanted.contains(&scope)
            {
                wanted.push(scope);
            }
        });
        if wanted.is_empty() {
            return Ok(());
        }
        let keys = self.fetch_all(wanted).await?;
        visit(&mut |value| Self::open_value(&keys, value));
        Ok(())
    }

    /// `text` (JSON: a webhook body, a JSON line) with every sealed personal
    /// value opened in place and escaped for a JSON string, the rest byte
    /// for byte as it was.
    pub async fn open_text(&self, text: &str) -> Result<String, StoreError> {
        let is_sealed_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
        let mut pieces: Vec<(usize, usize)> = Vec::new();
        let mut from = 0;
        while let Some(at) = text[from..].find(SEALED_PERSONAL_PREFIX) {
            let start = from + at;
            let end = text[start..].find(|c: char| !is_sealed_char(c)).map_or(text.len(), |n| start + n);
            pieces.push((start, end));
            from = end;
        }
        if pieces.is_empty() {
            return Ok(text.to_owned());
        }
        let mut wanted: Vec<KeyScope> = Vec::new();
        for (start, end) in &pieces {
            if let Some((scope, _)) = personal::split_sealed(&text[*start..*end])
                && !wanted.contains(&scope)
            {
                wanted.push(scope);
            }
        }
        let keys = self.fetch_all(wanted).await?;
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for (start, end) in pieces {
            out.push_str(&text[last..start]);
            let mut value = text[start..end].to_owned();
            Self::open_value(&keys, &mut value);
            let quoted = serde_json::to_string(&value).expect("a string serializes");
            out.push_str(&quoted[1..quoted.len() - 1]);
            last = end;
        }
        out.push_str(&text[last..]);
        Ok(out)
    }

    async fn fetch_all(&self, wanted: Vec<KeyScope>) -> Result<HashMap<KeyScope, Option<Arc<Sealer>>>, StoreError> {
        let mut keys = HashMap::with_capacity(wanted.len());
        for scope in wanted {
            let key = self.fetch(&scope).await?;
            keys.insert(scope, key);
        }
        Ok(keys)
    }

    /// Whether `value` is sealed with `scope`'s key of `prepared` (it opens with it).
    fn sealed_with(prepared: &Prepared, scope: &KeyScope, value: &str) -> bool {
        let Some((sealed_for, body)) = personal::split_sealed(value) else { return false };
        let Some(key) = prepared.get(scope).filter(|_| sealed_for == *scope) else { return false };
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .is_ok_and(|bytes| key.open_bytes(&scope.token(), &bytes).is_ok())
    }

    /// `value` opened with `keys` if it is sealed ([`ERASED`] when its key is gone).
    fn open_value(keys: &HashMap<KeyScope, Option<Arc<Sealer>>>, value: &mut String) {
        let Some((scope, body)) = personal::split_sealed(value) else { return };
        let opened = keys
            .get(&scope)
            .cloned()
            .flatten()
            .and_then(|key| {
                let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(body).ok()?;
                key.open_bytes(&scope.token(), &bytes).ok()
            })
            .and_then(|bytes| String::from_utf8(bytes).ok());
        *value = opened.unwrap_or_else(|| ERASED.to_owned());
    }

    /// Wraps again with the master every key a retired master wrapped (the
    /// contacts' keys, a conversation's made without its contact, and the
    /// canary; a conversation key wrapped by its contact's needs nothing),
    /// so the retired masters open nothing any more. Each key goes through
    /// a staging subject so no crash loses it: the key wrapped again is
    /// written to `rotating.<name>`, the old message removed with the
    /// server's secure erase (nothing wrapped by the old master is left in
    /// the files), the new one written in its place, the staging message
    /// erased. A run cut short (`cut_after` keys: tests) is finished by the
    /// next. Keys no master opens are left as they are and counted.
    pub async fn rewrap(&self, cut_after: Option<u64>) -> Result<Rewrapped, StoreError> {
        let Backend::Stream { js, stream, prefix, .. } = &self.backend else {
            return Err(StoreError::Refused("a rotation needs the keys stream".into()));
        };
        let mut report = Rewrapped::default();
        // Every key as the stream holds it: name, sequence, bytes (read once).
        let mut held: Vec<(String, u64, Vec<u8>)> = Vec::new();
        let mut info = js.get_stream(stream.cached_info().config.name.clone()).await.map_err(unavailable)?;
        let state = info.info().await.map_err(unavailable)?.state.clone();
        // (an empty stream's range is empty: it may still name a first sequence)
        let last = if state.messages == 0 { 0 } else { state.last_sequence };
        let seqs = state.first_sequence.max(1)..=last;
        for seq in seqs {
            match stream.get_raw_message(seq).await {
                Ok(message) => {
                    let name = message.subject.strip_prefix(prefix.as_str()).and_then(|t| t.strip_prefix('.'));
                    held.push((name.unwrap_or_default().to_owned(), seq, message.payload.to_vec()));
                }
                Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        // A run cut short first: each staged key put back where its key is missing.
        for (name, seq, bytes) in held.iter().filter(|(n, ..)| n.starts_with(ROTATING)) {
            let target = &name[ROTATING.len()..];
            if !held.iter().any(|(n, ..)| n == target) {
                self.create(target, bytes.clone(), 0).await?;
                report.finished += 1;
            }
            self.erase_message(*seq).await?;
        }
        let mut done = 0;
        for (name, seq, bytes) in held.iter().filter(|(n, ..)| !n.starts_with(ROTATING)) {
            let Ok(stored) = postcard::from_bytes::<StoredKey>(bytes) else {
                report.unopenable += 1;
                continue;
            };
            if stored.wrapped_by.is_some() {
                report.under_contacts += 1;
                continue;
            }
            // A scope's key is sealed for `data-key/<token>`, the canary for `data-key/canary`.
            let context = format!("data-key/{name}");
            if self.master.open_bytes(&context, &stored.sealed).is_ok() {
                report.already += 1;
                continue;
            }
            let Some(raw) = self.retired.iter().find_map(|m| m.open_bytes(&context, &stored.sealed).ok()) else {
                report.unopenable += 1;
                continue;
            };
            if cut_after == Some(done) {
                return Err(unavailable(format!("cut short after {done} keys")));
            }
            let again = StoredKey { wrapped_by: None, sealed: self.master.seal_bytes(&context, &raw) };
            let again = postcard::to_allocvec(&again).map_err(|e| StoreError::Refused(e.to_string()))?;
            let staging = format!("{ROTATING}{name}");
            if !self.create(&staging, again.clone(), 0).await? {
                return Err(StoreError::Refused(format!("{staging} is there already: run the rotation again")));
            }
            self.erase_message(*seq).await?;
            if !self.create(name, again, 0).await? {
                return Err(StoreError::Refused(format!(
                    "data key {name} was written meanwhile: is an engine running?"
                )));
            }
            let (staged, _) = self.get(&staging).await?.ok_or_else(|| unavailable(format!("{staging} is gone")))?;
            self.erase_message(staged).await?;
            done += 1;
            report.rewrapped += 1;
        }
        self.cache.lock().expect("key cache lock").clear();
        Ok(report)
    }

    /// Removes one message of the keys stream with the server's secure erase.
    async fn erase_message(&self, seq: u64) -> Result<(), StoreError> {
        let Backend::Stream { stream, .. } = &self.backend else { return Ok(()) };
        match stream.delete_message(seq).await {
            Ok(_) => Ok(()),
            Err(e) if crate::already_gone(&e) => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Destroys the key of `scope` (its history purged from the bucket):
    /// everything sealed with it — and, for a contact, with the keys of
    /// their conversations — reads [`ERASED`] from now on (in other
    /// processes within [`KEY_CACHE_TTL`]).
    pub async fn destroy(&self, scope: &KeyScope) -> Result<(), StoreError> {
        self.purge(&scope.token(), None).await?;
        let mut cache = self.cache.lock().expect("key cache lock");
        if let KeyScope::Contact(account, contact) = scope {
            cache.retain(|s, c| !(s.account() == account && c.wrapped_by.as_ref() == Some(contact)));
        }
        cache.insert(scope.clone(), Cached { key: None, wrapped_by: None, at: Instant::now() });
        Ok(())
    }

    /// Purges a conversation key wrapped by `contact`'s, now gone (the
    /// scrub after an erasure). A key made since (the conversation went on
    /// after the erasure) stays.
    pub async fn purge_key(&self, scope: &KeyScope, contact: &ContactId) -> Result<(), StoreError> {
        self.purge(&scope.token(), Some(contact)).await?;
        self.cache.lock().expect("key cache lock").remove(scope);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use convo_domain::conversation::ConversationEvent;
    use convo_domain::{AccountId, Actor, CommandId, ConversationId, Timestamp};
    use convo_wire::{CommitEvent, Event, StreamRef};

    fn message(conversation: &str, seq: u64, text: &str) -> Commit {
        Commit {
            account: AccountId::new("acme").unwrap(),
            stream: StreamRef::Conversation(ConversationId::new(conversation).unwrap()),
            command: CommandId::new(&format!("m{seq}")).unwrap(),
            correlation: CommandId::new(&format!("m{seq}")).unwrap(),
            at: Timestamp::from_millis(0),
            events: vec![CommitEvent {
                seq,
                actor: Actor::System("test".into()),
                event: Event::Conversation(ConversationEvent::MessageReceived {
                    text: text.into(),
                    attachments: vec![],
                }),
            }],
        }
    }

    fn text(commit: &Commit) -> &str {
        match &commit.events[0].event {
            Event::Conversation(ConversationEvent::MessageReceived { text, .. }) => text,
            _ => unreachable!(),
        }
    }

    #[tokio::test]
    async fn sealed_values_open_until_the_key_is_destroyed() {
        let keys = Keyring::in_memory([3; 32]);
        let commit = message("c1", 2, "hola, soy Ana");
        let prepared = keys.prepare(&[&commit]).await.unwrap();
        let sealed = Keyring::seal(&commit, &prepared);
        assert!(text(&sealed).starts_with("pd:v1:v.acme.c1:") && !text(&sealed).contains("Ana"));
        assert_eq!(sealed, Keyring::seal(&commit, &prepared), "the same commit seals to the same bytes");
        assert_ne!(text(&sealed), text(&Keyring::seal(&message("c1", 3, "hola, soy Ana"), &prepared)));
        let mut opened = sealed.clone();
        keys.open(&mut opened).await.unwrap();
        assert_eq!(opened, commit);
        let quoted = Keyring::seal(&message("c1", 4, "dijo \"hola\"\n"), &prepared);
        let body = format!(r#"{{"text":"{}"}}"#, text(&quoted));
        assert_eq!(keys.open_text(&body).await.unwrap(), r#"{"text":"dijo \"hola\"\n"}"#);
        keys.destroy(&KeyScope::Conversation(AccountId::new("acme").unwrap(), ConversationId::new("c1").unwrap()))
            .await
            .unwrap();
        let mut opened = sealed.clone();
        keys.open(&mut opened).await.unwrap();
        assert_eq!(text(&opened), ERASED);
        let body = format!(r#"{{"data":{{"text":"{}","n":1}}}}"#, text(&sealed));
        assert_eq!(keys.open_text(&body).await.unwrap(), r#"{"data":{"text":"[erased]","n":1}}"#);
        let mut plain = message("c2", 1, "from before sealing");
        keys.open(&mut plain).await.unwrap();
        assert_eq!(text(&plain), "from before sealing", "plaintext stays readable");
    }

    #[tokio::test]
    async fn a_text_that_only_looks_sealed_is_sealed_and_a_scrub_keeps_keys_made_since() {
        let keys = Keyring::in_memory([4; 32]);
        let fake = "pd:v1:v.acme.c1:AAAAAAAAAAAAAAAAAAAAAAAA";
        let commit = message("c1", 1, fake);
        let prepared = keys.prepare(&[&commit]).await.unwrap();
        let sealed = Keyring::seal(&commit, &prepared);
        assert_ne!(text(&sealed), fake, "a user's text is never kept in clear because of its shape");
        let mut opened = sealed.clone();
        keys.open(&mut opened).await.unwrap();
        assert_eq!(text(&opened), fake);
        // This conversation's key is not wrapped by contact k-1's: a scrub after k-1's erasure keeps it.
        let account = AccountId::new("acme").unwrap();
        let scope = KeyScope::Conversation(account.clone(), ConversationId::new("c1").unwrap());
        keys.purge_key(&scope, &ContactId::new("k-1").unwrap()).await.unwrap();
        let mut opened = sealed.clone();
        keys.open(&mut opened).await.unwrap();
        assert_eq!(text(&opened), fake);
    }
}
