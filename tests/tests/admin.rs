//! Inspect, evict and purge (`idempotent_runtime::admin`) on every claim store (memory, SQLite,
//! PostgreSQL, MariaDB, Redis, Redis Cluster): the state of a
//! key through its life (absent, in progress with owner and lease left, completed with TTL
//! left), eviction of a completed record (the next call runs again), refusal to evict a live
//! claim unless forced (and the forced holder's completion then fails with `LockLost`), and a
//! purge of 100,000 expired SQLite records while a storm of fresh calls keeps working.

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::Duration;

use futures_util::future::join_all;
use idempotent_runtime::admin::{self, AdminStore, Evicted, KeyState};
use idempotent_runtime::strategy::{dedup_table, not_compared};
use idempotent_runtime::{ClaimStore, Error, MemoryStore};
use idempotent_tests::{AppError, backends, unique};

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

/// 100,000 expired records are purged in batches of 1,000 while 200 fresh calls run: every
/// fresh call executes its body once and keeps its record; the purge reports exactly the
/// expired rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_purge_of_100000_expired_records_beside_a_storm() {
    let Some((pool, _dir)) = backends::sqlite().await else {
        return;
    };
    const EXPIRED: i64 = 100_000;
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
         INSERT INTO idempotency_records (idempotency_key, operation, fingerprint, status, owner, response, expires_at_ms, created_at_ms) \
         SELECT printf('%064d', i), 'admin::old', NULL, 'completed', 'o', X'31', 1000, 1000 FROM n",
    )
    .bind(EXPIRED)
    .execute(&pool)
    .await
    .unwrap();

    let effects: Vec<AtomicU32> = (0..200).map(|_| AtomicU32::new(0)).collect();
    let storm = join_all(effects.iter().enumerate().map(|(i, count)| {
        let pool = pool.clone();
        async move {
            let key = admin::storage_key(OP, None, &[&format!("fresh-{i}")]).unwrap();
            let body = async || -> Result<usize, AppError> {
                count.fetch_add(1, SeqCst);
                Ok(i)
            };
            dedup_table::run(&pool, key, None, Default::default(), not_compared, body).await
        }
    }));
    let (purged, results) = tokio::join!(admin::purge_expired(&pool, 1_000), storm);
    assert_eq!(purged.unwrap(), EXPIRED as u64);
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap(), i);
    }
    assert!(effects.iter().all(|c| c.load(SeqCst) == 1));
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM idempotency_records")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 200, "only the fresh records are left");
}
