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
