//! SQL backends through sqlx 0.9: PostgreSQL, MySQL/MariaDB and SQLite (features `postgres`,
//! `mysql`, `sqlite`). A `sqlx::Pool` of one of them is a [`ClaimStore`] (claim-mode
//! `dedup_table`) and the store of `#[tx]` calls; [`migrate`] creates
//! the idempotency-record table; [`is_retryable`] tells a deadlock or serialization failure
//! the caller's own transaction must rerun; [`check_connection`] names a database that
//! cannot be reached at startup, and a pool that lends no connection in time is explained by
//! [`diagnose_pool_timeout`].
//!
//! All SQL is static text with bound parameters; the storage key, owner and fingerprint are hex
//! strings and the response is a byte blob, so no user value is ever interpolated into SQL.
//! Time is the database's clock in Unix milliseconds (`clock_timestamp()` on PostgreSQL,
//! `UTC_TIMESTAMP(3)` on MySQL/MariaDB, independent of the session's time zone), never the
//! application's — except on SQLite, which has no server: `julianday('now')` is each client
//! process's own clock.

// Layout (for contributors): this file holds what every SQL database shares — the
// `SqlBackend` and `TxStore` traits, the generic impls for `sqlx::Pool<DB>` (`ClaimStore`, the
// store-argument traits), the one template of the claim statements (`sql_text!`), the macros
// that implement the traits for one database, and `migrate`. Each database's file
// (`postgres.rs`, `mysql.rs`, `sqlite.rs`) holds its dialect (placeholders, "now" expression,
// lock clauses, `BEGIN` statement), its claim SQL, its migration (`migrations/<db>.sql`), its
// business-table impl (`business::BusinessBackend`), its `#[tx]` impls
// (`&mut <DB>Connection`), the sqlx encoding of `FencingToken`, how its own error type is
// recognised and which of its errors are retryable; `errors` holds the one classification of
// database errors built on those (retryable, unique violation and its constraint), `business`
// the business-table access of the five business-table strategies. Adding a database: a file
// here invoking the macros below (`sql_text!`, `sql_backend!`, `tx_store!`,
// `business_backend!`, `fencing_token_type!`), one line in `backends!`, a migration under
// `migrations/` and a feature in `Cargo.toml` (see CONTRIBUTING.md).

use std::future::Future;
use std::time::Duration;

use sqlx::{Database, Pool};

use super::{
    AsClaimStore, Claim, ClaimOrRecord, ClaimStore, IntoTxStore, Record, RecordState, Store,
};
use crate::{Error, StorageKey};

/// The claim statements of one backend, built by [`sql_text!`] from one template.
struct SqlText {
    try_claim: &'static str,
    read: &'static str,
    read_unlocked: &'static str,
    take_over: &'static str,
    take_over_unrenewed: &'static str,
    complete: &'static str,
    renew: &'static str,
    release: &'static str,
}

/// One template for every backend: `$now` is the backend's "now in Unix ms" expression, `p1..p7`
/// its placeholders in binding order, `$on_conflict` what follows the claim INSERT, `$read_lock`
/// what follows the record SELECT (`read`; `read_unlocked` is the same SELECT without it).
/// Each backend's file invokes it once.
macro_rules! sql_text {
    (now = $now:literal, p = [$p1:literal, $p2:literal, $p3:literal, $p4:literal, $p5:literal, $p6:literal, $p7:literal], on_conflict = $oc:literal, read_lock = $rl:literal) => {
        $crate::store::sql::SqlText {
            try_claim: concat!(
                "INSERT INTO idempotency_records (idempotency_key, operation, fingerprint, status, owner, response, expires_at_ms, created_at_ms) VALUES (",
                $p1, ", ", $p2, ", ", $p3, ", 'in_progress', ", $p4, ", NULL, ", $now, " + ", $p5, ", ", $now, ")", $oc
            ),
            read: concat!(
                "SELECT owner, fingerprint, status, response, expires_at_ms, ", $now,
                " AS now_ms FROM idempotency_records WHERE idempotency_key = ", $p1, $rl
            ),
            read_unlocked: concat!(
                "SELECT owner, fingerprint, status, response, expires_at_ms, ", $now,
                " AS now_ms FROM idempotency_records WHERE idempotency_key = ", $p1
            ),
            take_over: concat!(
                "UPDATE idempotency_records SET owner = ", $p1, ", fingerprint = ", $p2, ", operation = ", $p3,
                ", status = 'in_progress', response = NULL, expires_at_ms = ", $now, " + ", $p4,
                " WHERE idempotency_key = ", $p5, " AND owner = ", $p6, " AND expires_at_ms <= ", $now
            ),
            take_over_unrenewed: concat!(
                "UPDATE idempotency_records SET owner = ", $p1, ", fingerprint = ", $p2, ", operation = ", $p3,
                ", status = 'in_progress', response = NULL, expires_at_ms = ", $now, " + ", $p4,
                " WHERE idempotency_key = ", $p5, " AND owner = ", $p6,
                " AND status = 'in_progress' AND expires_at_ms = ", $p7
            ),
            complete: concat!(
                "UPDATE idempotency_records SET status = 'completed', response = ", $p1, ", expires_at_ms = ", $now, " + ", $p2,
                " WHERE idempotency_key = ", $p3, " AND owner = ", $p4, " AND status = 'in_progress'"
            ),
            renew: concat!(
                "UPDATE idempotency_records SET expires_at_ms = ", $now, " + ", $p1,
                " WHERE idempotency_key = ", $p2, " AND owner = ", $p3, " AND status = 'in_progress'"
            ),
            release: concat!(
                "DELETE FROM idempotency_records WHERE idempotency_key = ", $p1, " AND owner = ", $p2,
                " AND status = 'in_progress'"
            ),
        }
    };
}

/// A sqlx database that can hold idempotency records: the per-backend SQL and the atomic steps
/// the strategies use, each on a connection the caller supplies (a pooled connection, or the
/// open transaction of `dedup_table`'s transactional mode).
///
/// Implemented for `sqlx::Postgres`, `sqlx::MySql` and `sqlx::Sqlite` behind the features of the
/// same names, each in its own file (`store/sql/<database>.rs`, through `sql_backend!`).
/// Errors: every method returns [`Error::Backend`] carrying the `sqlx::Error`.
///
/// Hidden from the documentation: internal plumbing of the SQL stores. Application code names
/// it only as a bound, `DB: SqlBackend` on a generic `&sqlx::Pool<DB>`.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a database idempotent-runtime was built for",
    label = "idempotent-runtime has no `{Self}` backend in this build",
    note = "each database needs its feature of idempotent-runtime: `postgres` for `sqlx::Postgres` (`PgPool`), `mysql` for `sqlx::MySql` (`MySqlPool`), `sqlite` for `sqlx::Sqlite` (`SqlitePool`); add it to the `features` of the idempotent-runtime dependency in Cargo.toml (e.g. `features = [\"postgres\"]`)",
    note = "a database type of a sqlx version other than idempotent-runtime's is not one of its backends: depend on the sqlx version idempotent-runtime uses (`cargo tree -i sqlx` lists every sqlx version in the build)"
)]
pub trait SqlBackend: Database {
    /// `sqlx::Pool<Self>` as a [`ClaimStore`]. A pool is a store through this type (rather than
    /// directly), so that without the database's feature the pool is no store at all: one
    /// compile error naming the feature, and no follow-up errors about the pool.
    type ClaimPool: ClaimStore;
    /// `pool` as its [`Self::ClaimPool`] (the pool itself).
    fn claim_pool(pool: &Pool<Self>) -> &Self::ClaimPool;
    /// `&sqlx::Pool<Self>` as a [`TxStore`], for the same reason as [`Self::ClaimPool`].
    type TxPool<'a>: TxStore<Database = Self>
    where
        Self: 'a;
    /// `pool` as its [`Self::TxPool`] (the reference itself).
    fn tx_pool(pool: &Pool<Self>) -> Self::TxPool<'_>;

    /// `false` when the database's "now" is each client's own clock (SQLite): see
    /// [`ClaimStore::SHARED_CLOCK`].
    const SHARED_CLOCK: bool;
    /// `true` when [`claim_or_read`](Self::claim_or_read) claims and reads in one statement
    /// (PostgreSQL). `false` (the default): claim mode on a pool reads first, so a duplicate
    /// of an existing record is answered by that one `SELECT`, with no write and no write lock
    /// (SQLite), and only a missing record costs the `INSERT` (see `ClaimStore for Pool`).
    const CLAIM_OR_READ_IN_ONE_STATEMENT: bool = false;

    /// The statement that opens a top-level transaction (`BEGIN IMMEDIATE` on SQLite, so the
    /// write lock is taken up front and two writers never deadlock upgrading a read lock).
    const BEGIN: Option<&'static str>;

    /// See [`ClaimStore::try_claim`].
    fn try_claim(
        conn: &mut Self::Connection,
        claim: &Claim<'_>,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
    /// See [`ClaimStore::read_record`].
    fn read_record(
        conn: &mut Self::Connection,
        key: &StorageKey,
    ) -> impl Future<Output = Result<Option<Record>, Error>> + Send;
    /// [`read_record`](Self::read_record) without a locking clause (MySQL/MariaDB's
    /// `LOCK IN SHARE MODE`; PostgreSQL's and SQLite's read has none), for a connection outside
    /// any transaction: one statement that is its own transaction, sees the latest committed
    /// record, takes no lock and waits for none (a record a transaction has not committed yet
    /// reads as none, or as it was). Used by [`TxStore::read_or_begin`].
    fn read_record_unlocked(
        conn: &mut Self::Connection,
        key: &StorageKey,
    ) -> impl Future<Output = Result<Option<Record>, Error>> + Send;
    /// See [`ClaimStore::take_over_claim`].
    fn take_over_claim(
        conn: &mut Self::Connection,
        claim: &Claim<'_>,
        previous_owner: &str,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
    /// See [`ClaimStore::take_over_unrenewed`].
    fn take_over_unrenewed(
        conn: &mut Self::Connection,
        claim: &Claim<'_>,
        previous_owner: &str,
        expires_at_ms: i64,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
    /// See [`ClaimStore::complete_claim`].
    fn complete_claim(
        conn: &mut Self::Connection,
        key: &StorageKey,
        owner: &str,
        response: &[u8],
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
    /// See [`ClaimStore::renew_claim`].
    fn renew_claim(
        conn: &mut Self::Connection,
        key: &StorageKey,
        owner: &str,
        lease: Duration,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
    /// See [`ClaimStore::release_claim`].
    fn release_claim(
        conn: &mut Self::Connection,
        key: &StorageKey,
        owner: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// [`try_claim`](Self::try_claim), and when a record exists, that record (see
    /// [`ClaimStore::claim_or_read`]). The default runs the two statements; PostgreSQL runs one
    /// (`WITH ins AS (INSERT … ON CONFLICT DO NOTHING RETURNING 1) SELECT …`, whose read sees
    /// the record as it was when the statement started: a record a concurrent transaction
    /// committed meanwhile reads as none, and the caller looks again).
    fn claim_or_read(
        conn: &mut Self::Connection,
        claim: &Claim<'_>,
    ) -> impl Future<Output = Result<ClaimOrRecord, Error>> + Send {
        async move {
            if Self::try_claim(&mut *conn, claim).await? {
                return Ok(ClaimOrRecord::Claimed);
            }
            Ok(ClaimOrRecord::Existing(
                Self::read_record(conn, claim.key).await?,
            ))
        }
    }
    /// Waits for this process's turn to write claim-mode statements to `pool`'s database, and
    /// holds it until the returned [`WriteTurn`] drops; `None`: no turn needed. The pool's
    /// [`ClaimStore`] methods that write (claim, take-over, completion, renewal, release) each
    /// hold one around their write statement, taken once they hold a pooled connection (so a
    /// turn never waits for the pool) and never held longer: never across a body, and never
    /// in transactional mode, whose transaction spans the body.
    ///
    /// The default needs none: a server database queues its writers on row locks. SQLite has
    /// one writer per database file and makes the others retry in its busy handler, which
    /// sleeps (up to 100 ms a time): with many pooled writers the slowest calls waited for
    /// sleeps rather than the lock. Its turn is an in-process first-in-first-out queue per
    /// database (see `store/sql/sqlite.rs`), so this process's writers hand the lock on
    /// without sleeping; other processes on the same file still meet the busy handler.
    fn write_turn(pool: &Pool<Self>) -> impl Future<Output = Option<WriteTurn>> + Send {
        let _ = pool;
        std::future::ready(None)
    }
    /// Creates the idempotency-record table and its index if missing (the migration shipped in
    /// `migrations/<backend>.sql`). Safe to call concurrently and repeatedly.
    fn migrate(pool: &Pool<Self>) -> impl Future<Output = Result<(), Error>> + Send;
}

/// A process's turn to write claim-mode statements to one database, held until dropped (see
/// [`SqlBackend::write_turn`]). Internal to the SQL stores.
#[doc(hidden)]
pub struct WriteTurn {
    /// Held for its drop, which hands the turn to the next writer in line.
    _held: tokio::sync::OwnedMutexGuard<()>,
}

impl WriteTurn {
    /// Waits for `gate`'s turn (first come, first served: tokio's mutex is fair) and holds it.
    pub(crate) async fn wait(gate: std::sync::Arc<tokio::sync::Mutex<()>>) -> WriteTurn {
        WriteTurn {
            _held: gate.lock_owned().await,
        }
    }
}

/// A record row: owner, fingerprint, status, response, expires_at_ms, now_ms.
type RecordRow = (String, Option<String>, String, Option<Vec<u8>>, i64, i64);

fn record_from_row(row: Option<RecordRow>) -> Result<Option<Record>, Error> {
    let Some((owner, fingerprint, status, response, expires_at_ms, now_ms)) = row else {
        return Ok(None);
    };
    let state = match (status.as_str(), response) {
        ("in_progress", _) => RecordState::InProgress,
        ("completed", Some(r)) => RecordState::Completed(r.into()),
        (other, _) => {
            return Err(Error::Serialization(format!(
                "idempotency record has status `{other}` without a usable response"
            )));
        }
    };
    Ok(Some(Record {
        owner: owner.into(),
        fingerprint: fingerprint.map(Into::into),
        state,
        expired: expires_at_ms <= now_ms,
        expires_at_ms: Some(expires_at_ms),
    }))
}

/// Statements of a migration file, split at `;` line ends.
fn statements(sql: &'static str) -> impl Iterator<Item = &'static str> {
    sql.split(";\n").map(str::trim).filter(|s| {
        s.lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with("--"))
    })
}

/// Implements [`SqlBackend`] for one database: `sql_backend!(database = sqlx::Postgres,
/// connection = sqlx::PgConnection, begin = None, shared_clock = true, sql = SQL, migrate =
/// migrate)`, where `SQL` is the backend's [`SqlText`], `migrate` its migration function and
/// `shared_clock` whether its "now" is one clock for every client ([`SqlBackend::SHARED_CLOCK`]). Each backend's file
/// invokes it once.
macro_rules! sql_backend {
    (database = $db:ty, connection = $conn:ty, begin = $begin:expr, shared_clock = $shared:literal, sql = $sql:expr, migrate = $migrate:expr $(, claim_or_read = $claim_or_read:expr)? $(, write_turn = $write_turn:expr)? $(,)?) => {
        impl $crate::store::sql::SqlBackend for $db {
            type ClaimPool = sqlx::Pool<$db>;
            fn claim_pool(pool: &sqlx::Pool<$db>) -> &sqlx::Pool<$db> {
                pool
            }
            type TxPool<'a> = &'a sqlx::Pool<$db>;
            fn tx_pool(pool: &sqlx::Pool<$db>) -> &sqlx::Pool<$db> {
                pool
            }

            const BEGIN: Option<&'static str> = $begin;
            const SHARED_CLOCK: bool = $shared;

            async fn try_claim(
                conn: &mut $conn,
                c: &$crate::store::Claim<'_>,
            ) -> Result<bool, $crate::Error> {
                const TEXT: $crate::store::sql::SqlText = $sql;
                let r = sqlx::query(TEXT.try_claim)
                    .bind(c.key.hex())
                    .bind(c.key.operation())
                    .bind(c.fingerprint)
                    .bind(c.owner)
                    .bind($crate::store::millis(c.lease))
                    .execute(&mut *conn)
                    .await;
                match r {
                    Ok(done) => Ok(done.rows_affected() == 1),
                    Err(e) if $crate::store::sql::errors::is_unique_violation(&e) => Ok(false),
                    Err(e) => Err(e.into()),
                }
            }

            async fn read_record(
                conn: &mut $conn,
                key: &$crate::StorageKey,
            ) -> Result<Option<$crate::store::Record>, $crate::Error> {
                const TEXT: $crate::store::sql::SqlText = $sql;
                let row = sqlx::query_as(TEXT.read)
                    .bind(key.hex())
                    .fetch_optional(&mut *conn)
                    .await?;
                $crate::store::sql::record_from_row(row)
            }

            async fn read_record_unlocked(
                conn: &mut $conn,
                key: &$crate::StorageKey,
            ) -> Result<Option<$crate::store::Record>, $crate::Error> {
                const TEXT: $crate::store::sql::SqlText = $sql;
                let row = sqlx::query_as(TEXT.read_unlocked)
                    .bind(key.hex())
                    .fetch_optional(&mut *conn)
                    .await?;
                $crate::store::sql::record_from_row(row)
            }

            async fn take_over_claim(
                conn: &mut $conn,
                c: &$crate::store::Claim<'_>,
                previous_owner: &str,
            ) -> Result<bool, $crate::Error> {
                const TEXT: $crate::store::sql::SqlText = $sql;
                let done = sqlx::query(TEXT.take_over)
                    .bind(c.owner)
                    .bind(c.fingerprint)
                    .bind(c.key.operation())
                    .bind($crate::store::millis(c.lease))
                    .bind(c.key.hex())
                    .bind(previous_owner)
                    .execute(&mut *conn)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn take_over_unrenewed(
                conn: &mut $conn,
                c: &$crate::store::Claim<'_>,
                previous_owner: &str,
                expires_at_ms: i64,
            ) -> Result<bool, $crate::Error> {
                const TEXT: $crate::store::sql::SqlText = $sql;
                let done = sqlx::query(TEXT.take_over_unrenewed)
                    .bind(c.owner)
                    .bind(c.fingerprint)
                    .bind(c.key.operation())
                    .bind($crate::store::millis(c.lease))
                    .bind(c.key.hex())
                    .bind(previous_owner)
                    .bind(expires_at_ms)
                    .execute(&mut *conn)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn complete_claim(
                conn: &mut $conn,
                key: &$crate::StorageKey,
                owner: &str,
                response: &[u8],
                ttl: std::time::Duration,
            ) -> Result<bool, $crate::Error> {
                const TEXT: $crate::store::sql::SqlText = $sql;
                let done = sqlx::query(TEXT.complete)
                    .bind(response)
                    .bind($crate::store::millis(ttl))
                    .bind(key.hex())
                    .bind(owner)
                    .execute(&mut *conn)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn renew_claim(
                conn: &mut $conn,
                key: &$crate::StorageKey,
                owner: &str,
                lease: std::time::Duration,
            ) -> Result<bool, $crate::Error> {
                const TEXT: $crate::store::sql::SqlText = $sql;
                let done = sqlx::query(TEXT.renew)
                    .bind($crate::store::millis(lease))
                    .bind(key.hex())
                    .bind(owner)
                    .execute(&mut *conn)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn release_claim(
                conn: &mut $conn,
                key: &$crate::StorageKey,
                owner: &str,
            ) -> Result<(), $crate::Error> {
                const TEXT: $crate::store::sql::SqlText = $sql;
                sqlx::query(TEXT.release)
                    .bind(key.hex())
                    .bind(owner)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }

            async fn migrate(pool: &sqlx::Pool<$db>) -> Result<(), $crate::Error> {
                ($migrate)(pool).await
            }

            $(
                const CLAIM_OR_READ_IN_ONE_STATEMENT: bool = {
                    let _ = stringify!($claim_or_read);
                    true
                };
                async fn claim_or_read(
                    conn: &mut $conn,
                    c: &$crate::store::Claim<'_>,
                ) -> Result<$crate::store::ClaimOrRecord, $crate::Error> {
                    ($claim_or_read)(conn, c).await
                }
            )?

            $(
                async fn write_turn(
                    pool: &sqlx::Pool<$db>,
                ) -> Option<$crate::store::sql::WriteTurn> {
                    ($write_turn)(pool).await
                }
            )?
        }
    };
}

/// Implements the `#[tx]` traits for one database's connection: [`TxStore`] and
/// [`IntoTxStore`] for `&mut <DB>Connection` (`tx_store!(database = sqlx::Postgres,
/// connection = sqlx::PgConnection)`). Each backend's file invokes it once.
macro_rules! tx_store {
    (database = $db:ty, connection = $conn:ty $(,)?) => {
        impl $crate::store::sql::TxStore for &mut $conn {
            type Database = $db;
            fn in_callers_transaction(&self) -> bool {
                sqlx::Connection::is_in_transaction(&**self)
            }
            async fn begin(&mut self) -> Result<sqlx::Transaction<'_, $db>, $crate::Error> {
                let conn: &mut $conn = self;
                let tx = match <$db as $crate::store::sql::SqlBackend>::BEGIN {
                    Some(stmt) if !sqlx::Connection::is_in_transaction(&*conn) => {
                        sqlx::Connection::begin_with(conn, stmt).await?
                    }
                    _ => sqlx::Connection::begin(conn).await?,
                };
                Ok(tx)
            }
            async fn begin_deferred(
                &mut self,
            ) -> Result<sqlx::Transaction<'_, $db>, $crate::Error> {
                let conn: &mut $conn = self;
                Ok(sqlx::Connection::begin(conn).await?)
            }
            async fn read_or_begin<R>(
                &mut self,
                key: &$crate::StorageKey,
                settle: impl FnOnce($crate::store::Record) -> Option<R> + Send,
            ) -> Result<$crate::store::sql::ReadOrBegun<'_, $db, R>, $crate::Error> {
                if !sqlx::Connection::is_in_transaction(&**self) {
                    let conn: &mut $conn = self;
                    let read =
                        <$db as $crate::store::sql::SqlBackend>::read_record_unlocked(conn, key)
                            .await?;
                    if let Some(settled) = read.and_then(settle) {
                        return Ok($crate::store::sql::ReadOrBegun::Settled(settled));
                    }
                }
                Ok($crate::store::sql::ReadOrBegun::Begun(
                    $crate::store::sql::TxStore::begin(self).await?,
                ))
            }
            async fn settle(&mut self) {
                let conn: &mut $conn = self;
                // Each failed reply sqlx reads is dequeued; a dropped savepoint queues one.
                for _ in 0..3 {
                    match sqlx::Connection::ping(&mut *conn).await {
                        Ok(()) => return,
                        Err(e) => tracing::debug!(
                            error = %e,
                            "read a reply left on the caller's connection by the strategy's savepoint"
                        ),
                    }
                }
            }
        }

        #[diagnostic::do_not_recommend]
        impl $crate::store::IntoTxStore for &mut $conn {
            type Store = Self;
            fn into_tx_store(self) -> Self {
                self
            }
        }
    };
}

/// Implements `business::BusinessBackend` for one database:
/// `business_backend!(database = sqlx::Postgres, connection = sqlx::PgConnection,
/// lock_for_update = " FOR UPDATE", read_latest = "", names_constraints = true,
/// placeholder = |i: usize| ..., key_lock = |table, parts| ...)`.
/// Each backend's file invokes it once.
macro_rules! business_backend {
    (database = $db:ty, connection = $conn:ty, lock_for_update = $lock:literal, read_latest = $latest:literal, names_constraints = $names:literal, placeholder = $ph:expr, key_lock = $key_lock:expr $(,)?) => {
        impl $crate::store::sql::business::BusinessBackend for $db {
            fn placeholder(i: usize) -> String {
                ($ph)(i)
            }
            fn key_lock_sql(
                table: $crate::store::sql::business::SqlIdent,
                parts: usize,
            ) -> Option<String> {
                ($key_lock)(table, parts)
            }
            const NAMES_CONSTRAINTS: bool = $names;
            const LOCK_FOR_UPDATE: &'static str = $lock;
            const READ_LATEST: &'static str = $latest;
            fn bind_text(
                q: $crate::store::sql::business::Query<Self>,
                value: &'static str,
            ) -> $crate::store::sql::business::Query<Self> {
                q.bind(value)
            }
            async fn execute(
                conn: &mut $conn,
                q: $crate::store::sql::business::Query<Self>,
            ) -> Result<u64, sqlx::Error> {
                Ok(q.execute(&mut *conn).await?.rows_affected())
            }
            async fn fetch_exists(
                conn: &mut $conn,
                q: $crate::store::sql::business::Query<Self>,
            ) -> Result<bool, sqlx::Error> {
                Ok(q.fetch_optional(&mut *conn).await?.is_some())
            }
            async fn fetch_text(
                conn: &mut $conn,
                q: $crate::store::sql::business::Query<Self>,
            ) -> Result<Option<Option<String>>, sqlx::Error> {
                match q.fetch_optional(&mut *conn).await? {
                    Some(row) => Ok(Some(sqlx::Row::try_get::<Option<String>, _>(&row, 0)?)),
                    None => Ok(None),
                }
            }
        }
    };
}

/// Implements sqlx's `Type`, `Encode` and `Decode` for [`FencingToken`](crate::FencingToken)
/// on one database, as that database's signed 64-bit integer (`fencing_token_type!(database =
/// sqlx::Postgres)`): PostgreSQL and MySQL/MariaDB `BIGINT`, SQLite `INTEGER`, so `.bind(fence)`
/// works in `WHERE fence < $1`. Encoding a token above `i64::MAX` (only a hand-built one can
/// be) fails the query with sqlx's encode error, nothing is sent; decoding a negative value
/// fails with sqlx's decode error. Each backend's file invokes it once.
macro_rules! fencing_token_type {
    (database = $db:ty $(,)?) => {
        impl sqlx::Type<$db> for $crate::FencingToken {
            fn type_info() -> <$db as sqlx::Database>::TypeInfo {
                <i64 as sqlx::Type<$db>>::type_info()
            }
            fn compatible(ty: &<$db as sqlx::Database>::TypeInfo) -> bool {
                <i64 as sqlx::Type<$db>>::compatible(ty)
            }
        }

        impl<'q> sqlx::Encode<'q, $db> for $crate::FencingToken {
            fn encode_by_ref(
                &self,
                buf: &mut <$db as sqlx::Database>::ArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                let value = i64::try_from(*self).map_err(|_| {
                    format!(
                        "the fencing token {} is above i64::MAX and does not fit a signed 64-bit column",
                        self.0
                    )
                })?;
                <i64 as sqlx::Encode<'q, $db>>::encode_by_ref(&value, buf)
            }
            fn size_hint(&self) -> usize {
                <i64 as sqlx::Encode<'q, $db>>::size_hint(&0)
            }
        }

        impl<'r> sqlx::Decode<'r, $db> for $crate::FencingToken {
            fn decode(
                value: <$db as sqlx::Database>::ValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                let value = <i64 as sqlx::Decode<'r, $db>>::decode(value)?;
                u64::try_from(value)
                    .map($crate::FencingToken)
                    .map_err(|_| format!("a fencing token cannot be negative: {value}").into())
            }
        }
    };
}

/// The databases compiled in: one line per backend, `"feature" => module`. Declares each
/// backend's module behind its feature, [`backend_database_error`], which asks each backend to
/// recognise its own database-error type, and [`backend_classify`], which asks each backend to
/// classify its own errors.
macro_rules! backends {
    ($($feature:literal => $module:ident),+ $(,)?) => {
        $(
            #[cfg(feature = $feature)]
            mod $module;
        )+

        /// `e` itself as a database error of a compiled-in backend's own error type
        /// (`PgDatabaseError`, `MySqlDatabaseError`, `SqliteError`), as the body may expose it
        /// unboxed; `None` otherwise. Used by [`errors::database_error`].
        pub(crate) fn backend_database_error<'a>(
            e: &'a (dyn std::error::Error + 'static),
        ) -> Option<&'a (dyn sqlx::error::DatabaseError + 'static)> {
            $(
                #[cfg(feature = $feature)]
                if let Some(d) = $module::database_error(e) {
                    return Some(d);
                }
            )+
            let _ = e;
            None
        }

        /// What `d` means ([`errors::Class`]), as the compiled-in backend whose error type it
        /// is classifies it (each backend's `classify`, next to its codes); `None` when no
        /// backend recognises it. Used by [`errors::classify`].
        pub(crate) fn backend_classify<'a>(
            d: &'a (dyn sqlx::error::DatabaseError + 'static),
        ) -> Option<errors::Class<'a>> {
            $(
                #[cfg(feature = $feature)]
                if let Some(class) = $module::classify(d) {
                    return Some(class);
                }
            )+
            let _ = d;
            None
        }
    };
}

// The business-table plumbing the strategies and generated code use: not an API of its own.
#[doc(hidden)]
pub mod business;
pub mod errors;

backends! {
    "postgres" => postgres,
    "mysql" => mysql,
    "sqlite" => sqlite,
}

pub use errors::is_retryable;

/// Where `dedup_table`'s transactional mode and the business-table strategies open the
/// transaction that holds the claim (or check) and the body's writes: a pool (`&PgPool`,
/// `&MySqlPool`, `&SqlitePool`: a new transaction on a pooled connection) or a connection
/// (`&mut PgConnection`, …: a new transaction, or a SAVEPOINT when the connection is already
/// inside the caller's transaction, which then stays usable).
///
/// A call cancelled while its `BEGIN` is in flight never leaves a pooled connection inside a
/// transaction (see `begin_on_pool`). A `&mut` connection is the caller's own, and sqlx 0.9.0
/// can leave it inside an untracked transaction when the call's future is dropped during its
/// `BEGIN` (PostgreSQL, MySQL; launchbadge/sqlx #4393): close (`PoolConnection::close`) rather
/// than reuse a connection whose call was cancelled.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot open the transaction that `#[tx]` injects",
    label = "with `#[tx]` this store must be a sqlx pool (`&PgPool`, `&MySqlPool`, `&SqlitePool`) or a `&mut` connection",
    note = "the memory store has no transactions: remove the `#[tx]` parameter to claim outside the body, or use a SQL store"
)]
#[doc(hidden)]
pub trait TxStore: IntoTxStore + Send {
    /// The sqlx database.
    type Database: SqlBackend;
    /// Opens the transaction (or savepoint). Errors: [`Error::Backend`].
    fn begin(
        &mut self,
    ) -> impl Future<Output = Result<sqlx::Transaction<'_, Self::Database>, Error>> + Send;
    /// Opens a deferred transaction (or savepoint) for reading only: plain `BEGIN` on every
    /// backend, so on SQLite it takes no write lock and runs beside a writer (the strategies'
    /// re-reads of the key's row after a failed run). A transaction that may write starts with
    /// [`begin`](Self::begin). Errors: [`Error::Backend`].
    fn begin_deferred(
        &mut self,
    ) -> impl Future<Output = Result<sqlx::Transaction<'_, Self::Database>, Error>> + Send;
    /// Opens the transaction as [`begin`](Self::begin) does, unless a record read first
    /// settles the call without one.
    ///
    /// When the store is not inside the caller's transaction ([`in_callers_transaction`]
    /// `false`: a pool, or a connection outside any transaction), the record of `key` is read
    /// first in one statement outside any transaction ([`SqlBackend::read_record_unlocked`]),
    /// and `settle` judges it: `Some(r)` ends the call there, [`ReadOrBegun::Settled`]`(r)`,
    /// with no transaction opened (a pooled connection goes back to the pool). No record, or
    /// `settle` answering `None`, opens the transaction on that same connection (a pool: one
    /// checkout for both), through the same cancel-safe path as [`begin`](Self::begin). Inside
    /// the caller's transaction nothing is read first: [`ReadOrBegun::Begun`] at once.
    ///
    /// `dedup_table`'s transactional mode settles a duplicate of a completed call this way:
    /// one statement and no `BEGIN` (on SQLite, no write lock). The read claims nothing: what
    /// is claimed is decided inside the transaction, by reading again.
    ///
    /// The default reads nothing and begins (the behaviour inside the caller's transaction).
    ///
    /// Errors: [`Error::Backend`] (the read's, or the `BEGIN`'s).
    ///
    /// [`in_callers_transaction`]: Self::in_callers_transaction
    fn read_or_begin<R>(
        &mut self,
        key: &StorageKey,
        settle: impl FnOnce(Record) -> Option<R> + Send,
    ) -> impl Future<Output = Result<ReadOrBegun<'_, Self::Database, R>, Error>> + Send {
        let _ = (key, settle);
        async move { Ok(ReadOrBegun::Begun(self.begin().await?)) }
    }
    /// `true` when the store is a connection already inside the caller's transaction: the
    /// strategy then works in a SAVEPOINT, and a deadlock or serialization failure is returned
    /// at once (only the caller can retry its whole transaction). Pools return `false`.
    fn in_callers_transaction(&self) -> bool {
        false
    }
    /// After the strategy's savepoint inside the caller's transaction ended in a retryable
    /// failure: reads the replies sqlx left queued on the connection, so the caller's next
    /// statement gets its own answer. After a deadlock (or MariaDB's 1020) MySQL has already
    /// rolled the caller's whole transaction back, so the `ROLLBACK TO SAVEPOINT` sqlx queues
    /// when the savepoint is dropped fails with 1305 ("SAVEPOINT … does not exist"); read here,
    /// that reply no longer surfaces as the error of the caller's own `rollback()`. Pools:
    /// nothing to do.
    fn settle(&mut self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

/// What [`TxStore::read_or_begin`] did.
#[doc(hidden)]
pub enum ReadOrBegun<'c, DB: Database, R> {
    /// The record read before any transaction settled the call: `settle`'s answer. No
    /// transaction was opened.
    Settled(R),
    /// The transaction (or savepoint), opened as [`TxStore::begin`] opens it.
    Begun(sqlx::Transaction<'c, DB>),
}

/// Opens a transaction on a connection of `pool` with `statement` (`None`: sqlx's `BEGIN`),
/// so that a caller whose future is dropped while the `BEGIN` is in flight never leaves that
/// connection in the pool inside a transaction. Every transaction the runtime opens on a pool
/// starts here (the strategies through [`TxStore::begin`], the migrations) or in
/// [`begin_on_connection`], its second half (`dedup_table` through
/// [`TxStore::read_or_begin`], on the connection it read on); tested by sweeping a deadline
/// across both (`tests/tests/cancelled_begin.rs`).
///
/// sqlx 0.9.0 raises its transaction depth only after the `BEGIN` round trip (PostgreSQL and
/// MySQL), and its rollback-on-drop guards do nothing at depth 0: a future dropped in between
/// returns the connection to the pool inside a server-side transaction that nothing ends, and
/// the next borrower's statements run in it (a claim written there is invisible to everyone
/// else). Reported as launchbadge/sqlx (now transact-rs/sqlx) issue #4393, fixed for
/// PostgreSQL by pull request #4394, not in a release yet; SQLite was made cancel-safe long
/// ago (#2054, #2057). So the `BEGIN` runs in a task of its own, which always finishes: when
/// the caller is gone by then, the task drops the open transaction, which queues its
/// `ROLLBACK`, and the pool runs that before it lends the connection again. Acquiring the
/// connection happens in the caller's future (cancel-safe in sqlx).
///
/// Errors: [`Error::Backend`] (sqlx's, or the task's when the runtime is shutting down). A
/// panic inside sqlx's `begin` is resumed in the caller.
pub(crate) async fn begin_on_pool<DB: SqlBackend>(
    pool: &Pool<DB>,
    statement: Option<&'static str>,
) -> Result<sqlx::Transaction<'static, DB>, Error> {
    begin_on_connection(acquire(pool).await?, statement).await
}

/// [`begin_on_pool`] on a connection already checked out of the pool (by
/// [`TxStore::read_or_begin`], which read on it first, outside any transaction): the same
/// `BEGIN` in a task of its own.
async fn begin_on_connection<DB: Database>(
    conn: sqlx::pool::PoolConnection<DB>,
    statement: Option<&'static str>,
) -> Result<sqlx::Transaction<'static, DB>, Error> {
    let begin = sqlx::Transaction::begin(conn, statement.map(sqlx::SqlSafeStr::into_sql_str));
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return Ok(begin.await?);
    };
    match runtime.spawn(begin).await {
        Ok(tx) => Ok(tx?),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(Error::backend(e)),
    }
}

impl<DB: SqlBackend> TxStore for &Pool<DB> {
    type Database = DB;
    async fn begin(&mut self) -> Result<sqlx::Transaction<'_, DB>, Error> {
        begin_on_pool(self, DB::BEGIN).await
    }
    async fn begin_deferred(&mut self) -> Result<sqlx::Transaction<'_, DB>, Error> {
        begin_on_pool(self, None).await
    }
    /// The read and the `BEGIN` on one pooled connection.
    async fn read_or_begin<R>(
        &mut self,
        key: &StorageKey,
        settle: impl FnOnce(Record) -> Option<R> + Send,
    ) -> Result<ReadOrBegun<'_, DB, R>, Error> {
        let mut conn = acquire(self).await?;
        let read = DB::read_record_unlocked(&mut conn, key).await?;
        if let Some(settled) = read.and_then(settle) {
            return Ok(ReadOrBegun::Settled(settled));
        }
        Ok(ReadOrBegun::Begun(
            begin_on_connection(conn, DB::BEGIN).await?,
        ))
    }
}

impl<DB: SqlBackend> Store for Pool<DB> {
    fn backend_name(&self) -> &'static str {
        <DB as Database>::NAME
    }
}

impl<DB: SqlBackend> ClaimStore for Pool<DB> {
    const SHARED_CLOCK: bool = DB::SHARED_CLOCK;

    async fn try_claim(&self, claim: &Claim<'_>) -> Result<bool, Error> {
        let mut conn = acquire(self).await?;
        let _turn = DB::write_turn(self).await;
        DB::try_claim(&mut conn, claim).await
    }

    /// One pooled connection (one checkout). PostgreSQL: [`SqlBackend::claim_or_read`], one
    /// statement either way. MySQL/MariaDB and SQLite: the record is read first
    /// ([`SqlBackend::read_record_unlocked`]: autocommit, no lock taken or waited for), and an
    /// existing one — a completed call's (a replay), a running one's, an expired one — is
    /// returned from that single `SELECT`: no transaction, and on SQLite no write lock, so
    /// replays run beside a writer. Only a missing record costs the `INSERT` (under the
    /// writers' turn where they take turns, [`SqlBackend::write_turn`]: SQLite) and, when a
    /// concurrent caller inserted it first, the read after it. The strategy judges the record
    /// it gets exactly as before (fingerprint, expiry by the database's clock, owner).
    async fn claim_or_read(&self, claim: &Claim<'_>) -> Result<ClaimOrRecord, Error> {
        let mut conn = acquire(self).await?;
        if !DB::CLAIM_OR_READ_IN_ONE_STATEMENT
            && let Some(record) = DB::read_record_unlocked(&mut conn, claim.key).await?
        {
            return Ok(ClaimOrRecord::Existing(Some(record)));
        }
        let Some(turn) = DB::write_turn(self).await else {
            return DB::claim_or_read(&mut conn, claim).await;
        };
        let claimed = DB::try_claim(&mut conn, claim).await?;
        drop(turn);
        if claimed {
            return Ok(ClaimOrRecord::Claimed);
        }
        Ok(ClaimOrRecord::Existing(
            DB::read_record(&mut conn, claim.key).await?,
        ))
    }

    async fn read_record(&self, key: &StorageKey) -> Result<Option<Record>, Error> {
        let mut conn = acquire(self).await?;
        DB::read_record(&mut conn, key).await
    }

    async fn take_over_claim(
        &self,
        claim: &Claim<'_>,
        previous_owner: &str,
    ) -> Result<bool, Error> {
        let mut conn = acquire(self).await?;
        let _turn = DB::write_turn(self).await;
        DB::take_over_claim(&mut conn, claim, previous_owner).await
    }

    async fn take_over_unrenewed(
        &self,
        claim: &Claim<'_>,
        previous_owner: &str,
        expires_at_ms: i64,
    ) -> Result<bool, Error> {
        let mut conn = acquire(self).await?;
        let _turn = DB::write_turn(self).await;
        DB::take_over_unrenewed(&mut conn, claim, previous_owner, expires_at_ms).await
    }

    async fn complete_claim(
        &self,
        key: &StorageKey,
        owner: &str,
        response: &[u8],
        ttl: Duration,
    ) -> Result<bool, Error> {
        let mut conn = acquire(self).await?;
        let _turn = DB::write_turn(self).await;
        DB::complete_claim(&mut conn, key, owner, response, ttl).await
    }

    async fn renew_claim(
        &self,
        key: &StorageKey,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, Error> {
        let mut conn = acquire(self).await?;
        let _turn = DB::write_turn(self).await;
        DB::renew_claim(&mut conn, key, owner, lease).await
    }

    async fn release_claim(&self, key: &StorageKey, owner: &str) -> Result<(), Error> {
        let mut conn = acquire(self).await?;
        let _turn = DB::write_turn(self).await;
        DB::release_claim(&mut conn, key, owner).await
    }

    fn release_claim_detached(&self, key: StorageKey, owner: String) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool = self.clone();
        handle.spawn(async move {
            if let Err(e) = pool.release_claim(&key, &owner).await {
                tracing::warn!(?key, error = %e, "releasing a dropped claim failed; it frees itself when its lease ends");
            }
        });
    }
}

/// The store is `SqlBackend::ClaimPool` (the pool itself): without the database's feature
/// that projection has no value, so the pool is reported once, as no store, and nothing that
/// uses it is checked further.
#[diagnostic::do_not_recommend]
impl<DB: SqlBackend> AsClaimStore for Pool<DB> {
    type Store = DB::ClaimPool;
    fn as_claim_store(&self) -> &DB::ClaimPool {
        DB::claim_pool(self)
    }
}

/// The store is `SqlBackend::TxPool` (the reference itself), for the reason given on the
/// [`AsClaimStore`] impl.
#[diagnostic::do_not_recommend]
impl<'a, DB: SqlBackend> IntoTxStore for &'a Pool<DB> {
    type Store = DB::TxPool<'a>;
    fn into_tx_store(self) -> DB::TxPool<'a> {
        DB::tx_pool(self)
    }
}

/// A `&mut PgPool` parameter (or `MySqlPool`, `SqlitePool`) opens the transaction through
/// the shared reference.
#[diagnostic::do_not_recommend]
impl<'a, DB: SqlBackend> IntoTxStore for &'a mut Pool<DB> {
    type Store = DB::TxPool<'a>;
    fn into_tx_store(self) -> DB::TxPool<'a> {
        DB::tx_pool(self)
    }
}

/// A `&&PgPool` parameter (or `MySqlPool`, `SqlitePool`).
#[diagnostic::do_not_recommend]
impl<'a, DB: SqlBackend> IntoTxStore for &&'a Pool<DB> {
    type Store = DB::TxPool<'a>;
    fn into_tx_store(self) -> DB::TxPool<'a> {
        DB::tx_pool(self)
    }
}

/// Creates the idempotency-record table (`idempotency_records`) and its index in `pool`'s
/// database if they are missing. Call once at startup; safe to call concurrently.
///
/// It first checks the connection as [`check_connection`] does, so a database that cannot be
/// reached is reported with its cause within the pool's `acquire_timeout`, not after it.
///
/// Errors: [`Error::Backend`] when the database refuses the DDL, or holding a
/// [`ConnectError`](crate::ConnectError) when no connection comes (refused, unknown host,
/// credentials, unknown database, timed out, another kind of server: see
/// [`check_connection`]).
pub async fn migrate<DB: SqlBackend>(pool: &Pool<DB>) -> Result<(), Error> {
    check_connection(pool).await?;
    DB::migrate(pool).await
}

/// Checks that `pool` can have a connection to its database, once, at startup (before the
/// first call, typically right after `PoolOptions::connect_lazy`), so that a database that
/// cannot be reached is named with its cause instead of as sqlx's "pool timed out" on the
/// first call.
///
/// A pool with no connection open opens one directly with its own options, bounded by its
/// `acquire_timeout` (a single wait: a server that accepts the TCP connection but never
/// answers the handshake costs `acquire_timeout`, then is named), and closes it again; a pool
/// with connections open borrows one as the stores do (see [`diagnose_pool_timeout`] for what
/// a time-out then says).
///
/// Errors: [`Error::Backend`] holding a [`ConnectError`](crate::ConnectError) whose target
/// is the pool's URL without its password and whose cause is one of
/// [`Refused`](crate::ConnectCause::Refused), [`UnknownHost`](crate::ConnectCause::UnknownHost),
/// [`Auth`](crate::ConnectCause::Auth), [`UnknownDatabase`](crate::ConnectCause::UnknownDatabase),
/// [`TimedOut`](crate::ConnectCause::TimedOut) (its source says whether a TCP connection
/// opened: then the port is served by something that does not speak the database's protocol,
/// e.g. another kind of server), [`PoolBusy`](crate::ConnectCause::PoolBusy) or
/// [`Other`](crate::ConnectCause::Other); or sqlx's `PoolClosed`.
pub async fn check_connection<DB: SqlBackend>(pool: &Pool<DB>) -> Result<(), Error> {
    use sqlx::Connection as _;
    if pool.is_closed() || pool.size() > 0 {
        drop(acquire(pool).await?);
        return Ok(());
    }
    let limit = pool.options().get_acquire_timeout();
    let conn = connect_once::<DB>(&pool.connect_options(), limit)
        .await
        .map_err(|mut e| {
            e.context =
                format!("the pool's first connection, within its acquire_timeout of {limit:?}");
            Error::backend(e)
        })?;
    let _ = conn.close().await;
    Ok(())
}

/// A connection from `pool`, as `pool.acquire()`, except that sqlx's bare
/// `PoolTimedOut` ("pool timed out while waiting for an open connection") comes back as a
/// [`ConnectError`](crate::ConnectError) from [`diagnose_pool_timeout`]: the pool's URL
/// without its password and why no connection came (refused, unknown host, credentials,
/// unknown database, timed out, or every connection busy); an error the pool met while
/// opening a connection (credentials, unknown database, …) comes back as a `ConnectError`
/// too.
///
/// Errors: [`Error::Backend`] holding the `ConnectError`, or sqlx's `PoolClosed`.
pub(crate) async fn acquire<DB: SqlBackend>(
    pool: &Pool<DB>,
) -> Result<sqlx::pool::PoolConnection<DB>, Error> {
    match pool.acquire().await {
        Ok(conn) => Ok(conn),
        Err(sqlx::Error::PoolTimedOut) => Err(Error::backend(diagnose_pool_timeout(pool).await)),
        Err(e @ sqlx::Error::PoolClosed) => Err(e.into()),
        // Anything else failed while the pool opened a connection for us (sqlx does not retry
        // credentials, unknown databases, TLS or name look-ups): say where to and why.
        Err(e) => {
            let (target, host) = target_of::<DB>(&pool.connect_options());
            Err(Error::backend(
                crate::ConnectError::diagnose(target, host.as_deref(), Box::new(e)).await,
            ))
        }
    }
}

/// Why `pool` lent no connection within its `acquire_timeout`, for a caller that got sqlx's
/// `PoolTimedOut`. sqlx keeps retrying a refused connection until that time-out and then
/// reports only the time-out; this looks once more:
///
/// - every one of the pool's `max_connections` is open (and was lent out):
///   [`ConnectCause::PoolBusy`](crate::ConnectCause::PoolBusy);
/// - otherwise one connection is opened with the pool's own options (for at most the
///   `acquire_timeout`, 5 s at most) and closed again: its error's cause (refused, unknown
///   host, authentication, unknown database), [`ConnectCause::TimedOut`](crate::ConnectCause::TimedOut)
///   when it does not answer in time (its source says whether a plain TCP connection to the
///   address opened meanwhile: then something listens there that does not speak the
///   database's protocol, another kind of server), or `PoolBusy` when it opens fine (the
///   pool's connections were busy after all).
///
/// The target is the pool's URL as sqlx rebuilds it from its options, without the password and
/// the query (`postgres://app@db:5432/orders`); for SQLite `sqlite://<file>`.
pub async fn diagnose_pool_timeout<DB: SqlBackend>(pool: &Pool<DB>) -> crate::ConnectError {
    use sqlx::Connection as _;
    let options = pool.connect_options();
    let (target, _) = target_of::<DB>(&options);
    let waited = pool.options().get_acquire_timeout();
    let max = pool.options().get_max_connections();
    let open = pool.size();
    let busy = |context: String| crate::ConnectError {
        target: target.clone(),
        cause: crate::ConnectCause::PoolBusy,
        source: None,
        context,
    };
    let context = format!(
        "no connection from the pool within its acquire_timeout of {waited:?}; {open} of {max} connections open"
    );
    if open >= max {
        return busy(context);
    }
    let probe_for = waited.min(Duration::from_secs(5));
    match connect_once::<DB>(&options, probe_for).await {
        Ok(conn) => {
            let _ = conn.close().await;
            busy(context)
        }
        Err(mut err) => {
            err.context = context;
            err
        }
    }
}

/// Opens one connection with `options` within `limit`. Errors: a
/// [`ConnectError`](crate::ConnectError) naming the target (URL without password) and the
/// cause; when no handshake came within `limit`, [`ConnectCause::TimedOut`](crate::ConnectCause::TimedOut)
/// with a source saying whether a plain TCP connection to the host and port opened meanwhile
/// (tried at the same time, so the whole wait stays `limit`): if it did, something listens
/// there that does not speak the database's protocol.
async fn connect_once<DB: SqlBackend>(
    options: &<DB::Connection as sqlx::Connection>::Options,
    limit: Duration,
) -> Result<DB::Connection, crate::ConnectError> {
    use sqlx::ConnectOptions as _;
    let (target, host) = target_of::<DB>(options);
    // Looked at while the handshake is awaited, so that it never adds to the wait.
    let tcp = tcp_address_of::<DB>(options)
        .and_then(|(host, port)| crate::connect::TcpCheck::start(&host, port, limit));
    match tokio::time::timeout(limit, options.connect()).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => {
            Err(crate::ConnectError::diagnose(target, host.as_deref(), Box::new(e)).await)
        }
        Err(_) => {
            let what = if DB::NAME == "MySQL" {
                "MySQL/MariaDB"
            } else {
                DB::NAME
            };
            let detail = crate::connect::TcpCheck::timed_out(tcp, what, limit).await;
            Err(crate::ConnectError {
                target,
                cause: crate::ConnectCause::TimedOut,
                source: Some(Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    detail,
                ))),
                context: String::new(),
            })
        }
    }
}

/// Where a server database's `options` point, read from their fields: sqlx's own URL
/// rebuilding (`ConnectOptions::to_url_lossy`) panics in sqlx 0.9.0 when the host is a Unix
/// socket directory — the default host of `postgres:///db` on a machine with a local server —
/// and on an empty host (`BUG: generated un-parseable URL: EmptyHost`). `None` for SQLite.
struct ServerAddress<'a> {
    scheme: &'static str,
    user: &'a str,
    /// A host name or address; empty when none was given.
    host: &'a str,
    port: u16,
    /// The Unix socket (a directory on PostgreSQL, a file on MySQL) the connection uses
    /// instead of TCP: set explicitly, or a host starting with `/`.
    socket: Option<String>,
    database: Option<&'a str>,
}

fn address_of<DB: SqlBackend>(
    options: &<DB::Connection as sqlx::Connection>::Options,
) -> Option<ServerAddress<'_>> {
    let options = options as &dyn std::any::Any;
    let socket_of = |socket: Option<&std::path::PathBuf>, host: &str| {
        socket
            .map(|p| p.display().to_string())
            .or_else(|| host.starts_with('/').then(|| host.to_owned()))
    };
    #[cfg(feature = "postgres")]
    if let Some(o) = options.downcast_ref::<sqlx::postgres::PgConnectOptions>() {
        return Some(ServerAddress {
            scheme: "postgres",
            user: o.get_username(),
            host: o.get_host(),
            port: o.get_port(),
            socket: socket_of(o.get_socket(), o.get_host()),
            database: o.get_database(),
        });
    }
    #[cfg(feature = "mysql")]
    if let Some(o) = options.downcast_ref::<sqlx::mysql::MySqlConnectOptions>() {
        return Some(ServerAddress {
            scheme: "mysql",
            user: o.get_username(),
            host: o.get_host(),
            port: o.get_port(),
            socket: socket_of(o.get_socket(), o.get_host()),
            database: o.get_database(),
        });
    }
    // Built with SQLite alone there is no server to name.
    #[cfg(not(any(feature = "postgres", feature = "mysql")))]
    let _ = (options, socket_of);
    None
}

/// The TCP host and port of a server database's `options`; `None` for SQLite, for a Unix
/// socket and for an empty host.
fn tcp_address_of<DB: SqlBackend>(
    options: &<DB::Connection as sqlx::Connection>::Options,
) -> Option<(String, u16)> {
    let a = address_of::<DB>(options)?;
    if a.socket.is_some() || a.host.is_empty() {
        return None;
    }
    Some((a.host.to_owned(), a.port))
}

/// The address of a pool's database for messages, and its host for a name look-up:
/// `scheme://user@host:port/database` without password or query (a Unix socket shown as
/// `[unix socket PATH]`, with no host to look up); for SQLite `sqlite://<file>` and no host.
fn target_of<DB: SqlBackend>(
    options: &<DB::Connection as sqlx::Connection>::Options,
) -> (String, Option<String>) {
    #[cfg(feature = "sqlite")]
    if let Some(o) =
        (options as &dyn std::any::Any).downcast_ref::<sqlx::sqlite::SqliteConnectOptions>()
    {
        return (format!("sqlite://{}", o.get_filename().display()), None);
    }
    let Some(a) = address_of::<DB>(options) else {
        return (
            format!("the {} database", <DB as sqlx::Database>::NAME),
            None,
        );
    };
    let user = if a.user.is_empty() {
        String::new()
    } else {
        format!("{}@", a.user)
    };
    let database = a.database.map(|d| format!("/{d}")).unwrap_or_default();
    match a.socket {
        Some(socket) => (
            format!("{}://{user}[unix socket {socket}]{database}", a.scheme),
            None,
        ),
        None => {
            // An IPv6 address in brackets, as in a URL.
            let host = if a.host.contains(':') {
                format!("[{}]", a.host)
            } else {
                a.host.to_owned()
            };
            (
                format!("{}://{user}{host}:{}{database}", a.scheme, a.port),
                (!a.host.is_empty()).then(|| a.host.to_owned()),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::target_of;

    /// sqlx 0.9.0's `to_url_lossy` panics ("BUG: generated un-parseable URL: EmptyHost") on a
    /// PostgreSQL socket directory as host — the default of `postgres:///db` on a machine with
    /// a local server — and on an empty host: the target is built from the fields instead.
    #[cfg(feature = "postgres")]
    #[test]
    fn a_postgres_target_never_panics_and_names_a_socket() {
        use sqlx::postgres::{PgConnectOptions, Postgres};
        let socket = PgConnectOptions::new_without_pgpass()
            .host("/var/run/postgresql")
            .port(5432)
            .username("app")
            .password("secret")
            .database("orders");
        assert_eq!(
            target_of::<Postgres>(&socket),
            (
                "postgres://app@[unix socket /var/run/postgresql]/orders".to_owned(),
                None
            )
        );
        let tcp = PgConnectOptions::new_without_pgpass()
            .host("db.example")
            .port(6543)
            .username("app")
            .password("secret")
            .database("orders");
        assert_eq!(
            target_of::<Postgres>(&tcp),
            (
                "postgres://app@db.example:6543/orders".to_owned(),
                Some("db.example".to_owned())
            )
        );
        let v6 = PgConnectOptions::new_without_pgpass()
            .host("::1")
            .port(5432)
            .username("app");
        assert_eq!(target_of::<Postgres>(&v6).0, "postgres://app@[::1]:5432");
        let empty = PgConnectOptions::new_without_pgpass()
            .host("")
            .username("app");
        assert_eq!(target_of::<Postgres>(&empty).1, None);
        // Whatever the machine's default host, a URL without one parses and is described.
        let default: PgConnectOptions = "postgres:///test".parse().expect("parses");
        assert!(target_of::<Postgres>(&default).0.starts_with("postgres://"));
    }

    #[cfg(feature = "mysql")]
    #[test]
    fn a_mysql_target_names_a_socket() {
        use sqlx::mysql::{MySql, MySqlConnectOptions};
        let socket = MySqlConnectOptions::new()
            .socket("/run/mysqld/mysqld.sock")
            .username("root")
            .database("test");
        assert_eq!(
            target_of::<MySql>(&socket),
            (
                "mysql://root@[unix socket /run/mysqld/mysqld.sock]/test".to_owned(),
                None
            )
        );
    }
}
