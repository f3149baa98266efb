//! One delivery attempt: the URL's address checked against the private
//! ranges, the body signed per Standard Webhooks, POSTed over HTTP/1.1 (TLS
//! for `https://`) within a timeout, the answer's status read. Connections
//! are kept alive per receiver ([`Connections`]) for the next deliveries; a
//! kept connection goes to the address that was checked when it was made.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use sha2::Sha256;

/// The most bytes of a receiver's answer read (the rest is dropped).
pub const RESPONSE_BYTES_MAX: usize = 64 * 1024;
/// The most idle connections kept for one receiver (scheme, host, port):
/// as many as deliveries in flight in all by default, since several
/// endpoints may name one receiver.
pub const IDLE_PER_RECEIVER_MAX: usize = 64;
/// The most idle connections kept in all (so also the most receivers kept for).
pub const IDLE_MAX: usize = 256;
/// How long an idle connection is kept for the next delivery.
pub const IDLE_KEEP: Duration = Duration::from_secs(30);

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// An open connection: its request half, and the task driving it (stopped
/// when the connection is dropped).
struct Open {
    sender: Sender,
    driver: tokio::task::JoinHandle<()>,
    since: Instant,
}

impl Open {
    /// Neither closed by the receiver nor idle longer than [`IDLE_KEEP`].
    fn usable(&self) -> bool {
        self.since.elapsed() < IDLE_KEEP && !self.sender.is_closed()
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Connections kept alive between deliveries, per receiver: at most
/// [`IDLE_PER_RECEIVER_MAX`] each and [`IDLE_MAX`] in all, none idle
/// longer than [`IDLE_KEEP`].
#[derive(Default)]
pub struct Connections(std::sync::Mutex<std::collections::HashMap<String, Vec<Open>>>);

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connections")
    }
}

impl Connections {
    fn take(&self, receiver: &str) -> Option<Open> {
        let mut idle = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let open = idle.get_mut(receiver)?;
        while let Some(connection) = open.pop() {
            if connection.usable() {
                return Some(connection);
            }
        }
        None
    }

    fn put(&self, receiver: &str, mut connection: Open) {
        let mut idle = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Every receiver's stale connections go first (closed, or idle too long).
        idle.retain(|_, open| {
            open.retain(Open::usable);
            !open.is_empty()
        });
        let kept: usize = idle.values().map(Vec::len).sum();
        let open = idle.entry(receiver.to_owned()).or_default();
        if open.len() < IDLE_PER_RECEIVER_MAX && kept < IDLE_MAX {
            connection.since = Instant::now();
            open.push(connection);
        }
    }
}

/// Standard Webhooks' signature of `body` for delivery `id` at `timestamp`
/// (seconds): `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body`.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

pub use convo_store::egress::{Allowed, Target, is_public};

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The receiver's status, when it answered.
    pub status: Option<u16>,
    /// Why it failed (no answer, refused address, timeout…), when it did.
    pub error: Option<String>,
    pub latency_ms: u64,
    /// Not attempted: the address is one webhooks may not reach (trying
    /// again would be refused again).
    pub refused: bool,
}

impl Answer {
    pub fn accepted(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// The headers of one attempt.
#[derive(Debug, Clone)]
pub struct Signed {
    pub id: String,
    pub timestamp: i64,
    pub signature: String,
}

/// POSTs `body` to `url` once, within `timeout`, on a connection kept in
/// `connections` when there is one.
pub async fn attempt(
    url: &str,
    body: Bytes,
    signed: &Signed,
    allowed: &Allowed,
    timeout: Duration,
    connections: &Connections,
) -> Answer {
    let started = Instant::now();
    let result = tokio::time::timeout(timeout, post(url, body, signed, allowed, connections)).await;
    let latency_ms = started.elapsed().as_millis() as u64;
    let failed = |error: String, refused: bool| Answer { status: None, error: Some(error), latency_ms, refused };
    match result {
        Ok(Ok(status)) => Answer { status: Some(status), error: None, latency_ms, refused: false },
        Ok(Err(PostError::Refused(error))) => failed(error, true),
        Ok(Err(PostError::Failed(error))) => failed(error, false),
        Err(_) => failed(format!("no answer within {} ms", timeout.as_millis()), false),
    }
}

/// Why a POST did not get an answer.
enum PostError {
    /// The URL or its address is one webhooks may not reach.
    Refused(String),
    /// The receiver could not be reached or did not answer.
    Failed(String),
}

impl From<String> for PostError {
    fn from(error: String) -> Self {
        PostError::Failed(error)
    }
}

async fn post(
    url: &str,
    body: Bytes,
    signed: &Signed,
    allowed: &Allowed,
    connections: &Connections,
) -> Result<u16, PostError> {
    let target = Target::parse(url).map_err(PostError::Refused)?;
    let receiver = format!("{}://{}:{}", if target.tls { "https" } else { "http" }, target.host, target.port);
    // A kept connection first; one the receiver closed before the request
    // went out is replaced. A request that may have reached the receiver is
    // not sent again in this attempt (a later attempt retries it).
    if let Some(mut open) = connections.take(&receiver) {
        match request(&mut open.sender, &target, body.clone(), signed).await {
            Ok((status, keep)) => {
                if keep {
                    connections.put(&receiver, open);
                }
                return Ok(status);
            }
            Err(Unsent::No(error)) => return Err(error.into()),
            Err(Unsent::Yes(_)) => {}
        }
    }
    let mut open = connect(&target, allowed).await?;
    let (status, keep) = request(&mut open.sender, &target, body, signed).await.map_err(Unsent::into_error)?;
    if keep {
        connections.put(&receiver, open);
    }
    Ok(status)
}

/// A new connection to `target`: resolved once, every address checked, and
/// connected to a checked one (no second lookup a rebinding DNS could
/// answer differently).
async fn connect(target: &Target, allowed: &Allowed) -> Result<Open, PostError> {
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", target.host))?
        .collect();
    let Some(address) = addresses.first().copied() else {
        return Err(format!("{} resolves to no address", target.host).into());
    };
    if let Some(private) =
        addresses.iter().find(|a| !is_public(a.ip()) && !allowed.permits(&target.host, a.ip(), target.port))
    {
        let named = if target.host == private.ip().to_string() {
            target.host.clone()
        } else {
            format!("{} ({})", target.host, private.ip())
        };
        return Err(PostError::Refused(format!(
            "{named} is a private, loopback or link-local address: refused unless the operator allows it \
             (convo serve --webhook-allow {})",
            target.host
        )));
    }
    let stream =
        tokio::net::TcpStream::connect(address).await.map_err(|e| format!("cannot connect to {address}: {e}"))?;
    let _ = stream.set_nodelay(true);
    if target.tls {
        let config = tls_config()?;
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(target.host.clone())
            .map_err(|e| format!("not a TLS server name: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS with {}: {e}", target.host))?;
        Ok(handshake(TokioIo::new(tls)).await?)
    } else {
        Ok(handshake(TokioIo::new(stream)).await?)
    }
}

fn tls_config() -> Result<Arc<tokio_rustls::rustls::ClientConfig>, String> {
    static CONFIG: std::sync::OnceLock<Result<Arc<tokio_rustls::rustls::ClientConfig>, String>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = tokio_rustls::rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
            let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}

async fn handshake<IO>(io: TokioIo<IO>) -> Result<Open, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("HTTP handshake: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(Open { sender, driver, since: Instant::now() })
}

/// Why a POST got no answer, and whether it certainly never left.
enum Unsent {
    /// The request was not sent (the connection was closed before it).
    Yes(String),
    /// It may have reached the receiver.
    No(String),
}

impl Unsent {
    fn into_error(self) -> String {
        match self {
            Unsent::Yes(e) | Unsent::No(e) => e,
        }
    }
}

/// One POST on an open connection: the status, and whether the connection
/// may carry the next one (the answer read whole, no `Connection: close`).
async fn request(sender: &mut Sender, target: &Target, body: Bytes, signed: &Signed) -> Result<(u16, bool), Unsent> {
    sender.ready().await.map_err(|e| Unsent::Yes(format!("the connection closed: {e}")))?;
    let default_port = if target.tls { 443 } else { 80 };
    let host = match (target.host.contains(':'), target.port == default_port) {
        (true, true) => format!("[{}]", target.host),
        (true, false) => format!("[{}]:{}", target.host, target.port),
        (false, true) => target.host.clone(),
        (false, false) => format!("{}:{}", target.host, target.port),
    };
    let request = hyper::Request::post(target.path.as_str())
        .header("host", host)
        .header("content-type", "application/json")
        .header("user-agent", concat!("convo-webhooks/", env!("CARGO_PKG_VERSION")))
        .header("webhook-id", signed.id.as_str())
        .header("webhook-timestamp", signed.timestamp.to_string())
        .header("webhook-signature", signed.signature.as_str())
        .body(Full::new(body))
        .map_err(|e| Unsent::Yes(format!("cannot build the request: {e}")))?;
    let response = sender.send_request(request).await.map_err(|e| {
        let error = format!("no answer: {e}");
        if e.is_canceled() { Unsent::Yes(error) } else { Unsent::No(error) }
    })?;
    let status = response.status().as_u16();
    let close = response
        .headers()
        .get(hyper::header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
    // Read a bounded answer (and drop it); a longer one ends the connection.
    let whole = Limited::new(response.into_body(), RESPONSE_BYTES_MAX).collect().await.is_ok();
    Ok((status, whole && !close))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification.
    #[test]
    fn signatures_follow_standard_webhooks() {
        let key = base64::engine::general_purpose::STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    /// A loopback receiver answering 204 to every POST (`Connection: close`
    /// when `close`): the connections it accepted and the requests it answered.
    async fn receiver(
        close: bool,
    ) -> (String, Arc<std::sync::atomic::AtomicUsize>, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (accepted, answered) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, b) = (accepted.clone(), answered.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let answered = b.clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buffer = [0u8; 4096];
                    loop {
                        // A request: its head, then content-length bytes of body.
                        let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match socket.read(&mut buffer).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => seen.extend_from_slice(&buffer[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&seen[..end]).to_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        if seen.len() < end + 4 + length {
                            match socket.read(&mut buffer).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => seen.extend_from_slice(&buffer[..n]),
                            }
                            continue;
                        }
                        seen.drain(..end + 4 + length);
                        answered.fetch_add(1, Ordering::SeqCst);
                        let answer: &[u8] = if close {
                            b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n"
                        } else {
                            b"HTTP/1.1 204 No Content\r\n\r\n"
                        };
                        if socket.write_all(answer).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        (url, accepted, answered)
    }

    #[tokio::test]
    async fn connections_are_kept_alive_per_receiver_unless_it_closes_them() {
        use std::sync::atomic::Ordering;
        let allowed = Allowed { hosts: vec!["127.0.0.1".into()] };
        let signed = Signed { id: "msg_1".into(), timestamp: 1, signature: "v1,x".into() };
        for close in [false, true] {
            let (url, accepted, answered) = receiver(close).await;
            let connections = Connections::default();
            for n in 0..5 {
                let body = Bytes::from(format!("{{\"n\":{n}}}"));
                let answer = attempt(&url, body, &signed, &allowed, Duration::from_secs(5), &connections).await;
                assert_eq!(answer.status, Some(204), "{answer:?}");
            }
            assert_eq!(answered.load(Ordering::SeqCst), 5);
            let expected = if close { 5 } else { 1 };
            assert_eq!(accepted.load(Ordering::SeqCst), expected, "connections made (close: {close})");
        }
    }

    #[tokio::test]
    async fn a_kept_connection_the_receiver_dropped_is_replaced() {
        use std::sync::atomic::Ordering;
        let allowed = Allowed { hosts: vec!["127.0.0.1".into()] };
        let signed = Signed { id: "msg_1".into(), timestamp: 1, signature: "v1,x".into() };
        let (url, accepted, answered) = receiver(false).await;
        let connections = Connections::default();
        let first = attempt(&url, Bytes::from_static(b"{}"), &signed, &allowed, Duration::from_secs(5), &connections);
        assert_eq!(first.await.status, Some(204));
        // The kept connection's peer goes away: the next attempt connects again.
        let key = url.trim_end_matches("/hook").to_owned(); // the receiver: scheme, host, port
        {
            let idle = connections.0.lock().unwrap();
            let kept = idle.get(&key).expect("the connection was kept");
            assert_eq!(kept.len(), 1);
        }
        for open in connections.0.lock().unwrap().values_mut() {
            for connection in open.iter_mut() {
                connection.driver.abort();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = attempt(&url, Bytes::from_static(b"{}"), &signed, &allowed, Duration::from_secs(5), &connections);
        assert_eq!(second.await.status, Some(204));
        assert_eq!((accepted.load(Ordering::SeqCst), answered.load(Ordering::SeqCst)), (2, 2));
    }
}
