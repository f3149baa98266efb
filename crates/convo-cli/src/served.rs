//! Reads from the running `convo serve` of a data directory: while it
//! serves, it holds the read models (one process may open them), so the CLI
//! asks its HTTP gateway, as the operator (the credential in
//! `<data-dir>/operator.key`), and says where the read model stood.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::engine_cmds::{Connection, HTTP_URL_FILE, OPERATOR_KEY_FILE};

/// The largest answer read from the gateway, in bytes.
pub const ANSWER_BYTES_MAX: u64 = 256 * 1024 * 1024;

/// The gateway of the running `convo serve`.
#[derive(Debug)]
pub struct Served {
    base: String,
    credential: String,
}

/// An answer and where the read model behind it stood.
#[derive(Debug)]
pub struct Answer {
    pub body: String,
    /// The last stream sequence the read model held, and the stream's end.
    pub position: Option<(u64, u64)>,
}

impl Answer {
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.body).context("the gateway's answer is not JSON")
    }

    /// Says on stderr where the read model stood.
    pub fn say_position(&self, name: &str) {
        if let Some((at, end)) = self.position {
            let behind =
                if at >= end { "the stream's end".to_owned() } else { format!("{} behind the stream", end - at) };
            eprintln!(
                "convo: read from the running `convo serve`; the {name} read model is at stream sequence {at} ({behind})"
            );
        }
    }
}

impl Served {
    /// The running server's gateway, if one serves `connection`'s data
    /// directory and answers; `None` when none runs (read the files).
    pub async fn find(connection: &Connection) -> Result<Option<Self>> {
        let dir = connection.data_dir();
        let Ok(url) = std::fs::read_to_string(dir.join(HTTP_URL_FILE)) else { return Ok(None) };
        let base = url.trim().to_owned();
        let address = base.trim_start_matches("http://").to_owned();
        if tokio::net::TcpStream::connect(&address).await.is_err() {
            return Ok(None); // a stale url file from a server that died
        }
        let credential = std::fs::read_to_string(dir.join(OPERATOR_KEY_FILE))
            .with_context(|| format!("cannot read the operator credential in {}", dir.display()))?;
        Ok(Some(Self { base, credential: credential.trim().to_owned() }))
    }

    /// One GET (plain HTTP on loopback); a status other than 200 is an error with the gateway's message.
    pub async fn get(&self, path: &str) -> Result<Answer> {
        let address = self.base.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(address)
            .await
            .with_context(|| format!("cannot reach the gateway at {} (is `convo serve` running?)", self.base))?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            self.credential
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.take(ANSWER_BYTES_MAX).read_to_end(&mut response).await?;
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let head = head.to_ascii_lowercase();
        let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = if head.contains("transfer-encoding: chunked") { unchunk(body) } else { body.to_owned() };
        if status != 200 {
            let message = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| body.clone());
            bail!("the gateway answered HTTP {status}: {message}");
        }
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim_start_matches(':').trim().parse::<u64>().ok())
        };
        let position = header("convo-read-position").zip(header("convo-stream-end"));
        Ok(Answer { body, position })
    }
}

/// A query string from the pairs that have a value (percent-encoded).
pub fn query(pairs: &[(&str, Option<&str>)]) -> String {
    let encode = |v: &str| {
        v.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    let parts: Vec<String> = pairs.iter().filter_map(|(k, v)| v.map(|v| format!("{k}={}", encode(v)))).collect();
    if parts.is_empty() { String::new() } else { format!("?{}", parts.join("&")) }
}

fn unchunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || tail.len() < size {
            break;
        }
        out.push_str(&tail[..size]);
        rest = tail[size..].trim_start_matches("\r\n");
    }
    out
}
