//! Seeded random days, checked against the independent model.

use convo_sim::model::Model;
use convo_sim::output;
use convo_sim::workload::{self, RandomDay};

fn run(seed: u64, conversations: u32) -> (String, Result<String, String>) {
    let mut day = RandomDay::new(seed, conversations);
    let mut model = Model::new(workload::model_rules());
    let mut out = String::new();
    convo_sim::run(&mut day, None, |step| {
        model.observe(step.input, step.records);
        for r in step.records {
            out.push_str(&output::to_line(r));
            out.push('\n');
        }
    });
    let verdict = model
        .check()
        .map(|a| a.to_string())
        .map_err(|d| format!("seed {seed}: the run disagrees with the model:\n{d}"));
    (out, verdict)
}

#[test]
fn random_days_agree_with_the_model() {
    for seed in 1..=6 {
        let (_, verdict) = run(seed, 1500);
        if let Err(e) = verdict {
            panic!("{e}");
        }
    }
}

#[test]
fn a_seed_names_one_run() {
    let (a, _) = run(42, 300);
    let (b, _) = run(42, 300);
    let (c, _) = run(43, 300);
    assert_eq!(a, b, "the same seed gives the same bytes");
    assert_ne!(a, c, "another seed gives another run");
    assert!(a.lines().count() > 1000);
}

#[test]
fn a_recorded_random_day_replays_as_a_scenario_to_the_same_bytes() {
    let mut day = RandomDay::new(9, 150);
    let (mut live, mut lines) = (String::new(), String::new());
    convo_sim::run(&mut day, None, |step| {
        if let Some(input) = step.input {
            lines.push_str(&convo_sim::scenario::to_line(input));
            lines.push('\n');
        }
        for r in step.records {
            live.push_str(&output::to_line(r));
            live.push('\n');
        }
    });
    let inputs = convo_sim::scenario::parse(&lines).expect("the recorded scenario parses");
    let mut replayed = String::new();
    convo_sim::run(&mut convo_sim::Scripted::new(inputs), None, |step| {
        for r in step.records {
            replayed.push_str(&output::to_line(r));
            replayed.push('\n');
        }
    });
    assert_eq!(live, replayed);
}

/// Every system actor the engine acts as, on every fixture and a random day,
/// is one no client may claim.
#[test]
fn the_engines_own_actors_are_reserved() {
    // System actors in the records that no input claimed are the engine's own.
    let (mut seen, mut claimed) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
    let mut note = |step: convo_sim::Step<'_>| {
        if let Some(convo_domain::Actor::System(name)) = step.input.map(|i| &i.envelope.actor) {
            claimed.insert(name.clone());
        }
        for r in step.records {
            if let convo_sim::Record::Conversation { record, .. } = r
                && let convo_domain::Actor::System(name) = &record.actor
            {
                seen.insert(name.clone());
            }
        }
    };
    let mut day = RandomDay::new(5, 800);
    convo_sim::run(&mut day, None, &mut note);
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../replay-fixtures");
    for entry in std::fs::read_dir(fixtures).unwrap() {
        let Ok(text) = std::fs::read_to_string(entry.unwrap().path().join("input.jsonl")) else { continue };
        let inputs = convo_sim::scenario::parse(&text).unwrap();
        convo_sim::run(&mut convo_sim::Scripted::new(inputs), None, &mut note);
    }
    let engines: Vec<&String> = seen.iter().filter(|n| !claimed.contains(*n)).collect();
    assert!(engines.len() >= 8, "{engines:?}");
    for name in engines {
        assert!(convo_domain::ENGINE_ACTORS.contains(&name.as_str()), "{name} is not reserved");
    }
}
