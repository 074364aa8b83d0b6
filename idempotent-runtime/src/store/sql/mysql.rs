//! MySQL and MariaDB: their dialect (`?` placeholders, `NOW(3)` as now, the duplicate-key
//! error instead of `ON CONFLICT`, `FOR UPDATE`, `LOCK IN SHARE MODE` for the latest committed
//! row, plain `BEGIN`), the claim SQL, the migration (`migrations/mysql.sql`), the
//! business-table and `#[tx]` impls (`&mut MySqlConnection`), [`FencingToken`](crate::FencingToken)
//! as a signed `BIGINT`, and the database-error type.

use std::error::Error as StdError;

use sqlx::error::DatabaseError;
use sqlx::{MySql, Pool};

use super::SqlText;
use crate::Error;

/// The claim statements: time is `NOW(3)` in Unix ms.
const SQL: SqlText = sql_text!(
    now = "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)",
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
    placeholder = |_: usize| "?".to_owned(),
);


// `FencingToken` binds as a BIGINT.
fencing_token_type!(database = MySql);

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
