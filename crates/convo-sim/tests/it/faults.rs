//! The fault simulator: seeded runs of the partition machine under delayed,
//! reordered and failed appends, lost acknowledgements, a phantom second
//! writer, outages and crash-restarts, each audited.

use convo_sim::faults::{self, FaultOptions};

fn options(seed: u64) -> FaultOptions {
    FaultOptions { seed, conversations: 250, break_expectation: false }
}

#[test]
fn seeded_faults_break_no_invariant() {
    for seed in 1..=6 {
        match faults::run(options(seed)) {
            Ok(report) => {
                let s = report.stats;
                assert!(s.crashes + s.lost_acks + s.phantom_writes + s.failed_appends > 0, "faults happened: {s}");
            }
            Err(failure) => panic!("{failure}"),
        }
    }
}

#[test]
fn a_seed_replays_exactly() {
    let a = faults::run(options(11)).unwrap();
    let b = faults::run(options(11)).unwrap();
    assert_eq!(a.stats, b.stats);
    assert_eq!(a.agreement, b.agreement);
    let c = faults::run(options(12)).unwrap();
    assert_ne!(a.stats, c.stats, "another seed, another run");
}

#[test]
fn the_auditor_catches_a_store_that_ignores_the_expected_sequence() {
    // Without the optimistic-concurrency check, a lost race writes a command twice.
    let failure = faults::run(FaultOptions { break_expectation: true, ..options(3) }).unwrap_err();
    let text = failure.to_string();
    assert!(text.starts_with("seed 3: "), "{text}");
    assert!(text.contains("in the log twice"), "{text}");
    assert!(text.contains("convo simulate --random --faults --seed 3"), "{text}");
}
