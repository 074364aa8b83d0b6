//! MySQL and MariaDB: their dialect (`?` placeholders, `UTC_TIMESTAMP(3)` as now, the
//! duplicate-key error instead of `ON CONFLICT`, `FOR UPDATE`, `LOCK IN SHARE MODE` for the
//! latest committed row, plain `BEGIN`), the claim SQL, the migration
//! (`migrations/mysql.sql`), the business-table and `#[tx]` impls (`&mut MySqlConnection`),
//! [`FencingToken`](crate::FencingToken) as a signed `BIGINT`, and its database errors:
//! their type and which are retryable.

use std::error::Error as StdError;

use sqlx::error::DatabaseError;
use sqlx::{MySql, Pool};

use super::SqlText;
use super::errors::Class;
use crate::Error;

/// The claim statements: time is the statement's start in Unix ms, counted from the epoch in
/// UTC (`UTC_TIMESTAMP(3)` minus `1970-01-01`, plain DATETIME arithmetic), so it does not
/// depend on the session's `time_zone`. `UNIX_TIMESTAMP(NOW(3))` would convert the session's
/// local time back to an instant, which is ambiguous in the repeated hour when a DST zone
/// falls back (off by 3,600,000 ms there), and `UNIX_TIMESTAMP()` has whole seconds only.
const SQL: SqlText = sql_text!(
    now = "CAST(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(3)) DIV 1000 AS SIGNED)",
    p = ["?", "?", "?", "?", "?", "?", "?"],
    on_conflict = "",
    // A locking read returns the latest committed record even inside the caller's
    // REPEATABLE READ transaction, whose snapshot may predate it.
    read_lock = " LOCK IN SHARE MODE"
);

sql_backend!(
    database = MySql,
    connection = sqlx::MySqlConnection,
    begin = None,
    shared_clock = true,
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

/// `ER_LOCK_DEADLOCK` (SQLSTATE 40001): this transaction was the deadlock's victim; the server
/// rolled all of it back.
const ER_LOCK_DEADLOCK: u16 = 1213;
/// `ER_CHECKREAD` (SQLSTATE HY000), "Record has changed since last read": under MariaDB's
/// `innodb_snapshot_isolation` (on by default from 11.6.2, the 11.8 LTS included; settable per
/// session on earlier maintained series, 10.11 among them), a locking read, a duplicate-key check or an update met a
/// row committed after the transaction's snapshot. The server rolled all of the transaction
/// back.
const ER_CHECKREAD: u16 = 1020;
/// SQLSTATE `serialization_failure`, which MySQL reports with 1213 (and a `SIGNAL` may raise).
const SERIALIZATION_FAILURE: &str = "40001";

/// `true` for the error numbers (and SQLSTATE) after which the whole transaction may run again.
fn retryable(number: u16, sqlstate: Option<&str>) -> bool {
    matches!(number, ER_LOCK_DEADLOCK | ER_CHECKREAD) || sqlstate == Some(SERIALIZATION_FAILURE)
}

/// MySQL's and MariaDB's classification of their own errors (`None`: not a MySQL error):
/// retryable by error number or SQLSTATE, unique violations by sqlx's kind (1062 and its
/// siblings; the server names no constraint).
pub(super) fn classify<'a>(d: &'a (dyn DatabaseError + 'static)) -> Option<Class<'a>> {
    let my = d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()?;
    Some(if retryable(my.number(), my.code()) {
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
    fn deadlock_checkread_and_40001_are_retryable() {
        assert!(super::retryable(1213, Some("40001")));
        // MariaDB's "Record has changed since last read" (innodb_snapshot_isolation).
        assert!(super::retryable(1020, Some("HY000")));
        // A SIGNAL SQLSTATE '40001' (error 1644).
        assert!(super::retryable(1644, Some("40001")));
        // Duplicate key, lock wait timeout, SAVEPOINT does not exist, a plain SIGNAL.
        for (number, state) in [(1062, "23000"), (1205, "HY000"), (1305, "42000"), (1644, "45000")] {
            assert!(!super::retryable(number, Some(state)), "{number}");
        }
    }
}
