//! `convo webhooks`: the delivery log — pending, dead-lettered, and the attempts.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::engine_cmds::{Connection, HTTP_URL_FILE, OPERATOR_KEY_FILE};

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  convo webhooks deliveries --account acme
  convo webhooks deliveries --account acme --webhook crm --format json

Reads the running `convo serve` (over its HTTP gateway, as the operator) or,
when none runs, the webhooks database under --data-dir. Dead-lettered
deliveries are tried again with the redrive_webhook command:
  convo send --account acme --operator '{\"id\":\"r1\",\"command\":{\"type\":\"redrive_webhook\",\"webhook\":\"crm\"}}'")]
pub struct WebhookArgs {
    #[command(subcommand)]
    command: WebhookCmd,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Subcommand, Debug)]
enum WebhookCmd {
    /// Pending and dead-lettered deliveries, and the newest attempts (status, response code, latency).
    Deliveries {
        #[arg(long)]
        account: String,
        /// Only this webhook's.
        #[arg(long)]
        webhook: Option<String>,
        /// At most this many of each list.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
    },
}

pub async fn webhooks(args: WebhookArgs) -> Result<()> {
    let WebhookCmd::Deliveries { account, webhook, limit, format } = args.command;
    let dir = args.connection.data_dir();
    let served = match std::fs::read_to_string(dir.join(HTTP_URL_FILE)) {
        Ok(url) => {
            let operator = std::fs::read_to_string(dir.join(OPERATOR_KEY_FILE))
                .with_context(|| format!("cannot read the operator credential in {}", dir.display()))?;
            let mut path = format!("/v1/accounts/{account}/webhooks/deliveries?limit={limit}");
            if let Some(w) = &webhook {
                path.push_str(&format!("&webhook={w}"));
            }
            match get(url.trim(), &path, operator.trim()).await {
                Ok(report) => Some(report),
                // A gateway that answered and refused is an answer; one that is gone (a stale url file) is not.
                Err(e) if e.to_string().contains("cannot reach") => None,
                Err(e) => return Err(e),
            }
        }
        Err(_) => None,
    };
    let report = match served {
        Some(report) => report,
        None => {
            let deliveries = convo_webhooks::Deliveries::open(&dir.join("webhooks")).map_err(|e| {
                anyhow::anyhow!(
                    "cannot open the webhooks database under {} ({e}); a `convo serve --no-http` holds it: \
                     run it with its HTTP gateway to read deliveries while it serves",
                    dir.display()
                )
            })?;
            deliveries.report(&account, webhook.as_deref(), limit)
        }
    };
    if format == "json" {
        println!("{report}");
        return Ok(());
    }
    let s = |v: &Value, k: &str| match &v[k] {
        Value::Null => "-".to_owned(),
        Value::String(t) => t.clone(),
        other => other.to_string(),
    };
    println!("account {account}: the queue has taken in the log up to {}", s(&report, "checkpoint"));
    for (title, list) in [("pending", "pending"), ("dead-lettered", "dead")] {
        let items = report[list].as_array().cloned().unwrap_or_default();
        println!("{title}: {}", items.len());
        for d in items {
            println!(
                "  {} {:<24} event {} ({}), {} attempts, last error {}",
                s(&d, "webhook"),
                s(&d, "event_type"),
                s(&d, "event_id"),
                s(&d, "queued_at"),
                s(&d, "attempts"),
                s(&d, "last_error")
            );
        }
    }
    println!("attempts, newest first:");
    for a in report["attempts"].as_array().cloned().unwrap_or_default() {
        println!(
            "  {} {} {:<24} event {} attempt {} {:<9} status {} {} ms {}",
            s(&a, "at"),
            s(&a, "webhook"),
            s(&a, "event_type"),
            s(&a, "event_id"),
            s(&a, "attempt"),
            s(&a, "outcome"),
            s(&a, "status"),
            s(&a, "latency_ms"),
            if a["error"].is_null() { String::new() } else { s(&a, "error") }
        );
    }
    Ok(())
}

/// One GET to the local gateway (plain HTTP on loopback), its JSON body.
async fn get(base: &str, path: &str, credential: &str) -> Result<Value> {
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .with_context(|| format!("cannot reach the gateway at {base} (is `convo serve` running?)"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {credential}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.take(64 * 1024 * 1024).read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { unchunk(body) } else { body.to_owned() };
    let value: Value = serde_json::from_str(&body).with_context(|| format!("the gateway answered HTTP {status}"))?;
    if status != 200 {
        bail!("the gateway answered HTTP {status}: {}", value["message"].as_str().unwrap_or(&body));
    }
    Ok(value)
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
