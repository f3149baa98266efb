//! The event store on NATS JetStream.
//!
//! One stream holds every commit of every account, on subjects
//! `<prefix>.<account>.conv.<id>.<kind>`, `<prefix>.<account>.agent.<id>.state`
//! and `<prefix>.<account>.config.<entity>` (command intake subjects,
//! `<prefix>.<account>.cmd.…`, stay outside it). An append carries
//! `Nats-Expected-Last-Subject-Sequence` with
//! `Nats-Expected-Last-Subject-Sequence-Subject` set to the aggregate's
//! wildcard, so the check covers all of the aggregate's subjects, and a
//! `Nats-Msg-Id` naming the commit's place, so a retried append whose
//! acknowledgement was lost is recognised as a duplicate (within the broker's
//! two-minute window) instead of written twice.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{Config, DirectGetErrorKind, RawMessageErrorKind, StorageType};
use async_nats::jetstream::{self};
use bytes::Bytes;
use futures::StreamExt;

use convo_domain::AccountId;
use convo_wire::{Commit, StreamRef, headers};

use crate::fence::Fence;
use crate::keys::Keyring;
use crate::signing::{SIGNATURE_HEADER, Signing};
use crate::{
    APPEND_RETRIES_MAX, COMMITS_PER_LOAD_MAX, CommitStream, EventStore, LogItem, Raw, StoreError, check_server_version,
    decode_signed,
};

/// How long one read of a stored message may take before the store is
/// declared unavailable.
pub const READ_TIMEOUT_MS: u64 = 60_000;

/// How many commits a read takes one by one (a get the stream's leader
/// answers) before it makes a consumer for the rest: a consumer's creation
/// and deletion go through the cluster's meta leader, a few gets do not.
pub const DIRECT_READ_MAX: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    File,
    Memory,
}

/// Where and how commits are stored.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The first token of every subject.
    pub prefix: String,
    /// The JetStream stream's name.
    pub stream: String,
    /// Replicas of the stream (3 in a production cluster).
    pub replicas: usize,
    pub storage: Storage,
    /// How long an append waits for its acknowledgement.
    pub ack_timeout_ms: u64,
    /// Retries of an append when the broker is unreachable or slow.
    pub append_retries_max: u32,
    /// The engine's key: appends are signed, and reads refuse what it does
    /// not vouch for (see [`crate::signing`]). `None`: neither.
    pub signing: Option<std::sync::Arc<crate::signing::Signing>>,
}

impl StoreConfig {
    /// The settings for a subject prefix: the stream is named after it
    /// (`convo` → `CONVO`), so every tool that names the prefix finds the same stream.
    pub fn for_prefix(prefix: &str) -> Self {
        let stream = prefix.to_ascii_uppercase().replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        Self { prefix: prefix.to_owned(), stream, ..Self::default() }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            prefix: convo_wire::DEFAULT_PREFIX.into(),
            stream: "CONVO".into(),
            replicas: 1,
            storage: Storage::File,
            ack_timeout_ms: 5_000,
            append_retries_max: APPEND_RETRIES_MAX,
            signing: None,
        }
    }
}

/// The first wait before an append is tried again (doubling each time).
pub const APPEND_BACKOFF_MS: u64 = 200;

/// The stream metadata key recording the partition count.
pub const PARTITIONS_KEY: &str = "convo_partitions";

/// The partition count a stream's config records.
fn recorded_in(config: &Config) -> Option<usize> {
    config.metadata.get(PARTITIONS_KEY).and_then(|v| v.parse::<usize>().ok()).filter(|n| *n > 0)
}

/// The JetStream event store.
#[derive(Debug, Clone)]
pub struct JetStreamStore {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    config: StoreConfig,
    /// This writer's hold on its partition's fence: appends carry its epoch
    /// (see [`crate::fence`]); `None`: appends carry the aggregate's expectation.
    fence: Option<std::sync::Arc<Fence>>,
    /// The server takes atomic batches (2.12+) and the stream allows them.
    batches: bool,
    /// The data keys personal values are sealed with on append and opened
    /// with on read (see [`crate::keys`]); `None`: neither (tools, tests).
    keys: Option<std::sync::Arc<Keyring>>,
}

/// One commit made ready to publish.
struct Outgoing {
    subject: async_nats::Subject,
    payload: Bytes,
    headers: HeaderMap,
    /// The aggregate's filter subject (what a conflict names).
    filter: String,
}

/// What the server answers a batch's commit message (a `PubAck`, or an error).
#[derive(serde::Deserialize)]
struct BatchAck {
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    count: usize,
    error: Option<BatchAckError>,
}

#[derive(serde::Deserialize)]
struct BatchAckError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

/// JetStream's "wrong last sequence" (an expectation failed) error codes.
const WRONG_LAST_SEQUENCE_CODES: [u64; 2] = [10071, 10164];

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The stream named `name`, if the server has one (`None`: it has none).
pub(crate) async fn existing(
    js: &jetstream::Context,
    name: &str,
) -> Result<Option<jetstream::stream::Stream>, StoreError> {
    match js.get_stream(name).await {
        Ok(stream) => Ok(Some(stream)),
        Err(e) => match e.kind() {
            jetstream::context::GetStreamErrorKind::JetStream(why)
                if why.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(None)
            }
            _ => Err(unavailable(e)),
        },
    }
}

impl JetStreamStore {
    /// Connects, refuses servers older than 2.11, and creates the stream if needed.
    pub async fn connect(url: &str, config: StoreConfig) -> Result<Self, StoreError> {
        let client = crate::connect(url).await?;
        Self::with_client(client, config).await
    }

    /// The stream as it is, made by no one here: `None` when the server has
    /// no stream of that name yet (for tools that must create nothing).
    pub async fn existing(url: &str, config: StoreConfig) -> Result<Option<Self>, StoreError> {
        let client = crate::connect(url).await?;
        check_server_version(&client.server_info().version)?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(Duration::from_millis(config.ack_timeout_ms));
        let Some(mut stream) = existing(&js, &config.stream).await? else { return Ok(None) };
        // Batches only where the stream already allows them (this changes nothing).
        let batches = stream.info().await.map_err(unavailable)?.config.allow_atomic_publish;
        Ok(Some(Self { client, js, stream, config, fence: None, batches, keys: None }))
    }

    pub async fn with_client(client: async_nats::Client, config: StoreConfig) -> Result<Self, StoreError> {
        check_server_version(&client.server_info().version)?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(Duration::from_millis(config.ack_timeout_ms));
        let prefix = &config.prefix;
        let subjects = vec![
            format!("{prefix}.*.conv.>"),
            format!("{prefix}.*.agent.>"),
            format!("{prefix}.*.config.>"),
            format!("{prefix}.*.contacts.>"),
            crate::fence::subject(prefix, 0).replace(".0", ".*"),
        ];
        let batches =
            crate::server_version(&client.server_info().version).is_some_and(|v| v >= crate::SERVER_VERSION_BATCHES);
        let mut stream = js
            .get_or_create_stream(Config {
                name: config.stream.clone(),
                subjects: subjects.clone(),
                storage: match config.storage {
                    Storage::File => StorageType::File,
                    Storage::Memory => StorageType::Memory,
                },
                num_replicas: config.replicas,
                duplicate_window: Duration::from_secs(120),
                allow_direct: true,
                allow_atomic_publish: batches,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        // A stream made before contacts existed takes their subjects too; one
        // made before group commit, atomic batches.
        let info = stream.info().await.map_err(unavailable)?.config.clone();
        let missing = subjects.iter().find(|s| !info.subjects.contains(s));
        if missing.is_some() || (batches && !info.allow_atomic_publish) {
            if let Some(missing) = missing {
                tracing::info!("adding {missing} to stream {}", config.stream);
            } else {
                tracing::info!("allowing atomic batches (group commit) on stream {}", config.stream);
            }
            let mut updated = info.clone();
            updated.subjects = subjects.clone();
            updated.allow_atomic_publish |= batches;
            js.update_stream(updated).await.map_err(unavailable)?;
            stream = js.get_stream(&config.stream).await.map_err(unavailable)?;
        }
        Ok(Self { client, js, stream, config, fence: None, batches, keys: None })
    }

    /// The data keys of this stream (the bucket made with the stream's
    /// replicas if missing), wrapped by `master`.
    pub async fn keyring(&self, master: [u8; 32]) -> Result<Keyring, StoreError> {
        Keyring::connect(&self.js, &self.config.stream, self.config.replicas, master, &[]).await
    }

    /// The data keys of this stream wrapped by `signing`'s master (opened
    /// also with the older masters of a rotation not yet finished).
    pub async fn keyring_of(&self, signing: &Signing) -> Result<Keyring, StoreError> {
        let retired = signing.retired_data_key_masters();
        Keyring::connect(&self.js, &self.config.stream, self.config.replicas, signing.data_key_master(), &retired).await
    }

    /// This store, sealing the personal values of what it appends with
    /// `keys` and opening them in what it reads.
    pub fn with_keys(mut self, keys: std::sync::Arc<Keyring>) -> Self {
        self.keys = Some(keys);
        self
    }

    /// The data keys this store seals and opens with, if any.
    pub fn keys(&self) -> Option<&std::sync::Arc<Keyring>> {
        self.keys.as_ref()
    }

    /// `commits` with their personal values sealed (as they are without keys).
    async fn sealed(&self, commits: &[&Commit]) -> Result<Option<Vec<Commit>>, StoreError> {
        let Some(keys) = self.keys.as_deref() else { return Ok(None) };
        let prepared = keys.prepare(commits).await?;
        Ok(Some(commits.iter().map(|c| Keyring::seal(c, &prepared)).collect()))
    }

    /// Destroys at once the keys of the contacts `commits` (appended)
    /// erase, so this process seals nothing new with them. The eraser
    /// destroys them too (and does the rest): a failure here is only said.
    /// (An expired conversation's key is left to the eraser: a closed
    /// conversation seals nothing new.)
    async fn erased_now(&self, commits: &[&Commit]) {
        let Some(keys) = self.keys.as_deref() else { return };
        for commit in commits {
            for scope in convo_wire::personal::shredded_by(commit) {
                if let convo_wire::personal::KeyScope::Contact(_, contact) = &scope
                    && let Err(e) = keys.destroy(&scope).await
                {
                    tracing::warn!(contact = %contact, "the erased contact's key is left to the eraser: {e}");
                }
            }
        }
    }

    /// This store, appending as the holder of `fence` (every append carries
    /// its epoch; see [`crate::fence`]).
    pub fn fenced(&self, fence: std::sync::Arc<Fence>) -> Self {
        Self { fence: Some(fence), ..self.clone() }
    }

    /// The stream sequence of partition `partition`'s last fence marker (0: none yet).
    pub async fn fence_position(&self, partition: usize) -> Result<u64, StoreError> {
        let subject = crate::fence::subject(&self.config.prefix, partition);
        match self.stream.direct_get_last_for_subject(subject.clone()).await {
            Ok(message) => Ok(message.sequence),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(0),
            Err(e) => Err(unavailable(format!("reading {subject}: {e}"))),
        }
    }

    /// Publishes a marker on `partition`'s fence expecting the last one at
    /// `expected`; the new epoch, or [`StoreError::Deposed`] when another
    /// marker got there first.
    async fn publish_marker(&self, partition: usize, expected: u64, holder: &str) -> Result<u64, StoreError> {
        let subject = crate::fence::subject(&self.config.prefix, partition);
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, expected.to_string().as_str());
        let body = serde_json::json!({"partition": partition, "holder": holder}).to_string();
        let outcome = match self.js.publish_with_headers(subject, headers, body.into()).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(ack) => Ok(ack.sequence),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                let current = self.fence_position(partition).await.unwrap_or(0);
                Err(StoreError::Deposed { partition, epoch: expected, current })
            }
            Err(e) => Err(unavailable(format!("advancing partition {partition}'s fence: {e}"))),
        }
    }

    /// Takes partition `partition`'s fence for `holder`: a marker after the
    /// last one, whose sequence is the holder's epoch. From the moment it is
    /// stored, no earlier holder can append; take it before reading the
    /// partition's log, so what the reading sees is final.
    pub async fn take_fence(&self, partition: usize, holder: &str) -> Result<std::sync::Arc<Fence>, StoreError> {
        let current = self.fence_position(partition).await?;
        let epoch = self.publish_marker(partition, current, holder).await?;
        Ok(std::sync::Arc::new(Fence::new(partition, holder, epoch)))
    }

    /// Moves this holder's own fence on (after an append whose outcome is
    /// unknown): whatever of its earlier epoch is still on the way is refused.
    async fn advance(&self, fence: &Fence) -> Result<(), StoreError> {
        let _one = fence.advancing.lock().await;
        if !fence.dirty() {
            return Ok(()); // another read-back moved it meanwhile
        }
        let epoch = self.publish_marker(fence.partition, fence.epoch(), &fence.holder).await?;
        fence.set_epoch(epoch);
        fence.clean();
        Ok(())
    }

    /// `commit` as it is published: its subject, payload, and headers (the
    /// schema, the expectation — `epoch` on the fence when fenced, else
    /// `expected` on the aggregate — the id that makes a repeat a duplicate,
    /// and the signature).
    fn outgoing(&self, commit: &Commit, expected: u64, epoch: Option<u64>) -> Result<Outgoing, StoreError> {
        let payload = Bytes::from(commit.encode().map_err(|e| StoreError::Refused(e.to_string()))?);
        let prefix = &self.config.prefix;
        let filter = commit.stream.filter_subject(prefix, &commit.account);
        let (expected_seq, expected_on) = match (self.fence.as_deref(), epoch) {
            (Some(fence), Some(epoch)) => (epoch, crate::fence::subject(prefix, fence.partition)),
            _ => (expected, filter.clone()),
        };
        let msg_id = format!("{}/{}/{}", commit.account, commit.stream.path(), commit.first_seq());
        let subject = async_nats::Subject::from(commit.subject(prefix));
        let mut headers = HeaderMap::new();
        for (name, value) in commit.headers() {
            headers.insert(name, value.as_str());
        }
        headers.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, expected_seq.to_string().as_str());
        headers.insert("Nats-Expected-Last-Subject-Sequence-Subject", expected_on.as_str());
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
        if let Some(signing) = self.config.signing.as_deref() {
            let signature = signing.sign(&subject, &convo_wire::SCHEMA_VERSION.to_string(), &payload);
            headers.insert(SIGNATURE_HEADER, signature.as_str());
        }
        Ok(Outgoing { subject, payload, headers, filter })
    }

    /// Whether the connection to the server is up now (the client reconnects by itself).
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The underlying client (for command intake on the same connection).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// This store, signing its appends and checking its reads with `signing`.
    pub fn with_signing(mut self, signing: std::sync::Arc<Signing>) -> Self {
        self.config.signing = Some(signing);
        self
    }

    /// The version the connected server reported.
    pub fn server_version(&self) -> String {
        self.client.server_info().version
    }

    /// An ordered consumer of the whole log from `from_seq`, and how many
    /// messages it had pending when created. It is ephemeral: the server drops
    /// it 30 s after its reader is gone. Only whole-log reads (recovery, tail,
    /// projectors) use one; loads of one aggregate use direct gets.
    fn commits_filter(&self) -> String {
        // Commits only (4 tokens or more): the fences' markers are not part of the record.
        format!("{}.*.*.>", self.config.prefix)
    }

    async fn ordered_on(&self, from_seq: u64, mut filters: Vec<String>) -> Result<Ordered, StoreError> {
        let (filter_subject, filter_subjects) =
            if filters.len() == 1 { (filters.remove(0), Vec::new()) } else { (String::new(), filters) };
        let deliver_policy = if from_seq <= 1 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence { start_sequence: from_seq }
        };
        let config = OrderedConfig { deliver_policy, filter_subject, filter_subjects, ..Default::default() };
        let consumer = self.stream.create_consumer(config).await.map_err(unavailable)?;
        let pending = consumer.cached_info().num_pending;
        let name = consumer.cached_info().name.clone();
        let messages = consumer.messages().await.map_err(unavailable)?;
        Ok(Ordered { pending, name, messages })
    }

    /// The first message on `filter` at `next` or after, by direct get (no
    /// consumer; a replica may answer, and may lag); `None` past the last.
    async fn direct_next(&self, filter: &str, next: u64) -> Result<Option<StreamMessage>, StoreError> {
        let get = self.stream.direct_get_next_for_subject(filter, Some(next));
        next_or_none(filter, get, |e| e.kind() == DirectGetErrorKind::NotFound).await
    }

    /// [`Self::direct_next`] answered by the stream's leader: `None` means
    /// nothing after `next` yet, not a replica behind.
    async fn leader_next(&self, filter: &str, next: u64) -> Result<Option<StreamMessage>, StoreError> {
        let get = self.stream.raw_message_builder().sequence(next).next_by_subject(filter).send();
        next_or_none(filter, get, |e| e.kind() == RawMessageErrorKind::NoMessageFound).await
    }

    fn decode_direct(&self, message: &StreamMessage) -> LogItem {
        let raw = Raw {
            seq: message.sequence,
            subject: message.subject.to_string(),
            version: message.headers.get(headers::SCHEMA).map(|v| v.as_str()),
            signature: message.headers.get(SIGNATURE_HEADER).map(|v| v.as_str()),
            payload: &message.payload,
        };
        decode_signed(&self.config.prefix, self.config.signing.as_deref(), raw)
    }

    /// How many partitions share the stream's accounts: recorded in the
    /// stream's metadata (`convo_partitions`) by the first engine to ask
    /// (`requested`, else `default`), fixed after. A request for another
    /// count is refused: accounts would change partitions under running
    /// instances.
    pub async fn partitions(&self, requested: Option<usize>, default: usize) -> Result<usize, StoreError> {
        let mut stream = self.stream.clone();
        let info = stream.info().await.map_err(unavailable)?.clone();
        match (recorded_in(&info.config), requested.map(|n| n.max(1))) {
            (Some(count), Some(asked)) if asked != count => Err(StoreError::Refused(format!(
                "stream {} has {count} partitions (fixed when the first engine served it); drop --partitions or pass {count}",
                self.config.stream
            ))),
            (Some(count), _) => Ok(count),
            (None, asked) => {
                let count = asked.unwrap_or(default);
                let mut config = info.config.clone();
                config.metadata.insert(PARTITIONS_KEY.to_owned(), count.to_string());
                self.js.update_stream(config).await.map_err(unavailable)?;
                Ok(count)
            }
        }
    }

    /// How many replicas the stream has.
    pub async fn replicas(&self) -> Result<usize, StoreError> {
        let mut stream = self.stream.clone();
        Ok(stream.info().await.map_err(unavailable)?.config.num_replicas)
    }

    /// The partition count the stream records, if an engine has served it.
    pub async fn recorded_partitions(&self) -> Result<Option<usize>, StoreError> {
        let mut stream = self.stream.clone();
        Ok(recorded_in(&stream.info().await.map_err(unavailable)?.config))
    }

    /// The JetStream context (for the buckets beside the stream).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Where this stream's partition snapshots are kept (see [`crate::snapshot`]).
    pub async fn snapshots(&self) -> Result<crate::snapshot::Snapshots, StoreError> {
        crate::snapshot::Snapshots::open(&self.js, &self.config.stream, self.config.replicas).await
    }

    /// The directory of the engine instances sharing this stream's partitions (see [`crate::cluster`]).
    pub async fn directory(&self) -> Result<crate::cluster::Directory, StoreError> {
        let kv = crate::lease::Lease::bucket(&self.js, &self.config.stream, self.config.replicas).await?;
        Ok(crate::cluster::Directory::new(kv, &self.config.stream))
    }

    /// Removes one message from the stream (what `convo doctor --purge` does
    /// with a message recovery cannot apply). Returns whether it was there.
    pub async fn delete_message(&self, seq: u64) -> Result<bool, StoreError> {
        match self.stream.delete_message(seq).await {
            Ok(deleted) => Ok(deleted),
            Err(e) if crate::already_gone(&e) => Ok(false),
            Err(e) => Err(StoreError::Refused(e.to_string())),
        }
    }

    /// How many consumers the stream has (tests check that reads leave none behind).
    pub async fn consumer_count(&self) -> Result<usize, StoreError> {
        Ok(self.stream.clone().info().await.map_err(unavailable)?.state.consumer_count)
    }

    /// Publishes raw bytes on a subject of the stream, bypassing every check:
    /// for tests and tools that must put what a hostile or faulty client could
    /// into the log. Returns the stream sequence.
    pub async fn publish_raw(
        &self,
        subject: &str,
        headers: &[(&str, &str)],
        payload: Vec<u8>,
    ) -> Result<u64, StoreError> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, *value);
        }
        let ack = self.js.publish_with_headers(subject.to_owned(), map, payload.into()).await.map_err(unavailable)?;
        Ok(ack.await.map_err(unavailable)?.sequence)
    }
}

fn decode_message(prefix: &str, signing: Option<&Signing>, message: &jetstream::Message) -> LogItem {
    let info = message.info().map_err(unavailable)?;
    let header = |name: &str| message.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str());
    let raw = Raw {
        seq: info.stream_sequence,
        subject: message.subject.to_string(),
        version: header(headers::SCHEMA),
        signature: header(SIGNATURE_HEADER),
        payload: &message.payload,
    };
    decode_signed(prefix, signing, raw)
}

impl EventStore for JetStreamStore {
    async fn append(&self, commit: &Commit, expected: u64) -> Result<u64, StoreError> {
        // Fenced: the expectation is the owner's epoch on its partition's fence (see crate::fence).
        let fence = self.fence.as_deref();
        let epoch = fence.map(Fence::epoch);
        let sealed = self.sealed(&[commit]).await?;
        let logged = sealed.as_ref().map_or(commit, |s| &s[0]);
        let Outgoing { subject, payload, headers, filter } = self.outgoing(logged, expected, epoch)?;
        let signing = self.config.signing.as_deref();
        let mut last_error = String::new();
        for attempt in 0..=self.config.append_retries_max {
            if attempt > 0 {
                // A cluster electing the stream's leader answers nothing for a moment.
                tokio::time::sleep(Duration::from_millis(APPEND_BACKOFF_MS << (attempt - 1).min(4))).await;
            }
            let outcome = match self.js.publish_with_headers(subject.clone(), headers.clone(), payload.clone()).await {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(ack) => {
                    if let Some(signing) = signing
                        && let Err(e) = signing.anchor(commit, ack.sequence)
                    {
                        eprintln!("convo: could not write the anchors: {e}");
                    }
                    self.erased_now(&[commit]).await;
                    return Ok(ack.sequence);
                }
                Err(e) => match e.kind() {
                    PublishErrorKind::WrongLastSequence => {
                        let (Some(fence), Some(epoch)) = (fence, epoch) else {
                            return Err(StoreError::Conflict { stream: filter, expected });
                        };
                        // The fence moved: by this holder (after an unknown outcome) the append
                        // is decided again; by another, this holder is deposed.
                        let current = self.fence_position(fence.partition).await?;
                        if current == fence.epoch() {
                            return Err(StoreError::Conflict { stream: filter, expected });
                        }
                        return Err(StoreError::Deposed { partition: fence.partition, epoch, current });
                    }
                    // No responders (StreamNotFound) is what a stream without a leader gives too.
                    PublishErrorKind::TimedOut
                    | PublishErrorKind::BrokenPipe
                    | PublishErrorKind::MaxAckPending
                    | PublishErrorKind::StreamNotFound => {
                        last_error = e.to_string();
                    }
                    _ => return Err(StoreError::Refused(e.to_string())),
                },
            }
        }
        if let Some(fence) = fence {
            fence.mark_dirty(); // its outcome is unknown: the fence moves before anything is read back
        }
        Err(StoreError::Unavailable(format!(
            "append to {subject} failed {} times: {last_error}",
            self.config.append_retries_max + 1
        )))
    }

    async fn append_batch(&self, appends: &[(&Commit, u64)]) -> Result<Vec<u64>, StoreError> {
        if appends.len() > crate::BATCH_COMMITS_MAX {
            return Err(StoreError::Refused(format!(
                "a batch of {} commits is over the limit of {}",
                appends.len(),
                crate::BATCH_COMMITS_MAX
            )));
        }
        if !self.batches {
            return Err(StoreError::Refused("this server or stream takes no atomic batches".into()));
        }
        let fence = self.fence.as_deref();
        let epoch = fence.map(Fence::epoch);
        let commits: Vec<&Commit> = appends.iter().map(|(c, _)| *c).collect();
        let sealed = self.sealed(&commits).await?;
        let mut outgoing = Vec::with_capacity(appends.len());
        for (i, (commit, expected)) in appends.iter().enumerate() {
            let logged = sealed.as_ref().map_or(*commit, |s| &s[i]);
            outgoing.push(self.outgoing(logged, *expected, epoch)?);
        }
        let last = outgoing.len();
        let messages = outgoing.into_iter().map(|o| (o.subject, o.headers, o.payload)).collect();
        let timeout = Duration::from_millis(self.config.ack_timeout_ms);
        let last_seq = match publish_atomic(&self.client, messages, timeout).await {
            Ok(seq) => seq,
            Err(AtomicError::Unknown(why)) => {
                if let Some(fence) = fence {
                    fence.mark_dirty(); // its outcome is unknown: the fence moves before anything is read back
                }
                return Err(StoreError::Unavailable(format!("a batch of {last} commits: {why}")));
            }
            // Refused whole: nothing of the batch is stored.
            Err(AtomicError::Refused { code, why }) => {
                return Err(if WRONG_LAST_SEQUENCE_CODES.contains(&code) {
                    let (commit, expected) = &appends[0];
                    StoreError::Conflict {
                        stream: commit.stream.filter_subject(&self.config.prefix, &commit.account),
                        expected: *expected,
                    }
                } else {
                    StoreError::Refused(format!("a batch of {last} commits was refused: {why} ({code})"))
                });
            }
        };
        let first = last_seq + 1 - last as u64;
        let seqs: Vec<u64> = (first..=last_seq).collect();
        if let Some(signing) = self.config.signing.as_deref() {
            for ((commit, _), seq) in appends.iter().zip(&seqs) {
                if let Err(e) = signing.anchor(commit, *seq) {
                    eprintln!("convo: could not write the anchors: {e}");
                }
            }
        }
        self.erased_now(&appends.iter().map(|(c, _)| *c).collect::<Vec<_>>()).await;
        Ok(seqs)
    }

    fn batch_commits_max(&self) -> usize {
        if self.batches { crate::BATCH_COMMITS_MAX } else { 1 }
    }

    fn serial_writes(&self) -> bool {
        self.config.replicas > 1
    }

    /// One aggregate's messages by direct gets ("the next message on this
    /// filter after sequence n"), so a load (after every conflict, or to read
    /// an evicted conversation back) creates no consumer on the server.
    async fn load(&self, account: &AccountId, stream: &StreamRef) -> Result<Vec<LogItem>, StoreError> {
        let items = self.load_as_logged(account, stream).await?;
        let Some(keys) = self.keys.as_deref() else { return Ok(items) };
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match item {
                // A commit the key store cannot open now fails the whole load:
                // an aggregate rebuilt without it would decide on a stale state.
                Ok(mut stored) => {
                    keys.open(&mut stored.commit).await?;
                    out.push(Ok(stored));
                }
                Err(e) => out.push(Err(e)),
            }
        }
        Ok(out)
    }

    async fn subscribe(&self, from_seq: u64) -> Result<CommitStream, StoreError> {
        Ok(opened(self.keys.clone(), self.subscribe_as_logged(from_seq).await?))
    }

    async fn read(&self, from_seq: u64) -> Result<CommitStream, StoreError> {
        Ok(opened(self.keys.clone(), self.read_as_logged(from_seq).await?))
    }

    async fn read_as_logged(&self, from_seq: u64) -> Result<CommitStream, StoreError> {
        JetStreamStore::read_as_logged(self, from_seq).await
    }

    async fn load_as_logged(&self, account: &AccountId, stream: &StreamRef) -> Result<Vec<LogItem>, StoreError> {
        JetStreamStore::load_as_logged(self, account, stream).await
    }

    async fn open(&self, commit: &mut Commit) -> Result<(), StoreError> {
        match self.keys.as_deref() {
            Some(keys) => keys.open(commit).await,
            None => Ok(()),
        }
    }

    /// The last commit's sequence (or a deleted message's): the fences'
    /// markers after it do not count, so a reader that holds every commit is
    /// at the end.
    async fn last_seq(&self) -> Result<u64, StoreError> {
        let mut last = self.stream.get_info().await.map_err(unavailable)?.state.last_sequence;
        while last > 0 {
            match self.stream.direct_get(last).await {
                Ok(message) if crate::fence::is_fence(&self.config.prefix, &message.subject) => last -= 1,
                _ => break,
            }
        }
        Ok(last)
    }
}

impl JetStreamStore {
    /// [`EventStore::load`], the commits as the log holds them (personal values sealed).
    pub async fn load_as_logged(&self, account: &AccountId, stream: &StreamRef) -> Result<Vec<LogItem>, StoreError> {
        if let Some(fence) = self.fence.as_deref().filter(|f| f.dirty()) {
            self.advance(fence).await?;
        }
        let prefix = &self.config.prefix;
        let filter = stream.filter_subject(prefix, account);
        let mut out = Vec::new();
        let mut next = 1;
        while let Some(message) = self.direct_next(&filter, next).await? {
            if out.len() == COMMITS_PER_LOAD_MAX {
                return Err(StoreError::TooManyCommits { stream: filter });
            }
            next = message.sequence + 1;
            out.push(self.decode_direct(&message));
        }
        Ok(out)
    }

    /// [`EventStore::subscribe`], the commits as the log holds them.
    pub async fn subscribe_as_logged(&self, from_seq: u64) -> Result<CommitStream, StoreError> {
        let ordered = self.ordered_on(from_seq, vec![self.commits_filter()]).await?;
        Ok(self.following(from_seq, ordered.messages))
    }

    /// Every account's contact-book commits and content expiries from
    /// `from_seq`, as logged, following new ones (one consumer for as long as
    /// it is read: what erasures follow).
    pub async fn follow_erasures(&self, from_seq: u64) -> Result<CommitStream, StoreError> {
        let prefix = &self.config.prefix;
        let filters = vec![format!("{prefix}.*.contacts.>"), format!("{prefix}.*.conv.*.expired")];
        let ordered = self.ordered_on(from_seq, filters).await?;
        Ok(self.following(from_seq, ordered.messages))
    }

    fn following(&self, from_seq: u64, messages: jetstream::consumer::pull::Ordered) -> CommitStream {
        let prefix = self.config.prefix.clone();
        let signing = self.config.signing.clone();
        // A consumer reset before its first message starts over from the beginning: nothing below `from_seq` passes.
        let below = move |m: &Result<jetstream::Message, _>| {
            let seq = m.as_ref().ok().and_then(|m| m.info().ok()).map(|i| i.stream_sequence);
            std::future::ready(seq.is_none_or(|seq| seq >= from_seq))
        };
        Box::pin(
            messages
                .filter(below)
                .map(move |m| m.map_err(unavailable).and_then(|m| decode_message(&prefix, signing.as_deref(), &m))),
        )
    }

    /// Reads the first [`DIRECT_READ_MAX`] commits one by one (gets the
    /// stream's leader answers: nothing is made on the server, so a reader that catches up a few
    /// commits at a time, as the catalogs' door does on every new end, costs
    /// the cluster no consumer), then the rest through a consumer. Ends at
    /// the log's end as the read finds it; deleted sequences are never awaited.
    pub async fn read_as_logged(&self, from_seq: u64) -> Result<CommitStream, StoreError> {
        let filter = self.commits_filter();
        let mut head = Vec::new();
        let mut next = from_seq.max(1);
        while head.len() < DIRECT_READ_MAX {
            let Some(message) = self.leader_next(&filter, next).await? else {
                return Ok(Box::pin(futures::stream::iter(head)));
            };
            next = message.sequence + 1;
            head.push(self.decode_direct(&message));
        }
        let rest = self.read_messages(next, self.ordered_on(next, vec![filter]).await?);
        Ok(Box::pin(futures::stream::iter(head).chain(rest)))
    }

    /// The contact-book commits of `account` (every account's: `None`) from
    /// `from_seq` to the log's end as of this call, as logged (what erasures follow).
    pub async fn read_contact_books(
        &self,
        account: Option<&AccountId>,
        from_seq: u64,
    ) -> Result<CommitStream, StoreError> {
        let account = account.map_or_else(|| "*".to_owned(), AccountId::to_string);
        let filter = format!("{}.{account}.contacts.>", self.config.prefix);
        Ok(self.read_messages(from_seq, self.ordered_on(from_seq, vec![filter]).await?))
    }

    /// The commits that open an account's conversations (on `….opened`, or
    /// `….closed` for one opened and closed at once), as logged: whose
    /// contact each conversation is (an erasure's list of conversations).
    pub async fn read_openings(&self, account: &AccountId) -> Result<CommitStream, StoreError> {
        let prefix = &self.config.prefix;
        let filters = vec![format!("{prefix}.{account}.conv.*.opened"), format!("{prefix}.{account}.conv.*.closed")];
        Ok(self.read_messages(1, self.ordered_on(1, filters).await?))
    }

    /// The JetStream context (for the feeds that keep streams of their own).
    pub fn context(&self) -> &jetstream::Context {
        &self.js
    }

    /// The consumer's messages up to the one the server reports nothing
    /// pending behind (none when nothing is pending); the consumer is then
    /// deleted, not left for the server to reap (a reader that stops early
    /// leaves it to the inactivity threshold).
    fn read_messages(&self, from_seq: u64, ordered: Ordered) -> CommitStream {
        let prefix = self.config.prefix.clone();
        let signing = self.config.signing.clone();
        let timeout = Duration::from_millis(READ_TIMEOUT_MS);
        let Ordered { pending, name, messages } = ordered;
        let reader = Reader { stream: self.stream.clone(), name, messages };
        if pending == 0 {
            reader.finish();
            return Box::pin(futures::stream::empty());
        }
        Box::pin(futures::stream::unfold(Some(reader), move |reader| {
            let prefix = prefix.clone();
            let signing = signing.clone();
            async move {
                let mut reader = reader?;
                loop {
                    let item = match tokio::time::timeout(timeout, reader.messages.next()).await {
                        Err(_) => {
                            reader.finish();
                            return Some((Err(StoreError::Unavailable("reading the log timed out".into())), None));
                        }
                        Ok(None) => {
                            reader.finish();
                            return None;
                        }
                        Ok(Some(Err(e))) => {
                            reader.finish();
                            return Some((Err(unavailable(e)), None));
                        }
                        Ok(Some(Ok(message))) => message,
                    };
                    let info = item.info().ok().map(|i| (i.stream_sequence, i.pending == 0, i.consumer.to_owned()));
                    let (seq, last) = match info {
                        Some((seq, last, consumer)) => {
                            // A reset consumer has a name of its own.
                            reader.name = consumer;
                            (seq, last)
                        }
                        None => (from_seq, true),
                    };
                    if last {
                        reader.finish();
                    }
                    if seq >= from_seq {
                        let decoded = decode_message(&prefix, signing.as_deref(), &item);
                        return Some((decoded, (!last).then_some(reader)));
                    }
                    // A consumer reset before its first message starts over from the beginning: skip below `from_seq`.
                    if last {
                        return None;
                    }
                }
            }
        }))
    }
}

/// A get's message within [`READ_TIMEOUT_MS`]; `None` when `none` says its error means "no such message".
async fn next_or_none<E: std::fmt::Display>(
    filter: &str,
    get: impl std::future::Future<Output = Result<StreamMessage, E>>,
    none: impl Fn(&E) -> bool,
) -> Result<Option<StreamMessage>, StoreError> {
    match tokio::time::timeout(Duration::from_millis(READ_TIMEOUT_MS), get).await {
        Err(_) => Err(StoreError::Unavailable(format!("reading {filter} timed out"))),
        Ok(Err(e)) if none(&e) => Ok(None),
        Ok(Err(e)) => Err(unavailable(format!("reading {filter}: {e}"))),
        Ok(Ok(message)) => Ok(Some(message)),
    }
}

/// An ordered consumer just made: what it has pending, its name, its messages.
struct Ordered {
    pending: u64,
    name: String,
    messages: jetstream::consumer::pull::Ordered,
}

/// A bounded read's consumer, deleted when the read ends.
struct Reader {
    stream: jetstream::stream::Stream,
    name: String,
    messages: jetstream::consumer::pull::Ordered,
}

impl Reader {
    /// Deletes the consumer in the background (the read does not wait for
    /// it; a delete that fails leaves the consumer to the server's reaper).
    fn finish(&self) {
        let (stream, name) = (self.stream.clone(), self.name.clone());
        tokio::spawn(async move {
            if let Err(e) = stream.delete_consumer(&name).await {
                tracing::debug!("consumer {name} not deleted after a read ({e}); the server reaps it");
            }
        });
    }
}

/// A read's commits with their personal values opened by `keys` (as they are without).
fn opened(keys: Option<std::sync::Arc<Keyring>>, stream: CommitStream) -> CommitStream {
    match keys {
        None => stream,
        Some(keys) => Box::pin(stream.then(move |item| {
            let keys = keys.clone();
            async move { open_item(&keys, item).await }
        })),
    }
}

/// One item of the log with its personal values opened; a key store that
/// cannot answer makes it an [`StoreError::Unavailable`].
async fn open_item(keys: &Keyring, item: LogItem) -> LogItem {
    let mut stored = item?;
    keys.open(&mut stored.commit).await?;
    Ok(stored)
}

/// Why an atomic batch was not (known to be) stored.
#[derive(Debug)]
pub(crate) enum AtomicError {
    /// The server refused it whole (nothing of it is stored): its error code and why.
    Refused { code: u64, why: String },
    /// No acknowledgement, or one that cannot be read: it may be stored or not.
    Unknown(String),
}

/// Publishes `messages` (≤ [`crate::BATCH_COMMITS_MAX`], at least one) as
/// one JetStream atomic batch (ADR-50): every message but the last is sent
/// without a reply, the last commits the batch and is answered with the
/// batch's acknowledgement — stored whole, with consecutive sequences
/// ending at the one returned, or not at all.
pub(crate) async fn publish_atomic(
    client: &async_nats::Client,
    messages: Vec<(async_nats::Subject, HeaderMap, Bytes)>,
    timeout: Duration,
) -> Result<u64, AtomicError> {
    let id = batch_id().map_err(|e| AtomicError::Refused { code: 0, why: format!("no batch id: {e}") })?;
    let last = messages.len();
    let mut ack = None;
    for (n, (subject, mut headers, payload)) in messages.into_iter().enumerate() {
        headers.insert(async_nats::header::NATS_BATCH_ID, id.as_str());
        headers.insert(async_nats::header::NATS_BATCH_SEQUENCE, (n + 1).to_string().as_str());
        if n + 1 < last {
            // Only the commit message is answered: the batch is stored whole or not at all.
            if let Err(e) = client.publish_with_headers(subject, headers, payload).await {
                return Err(AtomicError::Unknown(e.to_string()));
            }
        } else {
            headers.insert(async_nats::header::NATS_BATCH_COMMIT, "1");
            ack = Some(tokio::time::timeout(timeout, client.request_with_headers(subject, headers, payload)));
        }
    }
    let Some(ack) = ack else { return Err(AtomicError::Refused { code: 0, why: "an empty batch".into() }) };
    let reply = match ack.await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => return Err(AtomicError::Unknown(e.to_string())),
        Err(_) => return Err(AtomicError::Unknown(format!("no acknowledgement within {} ms", timeout.as_millis()))),
    };
    let ack: BatchAck = serde_json::from_slice(&reply.payload)
        .map_err(|e| AtomicError::Unknown(format!("an unreadable acknowledgement ({e})")))?;
    if let Some(error) = ack.error {
        return Err(AtomicError::Refused { code: error.err_code, why: error.description });
    }
    if ack.count != last || ack.seq < last as u64 {
        return Err(AtomicError::Unknown(format!("an acknowledgement of {} messages at {}", ack.count, ack.seq)));
    }
    Ok(ack.seq)
}

/// A batch id no other batch of this process or another has (≤ 64 bytes).
fn batch_id() -> Result<String, getrandom::Error> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut random = [0u8; 8];
    getrandom::getrandom(&mut random)?;
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(format!("convo-{:016x}-{n}", u64::from_le_bytes(random)))
}
