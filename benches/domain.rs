//! decide+evolve throughput of the pure domain on a realistic mix
//! (see `lib.rs`): commands per second on one core.

use convo_benches::{catalog, domain_mix, run_mix, states};
use convo_domain::Floor;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const CONVERSATIONS: usize = 1_000;

fn decide_evolve(c: &mut Criterion) {
    let catalog = catalog();
    let floor = Floor::default();
    let steps = domain_mix(CONVERSATIONS);
    let mut group = c.benchmark_group("domain");
    group.throughput(Throughput::Elements(steps.len() as u64));
    group.bench_function("decide_evolve_mix", |b| {
        b.iter_batched_ref(
            || states(CONVERSATIONS),
            |states| run_mix(&catalog, &floor, states, &steps),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, decide_evolve);
criterion_main!(benches);
