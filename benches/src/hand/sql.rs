//! Hand-written SQL paths: the runtime's statements (its `sql_text!` template with each
//! database's "now" expression and placeholders, copied from
//! `idempotent-runtime/src/store/sql/{mod,postgres,mysql,sqlite}.rs`) on the same pool.
//!
//! Claim mode: the claim `INSERT` and, when it finds a record, the `SELECT` on one pooled
//! connection (MySQL and SQLite: the `SELECT` first, and the `INSERT` only when it finds
//! nothing, as the runtime does); the completion `UPDATE` on another checkout. Transactional
//! mode, on one pooled connection: the record's `SELECT` outside any transaction (without
//! MySQL's lock clause), which ends a duplicate of a completed call; otherwise `BEGIN` (SQLite
//! `BEGIN IMMEDIATE`), `INSERT`, body, `UPDATE`, `COMMIT`, or for a record found inside the
//! transaction
//! `SELECT`, `ROLLBACK`.

use super::{LEASE_MS, TTL_MS, busy, encode, fingerprint, key, lost, mismatch, owner};
use crate::{AppError, Receipt, Req, receipt};

/// owner, fingerprint, status, response, expires_at_ms, now_ms
pub type Row = (String, Option<String>, String, Option<Vec<u8>>, i64, i64);

/// The replay of an existing record, or why not.
pub fn judge(row: Option<Row>, fp: &str) -> Result<Receipt, AppError> {
    let Some((_owner, stored, status, response, expires_at_ms, now_ms)) = row else {
        return Err(busy());
    };
    if expires_at_ms <= now_ms {
        return Err(AppError::Hand(
            "expired record (take-over is not benchmarked)".into(),
        ));
    }
    if stored.as_deref() != Some(fp) {
        return Err(mismatch());
    }
    match (status.as_str(), response) {
        ("completed", Some(bytes)) => Ok(serde_json::from_slice(&bytes)?),
        _ => Err(busy()),
    }
}

/// `true` when `row` answers a duplicate without a transaction: completed and unexpired by
/// the database's clock.
pub fn settled(row: &Row) -> bool {
    let (_owner, _fp, status, _response, expires_at_ms, now_ms) = row;
    status == "completed" && expires_at_ms > now_ms
}

fn unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

macro_rules! sql_hand {
    ($m:ident, pool = $pool:ty, now = $now:literal, p = [$p1:literal, $p2:literal, $p3:literal, $p4:literal, $p5:literal], on_conflict = $oc:literal, read_lock = $rl:literal, begin = $begin:expr, read_first = $read_first:literal) => {
        pub mod $m {
            use super::*;

            const CLAIM: &str = concat!(
                "INSERT INTO idempotency_records (idempotency_key, operation, fingerprint, status, owner, response, expires_at_ms, created_at_ms) VALUES (",
                $p1, ", ", $p2, ", ", $p3, ", 'in_progress', ", $p4, ", NULL, ", $now, " + ", $p5, ", ", $now, ")", $oc
            );
            const READ: &str = concat!(
                "SELECT owner, fingerprint, status, response, expires_at_ms, ", $now,
                " AS now_ms FROM idempotency_records WHERE idempotency_key = ", $p1, $rl
            );
            const READ_UNLOCKED: &str = concat!(
                "SELECT owner, fingerprint, status, response, expires_at_ms, ", $now,
                " AS now_ms FROM idempotency_records WHERE idempotency_key = ", $p1
            );
            const COMPLETE: &str = concat!(
                "UPDATE idempotency_records SET status = 'completed', response = ", $p1, ", expires_at_ms = ", $now, " + ", $p2,
                " WHERE idempotency_key = ", $p3, " AND owner = ", $p4, " AND status = 'in_progress'"
            );
            const BEGIN: Option<&str> = $begin;

            /// `dedup_table` claim mode by hand.
            pub struct Claim {
                pub pool: $pool,
            }

            impl Claim {
                pub async fn place(&self, req: &Req) -> Result<Receipt, AppError> {
                    let key = key("hand.claim", req);
                    let fp = fingerprint(req);
                    let owner = owner();
                    let mut conn = self.pool.acquire().await?;
                    // As the runtime's pool store on MySQL and SQLite: a duplicate is answered
                    // by the read alone.
                    if $read_first {
                        let row: Option<Row> = sqlx::query_as(READ_UNLOCKED)
                            .bind(&key)
                            .fetch_optional(&mut *conn)
                            .await?;
                        if row.is_some() {
                            drop(conn);
                            return judge(row, &fp);
                        }
                    }
                    let claimed = match sqlx::query(CLAIM)
                        .bind(&key)
                        .bind("hand.claim")
                        .bind(&fp)
                        .bind(&owner)
                        .bind(LEASE_MS)
                        .execute(&mut *conn)
                        .await
                    {
                        Ok(done) => done.rows_affected() == 1,
                        Err(e) if unique_violation(&e) => false,
                        Err(e) => return Err(e.into()),
                    };
                    if !claimed {
                        let row: Option<Row> = sqlx::query_as(READ)
                            .bind(&key)
                            .fetch_optional(&mut *conn)
                            .await?;
                        drop(conn);
                        return judge(row, &fp);
                    }
                    drop(conn);
                    let value = receipt(req, 0);
                    let bytes = encode(&value)?;
                    let mut conn = self.pool.acquire().await?;
                    let done = sqlx::query(COMPLETE)
                        .bind(bytes)
                        .bind(TTL_MS)
                        .bind(&key)
                        .bind(&owner)
                        .execute(&mut *conn)
                        .await?;
                    if done.rows_affected() != 1 {
                        return Err(lost());
                    }
                    Ok(value)
                }
            }

            /// `dedup_table` transactional mode by hand.
            pub struct Tx {
                pub pool: $pool,
            }

            impl Tx {
                pub async fn place(&self, req: &Req) -> Result<Receipt, AppError> {
                    let key = key("hand.tx", req);
                    let fp = fingerprint(req);
                    let owner = owner();
                    let mut conn = self.pool.acquire().await?;
                    let row: Option<Row> = sqlx::query_as(READ_UNLOCKED)
                        .bind(&key)
                        .fetch_optional(&mut *conn)
                        .await?;
                    if let Some(row) = row.filter(settled) {
                        drop(conn);
                        return judge(Some(row), &fp);
                    }
                    let mut tx = match BEGIN {
                        Some(statement) => sqlx::Connection::begin_with(&mut *conn, statement).await?,
                        None => sqlx::Connection::begin(&mut *conn).await?,
                    };
                    let claimed = match sqlx::query(CLAIM)
                        .bind(&key)
                        .bind("hand.tx")
                        .bind(&fp)
                        .bind(&owner)
                        .bind(LEASE_MS)
                        .execute(&mut *tx)
                        .await
                    {
                        Ok(done) => done.rows_affected() == 1,
                        Err(e) if unique_violation(&e) => false,
                        Err(e) => return Err(e.into()),
                    };
                    if !claimed {
                        let row: Option<Row> = sqlx::query_as(READ)
                            .bind(&key)
                            .fetch_optional(&mut *tx)
                            .await?;
                        tx.rollback().await?;
                        return judge(row, &fp);
                    }
                    let value = receipt(req, 0);
                    let bytes = encode(&value)?;
                    let done = sqlx::query(COMPLETE)
                        .bind(bytes)
                        .bind(TTL_MS)
                        .bind(&key)
                        .bind(&owner)
                        .execute(&mut *tx)
                        .await?;
                    if done.rows_affected() != 1 {
                        return Err(lost());
                    }
                    tx.commit().await?;
                    Ok(value)
                }
            }
        }
    };
}

sql_hand!(
    postgres,
    pool = sqlx::PgPool,
    now = "(extract(epoch from clock_timestamp()) * 1000)::bigint",
    p = ["$1", "$2", "$3", "$4", "$5"],
    on_conflict = " ON CONFLICT (idempotency_key) DO NOTHING",
    read_lock = "",
    begin = None,
    read_first = false
);

sql_hand!(
    mysql,
    pool = sqlx::MySqlPool,
    now = "CAST(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(3)) DIV 1000 AS SIGNED)",
    p = ["?", "?", "?", "?", "?"],
    on_conflict = "",
    read_lock = " LOCK IN SHARE MODE",
    begin = None,
    read_first = true
);

sql_hand!(
    sqlite,
    pool = sqlx::SqlitePool,
    now = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
    p = ["?1", "?2", "?3", "?4", "?5"],
    on_conflict = " ON CONFLICT (idempotency_key) DO NOTHING",
    read_lock = "",
    begin = Some("BEGIN IMMEDIATE"),
    read_first = true
);

/// `dedup_table` claim mode by hand on PostgreSQL with the runtime's one-statement claim
/// (`WITH ins AS (INSERT … ON CONFLICT DO NOTHING RETURNING 1) SELECT …`, copied from
/// `idempotent-runtime/src/store/sql/postgres.rs`): a fresh call and a replay are one statement
/// each before the completion, as the runtime's.
pub mod postgres_one_statement {
    use super::*;

    const CLAIM_OR_READ: &str = concat!(
        "WITH ins AS (INSERT INTO idempotency_records (idempotency_key, operation, fingerprint, status, owner, response, expires_at_ms, created_at_ms) VALUES ($1, $2, $3, 'in_progress', $4, NULL, ",
        "(extract(epoch from clock_timestamp()) * 1000)::bigint + $5, (extract(epoch from clock_timestamp()) * 1000)::bigint)",
        " ON CONFLICT (idempotency_key) DO NOTHING RETURNING 1) ",
        "SELECT (SELECT count(*) FROM ins) AS claimed, r.owner, r.fingerprint, r.status, r.response, r.expires_at_ms, ",
        "(extract(epoch from clock_timestamp()) * 1000)::bigint AS now_ms ",
        "FROM (SELECT 1) AS one LEFT JOIN idempotency_records AS r ON r.idempotency_key = $1"
    );
    const COMPLETE: &str = "UPDATE idempotency_records SET status = 'completed', response = $1, expires_at_ms = (extract(epoch from clock_timestamp()) * 1000)::bigint + $2 WHERE idempotency_key = $3 AND owner = $4 AND status = 'in_progress'";

    /// claimed, owner, fingerprint, status, response, expires_at_ms, now_ms
    type ClaimOrReadRow = (
        i64,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<Vec<u8>>,
        Option<i64>,
        i64,
    );

    /// `dedup_table` claim mode by hand, one statement to claim or read.
    pub struct Claim {
        pub pool: sqlx::PgPool,
    }

    impl Claim {
        pub async fn place(&self, req: &Req) -> Result<Receipt, AppError> {
            let key = key("hand.claim", req);
            let fp = fingerprint(req);
            let owner = owner();
            let (claimed, stored_owner, stored_fp, status, response, expires_at_ms, now_ms): ClaimOrReadRow =
                sqlx::query_as(CLAIM_OR_READ)
                    .bind(&key)
                    .bind("hand.claim")
                    .bind(&fp)
                    .bind(&owner)
                    .bind(LEASE_MS)
                    .fetch_one(&self.pool)
                    .await?;
            if claimed != 1 {
                let row = match (stored_owner, status, expires_at_ms) {
                    (Some(o), Some(s), Some(e)) => Some((o, stored_fp, s, response, e, now_ms)),
                    _ => None,
                };
                return judge(row, &fp);
            }
            let value = receipt(req, 0);
            let bytes = encode(&value)?;
            let done = sqlx::query(COMPLETE)
                .bind(bytes)
                .bind(TTL_MS)
                .bind(&key)
                .bind(&owner)
                .execute(&self.pool)
                .await?;
            if done.rows_affected() != 1 {
                return Err(lost());
            }
            Ok(value)
        }
    }
}
