//! `convo seal-stream`: rewrites a stream whose older commits hold personal
//! data in clear (from before sealing) into a sealed one (SPEC §13,
//! "Upgrade"), then rebuilds what was made from them: the read models (the
//! audit chain re-anchored on the sealed bytes) and the snapshots.

use anyhow::{Context as _, Result, bail};
use clap::Args;
use serde_json::{Value, json};

use convo_store::reseal::{self, Outcome};
use convo_store::{EventStore, JetStreamStore};

use crate::engine_cmds::Connection;

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  convo seal-stream                 # say what a rewrite would do (reads only)
  convo seal-stream --rewrite       # rewrite the stream (every `convo serve` stopped)

Commits written before personal data was sealed keep names, handles and
texts in clear, where erasing a contact cannot reach them. This rewrites the
stream with those values sealed under their data keys — or `[erased]` where
their contact was erased, or their content expired, later — and signed again,
each message at its stream sequence; the original's messages that held
values in clear are removed with the server's secure erase. Then the
snapshots are erased (the engine writes new ones), every read model is
rebuilt from the rewritten stream and the database compacted, and the audit
chain's heads before and after are recorded in reseals.jsonl (chained by the
engine's key). A rewrite cut short resumes when run again.")]
pub struct SealStreamArgs {
    #[command(flatten)]
    connection: Connection,
    /// Rewrite the stream (without it, only say what a rewrite would do).
    #[arg(long)]
    rewrite: bool,
}

pub async fn seal_stream(args: SealStreamArgs) -> Result<std::process::ExitCode> {
    let c = &args.connection;
    let data_dir = c.data_dir().to_path_buf();
    let (signing, stream) = c.engine_signing("the rewrite seals with the data keys it wraps and signs with it")?;
    let (store, _server) = c.open_store_with_keys().await?;
    let keys = store.keys().cloned().context("the data keys of the stream")?;
    refuse_if_served(&store).await?;
    let bar = indicatif::ProgressBar::new(0)
        .with_style(indicatif::ProgressStyle::with_template("{msg} {wide_bar} {pos}/{len}").expect("a valid template"));
    let progress = |step: &str, at: u64, of: u64| {
        bar.set_length(of);
        bar.set_position(at);
        if bar.message() != step {
            bar.set_message(step.to_owned());
        }
    };
    if !args.rewrite {
        let survey = reseal::survey(&store, &signing, &progress).await?;
        bar.finish_and_clear();
        println!(
            "stream {}: {} messages up to sequence {}; {} commit(s) hold personal data in clear{}",
            stream,
            survey.messages,
            survey.last,
            survey.plaintext_commits,
            if survey.plaintext_commits == 0 { " (nothing to rewrite)" } else { "" }
        );
        if survey.plaintext_commits > 0 {
            println!(
                "a rewrite seals them ({} erased contact(s) and {} expired conversation(s): their values read \
                 [erased]); stop every `convo serve` of the stream, then: convo seal-stream --rewrite",
                survey.erased_contacts, survey.expired_conversations
            );
        }
        if survey.unfinished {
            println!("an earlier rewrite was cut short: `convo seal-stream --rewrite` finishes it");
        }
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let report = match reseal::reseal(&store, &keys, &signing, &progress).await? {
        Outcome::AlreadySealed { messages } => {
            bar.finish_and_clear();
            println!("stream {}: every commit of its {messages} messages is sealed: nothing to rewrite", stream);
            return Ok(std::process::ExitCode::SUCCESS);
        }
        Outcome::Rewritten(report) => report,
    };
    let (before, after) = rebuild_read_models(&data_dir, &store, &progress).await?;
    bar.finish_and_clear();
    let record = signing
        .record_reseal(
            &data_dir,
            json!({
                "at": chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now())
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "rewrite": report.id,
                "first": report.first,
                "last": report.last,
                "messages": report.messages,
                "rewritten": report.rewritten,
                "sealed_values": report.sealed,
                "erased_values": report.erased,
                "audit_heads": heads_moved(&before, &after),
            }),
        )
        .context("recording the rewrite")?;
    println!(
        "stream {}: {} of {} messages rewritten ({} values sealed, {} read [erased]), each at its sequence ({} to \
         {}, {} gap(s) kept){}",
        stream,
        report.rewritten,
        report.messages,
        report.sealed,
        report.erased,
        report.first,
        report.last,
        report.gaps,
        if report.resumed { "; an earlier run cut short was finished" } else { "" }
    );
    println!(
        "the originals that held personal data in clear were removed with the server's secure erase; \
         {} snapshot message(s) erased (the engine writes new ones)",
        report.snapshot_messages
    );
    println!(
        "read models rebuilt from the sealed stream under {}; the audit chain's heads before and after are in {}",
        data_dir.join("projections").display(),
        data_dir.join(convo_store::signing::RESEALS_FILE).display()
    );
    println!("{record}");
    Ok(std::process::ExitCode::SUCCESS)
}

/// Stops the rewrite while an engine instance serves the stream (its
/// heartbeat is younger than a lease): nothing may append meanwhile.
pub(crate) async fn refuse_if_served(store: &JetStreamStore) -> Result<()> {
    let directory = store.directory().await?;
    let live: Vec<String> = directory
        .members()
        .await?
        .into_iter()
        .filter(|m| m.age.as_millis() < u128::from(convo_store::lease::LEASE_TTL_MS))
        .map(|m| format!("{} (heartbeat {} ms ago)", m.id, m.age.as_millis()))
        .collect();
    if !live.is_empty() {
        bail!(
            "an engine serves stream {} now: {}; stop every `convo serve` of it first (nothing may append while \
             it is rewritten)",
            store.config().stream,
            live.join(", ")
        );
    }
    Ok(())
}

/// Every read model folded again from the rewritten stream and the
/// database compacted (the old trees held the values in clear); the audit
/// chain's heads (account → entries and hash) before and after.
async fn rebuild_read_models(
    data_dir: &std::path::Path,
    store: &JetStreamStore,
    progress: &(dyn Fn(&str, u64, u64) + Sync),
) -> Result<(Value, Value)> {
    let dir = data_dir.join("projections");
    let db = convo_projector::open_db(&dir).with_context(|| {
        format!("cannot open the read models in {} (is a `convo serve` using them?)", dir.display())
    })?;
    let last = store.last_seq().await?;
    let mut before = Value::Null;
    let mut after = Value::Null;
    for (name, mut projection) in convo_service::read_models::projections() {
        let projector = convo_projector::Projector::open(db.clone(), name);
        if name == convo_audit::NAME {
            before = audit_heads(&projector)?;
        }
        let step = format!("rebuilding the {name} read model");
        projector.rebuild(store, projection.as_mut(), &mut |at, _| progress(&step, at, last)).await?;
        if name == convo_audit::NAME {
            after = audit_heads(&projector)?;
        }
    }
    drop(db);
    convo_projector::compact(&dir)?;
    Ok((before, after))
}

/// The audit log's head per account: its entry count and hash.
fn audit_heads(projector: &convo_projector::Projector) -> Result<Value> {
    let mut heads = serde_json::Map::new();
    for item in projector.tree()?.scan_prefix(b"h/") {
        let (key, value) = item?;
        let account = String::from_utf8_lossy(&key[2..]).into_owned();
        heads.insert(account, serde_json::from_slice(&value).unwrap_or(Value::Null));
    }
    Ok(Value::Object(heads))
}

/// Per account: the audit chain's head before the rewrite and after it.
fn heads_moved(before: &Value, after: &Value) -> Value {
    let mut accounts: Vec<&String> =
        before.as_object().into_iter().chain(after.as_object()).flat_map(|m| m.keys()).collect();
    accounts.sort();
    accounts.dedup();
    Value::Object(accounts.into_iter().map(|a| (a.clone(), json!({"before": before[a], "after": after[a]}))).collect())
}
