//! `convo contact <id> history`: a contact's past conversations;
//! `convo contact <id> export`: everything held about them (SPEC §13).

use anyhow::Result;
use clap::{Args, Subcommand};

use convo_contact_history::ContactHistory;

use crate::engine_cmds::Connection;
use crate::served::Served;

#[derive(Args, Debug)]
#[command(after_help = "\
Examples:
  convo contact k-1042 history --account acme
  convo contact k-1042 history --account acme --format json
  convo contact k-1042 export --account acme > k-1042.json

Shows the last closed conversations of the contact (as many as the client's
max_history_conversations), newest first; the number is masked unless the
campaign shows contact numbers.

`export` prints one JSON document with everything held about the contact
(subject access): identity and attributes from the contact book, whether and
why they were erased, and every conversation of theirs with its events and
texts in clear. Through a running `convo serve` it is its HTTP export (an
admin's or the operator's); with none running, it reads the stream with the
data keys of the engine's key under --data-dir.")]
pub struct ContactArgs {
    /// The contact's id (an opaque id the gateway or the contact book gave it).
    contact: String,
    #[command(subcommand)]
    command: ContactCmd,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Subcommand, Debug)]
enum ContactCmd {
    /// The contact's last closed conversations, newest first.
    History {
        /// The account (tenant) the contact belongs to.
        #[arg(long)]
        account: String,
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
    },
    /// Everything held about the contact, as one JSON document.
    Export {
        /// The account (tenant) the contact belongs to.
        #[arg(long)]
        account: String,
    },
}

pub async fn contact(args: ContactArgs) -> Result<()> {
    let (account, format) = match args.command {
        ContactCmd::History { account, format } => (account, format),
        ContactCmd::Export { account } => return export(&args.connection, &account, &args.contact).await,
    };
    let history = match Served::find(&args.connection).await? {
        Some(server) => {
            let answer = server.get(&format!("/v1/accounts/{account}/contacts/{}/history", args.contact)).await?;
            answer.say_position(convo_contact_history::NAME);
            answer.json()?["history"].as_array().cloned().unwrap_or_default()
        }
        None => {
            let projector =
                args.connection.caught_up(convo_contact_history::NAME, &mut ContactHistory::default()).await?;
            convo_contact_history::history(&projector.tree()?, &account, &args.contact)?
        }
    };
    if history.is_empty() {
        eprintln!("convo: no closed conversations of {} in account {account}", args.contact);
    }
    for entry in &history {
        if format == "json" {
            println!("{entry}");
        } else {
            let s = |k: &str| entry[k].as_str().unwrap_or("-").to_owned();
            let agents: Vec<String> = entry["agents"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect();
            println!(
                "{}  {:<14} {:<10} {:<8} agents: {:<16} closed {} ({}), {} messages, fields {}",
                s("closed_at"),
                s("conversation"),
                s("campaign"),
                s("channel"),
                agents.join(","),
                s("typification"),
                s("reason"),
                entry["messages"],
                entry["fields"]
            );
        }
    }
    Ok(())
}

async fn export(connection: &Connection, account: &str, contact: &str) -> Result<()> {
    let document = match Served::find(connection).await? {
        Some(server) => server.get(&format!("/v1/accounts/{account}/contacts/{contact}/export")).await?.json()?,
        None => {
            let (Ok(account_id), Ok(contact_id)) =
                (convo_domain::AccountId::new(account), convo_domain::ContactId::new(contact))
            else {
                anyhow::bail!("the account and the contact are ids (letters, digits, `-`, `_`)");
            };
            let (store, _server) = connection.open_store_with_keys().await?;
            if store.keys().is_none() {
                anyhow::bail!(
                    "no engine key under {}: the personal data cannot be opened without it",
                    connection.data_dir().display()
                );
            }
            convo_store::erasure::export_contact(&store, &account_id, &contact_id).await?
        }
    };
    println!("{}", serde_json::to_string_pretty(&document)?);
    Ok(())
}
