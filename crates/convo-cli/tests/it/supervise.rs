//! The embedded default is supervised: one `convo serve` per data directory,
//! a second engine on its stream shares the partitions; its nats-server is restarted when it dies and
//! dies with it, even on SIGKILL; the next start finds no leftover.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PREFIX: &str = "sup";

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn convo(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_convo"));
    c.args(args).stdin(Stdio::null());
    c
}

fn serve(dir: &Path) -> Proc {
    let log = std::fs::File::create(dir.join("serve.log")).unwrap();
    let child = convo(&["serve", "--data-dir", dir.to_str().unwrap(), "--prefix", PREFIX])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Proc(child)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped) is not alive.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

fn server_pid(dir: &Path) -> u32 {
    let file = dir.join("nats/nats-server.pid");
    wait_for("the pid file", || std::fs::read_to_string(&file).is_ok_and(|s| s.trim().parse::<u32>().is_ok()));
    std::fs::read_to_string(&file).unwrap().trim().parse().unwrap()
}

/// A command through `convo send`: the engine answers it (committed or rejected).
fn answered(dir: &Path) -> bool {
    let body = r#"{"id":"ping-1","command":{"type":"configure_account","name":"Acme"}}"#;
    let out = convo(&[
        "send",
        "--operator",
        "--data-dir",
        dir.to_str().unwrap(),
        "--prefix",
        PREFIX,
        "--account",
        "acme",
        body,
    ])
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.contains("\"committed\"") || text.contains("\"duplicate\"")
}

#[test]
fn the_embedded_default_is_supervised() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let _first = serve(dir);
    wait_for("the engine to answer", || answered(dir));

    // A second `convo serve` on the same data directory refuses, saying why.
    let second = convo(&["serve", "--data-dir", dir.to_str().unwrap(), "--prefix", PREFIX]).output().unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("in use by another convo process"), "{stderr}");

    // A second engine on the same stream (through the first one's server) joins it: the
    // partitions are shared, and handed back when it stops.
    let url = std::fs::read_to_string(dir.join("nats-engine.url")).unwrap();
    let monitor = std::fs::read_to_string(dir.join("nats-monitor.url")).unwrap();
    let other = tempfile::tempdir().unwrap();
    std::fs::copy(dir.join("operator.key"), other.path().join("operator.key")).unwrap();
    std::fs::copy(dir.join("engine.key"), other.path().join("engine.key")).unwrap();
    let log = std::fs::File::create(other.path().join("serve.log")).unwrap();
    let second = convo(&[
        "serve",
        "--nats-url",
        url.trim(),
        "--nats-monitor-url",
        monitor.trim(),
        "--data-dir",
        other.path().to_str().unwrap(),
        "--prefix",
        PREFIX,
        "--no-http",
    ])
    .stdout(Stdio::null())
    .stderr(log)
    .spawn()
    .unwrap();
    let mut second = Proc(second);
    let owners = || {
        let out = convo(&["cluster", "status", "--format", "json", "--nats-url", url.trim(), "--prefix", PREFIX])
            .output()
            .unwrap();
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let mut owners: Vec<String> = status["owners"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| o["instance"].as_str().unwrap_or("").to_owned())
            .collect();
        owners.sort();
        owners.dedup();
        (status["instances"].as_array().map_or(0, Vec::len), owners)
    };
    wait_for("two instances sharing the partitions", || {
        let (instances, owners) = owners();
        instances == 2 && owners.len() == 2 && !owners.contains(&String::new())
    });
    wait_for("the engine to answer while shared", || answered(dir));
    assert!(Command::new("kill").args(["-INT", &second.0.id().to_string()]).status().unwrap().success());
    assert!(second.0.wait().unwrap().success(), "{}", std::fs::read_to_string(other.path().join("serve.log")).unwrap());
    let log = std::fs::read_to_string(other.path().join("serve.log")).unwrap();
    assert!(log.contains("took partition") && log.contains("handing over"), "{log}");
    wait_for("the first instance to own every partition again", || {
        let (instances, owners) = owners();
        instances == 1 && owners.len() == 1 && !owners.contains(&String::new())
    });
    // The handover wrote a snapshot; the first instance took the partition back from it.
    assert!(log.contains("snapshot at sequence"), "{log}");
    wait_for("the first instance to recover from the snapshot", || {
        std::fs::read_to_string(dir.join("serve.log")).unwrap().contains("from its snapshot at sequence")
    });

    // The embedded nats-server dies: `convo serve` starts it again and goes on.
    let pid = server_pid(dir);
    assert!(Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap().success());
    wait_for("a restarted server", || server_pid(dir) != pid && answered(dir));
    let log = std::fs::read_to_string(dir.join("serve.log")).unwrap();
    assert!(log.contains("restarting it on port"), "{log}");

    // `convo serve` killed with SIGKILL takes its nats-server with it.
    let pid = server_pid(dir);
    drop(_first);
    wait_for("the orphaned nats-server to die", || !alive(pid));

    // The next start on the directory is clean and serves.
    let _again = serve(dir);
    wait_for("the engine to answer after a restart", || answered(dir));
}
