//! Ledgers that count effects, so a test asserts "exactly one effect per key": the DDL of a
//! per-test ledger table ([`ledger_ddl`]), a ledger in a SQL table of its own per backend
//! ([`PgLedger`], [`MyLedger`], [`LiteLedger`]) or in memory ([`MemLedger`]), and the effects
//! of a test service whose ledger lives in memory ([`Effects`]).

use crate::backends::unique;
use crate::fixtures::{AppError, Gate, Receipt, Req};

/// The DDL of a ledger table: one row per effect (`k` = key, `tenant`, `amount`). The same text
/// works on PostgreSQL, MySQL and SQLite.
pub fn ledger_ddl(table: &str) -> String {
    format!(
        "CREATE TABLE {table} (k VARCHAR(1100) NOT NULL, tenant VARCHAR(200) NOT NULL, amount BIGINT NOT NULL)"
    )
}

/// The effects of a test service whose ledger lives in memory: a [`Gate`] to hold bodies, a
/// one-shot failure switch, the ledger of `(tenant, key, amount)` rows and an execution
/// counter. Services keep one and deref to it, so tests read `svc.gate`, `svc.count(&r)`.
#[derive(Debug, Default)]
pub struct Effects {
    /// Holds the next body when armed.
    pub gate: Gate,
    /// When set, the next body fails with [`AppError::Rejected`] and writes nothing.
    pub fail_next: std::sync::atomic::AtomicBool,
    ledger: std::sync::Mutex<Vec<(String, String, i64)>>,
    serial: std::sync::atomic::AtomicU64,
}

impl Effects {
    /// The body: passes the gate, fails once if `fail_next` is set, otherwise writes one ledger
    /// row and returns a receipt numbered by execution (1, 2, …).
    pub async fn apply(&self, req: &Req) -> Result<Receipt, AppError> {
        use std::sync::atomic::Ordering::SeqCst;
        self.gate.pass().await;
        if self.fail_next.swap(false, SeqCst) {
            return Err(AppError::Rejected);
        }
        self.ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((req.tenant.clone(), req.id.clone(), req.amount));
        Ok(Receipt {
            tenant: req.tenant.clone(),
            id: req.id.clone(),
            amount: req.amount,
            serial: self.serial.fetch_add(1, SeqCst) + 1,
        })
    }

    /// Ledger rows written for exactly this request (tenant, key and amount).
    pub fn count(&self, r: &Req) -> usize {
        self.rows()
            .iter()
            .filter(|(t, k, a)| *t == r.tenant && *k == r.id && *a == r.amount)
            .count()
    }

    /// All ledger rows written.
    pub fn total(&self) -> usize {
        self.rows().len()
    }

    fn rows(&self) -> std::sync::MutexGuard<'_, Vec<(String, String, i64)>> {
        self.ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A ledger of effects in a SQL table of its own (one per test).
macro_rules! sql_ledger {
    ($(#[$doc:meta])* $name:ident, $pool:ty, $conn:ty, $ph:literal) => {
        $(#[$doc])*
        pub struct $name {
            pool: $pool,
            table: String,
        }

        impl $name {
            /// Creates the ledger's table (named run-unique) on `pool`.
            pub async fn create(pool: &$pool) -> Self {
                let table = unique("ledger");
                sqlx::query(sqlx::AssertSqlSafe(ledger_ddl(&table)))
                    .execute(pool)
                    .await
                    .expect("create ledger");
                $name {
                    pool: pool.clone(),
                    table,
                }
            }

            fn insert_sql(&self) -> String {
                let p = |i: usize| $ph.replace("N", &i.to_string());
                format!(
                    "INSERT INTO {} (k, tenant, amount) VALUES ({}, {}, {})",
                    self.table,
                    p(1),
                    p(2),
                    p(3)
                )
            }

            /// Records one effect of `req` on a connection of its own.
            pub async fn record(&self, req: &Req) -> Result<(), sqlx::Error> {
                let mut conn = self.pool.acquire().await?;
                self.record_in(&mut conn, req).await
            }

            /// Records one effect of `req` on `conn` (inside the caller's transaction).
            pub async fn record_in(&self, conn: &mut $conn, req: &Req) -> Result<(), sqlx::Error> {
                sqlx::query(sqlx::AssertSqlSafe(self.insert_sql()))
                    .bind(&req.id)
                    .bind(&req.tenant)
                    .bind(req.amount)
                    .execute(conn)
                    .await?;
                Ok(())
            }

            /// Effects recorded for exactly this request (key, tenant and amount).
            pub async fn count(&self, req: &Req) -> i64 {
                let p = |i: usize| $ph.replace("N", &i.to_string());
                let sql = format!(
                    "SELECT COUNT(*) FROM {} WHERE k = {} AND tenant = {} AND amount = {}",
                    self.table,
                    p(1),
                    p(2),
                    p(3)
                );
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .bind(&req.id)
                    .bind(&req.tenant)
                    .bind(req.amount)
                    .fetch_one(&self.pool)
                    .await
                    .expect("count ledger")
            }

            /// Makes the idempotency record stored under `key_hex` expired by any clock (its
            /// expiry set to the Unix epoch), as if its TTL had passed.
            pub async fn expire_record(&self, key_hex: &str) {
                let sql = format!(
                    "UPDATE idempotency_records SET expires_at_ms = 0 WHERE idempotency_key = {}",
                    $ph.replace("N", "1")
                );
                let done = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(key_hex)
                    .execute(&self.pool)
                    .await
                    .expect("expire record");
                assert_eq!(done.rows_affected(), 1, "no record under {key_hex}");
            }

            /// Idempotency records stored under `key_hex` (the hex of the request's key).
            pub async fn records_with_key(&self, key_hex: &str) -> i64 {
                let sql = format!(
                    "SELECT COUNT(*) FROM idempotency_records WHERE idempotency_key = {}",
                    $ph.replace("N", "1")
                );
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .bind(key_hex)
                    .fetch_one(&self.pool)
                    .await
                    .expect("count records")
            }
        }
    };
}

sql_ledger!(
    /// A ledger of effects in a PostgreSQL table of its own.
    PgLedger, sqlx::PgPool, sqlx::PgConnection, "$N"
);
sql_ledger!(
    /// A ledger of effects in a MySQL/MariaDB table of its own.
    MyLedger, sqlx::MySqlPool, sqlx::MySqlConnection, "?"
);
sql_ledger!(
    /// A ledger of effects in a SQLite table of its own.
    LiteLedger, sqlx::SqlitePool, sqlx::SqliteConnection, "?N"
);

/// A ledger of effects for the memory store.
#[derive(Default)]
pub struct MemLedger(std::sync::Mutex<Vec<(String, String, i64)>>);

impl MemLedger {
    /// A new, empty ledger (the store is not needed; the signature matches the SQL ledgers').
    pub async fn create(_: &idempotent_runtime::MemoryStore) -> Self {
        Self::default()
    }

    /// Records one effect of `req`.
    pub async fn record(&self, req: &Req) -> Result<(), sqlx::Error> {
        self.0
            .lock()
            .unwrap()
            .push((req.id.clone(), req.tenant.clone(), req.amount));
        Ok(())
    }

    /// Effects recorded for exactly this request (key, tenant and amount).
    pub async fn count(&self, req: &Req) -> i64 {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, t, a)| *k == req.id && *t == req.tenant && *a == req.amount)
            .count() as i64
    }
}
