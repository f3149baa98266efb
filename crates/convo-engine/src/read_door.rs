//! The door of a process that keeps the read models without deciding
//! commands (`convo serve --roles read-models`, the engine running
//! elsewhere on the same stream).
//!
//! Reads are authorized here exactly as the engine authorizes them
//! ([`crate::intake::admit`]), with each account's catalog folded from the
//! stream's catalog commits the way the engine applies them (a commit that
//! does not follow its aggregate is skipped, never half-applied). Before it
//! answers a read, the door brings the catalogs up to the stream's end as
//! the request found it, so a key revoked on the engine stops reading here
//! too. Commands are refused as `unavailable`: they go to the engine.
//!
//! What the door cannot do: record refusals in the audit log (only the
//! engine appends), so a refused read is logged here, not recorded.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use convo_domain::AccountId;
use convo_store::bus::{Request, Responder};
use convo_store::{EventStore, LogItem, StoreError};
use convo_wire::StreamRef;

use crate::access::AccessConfig;
use crate::core::World;
use crate::intake::{Admitted, admit, authorized, unavailable};

/// The door's settings.
#[derive(Debug, Clone)]
pub struct ReadDoorConfig {
    /// Who may do what: the operator's credential, the identity provider.
    pub access: Arc<AccessConfig>,
    /// The largest request accepted, in bytes.
    pub bytes_max: usize,
    /// Where the door keeps every account's redaction rules current (for the
    /// JSON feeds it serves); marked ready once the catalogs have caught up.
    pub redactions: Option<Arc<convo_wire::redact::Redactions>>,
}

/// What the door did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadDoorStats {
    /// Requests answered.
    pub requests: u64,
    /// Catalog commits skipped (not applicable as the engine applies them).
    pub skipped: u64,
    /// The last stream sequence the catalogs hold.
    pub position: u64,
}

/// Every account's catalog, folded from the stream's catalog commits.
#[derive(Debug, Default)]
pub struct Catalogs {
    world: World,
    position: u64,
    skipped: u64,
}

impl Catalogs {
    /// The last stream sequence folded.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// An account's catalog, if the account exists.
    pub fn catalog(&self, account: &AccountId) -> Option<&convo_domain::Catalog> {
        self.world.catalog(account).filter(|c| c.seq > 0)
    }

    /// Folds one message of the log: a catalog commit is applied as the
    /// engine applies it; anything else only moves the position. Returns
    /// the account whose catalog changed.
    fn apply(&mut self, item: LogItem) -> Option<AccountId> {
        let (seq, aggregate) = convo_store::whereabouts(&item);
        self.position = self.position.max(seq);
        let account = aggregate.filter(|(_, stream)| *stream == StreamRef::Catalog).map(|(account, _)| account)?;
        match self.world.apply_item(item) {
            Ok(()) => Some(account),
            Err(skipped) => {
                self.skipped += 1;
                tracing::warn!(
                    seq = skipped.seq,
                    subject = %skipped.subject,
                    "the read models' door skipped catalog message {} on {}: {}",
                    skipped.seq,
                    skipped.subject,
                    skipped.reason
                );
                None
            }
        }
    }

    /// Folds the stream from the position up to its end as it is now; the
    /// accounts whose catalog changed.
    pub async fn catch_up(&mut self, store: &impl EventStore) -> Result<Vec<AccountId>, StoreError> {
        let end = store.last_seq().await?;
        let mut changed = Vec::new();
        if end <= self.position {
            return Ok(changed);
        }
        let mut log = store.read(self.position + 1).await?;
        while let Some(item) = log.next().await {
            if let Err(e @ (StoreError::Unavailable(_) | StoreError::Refused(_))) = &item {
                return Err(e.clone());
            }
            changed.extend(self.apply(item));
        }
        // Read to the end as it was (deleted sequences included).
        self.position = self.position.max(end);
        changed.dedup();
        Ok(changed)
    }
}

/// Answers the gateway's requests (`local`) until `shutdown` completes or
/// the gateway is gone: catches the catalogs up first, then follows the
/// stream's end (`ends`, as a watcher publishes it) and catches up again
/// before each read.
pub async fn serve_reads<S: EventStore>(
    store: S,
    mut local: mpsc::Receiver<Request>,
    responder: Responder,
    mut ends: watch::Receiver<u64>,
    config: ReadDoorConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<ReadDoorStats, StoreError> {
    let mut catalogs = Catalogs::default();
    let note = |catalogs: &Catalogs, changed: &[AccountId]| {
        if let Some(redactions) = &config.redactions {
            for account in changed {
                if let Some(catalog) = catalogs.catalog(account) {
                    redactions.set(account, &catalog.settings.regex_rules);
                }
            }
        }
    };
    let changed = catalogs.catch_up(&store).await?;
    note(&catalogs, &changed);
    if let Some(redactions) = &config.redactions {
        redactions.mark_ready();
    }
    tracing::info!(
        "the read models' door holds every account's catalog up to stream sequence {} (commands go to the engine)",
        catalogs.position()
    );
    let mut requests = 0;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let request = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            request = local.recv() => match request {
                Some(request) => request,
                None => break,
            },
            moved = ends.changed() => {
                if moved.is_ok() && *ends.borrow_and_update() > catalogs.position() {
                    match catalogs.catch_up(&store).await {
                        Ok(changed) => note(&catalogs, &changed),
                        Err(e) => tracing::warn!("the read models' door cannot read the stream now: {e}"),
                    }
                }
                continue;
            }
        };
        requests += 1;
        let reply = match catalogs.catch_up(&store).await {
            Err(e) => unavailable(&format!("the accounts' catalogs cannot be brought up to date now: {e}")),
            Ok(changed) => {
                note(&catalogs, &changed);
                answer_read(&catalogs, &config, &request)
            }
        };
        let bytes = serde_json::to_vec(&reply).unwrap_or_default();
        if let Err(e) = responder.respond(&request, bytes).await {
            tracing::warn!(subject = %request.subject, "cannot answer {}: {e}", request.subject);
        }
    }
    Ok(ReadDoorStats { requests, skipped: catalogs.skipped, position: catalogs.position() })
}

/// The answer to one request: a read authorized or refused as the engine
/// would; a command refused (it goes to the engine).
fn answer_read(catalogs: &Catalogs, config: &ReadDoorConfig, request: &Request) -> serde_json::Value {
    if !request.read {
        return unavailable(
            "this server keeps the read models only (convo serve --roles read-models); send commands to the engine",
        );
    }
    let catalog = AccountId::new(&request.account).ok().and_then(|a| catalogs.catalog(&a));
    match admit(&config.access, catalog, request, config.bytes_max) {
        Ok(Admitted::Read { principal, scope, unredacted }) => {
            if unredacted {
                // Only the engine appends: here such a read is said, not recorded.
                tracing::info!(account = %request.account, read = %request.kind, principal = %principal.name(),
                    "read served unmasked (the key's `unredacted` scope)");
            }
            authorized(&principal, &scope, unredacted)
        }
        Ok(Admitted::Command { .. }) => unavailable("not a read"),
        Err(refused) => {
            refused.log(request, "read refused at the door (not recorded: only the engine appends)");
            refused.reply
        }
    }
}

/// Keeps every account's NATS logins and redaction rules current from the
/// stream's catalog commits (where partitions are shared, an instance's own
/// partitions know only their accounts); marks the redactions ready after the
/// first catch-up. Runs until `ends` closes.
pub async fn follow_catalogs<S: EventStore>(
    store: S,
    mut ends: watch::Receiver<u64>,
    logins: Option<Arc<crate::serve::NatsLogins>>,
    redactions: Option<Arc<convo_wire::redact::Redactions>>,
) {
    let mut catalogs = Catalogs::default();
    let mut ready = false;
    loop {
        match catalogs.catch_up(&store).await {
            Ok(changed) => {
                for account in &changed {
                    let Some(catalog) = catalogs.catalog(account) else { continue };
                    if let Some(logins) = &logins {
                        logins.update(catalog);
                    }
                    if let Some(redactions) = &redactions {
                        redactions.set(account, &catalog.settings.regex_rules);
                    }
                }
                if !ready {
                    ready = true;
                    if let Some(redactions) = &redactions {
                        redactions.mark_ready();
                    }
                }
            }
            Err(e) => tracing::warn!("cannot follow the accounts' catalogs now ({e}); retrying"),
        }
        if ends.changed().await.is_err() {
            return;
        }
    }
}
