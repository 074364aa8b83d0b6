//! Issue 12 item 7: a caller's future dropped while the runtime's `BEGIN` is in flight never
//! leaves the connection in the pool inside a transaction (sqlx 0.9.0 does on PostgreSQL and
//! MySQL: launchbadge/sqlx #4393). Through the runtime's own begin path — `TxStore::begin` on
//! a pool, which every strategy and `dedup_table`'s transactional mode open their transaction
//! with — on a pool of one connection, a deadline is swept across the `BEGIN` window in
//! microsecond steps; after each call the next borrower of that one connection probes whether
//! it is inside a transaction. PostgreSQL: `SAVEPOINT probe` must fail with 25P01 ("SAVEPOINT
//! can only be used in transaction blocks"); MariaDB: `SELECT @@in_transaction` must be 0 (its
//! `SAVEPOINT` succeeds outside a transaction in autocommit mode).
//!
//! The same sweep across `TxStore::read_or_begin` (issue 14): the record read outside any
//! transaction, then the `BEGIN` on that same pooled connection, as `dedup_table`'s
//! transactional mode opens its transaction.

use std::time::{Duration, Instant};

use idempotent_runtime::store::sql::ReadOrBegun;
use idempotent_runtime::{KeyBuilder, StorageKey, TxStore};
use idempotent_tests::{mysql_pool, pg_pool};

/// Deadlines swept: from 0 µs up in 5 µs steps, across acquiring the connection (with the
/// pool's ping) and the `BEGIN` round trip, until [`OPENED`] calls opened their transaction
/// (however slow a loaded machine makes that window), at most [`MAX_STEPS`] steps.
const STEP_MICROS: u64 = 5;
/// Calls that must open their transaction before the sweep ends.
const OPENED: u32 = 100;
/// A sweep never takes more steps than this (50 ms).
const MAX_STEPS: u64 = 10_000;

/// Ready once `at` has passed. tokio's timer rounds up to whole milliseconds, so the deadline
/// is checked on every poll, yielding in between: microsecond resolution.
async fn deadline(at: Instant) {
    while Instant::now() < at {
        tokio::task::yield_now().await;
    }
}

/// How a sweep went: calls cancelled by the deadline, calls that opened their transaction,
/// and next borrowers found inside a transaction (each a failure).
#[derive(Debug, Default)]
struct Sweep {
    cancelled: u32,
    opened: u32,
    leaked: Vec<u64>,
}

/// `TxStore::begin` on `store`, or with `read_first`, `TxStore::read_or_begin` for that key
/// with a judgement that never settles (so it always goes on to the `BEGIN`).
async fn open<'s, DB: idempotent_runtime::SqlBackend>(
    store: &'s mut &sqlx::Pool<DB>,
    read_first: Option<&StorageKey>,
) -> Result<sqlx::Transaction<'s, DB>, idempotent_runtime::Error> {
    let Some(key) = read_first else {
        return TxStore::begin(store).await;
    };
    match store.read_or_begin(key, |_| None::<()>).await? {
        ReadOrBegun::Begun(tx) => Ok(tx),
        ReadOrBegun::Settled(()) => panic!("the judgement never settles"),
    }
}

/// Sweeps the deadline across `TxStore::begin` on `pool` (with `read_first`, across
/// `TxStore::read_or_begin`); `in_transaction` probes the next borrow and, when it finds a
/// transaction, ends it (so every step starts clean).
async fn sweep<DB, P>(
    pool: &sqlx::Pool<DB>,
    read_first: Option<&StorageKey>,
    mut in_transaction: P,
) -> Sweep
where
    DB: idempotent_runtime::SqlBackend,
    P: AsyncFnMut(&mut sqlx::pool::PoolConnection<DB>) -> bool,
{
    let mut out = Sweep::default();
    for step in 0..MAX_STEPS {
        if out.opened == OPENED {
            break;
        }
        let micros = step * STEP_MICROS;
        let at = Instant::now() + Duration::from_micros(micros);
        let mut store = pool;
        let began = tokio::select! {
            biased;
            tx = open(&mut store, read_first) => Some(tx),
            () = deadline(at) => None,
        };
        match began {
            Some(Ok(tx)) => {
                out.opened += 1;
                drop(tx);
            }
            Some(Err(e)) => panic!("BEGIN failed at {micros} µs: {e}"),
            None => out.cancelled += 1,
        }
        let mut next = pool.acquire().await.expect("the next borrow");
        if in_transaction(&mut next).await {
            out.leaked.push(micros);
        }
    }
    out
}

fn assert_clean(backend: &str, s: &Sweep) {
    eprintln!("{backend}: {s:?}");
    assert!(
        s.cancelled > 0 && s.opened == OPENED,
        "{backend}: the sweep must straddle the BEGIN window: {s:?}"
    );
    assert!(
        s.leaked.is_empty(),
        "{backend}: {} of {} cancelled calls left the next borrower inside a transaction (at these µs: {:?})",
        s.leaked.len(),
        s.cancelled,
        s.leaked
    );
}

/// A key no record is stored under: the read finds nothing and the `BEGIN` follows.
fn absent_key() -> StorageKey {
    KeyBuilder::new("cancelled_begin")
        .part(&idempotent_tests::unique("absent"))
        .finish()
        .unwrap()
}

async fn postgres_sweep(read_first: bool) {
    let Some((pool, _guard)) = pg_pool(1).await else {
        return;
    };
    idempotent_runtime::migrate(&pool).await.unwrap();
    let key = read_first.then(absent_key);
    let s = sweep(&pool, key.as_ref(), async |conn| {
        match sqlx::query("SAVEPOINT probe").execute(&mut **conn).await {
            Err(sqlx::Error::Database(d)) if d.code().as_deref() == Some("25P01") => false,
            Err(e) => panic!("unexpected probe error: {e}"),
            Ok(_) => {
                sqlx::query("ROLLBACK").execute(&mut **conn).await.unwrap();
                true
            }
        }
    })
    .await;
    assert_clean("postgres", &s);
}

async fn mariadb_sweep(read_first: bool) {
    let Some((pool, _guard)) = mysql_pool(1).await else {
        return;
    };
    idempotent_runtime::migrate(&pool).await.unwrap();
    let key = read_first.then(absent_key);
    let s = sweep(&pool, key.as_ref(), async |conn| {
        let open: u64 = sqlx::query_scalar("SELECT @@in_transaction")
            .fetch_one(&mut **conn)
            .await
            .unwrap();
        if open != 0 {
            sqlx::query("ROLLBACK").execute(&mut **conn).await.unwrap();
        }
        open != 0
    })
    .await;
    assert_clean("mariadb", &s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_postgres), ignore = "IDEMPOTENT_POSTGRES_URL is not set")]
async fn postgres_cancelled_begin_never_lends_a_connection_inside_a_transaction() {
    postgres_sweep(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_mysql), ignore = "IDEMPOTENT_MYSQL_URL is not set")]
async fn mariadb_cancelled_begin_never_lends_a_connection_inside_a_transaction() {
    mariadb_sweep(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_postgres), ignore = "IDEMPOTENT_POSTGRES_URL is not set")]
async fn postgres_cancelled_read_then_begin_never_lends_a_connection_inside_a_transaction() {
    postgres_sweep(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_mysql), ignore = "IDEMPOTENT_MYSQL_URL is not set")]
async fn mariadb_cancelled_read_then_begin_never_lends_a_connection_inside_a_transaction() {
    mariadb_sweep(true).await;
}
