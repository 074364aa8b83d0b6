//! Inspect, evict and purge (`idempotent_runtime::admin`) on every claim store (memory, SQLite,
//! PostgreSQL, MariaDB, Redis, Redis Cluster): the state of a
//! key through its life (absent, in progress with owner and lease left, completed with TTL
//! left), eviction of a completed record (the next call runs again), refusal to evict a live
//! claim unless forced (and the forced holder's completion then fails with `LockLost`), and a
//! purge of 100,000 expired records while a storm of fresh calls keeps working (SQLite, and
//! PostgreSQL and MariaDB each in a namespace of its own: the schema or database
//! `idem_purge_test`, so the test owns every row of its `idempotency_records`).
//!
//! The same for `distributed_lock` entries and one-time tokens on the stores that keep them
//! (memory, Redis, Redis Cluster), made by annotated functions: a lock held (owner, the
//! fencing token its body got, lease left), completed (the stored response), evicted (the next
//! call runs with a higher fencing token), a live lock refused unless forced; a token issued,
//! consumed (owner, binding, lease left), completed, evicted (the next call with it gets
//! `TokenInvalid`), a live consumption refused unless forced.

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::Duration;

use futures_util::future::join_all;
use idempotent_runtime::admin::{
    self, AdminStore, Evicted, KeyState, LockAdminStore, LockState, StoredResponse,
    TokenAdminStore, TokenState,
};
use idempotent_runtime::strategy::{dedup_table, not_compared};
use idempotent_runtime::{ClaimStore, Error, FencingToken, MemoryStore, idempotent, issue_token};
use idempotent_tests::{AppError, backends, unique};
use sqlx::{MySqlPool, PgPool, SqlitePool};
use tokio::sync::Notify;

const OP: &str = "admin::place_order";

async fn inspect_and_evict<S: AdminStore + ClaimStore>(store: &S) {
    let scope = unique("tenant");
    let raw = unique("order");
    let key = admin::storage_key(OP, Some(&scope), &[&raw]).unwrap();
    let parts = [raw.as_str()];
    let inspect = || admin::inspect(store, OP, Some(&scope), &parts);
    assert_eq!(inspect().await.unwrap(), KeyState::Absent);
    assert_eq!(
        admin::evict(store, OP, Some(&scope), &[&raw], false)
            .await
            .unwrap(),
        Evicted::Absent
    );

    let effects = AtomicU32::new(0);
    let body = async || -> Result<u32, AppError> { Ok(effects.fetch_add(1, SeqCst) + 1) };
    let opts = dedup_table::Options::default();
    assert_eq!(
        dedup_table::run(store, key.clone(), None, opts, not_compared, body)
            .await
            .unwrap(),
        1
    );
    match inspect().await.unwrap() {
        KeyState::Completed { expires_in, .. } => {
            assert!(
                expires_in > opts.ttl - Duration::from_secs(60) && expires_in <= opts.ttl,
                "{expires_in:?}"
            )
        }
        other => panic!("{other:?}"),
    }
    // A duplicate replays; after eviction the body runs again.
    assert_eq!(
        dedup_table::run(store, key.clone(), None, opts, not_compared, body)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        admin::evict(store, OP, Some(&scope), &[&raw], false)
            .await
            .unwrap(),
        Evicted::Removed
    );
    assert_eq!(inspect().await.unwrap(), KeyState::Absent);
    assert_eq!(
        dedup_table::run(store, key.clone(), None, opts, not_compared, body)
            .await
            .unwrap(),
        2
    );
    assert_eq!(effects.load(SeqCst), 2);

    // A live claim: inspected while its body is parked, refused, then forcibly evicted.
    let raw2 = unique("order");
    let key2 = admin::storage_key(OP, Some(&scope), &[&raw2]).unwrap();
    let entered = tokio::sync::Notify::new();
    let release = tokio::sync::Notify::new();
    let parked = async || -> Result<u32, AppError> {
        entered.notify_one();
        release.notified().await;
        Ok(9)
    };
    let (held, ()) = tokio::join!(
        dedup_table::run(store, key2.clone(), None, opts, not_compared, parked),
        async {
            entered.notified().await;
            match admin::inspect(store, OP, Some(&scope), &[&raw2])
                .await
                .unwrap()
            {
                KeyState::InProgress { owner, lease_left } => {
                    assert_eq!(owner.len(), 32);
                    assert!(
                        lease_left > Duration::ZERO && lease_left <= opts.lease,
                        "{lease_left:?}"
                    );
                }
                other => panic!("{other:?}"),
            }
            let refused = admin::evict(store, OP, Some(&scope), &[&raw2], false)
                .await
                .unwrap();
            assert!(matches!(refused, Evicted::LiveClaim { .. }), "{refused:?}");
            assert!(matches!(
                admin::inspect(store, OP, Some(&scope), &[&raw2])
                    .await
                    .unwrap(),
                KeyState::InProgress { .. }
            ));
            assert_eq!(
                admin::evict(store, OP, Some(&scope), &[&raw2], true)
                    .await
                    .unwrap(),
                Evicted::Removed
            );
            release.notify_one();
        }
    );
    // The evicted holder's completion is refused by compare-and-set on its owner.
    assert!(
        matches!(held, Err(AppError::Idempotency(Error::LockLost))),
        "{held:?}"
    );
    assert_eq!(
        admin::inspect(store, OP, Some(&scope), &[&raw2])
            .await
            .unwrap(),
        KeyState::Absent
    );
}

#[tokio::test]
async fn memory_inspect_and_evict() {
    inspect_and_evict(&MemoryStore::new()).await;
}

#[tokio::test]
async fn sqlite_inspect_and_evict() {
    let Some((pool, _dir)) = backends::sqlite().await else {
        return;
    };
    inspect_and_evict(&pool).await;
}

#[cfg_attr(not(has_postgres), ignore = "IDEMPOTENT_POSTGRES_URL is not set")]
#[tokio::test]
async fn postgres_inspect_and_evict() {
    let Some(pool) = backends::postgres().await else {
        return;
    };
    inspect_and_evict(&pool).await;
}

#[cfg_attr(not(has_mysql), ignore = "IDEMPOTENT_MYSQL_URL is not set")]
#[tokio::test]
async fn mysql_inspect_and_evict() {
    let Some(pool) = backends::mysql().await else {
        return;
    };
    inspect_and_evict(&pool).await;
}

#[cfg_attr(
    not(has_redis),
    ignore = "IDEMPOTENT_REDIS_URL is not set and redis-server is not on PATH"
)]
#[tokio::test]
async fn redis_inspect_and_evict() {
    let Some(store) = backends::redis().await else {
        return;
    };
    inspect_and_evict(&store).await;
}

#[cfg_attr(
    not(has_redis_cluster),
    ignore = "IDEMPOTENT_REDIS_CLUSTER_URLS is not set and redis-server is not on PATH"
)]
#[tokio::test]
async fn redis_cluster_inspect_and_evict() {
    let Some(store) = backends::redis_cluster().await else {
        return;
    };
    inspect_and_evict(&store).await;
}

/// Redis expires records itself: a purge finds nothing to do (0) and leaves a live record.
#[cfg_attr(
    not(has_redis),
    ignore = "IDEMPOTENT_REDIS_URL is not set and redis-server is not on PATH"
)]
#[tokio::test]
async fn redis_purge_is_a_no_op() {
    let Some(store) = backends::redis().await else {
        return;
    };
    let body = async || -> Result<u32, AppError> { Ok(1) };
    let live = unique("live");
    let key = admin::storage_key(OP, None, &[&live]).unwrap();
    dedup_table::run(&store, key, None, Default::default(), not_compared, body)
        .await
        .unwrap();
    assert_eq!(admin::purge_expired(&store, 100).await.unwrap(), 0);
    assert!(matches!(
        admin::inspect(&store, OP, None, &[&live]).await.unwrap(),
        KeyState::Completed { .. }
    ));
}

/// A purge on the memory store leaves live records alone (its clock is `Instant`, which a test
/// cannot move, so expiry itself is covered by the SQLite test below).
#[tokio::test]
async fn memory_purge_keeps_live_records() {
    let store = MemoryStore::new();
    let body = async || -> Result<u32, AppError> { Ok(1) };
    let key = admin::storage_key(OP, None, &["live"]).unwrap();
    dedup_table::run(&store, key, None, Default::default(), not_compared, body)
        .await
        .unwrap();
    assert_eq!(admin::purge_expired(&store, 100).await.unwrap(), 0);
    assert!(matches!(
        admin::inspect(&store, OP, None, &["live"]).await.unwrap(),
        KeyState::Completed { .. }
    ));
}

/// How many expired records the purge tests seed: half completed records past their TTL,
/// half in-progress claims past their lease.
const EXPIRED: i64 = 100_000;
/// How many live records they seed beside them (half completed, half in progress, both
/// expiring in 2100): none may be purged.
const LIVE: i64 = 100;
/// How many fresh calls the storm makes, each on a key of its own.
const STORM: usize = 200;
/// The storm's operation name.
const STORM_OP: &str = "admin::storm";

/// A SQL pool whose rows a purge test counts (statements with literals only).
trait Counted: AdminStore + ClaimStore + Sync {
    /// The single integer `sql` selects.
    async fn count(&self, sql: &'static str) -> i64;
}

impl Counted for SqlitePool {
    async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(self).await.unwrap()
    }
}

impl Counted for PgPool {
    async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(self).await.unwrap()
    }
}

impl Counted for MySqlPool {
    async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(self).await.unwrap()
    }
}

/// The `SELECT` list of the rows a purge test seeds, for row number `i` (an SQL expression,
/// from 1), `lpad` the key (`i` zero-padded to 64 characters) and `response` a one-byte blob
/// literal, in the dialect at hand: rows up to `EXPIRED` are expired rows of operation
/// `admin::old` (even `i` completed, TTL ended at 1000; odd `i` in progress, lease ended at
/// 1000), the `LIVE` rows after them live rows of `admin::live` (expiring in 2100).
fn seed_select(i: &str, lpad: &str, response: &str) -> String {
    format!(
        "SELECT {lpad}, CASE WHEN {i} <= {EXPIRED} THEN 'admin::old' ELSE 'admin::live' END, NULL, \
         CASE WHEN {i} % 2 = 0 THEN 'completed' ELSE 'in_progress' END, 'o', \
         CASE WHEN {i} % 2 = 0 THEN {response} END, \
         CASE WHEN {i} <= {EXPIRED} THEN 1000 ELSE 4102444800000 END, 1000"
    )
}

const SEED_INTO: &str = "INSERT INTO idempotency_records (idempotency_key, operation, fingerprint, status, owner, response, expires_at_ms, created_at_ms) ";

/// The purge of `EXPIRED` expired records (already seeded, with `LIVE` live ones) in batches
/// of 1,000, run beside a storm of `STORM` fresh calls on keys of their own and one call
/// parked in its body (a live claim) throughout: the purge reports exactly the expired rows
/// and leaves none; no live row, seeded or the parked claim, is deleted; every storm call
/// executes its body exactly once and gets its own response; the parked call then completes.
/// Both the purge and the storm finish while the other runs (nothing is timed).
async fn purge_beside_a_storm<S: Counted + Clone + Send + 'static>(store: S) {
    assert_eq!(
        store
            .count("SELECT COUNT(*) FROM idempotency_records WHERE operation = 'admin::old'")
            .await,
        EXPIRED,
        "seeded"
    );
    let effects: Vec<AtomicU32> = (0..STORM).map(|_| AtomicU32::new(0)).collect();
    let storm = join_all(effects.iter().enumerate().map(|(i, count)| {
        let store = store.clone();
        async move {
            let key = admin::storage_key(STORM_OP, None, &[&format!("fresh-{i}")]).unwrap();
            let body = async || -> Result<usize, AppError> {
                count.fetch_add(1, SeqCst);
                Ok(i)
            };
            dedup_table::run(&store, key, None, Default::default(), not_compared, body).await
        }
    }));

    let held_key = admin::storage_key(STORM_OP, None, &["held"]).unwrap();
    let (entered, release) = (tokio::sync::Notify::new(), tokio::sync::Notify::new());
    let parked = async || -> Result<usize, AppError> {
        entered.notify_one();
        release.notified().await;
        Ok(STORM)
    };
    let (held, (purged, results)) = tokio::join!(
        dedup_table::run(
            &store,
            held_key,
            None,
            Default::default(),
            not_compared,
            parked
        ),
        async {
            entered.notified().await;
            let both = tokio::join!(admin::purge_expired(&store, 1_000), storm);
            release.notify_one();
            both
        }
    );
    assert_eq!(purged.unwrap(), EXPIRED as u64);
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap(), i, "storm call {i}");
    }
    for (i, c) in effects.iter().enumerate() {
        assert_eq!(c.load(SeqCst), 1, "storm call {i} ran its body once");
    }
    assert_eq!(held.unwrap(), STORM, "the parked claim survived the purge");
    assert_eq!(
        store
            .count("SELECT COUNT(*) FROM idempotency_records WHERE operation = 'admin::old'")
            .await,
        0,
        "every expired row is gone"
    );
    assert_eq!(
        store
            .count("SELECT COUNT(*) FROM idempotency_records WHERE operation = 'admin::live' AND status = 'in_progress'")
            .await,
        LIVE / 2,
        "no live in-progress row purged"
    );
    assert_eq!(
        store
            .count("SELECT COUNT(*) FROM idempotency_records WHERE operation = 'admin::live' AND status = 'completed'")
            .await,
        LIVE / 2,
        "no live completed row purged"
    );
    assert_eq!(
        store
            .count("SELECT COUNT(*) FROM idempotency_records WHERE operation = 'admin::storm' AND status = 'completed'")
            .await,
        STORM as i64 + 1,
        "every storm call and the parked one recorded"
    );
    assert_eq!(
        store
            .count("SELECT COUNT(*) FROM idempotency_records")
            .await,
        LIVE + STORM as i64 + 1,
        "nothing else is left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_purge_of_100000_expired_records_beside_a_storm() {
    let Some((pool, _dir)) = backends::sqlite().await else {
        return;
    };
    let seed = format!(
        "{SEED_INTO}WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {}) {} FROM n",
        EXPIRED + LIVE,
        seed_select("i", "printf('%064d', i)", "X'31'")
    );
    sqlx::query(sqlx::AssertSqlSafe(seed))
        .execute(&pool)
        .await
        .unwrap();
    purge_beside_a_storm(pool).await;
}

/// PostgreSQL, in the schema `idem_purge_test` (the other suites' rows live in `public`).
#[cfg_attr(not(has_postgres), ignore = "IDEMPOTENT_POSTGRES_URL is not set")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_purge_of_100000_expired_records_beside_a_storm() {
    let Some(pool) = backends::postgres_in_schema("idem_purge_test", 16).await else {
        return;
    };
    let seed = format!(
        "{SEED_INTO}{} FROM generate_series(1, {}) AS g(i)",
        seed_select("i", "lpad(i::text, 64, '0')", "'\\x31'::bytea"),
        EXPIRED + LIVE
    );
    sqlx::query(sqlx::AssertSqlSafe(seed))
        .execute(&pool)
        .await
        .unwrap();
    purge_beside_a_storm(pool).await;
}

/// MariaDB/MySQL, in the database `idem_purge_test` (the other suites' rows live in `test`).
#[cfg_attr(not(has_mysql), ignore = "IDEMPOTENT_MYSQL_URL is not set")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_purge_of_100000_expired_records_beside_a_storm() {
    let Some(pool) = backends::mysql_in_database("idem_purge_test", 16).await else {
        return;
    };
    // Rows 1..=EXPIRED + LIVE from five digit tables and a 0/1 table (portable: no recursion
    // limit, no sequence engine).
    let digit = "(SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9)";
    let seed = format!(
        "{SEED_INTO}{} FROM (SELECT a.d + 10 * b.d + 100 * c.d + 1000 * e.d + 10000 * f.d + 100000 * h.d + 1 AS i \
         FROM {digit} a, {digit} b, {digit} c, {digit} e, {digit} f, (SELECT 0 AS d UNION ALL SELECT 1) h) AS n WHERE i <= {}",
        seed_select("i", "LPAD(i, 64, '0')", "X'31'"),
        EXPIRED + LIVE
    );
    sqlx::query(sqlx::AssertSqlSafe(seed))
        .execute(&pool)
        .await
        .unwrap();
    purge_beside_a_storm(pool).await;
}

/// A service whose annotated functions make real locks and token consumptions. A body runs
/// once per call; with `park` set, the next body signals `entered` and waits for `release`.
struct Svc<S> {
    store: S,
    runs: AtomicU32,
    park: std::sync::atomic::AtomicBool,
    entered: Notify,
    release: Notify,
    /// The fencing token the last `settle` body got.
    fence: std::sync::atomic::AtomicU64,
}

impl<S> Svc<S> {
    fn new(store: S) -> Self {
        Svc {
            store,
            runs: AtomicU32::new(0),
            park: false.into(),
            entered: Notify::new(),
            release: Notify::new(),
            fence: 0.into(),
        }
    }

    async fn body(&self) -> u32 {
        if self.park.swap(false, SeqCst) {
            self.entered.notify_one();
            self.release.notified().await;
        }
        self.runs.fetch_add(1, SeqCst) + 1
    }
}

const LOCK_OP: &str = "admin::settle";
const TOKEN_OP: &str = "admin::checkout";
const LEASE: Duration = Duration::from_secs(60);
const TTL: Duration = Duration::from_secs(24 * 60 * 60);

impl<S: LockAdminStore> Svc<S> {
    #[idempotent(
        strategy = "distributed_lock",
        key = "id",
        scope = "tenant",
        store = "self.store",
        name = "admin::settle",
        lease = "60s"
    )]
    async fn settle(
        &self,
        tenant: &str,
        id: &str,
        #[fence] fence: FencingToken,
    ) -> Result<(u32, u64), AppError> {
        self.fence.store(fence.get(), SeqCst);
        Ok((self.body().await, fence.get()))
    }
}

impl<S: TokenAdminStore> Svc<S> {
    /// `token` is the one-time token.
    #[idempotent(
        strategy = "token",
        key = "token",
        scope = "tenant",
        store = "self.store",
        name = "admin::checkout",
        lease = "60s"
    )]
    async fn checkout(&self, tenant: &str, token: &str) -> Result<u32, AppError> {
        Ok(self.body().await)
    }
}

async fn locks<S: LockAdminStore>(store: S) {
    let svc = Svc::new(store);
    let store = &svc.store;
    let tenant = unique("tenant");
    let scope = Some(tenant.as_str());
    let id = unique("order");
    let parts = [id.as_str()];
    let inspect = || admin::inspect_lock(store, LOCK_OP, scope, &parts);
    assert_eq!(inspect().await.unwrap(), LockState::Absent);
    assert_eq!(
        admin::evict_lock(store, LOCK_OP, scope, &[&id], false)
            .await
            .unwrap(),
        Evicted::Absent
    );

    // Completed: the stored response is the body's, as JSON; a duplicate replays it.
    let (run, first) = svc.settle(&tenant, &id).await.unwrap();
    assert_eq!(run, 1);
    match inspect().await.unwrap() {
        LockState::Completed {
            expires_in,
            response,
        } => {
            assert!(
                expires_in > TTL - Duration::from_secs(60) && expires_in <= TTL,
                "{expires_in:?}"
            );
            assert_eq!(
                response,
                StoredResponse::Response {
                    json: format!("[1,{first}]")
                }
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(svc.settle(&tenant, &id).await.unwrap(), (1, first));
    // Evicted: the next call runs the body again, with a higher fencing token.
    assert_eq!(
        admin::evict_lock(store, LOCK_OP, scope, &[&id], false)
            .await
            .unwrap(),
        Evicted::Removed
    );
    assert_eq!(inspect().await.unwrap(), LockState::Absent);
    let (run, second) = svc.settle(&tenant, &id).await.unwrap();
    assert_eq!(run, 2);
    assert!(second > first, "{second} after {first}");

    // Held: inspected while the body is parked, refused, then forcibly evicted.
    let id2 = unique("order");
    svc.park.store(true, SeqCst);
    let (held, ()) = tokio::join!(svc.settle(&tenant, &id2), async {
        svc.entered.notified().await;
        let fence = svc.fence.load(SeqCst);
        match admin::inspect_lock(store, LOCK_OP, scope, &[&id2])
            .await
            .unwrap()
        {
            LockState::Held {
                owner,
                fence: Some(f),
                lease_left,
            } => {
                assert_eq!(owner.len(), 32);
                assert_eq!(f, fence, "the fencing token the body got");
                assert!(
                    lease_left > Duration::ZERO && lease_left <= LEASE,
                    "{lease_left:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        let refused = admin::evict_lock(store, LOCK_OP, scope, &[&id2], false)
            .await
            .unwrap();
        assert!(
            matches!(refused, Evicted::LiveClaim { lease_left } if lease_left > Duration::ZERO && lease_left <= LEASE),
            "{refused:?}"
        );
        assert!(matches!(
            admin::inspect_lock(store, LOCK_OP, scope, &[&id2])
                .await
                .unwrap(),
            LockState::Held { .. }
        ));
        assert_eq!(
            admin::evict_lock(store, LOCK_OP, scope, &[&id2], true)
                .await
                .unwrap(),
            Evicted::Removed
        );
        svc.release.notify_one();
    });
    // The evicted holder's body ran, but its completion is refused by compare-and-set.
    assert!(
        matches!(held, Err(AppError::Idempotency(Error::LockLost))),
        "{held:?}"
    );
    assert_eq!(svc.runs.load(SeqCst), 3);
    assert_eq!(
        admin::inspect_lock(store, LOCK_OP, scope, &[&id2])
            .await
            .unwrap(),
        LockState::Absent
    );
    let parked_fence = svc.fence.load(SeqCst);
    let (run, next) = svc.settle(&tenant, &id2).await.unwrap();
    assert_eq!(run, 4);
    assert!(next > parked_fence, "{next} after {parked_fence}");
}

async fn tokens<S: TokenAdminStore>(store: S) {
    let svc = Svc::new(store);
    let store = &svc.store;
    let tenant = unique("tenant");
    let scope = Some(tenant.as_str());
    let unknown = unique("never-issued");
    assert_eq!(
        admin::inspect_token(store, &unknown).await.unwrap(),
        TokenState::Absent
    );
    assert_eq!(
        admin::evict_token(store, &unknown, false).await.unwrap(),
        Evicted::Absent
    );

    // Issued, then completed by a call: bound to its operation and scope, response stored.
    let ttl = Duration::from_secs(3600);
    let token = issue_token(store, ttl).await.unwrap();
    match admin::inspect_token(store, &token).await.unwrap() {
        TokenState::Issued { expires_in } => assert!(
            expires_in > ttl - Duration::from_secs(60) && expires_in <= ttl,
            "{expires_in:?}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(svc.checkout(&tenant, &token).await.unwrap(), 1);
    let binding = admin::storage_key(TOKEN_OP, scope, &[&token])
        .unwrap()
        .hex();
    match admin::inspect_token(store, &token).await.unwrap() {
        TokenState::Completed {
            binding: b,
            expires_in,
            response,
        } => {
            assert_eq!(b, binding);
            assert!(
                expires_in > TTL - Duration::from_secs(60) && expires_in <= TTL,
                "{expires_in:?}"
            );
            assert_eq!(response, StoredResponse::Response { json: "1".into() });
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(svc.checkout(&tenant, &token).await.unwrap(), 1, "replayed");
    // Evicted: the token no longer replays; a call with it is refused, the body not run.
    assert_eq!(
        admin::evict_token(store, &token, false).await.unwrap(),
        Evicted::Removed
    );
    assert_eq!(
        admin::inspect_token(store, &token).await.unwrap(),
        TokenState::Absent
    );
    let again = svc.checkout(&tenant, &token).await;
    assert!(
        matches!(again, Err(AppError::Idempotency(Error::TokenInvalid))),
        "{again:?}"
    );
    // An issued token evicted is revoked.
    let revoked = issue_token(store, ttl).await.unwrap();
    assert_eq!(
        admin::evict_token(store, &revoked, false).await.unwrap(),
        Evicted::Removed
    );
    let refused = svc.checkout(&tenant, &revoked).await;
    assert!(
        matches!(refused, Err(AppError::Idempotency(Error::TokenInvalid))),
        "{refused:?}"
    );
    assert_eq!(svc.runs.load(SeqCst), 1);

    // Consumed: inspected while the body is parked, refused, then forcibly evicted.
    let live = issue_token(store, ttl).await.unwrap();
    let live_binding = admin::storage_key(TOKEN_OP, scope, &[&live]).unwrap().hex();
    svc.park.store(true, SeqCst);
    let (held, ()) = tokio::join!(svc.checkout(&tenant, &live), async {
        svc.entered.notified().await;
        match admin::inspect_token(store, &live).await.unwrap() {
            TokenState::Consumed {
                owner,
                binding,
                lease_left,
                expires_in,
            } => {
                assert_eq!(owner.len(), 32);
                assert_eq!(binding, live_binding);
                assert!(
                    lease_left > Duration::ZERO && lease_left <= LEASE,
                    "{lease_left:?}"
                );
                assert!(
                    expires_in > ttl - Duration::from_secs(60) && expires_in <= ttl,
                    "{expires_in:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        let refused = admin::evict_token(store, &live, false).await.unwrap();
        assert!(
            matches!(refused, Evicted::LiveClaim { lease_left } if lease_left > Duration::ZERO && lease_left <= LEASE),
            "{refused:?}"
        );
        assert!(matches!(
            admin::inspect_token(store, &live).await.unwrap(),
            TokenState::Consumed { .. }
        ));
        assert_eq!(
            admin::evict_token(store, &live, true).await.unwrap(),
            Evicted::Removed
        );
        svc.release.notify_one();
    });
    assert!(
        matches!(held, Err(AppError::Idempotency(Error::LockLost))),
        "{held:?}"
    );
    assert_eq!(svc.runs.load(SeqCst), 2, "the evicted consumer's body ran");
    assert_eq!(
        admin::inspect_token(store, &live).await.unwrap(),
        TokenState::Absent
    );
}

#[tokio::test]
async fn memory_locks() {
    locks(MemoryStore::new()).await;
}

#[tokio::test]
async fn memory_tokens() {
    tokens(MemoryStore::new()).await;
}

/// A fresh memory store counts fencing tokens from 1; an evicted lock entry does not reset
/// them (the counter is store-wide).
#[tokio::test]
async fn memory_fencing_tokens_survive_eviction() {
    let svc = Svc::new(MemoryStore::new());
    assert_eq!(svc.settle("t", "a").await.unwrap(), (1, 1));
    assert_eq!(
        admin::evict_lock(&svc.store, LOCK_OP, Some("t"), &["a"], false)
            .await
            .unwrap(),
        Evicted::Removed
    );
    assert_eq!(svc.settle("t", "a").await.unwrap(), (2, 2));
}

#[cfg_attr(
    not(has_redis),
    ignore = "IDEMPOTENT_REDIS_URL is not set and redis-server is not on PATH"
)]
#[tokio::test]
async fn redis_locks() {
    let Some(store) = backends::redis().await else {
        return;
    };
    locks(store).await;
}

#[cfg_attr(
    not(has_redis),
    ignore = "IDEMPOTENT_REDIS_URL is not set and redis-server is not on PATH"
)]
#[tokio::test]
async fn redis_tokens() {
    let Some(store) = backends::redis().await else {
        return;
    };
    tokens(store).await;
}

#[cfg_attr(
    not(has_redis_cluster),
    ignore = "IDEMPOTENT_REDIS_CLUSTER_URLS is not set and redis-server is not on PATH"
)]
#[tokio::test]
async fn redis_cluster_locks() {
    let Some(store) = backends::redis_cluster().await else {
        return;
    };
    locks(store).await;
}

#[cfg_attr(
    not(has_redis_cluster),
    ignore = "IDEMPOTENT_REDIS_CLUSTER_URLS is not set and redis-server is not on PATH"
)]
#[tokio::test]
async fn redis_cluster_tokens() {
    let Some(store) = backends::redis_cluster().await else {
        return;
    };
    tokens(store).await;
}
