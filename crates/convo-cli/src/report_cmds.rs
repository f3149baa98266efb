//! `convo report`: the reports read model as a table, CSV or JSON.

use anyhow::Result;
use clap::Args;
use serde_json::Value;

use convo_reports::Reports;

use crate::engine_cmds::Connection;

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  convo report sla --by campaign --period day
  convo report times --by agent --period hour --from 2026-03-02T08 --to 2026-03-02T18
  convo report closures --by campaign --format csv
  convo report overview --by channel --format json

Kinds: overview (everything), volume, sla, times, closures, csat.
Times are UTC buckets: days as 2026-03-02, hours as 2026-03-02T14.")]
pub struct ReportArgs {
    /// Which figures: overview, volume, sla, times, closures, csat.
    #[arg(value_parser = ["overview", "volume", "sla", "times", "closures", "csat"])]
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
    #[command(flatten)]
    connection: Connection,
}

fn columns(kind: &str) -> Vec<&'static str> {
    let volume = ["opened", "closed", "out_of_hours", "transfers", "inactivity_closures"];
    let sla = ["sla_optimal", "sla_low", "sla_breached", "sla_optimal_pct", "sla_low_pct", "sla_breached_pct"];
    let times = [
        "frt_count",
        "frt_mean_secs",
        "frt_p50_secs",
        "frt_p90_secs",
        "rt_count",
        "rt_mean_secs",
        "rt_p50_secs",
        "rt_p90_secs",
        "handle_mean_secs",
    ];
    let closures = ["closed", "closures_by_reason", "closures_by_typification"];
    let csat = ["csat_answers", "csat_mean"];
    match kind {
        "volume" => volume.to_vec(),
        "sla" => sla.to_vec(),
        "times" => times.to_vec(),
        "closures" => closures.to_vec(),
        "csat" => csat.to_vec(),
        _ => [&volume[..], &sla[..], &times[..], &csat[..], &closures[1..]].concat(),
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Object(m) => m.iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(" "),
        other => other.to_string(),
    }
}

/// A report bucket as the user may write it: a day or an hour (UTC).
fn bucket(text: &str) -> Result<String, String> {
    let bad = || format!("{text:?} is not a day (2026-03-02) or an hour (2026-03-02T14), in UTC");
    let (day, hour) = match text.split_once('T') {
        Some((day, hour)) => (day, Some(hour)),
        None => (text, None),
    };
    chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").map_err(|_| bad())?;
    if let Some(hour) = hour
        && (hour.len() != 2 || !hour.parse::<u8>().is_ok_and(|h| h < 24))
    {
        return Err(bad());
    }
    Ok(text.to_owned())
}

pub async fn report(args: ReportArgs) -> Result<()> {
    let projector = args.connection.caught_up(convo_reports::NAME, &mut Reports).await?;
    let rows = convo_reports::rows(
        &projector.tree()?,
        &args.account,
        &args.by,
        &args.period,
        args.from.as_deref(),
        args.to.as_deref(),
    )?;
    let json: Vec<Value> = rows.iter().map(|r| convo_reports::row_json(&args.by, r)).collect();
    let mut header = vec![args.by.as_str(), "bucket"];
    header.extend(columns(&args.kind));
    let table: Vec<Vec<String>> = json.iter().map(|r| header.iter().map(|c| cell(&r[*c])).collect()).collect();
    match args.format.as_str() {
        "json" => {
            for r in &json {
                let picked: serde_json::Map<String, Value> =
                    header.iter().map(|c| ((*c).to_owned(), r[*c].clone())).collect();
                println!("{}", Value::Object(picked));
            }
        }
        "csv" => {
            println!("{}", header.join(","));
            for row in &table {
                let fields: Vec<String> = row
                    .iter()
                    .map(|f| if f.contains([',', '"']) { format!("\"{}\"", f.replace('"', "\"\"")) } else { f.clone() })
                    .collect();
                println!("{}", fields.join(","));
            }
        }
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
