//! SQLite: its dialect (`?n` placeholders, `julianday('now')` as now, `ON CONFLICT DO
//! NOTHING`, no row locks, `BEGIN IMMEDIATE` so the write lock is taken up front), its claim
//! SQL, its migration (`migrations/sqlite.sql`), its business-table and `#[tx]` impls
//! (`&mut SqliteConnection`), [`FencingToken`](crate::FencingToken) as an `INTEGER`, and its database errors: their type and which are retryable.

use std::error::Error as StdError;

use sqlx::error::DatabaseError;
use sqlx::{Pool, Sqlite};

use super::SqlText;
use super::errors::Class;
use crate::Error;

/// The claim statements: time is `julianday('now')` in Unix ms (the process's clock: SQLite
/// has no server, hence `shared_clock = false` and claims judged dead by watching them, see
/// [`ClaimStore::SHARED_CLOCK`](crate::store::ClaimStore::SHARED_CLOCK)).
const SQL: SqlText = sql_text!(
    now = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
    p = ["?1", "?2", "?3", "?4", "?5", "?6", "?7"],
    on_conflict = " ON CONFLICT (idempotency_key) DO NOTHING",
    read_lock = ""
);

sql_backend!(
    database = Sqlite,
    connection = sqlx::SqliteConnection,
    begin = Some("BEGIN IMMEDIATE"),
    shared_clock = false,
    sql = SQL,
    migrate = migrate,
);

tx_store!(database = Sqlite, connection = sqlx::SqliteConnection);

business_backend!(
    database = Sqlite,
    connection = sqlx::SqliteConnection,
    lock_for_update = "",
    read_latest = "",
    names_constraints = false,
    placeholder = |i: usize| format!("?{i}"),
    // `BEGIN IMMEDIATE` already holds the database's write lock.
    key_lock = |_, _| None,
);


// `FencingToken` binds as a INTEGER.
fencing_token_type!(database = Sqlite);

/// Runs `migrations/sqlite.sql`.
async fn migrate(pool: &Pool<Sqlite>) -> Result<(), Error> {
    let mut tx = super::begin_on_pool(pool, Some("BEGIN IMMEDIATE")).await?;
    for stmt in super::statements(include_str!("../../../migrations/sqlite.sql")) {
        sqlx::query(sqlx::AssertSqlSafe(stmt))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// `e` as SQLite's own database error, as a body may expose it unboxed.
pub(super) fn database_error<'a>(
    e: &'a (dyn StdError + 'static),
) -> Option<&'a (dyn DatabaseError + 'static)> {
    e.downcast_ref::<sqlx::sqlite::SqliteError>()
        .map(|d| d as &(dyn DatabaseError + 'static))
}

/// `SQLITE_BUSY`: another connection holds a lock this one needs (after the busy timeout).
const SQLITE_BUSY: i32 = 5;
/// `SQLITE_LOCKED`: a lock conflict within this process's shared cache.
const SQLITE_LOCKED: i32 = 6;

/// `true` for a busy or locked result, extended code included: sqlx reports SQLite's extended
/// result code, whose low byte is the primary code — `SQLITE_BUSY_RECOVERY` (261),
/// `SQLITE_BUSY_SNAPSHOT` (517: a deferred transaction's snapshot is stale, only a new
/// transaction can write), `SQLITE_BUSY_TIMEOUT` (773), `SQLITE_LOCKED_SHAREDCACHE` (262),
/// `SQLITE_LOCKED_VTAB` (518).
fn retryable(extended_code: i32) -> bool {
    matches!(extended_code & 0xff, SQLITE_BUSY | SQLITE_LOCKED)
}

/// SQLite's classification of its own errors (`None`: not a SQLite error): busy and locked
/// codes are retryable; unique violations by sqlx's kind (2067, 1555; SQLite names no
/// constraint).
pub(super) fn classify<'a>(d: &'a (dyn DatabaseError + 'static)) -> Option<Class<'a>> {
    d.try_downcast_ref::<sqlx::sqlite::SqliteError>()?;
    let code = d.code().and_then(|c| c.parse::<i32>().ok());
    Some(if code.is_some_and(retryable) {
        Class::Retryable
    } else if d.kind() == sqlx::error::ErrorKind::UniqueViolation {
        Class::Unique {
            constraint: d.constraint(),
        }
    } else {
        Class::Other
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn busy_and_locked_codes_are_retryable() {
        for code in [5, 261, 517, 773, 6, 262, 518] {
            assert!(super::retryable(code), "{code}");
        }
        // SQLITE_ERROR, SQLITE_CONSTRAINT_UNIQUE, _PRIMARYKEY, _FOREIGNKEY, SQLITE_READONLY.
        for code in [1, 2067, 1555, 787, 8] {
            assert!(!super::retryable(code), "{code}");
        }
    }
}
