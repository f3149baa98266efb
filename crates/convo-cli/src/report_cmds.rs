//! `convo report`: the reports read model as a table, CSV or JSON.

use anyhow::Result;
use clap::Args;
use serde_json::Value;

use convo_reports::Reports;

use crate::engine_cmds::Connection;
use crate::served::{Served, query};

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  convo report sla --account acme --by campaign --period day
  convo report times --account acme --by agent --period hour --from 2026-03-02T08 --to 2026-03-02T18
  convo report closures --account acme --by campaign --format csv
  convo report overview --account acme --by channel --format json
  convo report sla --account acme --by account --period hour --tz UTC

Kinds: overview (everything), volume, sla, times, closures, csat.
Buckets are days (2026-03-02) and hours (2026-03-02T14) in the account's time
zone (configure_account's time_zone; UTC before it has one), or --tz's; the
zone is printed on stderr. Counters are kept per UTC hour, so --tz takes zones
a whole number of hours from UTC.")]
pub struct ReportArgs {
    /// Which figures: overview, volume, sla, times, closures, csat.
    #[arg(value_parser = convo_reports::KINDS)]
    kind: String,
    #[arg(long, default_value = "campaign", value_parser = convo_reports::DIMENSIONS)]
    by: String,
    #[arg(long, default_value = "day", value_parser = ["hour", "day"])]
    period: String,
    /// The account (tenant) whose figures to show.
    #[arg(long)]
    account: String,
    /// The first bucket (inclusive): a day (2026-03-02) or an hour (2026-03-02T14).
    #[arg(long, value_parser = bucket)]
    from: Option<String>,
    /// The last bucket (inclusive): a day (2026-03-02) or an hour (2026-03-02T14).
    #[arg(long, value_parser = bucket)]
    to: Option<String>,
    #[arg(long, default_value = "table", value_parser = ["table", "csv", "json"])]
    format: String,
    /// The IANA time zone to bucket in (e.g. America/Bogota, UTC); the account's by default.
    #[arg(long, value_parser = zone)]
    tz: Option<String>,
    #[command(flatten)]
    connection: Connection,
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Object(m) => m.iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(" "),
        other => other.to_string(),
    }
}

/// A report bucket as the user may write it: a day or an hour (of the report's zone).
fn bucket(text: &str) -> Result<String, String> {
    if convo_reports::is_bucket(text) {
        Ok(text.to_owned())
    } else {
        Err(format!("{text:?} is not a day (2026-03-02) or an hour (2026-03-02T14)"))
    }
}

/// An IANA time zone.
fn zone(text: &str) -> Result<String, String> {
    convo_domain::schedule::Zone::parse(text).map(|_| text.to_owned())
}

pub async fn report(args: ReportArgs) -> Result<()> {
    let json: Vec<Value> = match Served::find(&args.connection).await? {
        Some(server) => {
            let path = format!("/v1/accounts/{}/reports/{}", args.account, args.kind)
                + &query(&[
                    ("by", Some(&args.by)),
                    ("period", Some(&args.period)),
                    ("from", args.from.as_deref()),
                    ("to", args.to.as_deref()),
                    ("tz", args.tz.as_deref()),
                ]);
            let answer = server.get(&path).await?;
            answer.say_position(convo_reports::NAME);
            let body = answer.json()?;
            eprintln!("convo: buckets in {}", body["time_zone"].as_str().unwrap_or("UTC"));
            body["rows"].as_array().cloned().unwrap_or_default()
        }
        None => {
            let projector = args.connection.caught_up(convo_reports::NAME, &mut Reports::default()).await?;
            let tree = projector.tree()?;
            let zone = match args.tz.as_deref() {
                Some(name) => convo_domain::schedule::Zone::parse(name).map_err(anyhow::Error::msg)?,
                None => convo_reports::zone(&tree, &args.account)?,
            };
            eprintln!("convo: buckets in {}", zone.0.name());
            let (from, to) = (args.from.as_deref(), args.to.as_deref());
            let rows = convo_reports::rows_in(&tree, &args.account, &args.by, &args.period, from, to, &zone)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            rows.iter().map(|r| convo_reports::row_json(&args.by, r)).collect()
        }
    };
    let mut header = vec![args.by.as_str(), "bucket"];
    header.extend(convo_reports::columns(&args.kind));
    let table: Vec<Vec<String>> = json.iter().map(|r| header.iter().map(|c| cell(&r[*c])).collect()).collect();
    match args.format.as_str() {
        "json" => {
            for r in &json {
                let picked: serde_json::Map<String, Value> =
                    header.iter().map(|c| ((*c).to_owned(), r[*c].clone())).collect();
                println!("{}", Value::Object(picked));
            }
        }
        "csv" => print!("{}", convo_reports::csv(&header, &json)),
        _ => {
            let widths: Vec<usize> = header
                .iter()
                .enumerate()
                .map(|(i, h)| table.iter().map(|r| r[i].len()).chain([h.len()]).max().unwrap_or(0))
                .collect();
            let line = |cells: Vec<String>| {
                cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ")
            };
            println!("{}", line(header.iter().map(|h| h.to_string()).collect()));
            for row in table {
                println!("{}", line(row));
            }
            if json.is_empty() {
                eprintln!("convo: no figures for account {} in that window", args.account);
            }
        }
    }
    Ok(())
}
