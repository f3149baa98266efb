//! The SQL projection against a real PostgreSQL the harness starts on a free
//! loopback port: the day of traffic projected by `convo serve --postgres`,
//! killed with SIGKILL mid catch-up and restarted, compared by SQL with the
//! HTTP reports, then rebuilt by `convo project postgres --rebuild`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::access::{Served, http, http_with_head, serve_with};
use super::dashboard::{replay_fixture, until_ready};

/// The test's own PostgreSQL (started, and answering).
async fn postgres() -> (convo_sql::launcher::PgServer, tokio_postgres::Client) {
    let pg = convo_sql::launcher::PgServer::start().unwrap_or_else(|e| panic!("{e}"));
    let client = pg.client().await.unwrap_or_else(|e| panic!("{e}"));
    (pg, client)
}

/// Every row of every table of the projection, as JSON text, sorted.
async fn dump(db: &tokio_postgres::Client) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for table in convo_sql::table_names() {
        let rows =
            db.query(&format!("SELECT row_to_json(t)::text FROM convo.{table} t ORDER BY 1"), &[]).await.unwrap();
        out.push((table.to_owned(), rows.iter().map(|r| r.get::<_, String>(0)).collect()));
    }
    out
}

async fn checkpoint(db: &tokio_postgres::Client) -> Option<i64> {
    db.query_opt("SELECT seq FROM convo.checkpoint", &[]).await.ok().flatten().map(|r| r.get(0))
}

/// The stream's end as a read tells it (`Convo-Stream-End`).
async fn stream_end(served: &Served) -> i64 {
    let (status, head, _) = http_with_head(
        served,
        "127.0.0.1",
        "GET",
        "/v1/accounts/default/reports/sla",
        Some(&served.operator),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 200, "{head}");
    head.lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("convo-stream-end:").map(|v| v.trim().parse().unwrap()))
        .expect("every read says where the stream ends")
}

async fn report(served: &Served, path: &str) -> Vec<Value> {
    let (status, body) = http(
        served,
        "127.0.0.1",
        "GET",
        &format!("/v1/accounts/default/reports/{path}"),
        Some(&served.operator),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["rows"].as_array().unwrap().clone()
}

fn n(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

/// A campaign's bucket and three of its figures.
type Figures = (String, String, i64, i64, i64);

/// Report rows (by campaign) as [`Figures`] of the three named columns.
fn figures(rows: &[Value], [a, b, c]: [&str; 3]) -> Vec<Figures> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    rows.iter().map(|r| (text(&r["campaign"]), text(&r["bucket"]), n(&r[a]), n(&r[b]), n(&r[c]))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sql_projection_equals_the_http_reports_through_a_kill_and_a_rebuild() {
    let (pg, db) = postgres().await;
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    replay_fixture(dir, "day-of-traffic");
    let url = pg.url();
    let password = pg.password_file.to_str().unwrap().to_owned();
    let postgres = ["--postgres", &url, "--postgres-password-file", &password];

    // Small transactions, so SIGKILL lands in the middle of the catch-up.
    let mut args = vec!["--prefix", "replay", "--postgres-batch-commits", "20"];
    args.extend(postgres);
    let mut served = serve_with(dir, &args);
    let deadline = Instant::now() + Duration::from_secs(60);
    let at_kill = loop {
        if let Some(seq) = checkpoint(&db).await.filter(|seq| *seq > 0) {
            served.child.kill().unwrap();
            served.child.wait().unwrap();
            break checkpoint(&db).await.unwrap().max(seq);
        }
        assert!(Instant::now() < deadline, "the projection never wrote a batch");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    drop(served);
    std::fs::remove_file(dir.join("http.url")).unwrap(); // the killed server's, stale

    // Restarted: it goes on from its checkpoint.
    let mut args = vec!["--prefix", "replay"];
    args.extend(postgres);
    let mut served = serve_with(dir, &args);
    until_ready(&served).await;
    let end = stream_end(&served).await;
    assert!(at_kill < end, "killed mid catch-up: at {at_kill} of {end}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while checkpoint(&db).await.unwrap_or(0) < end {
        assert!(Instant::now() < deadline, "the projection never caught up: {:?} of {end}", checkpoint(&db).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // SLA per campaign per hour and per day, by SQL, equal the HTTP reports.
    for (period, view, label) in [("hour", "sla_by_campaign_hour", "hour"), ("day", "sla_by_campaign_day", "day")] {
        let http: Vec<Figures> = figures(
            &report(&served, &format!("sla?by=campaign&period={period}")).await,
            ["sla_optimal", "sla_low", "sla_breached"],
        )
        .into_iter()
        .filter(|(_, _, o, l, b)| o + l + b > 0)
        .collect();
        let sql: Vec<Figures> = db
            .query(
                &format!(
                    "SELECT campaign, {label}, sla_optimal, sla_low, sla_breached FROM convo.{view} \
                     WHERE account = 'default' ORDER BY 1, 2"
                ),
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect();
        assert!(http.len() >= if period == "hour" { 20 } else { 3 }, "{period}: the day has SLA figures: {http:?}");
        assert_eq!(sql, http, "SLA by campaign and {period}");
    }
    // First response: count and p50/p90 per campaign and hour (the HTTP
    // percentiles are exact below 1000 s, three significant digits above).
    let http: Vec<Figures> =
        figures(&report(&served, "times?by=campaign&period=hour").await, ["frt_count", "frt_p50_secs", "frt_p90_secs"])
            .into_iter()
            .filter(|(_, _, count, _, _)| *count > 0)
            .collect();
    let sql: Vec<Figures> = db
        .query(
            "SELECT campaign, hour, frt_count, frt_p50_secs, frt_p90_secs FROM convo.first_response_by_campaign_hour \
             WHERE account = 'default' ORDER BY 1, 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let bucket = |v: i64| convo_reports::value_bucket(v as u64) as i64;
            (r.get(0), r.get(1), r.get(2), bucket(r.get(3)), bucket(r.get(4)))
        })
        .collect();
    assert!(!http.is_empty());
    assert_eq!(sql, http, "first response by campaign and hour");
    // No row twice: as many responses and closures as the reports count.
    let totals = &report(&served, "overview?by=account&period=day").await;
    let (rt, closed): (i64, i64) =
        totals.iter().fold((0, 0), |(rt, c), r| (rt + n(&r["rt_count"]), c + n(&r["closed"])));
    let count = |table: &'static str| {
        let db = &db;
        async move { db.query_one(&format!("SELECT count(*) FROM convo.{table}"), &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(count("responses").await, rt);
    assert_eq!(count("closures").await, closed);
    assert!(count("segments").await > 0 && count("agent_states").await > 0 && count("transfers").await > 0);
    assert_eq!(count("dead_letters").await, 0);

    let pid = served.child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    served.child.wait().unwrap();
    drop(served);
    let followed = dump(&db).await;

    // A rebuild into a fresh schema, swapped in: the same rows.
    let out = Command::new(env!("CARGO_BIN_EXE_convo"))
        .args(["project", "postgres", "--prefix", "replay", "--rebuild"])
        .args(postgres)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "project postgres --rebuild: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("rebuilt and swapped in"));
    let rebuilt = dump(&db).await;
    for ((table, a), (_, b)) in followed.iter().zip(&rebuilt) {
        assert_eq!(a.len(), b.len(), "{table}: as many rows after the rebuild");
        assert_eq!(a, b, "{table}: the same rows after the rebuild");
    }
    let schemas: i64 =
        db.query_one("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'convo%'", &[]).await.unwrap().get(0);
    assert_eq!(schemas, 1, "the old schema is gone, the fresh one renamed");
}

/// A setting that would open a door stops `convo serve` with a message:
/// a password in the URL, a server off this machine, a wrong password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_postgres_setting_stops_the_server_naming_it() {
    let (pg, _db) = postgres().await;
    let temp = tempfile::tempdir().unwrap();
    let wrong = temp.path().join("wrong.pass");
    convo_store::launcher::write_private(&wrong, b"not-the-password").unwrap();
    let password = std::fs::read_to_string(&pg.password_file).unwrap();
    let in_url = pg.url().replace("convo@", &format!("convo:{password}@"));
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--postgres".into(), in_url], "--postgres-password-file"),
        (vec!["--postgres".into(), "postgres://convo@db.example.com/postgres".into()], "without TLS"),
        (
            vec!["--postgres".into(), pg.url(), "--postgres-password-file".into(), wrong.display().to_string()],
            "password authentication failed",
        ),
    ];
    for (i, (args, says)) in cases.into_iter().enumerate() {
        let dir = temp.path().join(format!("d{i}"));
        let out = Command::new(env!("CARGO_BIN_EXE_convo"))
            .arg("serve")
            .args(&args)
            .arg("--data-dir")
            .arg(&dir)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} refused");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!stderr.contains(&password), "the password is never printed: {stderr}");
    }
}

async fn attributes(db: &tokio_postgres::Client) -> Vec<(String, String, String)> {
    let rows = db.query("SELECT contact, name, value FROM convo.contact_attributes ORDER BY 1, 2", &[]).await.unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect()
}

/// Contact attributes reach SQL opened and masked by the account's
/// redaction rules, and go when the contact is erased; no name or handle
/// is written anywhere. The README's example queries run as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_attributes_are_masked_and_erased_in_sql() {
    use serde_json::json;

    use super::access::op;
    let (pg, db) = postgres().await;
    let temp = tempfile::tempdir().unwrap();
    let password = pg.password_file.to_str().unwrap().to_owned();
    let url = pg.url();
    let served = serve_with(temp.path(), &["--postgres", &url, "--postgres-password-file", &password]);
    until_ready(&served).await;
    let rules = json!([{"name": "document", "pattern": "\\d{6,}", "redact": true}]);
    op(&served, "acme", "a1", json!({"type": "configure_account", "name": "Acme", "regex_rules": rules})).await;
    let channel = json!({"type": "define_channel", "id": "wa", "kind": "whatsapp", "external_id": "+573001234567"});
    op(&served, "acme", "a4", channel).await;
    for (id, name) in [("a2", "segment"), ("a3", "document")] {
        op(&served, "acme", id, json!({"type": "define_contact_attribute", "name": name, "kind": "text"})).await;
    }
    let contact = json!({
        "type": "define_contact", "id": "ct-1", "name": "Camila Rojas",
        "identities": [{"channel": "wa", "handle": "+573001112233"}],
        "attributes": {"segment": "gold", "document": "CC 1020304050"},
    });
    op(&served, "acme", "c1", contact).await;
    let kept = json!({"type": "define_contact", "id": "ct-2", "name": "Kept", "attributes": {"segment": "silver"}});
    op(&served, "acme", "c2", kept).await;
    let wanted = vec![
        ("ct-1".to_owned(), "document".to_owned(), "CC [redacted:document]".to_owned()),
        ("ct-1".to_owned(), "segment".to_owned(), "gold".to_owned()),
        ("ct-2".to_owned(), "segment".to_owned(), "silver".to_owned()),
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    while attributes(&db).await != wanted {
        assert!(Instant::now() < deadline, "attributes in SQL: {:?}", attributes(&db).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let erase = json!({"type": "erase_contact", "contact": "ct-1", "reason": "the holder asked"});
    op(&served, "acme", "e1", erase).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let erased = db.query("SELECT contact FROM convo.contacts_erased", &[]).await.unwrap();
        if erased.len() == 1 {
            assert_eq!(erased[0].get::<_, String>(0), "ct-1");
            break;
        }
        assert!(Instant::now() < deadline, "the erasure never reached SQL");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(attributes(&db).await, wanted[2..].to_vec(), "the erased contact's attributes are gone");
    let everything: String = dump(&db).await.iter().flat_map(|(_, rows)| rows.iter().cloned()).collect();
    for personal in ["Camila", "3001112233", "1020304050", "Kept", "the holder asked"] {
        assert!(!everything.contains(personal), "{personal} is nowhere in SQL");
    }

    // The README's example queries run as written.
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap();
    let block = readme.split("```sql\n").nth(1).and_then(|b| b.split("```").next()).expect("the README's SQL");
    let queries: Vec<&str> =
        block.split(';').map(str::trim).filter(|q| q.lines().any(|l| !l.starts_with("--"))).collect();
    assert_eq!(queries.len(), 3, "three example queries");
    for query in queries {
        db.query(query, &[]).await.unwrap_or_else(|e| panic!("{query}: {e}"));
    }
}
