//! `convo keys`: the master key of the personal-data keys (SPEC §13):
//! where it stands, and its rotation.

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};

use convo_store::signing::{KEY_FILE, Signing};

use crate::engine_cmds::Connection;

#[derive(Args, Debug)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCmd,
}

#[derive(Subcommand, Debug)]
enum KeysCmd {
    /// The master's generation, and whether a rotation is unfinished.
    Status(KeysCmdArgs),
    /// Rotate the master: a new random one wraps every data key again (every `convo serve` stopped).
    #[command(after_help = "\
Examples:
  convo keys status
  convo keys rotate

The data keys of personal data (one per contact, one per conversation) are
kept wrapped by a master key: derived from engine.key at first, a random one
kept in engine.key after a rotation. A rotation adds a new master to
engine.key, wraps every key the old one wrapped again (each old wrapped key
removed with the server's secure erase), then drops the old master from
engine.key: a copy of engine.key from before opens nothing any more. Copy the
new engine.key to every instance's data directory before starting them (an
instance with an older copy stops, saying its key does not open the stream's
keys). A rotation cut short is finished by running it again.")]
    Rotate(KeysCmdArgs),
}

#[derive(Args, Debug)]
struct KeysCmdArgs {
    #[command(flatten)]
    connection: Connection,
}

pub async fn keys(args: KeysArgs) -> Result<()> {
    match args.command {
        KeysCmd::Status(args) => status(&args.connection),
        KeysCmd::Rotate(args) => rotate(&args.connection).await,
    }
}

fn status(c: &Connection) -> Result<()> {
    let (_, stream) = c.engine_signing("the data-key master is kept in it")?;
    let (generation, retired) = Signing::master_generation(c.data_dir(), &stream)?;
    let made = if generation == 0 { "derived from engine.key" } else { "random, kept in engine.key" };
    println!("stream {stream}: data-key master generation {generation} ({made})");
    if retired > 0 {
        println!("a rotation is unfinished ({retired} older master(s) kept): `convo keys rotate` finishes it");
    }
    Ok(())
}

async fn rotate(c: &Connection) -> Result<()> {
    let (signing, stream) = c.engine_signing("the data-key master is kept in it")?;
    let dir = c.data_dir();
    let (store, _server) = c.open_store().await?;
    crate::seal_cmds::refuse_if_served(&store).await?;
    let signing = if signing.retired_data_key_masters().is_empty() {
        signing.begin_master_rotation(dir).context("adding a new master to the engine's key")?
    } else {
        eprintln!("convo: finishing a rotation cut short (its new master is in {KEY_FILE} already)");
        Signing::open(dir, &stream)?.context("the engine's key")?
    };
    let keys = store.keyring_of(&signing).await?;
    let report = keys.rewrap(None).await?;
    let signing = signing.finish_master_rotation(dir).context("dropping the old master from the engine's key")?;
    let (generation, _) = Signing::master_generation(dir, &stream)?;
    drop(signing);
    println!(
        "stream {stream}: data-key master rotated to generation {generation}: {} key(s) wrapped again (the old \
         wrapped keys removed with the server's secure erase), {} already wrapped by it, {} conversation key(s) \
         under their contact's (unchanged){}",
        report.rewrapped,
        report.already,
        report.under_contacts,
        if report.finished > 0 {
            format!(", {} put back from a run cut short", report.finished)
        } else {
            String::new()
        }
    );
    if report.unopenable > 0 {
        println!(
            "{} key(s) no master opens (damaged, or wrapped by a master long gone) were left as they are: what \
             they sealed reads [erased]",
            report.unopenable
        );
    }
    println!(
        "the old master is gone from {}: copy this engine.key to every instance's data directory before starting \
         them",
        dir.join(KEY_FILE).display()
    );
    Ok(())
}
