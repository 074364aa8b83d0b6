//! The business-table suites' kit, one module per SQL backend ([`postgres`], [`mysql`],
//! [`sqlite`]): the pool ([`Env`](postgres::Env)), the schema of the business tables (`s3_*`,
//! created once per test binary on a server, on every fresh SQLite file), the `s3_ledger` that
//! counts effects per operation and key, SQL written with `$1` placeholders and rewritten per
//! dialect, and a way to make a transaction fail with a retryable error. Test files run their
//! suite on each backend with [`on_business_backends!`](crate::on_business_backends).

use crate::backends::{mysql_pool, pg_pool, sqlite_pool};

/// Runs a strategy file's `suite!` once per SQL backend: `$suite! { postgres, sqlx::PgPool,
/// sqlx::PgConnection }`, then the same for `mysql` and `sqlite`. The suite opens a module of
/// that name and takes its kit from [`business`](crate::business)`::<name>`.
#[macro_export]
macro_rules! on_business_backends {
    ($suite:ident) => {
        $suite! { postgres, sqlx::PgPool, sqlx::PgConnection, cfg_attr(not(has_postgres), ignore = "IDEMPOTENT_POSTGRES_URL is not set") }
        $suite! { mysql, sqlx::MySqlPool, sqlx::MySqlConnection, cfg_attr(not(has_mysql), ignore = "IDEMPOTENT_MYSQL_URL is not set") }
        $suite! { sqlite, sqlx::SqlitePool, sqlx::SqliteConnection, cfg_attr(any(), ignore) }
    };
}

/// SQL with `$1, $2, …` placeholders, unchanged (PostgreSQL).
pub fn dollar(s: &str) -> String {
    s.to_owned()
}

/// `$1, $2, …` → `?` (MySQL and SQLite take positional `?`).
pub fn question(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            while chars.peek().is_some_and(|d| d.is_ascii_digit()) {
                chars.next();
            }
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

/// PostgreSQL: raise SQLSTATE 40001 (serialization_failure).
pub async fn pg_raise(tx: &mut sqlx::PgConnection, _db: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("DO $$ BEGIN RAISE EXCEPTION 'forced' USING ERRCODE = '40001'; END $$")
        .execute(tx)
        .await?;
    Ok(())
}

/// MariaDB/MySQL: SIGNAL SQLSTATE 40001 (what error 1213, a deadlock, reports).
pub async fn my_raise(
    tx: &mut sqlx::MySqlConnection,
    _db: &sqlx::MySqlPool,
) -> Result<(), sqlx::Error> {
    sqlx::query("CALL s3_fail()").execute(tx).await?;
    Ok(())
}

/// SQLite: a genuine SQLITE_BUSY — another connection (busy timeout 0) tries to write while
/// this transaction holds the write lock; the body surfaces that error.
pub async fn lite_raise(
    _tx: &mut sqlx::SqliteConnection,
    db: &sqlx::SqlitePool,
) -> Result<(), sqlx::Error> {
    use sqlx::ConnectOptions;
    let opts = (*db.connect_options())
        .clone()
        .busy_timeout(std::time::Duration::ZERO);
    let mut other = opts.connect().await?;
    sqlx::query("INSERT INTO s3_ledger (op, k) VALUES ('never', 'never')")
        .execute(&mut other)
        .await?;
    Ok(())
}

macro_rules! kit {
    (
        $(#[$doc:meta])*
        mod $m:ident;
        pool = $pool:ty;
        conn = $conn:ty;
        connect = $connect:expr;
        fix = $fix:expr;
        ddl = [$($ddl:literal),* $(,)?];
        raise_retryable = $raise:ident;
        single_writer = $single:expr;
        serial_first_calls = $serial:expr;
    ) => {
        $(#[$doc])*
        pub mod $m {
            use super::*;

            /// The backend's pool.
            pub type Pool = $pool;
            /// The backend's connection (what `#[tx]` receives).
            pub type Conn = $conn;

            /// Whether the backend admits one writer at a time (SQLite): concurrent callers
            /// cannot all be lined up inside their transactions.
            pub const SINGLE_WRITER: bool = $single;

            /// Whether `pessimistic` runs concurrent first calls for a missing key one at a
            /// time (PostgreSQL's advisory lock, SQLite's write lock), so their bodies cannot
            /// all be lined up; MySQL/MariaDB lets them all hold the gap.
            pub const SERIAL_FIRST_CALLS: bool = $serial;

            /// Makes the running transaction fail with the backend's retryable error
            /// (serialization failure, deadlock or busy).
            pub use super::$raise as raise_retryable;

            /// `text` (written with `$1` placeholders) in this backend's dialect.
            pub fn sql(text: &str) -> sqlx::AssertSqlSafe<String> {
                sqlx::AssertSqlSafe(($fix)(text))
            }

            /// A test's pool, with whatever keeps it alive.
            pub struct Env {
                /// The pool.
                pub db: $pool,
                /// Keeps the pool's resources (a SQLite temporary file) alive.
                pub _guard: Box<dyn std::any::Any + Send + Sync>,
            }

            static SCHEMA: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

            /// A pool of at most `max` connections with the business tables created, or `None`
            /// when the backend is skipped.
            pub async fn env(max: u32) -> Option<Env> {
                let (db, guard) = ($connect)(max).await?;
                let init = async {
                    for stmt in [$($ddl),*] {
                        sqlx::query(sql(stmt)).execute(&db).await.expect(stmt);
                    }
                };
                if $single {
                    init.await;
                } else {
                    SCHEMA.get_or_init(|| init).await;
                }
                Some(Env { db, _guard: guard })
            }

            /// Records one effect of operation `op` on key `k` in `s3_ledger`.
            pub async fn ledger(conn: &mut $conn, op: &str, k: &str) -> Result<(), sqlx::Error> {
                sqlx::query(sql("INSERT INTO s3_ledger (op, k) VALUES ($1, $2)"))
                    .bind(op)
                    .bind(k)
                    .execute(conn)
                    .await?;
                Ok(())
            }

            /// The effects of operation `op` on key `k` recorded in `s3_ledger`.
            pub async fn effects(db: &$pool, op: &str, k: &str) -> i64 {
                sqlx::query_scalar(sql("SELECT COUNT(*) FROM s3_ledger WHERE op = $1 AND k = $2"))
                    .bind(op)
                    .bind(k)
                    .fetch_one(db)
                    .await
                    .unwrap()
            }

            /// Runs `text` with string `binds`.
            pub async fn exec(db: &$pool, text: &str, binds: &[&str]) {
                let mut q = sqlx::query(sql(text));
                for b in binds {
                    q = q.bind(*b);
                }
                q.execute(db).await.unwrap();
            }

            /// The one `i64` that `text`, bound to `k`, selects.
            pub async fn scalar_i64(db: &$pool, text: &str, k: &str) -> i64 {
                sqlx::query_scalar(sql(text)).bind(k).fetch_one(db).await.unwrap()
            }
        }
    };
}

kit! {
    /// PostgreSQL.
    mod postgres;
    pool = sqlx::PgPool;
    conn = sqlx::PgConnection;
    connect = pg_pool;
    fix = dollar;
    ddl = [
        "CREATE TABLE IF NOT EXISTS s3_ledger (op VARCHAR(64) NOT NULL, k VARCHAR(255) NOT NULL)",
        "CREATE TABLE IF NOT EXISTS s3_customers (email VARCHAR(200) PRIMARY KEY, name VARCHAR(200) NOT NULL)",
        "CREATE TABLE IF NOT EXISTS s3_ui_pk (code VARCHAR(100) NOT NULL, tenant VARCHAR(100) NOT NULL, invoice VARCHAR(100), amount BIGINT NOT NULL CHECK (amount >= 0), customer VARCHAR(200) REFERENCES s3_customers (email), CONSTRAINT s3_ui_pk_pkey PRIMARY KEY (code))",
        "CREATE TABLE IF NOT EXISTS s3_ui_uq (code VARCHAR(100) NOT NULL, tenant VARCHAR(100) NOT NULL, invoice VARCHAR(100), amount BIGINT NOT NULL CHECK (amount >= 0), customer VARCHAR(200) REFERENCES s3_customers (email), CONSTRAINT s3_ui_uq_code UNIQUE (code), CONSTRAINT s3_ui_uq_invoice UNIQUE (invoice))",
        "CREATE TABLE IF NOT EXISTS s3_ui_comp (code VARCHAR(100) NOT NULL, tenant VARCHAR(100) NOT NULL, invoice VARCHAR(100), amount BIGINT NOT NULL CHECK (amount >= 0), customer VARCHAR(200) REFERENCES s3_customers (email), CONSTRAINT s3_ui_comp_tc UNIQUE (tenant, code))",
        "CREATE TABLE IF NOT EXISTS s3_accounts (code VARCHAR(100) PRIMARY KEY, amount BIGINT NOT NULL, version BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS s3_shipments (code VARCHAR(100) PRIMARY KEY, status VARCHAR(20) NOT NULL)",
        "CREATE TABLE IF NOT EXISTS s3_wallets (id VARCHAR(100) PRIMARY KEY, balance BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS s3_payments (payment_id VARCHAR(100) PRIMARY KEY, wallet VARCHAR(100) NOT NULL, amount BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS s3_events (event_id VARCHAR(100) NOT NULL, amount BIGINT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS s3_events_id ON s3_events (event_id)",
    ];
    raise_retryable = pg_raise;
    single_writer = false;
    serial_first_calls = true;
}

kit! {
    /// MySQL/MariaDB (InnoDB).
    mod mysql;
    pool = sqlx::MySqlPool;
    conn = sqlx::MySqlConnection;
    connect = mysql_pool;
    fix = question;
    ddl = [
        "CREATE TABLE IF NOT EXISTS s3_ledger (op VARCHAR(64) NOT NULL, k VARCHAR(255) NOT NULL) ENGINE=InnoDB",
        "CREATE TABLE IF NOT EXISTS s3_customers (email VARCHAR(200) PRIMARY KEY, name VARCHAR(200) NOT NULL) ENGINE=InnoDB",
        "CREATE TABLE IF NOT EXISTS s3_ui_pk (code VARCHAR(100) NOT NULL, tenant VARCHAR(100) NOT NULL, invoice VARCHAR(100), amount BIGINT NOT NULL CHECK (amount >= 0), customer VARCHAR(200), PRIMARY KEY (code), FOREIGN KEY (customer) REFERENCES s3_customers (email)) ENGINE=InnoDB",
        "CREATE TABLE IF NOT EXISTS s3_ui_uq (code VARCHAR(100) NOT NULL, tenant VARCHAR(100) NOT NULL, invoice VARCHAR(100), amount BIGINT NOT NULL CHECK (amount >= 0), customer VARCHAR(200), CONSTRAINT s3_ui_uq_code UNIQUE (code), CONSTRAINT s3_ui_uq_invoice UNIQUE (invoice), FOREIGN KEY (customer) REFERENCES s3_customers (email)) ENGINE=InnoDB",
        "CREATE TABLE IF NOT EXISTS s3_ui_comp (code VARCHAR(100) NOT NULL, tenant VARCHAR(100) NOT NULL, invoice VARCHAR(100), amount BIGINT NOT NULL CHECK (amount >= 0), customer VARCHAR(200), CONSTRAINT s3_ui_comp_tc UNIQUE (tenant, code), FOREIGN KEY (customer) REFERENCES s3_customers (email)) ENGINE=InnoDB",
        "CREATE TABLE IF NOT EXISTS s3_accounts (code VARCHAR(100) PRIMARY KEY, amount BIGINT NOT NULL, version BIGINT NOT NULL) ENGINE=InnoDB",
        "CREATE TABLE IF NOT EXISTS s3_shipments (code VARCHAR(100) PRIMARY KEY, status VARCHAR(20) NOT NULL) ENGINE=InnoDB",
        "CREATE TABLE IF NOT EXISTS s3_wallets (id VARCHAR(100) PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB",
        "CREATE TABLE IF NOT EXISTS s3_payments (payment_id VARCHAR(100) PRIMARY KEY, wallet VARCHAR(100) NOT NULL, amount BIGINT NOT NULL) ENGINE=InnoDB",
        "CREATE TABLE IF NOT EXISTS s3_events (event_id VARCHAR(100) NOT NULL, amount BIGINT NOT NULL, KEY s3_events_id (event_id)) ENGINE=InnoDB",
        "CREATE TABLE IF NOT EXISTS s3_nopad (code VARCHAR(100) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL PRIMARY KEY) ENGINE=InnoDB",
        "CREATE TABLE IF NOT EXISTS s3_padbin (code VARCHAR(100) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY) ENGINE=InnoDB",
        "CREATE PROCEDURE IF NOT EXISTS s3_fail() SIGNAL SQLSTATE '40001' SET MESSAGE_TEXT = 'forced'",
    ];
    raise_retryable = my_raise;
    single_writer = false;
    serial_first_calls = false;
}

kit! {
    /// SQLite (a fresh temporary file per test).
    mod sqlite;
    pool = sqlx::SqlitePool;
    conn = sqlx::SqliteConnection;
    connect = sqlite_pool;
    fix = question;
    ddl = [
        "CREATE TABLE IF NOT EXISTS s3_ledger (op VARCHAR(64) NOT NULL, k VARCHAR(255) NOT NULL)",
        "CREATE TABLE IF NOT EXISTS s3_customers (email VARCHAR(200) PRIMARY KEY, name VARCHAR(200) NOT NULL)",
        "CREATE TABLE IF NOT EXISTS s3_ui_pk (code VARCHAR(100) NOT NULL, tenant VARCHAR(100) NOT NULL, invoice VARCHAR(100), amount BIGINT NOT NULL CHECK (amount >= 0), customer VARCHAR(200) REFERENCES s3_customers (email), CONSTRAINT s3_ui_pk_pkey PRIMARY KEY (code))",
        "CREATE TABLE IF NOT EXISTS s3_ui_uq (code VARCHAR(100) NOT NULL, tenant VARCHAR(100) NOT NULL, invoice VARCHAR(100), amount BIGINT NOT NULL CHECK (amount >= 0), customer VARCHAR(200) REFERENCES s3_customers (email), CONSTRAINT s3_ui_uq_code UNIQUE (code), CONSTRAINT s3_ui_uq_invoice UNIQUE (invoice))",
        "CREATE TABLE IF NOT EXISTS s3_ui_comp (code VARCHAR(100) NOT NULL, tenant VARCHAR(100) NOT NULL, invoice VARCHAR(100), amount BIGINT NOT NULL CHECK (amount >= 0), customer VARCHAR(200) REFERENCES s3_customers (email), CONSTRAINT s3_ui_comp_tc UNIQUE (tenant, code))",
        "CREATE TABLE IF NOT EXISTS s3_accounts (code VARCHAR(100) PRIMARY KEY, amount BIGINT NOT NULL, version BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS s3_shipments (code VARCHAR(100) PRIMARY KEY, status VARCHAR(20) NOT NULL)",
        "CREATE TABLE IF NOT EXISTS s3_wallets (id VARCHAR(100) PRIMARY KEY, balance BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS s3_payments (payment_id VARCHAR(100) PRIMARY KEY, wallet VARCHAR(100) NOT NULL, amount BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS s3_events (event_id VARCHAR(100) NOT NULL, amount BIGINT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS s3_events_id ON s3_events (event_id)",
    ];
    raise_retryable = lite_raise;
    single_writer = true;
    serial_first_calls = true;
}
