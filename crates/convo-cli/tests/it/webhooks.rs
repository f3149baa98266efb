//! Webhooks against a real HTTP receiver on loopback: signed deliveries
//! (checked by the `standardwebhooks` npm package), retries with backoff,
//! order per stream, redaction, the delivery log over HTTP and the CLI, a
//! kill -9 of the server between attempts, refused private addresses, dead
//! letters and their re-drive.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::access::{Served, http, log_of, op, serve_with};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[derive(Debug, Clone)]
struct Received {
    headers: BTreeMap<String, String>,
    body: String,
    status: u16,
}

/// An HTTP receiver that fails the first two attempts of each delivery
/// (by `webhook-id`) with 500 and accepts the third.
async fn receiver() -> (u16, Arc<Mutex<Vec<Received>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let seen = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let seen = seen.clone();
            tokio::spawn(async move {
                let Some((head, body)) = super::next_request(&mut socket, &mut Vec::new()).await else { return };
                let headers: BTreeMap<String, String> = head
                    .lines()
                    .skip(1)
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                    .collect();
                let id = headers.get("webhook-id").cloned().unwrap_or_default();
                let status = {
                    let mut seen = seen.lock().unwrap();
                    let earlier = seen.iter().filter(|r| r.headers.get("webhook-id") == Some(&id)).count();
                    let status = if earlier < 2 { 500 } else { 200 };
                    seen.push(Received { headers, body, status });
                    status
                };
                let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = socket.write_all(answer.as_bytes()).await;
            });
        }
    });
    (port, got)
}

fn accepted(got: &Arc<Mutex<Vec<Received>>>) -> Vec<String> {
    let got = got.lock().unwrap();
    let mut out: Vec<String> = Vec::new();
    for r in got.iter().filter(|r| r.status == 200) {
        let id = r.headers["webhook-id"].clone();
        if !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

async fn deliveries(served: &Served, webhook: &str) -> Value {
    let path = format!("/v1/accounts/acme/webhooks/deliveries?webhook={webhook}&limit=1000");
    let (status, report) = http(served, "127.0.0.1", "GET", &path, Some(&served.operator), &[], None).await;
    assert_eq!(status, 200, "{report}");
    report
}

async fn until(what: &str, served: &Served, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not within 60 s\n{}", log_of(&served_dir(served)));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn served_dir(served: &Served) -> std::path::PathBuf {
    served.dir_path()
}

/// `convo serve` letting webhooks reach the receiver's port on this machine, and nothing else private.
fn start(dir: &Path, port: u16) -> Served {
    for f in ["http.url", "nats.url", "nats-engine.url"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let allow = format!("127.0.0.1:{port}");
    serve_with(dir, &["--webhook-allow", &allow, "--webhook-retry-schedule", "200ms,400ms"])
}

/// This machine's name, which resolves to one of its own (private) addresses.
fn private_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_owned();
    let addresses: Vec<std::net::SocketAddr> =
        std::net::ToSocketAddrs::to_socket_addrs(&(name.as_str(), 9)).map(Iterator::collect).unwrap_or_default();
    assert!(
        !addresses.is_empty() && addresses.iter().all(|a| !convo_store::egress::is_public(a.ip())),
        "this test needs the machine's name ({name}) to resolve to its own addresses: {addresses:?}"
    );
    name
}

/// Account acme, with a redaction rule for card numbers.
async fn configure_acme(served: &Served) {
    let rules = json!([{"name": "card", "pattern": "\\b\\d{4}( \\d{4}){3}\\b", "redact": true}]);
    op(served, "acme", "a1", json!({"type": "configure_account", "name": "Acme", "regex_rules": rules})).await;
}

/// A client (`define_client` or `update_client`).
fn client(kind: &str, id: &str, name: &str) -> Value {
    json!({"type": kind, "id": id, "name": name, "code": id, "sla_optimal_secs": 60, "sla_low_secs": 180,
           "max_inactivity_secs": 86400, "inactivity_attempts": 0})
}

/// One plain GET (status line, headers and body, as text).
async fn raw_get(address: &str, path: &str) -> String {
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    socket.read_to_end(&mut raw).await.unwrap();
    String::from_utf8(raw).unwrap()
}

fn event_id(reply: &Value) -> String {
    reply["event_ids"][0].as_str().expect("a committed reply names its event ids").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_retried_logged_in_order_and_survive_a_kill() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().to_path_buf();
    let (port, got) = receiver().await;
    let mut served = start(&dir, port);
    configure_acme(&served).await;
    let hook = |id: &str, url: String, events: Value| json!({"type": "define_webhook", "id": id, "url": url, "events": events, "secret": SECRET});
    let url = format!("http://127.0.0.1:{port}/hooks");
    op(&served, "acme", "w1", hook("crm", url, json!(["client_defined", "client_updated"]))).await;
    // A private address the operator did not allow is refused when the webhook is defined.
    let body =
        json!({"id": "w2", "command": hook("intranet", "http://127.0.0.2:9/x".into(), json!(["client_defined"]))});
    let path = "/v1/accounts/acme/commands/define_webhook";
    let (status, refused) = http(&served, "127.0.0.1", "POST", path, Some(&served.operator), &[], Some(&body)).await;
    assert_eq!((status, refused["field"].as_str()), (400, Some("command.url")), "{refused}");
    // A name is judged by the addresses it resolves to, when delivering.
    let intranet = format!("http://{}:9/x", private_name());
    op(&served, "acme", "w2", hook("intranet", intranet, json!(["client_defined"]))).await;
    let mut ids = Vec::new();
    for (n, command) in [
        client("define_client", "c1", "Acme 4111 1111 1111 1111"),
        client("update_client", "c1", "Acme One"),
        client("define_client", "c2", "Beta"),
    ]
    .into_iter()
    .enumerate()
    {
        ids.push(event_id(&op(&served, "acme", &format!("c{n}"), command).await));
    }

    // The first delivery: two failures, then accepted; the log says so.
    until("the first delivery accepted and logged", &served, async || {
        let report = deliveries(&served, "crm").await;
        report["attempts"].as_array().unwrap().iter().any(|a| a["event_id"] == ids[0] && a["outcome"] == "delivered")
    })
    .await;
    // Kill -9 the server (projector and sender) between attempts of the next one, and start it again.
    served.child.kill().unwrap();
    served.child.wait().unwrap();
    drop(served);
    let served = start(&dir, port);
    until("every delivery accepted", &served, async || accepted(&got).len() == 3).await;
    assert_eq!(accepted(&got), ids, "accepted once each, in order, nothing lost");

    let received = got.lock().unwrap().clone();
    let first: Vec<&Received> = received.iter().filter(|r| r.headers["webhook-id"] == ids[0]).collect();
    assert_eq!(first.iter().map(|r| r.status).collect::<Vec<_>>(), [500, 500, 200]);
    for r in &received {
        assert!(ids.contains(&r.headers["webhook-id"]), "only the filtered events, the event id as webhook-id");
        let event: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(event["id"], r.headers["webhook-id"], "the same id on every attempt: the body's event id");
        assert_eq!(event["specversion"], "1.0");
    }
    assert!(first[0].body.contains("[redacted:card]") && !first[0].body.contains("4111"), "{}", first[0].body);
    for pair in first.windows(2) {
        let t = |r: &Received| r.headers["webhook-timestamp"].parse::<i64>().unwrap();
        assert!(t(pair[1]) >= t(pair[0]));
    }

    // The log over HTTP: three attempts of the first, with their codes and latency.
    let report = deliveries(&served, "crm").await;
    let mut attempts: Vec<&Value> =
        report["attempts"].as_array().unwrap().iter().filter(|a| a["event_id"] == ids[0]).collect();
    attempts.sort_by_key(|a| a["attempt"].as_u64());
    let codes: Vec<(u64, u64, &str)> = attempts
        .iter()
        .map(|a| (a["attempt"].as_u64().unwrap(), a["status"].as_u64().unwrap(), a["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(codes, [(1, 500, "retrying"), (2, 500, "retrying"), (3, 200, "delivered")]);
    assert!(attempts.iter().all(|a| a["latency_ms"].is_u64()));
    assert!(report["pending"].as_array().unwrap().is_empty(), "{report}");

    // The same log from the CLI.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_convo"))
        .args(["webhooks", "deliveries", "--account", "acme", "--webhook", "crm", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("delivered") && text.contains(&ids[0]), "{text}");

    // An independent implementation verifies every delivery's signature.
    let input = json!({"secret": SECRET, "deliveries": received.iter().map(|r| json!({"headers": r.headers, "body": r.body})).collect::<Vec<_>>()});
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut node = std::process::Command::new("node")
        .arg(repo.join("crates/convo-cli/tests/contract/verify-webhooks.cjs"))
        .env("NODE_PATH", repo.join(".tools/node/node_modules"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("node runs (just validators installs standardwebhooks)");
    use std::io::Write;
    node.stdin.take().unwrap().write_all(input.to_string().as_bytes()).unwrap();
    let out = node.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains(&format!("verified {}", received.len())), "{text}");

    // A private address the operator did not allow: refused, dead-lettered at once (a retry would be refused
    // again); re-driven by command.
    until("both intranet deliveries dead-lettered", &served, async || {
        deliveries(&served, "intranet").await["dead"].as_array().unwrap().len() == 2
    })
    .await;
    let report = deliveries(&served, "intranet").await;
    let errors: Vec<&str> = report["attempts"].as_array().unwrap().iter().filter_map(|a| a["error"].as_str()).collect();
    // Two deliveries (c1 and c2 defined), one attempt each.
    assert!(errors.len() == 2 && errors.iter().all(|e| e.contains("private")), "{errors:?}");
    assert_eq!(report["dead"].as_array().unwrap().len(), 2, "{report}");
    op(&served, "acme", "r1", json!({"type": "redrive_webhook", "webhook": "intranet"})).await;
    until("the re-driven delivery tried again", &served, async || {
        deliveries(&served, "intranet").await["attempts"].as_array().unwrap().len() >= 3
    })
    .await;
}

/// The HTTP pull feed and the SSE stream: CloudEvents, per account,
/// filtered by type, redacted, resumable from a cursor and from `Last-Event-ID`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_and_the_event_stream_serve_cloudevents_redacted_and_resumable() {
    let temp = tempfile::tempdir().unwrap();
    let served = serve_with(temp.path(), &["--log-format", "json"]);
    configure_acme(&served).await;
    let c1 = op(&served, "acme", "c1", client("define_client", "c1", "Acme 4111 1111 1111 1111")).await;
    op(&served, "acme", "c2", client("define_client", "c2", "Beta")).await;
    op(&served, "other", "o1", json!({"type": "configure_account", "name": "Other"})).await;
    let get = async |path: &str, extra: &[(&str, &str)]| {
        http(&served, "127.0.0.1", "GET", path, Some(&served.operator), extra, None).await
    };
    for probe in ["/health/live", "/health/ready"] {
        let (status, body) = http(&served, "127.0.0.1", "GET", probe, None, &[], None).await;
        assert_eq!(status, 200, "{probe}: {body}");
    }
    // The embedded nats-server's monitoring endpoint, on loopback.
    let monitor = std::fs::read_to_string(temp.path().join("nats-monitor.url")).expect("serve writes nats-monitor.url");
    let address = monitor.trim().trim_start_matches("http://").to_owned();
    assert!(address.starts_with("127.0.0.1:"), "{monitor}");
    let raw = raw_get(&address, "/healthz").await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");

    let (status, page) = get("/v1/accounts/acme/events?type=client_defined", &[]).await;
    assert_eq!(status, 200, "{page}");
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{page}");
    assert_eq!(events[0]["id"], c1["event_ids"][0], "the CloudEvent id is the event id the reply named");
    assert_eq!(events[0]["type"], "io.convo.client_defined.v1");
    assert_eq!(events[0]["source"], "/convo/acme/config");
    assert_eq!(events[0]["streamseq"], c1["log_seq"]);
    assert_eq!(events[0]["data"]["name"], "Acme [redacted:card]");
    let (status, bad) = get("/v1/accounts/acme/events?type=client_exploded", &[]).await;
    assert_eq!((status, bad["field"].as_str()), (400, Some("type")), "{bad}");
    // Resume after the commit that defined c1: the next page starts with c2.
    let (_, page) = get(&format!("/v1/accounts/acme/events?after={}", c1["log_seq"]), &[]).await;
    assert_eq!(page["events"][0]["data"]["id"], "c2", "{page}");
    assert!(
        page["events"].as_array().unwrap().iter().all(|e| e["source"].as_str().unwrap().starts_with("/convo/acme/"))
    );

    // Paged a commit at a time (each page going on with the read the page
    // before kept open): the same events, in the same order, as one page.
    let (_, whole) = get("/v1/accounts/acme/events", &[]).await;
    let whole = whole["events"].as_array().unwrap().clone();
    let (mut paged, mut after, mut pages, mut starts) = (Vec::new(), 0, 0, Vec::new());
    loop {
        let (status, page) = get(&format!("/v1/accounts/acme/events?after={after}&limit=1"), &[]).await;
        assert_eq!(status, 200, "{page}");
        paged.extend(page["events"].as_array().unwrap().iter().cloned());
        pages += 1;
        if page["next"] == after {
            break;
        }
        starts.push(after);
        after = page["next"].as_u64().unwrap();
    }
    assert!(pages > 3 && paged.len() >= whole.len(), "{pages} pages, {} events", paged.len());
    assert_eq!(paged[..whole.len()], whole[..]);

    // SSE, resuming from Last-Event-ID, then live.
    let socket = tokio::net::TcpStream::connect(served.http.as_str()).await.unwrap();
    let (mut read, mut write) = socket.into_split();
    let last = format!("{}.0", c1["log_seq"]);
    let request = format!(
        "GET /v1/accounts/acme/events/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nLast-Event-ID: {last}\r\n\r\n",
        served.operator
    );
    write.write_all(request.as_bytes()).await.unwrap();
    let mut text = String::new();
    let mut read_until = async |count: usize, text: &mut String| {
        let mut buffer = [0u8; 8192];
        while text.matches("\nid: ").count() + usize::from(text.starts_with("id: ")) < count {
            let n = tokio::time::timeout(Duration::from_secs(20), read.read(&mut buffer)).await.unwrap().unwrap();
            assert!(n > 0, "the stream ended: {text}");
            text.push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    };
    read_until(1, &mut text).await;
    assert!(text.contains("text/event-stream"), "{text}");
    assert!(text.contains("event: client_defined") && text.contains("\"c2\""), "c2 follows c1: {text}");
    assert!(!text.contains("\"c1\""), "c1 was seen (Last-Event-ID): {text}");
    op(&served, "acme", "c3", client("define_client", "c3", "Gamma")).await;
    read_until(2, &mut text).await;
    assert!(text.contains("\"c3\""), "live: {text}");
    assert!(!text.contains("Other"), "another account's events never show: {text}");

    // A read kept open at the end of the stream sees what is appended after it
    // (c3 came after the paging above: page to the end again first).
    let (mut starts, mut after) = (starts, after);
    loop {
        let (_, page) = get(&format!("/v1/accounts/acme/events?after={after}&limit=1"), &[]).await;
        if page["next"] == after {
            break;
        }
        starts.push(after);
        after = page["next"].as_u64().unwrap();
    }
    let last = starts.last().copied().unwrap();
    let (_, page) = get(&format!("/v1/accounts/acme/events?after={last}&limit=1"), &[]).await;
    assert_eq!(page["next"], after, "{page}");
    op(&served, "acme", "c9", client("define_client", "c9", "Omega")).await;
    let (_, page) = get(&format!("/v1/accounts/acme/events?after={after}&limit=1"), &[]).await;
    assert_eq!(page["events"][0]["data"]["id"], "c9", "{page}");

    // /metrics, parsed by the Prometheus client library's own text-format parser.
    let scrape = async || raw_get(&served.http, "/metrics").await.split_once("\r\n\r\n").unwrap().1.to_owned();
    let parse = |text: &str| {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let script = "import json, sys\nfrom prometheus_client.parser import text_string_to_metric_families as parse\n\
                      print(json.dumps({s.name + json.dumps(s.labels, sort_keys=True): s.value \
                      for f in parse(sys.stdin.read()) for s in f.samples}))";
        let mut python = std::process::Command::new("python3")
            .args(["-c", script])
            .env("PYTHONPATH", repo.join(".tools/py"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        python.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = python.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "the Prometheus parser refused /metrics: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    // Replies are counted by the partition and handed to the registry with its
    // gauges (within a second): scrape until every client defined so far (c1,
    // c2, c3, c9) is counted, so none is still on its way when `before` is read.
    let committed = r#"convo_commands_total{"outcome": "committed", "type": "define_client"}"#;
    let mut before = parse(&scrape().await);
    for _ in 0..100 {
        if before[committed].as_f64().is_some_and(|n| n >= 4.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        before = parse(&scrape().await);
    }
    assert!(before[committed].as_f64().unwrap() >= 3.0, "{before}");
    assert!(before["convo_append_seconds_count{}"].as_f64().unwrap() >= 5.0, "{before}");
    assert!(before.as_object().unwrap().keys().any(|k| k.starts_with("convo_open_conversations")), "{before}");
    op(&served, "acme", "c4", client("define_client", "c4", "Delta")).await;
    let again = json!({"id": "c4-again", "command": client("define_client", "c4", "Delta")});
    let path = "/v1/accounts/acme/commands/define_client";
    let (status, _) = http(&served, "127.0.0.1", "POST", path, Some(&served.operator), &[], Some(&again)).await;
    assert_eq!(status, 409);
    let rejected = r#"convo_rejections_total{"code": "already_defined"}"#;
    let mut after = parse(&scrape().await);
    for _ in 0..100 {
        if after[committed] != before[committed] && after[rejected].is_number() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = parse(&scrape().await);
    }
    assert_eq!(after[committed].as_f64().unwrap(), before[committed].as_f64().unwrap() + 1.0, "/metrics moves");
    assert_eq!(after[r#"convo_rejections_total{"code": "already_defined"}"#], 1.0, "{after}");
    // One JSON log line per rejection, with its code, account and command id.
    let logged = log_of(&served.dir_path());
    let line = logged
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["command"] == "c4-again")
        .unwrap_or_else(|| panic!("no log line of the rejected command:\n{logged}"));
    assert_eq!((line["code"].as_str(), line["account"].as_str()), (Some("already_defined"), Some("acme")), "{line}");
    assert_eq!(line["level"], "INFO");

    // Ctrl-C stops the server although the event stream is still open.
    let mut served = served;
    let pid = served.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while served.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "convo serve did not stop with an SSE client connected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(read);
}
