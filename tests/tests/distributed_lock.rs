//! `strategy = "distributed_lock"` on standalone Redis, a 3-master Redis Cluster (started by the
//! suite) and the memory store. Effects are counted in a fenced ledger (it refuses a write whose
//! fencing token is lower than one it has seen for the key); the outcome of every caller is
//! asserted. Concurrency is lined up with barriers and gates; only lease expiry waits for time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idempotent_runtime::store::Acquired;
use idempotent_runtime::strategy::distributed_lock::{Hooks, with_hooks};
use idempotent_runtime::{
    Disposition, Error, FencingToken, KeyBuilder, LockStore, idempotent, observe,
};
use idempotent_tests::{AppError, Gate, Got, Receipt, Req, classify, poll_while, req, unique};
use tokio::sync::{Barrier, mpsc};

/// A ledger that accepts a write only if its fencing token is at least the highest it has seen
/// for the key (the storage side of fencing).
#[derive(Default)]
pub struct FencedLedger {
    rows: Mutex<Vec<(String, String, u64)>>,
    highest: Mutex<std::collections::HashMap<(String, String), u64>>,
}

impl FencedLedger {
    /// `true` when accepted.
    fn write(&self, req: &Req, fence: u64) -> bool {
        let mut highest = self.highest.lock().unwrap();
        let h = highest
            .entry((req.tenant.clone(), req.id.clone()))
            .or_default();
        if fence < *h {
            return false;
        }
        *h = fence;
        self.rows
            .lock()
            .unwrap()
            .push((req.tenant.clone(), req.id.clone(), fence));
        true
    }

    fn count(&self, req: &Req) -> usize {
        self.rows
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, k, _)| *t == req.tenant && *k == req.id)
            .count()
    }
}

pub struct Svc<S> {
    store: S,
    ledger: FencedLedger,
    gate: Gate,
    after_write: Gate,
    fail_next: AtomicBool,
    rejected_writes: AtomicU64,
    serial: AtomicU64,
    fences: Mutex<Vec<u64>>,
}

impl<S: LockStore> Svc<S> {
    fn new(store: S) -> Arc<Self> {
        Arc::new(Svc {
            store,
            ledger: FencedLedger::default(),
            gate: Gate::default(),
            after_write: Gate::default(),
            fail_next: AtomicBool::new(false),
            rejected_writes: AtomicU64::new(0),
            serial: AtomicU64::new(0),
            fences: Mutex::new(Vec::new()),
        })
    }

    async fn body(&self, req: &Req, fence: FencingToken) -> Result<Receipt, AppError> {
        self.fences.lock().unwrap().push(fence.get());
        self.gate.pass().await;
        if self.fail_next.swap(false, SeqCst) {
            return Err(AppError::Rejected);
        }
        if !self.ledger.write(req, fence.get()) {
            self.rejected_writes.fetch_add(1, SeqCst);
        }
        self.after_write.pass().await;
        Ok(Receipt {
            tenant: req.tenant.clone(),
            id: req.id.clone(),
            amount: req.amount,
            serial: self.serial.fetch_add(1, SeqCst) + 1,
        })
    }

    #[idempotent(
        strategy = "distributed_lock",
        key = "req.id",
        scope = "req.tenant",
        store = "self.store",
        lease = "5s"
    )]
    async fn settle(&self, req: &Req, #[fence] fence: FencingToken) -> Result<Receipt, AppError> {
        self.body(req, fence).await
    }

    #[idempotent(
        strategy = "distributed_lock",
        key = "req.id",
        scope = "req.tenant",
        store = "self.store",
        lease = "300ms"
    )]
    async fn settle_short(
        &self,
        req: &Req,
        #[fence] fence: FencingToken,
    ) -> Result<Receipt, AppError> {
        self.body(req, fence).await
    }

    /// `on_cancel = "release"` with the default 30 s lease: only the release frees the key
    /// within a test's patience. A duplicate waits for the lock up to 20 s.
    #[idempotent(
        strategy = "distributed_lock",
        key = "req.id",
        scope = "req.tenant",
        store = "self.store",
        on_cancel = "release",
        on_busy = "wait(20s)"
    )]
    async fn settle_release(
        &self,
        req: &Req,
        #[fence] fence: FencingToken,
    ) -> Result<Receipt, AppError> {
        self.body(req, fence).await
    }

    /// The default `on_cancel = "keep"` with a 1 s lease.
    #[idempotent(
        strategy = "distributed_lock",
        key = "req.id",
        scope = "req.tenant",
        store = "self.store",
        lease = "1s"
    )]
    async fn settle_keep(
        &self,
        req: &Req,
        #[fence] fence: FencingToken,
    ) -> Result<Receipt, AppError> {
        self.body(req, fence).await
    }

    /// No `#[fence]` parameter: the token is still issued, the body just does not see it.
    #[idempotent(
        strategy = "distributed_lock",
        key = "req.id",
        scope = "req.tenant",
        store = "self.store"
    )]
    async fn report(&self, req: &Req) -> Result<Receipt, AppError> {
        self.body(req, FencingToken(u64::MAX)).await
    }
}

/// Calls `settle_short` until it stops answering `InProgress` (waits out a lease).
async fn settle_when_free<S: LockStore>(svc: &Svc<S>, r: &Req) -> Got {
    idempotent_tests::poll_while(&Got::InProgress, Duration::from_secs(5), || async {
        classify(observe(svc.settle_short(r)).await)
    })
    .await
}

// ----------------------------------------------------------------- tests, generic over stores

async fn concurrent_64_one_key_one_effect<S: LockStore + 'static>(store: S) {
    const N: usize = 64;
    let svc = Svc::new(store);
    let r = req(&unique("t"), "period-1", 100);
    let barrier = Arc::new(Barrier::new(N));
    let (tx, mut rx) = mpsc::unbounded_channel();
    svc.gate.arm();
    for _ in 0..N {
        let (svc, r, barrier, tx) = (svc.clone(), r.clone(), barrier.clone(), tx.clone());
        tokio::spawn(async move {
            barrier.wait().await;
            let _ = tx.send(classify(observe(svc.settle(&r)).await));
        });
    }
    drop(tx);
    svc.gate.entered.notified().await;
    let mut got = Vec::new();
    for _ in 0..N - 1 {
        got.push(rx.recv().await.unwrap());
    }
    assert!(
        got.iter().all(|g| *g == Got::InProgress),
        "while the holder runs, every other caller gets InProgress: {got:?}"
    );
    svc.gate.release.notify_one();
    let last = rx.recv().await.unwrap();
    let Got::Executed(receipt) = last else {
        panic!("{last:?}")
    };
    assert_eq!(svc.ledger.count(&r), 1);
    for _ in 0..3 {
        assert_eq!(
            classify(observe(svc.settle(&r)).await),
            Got::Replayed(receipt.clone())
        );
    }
    assert_eq!(svc.ledger.count(&r), 1);
}

async fn fence_grows_with_every_acquisition<S: LockStore + 'static>(store: S) {
    let svc = Svc::new(store);
    let r = req(&unique("t"), "period-1", 1);
    svc.fail_next.store(true, SeqCst);
    let e = svc.settle(&r).await;
    assert!(matches!(e, Err(AppError::Rejected)), "{e:?}");
    assert_eq!(svc.ledger.count(&r), 0, "a failed body leaves no effect");
    let (retry, how) = observe(svc.settle(&r)).await;
    assert_eq!(
        how,
        Some(Disposition::Executed),
        "the lock was released: {retry:?}"
    );
    let fences = svc.fences.lock().unwrap().clone();
    assert_eq!(fences.len(), 2);
    assert!(fences[1] > fences[0], "{fences:?}");
    // Without a #[fence] parameter the strategy works the same.
    let (rep, how) = observe(svc.report(&r)).await;
    assert_eq!(how, Some(Disposition::Executed), "{rep:?}");
}

async fn lease_is_renewed_while_the_body_runs<S: LockStore + 'static>(store: S) {
    let svc = Svc::new(store);
    let r = req(&unique("t"), "period-1", 1);
    svc.gate.arm();
    let first = tokio::spawn({
        let (svc, r) = (svc.clone(), r.clone());
        async move { classify(observe(svc.settle_short(&r)).await) }
    });
    svc.gate.entered.notified().await;
    // Three leases pass; renewal (every 100 ms) keeps the lock.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        classify(observe(svc.settle_short(&r)).await),
        Got::InProgress
    );
    svc.gate.release.notify_one();
    let first = first.await.unwrap();
    assert!(matches!(first, Got::Executed(_)), "{first:?}");
    assert_eq!(svc.ledger.count(&r), 1);
}

async fn expired_holder_is_fenced_off_and_gets_lock_lost<S: LockStore + 'static>(store: S) {
    let svc = Svc::new(store);
    let r = req(&unique("t"), "period-1", 1);
    svc.gate.arm();
    let first = tokio::spawn({
        let (svc, r) = (svc.clone(), r.clone());
        let hooks = Hooks {
            block_renewal: true,
            ..Hooks::default()
        };
        async move { with_hooks(hooks, observe(svc.settle_short(&r))).await }
    });
    svc.gate.entered.notified().await;
    // The first holder is paused with renewal blocked: its 300 ms lease runs out and a second
    // caller acquires the lock (fence + 1), writes, and is held after its write.
    svc.after_write.arm();
    let second = tokio::spawn({
        let (svc, r) = (svc.clone(), r.clone());
        async move { settle_when_free(&svc, &r).await }
    });
    svc.after_write.entered.notified().await;
    assert_eq!(svc.ledger.count(&r), 1, "the second holder's write");
    // Let the first go on: its fenced write is refused, its completion is refused.
    svc.gate.release.notify_one();
    let (first, _) = first.await.unwrap();
    assert!(
        matches!(first, Err(AppError::Idempotency(Error::LockLost))),
        "{first:?}"
    );
    assert_eq!(
        svc.rejected_writes.load(SeqCst),
        1,
        "the stale write is fenced off"
    );
    assert_eq!(svc.ledger.count(&r), 1);
    // The first could not delete the second's lock: a third caller still sees it held.
    assert_eq!(
        classify(observe(svc.settle_short(&r)).await),
        Got::InProgress
    );
    svc.after_write.release.notify_one();
    let second = second.await.unwrap();
    let Got::Executed(receipt) = second else {
        panic!("{second:?}")
    };
    assert_eq!(
        classify(observe(svc.settle_short(&r)).await),
        Got::Replayed(receipt)
    );
    let fences = svc.fences.lock().unwrap().clone();
    assert!(fences[1] > fences[0], "{fences:?}");
}

async fn stale_owner_cannot_renew_release_or_complete<S: LockStore>(store: S) {
    let key = KeyBuilder::new(&unique("op")).part("k").finish().unwrap();
    let (a, b, c) = ("a".repeat(32), "b".repeat(32), "c".repeat(32));
    let Acquired::Acquired { fence: f1 } = store
        .acquire_lock(&key, &a, None, Duration::from_millis(200))
        .await
        .unwrap()
    else {
        panic!("a acquires")
    };
    let f2 = loop {
        match store
            .acquire_lock(&key, &b, None, Duration::from_secs(10))
            .await
            .unwrap()
        {
            Acquired::Acquired { fence } => break fence,
            Acquired::Held { .. } => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("{other:?}"),
        }
    };
    assert!(f2 > f1, "{f1} then {f2}");
    assert!(
        !store
            .renew_lock(&key, &a, Duration::from_secs(10))
            .await
            .unwrap()
    );
    assert!(!store.release_lock(&key, &a).await.unwrap());
    assert!(
        !store
            .complete_lock(&key, &a, b"\"stale\"", Duration::from_secs(10))
            .await
            .unwrap()
    );
    assert!(matches!(
        store
            .acquire_lock(&key, &c, None, Duration::from_secs(10))
            .await
            .unwrap(),
        Acquired::Held { .. }
    ));
    assert!(
        store
            .renew_lock(&key, &b, Duration::from_secs(10))
            .await
            .unwrap()
    );
    assert!(
        store
            .complete_lock(&key, &b, b"\"done\"", Duration::from_secs(10))
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .acquire_lock(&key, &c, None, Duration::from_secs(10))
            .await
            .unwrap(),
        Acquired::Replay {
            fingerprint: None,
            response: b"\"done\"".to_vec().into()
        }
    );
}

async fn slow_acquisition_never_runs_the_body<S: LockStore + 'static>(store: S) {
    let svc = Svc::new(store);
    let r = req(&unique("t"), "period-1", 1);
    let hooks = Hooks::default().after_acquire(|| tokio::time::sleep(Duration::from_millis(400)));
    let (got, _) = with_hooks(hooks, observe(svc.settle_short(&r))).await;
    // The error says the lease was shorter than the acquisition, and that the body did not
    // run — not that another caller took the lock.
    assert!(
        matches!(
            &got,
            Err(AppError::Idempotency(Error::LeaseShorterThanAcquisition {
                lease,
                took,
            })) if *lease == Duration::from_millis(300) && *took >= Duration::from_millis(400)
        ),
        "{got:?}"
    );
    let message = got.as_ref().unwrap_err().to_string();
    assert!(
        message.contains("not less than its lease of 300ms")
            && message.contains("the body was not run"),
        "{message}"
    );
    assert!(svc.fences.lock().unwrap().is_empty(), "the body never ran");
    assert_eq!(svc.ledger.count(&r), 0);
    let (retry, how) = observe(svc.settle_short(&r)).await;
    assert_eq!(how, Some(Disposition::Executed), "{retry:?}");
    assert_eq!(svc.ledger.count(&r), 1);
}

async fn fingerprint_and_scope<S: LockStore + 'static>(store: S) {
    let svc = Svc::new(store);
    let t = unique("t");
    svc.settle(&req(&t, "p", 1)).await.unwrap();
    let e = svc.settle(&req(&t, "p", 2)).await;
    assert!(
        matches!(e, Err(AppError::Idempotency(Error::FingerprintMismatch))),
        "{e:?}"
    );
    let other = req(&unique("t"), "p", 1);
    let (_, how) = observe(svc.settle(&other)).await;
    assert_eq!(
        how,
        Some(Disposition::Executed),
        "another tenant runs on its own"
    );
    assert_eq!(svc.ledger.count(&req(&t, "p", 1)), 1);
    assert_eq!(svc.ledger.count(&other), 1);
}

/// `on_cancel = "release"`: a future dropped mid-body releases its 30 s lock at once in the
/// background, so a waiting retry (up to 20 s, less than the lease) executes.
async fn dropped_future_with_release_frees_the_lock_at_once<S: LockStore + 'static>(store: S) {
    let svc = Svc::new(store);
    let r = req(&unique("t"), "period-1", 1);
    svc.gate.arm();
    let task = tokio::spawn({
        let (svc, r) = (svc.clone(), r.clone());
        async move { svc.settle_release(&r).await }
    });
    svc.gate.entered.notified().await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(svc.ledger.count(&r), 0);
    let (retry, how) = observe(svc.settle_release(&r)).await;
    assert_eq!(how, Some(Disposition::Executed), "{retry:?}");
    assert_eq!(svc.ledger.count(&r), 1);
}

/// `on_cancel = "keep"` (the default): a future dropped mid-body keeps its lock, so the
/// immediate retry gets `InProgress` and writes nothing; once the 1 s lease has ended (nobody
/// renews it) a retry executes exactly once, and later ones replay.
async fn dropped_future_keeps_the_lock_until_the_lease_ends<S: LockStore + 'static>(store: S) {
    let svc = Svc::new(store);
    let r = req(&unique("t"), "period-1", 1);
    let before_lock = std::time::Instant::now();
    svc.gate.arm();
    let task = tokio::spawn({
        let (svc, r) = (svc.clone(), r.clone());
        async move { svc.settle_keep(&r).await }
    });
    svc.gate.entered.notified().await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(
        classify(observe(svc.settle_keep(&r)).await),
        Got::InProgress
    );
    assert_eq!(svc.ledger.count(&r), 0, "the retry did not run the body");
    let got = poll_while(&Got::InProgress, Duration::from_secs(10), || async {
        classify(observe(svc.settle_keep(&r)).await)
    })
    .await;
    let Got::Executed(receipt) = got else {
        panic!("after the lease a retry executes: {got:?}")
    };
    // The lock was kept, not released: it lasted its lease (less 100 ms of slack), counted from
    // before it was taken.
    assert!(before_lock.elapsed() >= Duration::from_millis(900));
    assert_eq!(svc.ledger.count(&r), 1);
    assert_eq!(
        classify(observe(svc.settle_keep(&r)).await),
        Got::Replayed(receipt)
    );
    assert_eq!(svc.ledger.count(&r), 1);
}

/// The store's own API with owner tokens of any length (a hand-written caller's): a held lock
/// reports its holder's fingerprint, or none — never a piece of the owner token (found by
/// trying the product: owners of different lengths once read as a fingerprint `"ll"`).
async fn held_reports_the_holders_fingerprint_for_any_owner<S: LockStore>(store: S) {
    let fp = "f".repeat(64);
    for (holder, holder_fp, other) in [
        ("a", Some(fp.as_str()), "much-longer-owner"),
        ("much-longer-owner", None, "a"),
        ("a|b", None, "a"),
        ("short", Some(fp.as_str()), "shorter"),
    ] {
        let key = KeyBuilder::new(&unique("op")).part("k").finish().unwrap();
        let got = store
            .acquire_lock(&key, holder, holder_fp, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(
            matches!(got, Acquired::Acquired { .. }),
            "{holder}: {got:?}"
        );
        let seen = store
            .acquire_lock(&key, other, None, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(
            seen,
            Acquired::Held {
                fingerprint: holder_fp.map(Into::into)
            },
            "{holder} holds, {other} asks"
        );
        assert!(store.release_lock(&key, holder).await.unwrap());
    }
}

idempotent_tests::on_kv_backends!(
    held_reports_the_holders_fingerprint_for_any_owner,
    concurrent_64_one_key_one_effect,
    fence_grows_with_every_acquisition,
    lease_is_renewed_while_the_body_runs,
    expired_holder_is_fenced_off_and_gets_lock_lost,
    stale_owner_cannot_renew_release_or_complete,
    slow_acquisition_never_runs_the_body,
    fingerprint_and_scope,
    dropped_future_with_release_frees_the_lock_at_once,
    dropped_future_keeps_the_lock_until_the_lease_ends,
);

// --------------------------------------------------------- Redis outages and round trips

mod redis_servers {
    use super::*;
    use idempotent_tests::{
        CountCommands, RedisServer, WARM_KEYS, assert_round_trips, counting, private_redis,
        private_redis_cluster, redis_server_on_path,
    };

    /// A fresh call sends at most 2 scripts (no renewal within a 5 s lease) executing 5
    /// commands inside Redis, a replay 1 executing 2; on a private server so that no other
    /// test's commands are counted.
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

    async fn count_round_trips<S: LockStore>(svc: Arc<Svc<S>>, servers: &impl CountCommands) {
        let t = unique("t");
        for i in 0..WARM_KEYS {
            let warm = req(&t, &format!("warm-{i}"), 1);
            svc.settle(&warm).await.unwrap();
            svc.settle(&warm).await.unwrap();
        }
        let r = req(&t, "period-1", 1);
        let ((_, how), fresh) = counting(servers, observe(svc.settle(&r))).await;
        assert_eq!(how, Some(Disposition::Executed));
        let ((_, how), replay) = counting(servers, observe(svc.settle(&r))).await;
        assert_eq!(how, Some(Disposition::Replayed));
        assert_round_trips(fresh, replay, 5, 2);
    }

    /// Redis down before the call: a typed Backend error, no effect; back up: the key is free.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(has_redis_server),
        ignore = "needs redis-server on PATH (starts servers of its own)"
    )]
    async fn unreachable_redis_is_a_backend_error() {
        if !redis_server_on_path() {
            return;
        }
        let mut server = RedisServer::start(&[]);
        let store = idempotent_runtime::RedisStore::connect(&server.url())
            .await
            .unwrap();
        let svc = Svc::new(store);
        let r = req(&unique("t"), "period-1", 1);
        server.stop();
        let e = svc.settle(&r).await;
        assert!(
            matches!(e, Err(AppError::Idempotency(Error::Backend(_)))),
            "{e:?}"
        );
        assert_eq!(svc.ledger.count(&r), 0);
        server.restart();
        let mut got = classify(observe(svc.settle(&r)).await);
        for _ in 0..50 {
            if !matches!(got, Got::Other(_)) {
                break;
            }
            // The connection manager reconnects in the background.
            tokio::time::sleep(Duration::from_millis(100)).await;
            got = classify(observe(svc.settle(&r)).await);
        }
        assert!(matches!(got, Got::Executed(_)), "{got:?}");
        assert_eq!(svc.ledger.count(&r), 1);
    }

    /// Redis restarted without persistence forgets the fencing counter: the next acquisition's
    /// token is still higher than every earlier one (the counter restarts from the server's
    /// clock), so a stalled holder's old token keeps losing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(has_redis_server),
        ignore = "needs redis-server on PATH (starts servers of its own)"
    )]
    async fn fencing_tokens_keep_growing_across_a_restart_without_persistence() {
        if !redis_server_on_path() {
            return;
        }
        let mut server = RedisServer::start(&[]);
        let store = idempotent_runtime::RedisStore::connect(&server.url())
            .await
            .unwrap();
        let svc = Svc::new(store);
        let r = req(&unique("t"), "period-1", 1);
        for _ in 0..3 {
            svc.fail_next.store(true, SeqCst);
            assert!(matches!(svc.settle(&r).await, Err(AppError::Rejected)));
        }
        server.stop();
        server.restart();
        let mut got = classify(observe(svc.settle(&r)).await);
        for _ in 0..50 {
            if !matches!(got, Got::Other(_)) {
                break;
            }
            // The connection manager reconnects in the background.
            tokio::time::sleep(Duration::from_millis(100)).await;
            got = classify(observe(svc.settle(&r)).await);
        }
        assert!(matches!(got, Got::Executed(_)), "{got:?}");
        let fences = svc.fences.lock().unwrap().clone();
        assert_eq!(fences.len(), 4, "{fences:?}");
        assert!(
            fences.windows(2).all(|w| w[1] > w[0]),
            "fencing tokens must grow: {fences:?}"
        );
    }

    /// Redis killed while the body runs and not back: completion is retried for the lease
    /// (5 s), then the caller gets the typed `Error::Unrecorded` (the effect happened, its
    /// record is not written; before issue 10 this was `Error::Backend` after 3 tries) whose
    /// last error is the backend's; the body ran once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(has_redis_server),
        ignore = "needs redis-server on PATH (starts servers of its own)"
    )]
    async fn redis_lost_mid_call_is_a_backend_error_and_one_effect() {
        if !redis_server_on_path() {
            return;
        }
        let mut server = RedisServer::start(&[]);
        let store = idempotent_runtime::RedisStore::connect(&server.url())
            .await
            .unwrap();
        let svc = Svc::new(store);
        let r = req(&unique("t"), "period-1", 1);
        svc.gate.arm();
        let call = tokio::spawn({
            let (svc, r) = (svc.clone(), r.clone());
            async move { svc.settle(&r).await }
        });
        svc.gate.entered.notified().await;
        server.stop();
        assert_ne!(
            server.cli(&["ping"]).trim(),
            "PONG",
            "the server must be down"
        );
        svc.gate.release.notify_one();
        let got = call.await.unwrap();
        assert!(
            matches!(
                &got,
                Err(AppError::Idempotency(Error::Unrecorded { last, .. }))
                    if matches!(**last, Error::Backend(_))
            ),
            "{got:?}"
        );
        assert_eq!(svc.ledger.count(&r), 1);
    }

    /// Redis restarted (with its append-only file) while the body runs: the completion
    /// reconnects and records the response; one effect, and the retry replays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(has_redis_server),
        ignore = "needs redis-server on PATH (starts servers of its own)"
    )]
    async fn redis_restarted_mid_call_records_once() {
        if !redis_server_on_path() {
            return;
        }
        let mut server = RedisServer::start(&["--appendonly", "yes", "--appendfsync", "always"]);
        let store = idempotent_runtime::RedisStore::connect(&server.url())
            .await
            .unwrap();
        let svc = Svc::new(store);
        let r = req(&unique("t"), "period-1", 1);
        svc.gate.arm();
        let call = tokio::spawn({
            let (svc, r) = (svc.clone(), r.clone());
            async move { observe(svc.settle(&r)).await }
        });
        svc.gate.entered.notified().await;
        server.restart();
        svc.gate.release.notify_one();
        let got = classify(call.await.unwrap());
        assert_eq!(svc.ledger.count(&r), 1);
        match got {
            Got::Executed(receipt) => {
                assert_eq!(
                    classify(observe(svc.settle(&r)).await),
                    Got::Replayed(receipt)
                );
            }
            // The reconnect outlasted the completion's retries (the lease): typed error, and
            // the lock (persisted) still holds off a retry until its lease ends.
            Got::Other(e) => {
                assert!(e.contains("Unrecorded"), "{e}");
                assert_eq!(classify(observe(svc.settle(&r)).await), Got::InProgress);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(svc.ledger.count(&r), 1);
    }
}

/// Issue 10 items 1–3 for `distributed_lock` on every lock store (memory, Redis, Redis
/// Cluster), with faults injected by a wrapping store ([`Faulty`](idempotent_tests::Faulty)):
/// a completion held while the caller is aborted, completions failing with backend errors, an
/// acquisition whose reply is lost; and an acquisition sent twice by one owner, directly
/// against the store.
mod faults {
    use std::pin::Pin;

    use idempotent_tests::{Effects, FaultSvc, Faults, Faulty, Lease, Observed};

    use super::*;

    pub struct FSvc<S> {
        store: Faulty<S>,
        fx: Effects,
    }

    impl<S: LockStore> FSvc<S> {
        fn new(store: S) -> Arc<Self> {
            Arc::new(FSvc {
                store: Faulty::new(store),
                fx: Effects::default(),
            })
        }

        #[idempotent(
            strategy = "distributed_lock",
            key = "req.id",
            scope = "req.tenant",
            store = "self.store",
            lease = "300ms"
        )]
        async fn settle_300ms(&self, req: &Req) -> Result<Receipt, AppError> {
            self.fx.apply(req).await
        }

        #[idempotent(
            strategy = "distributed_lock",
            key = "req.id",
            scope = "req.tenant",
            store = "self.store",
            lease = "1s"
        )]
        async fn settle_1s(&self, req: &Req) -> Result<Receipt, AppError> {
            self.fx.apply(req).await
        }

        #[idempotent(
            strategy = "distributed_lock",
            key = "req.id",
            scope = "req.tenant",
            store = "self.store",
            lease = "5s"
        )]
        async fn settle_5s(&self, req: &Req) -> Result<Receipt, AppError> {
            self.fx.apply(req).await
        }

        #[idempotent(
            strategy = "distributed_lock",
            key = "req.id",
            scope = "req.tenant",
            store = "self.store",
            lease = "30s"
        )]
        async fn settle_30s(&self, req: &Req) -> Result<Receipt, AppError> {
            self.fx.apply(req).await
        }
    }

    impl<S: LockStore> FaultSvc for FSvc<S> {
        fn busy(&self) -> Got {
            Got::InProgress
        }
        fn faults(&self) -> &Faults {
            &self.store.faults
        }
        fn effects(&self) -> &Effects {
            &self.fx
        }
        async fn fresh(&self) -> Req {
            req(&unique("t"), "period-1", 100)
        }
        fn call(
            self: Arc<Self>,
            lease: Lease,
            r: Req,
        ) -> Pin<Box<dyn Future<Output = Observed> + Send>> {
            Box::pin(async move {
                match lease {
                    Lease::Ms300 => observe(self.settle_300ms(&r)).await,
                    Lease::S1 => observe(self.settle_1s(&r)).await,
                    Lease::S5 => observe(self.settle_5s(&r)).await,
                    Lease::S30 => observe(self.settle_30s(&r)).await,
                }
            })
        }
    }

    idempotent_tests::fault_scenarios!(FSvc, LockStore);

    /// The same owner's acquisition sent twice is acquired both times with the same fence;
    /// another owner's is held off.
    async fn lock_sent_twice_by_one_owner_is_acquired_both_times<S: LockStore>(store: S) {
        let key = KeyBuilder::new(&unique("op")).part("k").finish().unwrap();
        let (a, b) = ("a".repeat(32), "b".repeat(32));
        let lease = Duration::from_secs(30);
        let first = store.acquire_lock(&key, &a, None, lease).await.unwrap();
        let Acquired::Acquired { fence } = first else {
            panic!("a acquires: {first:?}")
        };
        assert_eq!(
            store.acquire_lock(&key, &a, None, lease).await.unwrap(),
            Acquired::Acquired { fence },
            "the same owner again: acquired, same fence"
        );
        assert!(matches!(
            store.acquire_lock(&key, &b, None, lease).await.unwrap(),
            Acquired::Held { .. }
        ));
        assert!(
            store.release_lock(&key, &a).await.unwrap(),
            "a still holds it"
        );
    }

    idempotent_tests::on_kv_backends!(
        cancelled_while_completing_still_records,
        transient_completion_errors_are_retried,
        completion_that_never_lands_is_unrecorded,
        lost_acquisition_reply_frees_the_key,
        slow_acquisition_reply_keeps_the_claim,
        cancelled_during_acquisition_frees_the_key,
        lock_sent_twice_by_one_owner_is_acquired_both_times,
    );
}
