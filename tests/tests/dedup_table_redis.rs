//! `strategy = "dedup_table"` in claim mode on standalone Redis and a 3-master Redis Cluster
//! (the memory store's claim mode is covered in `dedup_table.rs`). Effects counted in a ledger,
//! every caller's outcome asserted, concurrency lined up with barriers and gates.

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use idempotent_runtime::{ClaimStore, Disposition, Error, idempotent, observe};
use idempotent_tests::{AppError, Effects, Got, Receipt, Req, classify, poll_while, req, unique};
use tokio::sync::{Barrier, mpsc};

pub struct Svc<S> {
    store: S,
    fx: Effects,
}

impl<S> std::ops::Deref for Svc<S> {
    type Target = Effects;
    fn deref(&self) -> &Effects {
        &self.fx
    }
}

impl<S: ClaimStore> Svc<S> {
    fn new(store: S) -> Arc<Self> {
        Arc::new(Svc {
            store,
            fx: Effects::default(),
        })
    }

    #[idempotent(
        strategy = "dedup_table",
        key = "req.id",
        scope = "req.tenant",
        name = "tests.place",
        store = "self.store",
        lease = "5s"
    )]
    async fn place(&self, req: &Req) -> Result<Receipt, AppError> {
        self.fx.apply(req).await
    }

    #[idempotent(
        strategy = "dedup_table",
        key = "req.id",
        scope = "req.tenant",
        store = "self.store",
        lease = "300ms"
    )]
    async fn place_short(&self, req: &Req) -> Result<Receipt, AppError> {
        self.fx.apply(req).await
    }

    /// Fingerprints `req` and `amount` (issue 11 item 4).
    #[idempotent(
        strategy = "dedup_table",
        key = "req.id",
        scope = "req.tenant",
        name = "tests.charge",
        store = "self.store"
    )]
    async fn charge(&self, req: &Req, amount: Option<f64>) -> Result<Receipt, AppError> {
        let _ = amount;
        self.fx.apply(req).await
    }

    /// `on_cancel = "release"` with the default 30 s lease: only the release frees the key
    /// within a test's patience.
    #[idempotent(
        strategy = "dedup_table",
        key = "req.id",
        scope = "req.tenant",
        store = "self.store",
        on_cancel = "release"
    )]
    async fn place_release(&self, req: &Req) -> Result<Receipt, AppError> {
        self.fx.apply(req).await
    }

    /// The default `on_cancel = "keep"` with a 1 s lease.
    #[idempotent(
        strategy = "dedup_table",
        key = "req.id",
        scope = "req.tenant",
        store = "self.store",
        lease = "1s"
    )]
    async fn place_keep(&self, req: &Req) -> Result<Receipt, AppError> {
        self.fx.apply(req).await
    }
}

async fn concurrent_64_one_key_one_effect<S: ClaimStore + 'static>(store: S) {
    const N: usize = 64;
    let svc = Svc::new(store);
    let r = req(&unique("t"), "order-1", 100);
    let barrier = Arc::new(Barrier::new(N));
    let (tx, mut rx) = mpsc::unbounded_channel();
    svc.gate.arm();
    for _ in 0..N {
        let (svc, r, barrier, tx) = (svc.clone(), r.clone(), barrier.clone(), tx.clone());
        tokio::spawn(async move {
            barrier.wait().await;
            let _ = tx.send(classify(observe(svc.place(&r)).await));
        });
    }
    drop(tx);
    svc.gate.entered.notified().await;
    let mut got = Vec::new();
    for _ in 0..N - 1 {
        got.push(rx.recv().await.unwrap());
    }
    assert!(got.iter().all(|g| *g == Got::InProgress), "{got:?}");
    svc.gate.release.notify_one();
    let Got::Executed(receipt) = rx.recv().await.unwrap() else {
        panic!("the holder executes")
    };
    assert_eq!(
        classify(observe(svc.place(&r)).await),
        Got::Replayed(receipt)
    );
    assert_eq!(svc.count(&r), 1);
}

async fn fingerprint_mismatch_and_scopes<S: ClaimStore + 'static>(store: S) {
    let svc = Svc::new(store);
    let t = unique("t");
    svc.place(&req(&t, "o", 1)).await.unwrap();
    let e = svc.place(&req(&t, "o", 2)).await;
    assert!(
        matches!(e, Err(AppError::Idempotency(Error::FingerprintMismatch))),
        "{e:?}"
    );
    let other = req(&unique("t"), "o", 1);
    let (_, how) = observe(svc.place(&other)).await;
    assert_eq!(how, Some(Disposition::Executed));
    assert_eq!(svc.count(&req(&t, "o", 1)), 1);
    assert_eq!(svc.count(&other), 1);
}

/// Issue 11 item 4: `amount = None` then `+inf` on the same key was replayed; every other
/// amount — non-finite ones included — is another payload.
async fn none_and_non_finite_amounts_are_different_payloads<S: ClaimStore + 'static>(store: S) {
    let svc = Svc::new(store);
    let t = unique("t");
    let amounts = [
        None,
        Some(f64::INFINITY),
        Some(f64::NEG_INFINITY),
        Some(f64::NAN),
        Some(0.0),
    ];
    for (i, first) in amounts.iter().enumerate() {
        let r = req(&t, &format!("charge-{i}"), 100);
        let done = classify(observe(svc.charge(&r, *first)).await);
        let Got::Executed(receipt) = done else {
            panic!("{first:?}: {done:?}")
        };
        for other in amounts
            .iter()
            .filter(|a| format!("{a:?}") != format!("{first:?}"))
        {
            let (e, how) = observe(svc.charge(&r, *other)).await;
            assert!(
                matches!(e, Err(AppError::Idempotency(Error::FingerprintMismatch))),
                "{first:?} then {other:?}: {e:?}"
            );
            assert_eq!(how, None, "{first:?} then {other:?}");
        }
        let again = classify(observe(svc.charge(&r, *first)).await);
        assert_eq!(again, Got::Replayed(receipt), "{first:?}");
        assert_eq!(svc.count(&r), 1, "{first:?}: the body ran once");
    }
}

async fn body_error_releases_the_claim<S: ClaimStore + 'static>(store: S) {
    let svc = Svc::new(store);
    let r = req(&unique("t"), "o", 1);
    svc.fail_next.store(true, SeqCst);
    let first = svc.place(&r).await;
    assert!(matches!(first, Err(AppError::Rejected)), "{first:?}");
    let (_, how) = observe(svc.place(&r)).await;
    assert_eq!(how, Some(Disposition::Executed));
    assert_eq!(svc.count(&r), 1);
}

/// `on_cancel = "release"`: a future dropped mid-body releases its 30 s claim at once in the
/// background, so a retry executes as soon as the release has landed.
async fn dropped_future_with_release_frees_the_key_at_once<S: ClaimStore + 'static>(store: S) {
    let svc = Svc::new(store);
    let r = req(&unique("t"), "o", 1);
    svc.gate.arm();
    let task = tokio::spawn({
        let (svc, r) = (svc.clone(), r.clone());
        async move { svc.place_release(&r).await }
    });
    svc.gate.entered.notified().await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(svc.count(&r), 0);
    let got = poll_while(&Got::InProgress, Duration::from_secs(5), || async {
        classify(observe(svc.place_release(&r)).await)
    })
    .await;
    assert!(matches!(got, Got::Executed(_)), "{got:?}");
    assert_eq!(svc.count(&r), 1);
}

/// `on_cancel = "keep"` (the default): a future dropped mid-body keeps its claim, so the
/// immediate retry gets `InProgress` and writes nothing; once the 1 s lease has ended (nobody
/// renews it) a retry executes exactly once, and later ones replay.
async fn dropped_future_keeps_the_claim_until_the_lease_ends<S: ClaimStore + 'static>(store: S) {
    let svc = Svc::new(store);
    let r = req(&unique("t"), "o", 1);
    let before_claim = std::time::Instant::now();
    svc.gate.arm();
    let task = tokio::spawn({
        let (svc, r) = (svc.clone(), r.clone());
        async move { svc.place_keep(&r).await }
    });
    svc.gate.entered.notified().await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(classify(observe(svc.place_keep(&r)).await), Got::InProgress);
    assert_eq!(svc.count(&r), 0, "the retry did not run the body");
    let got = poll_while(&Got::InProgress, Duration::from_secs(10), || async {
        classify(observe(svc.place_keep(&r)).await)
    })
    .await;
    let Got::Executed(receipt) = got else {
        panic!("after the lease a retry executes: {got:?}")
    };
    // The claim was kept, not released: it lasted its lease (less 100 ms of slack), counted
    // from before it was taken.
    assert!(before_claim.elapsed() >= Duration::from_millis(900));
    assert_eq!(svc.count(&r), 1);
    assert_eq!(
        classify(observe(svc.place_keep(&r)).await),
        Got::Replayed(receipt)
    );
    assert_eq!(svc.count(&r), 1);
}

/// A holder that crashed (stopped renewing) leaves an in-progress claim with a short lease.
/// Until it lapses callers get `InProgress`; then exactly one of 16 concurrent retries takes
/// over, and the crashed holder can neither complete nor renew any more.
async fn expired_claim_is_taken_over<S: ClaimStore + 'static>(store: S) {
    let svc = Svc::new(store);
    let r = req(&unique("t"), "o", 1);
    let key = idempotent_runtime::KeyBuilder::new("tests.place")
        .scope(&r.tenant)
        .part(&r.id)
        .finish()
        .unwrap();
    let crashed = idempotent_runtime::store::Claim {
        key: &key,
        fingerprint: None,
        owner: "crashed-holder",
        lease: Duration::from_millis(300),
    };
    assert!(svc.store.try_claim(&crashed).await.unwrap());
    assert_eq!(classify(observe(svc.place(&r)).await), Got::InProgress);
    // Let the crashed holder's lease lapse (waiting for time, not ordering callers).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let barrier = Arc::new(Barrier::new(16));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (svc, r, barrier) = (svc.clone(), r.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                classify(observe(svc.place(&r)).await)
            })
        })
        .collect();
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    let executed: Vec<_> = got
        .iter()
        .filter_map(|g| match g {
            Got::Executed(r) => Some(r.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(executed.len(), 1, "exactly one caller takes over: {got:?}");
    for g in &got {
        match g {
            Got::Executed(_) | Got::InProgress => {}
            Got::Replayed(x) => assert_eq!(x, &executed[0]),
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!(svc.count(&r), 1);
    let late = svc
        .store
        .complete_claim(&key, "crashed-holder", b"{}", Duration::from_secs(60))
        .await
        .unwrap();
    assert!(!late, "the crashed holder's late completion is refused");
    let renewed = svc
        .store
        .renew_claim(&key, "crashed-holder", Duration::from_secs(60))
        .await
        .unwrap();
    assert!(!renewed, "the crashed holder cannot renew the new claim");
    assert_eq!(
        classify(observe(svc.place(&r)).await),
        Got::Replayed(executed[0].clone())
    );
}

idempotent_tests::on_redis_backends!(
    concurrent_64_one_key_one_effect,
    fingerprint_mismatch_and_scopes,
    none_and_non_finite_amounts_are_different_payloads,
    body_error_releases_the_claim,
    dropped_future_with_release_frees_the_key_at_once,
    dropped_future_keeps_the_claim_until_the_lease_ends,
    expired_claim_is_taken_over,
);

// ------------------------------------------------------------------------- round trips

mod redis_servers {
    use super::*;
    use idempotent_tests::{
        CountCommands, WARM_KEYS, assert_round_trips, counting, private_redis,
        private_redis_cluster,
    };

    /// A fresh call sends 2 scripts (claim, complete), a replay 1 — the claim script returns
    /// the completed record itself — executing one `HMGET` inside Redis; on private servers
    /// so that no other test's commands are counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(has_redis),
        ignore = "Redis: set IDEMPOTENT_REDIS_URL or put redis-server on PATH"
    )]
    async fn round_trips_standalone() {
        let Some((server, store)) = private_redis().await else {
            return;
        };
        count_round_trips(Svc::new(store), &server).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(has_redis_cluster),
        ignore = "Redis Cluster: set IDEMPOTENT_REDIS_CLUSTER_URLS or put redis-server on PATH"
    )]
    async fn round_trips_cluster() {
        let Some((cluster, store)) = private_redis_cluster().await else {
            return;
        };
        count_round_trips(Svc::new(store), &cluster).await;
    }

    async fn count_round_trips<S: ClaimStore>(svc: Arc<Svc<S>>, servers: &impl CountCommands) {
        let t = unique("t");
        for i in 0..WARM_KEYS {
            let warm = req(&t, &format!("warm-{i}"), 1);
            svc.place(&warm).await.unwrap();
            svc.place(&warm).await.unwrap();
        }
        let r = req(&t, "measured", 1);
        let ((first, how), fresh) = counting(servers, observe(svc.place(&r))).await;
        assert_eq!(how, Some(Disposition::Executed));
        let ((again, how), replay) = counting(servers, observe(svc.place(&r))).await;
        assert_eq!(how, Some(Disposition::Replayed));
        assert_eq!(again.unwrap(), first.unwrap());
        assert_eq!(svc.count(&r), 1);
        assert_round_trips(fresh, replay, 6, 1);
    }
}
