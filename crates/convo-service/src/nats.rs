//! The embedded nats-server: started under the data directory, its address
//! and the engine's login written there, supervised (restarted on its port
//! when it dies, three times in a row at most), kept told of the keys' NATS
//! logins, and stopped when the service stops.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use convo_store::launcher::{LaunchOptions, NatsServer};
use tokio_util::sync::CancellationToken;

use crate::ServiceError;

/// Where the service leaves the embedded server's address, for NATS clients
/// logging in as themselves (an API key's nkey): no credentials.
pub const URL_FILE: &str = "nats.url";
/// Where the service leaves the embedded server's URL with the engine's
/// NATS login, for this machine's tools (mode 0600).
pub const ENGINE_URL_FILE: &str = "nats-engine.url";
/// Where the service leaves the embedded server's monitoring URL.
pub const MONITOR_URL_FILE: &str = "nats-monitor.url";
/// How many times in a row the embedded server is restarted before the service gives up.
pub const RESTARTS_MAX: u32 = 3;
/// How often the supervisor looks at the server.
pub const SUPERVISE_EVERY: Duration = Duration::from_millis(250);
/// A server up this long again earns its restarts back.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// The embedded server, started.
pub struct Embedded {
    pub server: NatsServer,
    pub launch: LaunchOptions,
    data_dir: PathBuf,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded").field("server", &self.server).finish_non_exhaustive()
    }
}

impl Embedded {
    /// Starts the server under `data_dir/nats` and writes where it is.
    pub fn start(data_dir: &Path, launch: LaunchOptions) -> Result<Self, ServiceError> {
        let server = NatsServer::start(&launch)?;
        for note in &server.notes {
            tracing::info!("{note}");
        }
        let write =
            |file: &str, text: String| convo_store::launcher::write_private(&data_dir.join(file), text.as_bytes());
        write(ENGINE_URL_FILE, server.url())?;
        write(URL_FILE, server.public_url())?;
        write(MONITOR_URL_FILE, server.monitor_url())?;
        tracing::info!(
            "started {} (pid {}) on {} (written to {}; no anonymous access: API keys log in with their nkey, \
             this machine's tools with the engine's login in {}, mode 0600); monitoring on {}; JetStream data in {}",
            server.binary.display(),
            server.pid(),
            server.public_url(),
            data_dir.join(URL_FILE).display(),
            data_dir.join(ENGINE_URL_FILE).display(),
            server.monitor_url(),
            launch.data_dir.join("jetstream").display()
        );
        Ok(Self { server, launch, data_dir: data_dir.to_path_buf() })
    }

    /// The server maps onto `mappings` from now on (restarted on its port).
    pub fn remap(&mut self, mappings: Vec<(String, String)>) -> Result<(), ServiceError> {
        if self.launch.mappings != mappings {
            self.launch.mappings = mappings;
            self.server.restart(&self.launch)?;
        }
        Ok(())
    }

    /// Supervises the server until `stop`: restarts it when it dies, gives it
    /// the keys' logins when they change; a reason to give up goes to
    /// `failed` (and cancels `service`). Stops the server at the end.
    pub async fn supervise(
        mut self,
        logins: Arc<convo_engine::serve::NatsLogins>,
        stop: CancellationToken,
        service: CancellationToken,
        failed: Arc<std::sync::Mutex<Option<String>>>,
    ) {
        let mut every = tokio::time::interval(SUPERVISE_EVERY);
        let mut healthy_since = Instant::now();
        let mut restarts = 0;
        let mut logins_due = true;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = every.tick() => {}
                _ = logins.changed() => logins_due = true,
            }
            // The keys' NATS logins: into the server's config, reloaded; a failed attempt is tried again.
            if logins_due {
                let users = logins.all();
                let count = users.len();
                match self.server.set_users(&self.launch, users) {
                    Ok(changed) => {
                        logins_due = false;
                        if changed {
                            tracing::info!("the embedded nats-server now has {count} key login(s)");
                        }
                    }
                    Err(e) => {
                        tracing::warn!("could not give the embedded nats-server the keys' logins (retrying): {e}")
                    }
                }
            }
            if let Some(status) = self.server.exited() {
                if restarts == RESTARTS_MAX {
                    let why = format!(
                        "the embedded nats-server exited ({status}) {restarts} times; giving up (see {})",
                        self.launch.data_dir.join("nats-server.log").display()
                    );
                    tracing::error!("{why}");
                    *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                    service.cancel();
                    break;
                }
                restarts += 1;
                tracing::warn!(
                    "the embedded nats-server exited ({status}); restarting it on port {}",
                    self.server.port
                );
                if let Err(e) = self.server.restart(&self.launch) {
                    let why = format!("the embedded nats-server exited ({status}) and could not be restarted: {e}");
                    tracing::error!("{why}");
                    *failed.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                    service.cancel();
                    break;
                }
                healthy_since = Instant::now();
            } else if healthy_since.elapsed() >= HEALTHY_AFTER {
                restarts = 0;
            }
        }
        self.server.stop();
        for file in [URL_FILE, ENGINE_URL_FILE, MONITOR_URL_FILE] {
            let _ = std::fs::remove_file(self.data_dir.join(file));
        }
    }
}
