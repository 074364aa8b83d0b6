//! SQL backends through sqlx: PostgreSQL, MySQL/MariaDB and SQLite.
//!
//! All SQL is static text with bound parameters; the storage key, owner and fingerprint are hex
//! strings and the response is a byte blob, so no user value is ever interpolated into SQL.
//! Time is the database's clock in Unix milliseconds (`clock_timestamp()` on PostgreSQL,
//! `NOW(3)` on MySQL, `julianday('now')` on SQLite), never the application's.

use std::future::Future;
use std::time::Duration;

use sqlx::{Connection, Database, Pool};

use super::{Claim, ClaimStore, Record, RecordState, millis};
use crate::{Error, StorageKey};

/// The SQL statements of one backend, built by [`sql_text!`] from one template.
struct SqlText {
    try_claim: &'static str,
    read: &'static str,
    take_over: &'static str,
    complete: &'static str,
    renew: &'static str,
    release: &'static str,
}

/// One template for every backend: `$now` is the backend's "now in Unix ms" expression, `p1..p6`
/// its placeholders in binding order, `$on_conflict` what follows the claim INSERT.
macro_rules! sql_text {
    (now = $now:literal, p = [$p1:literal, $p2:literal, $p3:literal, $p4:literal, $p5:literal, $p6:literal], on_conflict = $oc:literal, read_lock = $rl:literal) => {
        SqlText {
            try_claim: concat!(
                "INSERT INTO idempotency_records (idempotency_key, operation, fingerprint, status, owner, response, expires_at_ms, created_at_ms) VALUES (",
                $p1, ", ", $p2, ", ", $p3, ", 'in_progress', ", $p4, ", NULL, ", $now, " + ", $p5, ", ", $now, ")", $oc
            ),
            read: concat!(
                "SELECT owner, fingerprint, status, response, expires_at_ms, ", $now,
                " AS now_ms FROM idempotency_records WHERE idempotency_key = ", $p1, $rl
            ),
            take_over: concat!(
                "UPDATE idempotency_records SET owner = ", $p1, ", fingerprint = ", $p2, ", operation = ", $p3,
                ", status = 'in_progress', response = NULL, expires_at_ms = ", $now, " + ", $p4,
                " WHERE idempotency_key = ", $p5, " AND owner = ", $p6, " AND expires_at_ms <= ", $now
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
/// same names. Errors: every method returns [`Error::Backend`] carrying the `sqlx::Error`.
pub trait SqlBackend: Database {
    /// The statement that opens a top-level transaction (`BEGIN IMMEDIATE` on SQLite, so the
    /// write lock is taken up front and two writers never deadlock upgrading a read lock).
    const BEGIN: Option<&'static str>;

    /// See [`ClaimStore::try_claim`].
    fn try_claim(
        conn: &mut Self::Connection,
        claim: &Claim<'_>,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
    /// See [`ClaimStore::read`].
    fn read(
        conn: &mut Self::Connection,
        key: &StorageKey,
    ) -> impl Future<Output = Result<Option<Record>, Error>> + Send;
    /// See [`ClaimStore::take_over`].
    fn take_over(
        conn: &mut Self::Connection,
        claim: &Claim<'_>,
        previous_owner: &str,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
    /// See [`ClaimStore::complete`].
    fn complete(
        conn: &mut Self::Connection,
        key: &StorageKey,
        owner: &str,
        response: &[u8],
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
    /// See [`ClaimStore::renew`].
    fn renew(
        conn: &mut Self::Connection,
        key: &StorageKey,
        owner: &str,
        lease: Duration,
    ) -> impl Future<Output = Result<bool, Error>> + Send;
    /// See [`ClaimStore::release`].
    fn release(
        conn: &mut Self::Connection,
        key: &StorageKey,
        owner: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// Creates the idempotency-record table and its index if missing (the migration shipped in
    /// `migrations/<backend>.sql`). Safe to call concurrently and repeatedly.
    fn migrate(pool: &Pool<Self>) -> impl Future<Output = Result<(), Error>> + Send;
}

/// `true` when `e` is a unique/primary-key violation, judged by sqlx's
/// [`ErrorKind`](sqlx::error::ErrorKind), never by message text.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

/// `true` when `e` is a deadlock or serialization failure (SQLSTATE 40001, which MySQL uses for
/// error 1213, or 40P01) or SQLite's busy/locked, after which the whole transaction may be
/// retried.
pub fn is_retryable(e: &Error) -> bool {
    let Error::Backend(source) = e else {
        return false;
    };
    let Some(sqlx::Error::Database(d)) = source.downcast_ref::<sqlx::Error>() else {
        return false;
    };
    matches!(
        d.code().as_deref(),
        Some("40001" | "40P01" | "5" | "6" | "261" | "262" | "517")
    )
}

/// A record row: owner, fingerprint, status, response, expires_at_ms, now_ms.
type RecordRow = (String, Option<String>, String, Option<Vec<u8>>, i64, i64);

fn record_from_row(row: Option<RecordRow>) -> Result<Option<Record>, Error> {
    let Some((owner, fingerprint, status, response, expires_at_ms, now_ms)) = row else {
        return Ok(None);
    };
    let state = match (status.as_str(), response) {
        ("in_progress", _) => RecordState::InProgress,
        ("completed", Some(r)) => RecordState::Completed(r),
        (other, _) => {
            return Err(Error::Serialization(format!(
                "idempotency record has status `{other}` without a usable response"
            )));
        }
    };
    Ok(Some(Record {
        owner,
        fingerprint,
        state,
        expired: expires_at_ms <= now_ms,
    }))
}

macro_rules! impl_sql_backend {
    ($feature:literal, $db:ty, $conn:ty, $begin:expr, $sql:expr, $migrate:expr) => {
        #[cfg(feature = $feature)]
        impl SqlBackend for $db {
            const BEGIN: Option<&'static str> = $begin;

            async fn try_claim(conn: &mut $conn, c: &Claim<'_>) -> Result<bool, Error> {
                const SQL: SqlText = $sql;
                let r = sqlx::query(SQL.try_claim)
                    .bind(c.key.hex())
                    .bind(c.key.operation())
                    .bind(c.fingerprint)
                    .bind(c.owner)
                    .bind(millis(c.lease))
                    .execute(&mut *conn)
                    .await;
                match r {
                    Ok(done) => Ok(done.rows_affected() == 1),
                    Err(e) if is_unique_violation(&e) => Ok(false),
                    Err(e) => Err(e.into()),
                }
            }

            async fn read(conn: &mut $conn, key: &StorageKey) -> Result<Option<Record>, Error> {
                const SQL: SqlText = $sql;
                let row = sqlx::query_as(SQL.read)
                    .bind(key.hex())
                    .fetch_optional(&mut *conn)
                    .await?;
                record_from_row(row)
            }

            async fn take_over(
                conn: &mut $conn,
                c: &Claim<'_>,
                previous_owner: &str,
            ) -> Result<bool, Error> {
                const SQL: SqlText = $sql;
                let done = sqlx::query(SQL.take_over)
                    .bind(c.owner)
                    .bind(c.fingerprint)
                    .bind(c.key.operation())
                    .bind(millis(c.lease))
                    .bind(c.key.hex())
                    .bind(previous_owner)
                    .execute(&mut *conn)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn complete(
                conn: &mut $conn,
                key: &StorageKey,
                owner: &str,
                response: &[u8],
                ttl: Duration,
            ) -> Result<bool, Error> {
                const SQL: SqlText = $sql;
                let done = sqlx::query(SQL.complete)
                    .bind(response)
                    .bind(millis(ttl))
                    .bind(key.hex())
                    .bind(owner)
                    .execute(&mut *conn)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn renew(
                conn: &mut $conn,
                key: &StorageKey,
                owner: &str,
                lease: Duration,
            ) -> Result<bool, Error> {
                const SQL: SqlText = $sql;
                let done = sqlx::query(SQL.renew)
                    .bind(millis(lease))
                    .bind(key.hex())
                    .bind(owner)
                    .execute(&mut *conn)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn release(conn: &mut $conn, key: &StorageKey, owner: &str) -> Result<(), Error> {
                const SQL: SqlText = $sql;
                sqlx::query(SQL.release)
                    .bind(key.hex())
                    .bind(owner)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }

            async fn migrate(pool: &Pool<$db>) -> Result<(), Error> {
                ($migrate)(pool).await
            }
        }

        #[cfg(feature = $feature)]
        impl TxStore for &mut $conn {
            type Database = $db;
            fn in_callers_transaction(&self) -> bool {
                self.is_in_transaction()
            }
            async fn begin(&mut self) -> Result<sqlx::Transaction<'_, $db>, Error> {
                let conn: &mut $conn = self;
                let tx = match <$db as SqlBackend>::BEGIN {
                    Some(stmt) if !conn.is_in_transaction() => conn.begin_with(stmt).await?,
                    _ => Connection::begin(conn).await?,
                };
                Ok(tx)
            }
            async fn begin_deferred(&mut self) -> Result<sqlx::Transaction<'_, $db>, Error> {
                let conn: &mut $conn = self;
                Ok(Connection::begin(conn).await?)
            }
        }
    };
}

/// Statements of a migration file, split at `;` line ends.
fn statements(sql: &'static str) -> impl Iterator<Item = &'static str> {
    sql.split(";\n").map(str::trim).filter(|s| {
        s.lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with("--"))
    })
}

#[cfg(feature = "postgres")]
async fn migrate_postgres(pool: &Pool<sqlx::Postgres>) -> Result<(), Error> {
    // Concurrent `CREATE TABLE IF NOT EXISTS` can race on PostgreSQL's catalog; serialize
    // migrators with a transaction-scoped advisory lock.
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(7297175460591402611)")
        .execute(&mut *tx)
        .await?;
    for stmt in statements(include_str!("../../migrations/postgres.sql")) {
        sqlx::query(sqlx::AssertSqlSafe(stmt))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

#[cfg(feature = "mysql")]
async fn migrate_mysql(pool: &Pool<sqlx::MySql>) -> Result<(), Error> {
    for stmt in statements(include_str!("../../migrations/mysql.sql")) {
        sqlx::query(sqlx::AssertSqlSafe(stmt)).execute(pool).await?;
    }
    Ok(())
}

#[cfg(feature = "sqlite")]
async fn migrate_sqlite(pool: &Pool<sqlx::Sqlite>) -> Result<(), Error> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    for stmt in statements(include_str!("../../migrations/sqlite.sql")) {
        sqlx::query(sqlx::AssertSqlSafe(stmt))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

impl_sql_backend!(
    "postgres",
    sqlx::Postgres,
    sqlx::PgConnection,
    None,
    sql_text!(
        now = "(extract(epoch from clock_timestamp()) * 1000)::bigint",
        p = ["$1", "$2", "$3", "$4", "$5", "$6"],
        on_conflict = " ON CONFLICT (idempotency_key) DO NOTHING",
        read_lock = ""
    ),
    migrate_postgres
);

impl_sql_backend!(
    "mysql",
    sqlx::MySql,
    sqlx::MySqlConnection,
    None,
    sql_text!(
        now = "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)",
        p = ["?", "?", "?", "?", "?", "?"],
        on_conflict = "",
        // A locking read returns the latest committed record even inside the caller's
        // REPEATABLE READ transaction, whose snapshot may predate it.
        read_lock = " LOCK IN SHARE MODE"
    ),
    migrate_mysql
);

impl_sql_backend!(
    "sqlite",
    sqlx::Sqlite,
    sqlx::SqliteConnection,
    Some("BEGIN IMMEDIATE"),
    sql_text!(
        now = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
        p = ["?1", "?2", "?3", "?4", "?5", "?6"],
        on_conflict = " ON CONFLICT (idempotency_key) DO NOTHING",
        read_lock = ""
    ),
    migrate_sqlite
);

/// Where `dedup_table`'s transactional mode opens the transaction that holds the claim and the
/// body's writes: a pool (`&PgPool`, `&MySqlPool`, `&SqlitePool`: a new transaction on a pooled
/// connection) or a connection (`&mut PgConnection`, …: a new transaction, or a SAVEPOINT when
/// the connection is already inside the caller's transaction, which then stays usable).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot open the transaction that `#[tx]` injects",
    label = "with `#[tx]` this store must be a sqlx pool (`&PgPool`, `&MySqlPool`, `&SqlitePool`) or a `&mut` connection",
    note = "the memory store has no transactions: remove the `#[tx]` parameter to claim outside the body, or use a SQL store"
)]
pub trait TxStore: super::IntoTxStore<Store = Self> + Send {
    /// The sqlx database.
    type Database: SqlBackend;
    /// Opens the transaction (or savepoint). Errors: [`Error::Backend`].
    fn begin(
        &mut self,
    ) -> impl Future<Output = Result<sqlx::Transaction<'_, Self::Database>, Error>> + Send;
    /// Opens a deferred transaction (or savepoint): plain `BEGIN` on every backend, so on
    /// SQLite concurrent readers may proceed until one of them writes (`select_before_insert`).
    /// Errors: [`Error::Backend`].
    fn begin_deferred(
        &mut self,
    ) -> impl Future<Output = Result<sqlx::Transaction<'_, Self::Database>, Error>> + Send;
    /// `true` when the store is a connection already inside the caller's transaction: the
    /// strategy then works in a SAVEPOINT, and a deadlock or serialization failure is returned
    /// at once (only the caller can retry its whole transaction). Pools return `false`.
    fn in_callers_transaction(&self) -> bool {
        false
    }
}

impl<DB: SqlBackend> TxStore for &Pool<DB> {
    type Database = DB;
    async fn begin(&mut self) -> Result<sqlx::Transaction<'_, DB>, Error> {
        let tx = match DB::BEGIN {
            Some(stmt) => Pool::begin_with(self, stmt).await?,
            None => Pool::begin(self).await?,
        };
        Ok(tx)
    }
    async fn begin_deferred(&mut self) -> Result<sqlx::Transaction<'_, DB>, Error> {
        Ok(Pool::begin(self).await?)
    }
}

impl<DB: SqlBackend> ClaimStore for Pool<DB> {
    fn backend_name(&self) -> &'static str {
        <DB as Database>::NAME
    }

    async fn try_claim(&self, claim: &Claim<'_>) -> Result<bool, Error> {
        let mut conn = self.acquire().await?;
        DB::try_claim(&mut conn, claim).await
    }

    async fn read(&self, key: &StorageKey) -> Result<Option<Record>, Error> {
        let mut conn = self.acquire().await?;
        DB::read(&mut conn, key).await
    }

    async fn take_over(&self, claim: &Claim<'_>, previous_owner: &str) -> Result<bool, Error> {
        let mut conn = self.acquire().await?;
        DB::take_over(&mut conn, claim, previous_owner).await
    }

    async fn complete(
        &self,
        key: &StorageKey,
        owner: &str,
        response: &[u8],
        ttl: Duration,
    ) -> Result<bool, Error> {
        let mut conn = self.acquire().await?;
        DB::complete(&mut conn, key, owner, response, ttl).await
    }

    async fn renew(&self, key: &StorageKey, owner: &str, lease: Duration) -> Result<bool, Error> {
        let mut conn = self.acquire().await?;
        DB::renew(&mut conn, key, owner, lease).await
    }

    async fn release(&self, key: &StorageKey, owner: &str) -> Result<(), Error> {
        let mut conn = self.acquire().await?;
        DB::release(&mut conn, key, owner).await
    }

    fn release_detached(&self, key: StorageKey, owner: String) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool = self.clone();
        handle.spawn(async move {
            if let Err(e) = pool.release(&key, &owner).await {
                tracing::warn!(?key, error = %e, "releasing a dropped claim failed; it frees itself when its lease ends");
            }
        });
    }
}

/// Creates the idempotency-record table (`idempotency_records`) and its index in `pool`'s
/// database if they are missing. Call once at startup; safe to call concurrently.
///
/// Errors: [`Error::Backend`] when the database refuses the DDL.
pub async fn migrate<DB: SqlBackend>(pool: &Pool<DB>) -> Result<(), Error> {
    DB::migrate(pool).await
}
