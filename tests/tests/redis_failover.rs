//! Issue 13, replication and failover: a primary with a replica (and 3 Sentinels) the suite
//! starts itself ([`RedisReplicaSet`]). Fencing tokens grow across a promotion; `replicas = 1`
//! (`RedisOptions::wait_for_replicas`) acknowledges every acquisition before the body runs or
//! fails with `Error::NotReplicated`; a storm survives a Sentinel failover with one effect per
//! key. Effects are counted on a resource that checks fencing tokens; every caller's outcome is
//! asserted; concurrency is lined up with gates and counters, never with sleeps.

use std::collections::HashMap;
use std::sync::Mutex;

use idempotent_tests::{RedisReplicaSet, replication_available};

/// A resource that checks fencing tokens: per key it remembers the highest token it accepted
/// and refuses a write whose token is not larger (the storage side of fencing). Accepted
/// writes that are effects (not probes) are counted per key.
#[derive(Default)]
pub struct FencedResource {
    highest: Mutex<HashMap<String, u64>>,
    effects: Mutex<HashMap<String, usize>>,
    refused: Mutex<Vec<(String, u64)>>,
}

impl FencedResource {
    /// Writes under `token`: `true` when accepted (the token is larger than every token
    /// accepted before for `key`); an accepted write with `effect` counts as an effect.
    pub fn write(&self, key: &str, token: u64, effect: bool) -> bool {
        let mut highest = self.highest.lock().unwrap();
        let h = highest.entry(key.to_owned()).or_default();
        if token <= *h {
            self.refused.lock().unwrap().push((key.to_owned(), token));
            return false;
        }
        *h = token;
        if effect {
            *self
                .effects
                .lock()
                .unwrap()
                .entry(key.to_owned())
                .or_default() += 1;
        }
        true
    }

    /// Effects accepted for `key`.
    pub fn effects(&self, key: &str) -> usize {
        self.effects.lock().unwrap().get(key).copied().unwrap_or(0)
    }

    /// Effects accepted for all keys.
    pub fn total(&self) -> usize {
        self.effects.lock().unwrap().values().sum()
    }

    /// Writes refused: `(key, token)`.
    pub fn refused(&self) -> Vec<(String, u64)> {
        self.refused.lock().unwrap().clone()
    }
}

/// Skips (loudly) without `redis-server`; fails under `CI=true`.
fn available() -> bool {
    replication_available()
}

// ------------------------------------------------------------------ issue 13 item 1: fencing

mod fencing {
    use std::sync::Arc;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

    use idempotent_runtime::{Disposition, FencingToken, RedisStore, idempotent, observe};
    use idempotent_tests::{AppError, Gate, Receipt, Req, req, unique};

    use super::{FencedResource, RedisReplicaSet, available};

    pub struct LockSvc {
        store: RedisStore,
        resource: Arc<FencedResource>,
        gate: Gate,
        fail_next: AtomicBool,
        fences: Mutex<Vec<u64>>,
    }

    impl LockSvc {
        fn new(store: RedisStore, resource: Arc<FencedResource>) -> Arc<Self> {
            Arc::new(LockSvc {
                store,
                resource,
                gate: Gate::default(),
                fail_next: AtomicBool::new(false),
                fences: Mutex::new(Vec::new()),
            })
        }

        #[idempotent(
            strategy = "distributed_lock",
            key = "req.id",
            scope = "req.tenant",
            store = "self.store",
            lease = "10s"
        )]
        async fn settle(
            &self,
            req: &Req,
            #[fence] fence: FencingToken,
        ) -> Result<Receipt, AppError> {
            self.fences.lock().unwrap().push(fence.get());
            self.gate.pass().await;
            if self.fail_next.swap(false, SeqCst) {
                return Err(AppError::Rejected);
            }
            self.resource.write(&req.id, fence.get(), true);
            Ok(Receipt {
                tenant: req.tenant.clone(),
                id: req.id.clone(),
                amount: req.amount,
                serial: fence.get(),
            })
        }
    }

    /// Issue 13 item 1. The key is warmed once (a failed body: the fencing counter exists, the
    /// lock is released, no response is stored) and replicated; then the replica is promoted
    /// (`REPLICAOF NO ONE`: from here on increments on the old primary do not replicate —
    /// the same as "the increment did not replicate before the promotion"). Holder A acquires
    /// on the old primary and is held in its body; holder B acquires on the new primary. B's
    /// token must be larger than A's, so the resource refuses A's late write. Before the fix
    /// (the clock seeded only a missing counter) both got warm + 1.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fencing_token_grows_across_a_promotion() {
        if !available() {
            return;
        }
        let set = RedisReplicaSet::start(&[]);
        let resource = Arc::new(FencedResource::default());
        let a = LockSvc::new(
            RedisStore::connect(&set.primary_url()).await.unwrap(),
            resource.clone(),
        );
        let r = req(&unique("t"), "period-1", 1);

        a.fail_next.store(true, SeqCst);
        let warm = a.settle(&r).await;
        assert!(matches!(warm, Err(AppError::Rejected)), "{warm:?}");
        set.wait_in_sync();
        let fence_keys = set.replica.cli(&["KEYS", "idem:*:fence"]);
        assert_eq!(
            fence_keys.lines().count(),
            1,
            "the counter replicated: {fence_keys:?}"
        );

        set.promote_replica();
        let b = LockSvc::new(
            RedisStore::connect(&set.replica_url()).await.unwrap(),
            resource.clone(),
        );

        a.gate.arm();
        let holder_a = tokio::spawn({
            let (a, r) = (a.clone(), r.clone());
            async move { observe(a.settle(&r)).await }
        });
        a.gate.entered.notified().await;
        let (got_b, how_b) = observe(b.settle(&r)).await;
        assert_eq!(
            how_b,
            Some(Disposition::Executed),
            "B acquires on the new primary: {got_b:?}"
        );
        a.gate.release.notify_one();
        let (got_a, how_a) = holder_a.await.unwrap();
        assert_eq!(
            how_a,
            Some(Disposition::Executed),
            "A completes on the old primary: {got_a:?}"
        );

        let fa = a.fences.lock().unwrap().clone();
        let fb = b.fences.lock().unwrap().clone();
        eprintln!(
            "fencing across a promotion: warm {}, A {}, B {}",
            fa[0], fa[1], fb[0]
        );
        assert_eq!(fa.len(), 2, "A's body ran once after the warm-up: {fa:?}");
        assert_eq!(fb.len(), 1, "B's body ran once: {fb:?}");
        assert!(fa[1] > fa[0], "{fa:?}");
        assert!(
            fb[0] > fa[1],
            "B's token ({}) must be larger than A's ({}) after the promotion",
            fb[0],
            fa[1]
        );
        assert_eq!(got_b.unwrap().serial, fb[0]);
        assert_eq!(got_a.unwrap().serial, fa[1]);
        assert_eq!(resource.effects(&r.id), 1, "only B's write is accepted");
        assert_eq!(
            resource.refused(),
            vec![(r.id.clone(), fa[1])],
            "A's late write under the smaller token is refused"
        );
    }
}

// ------------------------------------------------------------------- the suite's own servers

mod infrastructure {
    use super::{RedisReplicaSet, available};

    /// The replica set and its Sentinels: a failover moves the primary and every Sentinel
    /// reports it; the old primary, demoted, follows the new one.
    #[test]
    fn sentinels_fail_the_primary_over() {
        if !available() {
            return;
        }
        let started = std::time::Instant::now();
        let set = RedisReplicaSet::start_with_sentinels(&[]);
        let ready = started.elapsed();
        assert_eq!(set.sentinel_primaries(), vec![Some(set.primary.port); 3]);
        set.primary.cli(&["SET", "before", "1"]);
        set.wait_in_sync();
        let new = set.sentinel_failover();
        assert_eq!(new, set.replica.port);
        set.demote_old_primary(new);
        assert_eq!(RedisReplicaSet::role(&set.primary), "slave");
        assert_eq!(set.replica.cli(&["GET", "before"]).trim(), "1");
        eprintln!(
            "replica set + 3 Sentinels ready in {ready:?}; failed over and demoted after {:?}",
            started.elapsed()
        );
    }
}
