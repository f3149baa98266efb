//! Commands over NATS request/reply: the transport half of the engine's
//! intake, here so that only this crate names `async-nats`. Clients send on
//! `<prefix>.<account>.cmd.<type>`. Where the engine's partitions are shared
//! by instances, the server's subject mapping ([`partition_mapping`]) moves
//! each request onto its account's partition, `<prefix>.~part.<n>.<account>.<type>`,
//! which only that partition's owner subscribes to; a request another
//! instance took over HTTP is forwarded to the owner on
//! `<prefix>.~fwd.<n>.<account>.<type>` with the client's address and
//! whether it is a read in headers (only the engine's NATS user may publish
//! there: no key's login can). `~` is in no account id, so these subjects
//! never collide with an account's.

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
    /// Forwarded by another instance of the engine (its reply goes to that instance).
    pub forwarded: bool,
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
        (Self { account, kind, read, subject, payload, credential, ip, forwarded: false, reply }, rx)
    }

    /// The NATS subject the sender asked the reply on (none for a request
    /// from this process, or one that wants no reply).
    pub fn reply_subject(&self) -> Option<&str> {
        match &self.reply {
            Reply::Nats(Some(subject)) => Some(subject.as_str()),
            _ => None,
        }
    }

    /// How it arrived: `nats`, or `http` (the gateway, in this process).
    pub fn transport(&self) -> &'static str {
        match self.reply {
            Reply::Nats(_) => "nats",
            Reply::Local(_) => "http",
        }
    }

    /// Sends no reply to this request, whatever happens (its reply subject
    /// is not the sender's own).
    pub fn drop_reply(&mut self) {
        self.reply = Reply::Nats(None);
    }
}

/// A connection to NATS (for the crates that stay clear of `async-nats`).
pub type Client = async_nats::Client;

/// The header naming the client's address on a forwarded request.
pub const CLIENT_IP: &str = "Convo-Client-Ip";
/// The header marking a forwarded request as a read to authorize.
pub const READ: &str = "Convo-Read";

/// The subject token of partitioned command subjects (not an id character).
const PART: &str = "~part";
/// The subject token of forwarded requests.
const FWD: &str = "~fwd";

/// The server's subject mapping that spreads commands over `count`
/// partitions by account (nats-server's `partition()`: FNV-1a of the
/// account token, modulo the count): source and destination.
pub fn partition_mapping(prefix: &str, count: usize) -> (String, String) {
    (
        format!("{prefix}.*.cmd.*"),
        format!("{prefix}.{PART}.{{{{partition({count},1)}}}}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}"),
    )
}

/// The partition of an account among `count`, as the server's mapping
/// computes it (32-bit FNV-1a of the account, modulo the count), so an
/// instance forwards to the owner the mapping delivers to.
pub fn partition_of(account: &str, count: usize) -> usize {
    let hash = account.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    (hash % count.max(1) as u32) as usize
}

/// The engine's side: incoming requests, and a way to answer them.
#[derive(Debug)]
pub struct CommandBus {
    client: async_nats::Client,
    subscriber: async_nats::Subscriber,
    /// A partition's forwarded requests (with [`CommandBus::subscribe_partition`]).
    forwarded: Option<async_nats::Subscriber>,
}

impl CommandBus {
    /// Subscribes to every account's command subjects under `prefix`.
    pub async fn subscribe(client: async_nats::Client, prefix: &str) -> Result<Self, StoreError> {
        let subscriber = client
            .queue_subscribe(format!("{prefix}.*.cmd.>"), QUEUE_GROUP.to_owned())
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Self { client, subscriber, forwarded: None })
    }

    /// Subscribes to one partition's requests: those the server's mapping
    /// put on it, and those other instances forward to it.
    pub async fn subscribe_partition(
        client: async_nats::Client,
        prefix: &str,
        index: usize,
    ) -> Result<Self, StoreError> {
        let subscribe = async |token: &str| {
            client
                .queue_subscribe(format!("{prefix}.{token}.{index}.*.*"), QUEUE_GROUP.to_owned())
                .await
                .map_err(|e| StoreError::Unavailable(e.to_string()))
        };
        let (mapped, forwarded) = (subscribe(PART).await?, subscribe(FWD).await?);
        Ok(Self { client: client.clone(), subscriber: mapped, forwarded: Some(forwarded) })
    }

    /// The next request (`None` once unsubscribed).
    pub async fn next(&mut self) -> Option<Request> {
        let message = match &mut self.forwarded {
            None => self.subscriber.next().await?,
            Some(forwarded) => tokio::select! {
                m = self.subscriber.next() => m?,
                m = forwarded.next() => m?,
            },
        };
        let subject = message.subject.to_string();
        let tokens: Vec<&str> = subject.split('.').collect();
        let (account, kind, trusted) = match tokens.len().checked_sub(5).map(|at| &tokens[at..]) {
            // <prefix>.~part|~fwd.<n>.<account>.<type>
            Some([token, _, account, kind]) | Some([_, token, _, account, kind]) if *token == PART || *token == FWD => {
                (account.to_string(), kind.to_string(), *token == FWD)
            }
            _ => {
                // <prefix>.<account>.cmd.<type…>
                let account = subject.split('.').nth(1).unwrap_or("").to_owned();
                (account, subject.splitn(4, '.').nth(3).unwrap_or("").to_owned(), false)
            }
        };
        let header = |name: &str| message.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_owned());
        let credential = header(AUTHORIZATION);
        // Only a forwarded request (the engine's own user) says where the client is, or that it reads.
        let ip = header(CLIENT_IP).filter(|_| trusted).and_then(|ip| ip.parse().ok());
        let read = trusted && header(READ).is_some();
        let reply = Reply::Nats(message.reply);
        let forwarded = trusted;
        Some(Request { account, kind, read, subject, payload: message.payload, credential, ip, forwarded, reply })
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
        if let Some(forwarded) = &mut self.forwarded {
            let _ = forwarded.unsubscribe().await;
        }
    }
}

/// The reply inbox prefix of an API key's NATS login (only that login may subscribe under it).
pub fn key_inbox(account: &str, key: &str) -> String {
    format!("_INBOX.{account}.{key}")
}

/// Whether the engine may answer a NATS request on `subject`: only inside
/// an inbox the sender owns, as far as the engine can tell — the key's own
/// ([`key_inbox`]) when the credential is a key's (`convo-key.<account>.<key>.…`),
/// and the engine's own ([`crate::ENGINE_INBOX_PREFIX`]), which only the
/// engine's login may subscribe to (its connections, this machine's tools,
/// another instance forwarding). Never another key's or account's inbox,
/// never a stream subject or the JetStream API.
pub fn reply_allowed(subject: &str, credential: Option<&str>, forwarded: bool) -> Result<(), String> {
    let inside = |prefix: &str| {
        subject.strip_prefix(prefix).is_some_and(|rest| rest.len() > 1 && rest.starts_with('.'))
            && !subject.contains(['*', '>', ' ', '\t', '\r', '\n'])
    };
    let token = credential
        .map(|c| c.trim())
        .map(|c| c.strip_prefix("Bearer ").or_else(|| c.strip_prefix("bearer ")).unwrap_or(c));
    let key = token.filter(|_| !forwarded).and_then(|t| t.strip_prefix("convo-key.")).and_then(|rest| {
        let mut parts = rest.split('.');
        let (account, key) = (parts.next()?, parts.next()?);
        Some(key_inbox(account, key))
    });
    let engine = crate::ENGINE_INBOX_PREFIX;
    if inside(engine) || key.as_deref().is_some_and(inside) {
        return Ok(());
    }
    let own = key.map_or_else(|| format!("{engine}.>"), |key| format!("{key}.> or {engine}.>"));
    Err(format!("the engine answers only on the sender's own inbox ({own}), not on {subject}"))
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
            Reply::Nats(Some(reply))
                if reply_allowed(reply, request.credential.as_deref(), request.forwarded).is_ok() =>
            {
                self.client
                    .publish(reply.clone(), body.into())
                    .await
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?
            }
            // The engine's connection may publish anywhere: a reply subject
            // outside the sender's own inbox (another tenant's, a stream
            // subject, the JetStream API…) is never published to (the door
            // records such a request; this is the guard of every other answer).
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

/// Hands a request taken in this process (over HTTP) to the instance that
/// owns its partition, and waits for the answer; `None` when no instance
/// serves that partition now (it is being taken over: the client retries).
pub async fn forward(
    client: &async_nats::Client,
    prefix: &str,
    index: usize,
    request: &Request,
    wait: Duration,
) -> Result<Option<Bytes>, StoreError> {
    let subject = format!("{prefix}.{FWD}.{index}.{}.{}", request.account, request.kind);
    let mut headers = async_nats::HeaderMap::new();
    if let Some(credential) = &request.credential {
        headers.insert(AUTHORIZATION, credential.as_str());
    }
    if let Some(ip) = request.ip {
        headers.insert(CLIENT_IP, ip.to_string().as_str());
    }
    if request.read {
        headers.insert(READ, "1");
    }
    match tokio::time::timeout(wait, client.request_with_headers(subject, headers, request.payload.clone())).await {
        Err(_) => {
            Err(StoreError::Unavailable(format!("the owner of partition {index} did not answer within {wait:?}")))
        }
        Ok(Ok(reply)) => Ok(Some(reply.payload)),
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(None),
        Ok(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
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

/// Answers presence probes on `subject` while it lives (dropping it stops
/// answering): an instance's way of saying its connection is alive.
#[derive(Debug)]
pub struct Presence(tokio::task::JoinHandle<()>);

impl Drop for Presence {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts answering presence probes on `subject`.
pub async fn presence(client: &async_nats::Client, subject: String) -> Result<Presence, StoreError> {
    let mut subscriber = client.subscribe(subject).await.map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let client = client.clone();
    Ok(Presence(tokio::spawn(async move {
        while let Some(message) = subscriber.next().await {
            if let Some(reply) = message.reply {
                let _ = client.publish(reply, Bytes::from_static(b"alive")).await;
            }
        }
    })))
}

/// Probes `subject`'s presence: `Some(true)` it answered, `Some(false)`
/// nobody listens there (its connection is gone: NATS says so at once),
/// `None` no answer within `wait`.
pub async fn probe(client: &async_nats::Client, subject: String, wait: Duration) -> Option<bool> {
    match tokio::time::timeout(wait, client.request(subject, Bytes::new())).await {
        Ok(Ok(_)) => Some(true),
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => Some(false),
        _ => None,
    }
}

/// How long the probes of [`probe_mapping`] may take to come back, all
/// together: a server with no mapping never sends them; a busy one (a
/// cluster forming on a loaded machine) took more than 3 s in a CI run.
pub const MAPPING_PROBE_WAIT: Duration = Duration::from_secs(10);

/// Publishes a probe command for each of `accounts` and says on which
/// partition the server's mapping put each (`None`: it did not arrive within
/// [`MAPPING_PROBE_WAIT`] — the server has no mapping).
pub async fn probe_mapping(
    client: &async_nats::Client,
    prefix: &str,
    accounts: &[String],
) -> Result<Vec<Option<usize>>, StoreError> {
    let unavailable = |e: &dyn std::fmt::Display| StoreError::Unavailable(e.to_string());
    let mut probes = client.subscribe(format!("{prefix}.{PART}.*.*.convo-probe")).await.map_err(|e| unavailable(&e))?;
    for account in accounts {
        client
            .publish(format!("{prefix}.{account}.cmd.convo-probe"), Bytes::new())
            .await
            .map_err(|e| unavailable(&e))?;
    }
    client.flush().await.map_err(|e| unavailable(&e))?;
    let mut arrived: Vec<Option<usize>> = vec![None; accounts.len()];
    let deadline = tokio::time::Instant::now() + MAPPING_PROBE_WAIT;
    for _ in accounts {
        let Ok(Some(message)) = tokio::time::timeout_at(deadline, probes.next()).await else { break };
        let tokens: Vec<&str> = message.subject.split('.').collect();
        let (index, account) = (tokens[tokens.len() - 3], tokens[tokens.len() - 2]);
        if let Some(slot) = accounts.iter().position(|a| a == account) {
            arrived[slot] = index.parse().ok();
        }
    }
    let _ = probes.unsubscribe().await;
    Ok(arrived)
}
