//! Backends: the environment variables naming the test servers, the CI rule (under `CI=true` a
//! missing backend fails instead of skipping), run-unique names, connecting to PostgreSQL,
//! MySQL/MariaDB, SQLite and Redis, and the `on_*_backends!` macros that run a test on each
//! key-value store.

use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{MySqlPool, PgPool, SqlitePool};

use crate::redis_server::{cluster_urls, throwaway_redis_url};

/// Environment variable naming the PostgreSQL server for tests.
pub const POSTGRES_ENV: &str = "IDEMPOTENT_POSTGRES_URL";
/// Environment variable naming the MySQL/MariaDB server for tests.
pub const MYSQL_ENV: &str = "IDEMPOTENT_MYSQL_URL";
/// Environment variable naming the standalone Redis server for tests (`redis://127.0.0.1:6379`).
pub const REDIS_ENV: &str = "IDEMPOTENT_REDIS_URL";
/// Environment variable naming the nodes of a Redis Cluster for tests, comma-separated
/// (`redis://127.0.0.1:7000,redis://127.0.0.1:7001`). Unset: the suite starts its own
/// 3-master cluster with `redis-server --cluster-enabled yes` if `redis-server` is on PATH.
pub const REDIS_CLUSTER_ENV: &str = "IDEMPOTENT_REDIS_CLUSTER_URLS";

/// Environment variable naming the RabbitMQ (AMQP 0-9-1) broker for the consumer tests
/// (`amqp://guest:guest@127.0.0.1:5672/%2f`).
pub const AMQP_ENV: &str = "IDEMPOTENT_AMQP_URL";
/// Environment variable naming the NATS server (with JetStream enabled) for the consumer tests
/// (`nats://127.0.0.1:4222`).
pub const NATS_ENV: &str = "IDEMPOTENT_NATS_URL";

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

/// The RabbitMQ URL of `IDEMPOTENT_AMQP_URL`, or `None` (test skipped, loudly) when unset
/// outside CI; panics when unset under `CI=true`.
pub fn amqp_url() -> Option<String> {
    let url = server_url(AMQP_ENV, "RabbitMQ (AMQP 0-9-1)");
    if url.is_none() {
        eprintln!("!!! SKIPPED: {AMQP_ENV} is unset: the RabbitMQ consumer tests did not run !!!");
    }
    url
}

/// The NATS URL of `IDEMPOTENT_NATS_URL`, or `None` (test skipped, loudly) when unset outside
/// CI; panics when unset under `CI=true`.
pub fn nats_url() -> Option<String> {
    let url = server_url(NATS_ENV, "NATS with JetStream");
    if url.is_none() {
        eprintln!(
            "!!! SKIPPED: {NATS_ENV} is unset: the NATS JetStream consumer tests did not run !!!"
        );
    }
    url
}

// ------------------------------------------------------------------------------------ SQL

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

/// `name` if it is a plain SQL identifier (`[a-z_][a-z0-9_]*`), safe to splice into DDL.
fn plain_identifier(name: &str) -> &str {
    assert!(
        name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "not a plain identifier: {name:?}"
    );
    name
}

/// A PostgreSQL pool of at most `max` connections whose sessions see only `schema`
/// (`search_path`), dropped and created afresh, with the idempotency-record table migrated into
/// it: a test that owns the whole `idempotency_records` table (counts every row, installs a
/// trigger) without meeting the other suites' rows in `public`. `None` when skipped.
pub async fn postgres_in_schema(schema: &str, max: u32) -> Option<PgPool> {
    let url = server_url(POSTGRES_ENV, "PostgreSQL")?;
    let schema = plain_identifier(schema);
    let setup = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL at {url}: {e}"));
    for ddl in [
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        format!("CREATE SCHEMA {schema}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(ddl.clone()))
            .execute(&setup)
            .await
            .unwrap_or_else(|e| panic!("{ddl}: {e}"));
    }
    setup.close().await;
    let opts = url
        .parse::<sqlx::postgres::PgConnectOptions>()
        .expect("IDEMPOTENT_POSTGRES_URL parses")
        .options([("search_path", schema)]);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(opts)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL at {url}: {e}"));
    idempotent_runtime::migrate(&pool)
        .await
        .expect("migrate postgres");
    Some(pool)
}

/// A MySQL/MariaDB pool of at most `max` connections on the database `database`, dropped and
/// created afresh, with the idempotency-record table migrated into it: a test that owns the
/// whole `idempotency_records` table without meeting the other suites' rows in `test`. `None`
/// when skipped.
pub async fn mysql_in_database(database: &str, max: u32) -> Option<MySqlPool> {
    let url = server_url(MYSQL_ENV, "MySQL/MariaDB")?;
    let database = plain_identifier(database);
    let setup = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to MySQL at {url}: {e}"));
    for ddl in [
        format!("DROP DATABASE IF EXISTS {database}"),
        format!("CREATE DATABASE {database}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(ddl.clone()))
            .execute(&setup)
            .await
            .unwrap_or_else(|e| panic!("{ddl}: {e}"));
    }
    setup.close().await;
    let opts = url
        .parse::<sqlx::mysql::MySqlConnectOptions>()
        .expect("IDEMPOTENT_MYSQL_URL parses")
        .database(database);
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(opts)
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

/// Keeps a pool's resources alive (the SQLite temporary directory) for as long as it is held.
pub type Guard = Box<dyn std::any::Any + Send + Sync>;

/// A plain (not migrated) PostgreSQL pool of at most `max` connections for the business-table
/// suites, or `None` when skipped.
pub async fn pg_pool(max: u32) -> Option<(PgPool, Guard)> {
    let url = server_url(POSTGRES_ENV, "PostgreSQL")?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(max)
        .connect(&url)
        .await
        .unwrap();
    Some((pool, Box::new(())))
}

/// A plain (not migrated) MySQL/MariaDB pool of at most `max` connections for the
/// business-table suites, or `None` when skipped.
pub async fn mysql_pool(max: u32) -> Option<(MySqlPool, Guard)> {
    let url = server_url(MYSQL_ENV, "MySQL/MariaDB")?;
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(max)
        .connect(&url)
        .await
        .unwrap();
    Some((pool, Box::new(())))
}

/// A MySQL/MariaDB pool of at most `max` connections whose every session runs
/// `SET SESSION innodb_snapshot_isolation = ON` (MariaDB's default from 11.6.2; settable per
/// session on 10.11), with the idempotency-record table migrated, or `None` when skipped.
/// Panics when the server has no such variable (not MariaDB, or too old a release).
pub async fn mariadb_snapshot_pool(max: u32) -> Option<MySqlPool> {
    let url = server_url(MYSQL_ENV, "MySQL/MariaDB")?;
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(max)
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::Executor::execute(&mut *conn, "SET SESSION innodb_snapshot_isolation = ON")
                    .await?;
                Ok(())
            })
        })
        .connect(&url)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot open a MariaDB session with innodb_snapshot_isolation = ON at {url}: {e}"
            )
        });
    idempotent_runtime::migrate(&pool)
        .await
        .expect("migrate mysql");
    Some(pool)
}

/// A plain (not migrated) SQLite pool of at most `max` connections on a fresh temporary file
/// (WAL, 30 s busy timeout) for the business-table suites; the guard holds the file.
pub async fn sqlite_pool(max: u32) -> Option<(SqlitePool, Guard)> {
    let dir = tempfile::tempdir().unwrap();
    let opts = SqliteConnectOptions::new()
        .filename(dir.path().join("t.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(30));
    let pool = SqlitePoolOptions::new()
        .max_connections(max)
        .connect_with(opts)
        .await
        .unwrap();
    Some((pool, Box::new(dir)))
}

// ------------------------------------------------------------------------------------ Redis

/// A [`RedisStore`](idempotent_runtime::RedisStore) on the standalone server of
/// `IDEMPOTENT_REDIS_URL`; unset, on a throwaway `redis-server` the suite starts on a free
/// loopback port (once per test binary) when the binary is on PATH; else `None` (skipped, or
/// a panic under `CI=true`).
pub async fn redis() -> Option<idempotent_runtime::RedisStore> {
    let url = match std::env::var(REDIS_ENV) {
        Ok(url) if !url.is_empty() => url,
        _ => throwaway_redis_url().or_else(|| server_url(REDIS_ENV, "Redis"))?,
    };
    Some(
        idempotent_runtime::RedisStore::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to Redis at {url}: {e}")),
    )
}

/// A [`RedisStore`](idempotent_runtime::RedisStore) on a Redis Cluster: the nodes of
/// `IDEMPOTENT_REDIS_CLUSTER_URLS`, else the suite's own 3-master cluster (started once per test
/// binary, stopped when the binary exits). `None` when skipped: `redis-server` is not on PATH
/// (panics under `CI=true`).
pub async fn redis_cluster() -> Option<idempotent_runtime::RedisStore> {
    let urls = cluster_urls()?;
    Some(
        idempotent_runtime::RedisStore::connect_cluster(&urls)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the Redis Cluster {urls:?}: {e}")),
    )
}

/// Runs each listed `async fn test(store)` on standalone Redis and on the suite's Redis Cluster,
/// as `redis::test` and `cluster::test` (multi-threaded tokio, 4 workers). A backend that is
/// unavailable returns early outside CI and fails under `CI=true` (see [`redis()`]).
#[macro_export]
macro_rules! on_redis_backends {
    ($($test:ident),* $(,)?) => {
        mod redis {
            $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[cfg_attr(not(has_redis), ignore = "Redis: set IDEMPOTENT_REDIS_URL or put redis-server on PATH")]
            async fn $test() {
                let Some(store) = $crate::redis().await else { return };
                super::$test(store).await
            }
            )*
        }
        mod cluster {
            $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[cfg_attr(not(has_redis_cluster), ignore = "Redis Cluster: set IDEMPOTENT_REDIS_CLUSTER_URLS or put redis-server on PATH")]
            async fn $test() {
                let Some(store) = $crate::redis_cluster().await else { return };
                super::$test(store).await
            }
            )*
        }
    };
}

/// [`on_redis_backends!`] plus the in-process memory store, as `memory::test`.
#[macro_export]
macro_rules! on_kv_backends {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                super::$test(idempotent_runtime::MemoryStore::new()).await
            }
            )*
        }
        $crate::on_redis_backends!($($test),*);
    };
}

/// [`on_kv_backends!`] plus PostgreSQL, MySQL/MariaDB and SQLite (sqlx pools, migrated), as
/// `postgres::test`, `mysql::test`, `sqlite::test`: every claim store. A server backend that is
/// unset returns early outside CI and fails under `CI=true`.
#[macro_export]
macro_rules! on_claim_backends {
    ($($test:ident),* $(,)?) => {
        mod postgres {
            $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[cfg_attr(not(has_postgres), ignore = "IDEMPOTENT_POSTGRES_URL is not set")]
            async fn $test() {
                let Some(pool) = $crate::postgres().await else { return };
                super::$test(pool).await
            }
            )*
        }
        mod mysql {
            $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[cfg_attr(not(has_mysql), ignore = "IDEMPOTENT_MYSQL_URL is not set")]
            async fn $test() {
                let Some(pool) = $crate::mysql().await else { return };
                super::$test(pool).await
            }
            )*
        }
        mod sqlite {
            $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                let Some((pool, _dir)) = $crate::sqlite().await else { return };
                super::$test(pool).await
            }
            )*
        }
        $crate::on_kv_backends!($($test),*);
    };
}
