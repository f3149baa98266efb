//! The fault simulator: seeded runs of the partition machine under delayed,
//! reordered and failed appends, lost acknowledgements, a phantom second
//! writer, outages and crash-restarts, each audited; the partition shared by
//! up to three instances' ownership machines over a simulated directory
//! (kills, pauses past the lease, clock jumps, elections, lost answers).

use convo_sim::faults::{self, FaultOptions};

fn options(seed: u64) -> FaultOptions {
    FaultOptions { seed, conversations: 250, break_expectation: false, break_fence: false, break_batch_fallback: false }
}

#[test]
fn seeded_faults_break_no_invariant() {
    for seed in 1..=6 {
        match faults::run(options(seed)) {
            Ok(report) => {
                let s = report.stats;
                assert!(s.crashes + s.lost_acks + s.phantom_writes + s.failed_appends > 0, "faults happened: {s}");
                assert!(s.batches > 0 && s.failed_batches > 0, "group commit batched, and batches failed: {s}");
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

#[test]
fn the_auditor_catches_a_deposed_owner_when_the_fence_is_broken() {
    // Without the fence, an owner paused through its takeover commits after its successor.
    let caught = (1..=10).find_map(|seed| faults::run(FaultOptions { break_fence: true, ..options(seed) }).err());
    let text = caught.expect("a seed in 1..=10 catches it").to_string();
    assert!(text.contains("a deposed owner committed after its successor"), "{text}");
    assert!(text.contains("--break-fence"), "{text}");
}

#[test]
fn the_auditor_catches_a_group_commit_that_trusts_a_failed_batch() {
    // A batch refused whole, or written with its acknowledgement lost, taken as stored:
    // commands acknowledged at places the log does not hold them.
    let caught =
        (1..=10).find_map(|seed| faults::run(FaultOptions { break_batch_fallback: true, ..options(seed) }).err());
    let text = caught.expect("a seed in 1..=10 catches it").to_string();
    assert!(text.contains("--break-batch-fallback"), "{text}");
}

#[test]
fn partitions_change_hands_and_are_owned_again_within_the_bound() {
    let mut takeovers = 0;
    for seed in 1..=6 {
        let report = faults::run(options(seed)).unwrap_or_else(|f| panic!("{f}"));
        let s = report.stats;
        assert!(s.unowned_ms_max <= faults::OWNED_AGAIN_MS, "{s}");
        takeovers += s.takeovers;
        if s.instances > 1 {
            assert!(s.crashes + s.pauses + s.elections > 0, "cluster faults happened: {s}");
        }
    }
    assert!(takeovers > 6, "partitions changed hands: {takeovers}");
}
