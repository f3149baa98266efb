//! The `convo` binary as a user runs it.

mod access;
mod bad_stream;
mod cluster;
mod contract;
mod crash;
mod dashboard;
mod erasure;
mod fail_closed;
mod fence;
mod offline;
mod postgres;
mod read_contract;
mod readme;
mod seal_stream;
mod supervise;
mod tamper;
mod webhooks;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn convo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_convo")).args(args).output().expect("convo runs")
}

/// Reads one HTTP/1.1 request from `socket` (after what earlier reads left
/// in `buffer`): its head and its body (by `Content-Length`); `None` once the
/// peer closes. The test receivers of webhooks use it.
pub(crate) async fn next_request(socket: &mut tokio::net::TcpStream, buffer: &mut Vec<u8>) -> Option<(String, String)> {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap_or(0);
            if buffer.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&buffer[end + 4..end + 4 + length]).into_owned();
                buffer.drain(..end + 4 + length);
                return Some((head, body));
            }
        }
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

/// Every message of every stream on the server at `url` (KV buckets and
/// object stores are streams too): `stream#seq subject`, headers, payload.
pub(crate) async fn raw_messages(url: &str) -> Vec<(String, String, Vec<u8>)> {
    use futures::StreamExt;
    let client = convo_store::connect_options(url).connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut names = js.stream_names();
    let mut streams = Vec::new();
    while let Some(name) = names.next().await {
        streams.push(name.unwrap());
    }
    let mut out = Vec::new();
    for name in streams {
        let mut stream = js.get_stream(&name).await.unwrap();
        let state = stream.info().await.unwrap().state.clone();
        for seq in state.first_sequence..=state.last_sequence {
            let Ok(message) = stream.get_raw_message(seq).await else { continue };
            let headers = format!("{:?}", message.headers);
            out.push((format!("{name}#{seq} {}", message.subject), headers, message.payload.to_vec()));
        }
    }
    out
}

/// The files under `dir` whose bytes hold `needle`.
pub(crate) fn files_holding(dir: &Path, needle: impl AsRef<[u8]>) -> Vec<String> {
    let needle = needle.as_ref();
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().flatten().map(|e| e.path()));
        } else if meta.is_file() && std::fs::read(&path).unwrap_or_default().windows(needle.len()).any(|w| w == needle)
        {
            out.push(path.display().to_string());
        }
    }
    out
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../replay-fixtures")
}

#[test]
fn simulate_reproduces_every_fixture_byte_for_byte() {
    let mut count = 0;
    for entry in std::fs::read_dir(fixtures()).expect("fixtures") {
        let dir = entry.expect("entry").path();
        if !dir.join("input.jsonl").is_file() {
            continue;
        }
        let out = convo(&["simulate", dir.join("input.jsonl").to_str().unwrap()]);
        assert!(out.status.success(), "{}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
        let expected = std::fs::read(dir.join("expected.jsonl")).expect("expected output");
        assert!(out.stdout == expected, "{}: convo simulate differs from expected.jsonl", dir.display());
        count += 1;
    }
    assert!(count >= 15);
}

/// Retention in virtual time (SPEC §13): `convo simulate --until` and
/// `convo replay-traffic --until` (the real engine, on a nats-server it
/// starts, sealing personal data) agree: 31 days after c1 closed under a
/// 30-day policy its `content_expired` is recorded and c2's (closed 13 days
/// before) is not. Read back from the stream, c1's content reads `[erased]`
/// (its key is gone) and c2's still reads; every other field is the
/// simulator's. Run to the end, both have expired.
#[test]
fn retention_runs_in_virtual_time_through_simulate_and_replay_traffic() {
    let input = fixtures().join("content-retention").join("input.jsonl");
    let input = input.to_str().unwrap();
    let until = "2026-04-02T14:10:00Z";
    let events = |out: Output| -> Vec<serde_json::Value> {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line"))
            .filter(|v| v.get("rejected").is_none())
            .collect()
    };
    let expired = |events: &[serde_json::Value]| -> Vec<String> {
        events.iter().filter(|e| e["type"] == "content_expired").map(|e| e["conversation"].to_string()).collect()
    };
    let simulated = events(convo(&["simulate", input, "--until", until]));
    let replayed = events(convo(&["replay-traffic", input, "--until", until]));
    assert_eq!(expired(&simulated), ["\"c1\""]);
    assert_eq!(replayed.len(), simulated.len());
    let mut erased: Vec<(String, String)> = Vec::new();
    for (mut read, mut decided) in replayed.into_iter().zip(simulated) {
        let fields = convo_wire::personal::PERSONAL_FIELDS
            .iter()
            .find(|(kind, _)| decided["type"] == *kind)
            .map_or(&[][..], |(_, fields)| *fields);
        for field in fields {
            let (was, is) = (decided[*field].take(), read[*field].take());
            if is != was {
                assert_eq!(is, "[erased]", "{field} of {decided}");
                erased.push((decided["conversation"].as_str().unwrap_or_default().to_owned(), (*field).to_owned()));
            }
        }
        assert_eq!(read, decided, "replay-traffic reads the simulator's events");
    }
    assert!(erased.iter().all(|(conversation, _)| conversation == "c1"), "{erased:?}");
    for field in ["text", "contact_name", "value"] {
        assert!(erased.iter().any(|(_, f)| f == field), "c1's {field} reads [erased]: {erased:?}");
    }
    let to_the_end = events(convo(&["replay-traffic", input]));
    assert_eq!(expired(&to_the_end), ["\"c1\"", "\"c2\""]);
}

#[test]
fn a_malformed_line_names_the_line_and_the_field_and_runs_nothing() {
    let dir = tempdir();
    let path = dir.join("bad.jsonl");
    let good = r#"{"at":"2026-03-02T09:00:00Z","command":{"type":"configure_account","name":"Acme"}}"#;
    let bad = r#"{"at":"2026-03-02T09:01:00Z","command":{"type":"define_client","id":"acme","name":"Acme","code":"1","sla_optimal_secs":60,"sla_low_secs":"ninety","max_inactivity_secs":300}}"#;
    std::fs::write(&path, format!("{good}\n# the client\n{bad}\n{good}\n")).unwrap();
    let out = convo(&["simulate", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 3: field `command.sla_low_secs`"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing runs when the scenario is malformed");
}

#[test]
fn random_mode_reports_the_model_verdict_with_the_seed() {
    let out = convo(&["simulate", "--random", "--seed", "5", "--conversations", "400", "--no-events", "--summary"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("seed 5") && stderr.contains("the model agrees"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("SLA responses") && stdout.contains("closures by reason"), "{stdout}");
}

#[test]
fn help_shows_examples() {
    let out = convo(&["simulate", "--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Examples:") && text.contains("--random"), "{text}");
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("convo-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
