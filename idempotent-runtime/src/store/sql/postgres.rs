//! PostgreSQL: its dialect (`$n` placeholders, `clock_timestamp()` as now, `ON CONFLICT DO
//! NOTHING`, `FOR UPDATE`, plain `BEGIN`), its claim SQL, its migration
//! (`migrations/postgres.sql`), its business-table and `#[tx]` impls (`&mut PgConnection`),
//! [`FencingToken`](crate::FencingToken) as a `BIGINT`, and its database-error type.

use std::error::Error as StdError;

use sqlx::error::DatabaseError;
use sqlx::{Pool, Postgres};

use super::SqlText;
use crate::Error;

/// The claim statements: time is `clock_timestamp()` (the statement's own instant, not the
/// transaction's start) in Unix ms.
const SQL: SqlText = sql_text!(
    now = "(extract(epoch from clock_timestamp()) * 1000)::bigint",
    p = ["$1", "$2", "$3", "$4", "$5", "$6"],
    on_conflict = " ON CONFLICT (idempotency_key) DO NOTHING",
    read_lock = ""
);

sql_backend!(
    database = Postgres,
    connection = sqlx::PgConnection,
    begin = None,
    sql = SQL,
    migrate = migrate,
);

tx_store!(database = Postgres, connection = sqlx::PgConnection);

business_backend!(
    database = Postgres,
    connection = sqlx::PgConnection,
    lock_for_update = " FOR UPDATE",
    read_latest = "",
    placeholder = |i: usize| format!("${i}"),
);


// `FencingToken` binds as a BIGINT.
fencing_token_type!(database = Postgres);

/// Runs `migrations/postgres.sql`.
async fn migrate(pool: &Pool<Postgres>) -> Result<(), Error> {
    // Concurrent `CREATE TABLE IF NOT EXISTS` can race on PostgreSQL's catalog; serialize
    // migrators with a transaction-scoped advisory lock.
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(7297175460591402611)")
        .execute(&mut *tx)
        .await?;
    for stmt in super::statements(include_str!("../../../migrations/postgres.sql")) {
        sqlx::query(sqlx::AssertSqlSafe(stmt))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// `e` as PostgreSQL's own database error, as a body may expose it unboxed.
pub(super) fn database_error<'a>(
    e: &'a (dyn StdError + 'static),
) -> Option<&'a (dyn DatabaseError + 'static)> {
    e.downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .map(|d| d as &(dyn DatabaseError + 'static))
}
