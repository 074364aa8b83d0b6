//! `strategy = "dedup_table"` in claim mode on standalone Redis and a 3-master Redis Cluster
//! (the memory store's claim mode is covered in `dedup_table.rs`). Effects counted in a ledger,
//! every caller's outcome asserted, concurrency lined up with barriers and gates.

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use idempotent_runtime::{ClaimStore, Disposition, Error, idempotent, observe};
use idempotent_tests::{AppError, Effects, Got, Receipt, Req, classify, req, unique};
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
        name = "tests.place",
        store = "self.store",
        lease = "300ms"
    )]
    async fn place_short(&self, req: &Req) -> Result<Receipt, AppError> {
        self.fx.apply(req).await
    }

    #[idempotent(
        strategy = "dedup_table",
        key = "req.id",
        scope = "req.tenant",
        name = "tests.place",
        store = "self.store",
        lease = "5s",
        on_busy = "wait(20s)"
    )]
    async fn place_waiting(&self, req: &Req) -> Result<Receipt, AppError> {
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

async fn body_error_releases_the_claim<S: ClaimStore + 'static>(store: S) {
    let svc = Svc::new(store);
    let r = req(&unique("t"), "o", 1);
    svc.fail_next.store(true, SeqCst);
    assert!(matches!(svc.place(&r).await, Err(AppError::Rejected)));
    let (_, how) = observe(svc.place(&r)).await;
    assert_eq!(how, Some(Disposition::Executed));
    assert_eq!(svc.count(&r), 1);
}

async fn dropped_future_releases_the_claim<S: ClaimStore + 'static>(store: S) {
    let svc = Svc::new(store);
    let r = req(&unique("t"), "o", 1);
    svc.gate.arm();
    let task = tokio::spawn({
        let (svc, r) = (svc.clone(), r.clone());
        async move { svc.place(&r).await }
    });
    svc.gate.entered.notified().await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    let (retry, how) = observe(svc.place_waiting(&r)).await;
    assert_eq!(how, Some(Disposition::Executed), "{retry:?}");
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
    body_error_releases_the_claim,
    dropped_future_releases_the_claim,
    expired_claim_is_taken_over,
);
