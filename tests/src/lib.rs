//! Test support for the integration suite: connecting to real backends, ledgers that count
//! effects, and run-unique names so tests can run in parallel against shared servers.
//!
//! Backends come from URLs in the environment: `IDEMPOTENT_POSTGRES_URL`,
//! `IDEMPOTENT_MYSQL_URL`. Where one is unset the tests that need it return early and the
//! `backends` test binary prints a loud SKIPPED banner; with `CI=true` a missing backend fails
//! the run instead. SQLite (a temporary file) and the memory store need nothing.

use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{MySqlPool, PgPool, SqlitePool};

/// Environment variable naming the PostgreSQL server for tests.
pub const POSTGRES_ENV: &str = "IDEMPOTENT_POSTGRES_URL";
/// Environment variable naming the MySQL/MariaDB server for tests.
pub const MYSQL_ENV: &str = "IDEMPOTENT_MYSQL_URL";

/// `true` when running under CI (`CI=true`), where every backend is required.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A short random identifier unique to this test (hex), for table names, scopes and keys.
pub fn unique(prefix: &str) -> String {
    let mut b = [0u8; 6];
    getrandom_fill(&mut b);
    format!(
        "{prefix}_{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

fn getrandom_fill(b: &mut [u8]) {
    getrandom::fill(b).expect("OS randomness");
}

/// The URL of a server backend from `var`: `None` (test skipped) when unset outside CI.
///
/// Panics when unset under `CI=true`: CI never skips a backend.
pub fn server_url(var: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if ci() => panic!("{var} is unset and CI=true: {what} is required in CI"),
        _ => None,
    }
}

/// A PostgreSQL pool with the idempotency-record table migrated, or `None` when skipped.
pub async fn postgres() -> Option<PgPool> {
    let url = server_url(POSTGRES_ENV, "PostgreSQL")?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL at {url}: {e}"));
    idempotent_runtime::migrate(&pool)
        .await
        .expect("migrate postgres");
    Some(pool)
}

/// A MySQL/MariaDB pool with the idempotency-record table migrated, or `None` when skipped.
pub async fn mysql() -> Option<MySqlPool> {
    let url = server_url(MYSQL_ENV, "MySQL/MariaDB")?;
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to MySQL at {url}: {e}"));
    idempotent_runtime::migrate(&pool)
        .await
        .expect("migrate mysql");
    Some(pool)
}

/// A SQLite pool on a fresh temporary file (WAL, 30 s busy timeout), migrated. The file is
/// removed when the returned guard drops.
pub async fn sqlite() -> Option<(SqlitePool, tempfile::TempDir)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = SqliteConnectOptions::new()
        .filename(dir.path().join("test.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(30));
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(opts)
        .await
        .expect("open sqlite");
    idempotent_runtime::migrate(&pool)
        .await
        .expect("migrate sqlite");
    Some((pool, dir))
}

/// The DDL of a ledger table: one row per effect (`k` = key, `tenant`, `amount`). The same text
/// works on PostgreSQL, MySQL and SQLite.
pub fn ledger_ddl(table: &str) -> String {
    format!(
        "CREATE TABLE {table} (k VARCHAR(1100) NOT NULL, tenant VARCHAR(200) NOT NULL, amount BIGINT NOT NULL)"
    )
}

/// A request of the test service: an idempotency key `id` within tenant `tenant`, and a payload
/// `amount` (which the fingerprint covers).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Req {
    /// Scope of the key.
    pub tenant: String,
    /// The idempotency key.
    pub id: String,
    /// Payload.
    pub amount: i64,
}

/// The response the test service returns and the strategies replay. `serial` numbers
/// executions of one service, so a replay is told from a re-execution.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Receipt {
    /// Echo of the request's tenant.
    pub tenant: String,
    /// Echo of the request's key.
    pub id: String,
    /// Echo of the payload.
    pub amount: i64,
    /// Which execution of the service produced this receipt (1, 2, …).
    pub serial: u64,
}

/// The test service's error type.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// From the idempotency runtime.
    #[error(transparent)]
    Idempotency(#[from] idempotent_runtime::Error),
    /// From the database.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// The body refused the request (a business error).
    #[error("rejected by the body")]
    Rejected,
}

/// A pause point in a body: when armed, the next body to pass signals `entered` and waits for
/// `release`. Lines concurrency up without sleeps.
#[derive(Debug, Default)]
pub struct Gate {
    armed: std::sync::atomic::AtomicBool,
    /// Signalled when an armed body reaches the gate.
    pub entered: tokio::sync::Notify,
    /// Lets the held body go on.
    pub release: tokio::sync::Notify,
}

impl Gate {
    /// Holds the next body that passes.
    pub fn arm(&self) {
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Called by bodies: holds only the first body after `arm`.
    pub async fn pass(&self) {
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.entered.notify_one();
            self.release.notified().await;
        }
    }
}
