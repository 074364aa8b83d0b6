//! PostgreSQL: its dialect (`$n` placeholders, `clock_timestamp()` as now, `ON CONFLICT DO
//! NOTHING`, `FOR UPDATE`, plain `BEGIN`), its claim SQL, its migration
//! (`migrations/postgres.sql`), its business-table and `#[tx]` impls (`&mut PgConnection`),
//! [`FencingToken`](crate::FencingToken) as a `BIGINT`, and its database errors: their type and which are retryable.

use std::error::Error as StdError;

use sqlx::error::DatabaseError;
use sqlx::{Pool, Postgres};

use super::SqlText;
use super::errors::Class;
use crate::Error;

/// The claim statements: time is `clock_timestamp()` (the statement's own instant, not the
/// transaction's start) in Unix ms.
const SQL: SqlText = sql_text!(
    now = "(extract(epoch from clock_timestamp()) * 1000)::bigint",
    p = ["$1", "$2", "$3", "$4", "$5", "$6", "$7"],
    on_conflict = " ON CONFLICT (idempotency_key) DO NOTHING",
    read_lock = ""
);

sql_backend!(
    database = Postgres,
    connection = sqlx::PgConnection,
    begin = None,
    shared_clock = true,
    sql = SQL,
    migrate = migrate,
    claim_or_read = claim_or_read,
);

/// The claim and, when a record exists, its read, in one statement: the `SELECT` sees the
/// snapshot the statement started with, so it shows the record that made the `INSERT` do
/// nothing, or none when that record was committed by a concurrent transaction meanwhile (the
/// caller then looks again). `claimed` is 1 when this statement inserted the claim.
const CLAIM_OR_READ: &str = concat!(
    "WITH ins AS (INSERT INTO idempotency_records (idempotency_key, operation, fingerprint, status, owner, response, expires_at_ms, created_at_ms) VALUES ($1, $2, $3, 'in_progress', $4, NULL, ",
    "(extract(epoch from clock_timestamp()) * 1000)::bigint + $5, (extract(epoch from clock_timestamp()) * 1000)::bigint)",
    " ON CONFLICT (idempotency_key) DO NOTHING RETURNING 1) ",
    "SELECT (SELECT count(*) FROM ins) AS claimed, r.owner, r.fingerprint, r.status, r.response, r.expires_at_ms, ",
    "(extract(epoch from clock_timestamp()) * 1000)::bigint AS now_ms ",
    "FROM (SELECT 1) AS one LEFT JOIN idempotency_records AS r ON r.idempotency_key = $1"
);

/// A row of [`CLAIM_OR_READ`]: claimed, then the record's columns (all `NULL` when none).
type ClaimOrReadRow = (
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<Vec<u8>>,
    Option<i64>,
    i64,
);

async fn claim_or_read(
    conn: &mut sqlx::PgConnection,
    c: &crate::store::Claim<'_>,
) -> Result<crate::store::ClaimOrRecord, Error> {
    use crate::store::ClaimOrRecord;
    let (claimed, owner, fingerprint, status, response, expires_at_ms, now_ms): ClaimOrReadRow =
        sqlx::query_as(CLAIM_OR_READ)
            .bind(c.key.hex())
            .bind(c.key.operation())
            .bind(c.fingerprint)
            .bind(c.owner)
            .bind(crate::store::millis(c.lease))
            .fetch_one(&mut *conn)
            .await?;
    if claimed == 1 {
        return Ok(ClaimOrRecord::Claimed);
    }
    let row = match (owner, status, expires_at_ms) {
        (Some(owner), Some(status), Some(expires_at_ms)) => {
            Some((owner, fingerprint, status, response, expires_at_ms, now_ms))
        }
        _ => None,
    };
    Ok(ClaimOrRecord::Existing(super::record_from_row(row)?))
}

tx_store!(database = Postgres, connection = sqlx::PgConnection);

business_backend!(
    database = Postgres,
    connection = sqlx::PgConnection,
    lock_for_update = " FOR UPDATE",
    read_latest = "",
    names_constraints = true,
    placeholder = |i: usize| format!("${i}"),
    key_lock = key_lock_sql,
);

/// `pg_advisory_xact_lock(hashtext('<table>'), hashtext(<key parts as text, joined by U+001F>))`:
/// a lock on (table, key) held until the transaction ends, whether or not the row exists. The
/// two-`int4` key space never meets the one-`bigint` space (PostgreSQL keeps them apart), so
/// it cannot collide with `migrate`'s lock; two keys whose hashes collide only wait for each
/// other. `table` is a checked identifier, safe inside the quotes.
fn key_lock_sql(table: super::business::SqlIdent, parts: usize) -> Option<String> {
    let key = (1..=parts)
        .map(|i| format!("${i}::text"))
        .collect::<Vec<_>>()
        .join(", ");
    Some(format!(
        "SELECT pg_advisory_xact_lock(hashtext('{}'), hashtext(concat_ws(chr(31), {key})))",
        table.as_str()
    ))
}

// `FencingToken` binds as a BIGINT.
fencing_token_type!(database = Postgres);

/// Runs `migrations/postgres.sql`.
async fn migrate(pool: &Pool<Postgres>) -> Result<(), Error> {
    // Concurrent `CREATE TABLE IF NOT EXISTS` can race on PostgreSQL's catalog; serialize
    // migrators with a transaction-scoped advisory lock.
    let mut tx = super::begin_on_pool(pool, None).await?;
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

/// SQLSTATE `serialization_failure`: a REPEATABLE READ or SERIALIZABLE transaction met a
/// concurrent update, or a serializable conflict.
const SERIALIZATION_FAILURE: &str = "40001";
/// SQLSTATE `deadlock_detected`: this transaction was the deadlock's victim.
const DEADLOCK_DETECTED: &str = "40P01";

/// `true` for the SQLSTATEs after which the whole transaction may run again.
fn retryable(sqlstate: &str) -> bool {
    matches!(sqlstate, SERIALIZATION_FAILURE | DEADLOCK_DETECTED)
}

/// PostgreSQL's classification of its own errors (`None`: not a PostgreSQL error): retryable
/// by SQLSTATE, unique violations (23505, by sqlx's kind) with the constraint's name.
pub(super) fn classify<'a>(d: &'a (dyn DatabaseError + 'static)) -> Option<Class<'a>> {
    let pg = d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()?;
    Some(if retryable(pg.code()) {
        Class::Retryable
    } else if d.kind() == sqlx::error::ErrorKind::UniqueViolation {
        Class::Unique {
            constraint: pg.constraint(),
        }
    } else {
        Class::Other
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn serialization_failure_and_deadlock_are_retryable() {
        assert!(super::retryable("40001"));
        assert!(super::retryable("40P01"));
        for other in ["23505", "25P02", "55P03", "57014", "40002"] {
            assert!(!super::retryable(other), "{other}");
        }
    }
}
