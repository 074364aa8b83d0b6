//! `strategy = "token"` on standalone Redis, a 3-master Redis Cluster (started by the suite)
//! and the memory store. Effects are counted in a ledger; every caller's outcome is asserted.

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use idempotent_runtime::{Disposition, Error, TokenStore, idempotent, issue_token, observe};
use idempotent_tests::{AppError, Effects, Got, Receipt, Req, classify, poll_while, req, unique};
use tokio::sync::{Barrier, mpsc};

/// Variants serde writes alike (`A(1)` and `B(1)` are both `1`); `PartialEq` tells them apart.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Alike {
    /// Read back first.
    A(u8),
    /// Written like `A`.
    B(u8),
}

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

impl<S: TokenStore> Svc<S> {
    fn new(store: S) -> Arc<Self> {
        Arc::new(Svc {
            store,
            fx: Effects::default(),
        })
    }

    /// `req.id` carries the token.
    #[idempotent(
        strategy = "token",
        key = "req.id",
        scope = "req.tenant",
        store = "self.store",
        lease = "5s"
    )]
    async fn checkout(&self, req: &Req) -> Result<Receipt, AppError> {
        self.fx.apply(req).await
    }

    /// A 300 ms lease, renewed while the body runs.
    #[idempotent(
        strategy = "token",
        key = "req.id",
        scope = "req.tenant",
        store = "self.store",
        lease = "300ms"
    )]
    async fn checkout_short(&self, req: &Req) -> Result<Receipt, AppError> {
        self.fx.apply(req).await
    }

    /// `on_cancel = "release"` with the default 30 s lease: only the restore frees the token
    /// within a test's patience.
    #[idempotent(
        strategy = "token",
        key = "req.id",
        scope = "req.tenant",
        store = "self.store",
        on_cancel = "release"
    )]
    async fn checkout_release(&self, req: &Req) -> Result<Receipt, AppError> {
        self.fx.apply(req).await
    }

    /// The default `on_cancel = "keep"` with a 1 s lease.
    #[idempotent(
        strategy = "token",
        key = "req.id",
        scope = "req.tenant",
        store = "self.store",
        lease = "1s"
    )]
    async fn checkout_keep(&self, req: &Req) -> Result<Receipt, AppError> {
        self.fx.apply(req).await
    }

    /// Returns `Alike::B(1)`, which reads back as `A(1)` with the same JSON.
    #[idempotent(
        strategy = "token",
        key = "req.id",
        scope = "req.tenant",
        store = "self.store"
    )]
    async fn checkout_alike(&self, req: &Req) -> Result<Alike, AppError> {
        self.fx.apply(req).await?;
        Ok(Alike::B(1))
    }

    #[idempotent(
        strategy = "token",
        key = "req.id",
        scope = "req.tenant",
        store = "self.store"
    )]
    async fn refund(&self, req: &Req) -> Result<Receipt, AppError> {
        Ok(Receipt {
            tenant: req.tenant.clone(),
            id: req.id.clone(),
            amount: -req.amount,
            serial: 0,
        })
    }
}

const HOUR: Duration = Duration::from_secs(3600);

async fn concurrent_50_one_token_one_effect<S: TokenStore + 'static>(store: S) {
    const N: usize = 50;
    let svc = Svc::new(store);
    let token = issue_token(&svc.store, HOUR).await.unwrap();
    assert_eq!(token.len(), 32);
    let r = req(&unique("t"), &token, 100);
    let barrier = Arc::new(Barrier::new(N));
    let (tx, mut rx) = mpsc::unbounded_channel();
    svc.gate.arm();
    for _ in 0..N {
        let (svc, r, barrier, tx) = (svc.clone(), r.clone(), barrier.clone(), tx.clone());
        tokio::spawn(async move {
            barrier.wait().await;
            let _ = tx.send(classify(observe(svc.checkout(&r)).await));
        });
    }
    drop(tx);
    svc.gate.entered.notified().await;
    let mut got = Vec::new();
    for _ in 0..N - 1 {
        got.push(rx.recv().await.unwrap());
    }
    assert_eq!(
        got.iter().filter(|g| **g == Got::Duplicate).count(),
        N - 1,
        "{got:?}"
    );
    svc.gate.release.notify_one();
    let Got::Executed(receipt) = rx.recv().await.unwrap() else {
        panic!("the holder executes")
    };
    assert_eq!(svc.count(&r), 1);
    // A retry with the same token after success replays the response.
    assert_eq!(
        classify(observe(svc.checkout(&r)).await),
        Got::Replayed(receipt)
    );
    assert_eq!(svc.count(&r), 1);
}

async fn unknown_or_expired_token_is_invalid<S: TokenStore + 'static>(store: S) {
    let svc = Svc::new(store);
    let t = unique("t");
    let e = svc
        .checkout(&req(&t, "0123456789abcdef0123456789abcdef", 1))
        .await;
    assert!(
        matches!(e, Err(AppError::Idempotency(Error::TokenInvalid))),
        "{e:?}"
    );
    let short = issue_token(&svc.store, Duration::from_millis(300))
        .await
        .unwrap();
    // Waiting out the token's TTL (time passing, not ordering callers).
    tokio::time::sleep(Duration::from_millis(450)).await;
    let e = svc.checkout(&req(&t, &short, 1)).await;
    assert!(
        matches!(e, Err(AppError::Idempotency(Error::TokenInvalid))),
        "{e:?}"
    );
    // A malformed token's error names the token, not "the key" (found by a new user).
    let e = svc.checkout(&req(&t, "", 1)).await;
    assert!(
        matches!(&e, Err(AppError::Idempotency(Error::InvalidKey(m))) if m == "the token is empty"),
        "{e:?}"
    );
    let e = svc.checkout(&req(&t, &"x".repeat(1025), 1)).await;
    assert!(
        matches!(&e, Err(AppError::Idempotency(Error::InvalidKey(m))) if m == "the token is 1025 bytes; the limit is 1024"),
        "{e:?}"
    );
    assert_eq!(svc.total(), 0);
}

async fn body_failure_restores_the_token<S: TokenStore + 'static>(store: S) {
    let svc = Svc::new(store);
    let token = issue_token(&svc.store, HOUR).await.unwrap();
    let r = req(&unique("t"), &token, 5);
    svc.fail_next.store(true, SeqCst);
    let e = svc.checkout(&r).await;
    assert!(matches!(e, Err(AppError::Rejected)), "{e:?}");
    assert_eq!(svc.count(&r), 0);
    let got = classify(observe(svc.checkout(&r)).await);
    assert!(matches!(got, Got::Executed(_)), "{got:?}");
    assert_eq!(svc.count(&r), 1);
}

async fn token_is_bound_to_payload_operation_and_scope<S: TokenStore + 'static>(store: S) {
    let svc = Svc::new(store);
    let token = issue_token(&svc.store, HOUR).await.unwrap();
    let t = unique("t");
    svc.checkout(&req(&t, &token, 5)).await.unwrap();
    let e = svc.checkout(&req(&t, &token, 6)).await;
    assert!(
        matches!(e, Err(AppError::Idempotency(Error::FingerprintMismatch))),
        "{e:?}"
    );
    let e = svc.checkout(&req(&unique("t"), &token, 5)).await;
    assert!(
        matches!(e, Err(AppError::Idempotency(Error::TokenInvalid))),
        "another tenant: {e:?}"
    );
    let e = svc.refund(&req(&t, &token, 5)).await;
    assert!(
        matches!(e, Err(AppError::Idempotency(Error::TokenInvalid))),
        "another operation: {e:?}"
    );
    assert_eq!(svc.count(&req(&t, &token, 5)), 1);
}

/// `on_cancel = "release"`: a future dropped mid-body restores its token (consumed for 30 s)
/// at once in the background, so a retry with the token executes as soon as the restore has
/// landed.
async fn dropped_future_with_release_restores_the_token<S: TokenStore + 'static>(store: S) {
    let svc = Svc::new(store);
    let token = issue_token(&svc.store, HOUR).await.unwrap();
    let r = req(&unique("t"), &token, 5);
    svc.gate.arm();
    let task = tokio::spawn({
        let (svc, r) = (svc.clone(), r.clone());
        async move { svc.checkout_release(&r).await }
    });
    svc.gate.entered.notified().await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(svc.count(&r), 0);
    // The restore is spawned: retry until it has landed.
    let got = poll_while(&Got::Duplicate, Duration::from_secs(5), || async {
        classify(observe(svc.checkout_release(&r)).await)
    })
    .await;
    assert!(matches!(got, Got::Executed(_)), "{got:?}");
    assert_eq!(svc.count(&r), 1);
}

/// `on_cancel = "keep"` (the default): a future dropped mid-body keeps the token consumed, so
/// the immediate retry with it gets `Duplicate` (what a concurrent duplicate gets) and writes
/// nothing; once the 1 s lease has ended (nobody renews it) a retry executes exactly once, and
/// later ones replay.
async fn dropped_future_keeps_the_token_until_the_lease_ends<S: TokenStore + 'static>(store: S) {
    let svc = Svc::new(store);
    let token = issue_token(&svc.store, HOUR).await.unwrap();
    let r = req(&unique("t"), &token, 5);
    let before_consume = std::time::Instant::now();
    svc.gate.arm();
    let task = tokio::spawn({
        let (svc, r) = (svc.clone(), r.clone());
        async move { svc.checkout_keep(&r).await }
    });
    svc.gate.entered.notified().await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(
        classify(observe(svc.checkout_keep(&r)).await),
        Got::Duplicate
    );
    assert_eq!(svc.count(&r), 0, "the retry did not run the body");
    let got = poll_while(&Got::Duplicate, Duration::from_secs(10), || async {
        classify(observe(svc.checkout_keep(&r)).await)
    })
    .await;
    let Got::Executed(receipt) = got else {
        panic!("after the lease a retry executes: {got:?}")
    };
    // The token was kept, not restored: it stayed consumed for its lease (less 100 ms of
    // slack), counted from before it was consumed.
    assert!(before_consume.elapsed() >= Duration::from_millis(900));
    assert_eq!(svc.count(&r), 1);
    assert_eq!(
        classify(observe(svc.checkout_keep(&r)).await),
        Got::Replayed(receipt)
    );
    assert_eq!(svc.count(&r), 1);
}

/// A body slower than its lease keeps the token: a retry meanwhile is a `Duplicate` and never
/// runs the body; the slow call completes and later retries replay it.
async fn slow_body_keeps_the_token<S: TokenStore + 'static>(store: S) {
    let svc = Svc::new(store);
    let token = issue_token(&svc.store, HOUR).await.unwrap();
    let r = req(&unique("t"), &token, 5);
    svc.gate.arm();
    let first = tokio::spawn({
        let (svc, r) = (svc.clone(), r.clone());
        async move { observe(svc.checkout_short(&r)).await }
    });
    svc.gate.entered.notified().await;
    // Let wall-clock time pass well beyond the 300 ms lease (this waits for the lease, it does
    // not order the callers).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        classify(observe(svc.checkout_short(&r)).await),
        Got::Duplicate
    );
    svc.gate.release.notify_one();
    let Got::Executed(receipt) = classify(first.await.unwrap()) else {
        panic!("the slow call must complete");
    };
    assert_eq!(
        classify(observe(svc.checkout_short(&r)).await),
        Got::Replayed(receipt)
    );
    assert_eq!(svc.count(&r), 1);
}

/// Issue 11 item 5 for `token`: a response that reads back as a value not `==` to it is not
/// replayed; the first caller gets its value, the duplicate `Error::Serialization`, the body
/// ran once.
async fn response_serde_writes_like_another_is_not_replayed<S: TokenStore + 'static>(store: S) {
    let svc = Svc::new(store);
    let token = issue_token(&svc.store, HOUR).await.unwrap();
    let r = req(&unique("t"), &token, 1);
    let (first, how) = observe(svc.checkout_alike(&r)).await;
    assert_eq!(
        (first.unwrap(), how),
        (Alike::B(1), Some(Disposition::Executed))
    );
    let again = svc.checkout_alike(&r).await;
    assert!(
        matches!(&again, Err(AppError::Idempotency(Error::Serialization(m))) if m.contains("reads back as a different value")),
        "{again:?}"
    );
    assert_eq!(svc.count(&r), 1, "the body ran exactly once");
}

/// The store's own API with fields a hand-written caller might pass: on Redis, whose token
/// value separates fields with `|`, an owner, binding or fingerprint holding one is refused
/// (it would read back as another owner); the memory store takes any text. Either way the
/// token stays usable by a well-formed consumer (found by trying the product).
async fn fields_with_separators_never_pass_for_another_owner<S: TokenStore>(store: S) {
    let token = issue_token(&store, HOUR).await.unwrap();
    let key = idempotent_runtime::strategy::token::token_key(&token).unwrap();
    let lease = Duration::from_secs(30);
    let odd = store.consume_token(&key, "a|b", "bind", None, lease).await;
    match (store.backend_name(), &odd) {
        ("memory", Ok(idempotent_runtime::store::Consumed::Claimed)) => {
            // Held by "a|b": the owner "a" is not it.
            assert!(!store.complete_token(&key, "a", b"{}", HOUR).await.unwrap());
            assert!(store.restore_token(&key, "a|b").await.unwrap());
        }
        (_, Err(Error::Unsupported(message))) => assert!(message.contains('|'), "{message}"),
        other => panic!("{other:?}"),
    }
    let fine = store.consume_token(&key, "a", "bind", None, lease).await;
    assert!(
        matches!(fine, Ok(idempotent_runtime::store::Consumed::Claimed)),
        "{fine:?}"
    );
    assert!(store.complete_token(&key, "a", b"{}", HOUR).await.unwrap());
}

/// A token restored after its own TTL passed while a body held it is gone, not issued again
/// for the consumer's lease: the retry, and any other operation, get `TokenInvalid`, as README
/// says ("the restored token keeps the expiry `issue_token` gave it"). Both with the 5 s lease
/// (never renewed in the body's 450 ms) and with the 300 ms lease renewed past the token's
/// TTL. Found by a new user: the memory store kept a restored token for the whole lease.
async fn a_restored_token_keeps_the_expiry_it_was_issued_with<S: TokenStore + 'static>(store: S) {
    let svc = Svc::new(store);
    for short_lease in [false, true] {
        let token = issue_token(&svc.store, Duration::from_millis(300))
            .await
            .unwrap();
        let r = req(&unique("t"), &token, 9);
        svc.gate.arm();
        svc.fail_next.store(true, SeqCst);
        let first = tokio::spawn({
            let (svc, r) = (svc.clone(), r.clone());
            async move {
                if short_lease {
                    svc.checkout_short(&r).await
                } else {
                    svc.checkout(&r).await
                }
            }
        });
        svc.gate.entered.notified().await;
        // Waiting out the token's TTL while the body holds it (time passing, not ordering).
        tokio::time::sleep(Duration::from_millis(450)).await;
        svc.gate.release.notify_one();
        let failed = first.await.unwrap();
        assert!(matches!(failed, Err(AppError::Rejected)), "{failed:?}");
        let retry = svc.checkout(&r).await;
        assert!(
            matches!(retry, Err(AppError::Idempotency(Error::TokenInvalid))),
            "short lease {short_lease}: {retry:?}"
        );
        let other = svc.refund(&r).await;
        assert!(
            matches!(other, Err(AppError::Idempotency(Error::TokenInvalid))),
            "short lease {short_lease}: {other:?}"
        );
        let key = idempotent_runtime::strategy::token::token_key(&token).unwrap();
        assert!(
            matches!(
                svc.store.consume_token(&key, "x", "b", None, HOUR).await,
                Ok(idempotent_runtime::store::Consumed::Invalid)
            ),
            "short lease {short_lease}: the store still holds the token"
        );
    }
    assert_eq!(svc.total(), 0);
}

/// `issue_token` with a TTL no call could use in time (zero, below the lease floor) is refused
/// with the option named, and stores nothing (found by a new user: a zero TTL gave a token
/// that was invalid before anyone could use it).
async fn unusable_token_ttl_is_refused<S: TokenStore>(store: S) {
    for ttl in [
        Duration::ZERO,
        Duration::from_millis(1),
        Duration::from_millis(299),
    ] {
        let refused = issue_token(&store, ttl).await;
        assert!(
            matches!(&refused, Err(Error::InvalidOption { option: "ttl", value, .. }) if *value == ttl),
            "{ttl:?}: {refused:?}"
        );
    }
    assert!(
        issue_token(&store, Duration::from_millis(300))
            .await
            .is_ok()
    );
}

idempotent_tests::on_kv_backends!(
    a_restored_token_keeps_the_expiry_it_was_issued_with,
    unusable_token_ttl_is_refused,
    fields_with_separators_never_pass_for_another_owner,
    response_serde_writes_like_another_is_not_replayed,
    slow_body_keeps_the_token,
    concurrent_50_one_token_one_effect,
    unknown_or_expired_token_is_invalid,
    body_failure_restores_the_token,
    token_is_bound_to_payload_operation_and_scope,
    dropped_future_with_release_restores_the_token,
    dropped_future_keeps_the_token_until_the_lease_ends,
);

mod redis_servers {
    use super::*;
    use idempotent_tests::{
        CountCommands, RedisServer, WARM_KEYS, assert_round_trips, counting, private_redis,
        private_redis_cluster, redis_server_on_path,
    };

    async fn count_round_trips<S: TokenStore>(svc: Arc<Svc<S>>, servers: &impl CountCommands) {
        let t = unique("t");
        for _ in 0..WARM_KEYS {
            let warm = issue_token(&svc.store, HOUR).await.unwrap();
            svc.checkout(&req(&t, &warm, 1)).await.unwrap();
            svc.checkout(&req(&t, &warm, 1)).await.unwrap();
        }
        let token = issue_token(&svc.store, HOUR).await.unwrap();
        let r = req(&t, &token, 1);
        let ((_, how), fresh) = counting(servers, observe(svc.checkout(&r))).await;
        assert_eq!(how, Some(Disposition::Executed));
        let ((_, how), replay) = counting(servers, observe(svc.checkout(&r))).await;
        assert_eq!(how, Some(Disposition::Replayed));
        assert_round_trips(fresh, replay, 5, 1);
    }

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

    /// A server that cannot run the scripts (scripting renamed away) is refused when the store
    /// is built, not at the first call.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(has_redis_server),
        ignore = "needs redis-server on PATH (starts servers of its own)"
    )]
    async fn missing_server_support_fails_fast() {
        if !redis_server_on_path() {
            return;
        }
        let server = RedisServer::start(&[
            "--rename-command",
            "EVAL",
            "EVAL_DISABLED_FOR_TEST",
            "--rename-command",
            "EVALSHA",
            "EVALSHA_DISABLED_FOR_TEST",
        ]);
        let e = idempotent_runtime::RedisStore::connect(&server.url()).await;
        match e {
            Err(Error::Backend(source)) => assert!(
                source
                    .to_string()
                    .contains("cannot run the idempotency Lua scripts"),
                "{source}"
            ),
            other => panic!("{other:?}"),
        }
    }
}

/// Issue 10 items 1–3 for `token` on every token store (memory, Redis, Redis Cluster), with
/// faults injected by a wrapping store ([`Faulty`](idempotent_tests::Faulty)): a completion
/// held while the caller is aborted, completions failing with backend errors, a consumption
/// whose reply is lost; and a consumption sent twice by one owner, directly against the store.
mod faults {
    use std::pin::Pin;

    use idempotent_runtime::store::Consumed;
    use idempotent_runtime::strategy::token::token_key;
    use idempotent_tests::{Effects, FaultSvc, Faults, Faulty, Lease, Observed};

    use super::*;

    pub struct FSvc<S> {
        store: Faulty<S>,
        fx: Effects,
    }

    impl<S: TokenStore> FSvc<S> {
        fn new(store: S) -> Arc<Self> {
            Arc::new(FSvc {
                store: Faulty::new(store),
                fx: Effects::default(),
            })
        }

        #[idempotent(
            strategy = "token",
            key = "req.id",
            scope = "req.tenant",
            store = "self.store",
            lease = "300ms"
        )]
        async fn checkout_300ms(&self, req: &Req) -> Result<Receipt, AppError> {
            self.fx.apply(req).await
        }

        #[idempotent(
            strategy = "token",
            key = "req.id",
            scope = "req.tenant",
            store = "self.store",
            lease = "1s"
        )]
        async fn checkout_1s(&self, req: &Req) -> Result<Receipt, AppError> {
            self.fx.apply(req).await
        }

        #[idempotent(
            strategy = "token",
            key = "req.id",
            scope = "req.tenant",
            store = "self.store",
            lease = "5s"
        )]
        async fn checkout_5s(&self, req: &Req) -> Result<Receipt, AppError> {
            self.fx.apply(req).await
        }

        #[idempotent(
            strategy = "token",
            key = "req.id",
            scope = "req.tenant",
            store = "self.store",
            lease = "30s"
        )]
        async fn checkout_30s(&self, req: &Req) -> Result<Receipt, AppError> {
            self.fx.apply(req).await
        }
    }

    impl<S: TokenStore> FaultSvc for FSvc<S> {
        fn busy(&self) -> Got {
            Got::Duplicate
        }
        fn faults(&self) -> &Faults {
            &self.store.faults
        }
        fn effects(&self) -> &Effects {
            &self.fx
        }
        async fn fresh(&self) -> Req {
            let token = issue_token(&self.store, HOUR).await.unwrap();
            req(&unique("t"), &token, 100)
        }
        fn call(
            self: Arc<Self>,
            lease: Lease,
            r: Req,
        ) -> Pin<Box<dyn Future<Output = Observed> + Send>> {
            Box::pin(async move {
                match lease {
                    Lease::Ms300 => observe(self.checkout_300ms(&r)).await,
                    Lease::S1 => observe(self.checkout_1s(&r)).await,
                    Lease::S5 => observe(self.checkout_5s(&r)).await,
                    Lease::S30 => observe(self.checkout_30s(&r)).await,
                }
            })
        }
    }

    idempotent_tests::fault_scenarios!(FSvc, TokenStore);

    /// The same owner's consumption sent twice is claimed both times; another owner's is busy.
    async fn consume_sent_twice_by_one_owner_is_claimed_both_times<S: TokenStore>(store: S) {
        let token = issue_token(&store, HOUR).await.unwrap();
        let key = token_key(token.as_str()).unwrap();
        let (a, b) = ("a".repeat(32), "b".repeat(32));
        let lease = Duration::from_secs(30);
        let consume = async |owner: &str| {
            store
                .consume_token(&key, owner, "bind", None, lease)
                .await
                .unwrap()
        };
        assert_eq!(consume(&a).await, Consumed::Claimed);
        assert_eq!(
            consume(&a).await,
            Consumed::Claimed,
            "the same owner again: claimed"
        );
        assert!(matches!(consume(&b).await, Consumed::Busy { .. }));
        assert!(
            store.restore_token(&key, &a).await.unwrap(),
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
        consume_sent_twice_by_one_owner_is_claimed_both_times,
    );
}
