//! A PostgreSQL server of its own, for tests and benchmarks (as
//! `convo_store::launcher` starts nats-servers): a fresh cluster in a
//! temporary directory on a free loopback port, whose superuser `convo`
//! logs in with a random password (scram-sha-256), kept in a 0600 file.
//! PostgreSQL refuses to run as root: as root, its programs run as the
//! `postgres` user Debian's package makes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the server may take to answer after it starts.
pub const START_WAIT: Duration = Duration::from_secs(30);
/// How long a fast shutdown may take before the server is killed.
pub const STOP_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("PostgreSQL's {0} is not installed: `just postgres` installs Debian's postgresql (apt install postgresql)")]
    Missing(&'static str),
    #[error("{what}: {detail}")]
    Failed { what: String, detail: String },
}

fn failed(what: &str, detail: impl std::fmt::Display) -> LaunchError {
    LaunchError::Failed { what: what.to_owned(), detail: detail.to_string() }
}

/// A running server, stopped (fast shutdown) and removed when dropped.
#[derive(Debug)]
pub struct PgServer {
    port: u16,
    child: Child,
    password: String,
    /// The password, in a file only this user reads (for `--postgres-password-file`).
    pub password_file: PathBuf,
    dir: tempfile::TempDir,
    _secrets: tempfile::TempDir,
}

/// One of PostgreSQL's programs: Debian keeps the server's out of PATH.
fn program(name: &'static str) -> Result<PathBuf, LaunchError> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .collect();
    dirs.sort();
    dirs.reverse(); // the newest version first
    dirs.extend(std::env::var_os("PATH").iter().flat_map(std::env::split_paths));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.exists()).ok_or(LaunchError::Missing(name))
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

fn as_server_user(program: &Path, root: bool) -> Command {
    if root {
        let mut command = Command::new("setpriv");
        command.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

impl PgServer {
    /// Makes a cluster and starts its server (answering within [`START_WAIT`]: see [`Self::client`]).
    pub fn start() -> Result<Self, LaunchError> {
        let (initdb, postgres) = (program("initdb")?, program("postgres")?);
        let dir = tempfile::Builder::new().prefix("convo-pg").tempdir().map_err(|e| failed("a directory", e))?;
        let secrets = tempfile::tempdir().map_err(|e| failed("a directory", e))?;
        let mut random = [0u8; 16];
        getrandom::getrandom(&mut random).map_err(|e| failed("a password", e))?;
        let password: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let password_file = secrets.path().join("pg.pass");
        convo_store::launcher::write_private(&password_file, password.as_bytes())
            .map_err(|e| failed("the password file", e))?;
        let initdb_password = dir.path().join("initdb.pass");
        // 0600, then given to the postgres user with the directory (chown below).
        convo_store::launcher::write_private(&initdb_password, password.as_bytes())
            .map_err(|e| failed("initdb's password file", e))?;
        let root = is_root();
        if root {
            let chown = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status();
            if !chown.is_ok_and(|s| s.success()) {
                return Err(failed("chown to the postgres user", "it failed (is Debian's postgresql installed?)"));
            }
        }
        let data = dir.path().join("data");
        let out = as_server_user(&initdb, root)
            .arg("-D")
            .arg(&data)
            .args(["-U", "convo", "--auth=scram-sha-256", "-E", "UTF8", "--no-locale", "--no-instructions"])
            .arg(format!("--pwfile={}", initdb_password.display()))
            .output()
            .map_err(|e| failed("initdb", e))?;
        if !out.status.success() {
            return Err(failed("initdb", String::from_utf8_lossy(&out.stderr)));
        }
        let _ = std::fs::remove_file(&initdb_password);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| failed("a free port", e))?
            .port();
        let log = std::fs::File::create(dir.path().join("postgres.log")).map_err(|e| failed("the log", e))?;
        let child = as_server_user(&postgres, root)
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.path().display()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| failed("postgres", e))?;
        Ok(Self { port, child, password, password_file, dir, _secrets: secrets })
    }

    /// The URL convo is given (no password: it is in [`Self::password_file`]).
    pub fn url(&self) -> String {
        format!("postgres://convo@127.0.0.1:{}/postgres", self.port)
    }

    /// A client of the server's `postgres` database as `convo`, once it answers.
    pub async fn client(&self) -> Result<tokio_postgres::Client, LaunchError> {
        let deadline = Instant::now() + START_WAIT;
        let mut config = tokio_postgres::Config::new();
        config.host("127.0.0.1").port(self.port).user("convo").password(&self.password).dbname("postgres");
        loop {
            match config.connect(tokio_postgres::NoTls).await {
                Ok((client, connection)) => {
                    tokio::spawn(connection);
                    return Ok(client);
                }
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    let log = std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default();
                    return Err(failed("PostgreSQL never answered", format!("{e}\n{log}")));
                }
            }
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // SIGINT: a fast shutdown.
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + STOP_WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
