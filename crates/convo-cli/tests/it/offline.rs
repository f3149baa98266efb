//! Reads while the server runs (through its gateway) and with it stopped, filters that are errors, and `tail` that
//! does not wait forever for a server that is gone.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::access::{op, serve_with};

fn convo(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_convo")).args(args).arg("--data-dir").arg(dir).output().expect("convo runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_work_with_the_server_stopped_and_bad_filters_name_the_flag() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    let mut served = serve_with(dir, &[]);
    op(&served, "acme", "a1", json!({"type": "configure_account", "name": "Acme"})).await;

    // While it serves, it holds the read models: the CLI reads them through its gateway.
    // The stream holds the two partitions' fence markers (sequences 1 and 2), then the commit.
    for args in [
        &["report", "volume", "--account", "acme"][..],
        &["audit", "verify"],
        &["audit", "export", "--account", "acme"],
    ] {
        let out = convo(args, dir);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(
            stderr.contains("read from the running `convo serve`") && stderr.contains("at stream sequence 3"),
            "{args:?}: {stderr}"
        );
    }
    let out = convo(&["audit", "export", "--account", "acme"], dir);
    assert!(String::from_utf8_lossy(&out.stdout).contains("account_configured"));
    let out = convo(&["audit", "rebuild"], dir);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("stop it"));

    // tail follows; the server goes away for good: tail says so and exits 1.
    let mut tail = Command::new(env!("CARGO_BIN_EXE_convo"))
        .args(["tail", "--reconnect-secs", "2", "--data-dir"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let pid = served.child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    served.child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = tail.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "convo tail still waits for a server that is gone");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut tail.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(2), "an error: {stderr}");
    assert!(stderr.contains("gone"), "{stderr}");

    // With the server stopped, reads start the data directory's own nats-server and work; the
    // server followed the stream into the read models while it ran, so they are current.
    let out = convo(&["audit", "verify"], dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("intact: 1 entries up to stream sequence 3 (the stream's end)"), "{text}");
    let out = convo(&["audit", "catch-up"], dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("audit log at stream sequence 3 (0 commits folded"));
    let out = convo(&["report", "volume", "--account", "acme"], dir);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = convo(&["tail", "--no-follow"], dir);
    assert!(String::from_utf8_lossy(&out.stdout).contains("account_configured"));

    // Bad filters are errors naming the flag.
    for (args, flag) in [
        (&["report", "sla", "--account", "acme", "--from", "yesterday"][..], "--from"),
        (&["report", "sla"][..], "--account"),
        (&["audit", "export", "--from", "garbage"][..], "--from"),
        (&["tail", "--kind", "bogus", "--no-follow"][..], "--kind"),
    ] {
        let out = convo(args, dir);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(flag), "{args:?}: {stderr}");
    }
}
