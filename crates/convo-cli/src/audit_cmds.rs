//! `convo audit`: the audit log read model, for operators.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use convo_audit::{AuditLog, Filter};

use crate::engine_cmds::Connection;

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  convo audit catch-up                                   # fold new events into the log
  convo audit verify                                     # recompute the hash chains from the stream
  convo audit replay --conversation c1                   # the conversation's timeline, as a person reads it
  convo audit export --format csv --account acme --from 2026-03-02T00:00:00Z --to 2026-03-03T00:00:00Z
  convo audit export --actor ana --ip 10.0.0.11          # who did what from where
  convo audit rebuild                                    # refold the whole stream, then swap

The log lives in <data-dir>/projections (sled); the stream is the truth.")]
pub struct AuditArgs {
    #[command(subcommand)]
    command: AuditCmd,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Subcommand, Debug)]
enum AuditCmd {
    /// Fold the events the log has not seen yet.
    CatchUp,
    /// Refold the whole stream into a fresh log and swap it in when caught up.
    Rebuild,
    /// Recompute the log from the stream and name the first entry that differs.
    Verify,
    /// Print entries (JSON lines or CSV), filtered.
    Export(ExportArgs),
    /// Print a conversation's timeline the way a person reads it.
    Replay(ReplayArgs),
}

#[derive(Args, Debug)]
struct FilterArgs {
    #[arg(long)]
    account: Option<String>,
    /// From this instant (RFC 3339, inclusive).
    #[arg(long, value_parser = instant)]
    from: Option<String>,
    /// Up to this instant (RFC 3339, inclusive).
    #[arg(long, value_parser = instant)]
    to: Option<String>,
    /// A user, contact or rule (`ana`, `user:ana`, `system:sla`).
    #[arg(long)]
    actor: Option<String>,
    /// An event type (`conversation_closed`, `campaign_updated`…).
    #[arg(long)]
    action: Option<String>,
    #[arg(long)]
    conversation: Option<String>,
    #[arg(long)]
    ip: Option<String>,
}

/// An RFC 3339 instant, as the user wrote it.
fn instant(text: &str) -> Result<String, String> {
    convo_domain::Timestamp::parse_rfc3339(text)
        .map(|t| t.to_rfc3339()) // compared with the entries' UTC times
        .map_err(|_| format!("{text:?} is not an RFC 3339 instant (2026-03-02T13:00:00Z)"))
}

impl FilterArgs {
    fn filter(&self) -> Filter {
        Filter {
            account: self.account.clone(),
            from: self.from.clone(),
            to: self.to.clone(),
            actor: self.actor.clone(),
            action: self.action.clone(),
            conversation: self.conversation.clone(),
            ip: self.ip.clone(),
        }
    }
}

#[derive(Args, Debug)]
struct ExportArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// jsonl or csv.
    #[arg(long, default_value = "jsonl", value_parser = ["jsonl", "csv"])]
    format: String,
    /// Write to this file (with a progress bar) instead of standard output.
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ReplayArgs {
    /// Which entries (`--conversation` is required; `--from`/`--to` bound the window).
    #[command(flatten)]
    filter: FilterArgs,
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style.progress_chars("=> "));
    bar.set_message(what.to_owned());
    bar
}

pub async fn audit(args: AuditArgs) -> Result<std::process::ExitCode> {
    let (store, projector, _server) = args.connection.read_model(convo_audit::NAME).await?;
    let data_dir = args.connection.data_dir().to_path_buf();
    match args.command {
        AuditCmd::CatchUp => {
            let stats = projector.catch_up(&store, &mut AuditLog, &mut |_, _| {}).await?;
            eprintln!(
                "convo: audit log at stream sequence {} ({} commits folded, {} dead letters in this run, lag {})",
                stats.checkpoint,
                stats.commits,
                stats.dead_letters,
                projector.lag(&store).await?
            );
        }
        AuditCmd::Rebuild => {
            let progress = bar(convo_store::EventStore::last_seq(&store).await?, "rebuilding the audit log");
            let stats = projector.rebuild(&store, &mut AuditLog, &mut |at, _| progress.set_position(at)).await?;
            progress.finish_and_clear();
            eprintln!(
                "convo: rebuilt the audit log from {} commits ({} dead letters); now live",
                stats.commits, stats.dead_letters
            );
        }
        AuditCmd::Verify => {
            let verdict = convo_audit::verify(&store, &projector.tree()?).await?;
            let lag = projector.lag(&store).await?;
            if lag > 0 {
                eprintln!(
                    "convo: the audit log is {lag} commits behind the stream (`convo audit catch-up` folds them); verifying what it holds"
                );
            }
            let mut broken = false;
            if let Some(d) = &verdict.first_divergence {
                println!("the audit log DIFFERS from the stream after {} matching entries: {d}", verdict.entries);
                broken = true;
            }
            if !verdict.not_in_record.is_empty() {
                println!(
                    "the stream holds {} message(s) up to sequence {} that are not part of the record \
                     (the audit log leaves them out; `convo doctor` lists them too):",
                    verdict.not_in_record.len(),
                    verdict.checkpoint
                );
                for dead in verdict.not_in_record.iter().take(20) {
                    println!("  message {}: {}", dead.seq, dead.reason);
                }
                broken = true;
            }
            match &store.config().signing {
                Some(signing) => {
                    let anchors = convo_store::signing::check_anchors(&store, signing).await?;
                    if anchors.findings.is_empty() {
                        println!(
                            "the stream holds every anchored commit where it was anchored ({} aggregates; signatures checked after sequence {})",
                            anchors.held,
                            signing.unsigned_through()
                        );
                    } else {
                        println!("the stream does NOT hold what the engine anchored:");
                        for finding in &anchors.findings {
                            println!("  {finding}");
                        }
                        if anchors.more > 0 {
                            println!("  … and {} more", anchors.more);
                        }
                        broken = true;
                    }
                }
                None => eprintln!(
                    "convo: no engine key for this stream under {} ({}): signatures and anchors NOT checked",
                    data_dir.display(),
                    convo_store::signing::KEY_FILE
                ),
            }
            if broken {
                return Ok(std::process::ExitCode::from(1));
            }
            if lag > 0 {
                println!(
                    "the audit log is intact as far as it goes: {} entries up to stream sequence {} match the stream, \
                     which holds {lag} more commits (`convo audit catch-up` folds them)",
                    verdict.entries, verdict.checkpoint
                );
            } else {
                println!(
                    "the audit log is intact: {} entries up to stream sequence {} (the stream's end) match the stream",
                    verdict.entries, verdict.checkpoint
                );
            }
        }
        AuditCmd::Export(export) => {
            projector.catch_up(&store, &mut AuditLog, &mut |_, _| {}).await?;
            let entries = convo_audit::entries(&projector.tree()?, &export.filter.filter())?;
            let (mut out, progress): (Box<dyn Write>, Option<ProgressBar>) = match &export.output {
                Some(path) => (
                    Box::new(std::io::BufWriter::new(std::fs::File::create(path)?)),
                    Some(bar(entries.len() as u64, "exporting")),
                ),
                None => (Box::new(std::io::BufWriter::new(std::io::stdout().lock())), None),
            };
            if export.format == "csv" {
                writeln!(out, "{}", convo_audit::CSV_COLUMNS.join(","))?;
            }
            for entry in &entries {
                if export.format == "csv" {
                    writeln!(out, "{}", convo_audit::csv_line(entry))?;
                } else {
                    writeln!(out, "{entry}")?;
                }
                if let Some(p) = &progress {
                    p.inc(1);
                }
            }
            out.flush()?;
            if let Some(p) = progress {
                p.finish_and_clear();
                eprintln!("convo: exported {} entries", entries.len());
            }
        }
        AuditCmd::Replay(replay) => {
            let Some(conversation) = replay.filter.conversation.clone() else {
                bail!("replay needs --conversation (the conversation whose timeline to print)");
            };
            projector.catch_up(&store, &mut AuditLog, &mut |_, _| {}).await?;
            let entries = convo_audit::entries(&projector.tree()?, &replay.filter.filter())?;
            if entries.is_empty() {
                bail!("no audit entries for conversation {conversation} in that window");
            }
            for entry in &entries {
                println!("{}", convo_audit::timeline_line(entry));
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}
