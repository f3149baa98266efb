//! `convo doctor`: reads the whole log as recovery does and lists every
//! message that cannot be applied (undecodable, from an unknown version,
//! stored on another aggregate's subject, out of sequence, a second opening),
//! with what to do about it; `--purge SEQ…` removes those messages.

use anyhow::{Result, bail};
use clap::Args;

use convo_engine::machine::MachineConfig;
use convo_engine::runtime::recover_machines;
use convo_store::{EventStore, JetStreamStore};

use crate::engine_cmds::Connection;

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  convo doctor                       # list what recovery skips, and why
  convo doctor --purge 1042 1043     # remove those messages from the stream

Recovery, `convo tail` and the read models step over a message they cannot
apply and go on; this lists them. Exit code 0 when the log is clean, 1 when
something is skipped. --purge removes only messages this command lists.")]
pub struct DoctorArgs {
    #[command(flatten)]
    connection: Connection,
    /// Remove these messages (stream sequences) from the stream; only
    /// messages that cannot be applied may be purged.
    #[arg(long, num_args = 1.., value_name = "SEQ")]
    purge: Vec<u64>,
}

pub async fn doctor(args: DoctorArgs) -> Result<std::process::ExitCode> {
    // With `convo serve` stopped, the data directory's own nats-server is started for this command.
    let (store, _server): (JetStreamStore, _) = args.connection.open_store().await?;
    let last = store.last_seq().await?;
    let (machines, newest) = recover_machines(&store, 1, MachineConfig::serve()).await?;
    let machine = &machines[0];
    let skipped = machine.skipped();
    let count = machine.stats().skipped;
    if !args.purge.is_empty() {
        for seq in &args.purge {
            if !skipped.iter().any(|s| s.seq == *seq) {
                bail!("message {seq} is not one recovery skips; `convo doctor` lists those that may be purged");
            }
        }
        for seq in &args.purge {
            let removed = store.delete_message(*seq).await?;
            println!("message {seq}: {}", if removed { "purged" } else { "already gone" });
        }
        println!("a running `convo serve` catches up by itself (its next append to that aggregate reloads it)");
        return Ok(std::process::ExitCode::SUCCESS);
    }
    println!(
        "stream {} (prefix {}): last sequence {last}, read up to {newest}",
        args.connection.store_config()?.stream,
        args.connection.store_config()?.prefix
    );
    if count == 0 {
        println!("every message applies: nothing to do");
        return Ok(std::process::ExitCode::SUCCESS);
    }
    println!("{count} message(s) cannot be applied; recovery skips them (everything else is unaffected):");
    for s in skipped {
        println!("  {:>10}  {}  {}", s.seq, s.subject, s.reason);
    }
    if count as usize > skipped.len() {
        println!("  … and {} more (only the first {} are listed)", count as usize - skipped.len(), skipped.len());
    }
    let seqs: Vec<String> = skipped.iter().filter(|s| s.seq > 0).take(20).map(|s| s.seq.to_string()).collect();
    println!("to remove them: convo doctor --purge {}", seqs.join(" "));
    println!(
        "(purge copies, foreign and unreadable messages; a commit skipped as out of sequence because an \
         earlier commit of its aggregate is missing means the stream lost data: restore it rather than purge)"
    );
    Ok(std::process::ExitCode::from(1))
}
