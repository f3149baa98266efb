//! The reports read model against a real nats-server.

use std::path::Path;

use convo_domain::Timestamp;
use convo_engine::Engine;
use convo_projector::{Projection, Projector, Staged};
use convo_reports::{DIMENSIONS, Reports};
use convo_store::launcher::{LaunchOptions, NatsServer};
use convo_store::{JetStreamStore, StoreConfig, StoredCommit};

struct Setup {
    store: JetStreamStore,
    _server: NatsServer,
    _dir: tempfile::TempDir,
}

async fn stream_of(fixture: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(&LaunchOptions { data_dir: dir.path().join("nats"), ..Default::default() }).unwrap();
    let store = JetStreamStore::connect(&server.url(), StoreConfig::for_prefix("rep")).await.unwrap();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../replay-fixtures").join(fixture).join("input.jsonl");
    let inputs: Vec<(convo_domain::CommandEnvelope, Timestamp)> =
        convo_engine::scenario::parse(&std::fs::read_to_string(path).unwrap())
            .unwrap()
            .into_iter()
            .map(|i| (i.envelope, i.at))
            .collect();
    Engine::recover(store.clone()).await.unwrap().replay(inputs).await.unwrap();
    Setup { store, _server: server, _dir: dir }
}

fn fresh() -> (Projector, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (Projector::open(sled::open(dir.path()).unwrap(), convo_reports::NAME), dir)
}

/// Every report of the account, as JSON (the export compared byte for byte).
fn export(projector: &Projector) -> String {
    let tree = projector.tree().unwrap();
    let mut out = String::new();
    for dim in DIMENSIONS {
        for period in ["hour", "day"] {
            for row in convo_reports::rows(&tree, "default", dim, period, None, None).unwrap() {
                out.push_str(&convo_reports::row_json(dim, &row).to_string());
                out.push('\n');
            }
        }
    }
    out
}

#[tokio::test]
async fn the_sla_report_of_the_spec_example_shows_one_low_and_one_optimal_response() {
    let setup = stream_of("sla-worked-example").await;
    let (projector, _d) = fresh();
    projector.catch_up(&setup.store, &mut Reports::default(), &mut |_, _| {}).await.unwrap();
    let rows = convo_reports::rows(&projector.tree().unwrap(), "default", "campaign", "day", None, None).unwrap();
    assert_eq!(rows.len(), 1);
    let report = convo_reports::row_json("campaign", &rows[0]);
    assert_eq!(
        (report["sla_low"].as_u64(), report["sla_optimal"].as_u64(), report["sla_breached"].as_u64()),
        (Some(1), Some(1), Some(0))
    );
    assert_eq!(report["sla_optimal_pct"], 50.0);
    assert_eq!((report["opened"].as_u64(), report["closed"].as_u64()), (Some(1), Some(1)));
    assert_eq!(report["frt_count"], 1);
    assert_eq!(report["frt_p50_secs"], 100, "the first response took 100 s, and so says its p50");
    assert_eq!(report["closures_by_typification"]["venta"], 1);
    let agent = convo_reports::rows(
        &projector.tree().unwrap(),
        "default",
        "agent",
        "hour",
        Some("2026-03-02T14"),
        Some("2026-03-02T14"),
    )
    .unwrap();
    assert_eq!(agent[0].value, "ana");
    assert_eq!(convo_reports::row_json("agent", &agent[0])["rt_count"], 2);
}

struct DiesAfter(usize, Reports);

impl Projection for DiesAfter {
    fn name(&self) -> &'static str {
        convo_reports::NAME
    }

    fn apply(&mut self, staged: &mut Staged<'_>, stored: &StoredCommit) -> Result<(), String> {
        assert!(self.0 > 0, "the projector process dies here");
        self.0 -= 1;
        self.1.apply(staged, stored)
    }

    fn flush(&mut self, staged: &mut Staged<'_>) -> Result<(), String> {
        self.1.flush(staged)
    }

    fn reset(&mut self) {
        self.1.reset()
    }
}

#[tokio::test]
async fn a_projector_killed_mid_batch_double_counts_nothing_and_a_rebuild_equals_the_live_reports() {
    let setup = stream_of("day-of-traffic").await;
    let (projector, _d) = fresh();
    let (store, tree) = (setup.store.clone(), projector.tree().unwrap());
    let crashed = tokio::spawn(async move {
        convo_projector::fold(
            &store,
            &tree,
            &mut DiesAfter(1_700, Reports::default()),
            convo_projector::BATCH_COMMITS_MAX,
            None,
            &mut |_, _| {},
        )
        .await
    })
    .await;
    assert!(crashed.is_err());
    assert_eq!(projector.checkpoint().unwrap(), 1_000);
    projector.catch_up(&setup.store, &mut Reports::default(), &mut |_, _| {}).await.unwrap();
    let live = export(&projector);
    let (clean, _d2) = fresh();
    clean.catch_up(&setup.store, &mut Reports::default(), &mut |_, _| {}).await.unwrap();
    assert_eq!(live, export(&clean), "totals equal a clean run's");
    projector.rebuild(&setup.store, &mut Reports::default(), &mut |_, _| {}).await.unwrap();
    assert_eq!(export(&projector), live, "a rebuild equals the live reports byte for byte");
    // The day's totals agree with the simulator's summary of the same day.
    let day = convo_reports::rows(&projector.tree().unwrap(), "default", "account", "day", None, None).unwrap();
    let opened: u64 = day.iter().map(|r| r.counters.get("opened").copied().unwrap_or(0)).sum();
    let optimal: u64 = day.iter().map(|r| r.counters.get("sla_optimal").copied().unwrap_or(0)).sum();
    assert_eq!((opened, optimal), (240, 287));
    // Bounds of either size: a day bounds hours, an hour bounds days.
    let tree = projector.tree().unwrap();
    let hours = |from: &str, to: &str| {
        convo_reports::rows(&tree, "default", "account", "hour", Some(from), Some(to)).unwrap().len()
    };
    let all = convo_reports::rows(&tree, "default", "account", "hour", None, None).unwrap();
    let first_day = all.iter().filter(|r| r.bucket.starts_with("2026-03-02")).count();
    assert!(first_day > 1 && first_day < all.len());
    assert_eq!(hours("2026-03-02", "2026-03-02"), first_day, "the whole day's hours");
    assert_eq!(hours("2026-03-02T13", "2026-03-02T13"), 1, "one hour");
    assert_eq!(hours("2026-03-04", "2026-03-05"), 0, "days without figures");
    let days = convo_reports::rows(&tree, "default", "account", "day", Some("2026-03-02T13"), Some("2026-03-02T13"));
    assert_eq!(days.unwrap().len(), 1, "the day an hour is in");
}

/// A reports tree of the previous layout (one key per counter, no layout
/// recorded) is set aside and the stream folded again: the same reports as
/// a fresh fold, none of the old keys left, the layout recorded.
#[tokio::test]
async fn a_tree_of_the_previous_layout_is_folded_again() {
    let setup = stream_of("day-of-traffic").await;
    let (wanted, _w) = fresh();
    wanted.catch_up(&setup.store, &mut Reports::default(), &mut |_, _| {}).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let old = db.open_tree("reports#1").unwrap();
    old.insert("c/default/campaign/sales/day/2026-03-02/opened", &7u64.to_be_bytes()).unwrap();
    old.insert("\x00checkpoint", &999_999u64.to_be_bytes()).unwrap();
    let projector = Projector::open(db, convo_reports::NAME);
    assert_eq!(projector.layout().unwrap(), 1);
    projector.catch_up(&setup.store, &mut Reports::default(), &mut |_, _| {}).await.unwrap();
    assert_eq!(projector.layout().unwrap(), convo_reports::LAYOUT);
    let tree = projector.tree().unwrap();
    assert!(tree.scan_prefix(b"c/").next().is_none(), "the old layout's keys are gone");
    assert_eq!(export(&projector), export(&wanted));
    assert!(!export(&wanted).is_empty());
}
