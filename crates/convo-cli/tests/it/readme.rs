//! The README's "Integrating" snippets, run as written: a Python subscriber
//! (nats-py, an API key's nkey login) reading JSON events, a Node webhook
//! receiver verifying signatures with `standardwebhooks`, and the curl
//! command that sends a command over HTTP.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::access::{op, serve_with};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The code block after `<!-- snippet: NAME`.
fn snippet(name: &str) -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme.find(&format!("<!-- snippet: {name}")).unwrap_or_else(|| panic!("README has no snippet {name}"));
    let block = &readme[start..];
    let code = &block[block.find("```").unwrap()..];
    let code = &code[code.find('\n').unwrap() + 1..];
    code[..code.find("```").unwrap()].to_owned()
}

/// A child's stdout lines, as they come.
struct Lines {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Lines {
    fn spawn(mut command: Command) -> Self {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("starts");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self { child, lines }
    }

    fn next(&self, within: Duration) -> Option<String> {
        self.lines.recv_timeout(within).ok()
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_snippets_subscribe_verify_and_send() {
    let temp = tempfile::tempdir().unwrap();
    let served = serve_with(temp.path(), &["--webhook-allow", "127.0.0.1"]);
    super::access::sales_account(&served, super::access::sales_settings(), &[], &[]).await;
    let issued = op(
        &served,
        "acme",
        "key-1",
        json!({"type": "issue_api_key", "key": "crm", "holder": {"integration": "crm"},
        "scopes": {"commands": ["receive_message", "define_webhook"], "reads": ["events"]}}),
    )
    .await;
    let credential = &issued["credential"];
    let key = credential["token"].as_str().unwrap().to_owned();

    // Python, subscribed with the key's own NATS login, on the address the README names: <data-dir>/nats.url.
    let dir = temp.path();
    let nats_url = std::fs::read_to_string(dir.join("nats.url")).unwrap().trim().to_owned();
    assert!(!nats_url.contains('@'), "nats.url carries no login: {nats_url}");
    let seed = credential["nats"]["nkey_seed"].as_str().unwrap();
    let inbox = credential["nats"]["inbox_prefix"].as_str().unwrap();
    // That login is the key's, not the engine's: a subscription outside its permissions is refused.
    let probe = "import asyncio, os, nats\n\
        async def main():\n\
        \x20   refused = asyncio.Event()\n\
        \x20   async def error(e):\n\
        \x20       if 'permissions violation' in str(e).lower(): refused.set()\n\
        \x20   nc = await nats.connect(os.environ['NATS_URL'], nkeys_seed_str=os.environ['CONVO_NKEY_SEED'],\n\
        \x20       inbox_prefix=os.environ['CONVO_INBOX_PREFIX'], error_cb=error)\n\
        \x20   await nc.subscribe('convo.other.json.>')\n\
        \x20   await nc.flush()\n\
        \x20   await asyncio.wait_for(refused.wait(), 10)\n\
        \x20   print('refused', flush=True)\n\
        asyncio.run(main())\n";
    let out = Command::new("python3")
        .arg("-c")
        .arg(probe)
        .env("PYTHONPATH", repo().join(".tools/py"))
        .env("NATS_URL", &nats_url)
        .env("CONVO_NKEY_SEED", seed)
        .env("CONVO_INBOX_PREFIX", inbox)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("refused"), "{printed}{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(dir.join("subscribe.py"), snippet("subscribe.py")).unwrap();
    let mut python = Command::new("python3");
    python
        .arg(dir.join("subscribe.py"))
        .env("PYTHONPATH", repo().join(".tools/py"))
        .env("NATS_URL", &nats_url)
        .env("CONVO_NKEY_SEED", seed)
        .env("CONVO_INBOX_PREFIX", inbox);
    let python = Lines::spawn(python);
    // It subscribes in its own time: open conversations until one reaches it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    let line = loop {
        n += 1;
        let body = json!({"type": "receive_message", "conversation": format!("p{n}"), "contact": "5730", "channel": "wa", "text": "hola"});
        op(&served, "acme", &format!("py-{n}"), body).await;
        if let Some(line) = python.next(Duration::from_secs(2)) {
            break line;
        }
        assert!(Instant::now() < deadline, "the Python subscriber printed nothing");
    };
    assert!(line.contains("conversation_opened") && line.contains(&format!(" p{n} ")), "{line}");

    // Node, receiving a webhook and verifying it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(dir.join("receiver.js"), snippet("receiver.js")).unwrap();
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let mut node = Command::new("node");
    node.arg(dir.join("receiver.js"))
        .env("NODE_PATH", repo().join(".tools/node/node_modules"))
        .env("CONVO_WEBHOOK_SECRET", secret)
        .env("PORT", port.to_string());
    let node = Lines::spawn(node);
    std::thread::sleep(Duration::from_millis(500)); // listening (a delivery before that is retried anyway)
    let hook = json!({"type": "define_webhook", "id": "crm", "url": format!("http://127.0.0.1:{port}/convo"),
        "events": ["conversation_opened"], "secret": secret});
    op(&served, "acme", "hook-1", hook).await;

    // curl, with the key.
    let out = Command::new("sh")
        .arg("-c")
        .arg(snippet("send.sh"))
        .env("CONVO_HTTP", format!("http://{}", served.http))
        .env("CONVO_KEY", &key)
        .output()
        .unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the reply is JSON");
    assert_eq!(reply["outcome"], "committed", "{reply}");
    assert!(reply["event_ids"].as_array().is_some_and(|ids| !ids.is_empty()) && reply["log_seq"].is_u64());

    let delivered = node.next(Duration::from_secs(30)).expect("the Node receiver verified a delivery");
    assert_eq!(delivered, "io.convo.conversation_opened.v1 c1");
    let mut seen = Vec::new();
    while let Some(line) = python.next(Duration::from_secs(5)) {
        seen.push(line);
        if seen.iter().any(|l| l.contains(" c1 ")) {
            break;
        }
    }
    assert!(seen.iter().any(|l| l.contains(" c1 conversation_opened")), "{seen:?}");
}

/// The README's "Your first conversation", run as written against `convo
/// serve` on `.data` beside it: every command is committed, the SLA report
/// counts the conversation, and its audit trail shows the reply and the closure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_conversation_runs_as_written() {
    let temp = tempfile::tempdir().unwrap();
    let served = serve_with(&temp.path().join(".data"), &[]);
    let out = Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(snippet("first-conversation.sh"))
        .current_dir(temp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        stdout.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect();
    // Eleven commands answered (the two keys went into variables), a report and an audit trail.
    let (commands, reads) = lines.split_at(lines.len() - 2);
    assert_eq!(commands.len(), 11, "{stdout}");
    assert!(commands.iter().all(|r| r["outcome"] == "committed"), "{stdout}");
    let report = &reads[0];
    assert_eq!(
        (report["rows"][0]["campaign"].as_str(), report["rows"][0]["closed"].as_u64()),
        (Some("sales"), Some(1)),
        "{report}"
    );
    let audit = reads[1]["entries"].as_array().unwrap();
    let actions: Vec<&str> = audit.iter().filter_map(|e| e["action"].as_str()).collect();
    for action in ["conversation_opened", "agent_assigned", "message_sent", "conversation_closed"] {
        assert!(actions.contains(&action), "{action} not in {actions:?}");
    }
    drop(served);
}

/// The README's "A cluster from nothing", run as written in an empty
/// directory (its port variables moved to free ports): three nats-servers
/// from `convo nats-config`'s bootstrap block, three engines with
/// `--replicas 3`; then the stream has three replicas, the three engines
/// share the partitions, and each gateway serves a command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_from_nothing_runs_as_written() {
    use std::os::unix::process::CommandExt;
    let temp = tempfile::tempdir().unwrap();
    let bases = free_port_bases(4);
    let convo = Path::new(env!("CARGO_BIN_EXE_convo")).parent().unwrap().to_owned();
    let path =
        format!("{}:{}:{}", convo.display(), repo().join(".tools/nats/bin").display(), std::env::var("PATH").unwrap());
    let child = Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(snippet("cluster.sh"))
        .current_dir(temp.path())
        .env("PATH", path)
        .env("NATS_PORT", bases[0].to_string())
        .env("MONITOR_PORT", bases[1].to_string())
        .env("ROUTE_PORT", bases[2].to_string())
        .env("HTTP_PORT", bases[3].to_string())
        .env_remove("CONVO_NATS_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0) // its servers and engines too: all stopped at the end
        .spawn()
        .unwrap();
    let group = Group(child.id());
    let logs = |dir: &Path| -> String {
        ["nats-1.log", "engine-1.log", "engine-2.log", "engine-3.log"]
            .iter()
            .map(|f| format!("--- {f}\n{}", std::fs::read_to_string(dir.join(f)).unwrap_or_default()))
            .collect()
    };
    let (tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match done.recv_timeout(CLUSTER_SETUP_MAX) {
        Ok(out) => out.unwrap(),
        Err(_) => panic!("the README's cluster was not up within {CLUSTER_SETUP_MAX:?}\n{}", logs(temp.path())),
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}\n{}\n{}", String::from_utf8_lossy(&out.stderr), logs(temp.path()));
    let status: serde_json::Value = serde_json::from_str(stdout.trim()).expect("cluster status is JSON");
    assert_eq!(status["partitions"], 3, "{status}");
    assert_eq!(status["instances"].as_array().map(Vec::len), Some(3), "{status}");

    // The stream on all three servers.
    let monitor = format!("http://127.0.0.1:{}", bases[1] + 1);
    let jsz: serde_json::Value =
        serde_json::from_str(&http_get(&format!("{monitor}/jsz?streams=true&config=true"))).unwrap();
    let replicas: Vec<u64> = jsz["account_details"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
        .filter(|s| s["name"] == "CONVO")
        .filter_map(|s| s["config"]["num_replicas"].as_u64())
        .collect();
    assert_eq!(replicas, vec![3], "{jsz}");

    // Each gateway serves the operator's commands (one partition's owner or another's).
    let operator = std::fs::read_to_string(temp.path().join("engine-1/operator.key")).unwrap();
    let setup = super::cluster::setup();
    for (n, command) in setup.iter().take(3).enumerate() {
        let gateway = format!("127.0.0.1:{}", bases[3] + n as u16 + 1);
        let kind = command["type"].as_str().unwrap();
        let body = json!({"id": format!("readme-{n}"), "command": command}).to_string();
        let out = Command::new("curl")
            .args(["-s", "-X", "POST", &format!("http://{gateway}/v1/accounts/acme/commands/{kind}")])
            .args(["-H", &format!("Authorization: Bearer {}", operator.trim()), "-H", "Content-Type: application/json"])
            .args(["--data", &body])
            .output()
            .unwrap();
        let reply: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}\n{}", String::from_utf8_lossy(&out.stdout), logs(temp.path())));
        assert_eq!(reply["outcome"], "committed", "{gateway}: {reply}");
    }
    drop(group);
}

/// How long the README's cluster may take to come up.
const CLUSTER_SETUP_MAX: Duration = Duration::from_secs(180);

/// A process group, killed when dropped.
struct Group(u32);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.0)]).status();
    }
}

/// `count` port bases `b` whose `b+1..=b+3` are free on loopback, below the
/// ephemeral range (where the other tests' port 0 binds land).
fn free_port_bases(count: usize) -> Vec<u16> {
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut bases = Vec::new();
    let mut candidate = 20_000 + (seed % 1_000) as u16 * 10;
    while bases.len() < count {
        candidate += 4;
        let free = (1..=3).all(|o| std::net::TcpListener::bind(("127.0.0.1", candidate + o)).is_ok());
        if free {
            bases.push(candidate);
        }
    }
    bases
}

/// A plain HTTP GET on loopback: the body.
fn http_get(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut socket = std::net::TcpStream::connect(host).unwrap();
    write!(socket, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut response = String::new();
    socket.read_to_string(&mut response).unwrap();
    response.split_once("\r\n\r\n").map_or(String::new(), |(_, body)| body.to_owned())
}
