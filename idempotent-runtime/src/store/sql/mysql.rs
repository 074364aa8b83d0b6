//! MySQL and MariaDB: their dialect (`?` placeholders, `UTC_TIMESTAMP(3)` as now, the
//! duplicate-key error instead of `ON CONFLICT`, `FOR UPDATE`, `LOCK IN SHARE MODE` for the
//! latest committed row, plain `BEGIN`), the claim SQL, the migration
//! (`migrations/mysql.sql`), the business-table and `#[tx]` impls (`&mut MySqlConnection`),
//! and the database-error type.

use std::error::Error as StdError;

use sqlx::error::DatabaseError;
use sqlx::{MySql, Pool};

use super::SqlText;
use crate::Error;

/// The claim statements: time is the statement's start in Unix ms, counted from the epoch in
/// UTC (`UTC_TIMESTAMP(3)` minus `1970-01-01`, plain DATETIME arithmetic), so it does not
/// depend on the session's `time_zone`. `UNIX_TIMESTAMP(NOW(3))` would convert the session's
/// local time back to an instant, which is ambiguous in the repeated hour when a DST zone
/// falls back (off by 3,600,000 ms there), and `UNIX_TIMESTAMP()` has whole seconds only.
const SQL: SqlText = sql_text!(
    now = "CAST(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(3)) DIV 1000 AS SIGNED)",
    p = ["?", "?", "?", "?", "?", "?"],
    on_conflict = "",
    // A locking read returns the latest committed record even inside the caller's
    // REPEATABLE READ transaction, whose snapshot may predate it.
    read_lock = " LOCK IN SHARE MODE"
);

sql_backend!(
    database = MySql,
    connection = sqlx::MySqlConnection,
    begin = None,
    sql = SQL,
    migrate = migrate,
);

tx_store!(database = MySql, connection = sqlx::MySqlConnection);

business_backend!(
    database = MySql,
    connection = sqlx::MySqlConnection,
    lock_for_update = " FOR UPDATE",
    read_latest = " LOCK IN SHARE MODE",
    names_constraints = false,
    placeholder = |_: usize| "?".to_owned(),
    // A locking read of a missing key locks the gap (or, without an index on the key, every
    // row it scans): concurrent first calls deadlock on insert and are rerun.
    key_lock = |_, _| None,
);

/// Runs `migrations/mysql.sql`.
async fn migrate(pool: &Pool<MySql>) -> Result<(), Error> {
    for stmt in super::statements(include_str!("../../../migrations/mysql.sql")) {
        sqlx::query(sqlx::AssertSqlSafe(stmt)).execute(pool).await?;
    }
    Ok(())
}

/// `e` as MySQL's own database error, as a body may expose it unboxed.
pub(super) fn database_error<'a>(
    e: &'a (dyn StdError + 'static),
) -> Option<&'a (dyn DatabaseError + 'static)> {
    e.downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
        .map(|d| d as &(dyn DatabaseError + 'static))
}
