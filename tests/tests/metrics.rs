//! Metrics (feature `metrics`): the call counter by outcome, the call-latency and wait
//! histograms and the in-flight gauge, read back through `metrics-util`'s debugging recorder
//! installed for this thread.

use std::time::Duration;

use idempotent_runtime::strategy::{dedup_table, not_compared};
use idempotent_runtime::{KeyBuilder, MemoryStore, OnBusy, StorageKey};
use idempotent_tests::{AppError, unique};
use metrics_util::MetricKind;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

type Entry = (
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
);

/// Everything recorded since the last snapshot (a snapshot drains counters and histograms).
fn take(snap: &Snapshotter) -> Vec<Entry> {
    snap.snapshot().into_vec()
}

/// The value of metric `name` of `kind` whose labels include every pair of `labels`, over
/// `snaps` in order: counters and gauges summed (the snapshot
/// drains both), histogram samples joined.
fn value(
    snaps: &[&[Entry]],
    kind: MetricKind,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<DebugValue> {
    let mut found = None;
    for (key, _, _, v) in snaps.iter().flat_map(|s| s.iter()) {
        let matches = key.kind() == kind
            && key.key().name() == name
            && labels
                .iter()
                .all(|(k, v)| key.key().labels().any(|l| l.key() == *k && l.value() == *v));
        if !matches {
            continue;
        }
        found = Some(match (found.take(), v) {
            (Some(DebugValue::Counter(a)), DebugValue::Counter(b)) => DebugValue::Counter(a + b),
            (_, DebugValue::Counter(b)) => DebugValue::Counter(*b),
            (Some(DebugValue::Histogram(mut a)), DebugValue::Histogram(b)) => {
                a.extend(b.iter().copied());
                DebugValue::Histogram(a)
            }
            (_, DebugValue::Histogram(b)) => DebugValue::Histogram(b.clone()),
            (Some(DebugValue::Gauge(a)), DebugValue::Gauge(b)) => DebugValue::Gauge(a + *b),
            (_, DebugValue::Gauge(g)) => DebugValue::Gauge(*g),
        });
    }
    found
}

fn key(op: &str) -> StorageKey {
    KeyBuilder::new(op).part(&unique("k")).finish().unwrap()
}

#[test]
fn calls_are_counted_by_outcome_with_latency_wait_and_in_flight() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let op = "metrics::place";
    let mid_body = metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = MemoryStore::new();
            let k = key(op);
            let release = tokio::sync::Notify::new();
            let holder = async || -> Result<u32, AppError> {
                release.notified().await;
                Ok(7)
            };
            let never = async || -> Result<u32, AppError> { panic!("a duplicate ran the body") };
            let reject = dedup_table::Options::default();
            let wait = dedup_table::Options {
                on_busy: OnBusy::Wait(Duration::from_secs(30)),
                ..Default::default()
            };
            // In order on this thread: the holder claims and parks in its body, one duplicate is
            // refused, one waits; the gauge is read while the holder is in its body.
            let (held, rejected, waited, mid) = tokio::join!(
                dedup_table::run(&store, k.clone(), None, reject, not_compared, holder),
                dedup_table::run(&store, k.clone(), None, reject, not_compared, never),
                dedup_table::run(&store, k.clone(), None, wait, not_compared, never),
                async {
                    let mid = take(&snap);
                    release.notify_one();
                    mid
                },
            );
            assert_eq!(held.unwrap(), 7);
            assert!(rejected.is_err());
            assert_eq!(waited.unwrap(), 7);
            // A later duplicate replays.
            let again =
                dedup_table::run(&store, k.clone(), None, reject, not_compared, never).await;
            assert_eq!(again.unwrap(), 7);
            mid
        })
    });
    let end = take(&snap);
    let all: &[&[Entry]] = &[&mid_body, &end];
    assert_eq!(
        value(
            &[&mid_body],
            MetricKind::Gauge,
            "idempotent_in_flight",
            &[("operation", op)]
        ),
        Some(DebugValue::Gauge(1.0.into())),
        "one claim held during the body"
    );

    let labels = |outcome| {
        [
            ("operation", op),
            ("strategy", "dedup_table"),
            ("store", "memory"),
            ("outcome", outcome),
        ]
    };
    let calls = |outcome| {
        value(
            all,
            MetricKind::Counter,
            "idempotent_calls_total",
            &labels(outcome),
        )
    };
    assert_eq!(calls("executed"), Some(DebugValue::Counter(1)));
    assert_eq!(calls("replayed"), Some(DebugValue::Counter(2)));
    assert_eq!(calls("in_progress"), Some(DebugValue::Counter(1)));
    assert_eq!(calls("body_error"), None);
    assert_eq!(
        value(
            all,
            MetricKind::Gauge,
            "idempotent_in_flight",
            &[("operation", op)]
        ),
        Some(DebugValue::Gauge(0.0.into())),
        "no claim held after the calls"
    );
    let samples =
        |name, labels: &[(&str, &str)]| match value(all, MetricKind::Histogram, name, labels) {
            Some(DebugValue::Histogram(v)) => v.len(),
            other => panic!("{name}: {other:?}"),
        };
    assert_eq!(
        samples(
            "idempotent_call_duration_seconds",
            &[("operation", op), ("outcome", "replayed")]
        ),
        2
    );
    assert_eq!(
        samples("idempotent_wait_duration_seconds", &[("operation", op)]),
        1,
        "one call waited"
    );
}

#[test]
fn a_failed_body_is_counted_and_frees_its_in_flight_claim() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let op = "metrics::fail";
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = MemoryStore::new();
            let failing = async || -> Result<u32, AppError> { Err(AppError::Rejected) };
            let got = dedup_table::run(
                &store,
                key(op),
                None,
                Default::default(),
                not_compared,
                failing,
            )
            .await;
            assert!(got.is_err());
        })
    });
    let all: &[&[Entry]] = &[&take(&snap)];
    assert_eq!(
        value(
            all,
            MetricKind::Counter,
            "idempotent_calls_total",
            &[("operation", op), ("outcome", "body_error")]
        ),
        Some(DebugValue::Counter(1))
    );
    assert_eq!(
        value(
            all,
            MetricKind::Gauge,
            "idempotent_in_flight",
            &[("operation", op)]
        ),
        Some(DebugValue::Gauge(0.0.into()))
    );
}
