//! What the service checks before anything starts (fail closed): the
//! secrets it reads, the data directory's modes, the durability of the
//! NATS servers it joins, and the partition mapping they apply.

use std::path::Path;

use convo_store::JetStreamStore;

use crate::ServiceError;

/// The platform operator's credential, made at the first start (mode 0600).
pub const OPERATOR_KEY_FILE: &str = "operator.key";

/// The operator's credential under `dir`, made (and said where) when there
/// is none yet; refused when others could read it.
pub fn operator_credential(dir: &Path) -> Result<String, ServiceError> {
    let path = dir.join(OPERATOR_KEY_FILE);
    if path.exists() {
        let token = convo_store::private::read_secret(&path, "the operator's credential", 1)?;
        return String::from_utf8(token).map_err(|_| ServiceError::new(format!("{} is not text", path.display())));
    }
    let secret = convo_engine::access::new_secret().map_err(ServiceError::new)?;
    let token = convo_engine::access::operator_token(&secret);
    std::fs::create_dir_all(dir).map_err(ServiceError::io(dir))?;
    convo_store::launcher::write_private(&path, format!("{token}\n").as_bytes())?;
    tracing::info!(
        "made the platform operator's credential: {} (mode 0600; the only credential that creates accounts)",
        path.display()
    );
    Ok(token)
}

/// The data directory, ours alone: made 0700, or tightened (and said) when
/// something in it could be read by others.
pub fn private_data_dir(dir: &Path) -> Result<(), ServiceError> {
    let tightened = convo_store::private::prepare_data_dir(dir)?;
    if !tightened.is_empty() {
        let shown: Vec<String> = tightened.iter().take(5).map(|p| p.display().to_string()).collect();
        tracing::warn!(
            "{} file(s) and directories under {} could be read by other users; they are this user's alone now ({}{})",
            tightened.len(),
            dir.display(),
            shown.join(", "),
            if tightened.len() > shown.len() { ", …" } else { "" }
        );
    }
    Ok(())
}

/// An acknowledgement is a promise: on another server, every server given
/// by its monitoring endpoint must fsync each append before acknowledging
/// it (`sync_interval: always`, as `/varz` says), or the engine does not
/// start. The setting cannot be learnt over the client protocol, so with no
/// monitoring endpoint it refuses too; `accept_ack_loss` is the only way
/// past, and it is said in the log.
pub fn check_durable(url: &str, monitors: &[String], accept_ack_loss: bool) -> Result<(), ServiceError> {
    let url = convo_store::strip_userinfo(url);
    if accept_ack_loss {
        tracing::warn!(
            "--accept-ack-loss: commands are acknowledged before {url} has their commits on disk; a power failure \
             or an OS crash can lose acknowledged commands"
        );
        return Ok(());
    }
    if monitors.is_empty() {
        return Err(ServiceError::new(format!(
            "convo serve acknowledges a command only once its commit is on disk, and cannot tell whether {url} \
             fsyncs before it acknowledges: put `sync_interval: always` in each server's `jetstream {{ … }}` block \
             and give each server's monitoring endpoint with --nats-monitor-url http://HOST:PORT (its `http:` \
             setting) to have it checked; or accept losing acknowledged commands on a power failure with \
             --accept-ack-loss"
        )));
    }
    for monitor in monitors {
        let durability = convo_store::launcher::durability(monitor).map_err(ServiceError::new)?;
        if !durability.sync_always {
            return Err(ServiceError::new(format!(
                "nats-server {} ({monitor}) acknowledges appends before they are on disk (it flushes every {} s): \
                 put `sync_interval: always` in its `jetstream {{ … }}` block and reload it, or start with \
                 --accept-ack-loss to accept losing acknowledged commands on a power failure",
                durability.server, durability.sync_interval_secs
            )));
        }
        tracing::info!("nats-server {} ({monitor}) fsyncs every append before acknowledging it", durability.server);
    }
    Ok(())
}

/// The stream's replicas are what the engine was asked for: an R1 stream on
/// a three-node cluster would lose everything with its one node.
pub async fn check_replicas(store: &JetStreamStore, asked: usize) -> Result<(), ServiceError> {
    let actual = store.replicas().await?;
    if actual != asked {
        return Err(ServiceError::new(format!(
            "stream {} has {actual} replica(s), and this engine was asked for {asked} (--replicas): start it with \
             --replicas {actual}, or change the stream's replicas with `nats stream edit {} --replicas {asked}`",
            store.config().stream,
            store.config().stream
        )));
    }
    Ok(())
}

/// Checks that the server puts commands on their partitions as this stream
/// counts them (the mapping of `partition_mapping`): probes published on
/// made-up accounts must arrive on the partition their account hashes to.
pub async fn check_mapping(
    client: &convo_store::bus::Client,
    prefix: &str,
    partitions: usize,
    nonce: i64,
) -> Result<(), ServiceError> {
    let (from, to) = convo_store::bus::partition_mapping(prefix, partitions);
    let accounts: Vec<String> = (0..4).map(|i| format!("probe-{nonce}-{i}")).collect();
    let how = format!(
        "add to the nats-server config `mappings {{ {from:?}: {to:?} }}` (`convo nats-config --partitions {partitions}` prints it) and reload it"
    );
    let arrived = convo_store::bus::probe_mapping(client, prefix, &accounts).await?;
    for (account, partition) in accounts.iter().zip(arrived) {
        match partition {
            None => {
                return Err(ServiceError::new(format!(
                    "the NATS server does not put commands on their partitions: {how}"
                )));
            }
            Some(index) if index != convo_store::bus::partition_of(account, partitions) => {
                return Err(ServiceError::new(format!(
                    "the NATS server maps commands onto another number of partitions than the stream's {partitions}: {how}"
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// This instance's id among those sharing the stream: host, process, start.
pub fn instance_id(started_ms: i64) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "host".into());
    let host: String =
        host.trim().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect();
    format!("{host}-{}-{started_ms}", std::process::id())
}

/// Who holds the leases, as other instances are told.
pub fn holder(since: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "this machine".into());
    format!("convo serve, pid {} on {}, since {since}", std::process::id(), host.trim())
}
