//! One delivery attempt: the URL's address checked against the private
//! ranges, the body signed per Standard Webhooks, POSTed over HTTP/1.1 (TLS
//! for `https://`) within a timeout, the answer's status read.

use std::net::{IpAddr, SocketAddr};
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

/// A webhook URL, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path and query (`/hooks?x=1`).
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err("not an http:// or https:// URL".into());
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let path = match tail.split('#').next().unwrap_or("") {
            "" => "/".to_owned(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_owned(),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or("an unclosed [ in the host")?;
            (h.to_owned(), after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (authority.to_owned(), None),
            }
        };
        let port = match port {
            Some(p) => p.parse().map_err(|_| format!("the port {p:?} is not a number"))?,
            None if tls => 443,
            None => 80,
        };
        if host.is_empty() || authority.contains('@') {
            return Err("no host, or credentials in the URL".into());
        }
        Ok(Self { tls, host, port, path })
    }
}

/// Whether an address is one a webhook may reach without the operator's
/// leave: globally routable. Not loopback, private, link-local, shared
/// (CGNAT), benchmarking, reserved, IETF protocol assignments, multicast,
/// broadcast, documentation or unspecified; for IPv6 also unique-local,
/// site-local, and the forms that embed an IPv4 address (mapped, compatible,
/// NAT64, 6to4), which are judged by that address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || a >= 240 // reserved
                || (a == 100 && (64..128).contains(&b)) // shared address space
                || (a == 198 && (18..20).contains(&b)) // benchmarking
                || (a == 192 && b == 0 && c == 0)) // IETF protocol assignments
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            let embedded = |hi: u16, lo: u16| IpAddr::V4(std::net::Ipv4Addr::from(((hi as u32) << 16) | lo as u32));
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            if seg[..6] == [0; 6] && !(v6.is_loopback() || v6.is_unspecified()) {
                return is_public(embedded(seg[6], seg[7])); // IPv4-compatible ::a.b.c.d
            }
            if seg[0] == 0x0064 && seg[1] == 0xff9b {
                return is_public(embedded(seg[6], seg[7])); // NAT64 64:ff9b::/96 and 64:ff9b:1::/48
            }
            if seg[0] == 0x2002 {
                return is_public(embedded(seg[1], seg[2])); // 6to4
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00 // unique local
                || (seg[0] & 0xffc0) == 0xfe80 // link-local
                || (seg[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (seg[0] == 0x2001 && seg[1] == 0x0db8)) // documentation
        }
    }
}

/// What the operator lets webhooks reach besides public addresses.
#[derive(Debug, Clone, Default)]
pub struct Allowed {
    /// Hosts (as written in the URL) or IP addresses allowed even when
    /// private, each optionally with `:port` to allow that port only.
    pub hosts: Vec<String>,
}

impl Allowed {
    fn permits(&self, host: &str, ip: IpAddr, port: u16) -> bool {
        self.hosts.iter().any(|entry| {
            let (name, only) = match entry.rsplit_once(':') {
                Some((name, p)) if !name.contains(':') || name.ends_with(']') => {
                    (name.trim_matches(['[', ']']), p.parse::<u16>().ok())
                }
                _ => (entry.as_str(), None),
            };
            let same = name.eq_ignore_ascii_case(host) || name.parse::<IpAddr>().is_ok_and(|a| a == ip);
            same && only.is_none_or(|p| p == port)
        })
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The receiver's status, when it answered.
    pub status: Option<u16>,
    /// Why it failed (no answer, refused address, timeout…), when it did.
    pub error: Option<String>,
    pub latency_ms: u64,
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
    match result {
        Ok(Ok(status)) => Answer { status: Some(status), error: None, latency_ms },
        Ok(Err(error)) => Answer { status: None, error: Some(error), latency_ms },
        Err(_) => {
            Answer { status: None, error: Some(format!("no answer within {} ms", timeout.as_millis())), latency_ms }
        }
    }
}

async fn post(url: &str, body: Bytes, signed: &Signed, allowed: &Allowed) -> Result<u16, String> {
    let target = Target::parse(url)?;
    // Resolve once, check every address, and connect to a checked one (no
    // second lookup a rebinding DNS could answer differently).
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", target.host))?
        .collect();
    let Some(address) = addresses.first().copied() else {
        return Err(format!("{} resolves to no address", target.host));
    };
    if let Some(private) =
        addresses.iter().find(|a| !is_public(a.ip()) && !allowed.permits(&target.host, a.ip(), target.port))
    {
        let named = if target.host == private.ip().to_string() {
            target.host.clone()
        } else {
            format!("{} ({})", target.host, private.ip())
        };
        return Err(format!(
            "{named} is a private, loopback or link-local address: refused unless the operator allows it \
             (convo serve --webhook-allow {})",
            target.host
        ));
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
        exchange(TokioIo::new(tls), &target, body, signed).await
    } else {
        exchange(TokioIo::new(stream), &target, body, signed).await
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

    #[test]
    fn urls_and_addresses() {
        let t = Target::parse("https://hooks.example.com/in?x=1").unwrap();
        assert_eq!((t.tls, t.host.as_str(), t.port, t.path.as_str()), (true, "hooks.example.com", 443, "/in?x=1"));
        let t = Target::parse("http://[::1]:8080").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("::1", 8080, "/"));
        assert!(Target::parse("ftp://x").is_err());
        assert!(Target::parse("http://user:pw@x/").is_err());
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

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
