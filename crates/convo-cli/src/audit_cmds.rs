//! `convo audit`: the audit log read model, for operators.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use convo_audit::{AuditLog, Filter};

use crate::engine_cmds::Connection;
use crate::served::{Served, query};

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  convo audit catch-up                                   # fold new events into the log
  convo audit verify                                     # recompute the hash chains from the stream
  convo audit replay --conversation c1                   # the conversation's timeline, as a person reads it
  convo audit export --format csv --account acme --from 2026-03-02T00:00:00Z --to 2026-03-03T00:00:00Z
  convo audit export --actor ana --ip 10.0.0.11          # who did what from where
  convo audit rebuild                                    # refold the whole stream, swap, give the old tree's space back

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

pub(crate) fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style.progress_chars("=> "));
    bar.set_message(what.to_owned());
    bar
}

pub async fn audit(args: AuditArgs) -> Result<std::process::ExitCode> {
    if let Some(server) = Served::find(&args.connection).await? {
        return served(&server, &args).await;
    }
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
            // The swapped-out tree's space goes back to the disk: the database is rewritten with the live trees.
            drop(projector);
            let dir = data_dir.join("projections");
            let compacted = convo_projector::compact(&dir)?;
            eprintln!(
                "convo: the read models under {} take {} bytes on disk (were {} with the old tree)",
                dir.display(),
                compacted.after,
                compacted.before
            );
        }
        AuditCmd::Verify => {
            let verdict = convo_gateway::reads::verify_verdict(&store, &projector.tree()?)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if verdict["anchors"]["checked"] == false {
                eprintln!(
                    "convo: no engine key for this stream under {} ({}): signatures and anchors NOT checked",
                    data_dir.display(),
                    convo_store::signing::KEY_FILE
                );
            }
            return Ok(print_verdict(&verdict));
        }
        AuditCmd::Export(export) => {
            projector.catch_up(&store, &mut AuditLog, &mut |_, _| {}).await?;
            let entries = convo_audit::entries(&projector.tree()?, &export.filter.filter())?;
            write_export(&export, &entries)?;
        }
        AuditCmd::Replay(replay) => {
            projector.catch_up(&store, &mut AuditLog, &mut |_, _| {}).await?;
            let entries = convo_audit::entries(&projector.tree()?, &replay.filter.filter())?;
            print_timeline(&replay, &entries)?;
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn write_export(export: &ExportArgs, entries: &[serde_json::Value]) -> Result<()> {
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
    for entry in entries {
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
    Ok(())
}

fn print_timeline(replay: &ReplayArgs, entries: &[serde_json::Value]) -> Result<()> {
    let Some(conversation) = &replay.filter.conversation else {
        bail!("replay needs --conversation (the conversation whose timeline to print)");
    };
    if entries.is_empty() {
        bail!("no audit entries for conversation {conversation} in that window");
    }
    for entry in entries {
        println!("{}", convo_audit::timeline_line(entry));
    }
    Ok(())
}

/// The audit commands while `convo serve` runs (it holds the log and keeps it current).
async fn served(server: &Served, args: &AuditArgs) -> Result<std::process::ExitCode> {
    let account_of = |filter: &FilterArgs| {
        filter.account.clone().ok_or_else(|| {
            anyhow::anyhow!("--account is required while `convo serve` runs (its gateway reads one account at a time)")
        })
    };
    let entries = |filter: &FilterArgs| -> Result<String> {
        let account = account_of(filter)?;
        Ok(format!("/v1/accounts/{account}/audit/export")
            + &query(&[
                ("from", filter.from.as_deref()),
                ("to", filter.to.as_deref()),
                ("actor", filter.actor.as_deref()),
                ("action", filter.action.as_deref()),
                ("conversation", filter.conversation.as_deref()),
                ("ip", filter.ip.as_deref()),
            ]))
    };
    let lines = |body: &str| -> Result<Vec<serde_json::Value>> {
        body.lines().filter(|l| !l.is_empty()).map(|l| Ok(serde_json::from_str(l)?)).collect()
    };
    match &args.command {
        AuditCmd::CatchUp => {
            let ready = server.get("/health/ready").await.ok().and_then(|a| a.json().ok()).unwrap_or_default();
            eprintln!(
                "convo: the running `convo serve` keeps the audit log current; it is at stream sequence {}",
                ready["read_models"][convo_audit::NAME]
            );
        }
        AuditCmd::Rebuild => bail!(
            "a `convo serve` is running under {} and holds the read models: stop it, rebuild, start it again",
            args.connection.data_dir().display()
        ),
        AuditCmd::Verify => {
            let answer = server.get("/v1/audit/verify").await?;
            answer.say_position(convo_audit::NAME);
            return Ok(print_verdict(&answer.json()?));
        }
        AuditCmd::Export(export) => {
            let answer = server.get(&entries(&export.filter)?).await?;
            answer.say_position(convo_audit::NAME);
            write_export(export, &lines(&answer.body)?)?;
        }
        AuditCmd::Replay(replay) => {
            let answer = server.get(&entries(&replay.filter)?).await?;
            print_timeline(replay, &lines(&answer.body)?)?;
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Prints a verification's verdict (as `convo_gateway::reads::verify_verdict`
/// makes it); exit 1 when the log or the stream is not intact.
fn print_verdict(v: &serde_json::Value) -> std::process::ExitCode {
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    let behind = n("behind");
    if behind > 0 {
        eprintln!(
            "convo: the audit log is {behind} commits behind the stream (`convo audit catch-up` folds them); verifying what it holds"
        );
    }
    if let Some(d) = v["first_divergence"].as_str() {
        println!("the audit log DIFFERS from the stream after {} matching entries: {d}", n("entries"));
    }
    let dead = v["not_in_record"].as_array().cloned().unwrap_or_default();
    if !dead.is_empty() {
        println!(
            "the stream holds {} message(s) up to sequence {} that are not part of the record \
             (the audit log leaves them out; `convo doctor` lists them too):",
            n("not_in_record_count"),
            n("checkpoint")
        );
        for d in dead.iter().take(20) {
            println!("  message {}: {}", d["seq"], d["reason"].as_str().unwrap_or(""));
        }
    }
    let anchors = &v["anchors"];
    if anchors["checked"] == true {
        let findings = anchors["findings"].as_array().cloned().unwrap_or_default();
        if findings.is_empty() {
            println!(
                "the stream holds every anchored commit where it was anchored ({} aggregates; signatures checked after sequence {})",
                anchors["aggregates"], anchors["unsigned_through"]
            );
        } else {
            println!("the stream does NOT hold what the engine anchored:");
            for finding in &findings {
                println!("  {}", finding.as_str().unwrap_or(""));
            }
            if anchors["more"].as_u64().unwrap_or(0) > 0 {
                println!("  … and {} more", anchors["more"]);
            }
        }
    }
    if v["intact"] != true {
        return std::process::ExitCode::from(1);
    }
    if behind > 0 {
        println!(
            "the audit log is intact as far as it goes: {} entries up to stream sequence {} match the stream, \
             which holds {behind} more commits (`convo audit catch-up` folds them)",
            n("entries"),
            n("checkpoint")
        );
    } else {
        println!(
            "the audit log is intact: {} entries up to stream sequence {} (the stream's end) match the stream",
            n("entries"),
            n("checkpoint")
        );
    }
    std::process::ExitCode::SUCCESS
}
