//! `strategy = "dedup_table"` in claim mode on standalone Redis and a 3-master Redis Cluster
//! (the memory store's claim mode is covered in `dedup_table.rs`). Effects counted in a ledger,
//! every caller's outcome asserted, concurrency lined up with barriers and gates.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idempotent_runtime::{ClaimStore, Disposition, Error, idempotent, observe};
use idempotent_tests::{AppError, Gate, Receipt, Req, unique};
use tokio::sync::{Barrier, mpsc};

pub struct Svc<S> {
    store: S,
    ledger: Mutex<Vec<(String, String, i64)>>,
    gate: Gate,
    fail_next: AtomicBool,
    serial: AtomicU64,
}

impl<S: ClaimStore> Svc<S> {
    fn new(store: S) -> Arc<Self> {
        Arc::new(Svc {
            store,
            ledger: Mutex::default(),
            gate: Gate::default(),
            fail_next: AtomicBool::new(false),
            serial: AtomicU64::new(0),
        })
    }

    fn count(&self, r: &Req) -> usize {
        self.ledger
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, k, a)| *t == r.tenant && *k == r.id && *a == r.amount)
            .count()
    }

    async fn body(&self, req: &Req) -> Result<Receipt, AppError> {
        self.gate.pass().await;
        if self.fail_next.swap(false, SeqCst) {
            return Err(AppError::Rejected);
        }
        self.ledger
            .lock()
            .unwrap()
            .push((req.tenant.clone(), req.id.clone(), req.amount));
        Ok(Receipt {
            tenant: req.tenant.clone(),
            id: req.id.clone(),
            amount: req.amount,
            serial: self.serial.fetch_add(1, SeqCst) + 1,
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
        self.body(req).await
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
        self.body(req).await
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
        self.body(req).await
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Got {
    Executed(Receipt),
    Replayed(Receipt),
    InProgress,
    Other(String),
}

fn classify(r: (Result<Receipt, AppError>, Option<Disposition>)) -> Got {
    match r {
        (Ok(v), Some(Disposition::Executed)) => Got::Executed(v),
        (Ok(v), Some(Disposition::Replayed)) => Got::Replayed(v),
        (Err(AppError::Idempotency(Error::InProgress)), _) => Got::InProgress,
        (other, how) => Got::Other(format!("{other:?} / {how:?}")),
    }
}

fn req(tenant: &str, id: &str, amount: i64) -> Req {
    Req {
        tenant: tenant.into(),
        id: id.into(),
        amount,
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

/// A claim whose lease ran out is taken over by exactly one caller; the late holder's
/// completion is refused (`LockLost`) and the new holder's response is the one replayed.
async fn expired_claim_is_taken_over<S: ClaimStore + 'static>(store: S) {
    let svc = Svc::new(store);
    let r = req(&unique("t"), "o", 1);
    svc.gate.arm();
    let first = tokio::spawn({
        let (svc, r) = (svc.clone(), r.clone());
        async move { svc.place_short(&r).await }
    });
    svc.gate.entered.notified().await;
    let second = loop {
        match classify(observe(svc.place_short(&r)).await) {
            Got::InProgress => tokio::time::sleep(Duration::from_millis(20)).await,
            other => break other,
        }
    };
    let Got::Executed(receipt) = second else {
        panic!("{second:?}")
    };
    svc.gate.release.notify_one();
    let first = first.await.unwrap();
    assert!(
        matches!(first, Err(AppError::Idempotency(Error::LockLost))),
        "{first:?}"
    );
    assert_eq!(
        classify(observe(svc.place(&r)).await),
        Got::Replayed(receipt)
    );
}

macro_rules! on_backends {
    ($($test:ident),* $(,)?) => {
        mod redis {
            $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                let Some(store) = idempotent_tests::redis().await else { return };
                super::$test(store).await
            }
            )*
        }
        mod cluster {
            $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                let Some(store) = idempotent_tests::redis_cluster().await else { return };
                super::$test(store).await
            }
            )*
        }
    };
}

on_backends!(
    concurrent_64_one_key_one_effect,
    fingerprint_mismatch_and_scopes,
    body_error_releases_the_claim,
    dropped_future_releases_the_claim,
    expired_claim_is_taken_over,
);
