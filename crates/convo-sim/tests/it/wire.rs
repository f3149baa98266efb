//! What crosses the wire, for every commit the fixtures produce: postcard
//! round trips, the JSON view (what `convo simulate` prints), subjects and
//! headers, and typed refusals of bad payloads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use convo_sim::{Record, Scripted, scenario};
use convo_wire::{Commit, SCHEMA_VERSION, StreamRef, WireError, decode};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every commit of every fixture, as the engine will append it.
fn fixture_commits() -> Vec<Commit> {
    let mut commits = Vec::new();
    for entry in std::fs::read_dir(repo().join("replay-fixtures")).expect("fixtures") {
        let dir = entry.expect("entry").path();
        let Ok(text) = std::fs::read_to_string(dir.join("input.jsonl")) else { continue };
        let inputs = scenario::parse(&text).expect("fixtures parse");
        commits.extend(commits_of(&mut Scripted::new(inputs)));
    }
    commits
}

/// The commits a run of `source` makes.
fn commits_of(source: &mut dyn convo_sim::Driver) -> Vec<Commit> {
    let mut commits = Vec::new();
    {
        convo_sim::run(source, None, |step| {
            let mut groups: Vec<(StreamRef, Vec<&Record>)> = Vec::new();
            for record in step.records {
                let stream = match record {
                    Record::Conversation { conversation, .. } => StreamRef::Conversation(conversation.clone()),
                    Record::Agent { agent, .. } => StreamRef::Agent(agent.clone()),
                    Record::Config { .. } => StreamRef::Catalog,
                    _ => continue,
                };
                match groups.last_mut() {
                    Some((s, rs)) if *s == stream && same_command(rs[0], record) => rs.push(record),
                    _ => groups.push((stream, vec![record])),
                }
            }
            for (stream, records) in groups {
                commits.push(commit_of(stream, &records));
            }
        });
    }
    commits
}

fn same_command(a: &Record, b: &Record) -> bool {
    let command = |r: &Record| match r {
        Record::Conversation { record, .. } => Some(record.command.clone()),
        Record::Agent { record, .. } => Some(record.command.clone()),
        Record::Config { record, .. } => Some(record.command.clone()),
        _ => None,
    };
    command(a) == command(b)
}

fn commit_of(stream: StreamRef, records: &[&Record]) -> Commit {
    match records[0] {
        Record::Conversation { account, .. } => {
            let rs = records
                .iter()
                .filter_map(|r| if let Record::Conversation { record, .. } = r { Some(record.clone()) } else { None })
                .collect();
            Commit::new(account, stream, None, rs).expect("a commit")
        }
        Record::Agent { account, .. } => {
            let rs = records
                .iter()
                .filter_map(|r| if let Record::Agent { record, .. } = r { Some(record.clone()) } else { None })
                .collect();
            Commit::new(account, stream, None, rs).expect("a commit")
        }
        Record::Config { account, .. } => {
            let rs = records
                .iter()
                .filter_map(|r| if let Record::Config { record, .. } = r { Some(record.clone()) } else { None })
                .collect();
            Commit::new(account, stream, None, rs).expect("a commit")
        }
        _ => unreachable!("only events are grouped"),
    }
}

#[test]
fn every_fixture_commit_round_trips_through_postcard_and_keeps_its_json_view() {
    let commits = fixture_commits();
    assert!(commits.len() > 1000, "the fixtures hold many commits");
    let mut kinds = std::collections::BTreeSet::new();
    for commit in &commits {
        let bytes = commit.encode().expect("encodes");
        let back = decode(SCHEMA_VERSION, &bytes).expect("decodes");
        assert_eq!(&back, commit);
        assert_eq!(back.json_lines(), commit.json_lines());
        kinds.insert(commit.subject("convo").rsplit('.').next().unwrap().to_owned());
        for (envelope, _) in commit.envelopes() {
            assert_eq!(envelope.schema_version, SCHEMA_VERSION);
        }
    }
    for kind in [
        "opened",
        "closed",
        "transferred",
        "assigned",
        "message",
        "survey",
        "field",
        "label",
        "timer",
        "state",
        "campaign",
    ] {
        assert!(kinds.contains(kind), "no commit of kind {kind}");
    }
}

/// The CloudEvents the feeds, the JSON stream and webhooks send are written
/// straight from the typed commit: the same bytes as the `Value` view, for
/// every event the fixtures and a random day make.
#[test]
fn every_events_typed_cloud_event_json_is_the_bytes_of_its_value_view() {
    let mut commits = fixture_commits();
    commits.extend(commits_of(&mut convo_sim::workload::RandomDay::new(11, 300)));
    let mut types = std::collections::BTreeSet::new();
    for (n, commit) in commits.iter().enumerate() {
        let typed = commit.cloud_events_json("convo", n as u64 + 1);
        let values = commit.cloud_events("convo", n as u64 + 1);
        assert_eq!(typed.len(), values.len());
        for ((typed, value), e) in typed.iter().zip(&values).zip(&commit.events) {
            assert_eq!(
                String::from_utf8_lossy(&typed.json),
                serde_json::to_string(value).unwrap(),
                "event {} of {}",
                e.seq,
                commit.stream.path()
            );
            assert_eq!(typed.id, value["id"].as_str().unwrap());
            assert_eq!(typed.event_type, e.event.type_name());
            types.insert(typed.event_type);
        }
    }
    assert!(types.len() >= 25, "most event types are covered: {types:?}");
}

#[test]
fn the_json_view_of_a_commit_is_what_convo_simulate_prints() {
    let dir = repo().join("replay-fixtures/sla-worked-example");
    let inputs = scenario::parse(&std::fs::read_to_string(dir.join("input.jsonl")).unwrap()).unwrap();
    let mut printed = Vec::new();
    let mut viewed = Vec::new();
    convo_sim::run(&mut Scripted::new(inputs), None, |step| {
        for r in step.records {
            if let Record::Conversation { account, conversation, record } = r {
                printed.push(convo_sim::output::to_value(r));
                let c = Commit::new(account, StreamRef::Conversation(conversation.clone()), None, vec![record.clone()])
                    .unwrap();
                viewed.extend(c.json_lines());
            }
        }
    });
    assert_eq!(printed, viewed);
}

#[test]
fn bad_payloads_get_typed_errors() {
    let commit = fixture_commits().into_iter().next().expect("a commit");
    let bytes = commit.encode().unwrap();
    assert_eq!(decode(SCHEMA_VERSION + 1, &bytes), Err(WireError::UnknownVersion { found: SCHEMA_VERSION + 1 }));
    assert!(matches!(decode(SCHEMA_VERSION, &bytes[..bytes.len() / 2]), Err(WireError::Malformed { .. })));
    assert!(matches!(decode(SCHEMA_VERSION, &[0xff; 16]), Err(WireError::Malformed { .. })));
    let huge = vec![0u8; convo_wire::COMMIT_BYTES_MAX + 1];
    assert!(matches!(decode(SCHEMA_VERSION, &huge), Err(WireError::TooLarge { .. })));
    assert_eq!(convo_wire::parse_version(Some("x")), Err(WireError::Header(convo_wire::headers::SCHEMA)));
    let empty: Vec<convo_domain::Recorded<convo_domain::ConversationEvent>> = Vec::new();
    assert_eq!(Commit::new(&commit.account, commit.stream.clone(), None, empty).unwrap_err(), WireError::EventCount(0));
}

#[test]
fn subjects_and_headers_name_the_commit() {
    let commits = fixture_commits();
    let opened = commits.iter().find(|c| c.kind() == "opened").expect("an opening");
    let StreamRef::Conversation(id) = &opened.stream else { panic!("a conversation") };
    assert_eq!(opened.subject("convo"), format!("convo.default.conv.{id}.opened"));
    assert_eq!(opened.stream.filter_subject("convo", &opened.account), format!("convo.default.conv.{id}.*"));
    let headers: BTreeMap<_, _> = opened.headers().into_iter().collect();
    assert_eq!(headers[convo_wire::headers::SCHEMA], SCHEMA_VERSION.to_string());
    assert!(headers[convo_wire::headers::EVENTS].starts_with("conversation_opened,message_received"));
}

/// The JSON Schemas in `schemas/json/` say what the JSON is: every event of
/// every fixture and of a random day validates (as its view, as any event,
/// and as a CloudEvent), every fixture's command request validates, and
/// deliberately wrong documents do not — checked by Python's `jsonschema`
/// (installed by `just validators`), not by the code that wrote the schemas.
#[test]
fn every_event_and_command_meets_its_json_schema_in_an_independent_validator() {
    use serde_json::{Value, json};
    let mut cases = String::new();
    let mut case = |schema: &str, valid: bool, doc: &Value| {
        cases.push_str(&json!({"schema": schema, "valid": valid, "doc": doc}).to_string());
        cases.push('\n');
    };
    let mut commits = fixture_commits();
    commits.extend(commits_of(&mut convo_sim::workload::RandomDay::new(7, 300)));
    let mut types = BTreeMap::new();
    for (n, commit) in commits.iter().enumerate() {
        for (line, cloud) in commit.json_lines().iter().zip(commit.cloud_events("convo", n as u64 + 1)) {
            let kind = line["type"].as_str().expect("a type").to_owned();
            case(&format!("events/{kind}.v{SCHEMA_VERSION}.schema.json"), true, line);
            // Every event against its own type's schema; the first of each
            // type also as any event and as a CloudEvent (the same views, by reference).
            let seen = types.entry(kind).or_insert(0);
            if *seen < 3 {
                case("event.schema.json", true, line);
                case("cloudevent.schema.json", true, &cloud);
            }
            *seen += 1;
        }
    }
    assert!(types.len() >= 25, "the fixtures and the random day cover most event types: {:?}", types.keys());
    for entry in std::fs::read_dir(repo().join("replay-fixtures")).expect("fixtures") {
        let Ok(text) = std::fs::read_to_string(entry.expect("entry").path().join("input.jsonl")) else { continue };
        for line in text.lines().filter(|l| l.trim_start().starts_with('{')) {
            let input: Value = serde_json::from_str(line).expect("JSON");
            // A scenario line may leave its id to the runner; a request may not.
            let id = input.get("id").cloned().unwrap_or(json!("scenario-line"));
            case("command.schema.json", true, &json!({"id": id, "command": input["command"]}));
        }
    }
    // Wrong documents, each wrong in one way.
    let closed = commits.iter().flat_map(|c| c.json_lines()).find(|l| l["type"] == "conversation_closed").unwrap();
    let schema = "events/conversation_closed.v1.schema.json";
    for junk in [json!(42), json!(null), json!("conversation_closed"), json!({})] {
        case(schema, false, &junk);
        case("event.schema.json", false, &junk);
        case("cloudevent.schema.json", false, &junk);
        case("command.schema.json", false, &junk);
    }
    let wrong = |f: &dyn Fn(&mut Value)| {
        let mut doc = closed.clone();
        f(&mut doc);
        doc
    };
    case(schema, false, &wrong(&|d| d["at"] = json!(1_772_000_000_000_i64))); // a timestamp is RFC 3339 text
    case(schema, false, &wrong(&|d| d["seq"] = json!("3")));
    case(schema, false, &wrong(&|d| d["reason"] = json!("bored")));
    case(schema, false, &wrong(&|d| d["account"] = json!("two words")));
    case(schema, false, &wrong(&|d| d["surprise"] = json!(true)));
    case(schema, false, &wrong(&|d| drop(d.as_object_mut().unwrap().remove("reason"))));
    case("event.schema.json", false, &wrong(&|d| d["type"] = json!("conversation_exploded")));
    case("event.schema.json", false, &wrong(&|d| d["actor"] = json!({"user": {"id": "ana", "ip": 7}})));
    let mut cloud = commits[0].cloud_events("convo", 1).remove(0);
    cloud["specversion"] = json!("0.3");
    case("cloudevent.schema.json", false, &cloud);
    let command = json!({"id": "m1", "command": {"type": "close", "conversation": "c1", "typification": "sale"}});
    case("command.schema.json", true, &command);
    case("command.schema.json", false, &json!({"id": "m1", "command": {"type": "close"}}));
    case("command.schema.json", false, &json!({"id": "m1", "command": {"type": "launch_rocket"}}));
    case("command.schema.json", false, &json!({"id": "m1", "actor": {"system": "x"}, "command": command["command"]}));
    case("command.schema.json", false, &json!({"id": "m 1", "command": command["command"]}));
    case(
        "command.schema.json",
        false,
        &json!({"id": "m1", "command": {"type": "close", "conversation": "c1", "extra": 1}}),
    );

    // Replies, as the engine makes them.
    use convo_engine::intake::{Reply, reply};
    use convo_engine::machine::Outcome;
    let outcome = Outcome::Committed { log_seq: 42, commit: commits[0].clone() };
    let committed = reply(&outcome, true, None).to_json();
    assert_eq!(committed["event_ids"][0], commits[0].cloud_events("convo", 42)[0]["id"]);
    assert_eq!(committed["event_types"][0], committed["events"][0]["type"]);
    case("reply.schema.json", true, &committed);
    // Without `reply_events`, the ids and types only.
    let lean = reply(&outcome, false, None).to_json();
    assert!(lean.get("events").is_none() && lean["event_types"] == committed["event_types"], "{lean}");
    case("reply.schema.json", true, &lean);
    case("reply.schema.json", true, &reply(&Outcome::Nothing, false, None).to_json());
    case("reply.schema.json", true, &reply(&Outcome::Duplicate { first_seq: 3, last_seq: 4 }, false, None).to_json());
    case("reply.schema.json", true, &convo_engine::intake::overloaded("busy"));
    let invalid = Reply::Error { code: "invalid".into(), message: "m".into(), field: Some("id".into()), rule: None };
    case("reply.schema.json", true, &invalid.to_json());
    case("reply.schema.json", false, &json!({"outcome": "committed", "log_seq": 1}));
    case("reply.schema.json", false, &json!({"outcome": "maybe"}));
    let mut bad_event = committed.clone();
    bad_event["events"][0]["seq"] = json!(0);
    case("reply.schema.json", false, &bad_event);

    let py = repo().join(".tools/py");
    assert!(py.join("jsonschema").is_dir(), "run `just validators` (installs jsonschema into .tools/py)");
    let mut child = std::process::Command::new("python3")
        .arg(repo().join("crates/convo-wire/tests/validate_json.py"))
        .arg(repo().join("schemas/json"))
        .env("PYTHONPATH", &py)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(cases.as_bytes()).expect("writes");
    });
    let started = std::time::Instant::now();
    let out = child.wait_with_output().expect("python3 finishes");
    eprintln!("jsonschema took {:?}", started.elapsed());
    writer.join().expect("written");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "jsonschema disagrees:\n{text}");
    assert!(text.contains("0 surprises"), "{text}");
}

/// A conversation opened and closed by one commit (out of hours) is on
/// `….closed`, where closures are; the Convo-Events header still names the opening.
#[test]
fn a_commit_that_opens_and_closes_is_a_closure() {
    let commits = fixture_commits();
    let both = commits
        .iter()
        .find(|c| {
            let types = c.event_types();
            types.contains(&"conversation_opened") && types.contains(&"conversation_closed")
        })
        .expect("the out-of-hours fixture closes a conversation as it opens");
    assert_eq!(both.kind(), "closed");
    let subject = both.subject("convo");
    assert!(subject.ends_with(".closed"), "{subject}");
    // Appended before closures came first, it sat on `….opened`: still its own.
    let legacy = subject.replace(".closed", ".opened");
    assert!(both.belongs_on("convo", &legacy) && both.belongs_on("convo", &subject));
    assert!(!both.belongs_on("convo", &subject.replace(".closed", ".message")));
    let headers: BTreeMap<_, _> = both.headers().into_iter().collect();
    assert!(headers[convo_wire::headers::EVENTS].starts_with("conversation_opened"));
}
