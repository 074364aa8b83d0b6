//! Issue 13, replication and failover: a primary with a replica (and 3 Sentinels) the suite
//! starts itself ([`RedisReplicaSet`]). Fencing tokens grow across a promotion; `replicas = 1`
//! (`RedisOptions::wait_for_replicas`) acknowledges every acquisition before the body runs or
//! fails with `Error::NotReplicated`; a storm survives a Sentinel failover (a switchover, and
//! the primary killed) with one effect per key and every record replayable afterwards.
//! Effects are counted on a resource that checks fencing tokens; every caller's outcome is
//! asserted; concurrency is lined up with gates and counters, never with sleeps.
//!
//! The switchover pauses writes on the old primary (`CLIENT PAUSE WRITE`) until it is a
//! replica: `SENTINEL FAILOVER` alone leaves the old primary writable for ~10 s (until
//! Sentinel's `+convert-to-slave`), and the Sentinel store keeps writing there (it switches on
//! I/O errors and `READONLY`); those records are discarded when it resyncs — measured: 20 of
//! 50 keys ran again afterwards.

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
    #[cfg_attr(
        not(has_redis_server),
        ignore = "needs redis-server on PATH (starts servers of its own)"
    )]
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
    #[cfg_attr(
        not(has_redis_server),
        ignore = "needs redis-server on PATH (starts servers of its own)"
    )]
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

// ------------------------------------------------- issue 13: `replicas = 1` (WAIT 1 replica)

mod replicas_one {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use idempotent_runtime::{
        Disposition, Error, FencingToken, RedisStore, idempotent, issue_token, observe,
    };
    use idempotent_tests::{AppError, Effects, Receipt, Req, req, unique};

    use super::{RedisReplicaSet, available};

    const WAIT: Duration = Duration::from_millis(300);

    /// What the body saw on the replica while it ran: every key matching the service's pattern
    /// with its state: a hash's `s` field (`dedup_table` record), a string's first character
    /// (lock `p…` held / `c…` completed, token `i|…` issued / `p|…` consumed / `c|…`).
    type Seen = Vec<(String, String)>;

    /// Reads `KEYS pattern` on the replica and each key's state.
    async fn replica_view(conn: &redis::aio::MultiplexedConnection, pattern: &str) -> Seen {
        let mut conn = conn.clone();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut conn)
            .await
            .expect("KEYS on the replica");
        let mut seen = Vec::new();
        for key in keys {
            let kind: String = redis::cmd("TYPE")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            let state: Option<String> = if kind == "hash" {
                redis::cmd("HGET")
                    .arg(&key)
                    .arg("s")
                    .query_async(&mut conn)
                    .await
                    .unwrap()
            } else {
                let value: Option<String> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                value.map(|v| v.chars().take(1).collect())
            };
            seen.push((key, state.unwrap_or_default()));
        }
        seen
    }

    /// A service of each strategy whose body first records what the replica holds.
    pub struct Svc {
        store: RedisStore,
        fx: Effects,
        replica: redis::aio::MultiplexedConnection,
        pattern: &'static str,
        seen: Mutex<Vec<Seen>>,
    }

    impl Svc {
        async fn new(store: RedisStore, replica_url: &str, pattern: &'static str) -> Arc<Self> {
            let replica = redis::Client::open(replica_url)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            Arc::new(Svc {
                store,
                fx: Effects::default(),
                replica,
                pattern,
                seen: Mutex::new(Vec::new()),
            })
        }

        async fn body(&self, req: &Req) -> Result<Receipt, AppError> {
            let seen = replica_view(&self.replica, self.pattern).await;
            self.seen.lock().unwrap().push(seen);
            self.fx.apply(req).await
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
            let _ = fence;
            self.body(req).await
        }

        #[idempotent(
            strategy = "dedup_table",
            key = "req.id",
            scope = "req.tenant",
            store = "self.store",
            lease = "10s"
        )]
        async fn place(&self, req: &Req) -> Result<Receipt, AppError> {
            self.body(req).await
        }

        /// `req.id` carries the token.
        #[idempotent(
            strategy = "token",
            key = "req.id",
            scope = "req.tenant",
            store = "self.store",
            lease = "10s"
        )]
        async fn checkout(&self, req: &Req) -> Result<Receipt, AppError> {
            self.body(req).await
        }
    }

    #[derive(Clone, Copy, Debug)]
    enum Strategy {
        Lock,
        Dedup,
        Token,
    }

    impl Strategy {
        fn pattern(self) -> &'static str {
            match self {
                Strategy::Lock => "idem:*:lock",
                Strategy::Dedup => "idem:*:rec",
                Strategy::Token => "idem:*:tok",
            }
        }

        async fn call(
            self,
            svc: &Svc,
            r: &Req,
        ) -> (Result<Receipt, AppError>, Option<Disposition>) {
            match self {
                Strategy::Lock => observe(svc.settle(r)).await,
                Strategy::Dedup => observe(svc.place(r)).await,
                Strategy::Token => observe(svc.checkout(r)).await,
            }
        }

        /// A request: a fresh key, or for `token` a token issued through `store`.
        async fn request(self, store: &RedisStore, tenant: &str, name: &str) -> Req {
            match self {
                Strategy::Token => {
                    let token = issue_token(store, Duration::from_secs(3600)).await.unwrap();
                    req(tenant, &token, 1)
                }
                _ => req(tenant, name, 1),
            }
        }
    }

    /// With the replica in sync an acquisition is on the replica before the body runs; with
    /// replication cut (replica promoted: the primary has no replica) the call fails with
    /// `NotReplicated { acknowledged: 0, required: 1 }`, the body does not run, and the key
    /// is released: a store without `wait_for_replicas` takes it at once.
    async fn acquisition_waits_for_one_replica(strategy: Strategy) {
        if !available() {
            return;
        }
        let set = RedisReplicaSet::start(&[]);
        let waiting = RedisStore::options()
            .wait_for_replicas(1, WAIT)
            .connect(&set.primary_url())
            .await
            .unwrap();
        let svc = Svc::new(waiting.clone(), &set.replica_url(), strategy.pattern()).await;
        let tenant = unique("t");

        // In sync: acknowledged before the body runs.
        let r1 = strategy.request(&waiting, &tenant, "r1").await;
        let (got, how) = strategy.call(&svc, &r1).await;
        assert_eq!(how, Some(Disposition::Executed), "{strategy:?}: {got:?}");
        let seen = svc.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1, "{strategy:?}: one body ran: {seen:?}");
        assert_eq!(
            seen[0].len(),
            1,
            "{strategy:?}: the acquisition is on the replica: {seen:?}"
        );
        assert_eq!(
            seen[0][0].1, "p",
            "{strategy:?}: held / claimed / consumed on the replica: {seen:?}"
        );
        assert_eq!(svc.fx.count(&r1), 1);
        let (again, how) = strategy.call(&svc, &r1).await;
        assert_eq!(how, Some(Disposition::Replayed), "{strategy:?}: {again:?}");
        assert_eq!(again.unwrap(), got.unwrap());

        // Replication cut: the acquisition is not acknowledged.
        let r2 = strategy.request(&waiting, &tenant, "r2").await;
        set.promote_replica();
        let started = std::time::Instant::now();
        let (got, how) = strategy.call(&svc, &r2).await;
        let took = started.elapsed();
        assert!(
            matches!(
                &got,
                Err(AppError::Idempotency(Error::NotReplicated {
                    acknowledged: 0,
                    required: 1,
                    timeout,
                })) if *timeout == WAIT
            ),
            "{strategy:?}: {got:?}"
        );
        assert_eq!(how, None, "{strategy:?}: neither executed nor replayed");
        assert!(took >= WAIT, "{strategy:?}: WAIT waited {took:?}");
        assert_eq!(
            svc.seen.lock().unwrap().len(),
            1,
            "{strategy:?}: the body did not run"
        );
        assert_eq!(svc.fx.count(&r2), 0);
        let message = got.unwrap_err().to_string();
        eprintln!("{strategy:?} with replication cut: {message} (after {took:?})");

        // Released: a store without the WAIT option takes the key at once.
        let plain = Svc::new(
            RedisStore::connect(&set.primary_url()).await.unwrap(),
            &set.primary_url(),
            strategy.pattern(),
        )
        .await;
        let (got, how) = strategy.call(&plain, &r2).await;
        assert_eq!(
            how,
            Some(Disposition::Executed),
            "{strategy:?}: the key was released: {got:?}"
        );
        assert_eq!(plain.fx.count(&r2), 1);
        assert_eq!(svc.fx.count(&r2), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(has_redis_server),
        ignore = "needs redis-server on PATH (starts servers of its own)"
    )]
    async fn distributed_lock_waits_for_one_replica() {
        acquisition_waits_for_one_replica(Strategy::Lock).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(has_redis_server),
        ignore = "needs redis-server on PATH (starts servers of its own)"
    )]
    async fn dedup_table_waits_for_one_replica() {
        acquisition_waits_for_one_replica(Strategy::Dedup).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(has_redis_server),
        ignore = "needs redis-server on PATH (starts servers of its own)"
    )]
    async fn token_waits_for_one_replica() {
        acquisition_waits_for_one_replica(Strategy::Token).await
    }

    /// After `SCRIPT FLUSH` the next fresh call and the next replay of each strategy reload
    /// their scripts (`EVALSHA` answered `NOSCRIPT`, then `EVAL` with the same keys and
    /// arguments) and succeed with one effect per key, on a store sending scripts alone and
    /// on one sending each acquisition and completion in a pipeline with `WAIT`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(has_redis_server),
        ignore = "needs redis-server on PATH (starts servers of its own)"
    )]
    async fn noscript_after_script_flush_reloads_with_and_without_wait() {
        if !available() {
            return;
        }
        let set = RedisReplicaSet::start(&[]);
        let noscript = || {
            set.primary
                .error_stats()
                .get("NOSCRIPT")
                .copied()
                .unwrap_or(0)
        };
        for waiting in [false, true] {
            let options = if waiting {
                RedisStore::options().wait_for_replicas(1, WAIT)
            } else {
                RedisStore::options()
            };
            let store = options.connect(&set.primary_url()).await.unwrap();
            for strategy in [Strategy::Lock, Strategy::Dedup, Strategy::Token] {
                let svc = Svc::new(store.clone(), &set.replica_url(), strategy.pattern()).await;
                let tenant = unique("t");
                let first = strategy.request(&store, &tenant, "first").await;
                let second = strategy.request(&store, &tenant, "second").await;
                let what = format!("{strategy:?}, waiting for a replica: {waiting}");

                set.primary.cli(&["SCRIPT", "FLUSH"]);
                let before = noscript();
                let (got, how) = strategy.call(&svc, &first).await;
                assert_eq!(how, Some(Disposition::Executed), "{what}: {got:?}");
                assert!(
                    noscript() > before,
                    "{what}: the server never answered NOSCRIPT"
                );
                let receipt = got.unwrap();

                set.primary.cli(&["SCRIPT", "FLUSH"]);
                let before = noscript();
                let (again, how) = strategy.call(&svc, &first).await;
                assert_eq!(how, Some(Disposition::Replayed), "{what}: {again:?}");
                assert_eq!(again.unwrap(), receipt, "{what}: the replay");
                assert!(noscript() > before, "{what}: the replay never met NOSCRIPT");

                set.primary.cli(&["SCRIPT", "FLUSH"]);
                let (got, how) = strategy.call(&svc, &second).await;
                assert_eq!(how, Some(Disposition::Executed), "{what}: {got:?}");
                assert_eq!(svc.fx.count(&first), 1, "{what}");
                assert_eq!(svc.fx.count(&second), 1, "{what}");
            }
        }
    }
}

// ------------------------------------------------------ issue 13: Sentinel failover mid-storm

mod sentinel_storm {
    use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
    use std::sync::{Arc, Mutex, PoisonError};
    use std::time::{Duration, Instant};

    use idempotent_runtime::{Disposition, Error, FencingToken, RedisStore, idempotent, observe};
    use idempotent_tests::redis_replication::SERVICE;
    use idempotent_tests::{AppError, Receipt, Req, req, unique};
    use tokio::sync::{Notify, watch};

    use super::{FencedResource, RedisReplicaSet, available};

    const KEYS: usize = 50;
    const REQUESTS: usize = 500;
    const WORKERS: usize = 32;
    /// Keys `k0`..`k9` fail their first execution (a business error the caller does not
    /// retry): their next holder must get a larger fencing token.
    const FAILING: usize = 10;
    /// The failover starts when this many calls of the first part have completed.
    const TRIGGER: usize = 120;
    /// The storm, failover included, must be over by then.
    const DEADLINE: Duration = Duration::from_secs(25);

    /// How the primary is failed over mid-storm.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Switch {
        /// `SENTINEL FAILOVER` with writes paused on the old primary until it is demoted.
        Switchover,
        /// The primary killed (`SIGKILL`); the Sentinels fail over on their own.
        Kill,
    }

    pub struct StormSvc {
        store: RedisStore,
        /// Use the 5 s lease fns (a lock whose holder's reply was lost with the primary is
        /// waited out within the test's patience).
        short: bool,
        resource: FencedResource,
        fail_first: Mutex<HashSet<String>>,
        serial: AtomicU64,
    }

    impl StormSvc {
        fn new(store: RedisStore, short: bool) -> Arc<Self> {
            Arc::new(StormSvc {
                store,
                short,
                resource: FencedResource::default(),
                fail_first: Mutex::new((0..FAILING).map(|k| format!("k{k}")).collect()),
                serial: AtomicU64::new(0),
            })
        }

        /// The body: with a fencing token (distributed_lock), one write under it — an effect,
        /// or for a failing first attempt a write that counts no effect, so the next holder's
        /// token must be larger still; without one (dedup_table), just the effect.
        fn body(&self, req: &Req, fence: Option<u64>) -> Result<Receipt, AppError> {
            let fail = self.fail_first.lock().unwrap().remove(&req.id);
            let serial = self.serial.fetch_add(1, SeqCst) + 1;
            match fence {
                Some(token) if fail => {
                    self.resource.write(&req.id, token, false);
                    return Err(AppError::Rejected);
                }
                Some(token) => {
                    self.resource.write(&req.id, token, true);
                }
                None if fail => return Err(AppError::Rejected),
                None => {
                    self.resource.write(&req.id, serial, true);
                }
            }
            Ok(Receipt {
                tenant: req.tenant.clone(),
                id: req.id.clone(),
                amount: req.amount,
                serial,
            })
        }

        #[idempotent(
            strategy = "distributed_lock",
            key = "req.id",
            scope = "req.tenant",
            store = "self.store",
            lease = "10s"
        )]
        async fn storm_settle(
            &self,
            req: &Req,
            #[fence] fence: FencingToken,
        ) -> Result<Receipt, AppError> {
            self.body(req, Some(fence.get()))
        }

        #[idempotent(
            strategy = "dedup_table",
            key = "req.id",
            scope = "req.tenant",
            store = "self.store",
            lease = "10s"
        )]
        async fn storm_place(&self, req: &Req) -> Result<Receipt, AppError> {
            self.body(req, None)
        }

        #[idempotent(
            strategy = "distributed_lock",
            key = "req.id",
            scope = "req.tenant",
            store = "self.store",
            lease = "5s"
        )]
        async fn storm_settle_short(
            &self,
            req: &Req,
            #[fence] fence: FencingToken,
        ) -> Result<Receipt, AppError> {
            self.body(req, Some(fence.get()))
        }

        #[idempotent(
            strategy = "dedup_table",
            key = "req.id",
            scope = "req.tenant",
            store = "self.store",
            lease = "5s"
        )]
        async fn storm_place_short(&self, req: &Req) -> Result<Receipt, AppError> {
            self.body(req, None)
        }

        async fn call(
            &self,
            lock: bool,
            r: &Req,
        ) -> (Result<Receipt, AppError>, Option<Disposition>) {
            // Boxed as `dyn Future`: four deep futures in one match overflow the compiler's
            // recursion while it checks that the storm's tasks are `Send`.
            type Call<'a> = std::pin::Pin<
                Box<
                    dyn Future<Output = (Result<Receipt, AppError>, Option<Disposition>)>
                        + Send
                        + 'a,
                >,
            >;
            let fut: Call<'_> = match (lock, self.short) {
                (true, false) => Box::pin(observe(self.storm_settle(r))),
                (false, false) => Box::pin(observe(self.storm_place(r))),
                (true, true) => Box::pin(observe(self.storm_settle_short(r))),
                (false, true) => Box::pin(observe(self.storm_place_short(r))),
            };
            fut.await
        }
    }

    /// What the storm's callers got.
    #[derive(Debug, Default)]
    struct Report {
        executed: usize,
        replayed: usize,
        rejected: Vec<String>,
        in_progress: usize,
        /// Typed errors other than `InProgress`, by variant, each retried.
        errors: BTreeMap<String, usize>,
        samples: Vec<String>,
        calls: usize,
    }

    /// The storm's requests in two parts: the first runs until [`TRIGGER`] calls completed
    /// and the failover starts; the second is released once the old primary has stopped
    /// taking writes, so it runs across the switch. Keys `k0..k9`: 1 + 9 requests, `k10..k39`:
    /// 5 + 5, `k40..k49`: 0 + 10 (500 in all), round-robin over the keys within each part.
    fn requests(tenant: &str) -> (VecDeque<Req>, VecDeque<Req>) {
        let counts = |k: usize| match k {
            k if k < FAILING => (1, 9),
            k if k < 40 => (5, 5),
            _ => (0, 10),
        };
        let mut parts = (VecDeque::new(), VecDeque::new());
        for (part, pick) in [
            (
                &mut parts.0,
                (|c: (usize, usize)| c.0) as fn((usize, usize)) -> usize,
            ),
            (&mut parts.1, |c: (usize, usize)| c.1),
        ] {
            for round in 0..10 {
                for k in 0..KEYS {
                    if round < pick(counts(k)) {
                        part.push_back(req(tenant, &format!("k{k}"), k as i64));
                    }
                }
            }
        }
        assert_eq!(parts.0.len() + parts.1.len(), REQUESTS);
        parts
    }

    fn variant(e: &AppError) -> String {
        let s = format!("{e:?}");
        s.split(|c: char| !c.is_alphanumeric())
            .find(|w| !w.is_empty() && *w != "Idempotency")
            .unwrap_or("?")
            .to_owned()
    }

    /// Runs the storm on `svc` (`lock`: `storm_settle`, else `storm_place`) and, mid-storm,
    /// fails the primary over: writes paused on the old primary (`CLIENT PAUSE WRITE`), the
    /// replica caught up, `SENTINEL FAILOVER`, every Sentinel reporting the new primary, the old
    /// primary made its replica (what Sentinel does ~10 s later), writes unpaused (the calls
    /// waiting on the old primary get `READONLY`). Returns the report, the new primary's port
    /// and how long the failover took.
    async fn storm(
        svc: Arc<StormSvc>,
        set: Arc<Mutex<RedisReplicaSet>>,
        lock: bool,
        tenant: &str,
        switch: Switch,
    ) -> (Report, u16, Duration) {
        let started = Instant::now();
        let (first, second) = requests(tenant);
        let first = Arc::new(Mutex::new(first));
        let second = Arc::new(Mutex::new(second));
        let report = Arc::new(Mutex::new(Report::default()));
        let done_first = Arc::new(AtomicUsize::new(0));
        let trigger = Arc::new(Notify::new());
        let (release, released) = watch::channel(false);

        let failover = tokio::spawn({
            let (set, trigger) = (set.clone(), trigger.clone());
            async move {
                trigger.notified().await;
                tokio::task::spawn_blocking(move || {
                    let t = Instant::now();
                    let mut set = set.lock().unwrap();
                    if switch == Switch::Kill {
                        set.kill_primary();
                        release.send(true).unwrap();
                        let new = set.replica.port;
                        set.wait_sentinels_report(new);
                        return (new, t.elapsed());
                    }
                    let old = &set.primary;
                    let paused = old.cli(&["CLIENT", "PAUSE", "20000", "WRITE"]);
                    assert_eq!(paused.trim(), "OK", "CLIENT PAUSE: {paused}");
                    set.wait_in_sync();
                    release.send(true).unwrap();
                    let new = set.sentinel_failover();
                    let port = new.to_string();
                    assert_eq!(old.cli(&["REPLICAOF", "127.0.0.1", &port]).trim(), "OK");
                    assert_eq!(old.cli(&["CLIENT", "UNPAUSE"]).trim(), "OK");
                    set.wait_in_sync();
                    (new, t.elapsed())
                })
                .await
                .unwrap()
            }
        });

        let mut workers = Vec::new();
        for _ in 0..WORKERS {
            let (svc, first, second, report, done_first, trigger, mut released) = (
                svc.clone(),
                first.clone(),
                second.clone(),
                report.clone(),
                done_first.clone(),
                trigger.clone(),
                released.clone(),
            );
            workers.push(tokio::spawn(async move {
                loop {
                    let popped = first.lock().unwrap().pop_front();
                    let (r, in_first) = match popped {
                        Some(r) => (r, true),
                        None => {
                            released.wait_for(|v| *v).await.unwrap();
                            let popped = second.lock().unwrap().pop_front();
                            match popped {
                                Some(r) => (r, false),
                                None => break,
                            }
                        }
                    };
                    loop {
                        let got = svc.call(lock, &r).await;
                        let finished = {
                            let mut rep = report.lock().unwrap_or_else(PoisonError::into_inner);
                            rep.calls += 1;
                            match got {
                                (Ok(_), Some(Disposition::Executed)) => {
                                    rep.executed += 1;
                                    true
                                }
                                (Ok(_), Some(Disposition::Replayed)) => {
                                    rep.replayed += 1;
                                    true
                                }
                                (Err(AppError::Rejected), _) => {
                                    rep.rejected.push(r.id.clone());
                                    true
                                }
                                (Err(AppError::Idempotency(Error::InProgress)), _) => {
                                    rep.in_progress += 1;
                                    false
                                }
                                (Err(e @ AppError::Idempotency(_)), _) => {
                                    *rep.errors.entry(variant(&e)).or_default() += 1;
                                    if rep.samples.len() < 5 {
                                        rep.samples.push(e.to_string());
                                    }
                                    false
                                }
                                other => panic!("unexpected outcome for {r:?}: {other:?}"),
                            }
                        };
                        if finished {
                            break;
                        }
                        assert!(
                            started.elapsed() < DEADLINE,
                            "{r:?} still failing after {DEADLINE:?}: {:?}",
                            report.lock().unwrap_or_else(PoisonError::into_inner)
                        );
                        // A client's pause before retrying; nothing is ordered by it.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    if in_first && done_first.fetch_add(1, SeqCst) + 1 == TRIGGER {
                        trigger.notify_one();
                    }
                }
            }));
        }
        for w in workers {
            w.await.unwrap();
        }
        let (new, took) = failover.await.unwrap();
        let report = Arc::try_unwrap(report).unwrap().into_inner().unwrap();
        (report, new, took)
    }

    /// The storm on a `connect_sentinel` store (`replicas`: with `wait_for_replicas(1, …)`).
    async fn storm_survives_a_sentinel_failover(lock: bool, switch: Switch, replicas: bool) {
        if !available() {
            return;
        }
        let started = Instant::now();
        let set = RedisReplicaSet::start_with_sentinels(&[]);
        let ready = started.elapsed();
        let old = set.primary.port;
        let urls = set.sentinel_urls();
        let set = Arc::new(Mutex::new(set));
        let mut options = RedisStore::options();
        if replicas {
            options = options.wait_for_replicas(1, Duration::from_millis(300));
        }
        let store = options.connect_sentinel(&urls, SERVICE).await.unwrap();
        let svc = StormSvc::new(store, switch == Switch::Kill);
        let storm_started = Instant::now();
        let tenant = unique("t");
        let (report, new, failover) = storm(svc.clone(), set.clone(), lock, &tenant, switch).await;
        let storm_took = storm_started.elapsed();
        let strategy = if lock {
            "distributed_lock"
        } else {
            "dedup_table"
        };
        eprintln!(
            "{strategy} Sentinel storm ({switch:?}{}): {REQUESTS} requests over {KEYS} keys, {WORKERS} tasks: \
             {} executed, {} replayed, {} rejected (business error), {} calls, {} InProgress \
             answers, errors retried during the switch {:?} (e.g. {:?}); failover {old} -> {new} \
             in {failover:?}; storm {storm_took:?}; servers + Sentinels ready in {ready:?}",
            if replicas {
                ", wait_for_replicas(1)"
            } else {
                ""
            },
            report.executed,
            report.replayed,
            report.rejected.len(),
            report.calls,
            report.in_progress,
            report.errors,
            report.samples,
        );

        assert_ne!(new, old, "the primary moved");
        let Ok(set) = Arc::try_unwrap(set) else {
            panic!("the failover task has ended")
        };
        let set = set.into_inner().unwrap();
        assert_eq!(
            set.sentinel_primaries(),
            vec![Some(new); 3],
            "every Sentinel reports it"
        );
        assert_eq!(RedisReplicaSet::role(&set.replica), "master");
        if switch == Switch::Switchover {
            assert_eq!(RedisReplicaSet::role(&set.primary), "slave");
        }
        if replicas {
            let waits: u64 = [&set.primary, &set.replica]
                .iter()
                .filter_map(|s| {
                    let stats = idempotent_tests::redis_replication::info(s, "commandstats");
                    let wait = stats.get("cmdstat_wait")?.split("calls=").nth(1)?;
                    wait.split(',').next()?.parse::<u64>().ok()
                })
                .sum();
            eprintln!("{strategy}: {waits} WAIT commands on the two servers");
            assert!(
                waits >= KEYS as u64,
                "every acquisition is followed by WAIT: {waits}"
            );
        }

        let keys: Vec<String> = (0..KEYS).map(|k| format!("k{k}")).collect();
        for k in &keys {
            assert_eq!(svc.resource.effects(k), 1, "{strategy}: effects of {k}");
        }
        assert_eq!(svc.resource.total(), KEYS, "{strategy}: effects == keys");
        assert!(
            svc.resource.refused().is_empty(),
            "{strategy}: sequential holders' tokens grow: refused {:?}",
            svc.resource.refused()
        );
        let rejected: BTreeSet<String> = report.rejected.iter().cloned().collect();
        assert_eq!(report.rejected.len(), FAILING, "{report:?}");
        assert_eq!(
            rejected,
            keys[..FAILING].iter().cloned().collect(),
            "{report:?}"
        );
        assert_eq!(report.executed, KEYS, "{report:?}");
        assert_eq!(
            report.executed + report.replayed + FAILING,
            REQUESTS,
            "{report:?}"
        );

        // The records survived the failover: through a new store every key replays.
        let fresh = StormSvc::new(
            RedisStore::connect_sentinel(&set.sentinel_urls(), SERVICE)
                .await
                .unwrap(),
            svc.short,
        );
        for k in 0..KEYS {
            let r = req(&tenant, &format!("k{k}"), k as i64);
            let (got, how) = fresh.call(lock, &r).await;
            assert_eq!(
                how,
                Some(Disposition::Replayed),
                "{strategy}: {r:?} after the storm: {got:?}"
            );
        }
        assert_eq!(fresh.resource.total(), 0);
        assert_eq!(svc.resource.total(), KEYS);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[cfg_attr(
        not(has_redis_server),
        ignore = "needs redis-server on PATH (starts servers of its own)"
    )]
    async fn distributed_lock_storm_survives_a_sentinel_failover() {
        storm_survives_a_sentinel_failover(true, Switch::Switchover, false).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[cfg_attr(
        not(has_redis_server),
        ignore = "needs redis-server on PATH (starts servers of its own)"
    )]
    async fn dedup_table_storm_survives_a_sentinel_failover() {
        storm_survives_a_sentinel_failover(false, Switch::Switchover, false).await
    }

    /// With `wait_for_replicas(1, 300ms)`: every acquisition is on the replica before its body
    /// runs. (Not with the primary killed: the new primary has no replica left, every
    /// acquisition would be `NotReplicated`.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[cfg_attr(
        not(has_redis_server),
        ignore = "needs redis-server on PATH (starts servers of its own)"
    )]
    async fn distributed_lock_storm_waiting_for_a_replica_survives_a_sentinel_failover() {
        storm_survives_a_sentinel_failover(true, Switch::Switchover, true).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[cfg_attr(
        not(has_redis_server),
        ignore = "needs redis-server on PATH (starts servers of its own)"
    )]
    async fn distributed_lock_storm_survives_the_primary_killed() {
        storm_survives_a_sentinel_failover(true, Switch::Kill, false).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[cfg_attr(
        not(has_redis_server),
        ignore = "needs redis-server on PATH (starts servers of its own)"
    )]
    async fn dedup_table_storm_survives_the_primary_killed() {
        storm_survives_a_sentinel_failover(false, Switch::Kill, false).await
    }
}

// ------------------------------------------------------------------- checks when connecting

/// What a store refuses when it connects (and, through Sentinel, when it follows a failover):
/// a replica in place of the primary, a `WAIT` time-out the response time-out would cut short,
/// a new primary whose eviction policy can drop records (found by trying the product).
mod connect_checks {
    use std::time::{Duration, Instant};

    use idempotent_runtime::store::Claim;
    use idempotent_runtime::{ClaimStore, Error, KeyBuilder, RedisStore};
    use idempotent_tests::redis_replication::SERVICE;
    use idempotent_tests::unique;

    use super::{RedisReplicaSet, available};

    /// A claim of a fresh key, directly on the store.
    async fn claim_fresh(store: &RedisStore) -> Result<bool, Error> {
        let key = KeyBuilder::new("redis_failover.connect_checks")
            .part(&unique("k"))
            .finish()
            .unwrap();
        store
            .try_claim(&Claim {
                key: &key,
                fingerprint: None,
                owner: "connect-checks",
                lease: Duration::from_secs(30),
            })
            .await
    }

    /// `connect` to a replica's URL is refused, naming the node and the way out; writes there
    /// would fail (`READONLY`) or, on a writable replica, never reach the primary.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(has_redis_server),
        ignore = "needs redis-server on PATH (starts servers of its own)"
    )]
    async fn a_replica_url_is_refused() {
        if !available() {
            return;
        }
        let set = RedisReplicaSet::start(&[]);
        let refused = RedisStore::connect(&set.replica_url()).await;
        let Err(Error::Backend(message)) = &refused else {
            panic!("a replica must be refused: {refused:?}");
        };
        let message = message.to_string();
        assert!(message.contains("is a replica"), "{message}");
        assert!(
            message.contains(&format!("127.0.0.1:{}", set.replica.port)),
            "{message}"
        );
        assert!(message.contains("connect_sentinel"), "{message}");
        let primary = RedisStore::connect(&set.primary_url()).await.unwrap();
        assert!(claim_fresh(&primary).await.unwrap());
    }

    /// A `wait_for_replicas` time-out of 5 s or more could never be answered before the
    /// store's 5 s response time-out: refused when connecting.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(has_redis_server),
        ignore = "needs redis-server on PATH (starts servers of its own)"
    )]
    async fn a_wait_timeout_at_the_response_timeout_is_refused() {
        if !available() {
            return;
        }
        let set = RedisReplicaSet::start(&[]);
        for timeout in [Duration::from_secs(5), Duration::from_secs(8)] {
            let refused = RedisStore::options()
                .wait_for_replicas(1, timeout)
                .connect(&set.primary_url())
                .await;
            let Err(Error::Unsupported(message)) = &refused else {
                panic!("{timeout:?} must be refused: {refused:?}");
            };
            assert!(message.contains("response time-out"), "{message}");
        }
        let store = RedisStore::options()
            .wait_for_replicas(1, Duration::from_millis(500))
            .connect(&set.primary_url())
            .await
            .unwrap();
        assert!(claim_fresh(&store).await.unwrap());
    }

    /// The replica runs `allkeys-lru`; the primary `noeviction`, so `connect_sentinel` accepts
    /// it. After a failover to the replica, the store that follows it refuses the new primary:
    /// every call fails with an error naming the policy (none is written there).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(
        not(has_redis_server),
        ignore = "needs redis-server on PATH (starts servers of its own)"
    )]
    async fn sentinel_refuses_an_evicting_new_primary() {
        if !available() {
            return;
        }
        let set = RedisReplicaSet::start_with_sentinels(&[]);
        let reply = set
            .replica
            .cli(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]);
        assert_eq!(reply.trim(), "OK", "{reply}");
        let store = RedisStore::connect_sentinel(&set.sentinel_urls(), SERVICE)
            .await
            .unwrap();
        assert!(claim_fresh(&store).await.unwrap());
        let new_primary = set.sentinel_failover();
        assert_eq!(new_primary, set.replica.port);
        // The old primary answers READONLY from now on, so the store asks the sentinels.
        set.demote_old_primary(new_primary);
        let deadline = Instant::now() + Duration::from_secs(15);
        let refused = loop {
            match claim_fresh(&store).await {
                Err(Error::Backend(e)) if e.to_string().contains("allkeys-lru") => break e,
                other => assert!(
                    Instant::now() < deadline,
                    "the store never refused the new primary; last: {other:?}"
                ),
            }
        };
        let message = refused.to_string();
        assert!(message.contains("noeviction"), "{message}");
        assert!(
            message.contains(&format!("127.0.0.1:{new_primary}")),
            "{message}"
        );
        for _ in 0..3 {
            let again = claim_fresh(&store).await;
            assert!(
                matches!(&again, Err(Error::Backend(e)) if e.to_string().contains("allkeys-lru")),
                "every call is refused: {again:?}"
            );
        }
        let keys = set.replica.cli(&["KEYS", "idem:*:rec"]);
        assert_eq!(
            keys.lines().count(),
            1,
            "only the claim made before the failover (replicated), nothing written since: {keys:?}"
        );
    }
}
