//! Fail closed, against the real binary: a bad or exposed setting stops
//! `convo serve` naming the file and the fix; nothing under a data
//! directory is readable by others (and no webhook secret is in clear);
//! an acknowledgement waits for the disk unless the operator says otherwise;
//! an event stream ends when its key is revoked; every read masks what the
//! account's rules mask, unless the key has the `unredacted` scope (and then
//! the read is recorded); bad query strings, bodies and fields get typed errors.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::access::{Served, http, log_of, op, serve_with};

const CARD: &str = "4111 1111 1111 1111";

/// `convo serve` that is expected to stop at once: its output.
fn serve_refused(dir: &Path, extra: &[&str]) -> Output {
    // Its output goes to files beside the data directory, not to pipes nobody
    // reads while it runs (a full pipe would stop it mid-sentence), and a run
    // that does not stop says what it printed.
    let (out_file, err_file) = (dir.with_extension("stdout"), dir.with_extension("stderr"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_convo"))
        .args(["serve", "--no-http", "--data-dir"])
        .arg(dir)
        .args(extra)
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .expect("convo runs");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let printed = std::fs::read_to_string(&err_file).unwrap_or_default();
            panic!("convo serve {extra:?} did not stop within 30 s; it printed:\n{printed}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output { status, stdout: std::fs::read(&out_file).unwrap(), stderr: std::fs::read(&err_file).unwrap() }
}

fn write_mode(path: &Path, bytes: &[u8], mode: u32) {
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn bad_or_exposed_secrets_stop_the_server_naming_the_file_and_the_fix() {
    let temp = tempfile::tempdir().unwrap();
    let key = temp.path().join("idp.key");
    let jwt = |dir: &str| {
        let out = serve_refused(
            &temp.path().join(dir),
            &["--jwt-key-file", key.to_str().unwrap(), "--jwt-issuer", "idp", "--jwt-audience", "convo"],
        );
        assert!(!out.status.success(), "{dir}: convo serve started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Empty, short: anyone could mint tokens.
    write_mode(&key, b"", 0o600);
    let stderr = jwt("empty");
    assert!(stderr.contains(key.to_str().unwrap()) && stderr.contains("at least 32"), "{stderr}");
    write_mode(&key, b"0123456789\n", 0o600);
    let stderr = jwt("short");
    assert!(stderr.contains("10 bytes") && stderr.contains("at least 32"), "{stderr}");
    // Readable by others: refused, with the command that mends it.
    write_mode(&key, b"0123456789abcdef0123456789abcdef-long-enough", 0o644);
    let stderr = jwt("exposed");
    assert!(stderr.contains(&format!("chmod 600 {}", key.display())), "{stderr}");
    // Unreadable.
    std::fs::remove_file(&key).unwrap();
    let stderr = jwt("missing");
    assert!(stderr.contains("cannot read") && stderr.contains(key.to_str().unwrap()), "{stderr}");
    // Nothing was started for a refused setting: no nats-server directory.
    assert!(!temp.path().join("empty/nats").exists());

    // The engine's key and the operator's credential in the data directory, exposed.
    for file in ["engine.key", "operator.key"] {
        let dir = temp.path().join(format!("exposed-{file}"));
        std::fs::create_dir_all(&dir).unwrap();
        let text: &[u8] =
            if file == "engine.key" { b"{\"key\": \"00\", \"streams\": {}}" } else { b"convo-operator.x" };
        write_mode(&dir.join(file), text, 0o640);
        let out = serve_refused(&dir, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{file}: {stderr}");
        assert!(stderr.contains(&format!("chmod 600 {}", dir.join(file).display())), "{file}: {stderr}");
    }
}

/// Every file and directory under `dir`, with its mode, that group or others may use.
fn exposed(dir: &Path) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            out.push((path.display().to_string(), mode));
        }
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_under_the_data_directory_is_readable_by_others_and_no_webhook_secret_is_in_clear() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    // A day of traffic, as `just demo` lays it out.
    let fixture = super::fixtures().join("day-of-traffic/input.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_convo"))
        .args(["replay-traffic", fixture.to_str().unwrap(), "--prefix", "demo", "--no-events", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A webhook receiver that accepts everything.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = received.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buffer = [0u8; 65536];
            let _ = socket.read(&mut buffer).await;
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = socket.write_all(b"HTTP/1.1 204 No\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
        }
    });
    let allow = format!("127.0.0.1:{port}");
    let served = serve_with(&dir, &["--prefix", "demo", "--snapshot-every-secs", "1", "--webhook-allow", &allow]);
    let secret = "whsec_c2VjcmV0IHNlY3JldCBzZWNyZXQgc2VjcmV0IQ==";
    let hook = json!({"type": "define_webhook", "id": "crm", "url": format!("http://127.0.0.1:{port}/in"),
        "events": ["message_received"], "secret": secret});
    op(&served, "default", "hook-1", hook).await;
    for n in 0..5 {
        let command = json!({"type": "receive_message", "conversation": format!("fc{n}"), "contact": format!("fc-contact-{n}"),
            "channel": "wa-sales", "text": "hola"});
        op(&served, "default", &format!("fc-{n}"), command).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.load(std::sync::atomic::Ordering::Relaxed) < 5 || !dir.join("anchors.jsonl").exists() {
        assert!(Instant::now() < deadline, "no deliveries or anchors: {}", log_of(&dir));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // nats.url is an address; the engine's login is in its own private file.
    let public = std::fs::read_to_string(dir.join("nats.url")).unwrap();
    let engine = std::fs::read_to_string(dir.join("nats-engine.url")).unwrap();
    assert!(!public.contains('@') && engine.contains("convo-engine:"), "{public} / engine login elsewhere");
    // Acknowledged means fsynced: the embedded server's config says so.
    let config = std::fs::read_to_string(dir.join("nats/nats-server.conf")).unwrap();
    assert!(config.contains("sync_interval: always"), "{config}");
    // Stopped as Ctrl-C stops it: the partitions are handed over with a snapshot.
    let mut served = served;
    assert!(Command::new("kill").args(["-INT", &served.child.id().to_string()]).status().unwrap().success());
    assert!(served.child.wait().unwrap().success(), "{}", log_of(&dir));
    assert!(log_of(&dir).contains("snapshot at sequence"), "{}", log_of(&dir));
    let open = exposed(&dir);
    assert!(open.is_empty(), "readable by others: {open:?}");
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    // The secret is sealed everywhere the engine keeps it: the stream's files and the webhooks database.
    let holders = super::files_holding(&dir, &secret.as_bytes()["whsec_".len()..]);
    assert!(holders.is_empty(), "the webhook secret in clear in {holders:?}");
}

#[test]
fn an_engine_on_another_server_starts_only_where_acknowledgements_are_durable() {
    let temp = tempfile::tempdir().unwrap();
    let options = |name: &str, lazy_fsync: bool| convo_store::launcher::LaunchOptions {
        data_dir: temp.path().join(name),
        lazy_fsync,
        mappings: vec![convo_store::bus::partition_mapping("convo", 2)],
    };
    let lazy = convo_store::launcher::NatsServer::start(&options("lazy", true)).unwrap();
    let durable = convo_store::launcher::NatsServer::start(&options("durable", false)).unwrap();
    let engine = |nats: &convo_store::launcher::NatsServer, dir: &str, extra: &[&str]| {
        let mut args = vec!["--nats-url".to_owned(), nats.url()];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        serve_refused(&temp.path().join(dir), &args)
    };
    // Unknown: refused, saying how to have it checked or to accept the risk.
    let out = engine(&durable, "unknown", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--nats-monitor-url") && stderr.contains("--accept-ack-loss"));
    // Known lazy: refused, naming the setting.
    let out = engine(&lazy, "lazy-engine", &["--nats-monitor-url", &lazy.monitor_url()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("sync_interval: always") && stderr.contains("120 s"), "{stderr}");
    // Known durable: it starts (and is stopped here once it says so).
    let dir = temp.path().join("durable-engine");
    std::fs::create_dir_all(&dir).unwrap();
    let log = std::fs::File::create(dir.join("serve.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_convo"))
        .args(["serve", "--no-http", "--nats-url", &durable.url(), "--nats-monitor-url", &durable.monitor_url()])
        .arg("--data-dir")
        .arg(&dir)
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !log_of(&dir).contains("fsyncs every append before acknowledging it") {
        assert!(child.try_wait().unwrap().is_none(), "it stopped: {}", log_of(&dir));
        assert!(Instant::now() < deadline, "{}", log_of(&dir));
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    // Another engine.key on the same stream: refused, naming it (with it every
    // personal value would read [erased]).
    let out = engine(&durable, "another-key", &["--nats-monitor-url", &durable.monitor_url()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("engine.key") && stderr.contains("[erased]"), "{stderr}");
    // The operator's explicit opt-out, said in the log.
    let dir = temp.path().join("lazy-accepted");
    std::fs::create_dir_all(&dir).unwrap();
    let log = std::fs::File::create(dir.join("serve.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_convo"))
        .args(["serve", "--no-http", "--nats-url", &lazy.url(), "--accept-ack-loss", "--data-dir"])
        .arg(&dir)
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !log_of(&dir).contains("can lose acknowledged commands") {
        assert!(child.try_wait().unwrap().is_none(), "it stopped: {}", log_of(&dir));
        assert!(Instant::now() < deadline, "{}", log_of(&dir));
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// An account with a card-number rule, a campaign, an agent with a
/// conversation whose contact sent a card number; keys for an integration
/// with every read but `unredacted`, and one with it.
async fn card_account(served: &Served) -> (String, String, String) {
    let rules = json!([{"name": "card", "pattern": "\\b\\d{4}( \\d{4}){3}\\b", "redact": true}]);
    let mut settings = super::access::sales_settings();
    settings["regex_rules"] = rules;
    super::access::sales_account(served, settings, &[("ana", "agent")], &["ana"]).await;
    let reads = ["audit", "reports", "contact_history", "events", "webhooks", "live", "inbox"];
    let mut tokens = Vec::new();
    for (key, extra) in [("masked", None), ("clear", Some("unredacted"))] {
        let mut scopes: Vec<&str> = reads.to_vec();
        scopes.extend(extra);
        let command = json!({"type": "issue_api_key", "key": key, "holder": {"integration": key},
            "scopes": {"commands": ["close"], "reads": scopes}});
        let reply = op(served, "acme", &format!("key-{key}"), command).await;
        tokens.push(reply["credential"]["token"].as_str().unwrap().to_owned());
    }
    let message = json!({"type":"receive_message","conversation":"c1","contact":"k-c1","channel":"wa",
        "text": format!("mi tarjeta es {CARD}")});
    op(served, "acme", "card-msg", message).await;
    let clear = tokens.pop().unwrap();
    let masked = tokens.pop().unwrap();
    (masked, clear, "k-c1".into())
}

/// One GET's status and body as text (SSE: the first events, then closed).
async fn get_text(served: &Served, path: &str, credential: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(served.http.as_str()).await.unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {credential}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_masks_a_card_number_but_for_the_unredacted_scope_which_is_recorded() {
    let temp = tempfile::tempdir().unwrap();
    let served = serve_with(temp.path(), &[]);
    let (masked, clear, contact) = card_account(&served).await;
    let reads = [
        "/v1/accounts/acme/audit".to_owned(),
        "/v1/accounts/acme/audit/export".to_owned(),
        "/v1/accounts/acme/audit/export?format=csv".to_owned(),
        "/v1/accounts/acme/live".to_owned(),
        "/v1/accounts/acme/inbox?agent=ana".to_owned(),
        "/v1/accounts/acme/reports/overview?by=campaign".to_owned(),
        "/v1/accounts/acme/reports/overview?by=campaign&format=csv".to_owned(),
        format!("/v1/accounts/acme/contacts/{contact}/history"),
        "/v1/accounts/acme/events".to_owned(),
        "/v1/accounts/acme/events/stream".to_owned(),
        "/v1/accounts/acme/webhooks/deliveries".to_owned(),
    ];
    let mut shown = Vec::new();
    for path in &reads {
        let (status, text) = get_text(&served, path, &masked).await;
        assert!(status == 200, "{path}: {text}");
        assert!(!text.contains(CARD), "{path} shows the card number to a key without `unredacted`: {text}");
        let (status, text) = get_text(&served, path, &clear).await;
        assert!(status == 200, "{path}: {text}");
        if text.contains(CARD) {
            shown.push(path.as_str());
        }
    }
    // Where the text is part of the read, the `unredacted` key sees it whole.
    for path in ["/v1/accounts/acme/audit", "/v1/accounts/acme/live", "/v1/accounts/acme/inbox?agent=ana"] {
        assert!(shown.contains(&path), "{path} hid the text from the unredacted key: {shown:?}");
    }
    assert!(shown.iter().any(|p| p.contains("/events")), "{shown:?}");
    // Admins and the operator read masked text too (the stream keeps the original).
    let (_, text) = get_text(&served, "/v1/accounts/acme/audit", &served.operator).await;
    assert!(!text.contains(CARD) && text.contains("[redacted:card]"), "{text}");
    // Each unmasked read is in the audit log, saying whose key read what.
    let (_, log) = http(
        &served,
        "127.0.0.1",
        "GET",
        "/v1/accounts/acme/audit?action=unredacted_read",
        Some(&served.operator),
        &[],
        None,
    )
    .await;
    let entries = log["entries"].as_array().unwrap();
    assert!(entries.len() >= 5, "{log}");
    assert!(entries.iter().all(|e| e["details"]["principal"] == "integration:clear"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_ends_within_two_seconds_of_its_keys_revocation() {
    let temp = tempfile::tempdir().unwrap();
    let served = serve_with(temp.path(), &[]);
    let (masked, _, _) = card_account(&served).await;
    let mut stream = tokio::net::TcpStream::connect(served.http.as_str()).await.unwrap();
    let request =
        format!("GET /v1/accounts/acme/events/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {masked}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut text = String::new();
    let mut buffer = [0u8; 16384];
    while !text.contains("event: message_received") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer)).await.unwrap().unwrap();
        assert!(n > 0, "{text}");
        text.push_str(&String::from_utf8_lossy(&buffer[..n]));
    }
    op(&served, "acme", "revoke-masked", json!({"type": "revoke_api_key", "key": "masked"})).await;
    let revoked = Instant::now();
    // The stream goes on until it says why it ends, then ends.
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await.unwrap().unwrap();
        text.push_str(&String::from_utf8_lossy(&buffer[..n]));
        if n == 0 || text.contains("\r\n0\r\n\r\n") {
            break;
        }
    }
    let took = revoked.elapsed();
    assert!(took <= Duration::from_secs(2), "the stream outlived its key by {took:?}");
    let end = &text[text.rfind("event: access_denied").expect("a final event says why")..];
    assert!(end.contains("revoked"), "{end}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_query_strings_bodies_and_fields_get_typed_errors() {
    let temp = tempfile::tempdir().unwrap();
    let served = serve_with(temp.path(), &[]);
    let op_ = served.operator.clone();
    let get = async |path: &str| http(&served, "127.0.0.1", "GET", path, Some(&op_), &[], None).await;
    op(&served, "acme", "t-1", json!({"type": "configure_account", "name": "Acme"})).await;
    let (status, body) = get("/v1/accounts/acme/events?after=-1").await;
    assert_eq!(
        (status, body["code"].as_str(), body["field"].as_str()),
        (400, Some("invalid"), Some("after")),
        "{body}"
    );
    let (status, body) = get("/v1/accounts/acme/audit?limit=many").await;
    assert_eq!((status, body["field"].as_str()), (400, Some("limit")), "{body}");
    let (status, body) = get("/v1/no/such/route").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("unknown")), "{body}");
    // A body over the gateway's limit: the typed 413.
    let big = json!({"id": "big", "command": {"type": "configure_account", "name": "x".repeat(1_100_000)}});
    let path = "/v1/accounts/acme/commands/configure_account";
    let (status, body) = http(&served, "127.0.0.1", "POST", path, Some(&op_), &[], Some(&big)).await;
    assert_eq!((status, body["code"].as_str()), (413, Some("too_large")), "{body}");
    // A NUL in free text, an id in the engine's namespace, a date no calendar needs: each names its field.
    let post = async |kind: &str, command: Value| {
        let body = json!({"id": format!("t-{kind}"), "command": command});
        let path = format!("/v1/accounts/acme/commands/{kind}");
        http(&served, "127.0.0.1", "POST", &path, Some(&op_), &[], Some(&body)).await
    };
    let (status, body) = post("configure_account", json!({"type": "configure_account", "name": "Acme\u{0}"})).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("command.name")), "{body}");
    let user = json!({"type": "define_user", "id": "_root", "name": "R", "email": "r@x.co", "role": "admin"});
    let (status, body) = post("define_user", user).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("command.id")), "{body}");
    let schedule = json!({"type": "define_schedule", "id": "s", "name": "S", "time_zone": "UTC", "week": {},
        "holidays": ["+99999-01-01"]});
    let (status, body) = post("define_schedule", schedule).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("command.holidays[0]")), "{body}");
    let (status, body) = http(
        &served,
        "127.0.0.1",
        "POST",
        "/v1/accounts/_engine/commands/configure_account",
        Some(&op_),
        &[],
        Some(&json!({"id": "t-acct", "command": {"type": "configure_account", "name": "E"}})),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid")), "{body}");
}
