//! `convo project postgres`: the SQL projection brought up to the stream's
//! end, or rebuilt into a fresh schema and swapped in.

use anyhow::{Result, bail};
use clap::{Args, Subcommand};

use crate::engine_cmds::{Connection, PostgresOptions};

#[derive(Args, Debug)]
pub struct ProjectArgs {
    #[command(subcommand)]
    command: ProjectCmd,
}

#[derive(Subcommand, Debug)]
enum ProjectCmd {
    /// The SQL projection in PostgreSQL: catch up to the stream's end, or --rebuild it.
    #[command(after_help = "\
Examples:
  convo project postgres --postgres postgres://convo@127.0.0.1:5432/reports --postgres-password-file pg.pass
  convo project postgres --postgres postgres://convo@127.0.0.1:5432/reports --postgres-password-file pg.pass --rebuild

`convo serve --postgres …` keeps the projection current; this command brings it
to the stream's end once (with serve stopped, or beside it: each batch is
written with its checkpoint, so two writers never write a row twice).
--rebuild folds the whole stream into <schema>_rebuild and swaps it in for
<schema> in one transaction: readers see the old schema until the swap (grants
on the old schema's tables go with it: grant again after a rebuild).

The tables (conversations, responses, sla_crossings, segments, transfers,
closures, agent_states, csat, labels, contact_attributes, contacts_erased) and
the views (sla_by_campaign_hour, sla_by_campaign_day,
first_response_by_campaign_hour, closures_by_campaign_day,
csat_by_campaign_day, agent_time_in_state) are described in the README.")]
    Postgres(PostgresArgs),
}

#[derive(Args, Debug)]
struct PostgresArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(flatten)]
    postgres: PostgresOptions,
    /// Fold the whole stream into a fresh schema, then swap it in.
    #[arg(long)]
    rebuild: bool,
}

pub async fn project(args: ProjectArgs) -> Result<()> {
    let ProjectCmd::Postgres(args) = args.command;
    let Some(target) = args.postgres.target()? else {
        bail!("--postgres names the database the SQL projection goes to (postgres://USER@127.0.0.1:5432/DATABASE)")
    };
    let (store, _server) = args.connection.open_store_with_keys().await?;
    let last = convo_store::EventStore::last_seq(&store).await?;
    let what = if args.rebuild { "rebuilding the SQL projection" } else { "the SQL projection" };
    let progress = crate::audit_cmds::bar(last, what);
    let mut on_progress = |at: u64, _| progress.set_position(at);
    let keys = store.keys().cloned();
    let stats = if args.rebuild {
        convo_sql::rebuild(&target, &store, keys.as_deref(), &mut on_progress).await?
    } else {
        let mut sql = target.open().await?;
        sql.catch_up(&store, keys.as_deref(), target.batch_commits, None, &mut on_progress).await?
    };
    progress.finish_and_clear();
    eprintln!(
        "convo: the SQL projection in {target} is at stream sequence {} ({} commits folded now, {} rows written{})",
        stats.checkpoint,
        stats.commits,
        stats.rows,
        if args.rebuild { ", rebuilt and swapped in" } else { "" }
    );
    if stats.dead_letters > 0 {
        eprintln!(
            "convo: {} commits were put aside (SELECT * FROM {}.dead_letters)",
            stats.dead_letters, target.schema
        );
    }
    Ok(())
}
