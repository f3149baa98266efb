//! One delivery attempt: the URL's address checked against the private
//! ranges, the body signed per Standard Webhooks, POSTed over HTTP/1.1 (TLS
//! for `https://`) within a timeout, the answer's status read.

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

/// POSTs `body` to `url` once, within `timeout`.
pub async fn attempt(url: &str, body: Bytes, signed: &Signed, allowed: &Allowed, timeout: Duration) -> Answer {
    let started = Instant::now();
    let result = tokio::time::timeout(timeout, post(url, body, signed, allowed)).await;
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

async fn post(url: &str, body: Bytes, signed: &Signed, allowed: &Allowed) -> Result<u16, PostError> {
    let target = Target::parse(url).map_err(PostError::Refused)?;
    // Resolve once, check every address, and connect to a checked one (no
    // second lookup a rebinding DNS could answer differently).
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
    if target.tls {
        let config = tls_config()?;
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from(target.host.clone())
            .map_err(|e| format!("not a TLS server name: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS with {}: {e}", target.host))?;
        Ok(exchange(TokioIo::new(tls), &target, body, signed).await?)
    } else {
        Ok(exchange(TokioIo::new(stream), &target, body, signed).await?)
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

async fn exchange<IO>(io: TokioIo<IO>, target: &Target, body: Bytes, signed: &Signed) -> Result<u16, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| format!("HTTP handshake: {e}"))?;
    let connection = tokio::spawn(connection);
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
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let response = sender.send_request(request).await.map_err(|e| format!("no answer: {e}"))?;
    let status = response.status().as_u16();
    // Read (and drop) a bounded answer so the connection ends cleanly.
    let _ = Limited::new(response.into_body(), RESPONSE_BYTES_MAX).collect().await;
    connection.abort();
    Ok(status)
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
}
