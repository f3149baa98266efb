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
use async_nats::jetstream::stream::{Config, StorageType};
use async_nats::jetstream::{self};
use bytes::Bytes;
use futures::StreamExt;

use convo_domain::AccountId;
use convo_wire::{Commit, StreamRef, headers};

use crate::{
    APPEND_RETRIES_MAX, COMMITS_PER_LOAD_MAX, CommitStream, EventStore, StoreError, StoredCommit, check_server_version,
    decode_stored,
};

/// How long one read of a stored message may take before the store is
/// declared unavailable.
pub const READ_TIMEOUT_MS: u64 = 10_000;

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
        }
    }
}

/// The JetStream event store.
#[derive(Debug, Clone)]
pub struct JetStreamStore {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    config: StoreConfig,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl JetStreamStore {
    /// Connects, refuses servers older than 2.11, and creates the stream if needed.
    pub async fn connect(url: &str, config: StoreConfig) -> Result<Self, StoreError> {
        let client = async_nats::ConnectOptions::new().name("convo").connect(url).await.map_err(unavailable)?;
        Self::with_client(client, config).await
    }

    pub async fn with_client(client: async_nats::Client, config: StoreConfig) -> Result<Self, StoreError> {
        check_server_version(&client.server_info().version)?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(Duration::from_millis(config.ack_timeout_ms));
        let prefix = &config.prefix;
        let stream = js
            .get_or_create_stream(Config {
                name: config.stream.clone(),
                subjects: vec![
                    format!("{prefix}.*.conv.>"),
                    format!("{prefix}.*.agent.>"),
                    format!("{prefix}.*.config.>"),
                ],
                storage: match config.storage {
                    Storage::File => StorageType::File,
                    Storage::Memory => StorageType::Memory,
                },
                num_replicas: config.replicas,
                duplicate_window: Duration::from_secs(120),
                allow_direct: true,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        Ok(Self { client, js, stream, config })
    }

    /// The underlying client (for command intake on the same connection).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// The version the connected server reported.
    pub fn server_version(&self) -> String {
        self.client.server_info().version
    }

    async fn read(&self, config: OrderedConfig) -> Result<(u64, jetstream::consumer::pull::Ordered), StoreError> {
        let consumer = self.stream.create_consumer(config).await.map_err(unavailable)?;
        let pending = consumer.cached_info().num_pending;
        let messages = consumer.messages().await.map_err(unavailable)?;
        Ok((pending, messages))
    }
}

fn decode_message(message: &jetstream::Message) -> Result<StoredCommit, StoreError> {
    let info = message.info().map_err(unavailable)?;
    let version = message.headers.as_ref().and_then(|h| h.get(headers::SCHEMA)).map(|v| v.as_str());
    decode_stored(info.stream_sequence, message.subject.to_string(), version, &message.payload)
}

impl EventStore for JetStreamStore {
    async fn append(&self, commit: &Commit, expected: u64) -> Result<u64, StoreError> {
        let payload = Bytes::from(commit.encode().map_err(|e| StoreError::Refused(e.to_string()))?);
        let prefix = &self.config.prefix;
        let filter = commit.stream.filter_subject(prefix, &commit.account);
        let mut headers = HeaderMap::new();
        for (name, value) in commit.headers() {
            headers.insert(name, value.as_str());
        }
        headers.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, expected.to_string().as_str());
        headers.insert("Nats-Expected-Last-Subject-Sequence-Subject", filter.as_str());
        let msg_id = format!("{}/{}/{}", commit.account, commit.stream.path(), commit.first_seq());
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
        let subject = commit.subject(prefix);
        let mut last_error = String::new();
        for _ in 0..=self.config.append_retries_max {
            let outcome = match self.js.publish_with_headers(subject.clone(), headers.clone(), payload.clone()).await {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(ack) => return Ok(ack.sequence),
                Err(e) => match e.kind() {
                    PublishErrorKind::WrongLastSequence => {
                        return Err(StoreError::Conflict { stream: filter, expected });
                    }
                    PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe | PublishErrorKind::MaxAckPending => {
                        last_error = e.to_string();
                    }
                    _ => return Err(StoreError::Refused(e.to_string())),
                },
            }
        }
        Err(StoreError::Unavailable(format!(
            "append to {subject} failed {} times: {last_error}",
            self.config.append_retries_max + 1
        )))
    }

    async fn load(&self, account: &AccountId, stream: &StreamRef) -> Result<Vec<StoredCommit>, StoreError> {
        let filter = stream.filter_subject(&self.config.prefix, account);
        let (pending, mut messages) = self
            .read(OrderedConfig {
                filter_subject: filter.clone(),
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await?;
        if pending as usize > COMMITS_PER_LOAD_MAX {
            return Err(StoreError::TooManyCommits { stream: filter });
        }
        let mut out = Vec::with_capacity(pending as usize);
        while out.len() < pending as usize {
            let next = tokio::time::timeout(Duration::from_millis(READ_TIMEOUT_MS), messages.next())
                .await
                .map_err(|_| StoreError::Unavailable(format!("reading {filter} timed out")))?;
            let Some(message) = next else { break };
            let message = message.map_err(unavailable)?;
            out.push(decode_message(&message)?);
        }
        Ok(out)
    }

    async fn subscribe(&self, from_seq: u64) -> Result<CommitStream, StoreError> {
        let deliver_policy = if from_seq <= 1 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence { start_sequence: from_seq }
        };
        let (_, messages) = self.read(OrderedConfig { deliver_policy, ..Default::default() }).await?;
        Ok(Box::pin(messages.map(|m| m.map_err(unavailable).and_then(|m| decode_message(&m)))))
    }

    async fn last_seq(&self) -> Result<u64, StoreError> {
        Ok(self.stream.get_info().await.map_err(unavailable)?.state.last_sequence)
    }
}
