//! Where the engine's own traffic may go (webhooks): only to public
//! addresses, unless the operator allows a host (`convo serve
//! --webhook-allow`). Pure rules over a URL and addresses, so the front door
//! can refuse a webhook URL that names a private address up front and the
//! sender can check every address a name resolves to before connecting.

use std::net::IpAddr;

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
    /// Whether the operator lets `host` (as written in the URL), at `ip` and `port`, be reached.
    pub fn permits(&self, host: &str, ip: IpAddr, port: u16) -> bool {
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

/// Whether `url` may be a webhook's before anything is resolved: a URL
/// webhooks can reach, whose host, when it is an address (or `localhost`),
/// is public or allowed. A name is judged again, by every address it
/// resolves to, at each delivery.
pub fn check_url(url: &str, allowed: &Allowed) -> Result<(), String> {
    let target = Target::parse(url)?;
    let host = target.host.to_ascii_lowercase();
    let ip = if host == "localhost" || host.ends_with(".localhost") {
        Some(IpAddr::from([127, 0, 0, 1]))
    } else {
        host.parse::<IpAddr>().ok()
    };
    match ip {
        Some(ip) if !is_public(ip) && !allowed.permits(&target.host, ip, target.port) => Err(format!(
            "{} is a private, loopback or link-local address: webhooks may not reach it unless the operator \
             allows it (convo serve --webhook-allow {})",
            target.host, target.host
        )),
        _ => Ok(()),
    }
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

    #[test]
    fn private_addresses_are_refused_up_front_unless_allowed() {
        let none = Allowed::default();
        for url in ["http://127.0.0.1:9/x", "http://localhost/x", "http://[::1]/", "http://169.254.169.254/latest"] {
            assert!(check_url(url, &none).is_err(), "{url}");
        }
        assert!(check_url("https://hooks.example.com/in", &none).is_ok(), "a name is judged when delivering");
        let local = Allowed { hosts: vec!["127.0.0.1".into()] };
        assert!(check_url("http://127.0.0.1:9/x", &local).is_ok());
        assert!(check_url("ftp://x", &none).is_err());
    }
}
