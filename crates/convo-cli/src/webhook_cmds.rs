//! `convo webhooks`: the delivery log — pending, dead-lettered, and the attempts.

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::engine_cmds::Connection;
use crate::served::{Served, query};

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
    let served = match Served::find(&args.connection).await? {
        Some(server) => {
            let path = format!("/v1/accounts/{account}/webhooks/deliveries")
                + &query(&[("limit", Some(&limit.to_string())), ("webhook", webhook.as_deref())]);
            Some(server.get(&path).await?.json()?)
        }
        None => None,
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
