//! The read models this instance keeps (audit, reports, contact history,
//! live, inboxes), each followed from its own checkpoint into one sled
//! database under `<data-dir>/projections`, and the lag of every follower
//! measured for `/metrics`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use convo_store::{EventStore, JetStreamStore};

use crate::ServiceError;

/// How often the followers look for the stream's end.
pub const END_POLL: Duration = Duration::from_millis(100);
/// How often the lags are measured.
pub const LAGS_EVERY: Duration = Duration::from_secs(2);

/// Starts a follower for each read model under `<data-dir>/projections`
/// (one sled database, held by this process while it serves), on `tasks`
/// until `stop`; ready once each holds the stream as far as `ready_at`.
pub fn follow(
    data_dir: &Path,
    store: &JetStreamStore,
    ready_at: u64,
    ends: &watch::Receiver<u64>,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> Result<convo_gateway::reads::ReadModels, ServiceError> {
    let dir = data_dir.join("projections");
    let db = convo_projector::open_db(&dir).map_err(|e| {
        ServiceError::new(format!(
            "cannot open the read models in {} (is another `convo` using them?): {e}",
            dir.display()
        ))
    })?;
    let mut models = convo_gateway::reads::ReadModels::new(ready_at);
    let mut follow =
        |name: &'static str, projection: Box<dyn convo_projector::Projection + Send>| -> Result<(), ServiceError> {
            let projector = convo_projector::Projector::open(db.clone(), name);
            let (followed, task) =
                convo_projector::follow::spawn(projector, store.clone(), projection, ends.clone(), stop.clone())
                    .map_err(|e| ServiceError::new(format!("the {name} read model: {e}")))?;
            models.insert(followed);
            tasks.spawn(async move {
                let _ = task.await;
            });
            Ok(())
        };
    for (name, projection) in projections() {
        follow(name, projection)?;
    }
    tracing::info!(
        "read models followed from their checkpoints: {}",
        models.positions().iter().map(|(n, at)| format!("{n} at {at}")).collect::<Vec<_>>().join(", ")
    );
    Ok(models)
}

/// `--postgres`: kept by the read models' role, and reachable with its
/// schema made (or of this layout) before anything starts — a bad setting
/// stops the server here, naming it. The connection, for [`follow_sql`].
pub async fn check_sql(config: &crate::ServiceConfig) -> Result<Option<convo_sql::Sql>, ServiceError> {
    let Some(target) = &config.postgres else { return Ok(None) };
    if !config.roles.read_models {
        return Err(ServiceError::new(
            "--postgres is kept by the read-models role: add read-models to --roles, or drop --postgres",
        ));
    }
    let sql = target.open().await.map_err(|e| ServiceError::new(format!("--postgres: {e}")))?;
    tracing::info!("the SQL projection goes to {target}");
    Ok(Some(sql))
}

/// The SQL projection's follower: its checkpoint, for the lag in `/metrics`.
#[derive(Debug, Clone)]
pub struct SqlFollower(Arc<std::sync::atomic::AtomicU64>);

impl SqlFollower {
    /// (the projection's name, its checkpoint), as `measure_lags` takes them.
    pub fn position(&self) -> (&'static str, u64) {
        (convo_sql::NAME, self.0.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// With `--postgres` (`checked`: what [`check_sql`] opened), the SQL
/// projection followed on `tasks` until `stop`.
pub fn follow_sql(
    config: &crate::ServiceConfig,
    checked: Option<convo_sql::Sql>,
    store: &JetStreamStore,
    ends: &watch::Receiver<u64>,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> Option<SqlFollower> {
    let target = config.postgres.clone()?;
    let (position, task) =
        convo_sql::follow(target, checked, store.clone(), store.keys().cloned(), ends.clone(), stop.clone());
    tasks.spawn(async move {
        let _ = task.await;
    });
    Some(SqlFollower(position))
}

/// The read models an instance keeps, by name (what `follow` follows and
/// `convo seal-stream` rebuilds).
pub fn projections() -> Vec<(&'static str, Box<dyn convo_projector::Projection + Send>)> {
    vec![
        (convo_audit::NAME, Box::new(convo_audit::AuditLog)),
        (convo_reports::NAME, Box::<convo_reports::Reports>::default()),
        (convo_contact_history::NAME, Box::<convo_contact_history::ContactHistory>::default()),
        (convo_live::NAME, Box::new(convo_live::Live)),
        (convo_inbox::NAME, Box::new(convo_inbox::Inbox)),
    ]
}

/// Every [`LAGS_EVERY`] until `stop`: the stream's end, and how far behind it
/// each read model and each of `others` (name, checkpoint) is.
pub async fn measure_lags(
    store: JetStreamStore,
    metrics: Arc<convo_store::metrics::Metrics>,
    read_models: Option<convo_gateway::reads::ReadModels>,
    others: impl Fn() -> Vec<(&'static str, u64)> + Send + 'static,
    stop: CancellationToken,
) {
    let mut every = tokio::time::interval(LAGS_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let Ok(last) = store.last_seq().await else { continue };
        metrics.set("convo_stream_last_sequence", &[], last as f64);
        let followed = read_models.iter().flat_map(convo_gateway::reads::ReadModels::positions);
        for (projection, at) in others().into_iter().chain(followed) {
            metrics.set("convo_projection_lag", &[("projection", projection)], last.saturating_sub(at) as f64);
        }
    }
}
