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

/// The header that carries a request's bearer credential on NATS (as on HTTP).
pub const AUTHORIZATION: &str = "Authorization";

/// One request to the engine: a command, or a read to authorize.
#[derive(Debug)]
pub struct Request {
    /// The account named by the subject (`<prefix>.<account>.cmd.…`) or the URL.
    pub account: String,
    /// The command type the subject names (`<prefix>.<account>.cmd.<type>`),
    /// or the read model a read asks for.
    pub kind: String,
    /// A read to authorize (the gateway reads the read model itself) rather than a command.
    pub read: bool,
    pub subject: String,
    pub payload: Bytes,
    /// The bearer credential, as the client sent it.
    pub credential: Option<String>,
    /// The client's address as the server saw it (none over NATS: the broker does not pass it on).
    pub ip: Option<std::net::IpAddr>,
    reply: Reply,
}

#[derive(Debug)]
enum Reply {
    Nats(Option<async_nats::Subject>),
    Local(std::sync::Mutex<Option<tokio::sync::oneshot::Sender<Vec<u8>>>>),
}

impl Request {
    /// A request from another transport in this process (the HTTP gateway):
    /// its answer arrives on the returned receiver.
    pub fn local(
        account: String,
        kind: String,
        read: bool,
        payload: Bytes,
        credential: Option<String>,
        ip: Option<std::net::IpAddr>,
    ) -> (Self, tokio::sync::oneshot::Receiver<Vec<u8>>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let subject = format!("http:{account}.{kind}");
        let reply = Reply::Local(std::sync::Mutex::new(Some(tx)));
        (Self { account, kind, read, subject, payload, credential, ip, reply }, rx)
    }
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
        let credential = message.headers.as_ref().and_then(|h| h.get(AUTHORIZATION)).map(|v| v.as_str().to_owned());
        let reply = Reply::Nats(message.reply);
        Some(Request { account, kind, read: false, subject, payload: message.payload, credential, ip: None, reply })
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

/// The only subjects the engine answers on: reply inboxes.
pub const REPLY_PREFIX: &str = "_INBOX.";

/// Whether a request's reply subject is an inbox the engine may answer on.
pub fn reply_allowed(subject: &str) -> bool {
    subject.len() > REPLY_PREFIX.len()
        && subject.starts_with(REPLY_PREFIX)
        && !subject.contains(['*', '>', ' ', '\t', '\r', '\n'])
}

/// Answers requests taken from a [`CommandBus`].
#[derive(Debug, Clone)]
pub struct Responder {
    client: async_nats::Client,
}

impl Responder {
    /// Answers with `client` (requests from another transport in this process need none).
    pub fn new(client: async_nats::Client) -> Self {
        Self { client }
    }

    /// Answers a request (a request without a reply subject gets none).
    pub async fn respond(&self, request: &Request, body: Vec<u8>) -> Result<(), StoreError> {
        match &request.reply {
            // No flush: the client's writer sends buffered messages promptly; a
            // flush per reply only added a round trip (measured: ~3%, BENCHMARKS.md).
            Reply::Nats(Some(reply)) if reply_allowed(reply) => self
                .client
                .publish(reply.clone(), body.into())
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))?,
            // The engine's connection may publish anywhere: a reply subject a
            // client chose outside the inboxes (a stream subject, the JetStream
            // API…) is never published to.
            Reply::Nats(Some(_)) => {}
            Reply::Nats(None) => {}
            Reply::Local(sender) => {
                let sender = sender.lock().map(|mut s| s.take()).unwrap_or(None);
                if let Some(sender) = sender {
                    let _ = sender.send(body); // the caller may have gone: nothing to answer
                }
            }
        }
        Ok(())
    }
}

/// A client's side: send one command with its credential and wait for the reply.
pub async fn request(
    url: &str,
    subject: &str,
    credential: Option<&str>,
    payload: Vec<u8>,
) -> Result<Bytes, StoreError> {
    let client = crate::connect(url).await?;
    let mut headers = async_nats::HeaderMap::new();
    if let Some(credential) = credential {
        headers.insert(AUTHORIZATION, format!("Bearer {credential}").as_str());
    }
    let reply = tokio::time::timeout(
        Duration::from_millis(REQUEST_TIMEOUT_MS),
        client.request_with_headers(subject.to_owned(), headers, payload.into()),
    )
    .await
    .map_err(|_| StoreError::Unavailable(format!("no reply on {subject} within {REQUEST_TIMEOUT_MS} ms")))?
    .map_err(|e| StoreError::Unavailable(format!("{subject}: {e}")))?;
    Ok(reply.payload)
}
