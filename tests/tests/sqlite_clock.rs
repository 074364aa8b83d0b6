//! Issue 12 item 9: SQLite has no server clock. Processes sharing one SQLite file with wall
//! clocks 60 s apart must agree on leases: a process whose clock is ahead never takes over a
//! claim whose holder keeps renewing it, and a dead claim is taken over about one lease after a
//! process starts watching it — not 60 s early or late. The other process is the
//! `skew_worker` binary run under `faketime` (Debian package `faketime`; `-m -f ±60s`, the
//! monotonic clock left alone), so its wall clock and SQLite's `julianday('now')` are skewed.
//! Without `faketime` on PATH the tests are skipped, except under CI (`CI=true`) where they
//! fail.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use idempotent_runtime::store::Claim;
use idempotent_runtime::{ClaimStore, KeyBuilder, observe};
use idempotent_tests::skew::{LEASE, SkewSvc, WorkerMode, WorkerReport, worker_command};
use idempotent_tests::{Got, ci, classify, poll_while, req, unique};

const WORKER: &str = env!("CARGO_BIN_EXE_skew_worker");
const SKEW_MS: i64 = 60_000;

/// `true` when `faketime` runs; `false` (skip) when it is missing outside CI.
fn faketime_available() -> bool {
    let found = std::process::Command::new("faketime")
        .args(["-f", "+0s", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            !ci(),
            "faketime is required under CI (Debian package `faketime`)"
        );
        eprintln!("SKIPPED: faketime is not on PATH (apt-get install faketime)");
    }
    found
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}

/// Runs the worker under `faketime` with `offset` to its end and parses its report; checks that
/// its wall clock and SQLite's "now" were `skew_ms` away from this process's.
async fn run_worker(
    offset: &str,
    skew_ms: i64,
    db: &Path,
    r: &idempotent_tests::Req,
    mode: WorkerMode,
) -> WorkerReport {
    let mut cmd = worker_command(WORKER, offset, db, r, mode);
    let before = now_ms();
    let out: Output = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run skew_worker under faketime");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "skew_worker failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report = WorkerReport::parse(&stdout);
    let after = now_ms();
    for (what, seen) in [
        ("wall clock", report.wall_ms),
        ("SQLite now", report.sqlite_ms),
    ] {
        assert!(
            (before + skew_ms - 1_000..=after + skew_ms + 1_000).contains(&seen),
            "the worker's {what} is {seen}, not this process's ({before}..{after}) {skew_ms:+} ms: faketime did not skew it"
        );
    }
    report
}

/// A claim of owner `crashed-holder` on `r`'s key with a 1 s lease, written by this process and
/// never renewed: a holder that died.
async fn dead_claim(svc: &SkewSvc, r: &idempotent_tests::Req) {
    let key = KeyBuilder::new(SkewSvc::PLACE)
        .scope(&r.tenant)
        .part(&r.id)
        .finish()
        .unwrap();
    let claim = Claim {
        key: &key,
        fingerprint: None,
        owner: "crashed-holder",
        lease: LEASE,
    };
    assert!(svc.db.try_claim(&claim).await.unwrap());
}

/// The first input: the holder (this process, real clock) claims with a 1 s lease and
/// keeps renewing it while its body is held at the gate; a worker whose clock is 60 s ahead
/// calls the same request for 3.5 leases. By its clock the claim expired 59 s ago, yet it gets
/// `InProgress` every time (the claim's expiry changes at every renewal), and the body runs
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(has_faketime),
    ignore = "needs faketime on PATH (Debian package faketime)"
)]
async fn clock_ahead_never_takes_over_a_renewing_claim() {
    if !faketime_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let svc = std::sync::Arc::new(SkewSvc::open(&db).await);
    let r = req(&unique("t"), "order-1", 100);
    svc.gate.arm();
    let holder = tokio::spawn({
        let (svc, r) = (svc.clone(), r.clone());
        async move { classify(observe(svc.place(&r)).await) }
    });
    svc.gate.entered.notified().await;

    let report = run_worker("+60s", SKEW_MS, &db, &r, WorkerMode::CallFor(LEASE * 7 / 2)).await;
    assert!(
        report.outcomes.len() >= 10,
        "the worker called repeatedly: {report:?}"
    );
    assert!(
        report.outcomes.iter().all(|o| o == "InProgress"),
        "a live, renewing claim is never taken over: {report:?}"
    );
    assert!(report.elapsed_ms >= 3_500, "{report:?}");
    assert_eq!(svc.effects(&r).await, 0, "the worker never ran the body");

    svc.gate.release.notify_one();
    let got = holder.await.unwrap();
    let Got::Executed(receipt) = got else {
        panic!("the holder completes: {got:?}")
    };
    assert_eq!(receipt.serial, 1);
    assert_eq!(svc.effects(&r).await, 1);
    // The skewed worker now gets the stored response.
    let after = run_worker(
        "+60s",
        SKEW_MS,
        &db,
        &r,
        WorkerMode::CallFor(Duration::ZERO),
    )
    .await;
    assert_eq!(after.outcomes, ["Replayed"]);
    assert_eq!(svc.effects(&r).await, 1);
}

/// A dead claim (never renewed) is taken over by a real-clock process about one lease after it
/// first saw it — watched, not judged by the clock — and exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_claim_is_taken_over_after_a_lease_of_watching() {
    let dir = tempfile::tempdir().unwrap();
    let svc = SkewSvc::open(&dir.path().join("shared.db")).await;
    let r = req(&unique("t"), "order-1", 100);
    dead_claim(&svc, &r).await;
    let started = Instant::now();
    assert_eq!(classify(observe(svc.place(&r)).await), Got::InProgress);
    let got = poll_while(&Got::InProgress, Duration::from_secs(10), || async {
        classify(observe(svc.place(&r)).await)
    })
    .await;
    let Got::Executed(receipt) = got else {
        panic!("the dead claim is taken over: {got:?}")
    };
    let took = started.elapsed();
    assert!(took >= LEASE, "watched for a lease first: {took:?}");
    assert!(
        took < LEASE * 3,
        "taken over about a lease after first seen: {took:?}"
    );
    assert_eq!(svc.effects(&r).await, 1);
    assert_eq!(
        classify(observe(svc.place(&r)).await),
        Got::Replayed(receipt)
    );
    assert_eq!(svc.effects(&r).await, 1);
}

/// The second input: a worker whose clock is 60 s behind would, by its clock, see the
/// dead claim's 1 s lease end only after 61 s (the key blocked 63 s instead of 3 s). Watching,
/// it takes the claim over about one lease after its first look, runs the body once, and this
/// process then gets the stored response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(has_faketime),
    ignore = "needs faketime on PATH (Debian package faketime)"
)]
async fn clock_behind_takes_over_a_dead_claim_after_a_lease_not_a_minute() {
    if !faketime_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let svc = SkewSvc::open(&db).await;
    let r = req(&unique("t"), "order-1", 100);
    dead_claim(&svc, &r).await;

    let report = run_worker(
        "-60s",
        -SKEW_MS,
        &db,
        &r,
        WorkerMode::UntilFree(Duration::from_secs(10)),
    )
    .await;
    assert_eq!(
        report.outcomes.last().map(String::as_str),
        Some("Executed"),
        "the worker takes the dead claim over within 10 s: {report:?}"
    );
    assert!(
        report.outcomes[..report.outcomes.len() - 1]
            .iter()
            .all(|o| o == "InProgress"),
        "{report:?}"
    );
    assert!(
        (1_000..3_000).contains(&report.elapsed_ms),
        "taken over about a lease after its first look, not 61 s: {report:?}"
    );
    assert_eq!(svc.effects(&r).await, 1);
    assert!(matches!(
        classify(observe(svc.place(&r)).await),
        Got::Replayed(_)
    ));
    assert_eq!(svc.effects(&r).await, 1);
}

/// A worker whose clock is 60 s ahead sees the dead claim as expired at once by its clock, but
/// still watches it for a lease before taking it over (the same rule that protects a live
/// holder), then runs the body once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(has_faketime),
    ignore = "needs faketime on PATH (Debian package faketime)"
)]
async fn clock_ahead_takes_over_a_dead_claim_after_a_lease_of_watching() {
    if !faketime_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let svc = SkewSvc::open(&db).await;
    let r = req(&unique("t"), "order-1", 100);
    dead_claim(&svc, &r).await;

    let report = run_worker(
        "+60s",
        SKEW_MS,
        &db,
        &r,
        WorkerMode::UntilFree(Duration::from_secs(10)),
    )
    .await;
    assert_eq!(
        report.outcomes.last().map(String::as_str),
        Some("Executed"),
        "{report:?}"
    );
    assert_eq!(report.outcomes[0], "InProgress", "{report:?}");
    assert!((1_000..3_000).contains(&report.elapsed_ms), "{report:?}");
    assert_eq!(svc.effects(&r).await, 1);
}
