//! Commands over NATS request/reply: the transport half of the engine's
//! intake, here so that only this crate names `async-nats`. Requests arrive on
//! `<prefix>.<account>.cmd.<anything>`, in a queue group so several engine
//! instances share them.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use crate::StoreError;

/// The queue group of engine instances.
pub const QUEUE_GROUP: &str = "convo-engine";
/// How long `request` waits for the engine's reply.
pub const REQUEST_TIMEOUT_MS: u64 = 10_000;

/// One command request.
#[derive(Debug)]
pub struct Request {
    /// The account named by the subject (`<prefix>.<account>.cmd.…`).
    pub account: String,
    /// The command type the subject names (`<prefix>.<account>.cmd.<type>`).
    pub kind: String,
    pub subject: String,
    pub payload: Bytes,
    reply: Option<async_nats::Subject>,
}

/// The engine's side: incoming requests, and a way to answer them.
#[derive(Debug)]
pub struct CommandBus {
    client: async_nats::Client,
    subscriber: async_nats::Subscriber,
}

impl CommandBus {
    /// Subscribes to every account's command subjects under `prefix`.
    pub async fn subscribe(client: async_nats::Client, prefix: &str) -> Result<Self, StoreError> {
        let subscriber = client
            .queue_subscribe(format!("{prefix}.*.cmd.>"), QUEUE_GROUP.to_owned())
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Self { client, subscriber })
    }

    /// The next request (`None` once unsubscribed).
    pub async fn next(&mut self) -> Option<Request> {
        let message = self.subscriber.next().await?;
        let subject = message.subject.to_string();
        let account = subject.split('.').nth(1).unwrap_or("").to_owned();
        let kind = subject.splitn(4, '.').nth(3).unwrap_or("").to_owned();
        Some(Request { account, kind, subject, payload: message.payload, reply: message.reply })
    }

    /// Answers a request (a request without a reply subject gets none).
    pub async fn respond(&self, request: &Request, body: Vec<u8>) -> Result<(), StoreError> {
        self.responder().respond(request, body).await
    }

    /// A handle that answers requests while this bus keeps receiving.
    pub fn responder(&self) -> Responder {
        Responder { client: self.client.clone() }
    }

    /// Stops taking requests; those already received can still be answered.
    pub async fn close(&mut self) {
        let _ = self.subscriber.unsubscribe().await;
    }
}

/// Answers requests taken from a [`CommandBus`].
#[derive(Debug, Clone)]
pub struct Responder {
    client: async_nats::Client,
}

impl Responder {
    /// Answers a request (a request without a reply subject gets none).
    pub async fn respond(&self, request: &Request, body: Vec<u8>) -> Result<(), StoreError> {
        if let Some(reply) = &request.reply {
            // No flush: the client's writer sends buffered messages promptly; a
            // flush per reply only added a round trip (measured: ~3%, BENCHMARKS.md).
            self.client
                .publish(reply.clone(), body.into())
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        }
        Ok(())
    }
}

/// A client's side: send one command and wait for the reply.
pub async fn request(url: &str, subject: &str, payload: Vec<u8>) -> Result<Bytes, StoreError> {
    let client = async_nats::connect(url).await.map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let reply = tokio::time::timeout(
        Duration::from_millis(REQUEST_TIMEOUT_MS),
        client.request(subject.to_owned(), payload.into()),
    )
    .await
    .map_err(|_| StoreError::Unavailable(format!("no reply on {subject} within {REQUEST_TIMEOUT_MS} ms")))?
    .map_err(|e| StoreError::Unavailable(format!("{subject}: {e}")))?;
    Ok(reply.payload)
}
