//! The data-driven loop: each folder of `replay-fixtures/` holds a scenario
//! (`input.jsonl`) and the exact output it must give (`expected.jsonl`).
//! Adding a case is adding a folder. `UPDATE_FIXTURES=1` rewrites the expected
//! files (review the diff before committing it).

use std::path::{Path, PathBuf};

use convo_sim::{Scripted, output, scenario};

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../replay-fixtures")
}

/// Runs a scenario file and returns the output, as `convo simulate` prints it.
pub fn simulate(input: &Path) -> String {
    let text = std::fs::read_to_string(input).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
    let inputs = scenario::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
    let mut out = String::new();
    convo_sim::run(&mut Scripted::new(inputs), None, |step| {
        for record in step.records {
            out.push_str(&output::to_line(record));
            out.push('\n');
        }
    });
    out
}

fn check(dir: &Path) -> Result<(), String> {
    let actual = simulate(&dir.join("input.jsonl"));
    let expected_path = dir.join("expected.jsonl");
    if std::env::var_os("UPDATE_FIXTURES").is_some() {
        std::fs::write(&expected_path, &actual).expect("writable fixture");
        return Ok(());
    }
    let expected = std::fs::read_to_string(&expected_path).map_err(|e| format!("{}: {e}", expected_path.display()))?;
    if actual == expected {
        return Ok(());
    }
    let (a, e): (Vec<&str>, Vec<&str>) = (actual.lines().collect(), expected.lines().collect());
    let line = a.iter().zip(&e).position(|(x, y)| x != y).unwrap_or(a.len().min(e.len()));
    Err(format!(
        "{}: output differs at line {} ({} lines, expected {})\n  expected: {}\n  actual:   {}",
        dir.display(),
        line + 1,
        a.len(),
        e.len(),
        e.get(line).unwrap_or(&"<end>"),
        a.get(line).unwrap_or(&"<end>")
    ))
}

#[test]
fn every_fixture_reproduces_its_expected_events_byte_for_byte() {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .expect("replay-fixtures exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("input.jsonl").is_file())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 15, "the fixtures cover SPEC §5 with at least 15 scenarios, found {}", dirs.len());
    let failures: Vec<String> = dirs.iter().filter_map(|d| check(d).err()).collect();
    assert!(failures.is_empty(), "{} of {} fixtures differ:\n{}", failures.len(), dirs.len(), failures.join("\n"));
}

fn events(dir: &str) -> Vec<serde_json::Value> {
    simulate(&fixtures_dir().join(dir).join("input.jsonl"))
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

fn of_type<'a>(events: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

#[test]
fn the_spec_sla_example_gives_a_low_then_an_optimal_response() {
    let events = events("sla-worked-example");
    let responses = of_type(&events, "response_recorded");
    assert_eq!(responses.len(), 2);
    assert_eq!((responses[0]["response_secs"].as_u64(), responses[0]["class"].as_str()), (Some(100), Some("low")));
    assert_eq!((responses[1]["response_secs"].as_u64(), responses[1]["class"].as_str()), (Some(50), Some("optimal")));
    // The second wait started at t=200 (t=0 is 14:00:00Z).
    assert_eq!(responses[1]["wait_started_at"], "2026-03-02T14:03:20Z");
    // A single optimal crossing, at t=60, in the first wait; nothing else crossed.
    let crossings = of_type(&events, "sla_threshold_crossed");
    assert_eq!(crossings.len(), 1);
    assert_eq!(
        (crossings[0]["threshold"].as_str(), crossings[0]["at"].as_str()),
        (Some("optimal"), Some("2026-03-02T14:01:00Z"))
    );
}

/// SPEC §5's business-hours example (Mon-Fri 08:00-18:00 in Bogota, 60 s /
/// 3600 s): Friday 17:50 crosses optimal at 17:51 and low Monday 08:50; a
/// reply Monday 08:10 is 1200 s, `low`; a lunch break and a holiday pause it.
#[test]
fn business_hours_sla_counts_open_seconds_only() {
    let events = events("sla-business-hours");
    let crossings: Vec<(String, &str, &str)> = of_type(&events, "sla_threshold_crossed")
        .iter()
        .map(|e| {
            (
                e["conversation"].as_str().unwrap().to_owned(),
                e["threshold"].as_str().unwrap(),
                e["at"].as_str().unwrap(),
            )
        })
        .collect();
    let expected = [
        ("c1", "optimal", "2026-03-06T22:51:00Z"),
        ("c2", "optimal", "2026-03-06T22:51:00Z"),
        ("c2", "low", "2026-03-09T13:50:00Z"),
        ("c4", "optimal", "2026-03-16T13:00:30Z"),
        ("c4", "low", "2026-03-16T13:59:30Z"),
    ];
    let expected: Vec<(String, &str, &str)> = expected.iter().map(|(c, t, a)| (c.to_string(), *t, *a)).collect();
    assert_eq!(crossings, expected);
    let responses: Vec<(u64, &str)> = of_type(&events, "response_recorded")
        .iter()
        .map(|e| (e["response_secs"].as_u64().unwrap(), e["class"].as_str().unwrap()))
        .collect();
    assert_eq!(responses, [(1200, "low"), (4200, "breached"), (50, "optimal"), (4230, "breached")]);
}

#[test]
fn inactivity_with_two_attempts_warns_twice_then_closes_at_three_periods() {
    let events = events("inactivity-two-attempts");
    let warnings: Vec<_> =
        of_type(&events, "inactivity_warning_sent").iter().map(|e| e["at"].as_str().unwrap().to_owned()).collect();
    assert_eq!(warnings, ["2026-03-02T14:05:00Z", "2026-03-02T14:10:00Z"]);
    let closed = of_type(&events, "conversation_closed");
    assert_eq!(
        (closed[0]["at"].as_str(), closed[0]["reason"].as_str()),
        (Some("2026-03-02T14:15:00Z"), Some("inactivity"))
    );
    let reset = events_of("inactivity-reply-resets", "inactivity_warning_sent");
    assert_eq!(
        reset,
        ["2026-03-02T14:05:00Z", "2026-03-02T14:12:30Z", "2026-03-02T14:17:30Z"],
        "the reply resets the count: next due at 750 s"
    );
}

fn events_of(dir: &str, kind: &str) -> Vec<String> {
    of_type(&events(dir), kind).iter().map(|e| e["at"].as_str().unwrap().to_owned()).collect()
}

/// The scenario format's documentation shows every command, and every example
/// in it is a valid scenario line.
#[test]
fn the_scenario_readme_shows_a_valid_example_of_every_command() {
    let readme = std::fs::read_to_string(fixtures_dir().join("README.md")).expect("replay-fixtures/README.md");
    // Scenario lines are the ```json blocks; output samples use plain fences.
    let mut in_json = false;
    let examples: Vec<&str> = readme
        .lines()
        .filter(|l| {
            if l.starts_with("```") {
                in_json = *l == "```json";
                return false;
            }
            in_json
        })
        .collect();
    assert!(examples.len() >= 28, "found {} examples", examples.len());
    let mut seen = std::collections::BTreeSet::new();
    for (n, line) in examples.iter().enumerate() {
        let input =
            scenario::parse_line(line, n + 1).unwrap_or_else(|e| panic!("README example {}: {e}\n{line}", n + 1));
        seen.insert(input.envelope.command.type_name());
    }
    for kind in convo_domain::Command::TYPE_NAMES.iter().filter(|k| !ACCESS_COMMANDS.contains(k)) {
        assert!(seen.contains(kind), "replay-fixtures/README.md has no example of `{kind}`");
    }
}

/// Every command type a scenario uses: all of them but the access commands
/// (keys and denied attempts), which the README's quick start shows instead.
const ACCESS_COMMANDS: [&str; 4] = ["issue_api_key", "revoke_api_key", "record_denied", "record_read"];

/// Automations that add much to one commit stop before it outgrows what a
/// commit may hold: two that answer each other's labels with long messages
/// stop on the `events` bound, and the agent's command still applies.
#[test]
fn automations_stop_before_a_commit_outgrows_its_limits() {
    let loop_input = std::fs::read_to_string(fixtures_dir().join("automation-loop").join("input.jsonl")).unwrap();
    let long = "a".repeat(4000);
    let messages: Vec<serde_json::Value> = (0..18).map(|_| serde_json::json!({"send_message": long})).collect();
    let mut text = String::new();
    for line in loop_input.lines() {
        let mut line = line.to_owned();
        if line.contains("\"define_automation\"") {
            let mut v: serde_json::Value = serde_json::from_str(&line).unwrap();
            v["command"]["actions"].as_array_mut().unwrap().extend(messages.clone());
            line = v.to_string();
        }
        text.push_str(&line);
        text.push('\n');
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("input.jsonl");
    std::fs::write(&path, text).unwrap();
    let events: Vec<serde_json::Value> = simulate(&path).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let stopped = of_type(&events, "automations_stopped");
    assert_eq!(stopped.len(), 1);
    assert_eq!(stopped[0]["bound"], "events");
    let added: Vec<_> = events.iter().filter(|e| e["command"] == "add-x").collect();
    assert!(added.len() < 1024, "{} events in the commit", added.len());
    let bytes: usize = added.iter().map(|e| e.to_string().len()).sum();
    assert!(bytes < 512 * 1024, "{bytes} bytes");
}
