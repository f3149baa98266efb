//! `convo`: the command line of the convo engine.
//!
//! `simulate` runs the deterministic simulator; `serve`, `send`, `tail` and
//! `replay-traffic` run and talk to the engine on NATS JetStream.

mod audit_cmds;
mod cluster_cmds;
mod contact_cmds;
mod doctor_cmds;
mod engine_cmds;
mod keys_cmds;
mod project_cmds;
mod report_cmds;
mod seal_cmds;
mod served;
mod webhook_cmds;

use std::collections::BTreeMap;
use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};
use convo_domain::Timestamp;
use convo_sim::model::Model;
use convo_sim::summary::Summary;
use convo_sim::workload::{self, RandomDay};
use convo_sim::{Scripted, Step, output, scenario};

#[derive(Parser, Debug)]
#[command(name = "convo", version, about = "An event-sourced conversation engine for omnichannel contact centers")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a scenario (or a seeded random day) through the domain on a virtual clock.
    #[command(after_help = "\
Examples:
  convo simulate replay-fixtures/sla-worked-example/input.jsonl
  convo simulate day.jsonl --summary --no-events
  convo simulate day.jsonl --until 2026-03-02T12:00:00Z
  convo simulate --random --seed 1 --conversations 10000 --no-events --summary
  convo simulate --random --seed 7 --conversations 200 --write-scenario day.jsonl

Output: one JSON object per line (an event, a rejected command, or a repeated
command), in the order they happened. The same input gives the same bytes.
The scenario format is documented in replay-fixtures/README.md.")]
    Simulate(SimulateArgs),
    /// Run the engine: the embedded default (a local nats-server it starts) or --nats-url.
    Serve(engine_cmds::ServeArgs),
    /// Send one JSON command to the engine and print the outcome.
    Send(engine_cmds::SendArgs),
    /// Follow the events as JSON lines, filtered by account, conversation or kind.
    Tail(engine_cmds::TailArgs),
    /// Push a scenario through the real engine and NATS, in virtual time.
    ReplayTraffic(engine_cmds::ReplayArgs),
    /// The audit log: catch up, rebuild, verify, export, replay a conversation.
    Audit(audit_cmds::AuditArgs),
    /// Reports: volumes, SLA, times, closures, CSAT, by account/client/campaign/agent/channel.
    Report(report_cmds::ReportArgs),
    /// A contact's history of closed conversations.
    Contact(contact_cmds::ContactArgs),
    /// List the messages of the log that recovery cannot apply, and purge them.
    Doctor(doctor_cmds::DoctorArgs),
    /// Print the nats-server authorization for your own cluster: the engine's user and every key's login.
    NatsConfig(engine_cmds::NatsConfigArgs),
    /// Webhook deliveries: pending, dead-lettered, and every attempt (status, response code, latency).
    Webhooks(webhook_cmds::WebhookArgs),
    /// The engine instances sharing the stream: who owns which partition.
    Cluster(cluster_cmds::ClusterArgs),
    /// Rewrite a stream whose commits from before sealing hold personal data in clear into a sealed one.
    SealStream(seal_cmds::SealStreamArgs),
    /// The master key of the personal-data keys: its status, and its rotation.
    Keys(keys_cmds::KeysArgs),
    /// Projections kept outside: the SQL projection in PostgreSQL (catch up, rebuild).
    Project(project_cmds::ProjectArgs),
}

#[derive(Args, Debug)]
struct SimulateArgs {
    /// The scenario file (JSON lines; `-` reads standard input).
    #[arg(required_unless_present = "random", conflicts_with = "random")]
    scenario: Option<PathBuf>,
    /// Stop at this instant (RFC 3339): later timers and inputs are not run.
    #[arg(long, value_parser = parse_instant)]
    until: Option<Timestamp>,
    /// Print a readable summary after the events.
    #[arg(long)]
    summary: bool,
    /// Do not print the events (useful with --summary).
    #[arg(long)]
    no_events: bool,
    /// Generate a seeded random day of traffic and check it against an independent model.
    #[arg(long)]
    random: bool,
    /// The seed of the random day.
    #[arg(long, requires = "random", default_value_t = 1)]
    seed: u64,
    /// How many conversations the random day holds.
    #[arg(long, requires = "random", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=workload::CONVERSATIONS_MAX as i64))]
    conversations: u32,
    /// Also write the random day's inputs as a scenario file.
    #[arg(long, requires = "random", conflicts_with = "faults")]
    write_scenario: Option<PathBuf>,
    /// Drive the engine's partition machine, pipelined, over a store that
    /// delays, reorders and fails appends, loses acknowledgements, lets a
    /// phantom second writer win races, goes down and crash-restarts; then
    /// audit the log. One line per seed; the seed reproduces a failure.
    #[arg(long, requires = "random")]
    faults: bool,
    /// With --faults: run this many seeds, from --seed on.
    #[arg(long, requires = "faults", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    seeds: u32,
    /// With --faults: deliberately break the store (appends ignore their
    /// expected sequence), to see the auditor catch it.
    #[arg(long, requires = "faults")]
    break_expectation: bool,
    /// With --faults: deliberately break the partition's fence (a deposed
    /// owner's appends are accepted), to see the auditor catch it.
    #[arg(long, requires = "faults")]
    break_fence: bool,
    /// With --faults: deliberately break group commit (a batch that failed
    /// is taken as stored), to see the auditor catch it.
    #[arg(long, requires = "faults")]
    break_batch_fallback: bool,
}

fn parse_instant(text: &str) -> Result<Timestamp, String> {
    Timestamp::parse_rfc3339(text).map_err(|e| format!("{text:?} is not an RFC 3339 instant: {e}"))
}

/// mimalloc: under load glibc's malloc and free were 40% of `convo serve`'s
/// CPU (BENCHMARKS.md, "Group commit").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Whatever the umask: every file convo (and its nats-server) writes is its user's alone.
    convo_store::private::restrict_umask();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Simulate(args) => simulate(args),
        other => runtime().and_then(|rt| {
            rt.block_on(async {
                match other {
                    Cmd::Serve(args) => engine_cmds::serve(args).await.map(|()| ExitCode::SUCCESS),
                    Cmd::Send(args) => engine_cmds::send(args).await,
                    Cmd::Tail(args) => engine_cmds::tail(args).await.map(|()| ExitCode::SUCCESS),
                    Cmd::ReplayTraffic(args) => engine_cmds::replay_traffic(args).await.map(|()| ExitCode::SUCCESS),
                    Cmd::Audit(args) => audit_cmds::audit(args).await,
                    Cmd::Report(args) => report_cmds::report(args).await.map(|()| ExitCode::SUCCESS),
                    Cmd::Contact(args) => contact_cmds::contact(args).await.map(|()| ExitCode::SUCCESS),
                    Cmd::Doctor(args) => doctor_cmds::doctor(args).await,
                    Cmd::NatsConfig(args) => engine_cmds::nats_config(args).await.map(|()| ExitCode::SUCCESS),
                    Cmd::Webhooks(args) => webhook_cmds::webhooks(args).await.map(|()| ExitCode::SUCCESS),
                    Cmd::Cluster(args) => cluster_cmds::cluster(args).await.map(|()| ExitCode::SUCCESS),
                    Cmd::SealStream(args) => seal_cmds::seal_stream(args).await,
                    Cmd::Keys(args) => keys_cmds::keys(args).await.map(|()| ExitCode::SUCCESS),
                    Cmd::Project(args) => project_cmds::project(args).await.map(|()| ExitCode::SUCCESS),
                    Cmd::Simulate(_) => unreachable!("handled above"),
                }
            })
        }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("convo: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn simulate(args: SimulateArgs) -> Result<ExitCode> {
    if args.faults {
        return Ok(simulate_faults(&args));
    }
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut summary = Summary::default();
    let mut write_error: Option<std::io::Error> = None;
    let mut emit = |step: Step<'_>, summary: &mut Summary| {
        summary.observe(step.records);
        if args.no_events || write_error.is_some() {
            return;
        }
        for record in step.records {
            if let Err(e) = writeln!(out, "{}", output::to_line(record)) {
                write_error = Some(e);
                return;
            }
        }
    };

    let mut code = ExitCode::SUCCESS;
    if args.random {
        let mut day = RandomDay::new(args.seed, args.conversations);
        let mut model = Model::new(workload::model_rules());
        let mut scenario_out = match &args.write_scenario {
            Some(path) => Some(BufWriter::new(
                std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
            )),
            None => None,
        };
        let mut scenario_error = None;
        convo_sim::run(&mut day, args.until, |step| {
            model.observe(step.input, step.records);
            if let (Some(file), Some(input)) = (scenario_out.as_mut(), step.input)
                && let Err(e) = writeln!(file, "{}", scenario::to_line(input))
            {
                scenario_error.get_or_insert(e);
            }
            emit(step, &mut summary);
        });
        if let Some(e) = scenario_error {
            bail!("writing the scenario: {e}");
        }
        if let Some(mut file) = scenario_out {
            file.flush().context("writing the scenario")?;
        }
        match model.check() {
            Ok(agreement) => {
                eprintln!("seed {}: {} conversations; the model agrees: {agreement}", args.seed, args.conversations)
            }
            Err(disagreement) => {
                eprintln!(
                    "seed {}: the run DISAGREES with the model of the SLA and inactivity rules:\n{disagreement}",
                    args.seed
                );
                eprintln!(
                    "reproduce with: convo simulate --random --seed {} --conversations {}",
                    args.seed, args.conversations
                );
                code = ExitCode::from(1);
            }
        }
    } else {
        let path = args.scenario.as_ref().expect("clap requires a scenario");
        let text = read_scenario(path)?;
        let inputs = scenario::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let stats = convo_sim::run(&mut Scripted::new(inputs), args.until, |step| emit(step, &mut summary));
        if stats.inputs_after_until > 0 {
            eprintln!("convo: {} input(s) after --until were not run", stats.inputs_after_until);
        }
    }
    if let Some(e) = write_error {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return Ok(code);
        }
        bail!("writing the events: {e}");
    }
    if args.summary {
        if !args.no_events {
            writeln!(out)?;
        }
        write!(out, "{summary}")?;
    }
    out.flush()?;
    Ok(code)
}

/// `convo simulate --random --faults`: one audited run per seed, a line each
/// in seed order (the same bytes for the same seeds), the seeds spread over
/// the machine's cores; the time taken goes to stderr.
fn simulate_faults(args: &SimulateArgs) -> ExitCode {
    let started = std::time::Instant::now();
    let seeds: Vec<u64> = (args.seed..args.seed.saturating_add(u64::from(args.seeds))).collect();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(seeds.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (tx, rx) = std::sync::mpsc::channel::<(usize, String, bool)>();
    let run = |seed: u64| {
        let options = convo_sim::faults::FaultOptions {
            seed,
            conversations: args.conversations,
            break_expectation: args.break_expectation,
            break_fence: args.break_fence,
            break_batch_fallback: args.break_batch_fallback,
        };
        match convo_sim::faults::run(options) {
            Ok(report) => (format!("seed {seed}: ok; {}; the model agrees: {}", report.stats, report.agreement), true),
            Err(failure) => (format!("FAILED {failure}"), false),
        }
    };
    let mut failed = 0u32;
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let (tx, next, seeds, run) = (tx.clone(), &next, &seeds, &run);
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(seed) = seeds.get(i) else { break };
                    let (line, ok) = run(*seed);
                    if tx.send((i, line, ok)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        // Printed in seed order as they complete.
        let mut done: BTreeMap<usize, (String, bool)> = BTreeMap::new();
        let mut printed = 0;
        for (i, line, ok) in rx {
            done.insert(i, (line, ok));
            while let Some((line, ok)) = done.remove(&printed) {
                println!("{line}");
                failed += u32::from(!ok);
                printed += 1;
            }
        }
    });
    eprintln!("convo: {} seed(s) in {:.1} s", seeds.len(), started.elapsed().as_secs_f64());
    if failed > 0 {
        eprintln!("convo: {failed} of {} seeds failed", args.seeds);
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

fn read_scenario(path: &PathBuf) -> Result<String> {
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text).context("reading the scenario from standard input")?;
    } else {
        text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every example a `--help` shows parses as written: no missing required
    /// flag, no flag that does not exist.
    #[test]
    fn every_help_example_parses() {
        fn walk(command: &mut clap::Command, out: &mut Vec<String>) {
            let help = command.render_long_help().to_string();
            out.extend(help.lines().map(str::trim).filter(|l| l.starts_with("convo ")).map(str::to_owned));
            for sub in command.get_subcommands_mut() {
                walk(sub, out);
            }
        }
        let mut examples = Vec::new();
        walk(&mut Cli::command(), &mut examples);
        let mut wrong = Vec::new();
        assert!(examples.len() > 20, "{examples:?}");
        for example in examples {
            // Drop a trailing comment and shell quoting (examples quote JSON with single quotes).
            let line = example.split("  #").next().unwrap_or(&example);
            let line = line.split(" > ").next().unwrap_or(line).trim();
            let mut words = Vec::new();
            let mut rest = line;
            while let Some(start) = rest.find(|c: char| !c.is_whitespace()) {
                rest = &rest[start..];
                let (word, tail) = if let Some(quoted) = rest.strip_prefix('\'') {
                    let end = quoted.find('\'').unwrap_or(quoted.len());
                    (&quoted[..end], quoted.get(end + 1..).unwrap_or(""))
                } else {
                    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                    (&rest[..end], &rest[end..])
                };
                words.push(word.to_owned());
                rest = tail;
            }
            if words.iter().any(|w| w.contains('|') || w == "…" || w.starts_with('$') && w.len() == 1) {
                continue; // a pipe or an ellipsis: not a command line as written
            }
            if let Err(e) = Cli::try_parse_from(&words) {
                wrong.push(format!("`{example}`: {}", e.kind()));
            }
        }
        assert!(wrong.is_empty(), "help examples that do not parse:\n{}", wrong.join("\n"));
    }
}
