//! `convo cluster status`: the engine instances sharing a stream, who owns
//! each partition, the leases' ages, and the stream's end.

use std::io::Write;

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use convo_store::EventStore;

use crate::engine_cmds::Connection;

#[derive(Args, Debug)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCmd,
}

#[derive(Subcommand, Debug)]
enum ClusterCmd {
    /// The instances, the partitions and their owners, the leases' ages.
    #[command(after_help = "\
Examples:
  convo cluster status                       # the embedded default's stream
  convo cluster status --nats-url nats://convo-engine:$PW@10.0.0.5:4222 --format json

A lease is renewed every 2 s and expires 10 s after its last renewal; a
partition with no owner is changing hands (its commands get no responders
until the new owner has recovered it).")]
    Status(StatusArgs),
}

#[derive(Args, Debug)]
struct StatusArgs {
    #[command(flatten)]
    connection: Connection,
    /// table or json.
    #[arg(long, default_value = "table", value_parser = ["table", "json"])]
    format: String,
}

pub async fn cluster(args: ClusterArgs) -> Result<()> {
    let ClusterCmd::Status(args) = args.command;
    let c = &args.connection;
    let (store, _server) = c.open_store().await?;
    let directory = store.directory().await?;
    let (members, owners, roles) = (directory.members().await?, directory.owners().await?, directory.roles().await?);
    let last = store.last_seq().await?;
    let snapshots = store.snapshots().await?.list().await?;
    let partitions = store.recorded_partitions().await?;
    let status = json!({
        "stream": store.config().stream,
        "last_sequence": last,
        "partitions": partitions,
        "instances": members.iter().map(|m| json!({
            "id": m.id,
            "holder": m.info["holder"],
            "http": m.info["http"],
            "heartbeat_age_ms": m.age.as_millis() as u64,
            "partitions": m.info["partitions"],
        })).collect::<Vec<Value>>(),
        "owners": (0..partitions.unwrap_or(0)).map(|n| {
            let owner = owners.iter().find(|o| o.partition == n);
            json!({
                "partition": n,
                "instance": owner.map(|o| o.instance.clone()),
                "lease_age_ms": owner.map(|o| o.age.as_millis() as u64),
            })
        }).collect::<Vec<Value>>(),
        "roles": roles.iter().map(|(name, id)| json!({"role": name, "instance": id})).collect::<Vec<Value>>(),
        "snapshots": snapshots.iter().map(|(name, bytes, written, covered)| json!({"object": name, "bytes": bytes, "written": written, "covered": covered})).collect::<Vec<Value>>(),
    });
    let mut out = std::io::stdout().lock();
    if args.format == "json" {
        writeln!(out, "{}", serde_json::to_string_pretty(&status)?)?;
        return Ok(());
    }
    let count = partitions.map_or("not recorded yet (no engine has served it)".into(), |n| n.to_string());
    writeln!(out, "stream {} at sequence {last}; {count} partitions", status["stream"].as_str().unwrap_or(""))?;
    writeln!(out, "\ninstances ({}):", members.len())?;
    for m in &members {
        writeln!(
            out,
            "  {}  heartbeat {:.1} s ago  {}  {}",
            m.id,
            m.age.as_secs_f64(),
            m.info["http"].as_str().unwrap_or("(no HTTP)"),
            m.info["holder"].as_str().unwrap_or("")
        )?;
    }
    writeln!(out, "\npartitions:")?;
    for row in status["owners"].as_array().into_iter().flatten() {
        match row["instance"].as_str() {
            Some(id) => writeln!(
                out,
                "  {:>3}  {id}  lease renewed {:.1} s ago",
                row["partition"],
                row["lease_age_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
            )?,
            None => writeln!(out, "  {:>3}  (no owner: changing hands, or no engine runs)", row["partition"])?,
        }
    }
    for (role, id) in &roles {
        writeln!(out, "\n{role}: played by {id}")?;
    }
    writeln!(out, "\nsnapshots:")?;
    if snapshots.is_empty() {
        writeln!(out, "  none yet (a takeover reads the whole log)")?;
    }
    for (name, bytes, written, covered) in &snapshots {
        writeln!(
            out,
            "  {name}  at sequence {covered} ({} behind)  {bytes} bytes  written {written}",
            last.saturating_sub(*covered)
        )?;
    }
    Ok(())
}
