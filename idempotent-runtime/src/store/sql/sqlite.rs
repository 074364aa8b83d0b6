//! SQLite: its dialect (`?n` placeholders, `julianday('now')` as now, `ON CONFLICT DO
//! NOTHING`, no row locks, `BEGIN IMMEDIATE` so the write lock is taken up front), its claim
//! SQL, its migration (`migrations/sqlite.sql`), its business-table and `#[tx]` impls
//! (`&mut SqliteConnection`), [`FencingToken`](crate::FencingToken) as an `INTEGER`, and its
//! database-error type.

use std::error::Error as StdError;

use sqlx::error::DatabaseError;
use sqlx::{Pool, Sqlite};

use super::SqlText;
use crate::Error;

/// The claim statements: time is `julianday('now')` in Unix ms (the process's clock: SQLite
/// has no server).
const SQL: SqlText = sql_text!(
    now = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
    p = ["?1", "?2", "?3", "?4", "?5", "?6"],
    on_conflict = " ON CONFLICT (idempotency_key) DO NOTHING",
    read_lock = ""
);

sql_backend!(
    database = Sqlite,
    connection = sqlx::SqliteConnection,
    begin = Some("BEGIN IMMEDIATE"),
    sql = SQL,
    migrate = migrate,
);

tx_store!(database = Sqlite, connection = sqlx::SqliteConnection);

business_backend!(
    database = Sqlite,
    connection = sqlx::SqliteConnection,
    lock_for_update = "",
    read_latest = "",
    placeholder = |i: usize| format!("?{i}"),
);


// `FencingToken` binds as a INTEGER.
fencing_token_type!(database = Sqlite);

/// Runs `migrations/sqlite.sql`.
async fn migrate(pool: &Pool<Sqlite>) -> Result<(), Error> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
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
