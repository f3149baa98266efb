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
        convo_sim::run(&mut Scripted::new(inputs), None, |step| {
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
