//! The access matrix: every principal × every action, over HTTP (the real
//! gateway) and over NATS (the embedded default's real nats-server config),
//! each cell asserted: allowed, or refused with the expected status and code
//! — by the engine, or by the NATS server itself. Then: requests from outside
//! the allowed networks, a forged `X-Forwarded-For`, and an anonymous NATS
//! client trying to publish to the stream, purge it and read an account.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const JWT_KEY: &[u8] = b"the identity provider's shared HS256 key";

/// `convo serve` on its embedded default, killed when dropped.
pub(crate) struct Served {
    pub(crate) child: Child,
    dir: PathBuf,
    pub(crate) http: String,
    pub(crate) engine_url: String,
    pub(crate) public_url: String,
    pub(crate) operator: String,
}

impl Served {
    pub(crate) fn dir_path(&self) -> PathBuf {
        self.dir.clone()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path) -> Served {
    serve_with(dir, &[])
}

/// `convo serve` with more arguments.
pub(crate) fn serve_with(dir: &Path, extra: &[&str]) -> Served {
    std::fs::create_dir_all(dir).unwrap();
    convo_store::launcher::write_private(&dir.join("jwt.key"), JWT_KEY).unwrap();
    let log = std::fs::File::create(dir.join("serve.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_convo"))
        .args(["serve", "--trusted-proxy", "127.0.0.1", "--jwt-issuer", "idp", "--jwt-audience", "convo"])
        .arg("--jwt-key-file")
        .arg(dir.join("jwt.key"))
        .args(extra)
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("convo serve starts");
    let mut served = Served {
        child,
        dir: dir.to_path_buf(),
        http: String::new(),
        engine_url: String::new(),
        public_url: String::new(),
        operator: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok().filter(|s| !s.trim().is_empty());
        let urls = (read("nats-engine.url"), read("nats.url"));
        if let (Some(http), (Some(engine), Some(public)), Some(op)) = (read("http.url"), urls, read("operator.key")) {
            served.engine_url = engine.trim().to_owned();
            served.public_url = public.trim().to_owned();
            assert!(!served.public_url.contains('@'), "nats.url holds the address only: {}", served.public_url);
            served.http = http.trim().trim_start_matches("http://").to_owned();
            served.operator = op.trim().into();
            return served;
        }
        assert!(Instant::now() < deadline, "convo serve did not start: {}", log_of(dir));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A plain GET's body, as text, and its status.
pub(crate) async fn raw(served: &Served, path: &str) -> (String, u16) {
    let mut stream = tokio::net::TcpStream::connect(served.http.as_str()).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).await.unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default(), status)
}

pub(crate) fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
}

/// One HTTP/1.1 request from `source` (a loopback address) to the gateway: status and JSON body.
pub(crate) async fn http(
    served: &Served,
    source: &str,
    method: &str,
    path: &str,
    credential: Option<&str>,
    extra: &[(&str, &str)],
    body: Option<&Value>,
) -> (u16, Value) {
    let (status, _, json) = http_with_head(served, source, method, path, credential, extra, body).await;
    (status, json)
}

/// [`http`], with the response's head (status line and headers) as sent.
pub(crate) async fn http_with_head(
    served: &Served,
    source: &str,
    method: &str,
    path: &str,
    credential: Option<&str>,
    extra: &[(&str, &str)],
    body: Option<&Value>,
) -> (u16, String, Value) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(served.http.parse().unwrap()).await.expect("the gateway accepts");
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", served.http);
    if let Some(c) = credential {
        request.push_str(&format!("Authorization: Bearer {c}\r\n"));
    }
    for (k, v) in extra {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut response)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&response);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let json = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        // Chunked: join the chunks.
        let mut out = String::new();
        let mut rest = rest;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            out.push_str(&tail[..size]);
            rest = &tail[size + 2..];
        }
        out
    } else {
        rest.to_owned()
    };
    (status, head.to_owned(), serde_json::from_str(&json).unwrap_or(Value::Null))
}

/// How a principal reaches NATS.
#[derive(Clone)]
enum Login {
    /// The engine's own user (the operator's tools on this machine use it).
    Engine,
    /// An API key's nkey login: its seed and inbox prefix.
    Nkey(String, String),
    /// No login at all.
    Anonymous,
    /// No NATS login exists for this principal (a JWT from an identity
    /// provider); its commands are relayed by a trusted connection.
    Relayed,
}

#[derive(Clone)]
struct Principal {
    name: &'static str,
    credential: Option<String>,
    login: Login,
}

/// A NATS connection and the server's refusals it received.
struct Nats {
    client: async_nats::Client,
    errors: Arc<Mutex<Vec<String>>>,
}

async fn connect(served: &Served, login: &Login) -> Result<Nats, String> {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let sink = errors.clone();
    let options = match login {
        Login::Engine | Login::Relayed => convo_store::connect_options(&served.engine_url),
        Login::Nkey(seed, inbox) => async_nats::ConnectOptions::with_nkey(seed.clone()).custom_inbox_prefix(inbox),
        Login::Anonymous => async_nats::ConnectOptions::new(),
    };
    let client = options
        .event_callback(move |event| {
            let sink = sink.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    sink.lock().unwrap().push(e.to_string());
                }
            }
        })
        .max_reconnects(0)
        .connection_timeout(Duration::from_secs(3))
        .connect(served.public_url.as_str())
        .await
        .map_err(|e| e.to_string())?;
    Ok(Nats { client, errors })
}

/// What a cell should come to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Allowed (HTTP 200; on NATS, the engine's reply is a success).
    Ok,
    /// Refused by the engine with this status and code.
    No(u16, &'static str),
    /// Refused by the NATS server: the connection, the publish or the subscription.
    Server,
    /// Not served on this transport: nothing answers (the read models are
    /// read over HTTP; on NATS, events are subscribed to).
    NotServed,
    /// Allowed, and the account's redact rules mask the text.
    Masked,
    /// Allowed, and the text reads as written (the `unredacted` scope).
    Clear,
}
use Expect::{Clear, Masked, No, NotServed, Ok as Yes, Server};

/// A card number one of the matrix's conversations carries, which the account's rule masks.
const CARD: &str = "4111 1111 1111 1111";

/// The engine's reply as a status (the gateway's mapping) and code.
fn verdict(status: u16, reply: &Value) -> (u16, String) {
    let code = reply["rule"].as_str().or(reply["code"].as_str()).unwrap_or("").to_owned();
    (status, if status == 200 { String::new() } else { code })
}

fn matches(expect: Expect, got: &(u16, String)) -> bool {
    match expect {
        Yes => got.0 == 200,
        No(status, code) => got.0 == status && got.1 == code,
        Server => got.0 == 0,
        NotServed => got.0 == 503 && got.1 == "no_responders",
        Masked => got.0 == 200 && got.1 == "masked",
        Clear => got.0 == 200 && got.1 == "clear",
    }
}

struct Setup {
    served: Served,
    principals: Vec<Principal>,
}

fn account_settings(networks: &[&str]) -> Value {
    json!({"type":"configure_account","name":"Acme","allowed_networks": networks,
        "regex_rules":[{"name":"card","pattern":"\\b\\d{4}( \\d{4}){3}\\b","redact":true}],
        "typifications":[{"id":"venta","name":"Venta"},{"id":"inactividad","name":"I"},{"id":"transferencia","name":"T"}]})
}

/// Account acme ready for conversations: `settings` (a `configure_account`
/// with the closing typifications), client acme, project p, a 24/7
/// schedule, channel wa, campaign ventas with `agents` (and `users`
/// defined first, each `[id, role]`).
pub(crate) async fn sales_account(served: &Served, settings: Value, users: &[(&str, &str)], agents: &[&str]) {
    let always = json!(["00:00-24:00"]);
    let week = json!({"mon": always, "tue": always, "wed": always, "thu": always, "fri": always, "sat": always, "sun": always});
    let mut commands = vec![
        settings,
        json!({"type":"define_client","id":"acme","name":"Acme","code":"1","sla_optimal_secs":60,"sla_low_secs":180,"max_inactivity_secs":86400,"inactivity_attempts":0}),
        json!({"type":"define_project","id":"p","client":"acme","name":"P"}),
        json!({"type":"define_schedule","id":"always","name":"24/7","time_zone":"UTC","week": week}),
        json!({"type":"define_channel","id":"wa","kind":"whatsapp","external_id":"1"}),
    ];
    for (id, role) in users {
        commands.push(json!({"type":"define_user","id": id,"name": id,"email": format!("{id}@x.co"),"role": role}));
    }
    commands.push(json!({"type":"define_campaign","id":"ventas","client":"acme","project":"p","name":"Ventas","channels":["wa"],"schedule":"always","out_of_hours":{"action":"enqueue"},
        "inactivity_typification":"inactividad","transfer_typification":"transferencia","closing_typifications":["venta"],"agents": agents}));
    for (n, command) in commands.into_iter().enumerate() {
        op(served, "acme", &format!("sales-setup-{n}"), command).await;
    }
}

/// `configure_account` for acme with the typifications [`sales_account`]'s campaign closes with.
pub(crate) fn sales_settings() -> Value {
    json!({"type":"configure_account","name":"Acme","typifications":[{"id":"venta","name":"Venta"},{"id":"inactividad","name":"I"},{"id":"transferencia","name":"T"}]})
}

/// Sends a setup command as the operator, as a client does: a 503 (the
/// partition is still being taken, right after the start) is sent again with
/// the same id, for up to 30 s.
pub(crate) async fn op(served: &Served, account: &str, id: &str, command: Value) -> Value {
    let kind = command["type"].as_str().unwrap().to_owned();
    let body = json!({"id": id, "command": command});
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, reply) = http(
            served,
            "127.0.0.1",
            "POST",
            &format!("/v1/accounts/{account}/commands/{kind}"),
            Some(&served.operator),
            &[],
            Some(&body),
        )
        .await;
        if status == 503 && reply["code"] == "unavailable" && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        assert_eq!(status, 200, "setup {id}: {reply}");
        return reply;
    }
}

async fn setup(dir: &Path) -> Setup {
    let served = serve(dir);
    let always: Value = json!(["00:00-24:00"]);
    let week = json!({"mon": always, "tue": always, "wed": always, "thu": always, "fri": always, "sat": always, "sun": always});
    let commands = vec![
        account_settings(&[]),
        json!({"type":"define_client","id":"acme","name":"Acme","code":"1","sla_optimal_secs":60,"sla_low_secs":180,"max_inactivity_secs":86400,"inactivity_attempts":0}),
        json!({"type":"define_project","id":"p","client":"acme","name":"P"}),
        json!({"type":"define_schedule","id":"always","name":"24/7","time_zone":"UTC","week": week}),
        json!({"type":"define_channel","id":"wa","kind":"whatsapp","external_id":"1"}),
        json!({"type":"define_channel","id":"wa2","kind":"whatsapp","external_id":"2"}),
        json!({"type":"define_user","id":"sara","name":"Sara","email":"s@x.co","role":"admin"}),
        json!({"type":"define_user","id":"sam","name":"Sam","email":"sam@x.co","role":"supervisor"}),
        json!({"type":"define_user","id":"ana","name":"Ana","email":"a@x.co","role":"agent","max_concurrent_conversations":500}),
        json!({"type":"define_user","id":"beto","name":"Beto","email":"b@x.co","role":"agent","max_concurrent_conversations":500}),
        json!({"type":"define_campaign","id":"ventas","client":"acme","project":"p","name":"Ventas","channels":["wa"],"schedule":"always","out_of_hours":{"action":"enqueue"},
            "inactivity_typification":"inactividad","transfer_typification":"transferencia","closing_typifications":["venta"],"agents":["ana","beto","sam"],
            "permissions":{"allow_close_without_reply":true,"allow_agent_transfer":true}}),
        json!({"type":"define_campaign","id":"soporte","client":"acme","project":"p","name":"Soporte","channels":["wa2"],"schedule":"always","out_of_hours":{"action":"enqueue"},
            "inactivity_typification":"inactividad","transfer_typification":"transferencia","closing_typifications":["venta"],"agents":["beto"]}),
    ];
    for (n, command) in commands.into_iter().enumerate() {
        op(&served, "acme", &format!("setup-{n}"), command).await;
    }
    op(&served, "other", "other-1", json!({"type":"configure_account","name":"Other"})).await;
    op(
        &served,
        "other",
        "other-2",
        json!({"type":"define_user","id":"olga","name":"Olga","email":"o@x.co","role":"admin"}),
    )
    .await;
    let issue = |account: &'static str, key: &'static str, rest: Value| {
        let served = &served;
        async move {
            let mut command = json!({"type":"issue_api_key","key": key});
            for (k, v) in rest.as_object().unwrap() {
                command[k] = v.clone();
            }
            let reply = op(served, account, &format!("key-{key}"), command).await;
            let c = &reply["credential"];
            (
                c["token"].as_str().unwrap().to_owned(),
                Login::Nkey(
                    c["nats"]["nkey_seed"].as_str().unwrap().to_owned(),
                    c["nats"]["inbox_prefix"].as_str().unwrap().to_owned(),
                ),
            )
        }
    };
    let (sara, sara_nats) = issue("acme", "sara", json!({"holder":{"user":"sara"}})).await;
    let (sam, sam_nats) = issue("acme", "sam", json!({"holder":{"user":"sam"}})).await;
    let (ana, ana_nats) = issue("acme", "ana", json!({"holder":{"user":"ana"}})).await;
    let everything = json!([
        "configure_account",
        "define_user",
        "assign",
        "send_message",
        "close",
        "transfer",
        "receive_message",
        "erase_contact"
    ]);
    let (crm, crm_nats) = issue(
        "acme",
        "crm",
        json!({"holder":{"integration":"crm"},"scopes":{"commands": everything,"reads":["audit","reports","events"]}}),
    )
    .await;
    let (bare, bare_nats) = issue("acme", "bare", json!({"holder":{"integration":"bare"}})).await;
    let (olga, olga_nats) = issue("other", "olga", json!({"holder":{"user":"olga"}})).await;
    let (old, old_nats) = issue("acme", "ana-old", json!({"holder":{"user":"ana"}})).await;
    let (clear, clear_nats) = issue(
        "acme",
        "crm-clear",
        json!({"holder":{"integration":"crm-clear"},"scopes":{"reads":["audit","unredacted"]}}),
    )
    .await;
    let card = json!({"type":"receive_message","conversation":"c-card","contact":"p-card","channel":"wa",
        "text": format!("mi tarjeta {CARD}")});
    op(&served, "acme", "open-c-card", card).await;
    op(&served, "acme", "revoke-old", json!({"type":"revoke_api_key","key":"ana-old"})).await;
    let expired = convo_engine::access::sign_jwt(
        JWT_KEY,
        &json!({"iss":"idp","aud":"convo","sub":"sara","account":"acme","role":"admin","exp": 1_000_000_000}),
    );
    let p = |name, credential: Option<String>, login| Principal { name, credential, login };
    let principals = vec![
        p("operator", Some(served.operator.clone()), Login::Engine),
        p("admin", Some(sara), sara_nats),
        p("supervisor", Some(sam), sam_nats),
        p("agent", Some(ana), ana_nats),
        p("integration", Some(crm), crm_nats),
        p("integration-unscoped", Some(bare), bare_nats),
        p("other-admin", Some(olga), olga_nats),
        p("none", None, Login::Anonymous),
        p("revoked", Some(old), old_nats),
        p("expired-jwt", Some(expired), Login::Relayed),
        p("integration-unredacted", Some(clear), clear_nats),
    ];
    Setup { served, principals }
}

const ACTIONS: [&str; 15] = [
    "create_account",
    "configure",
    "define_user",
    "assign",
    "reply_own",
    "reply_other",
    "close",
    "transfer",
    "read_audit",
    "read_reports",
    "subscribe_events",
    "read_unredacted",
    "erase_contact",
    "read_contact_export",
    "read_timeline",
];

/// The expected outcome of each cell, by action then principal (in the order of `setup`'s list).
fn expected(action: &str, nats: bool) -> [Expect; 11] {
    const T: Expect = No(403, "tenant");
    const S: Expect = No(403, "scope");
    const U: Expect = No(401, "credential");
    const F: Expect = No(403, "role"); // the domain's role rules
    const R: Expect = No(403, "role");
    // On NATS a key's login publishes only its own account's commands, and
    // nothing without a login connects: the server refuses those cells.
    let n = |http: Expect, on_nats: Expect| if nats { on_nats } else { http };
    match action {
        //                 operator admin        supervisor   agent        integration  unscoped     other-admin  none          revoked       expired-jwt  unredacted
        "create_account" => [
            Yes,
            n(T, Server),
            n(T, Server),
            n(T, Server),
            n(T, Server),
            n(T, Server),
            n(T, Server),
            n(U, Server),
            n(T, Server),
            U,
            n(T, Server),
        ],
        "configure" | "define_user" => [Yes, Yes, F, F, Yes, S, n(T, Server), n(U, Server), n(U, Server), U, S],
        "assign" => [
            No(409, "agent_unavailable"), // the operator acts as the routing rule, which assigns available agents only
            Yes,
            Yes,
            F,
            No(409, "agent_unavailable"),
            S,
            n(T, Server),
            n(U, Server),
            n(U, Server),
            U,
            S,
        ],
        "reply_own" => [F, Yes, Yes, Yes, F, S, n(T, Server), n(U, Server), n(U, Server), U, S],
        "reply_other" => [F, Yes, Yes, No(403, "assignment"), F, S, n(T, Server), n(U, Server), n(U, Server), U, S],
        "close" | "transfer" => [Yes, Yes, Yes, Yes, Yes, S, n(T, Server), n(U, Server), n(U, Server), U, S],
        // The read models are read over HTTP: on NATS nothing answers a read
        // (a key's login may not even publish there).
        // Erasing is an admin's or the operator's, whatever scopes a key holds.
        "erase_contact" => [Yes, Yes, F, F, F, S, n(T, Server), n(U, Server), n(U, Server), U, S],
        "read_audit" | "read_reports" | "read_unredacted" | "read_contact_export" | "read_timeline" if nats => {
            [NotServed, Server, Server, Server, Server, Server, Server, Server, Server, NotServed, Server]
        }
        // Over HTTP, subscribing is reading the feed from a cursor.
        "read_audit" => [Yes, Yes, R, R, Yes, S, T, U, U, U, Yes],
        "subscribe_events" if !nats => [Yes, Yes, R, R, Yes, S, T, U, U, U, S],
        "read_reports" => [Yes, Yes, Yes, R, Yes, S, T, U, U, U, S],
        // A contact's export (subject access): no read scope grants it.
        "read_contact_export" => [Yes, Yes, R, R, S, S, T, U, U, U, S],
        // A conversation's timeline: whoever reads the audit log; a supervisor of its campaign (sam,
        // ventas); an agent whose inbox holds it (queued in ventas, ana's campaign).
        "read_timeline" => [Yes, Yes, Yes, Yes, Yes, S, T, U, U, U, Yes],
        // The card number in the audit log: masked for every reader but a key with the `unredacted` scope.
        "read_unredacted" => [Masked, Masked, R, R, Masked, S, T, U, U, U, Clear],
        // Events on NATS: the operator's tools, admins' keys and integrations with the
        // `events` read scope subscribe to the account's subjects; the server refuses everyone else.
        "subscribe_events" => [Yes, Yes, Server, Server, Yes, Server, Server, Server, Server, Server, Server],
        _ => unreachable!("{action}"),
    }
}

/// A command cell: its request (account, command), after preparing what it needs.
async fn prepare(served: &Served, admin: &str, action: &str, cell: &str) -> (String, Value) {
    let conversation = format!("c-{cell}");
    let open = |assignee: Option<&'static str>| {
        let conversation = conversation.clone();
        async move {
            op(
                served,
                "acme",
                &format!("open-{conversation}"),
                json!({"type":"receive_message","conversation": conversation,
                "contact": format!("p-{conversation}"),"channel":"wa","text":"hola"}),
            )
            .await;
            if let Some(agent) = assignee {
                // Assigned by the admin (a supervisor's manual assignment: no availability needed).
                let body = json!({"id": format!("assign-{conversation}"), "command": {"type":"assign","conversation": conversation,"agent": agent}});
                let path = "/v1/accounts/acme/commands/assign";
                let (status, reply) = http(served, "127.0.0.1", "POST", path, Some(admin), &[], Some(&body)).await;
                assert_eq!(status, 200, "assigning {conversation}: {reply}");
            }
        }
    };
    match action {
        "create_account" => (format!("new-{cell}"), json!({"type":"configure_account","name":"New"})),
        "configure" => ("acme".into(), account_settings(&[])),
        "define_user" => (
            "acme".into(),
            json!({"type":"define_user","id": format!("u-{cell}"),"name":"U","email":"u@x.co","role":"agent"}),
        ),
        "assign" => {
            open(None).await;
            ("acme".into(), json!({"type":"assign","conversation": conversation,"agent":"ana"}))
        }
        "reply_own" | "reply_other" => {
            open(Some(if action == "reply_own" { "ana" } else { "beto" })).await;
            ("acme".into(), json!({"type":"send_message","conversation": conversation,"text":"¿en qué te ayudo?"}))
        }
        "close" => {
            open(Some("ana")).await;
            ("acme".into(), json!({"type":"close","conversation": conversation,"typification":"venta"}))
        }
        "transfer" => {
            open(Some("ana")).await;
            ("acme".into(), json!({"type":"transfer","conversation": conversation,"to":{"campaign":"soporte"}}))
        }
        "erase_contact" => {
            open(None).await;
            ("acme".into(), json!({"type":"erase_contact","contact": format!("p-{conversation}"),"reason":"ticket 42"}))
        }
        _ => unreachable!("{action}"),
    }
}

async fn cell_http(served: &Served, admin: &str, principal: &Principal, action: &str, cell: &str) -> (u16, String) {
    let credential = principal.credential.as_deref();
    let read = |path: &'static str| async move {
        let (status, reply) = http(served, "127.0.0.1", "GET", path, credential, &[], None).await;
        verdict(status, &reply)
    };
    match action {
        "read_audit" => read("/v1/accounts/acme/audit?limit=1").await,
        "read_reports" => read("/v1/accounts/acme/reports/overview").await,
        "read_unredacted" => {
            let path = "/v1/accounts/acme/audit?conversation=c-card";
            let (status, reply) = http(served, "127.0.0.1", "GET", path, credential, &[], None).await;
            let text = reply.to_string();
            match status {
                200 if text.contains(CARD) => (200, "clear".into()),
                200 if text.contains("[redacted:card]") => (200, "masked".into()),
                200 => (200, format!("no card in {text}")),
                _ => verdict(status, &reply),
            }
        }
        "subscribe_events" => read("/v1/accounts/acme/events?limit=1").await,
        "read_contact_export" => read("/v1/accounts/acme/contacts/p-card/export").await,
        "read_timeline" => read("/v1/accounts/acme/conversations/c-card/timeline").await,
        _ => {
            let (account, command) = prepare(served, admin, action, cell).await;
            let kind = command["type"].as_str().unwrap().to_owned();
            let body = json!({"id": format!("cmd-{cell}"), "command": command});
            let path = format!("/v1/accounts/{account}/commands/{kind}");
            let (status, reply) = http(served, "127.0.0.1", "POST", &path, credential, &[], Some(&body)).await;
            verdict(status, &reply)
        }
    }
}

/// A NATS cell: 0 as the status when the server refused (the connection,
/// the publish or the subscription), else the engine's reply mapped as the gateway maps it.
async fn cell_nats(served: &Served, admin: &str, principal: &Principal, action: &str, cell: &str) -> (u16, String) {
    let nats = match connect(served, &principal.login).await {
        Ok(nats) => nats,
        // Only the server's refusal counts (not a timeout on a loaded machine).
        Err(e) if e.to_lowercase().contains("authorization") => return (0, "connection refused".into()),
        Err(e) => return (504, e),
    };
    if action == "subscribe_events" {
        if matches!(principal.login, Login::Relayed) {
            return (0, "no NATS login".into());
        }
        let mut events = nats.client.subscribe("convo.acme.conv.>").await.unwrap();
        nats.client.flush().await.unwrap();
        op(
            served,
            "acme",
            &format!("open-sub-{cell}"),
            json!({"type":"receive_message","conversation": format!("s-{cell}"),
            "contact": format!("p-s-{cell}"),"channel":"wa","text":"hola"}),
        )
        .await;
        return match until_refused(&nats, events.next()).await {
            Some(Some(_)) => (200, String::new()),
            Some(None) => (504, "the subscription ended".into()),
            None if refused(&nats) => (0, "subscription refused".into()),
            None => (504, "no event".into()),
        };
    }
    let (subject, body) = if let Some(what) = action.strip_prefix("read_") {
        (format!("convo.acme.read.{}", what.replace("unredacted", "audit")), String::new())
    } else {
        let (account, command) = prepare(served, admin, action, cell).await;
        let kind = command["type"].as_str().unwrap().to_owned();
        (format!("convo.{account}.cmd.{kind}"), json!({"id": format!("nats-{cell}"), "command": command}).to_string())
    };
    let mut headers = async_nats::HeaderMap::new();
    if let Some(c) = &principal.credential {
        headers.insert(convo_store::bus::AUTHORIZATION, format!("Bearer {c}").as_str());
    }
    let request = nats.client.request_with_headers(subject, headers, body.into());
    match until_refused(&nats, request).await.ok_or(()) {
        Ok(Ok(message)) => {
            let reply: Value = serde_json::from_slice(&message.payload).unwrap_or(Value::Null);
            let status = convo_gateway::status_of(&reply).as_u16();
            verdict(status, &reply)
        }
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => (503, "no_responders".into()),
        _ if refused(&nats) => (0, "publish refused".into()),
        _ => (504, "no reply".into()),
    }
}

/// Whether the server told this connection it may not do something.
fn refused(nats: &Nats) -> bool {
    nats.errors.lock().unwrap().iter().any(|e| e.contains("Permissions Violation"))
}

/// `work`'s result, or `None` as soon as the server refuses something on
/// this connection (or after 5 s).
async fn until_refused<T>(nats: &Nats, work: impl std::future::Future<Output = T>) -> Option<T> {
    let watch = async {
        while !refused(nats) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        out = work => Some(out),
        _ = watch => None,
        _ = tokio::time::sleep(Duration::from_secs(5)) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_principal_and_action_over_http_and_nats() {
    let dir = tempfile::tempdir().unwrap();
    let Setup { served, principals } = setup(dir.path()).await;
    let admin = principals[1].credential.clone().unwrap();
    let mut cells = 0;
    let mut wrong = Vec::new();
    for transport in ["http", "nats"] {
        for action in ACTIONS {
            let expect = expected(action, transport == "nats");
            for (i, principal) in principals.iter().enumerate() {
                let cell = format!("{transport}-{action}-{}", principal.name).replace('_', "-");
                let got = if transport == "http" {
                    cell_http(&served, &admin, principal, action, &cell).await
                } else {
                    cell_nats(&served, &admin, principal, action, &cell).await
                };
                if !matches(expect[i], &got) {
                    wrong.push(format!(
                        "{transport} {action} by {}: expected {:?}, got {got:?}",
                        principal.name, expect[i]
                    ));
                }
                cells += 1;
            }
        }
    }
    assert_eq!(cells, 2 * ACTIONS.len() * principals.len(), "every cell ran");
    assert!(
        wrong.is_empty(),
        "{} of {} cells differ:\n{}\n{}",
        wrong.len(),
        cells,
        wrong.join("\n"),
        log_of(&served.dir)
    );

    // Another account's admin is refused above by permissions, not for lack of a login: on its own account it subscribes.
    let olga = connect(&served, &principals[6].login).await.unwrap();
    let mut own = olga.client.subscribe("convo.other.config.>").await.unwrap();
    olga.client.flush().await.unwrap();
    op(
        &served,
        "other",
        "other-3",
        json!({"type":"define_user","id":"otto","name":"Otto","email":"o2@x.co","role":"agent"}),
    )
    .await;
    let got = tokio::time::timeout(Duration::from_secs(5), own.next()).await;
    assert!(matches!(got, Ok(Some(_))), "olga reads her own account's events: {:?}", olga.errors.lock().unwrap());

    // A reply subject is never a way to make the engine publish elsewhere.
    let js = async_nats::jetstream::new(convo_store::connect(&served.engine_url).await.unwrap());
    let messages = |js: async_nats::jetstream::Context| async move {
        js.get_stream("CONVO").await.unwrap().info().await.unwrap().state.messages
    };
    let before = messages(js.clone()).await;
    let crm = connect(&served, &principals[4].login).await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        convo_store::bus::AUTHORIZATION,
        format!("Bearer {}", principals[4].credential.as_deref().unwrap()).as_str(),
    );
    for target in ["$JS.API.STREAM.PURGE.CONVO", "$JS.API.STREAM.DELETE.CONVO", "convo.other.conv.x.opened"] {
        let body = json!({"id": format!("inject-{target}"), "command": {"type":"define_user","id":"inj","name":"I","email":"i@x.co","role":"agent"}});
        crm.client
            .publish_with_reply_and_headers(
                "convo.acme.cmd.define_user",
                target,
                headers.clone(),
                body.to_string().into(),
            )
            .await
            .unwrap();
    }
    crm.client.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(messages(js.clone()).await >= before, "the stream was neither purged nor deleted");

    // A key's login with full rights elsewhere still cannot touch the stream.
    let crm = connect(&served, &principals[4].login).await.unwrap();
    let purge = crm.client.request("$JS.API.STREAM.PURGE.CONVO", "".into());
    assert!(tokio::time::timeout(Duration::from_secs(3), purge).await.map_or(true, |r| r.is_err()));
    crm.client.publish("convo.acme.conv.forged.opened", "forged".into()).await.unwrap();
    crm.client.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let violations = crm.errors.lock().unwrap().clone();
    assert!(violations.iter().filter(|e| e.contains("Permissions Violation")).count() >= 2, "{violations:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn networks_forwarded_addresses_and_anonymous_nats() {
    let dir = tempfile::tempdir().unwrap();
    let Setup { served, principals } = setup(dir.path()).await;
    let sara = principals[1].credential.clone().unwrap();
    op(&served, "acme", "networks", account_settings(&["127.0.0.1/32"])).await;
    let audit = "/v1/accounts/acme/audit?limit=1";
    // From the trusted proxy (127.0.0.1), for itself: inside.
    let (status, reply) = http(&served, "127.0.0.1", "GET", audit, Some(&sara), &[], None).await;
    assert_eq!(status, 200, "{reply}");
    // The trusted proxy says the client is outside: refused on the real address.
    let outside = [("X-Forwarded-For", "203.0.113.9")];
    let (status, reply) = http(&served, "127.0.0.1", "GET", audit, Some(&sara), &outside, None).await;
    assert_eq!((status, reply["rule"].as_str()), (403, Some("network")), "{reply}");
    // An untrusted peer (127.0.0.2) forging an inside address: its own address counts.
    let forged = [("X-Forwarded-For", "127.0.0.1"), ("Forwarded", "for=127.0.0.1")];
    let (status, reply) = http(&served, "127.0.0.2", "GET", audit, Some(&sara), &forged, None).await;
    assert_eq!((status, reply["rule"].as_str()), (403, Some("network")), "{reply}");
    let body =
        json!({"id":"net-1","command":{"type":"define_user","id":"zed","name":"Z","email":"z@x.co","role":"agent"}});
    let (status, reply) =
        http(&served, "127.0.0.2", "POST", "/v1/accounts/acme/commands/define_user", Some(&sara), &forged, Some(&body))
            .await;
    assert_eq!(status, 403, "a command from outside is refused too: {reply}");
    // The refusals are in the audit log, with the real addresses.
    let (_, log) = http(
        &served,
        "127.0.0.1",
        "GET",
        "/v1/accounts/acme/audit?action=access_denied",
        Some(&served.operator),
        &[],
        None,
    )
    .await;
    let ips: Vec<&str> =
        log["entries"].as_array().unwrap().iter().filter_map(|e| e["details"]["ip"].as_str()).collect();
    assert!(ips.contains(&"203.0.113.9") && ips.contains(&"127.0.0.2"), "{log}");
    // The command refused for its network is recorded as the reads are: who, from where, what, which rule.
    let command = log["entries"].as_array().unwrap().iter().find(|e| e["details"]["action"] == "define_user");
    let command = command.unwrap_or_else(|| panic!("the refused command is not in the audit log: {log}"));
    assert_eq!(
        (&command["details"]["ip"], &command["details"]["rule"], &command["details"]["principal"]),
        (&json!("127.0.0.2"), &json!("network"), &json!("user:sara")),
        "{command}"
    );

    // A reply subject in another tenant's inbox: nothing is sent there; the attempt is recorded and counted.
    let olga = connect(&served, &principals[6].login).await.unwrap();
    let mut inbox = olga.client.subscribe("_INBOX.other.olga.>").await.unwrap();
    olga.client.flush().await.unwrap();
    let crm = connect(&served, &principals[4].login).await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        convo_store::bus::AUTHORIZATION,
        format!("Bearer {}", principals[4].credential.as_deref().unwrap()).as_str(),
    );
    let body = json!({"id": "push-1", "command": {"type":"define_user","id":"push","name":"P","email":"p@x.co","role":"agent"}});
    crm.client
        .publish_with_reply_and_headers(
            "convo.acme.cmd.define_user",
            "_INBOX.other.olga.x",
            headers,
            body.to_string().into(),
        )
        .await
        .unwrap();
    crm.client.flush().await.unwrap();
    let pushed = tokio::time::timeout(Duration::from_secs(2), inbox.next()).await;
    assert!(pushed.is_err(), "the engine answered into another tenant's inbox: {pushed:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, log) = http(
            &served,
            "127.0.0.1",
            "GET",
            "/v1/accounts/acme/audit?action=access_denied",
            Some(&served.operator),
            &[],
            None,
        )
        .await;
        let entries = log["entries"].as_array().cloned().unwrap_or_default();
        if entries
            .iter()
            .any(|e| e["details"]["rule"] == "reply_subject" && e["details"]["principal"] == "integration:crm")
        {
            break;
        }
        assert!(Instant::now() < deadline, "the refused reply subject is not in the audit log: {log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // /metrics counts every request by outcome, those refused at the door by rule.
    let (metrics, _) = raw(&served, "/metrics").await;
    for line in [
        "convo_door_refusals_total{rule=\"reply_subject\"} 1",
        "convo_door_refusals_total{rule=\"network\"}",
        "convo_requests_total{transport=\"http\",kind=\"read\",outcome=\"refused\"}",
        "convo_requests_total{transport=\"nats\",kind=\"command\",outcome=\"refused\"}",
        "convo_http_responses_total{route=\"/v1/accounts/{account}/audit\",status=\"403\"}",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }

    // An anonymous NATS client cannot even connect: no publish to the stream,
    // no purge, no reading any account's subjects.
    assert!(connect(&served, &Login::Anonymous).await.is_err(), "anonymous NATS access is refused");
    let wrong_password = served.engine_url.replacen("convo-engine:", "convo-engine:x", 1);
    assert!(convo_store::connect(&wrong_password).await.is_err(), "a wrong password is refused");
    // With networks limited, an admin's key no longer subscribes over NATS (NATS does not say where it is).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sara_nats = connect(&served, &principals[1].login).await.unwrap();
        let _events = sara_nats.client.subscribe("convo.acme.conv.>").await.unwrap();
        sara_nats.client.flush().await.unwrap();
        if until_refused(&sara_nats, tokio::time::sleep(Duration::from_millis(500))).await.is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "the admin's login kept its subscription despite the networks");
    }
    // What the embedded server was given is what `convo nats-config` prints for an own cluster.
    let printed = Command::new(env!("CARGO_BIN_EXE_convo"))
        .args(["nats-config", "--data-dir"])
        .arg(&served.dir)
        .output()
        .unwrap();
    assert!(printed.status.success(), "{}", String::from_utf8_lossy(&printed.stderr));
    let printed = String::from_utf8_lossy(&printed.stdout);
    let running = std::fs::read_to_string(served.dir.join("nats/nats-server.conf")).unwrap();
    let logins: Vec<&str> = running.lines().filter(|l| l.contains("nkey:")).collect();
    assert_eq!(logins.len(), 7, "seven live keys (ana-old was revoked): {running}");
    for login in logins {
        assert!(printed.contains(login.trim()), "{login} in:\n{printed}");
    }
    assert!(printed.contains("password: $CONVO_ENGINE_PASSWORD") && !printed.contains("ana-old"), "{printed}");
    assert!(printed.contains("sync_interval: always"), "nats-config says what durability needs: {printed}");
    // The stream still holds everything (nothing purged it).
    let store =
        convo_store::JetStreamStore::connect(&served.engine_url, convo_store::StoreConfig::default()).await.unwrap();
    assert!(convo_store::EventStore::last_seq(&store).await.unwrap() > 20);
}
