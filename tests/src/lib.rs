//! Test support for the integration suite: connecting to real backends, ledgers that count
//! effects, and run-unique names so tests can run in parallel against shared servers.
//!
//! Backends come from URLs in the environment: `IDEMPOTENT_POSTGRES_URL`,
//! `IDEMPOTENT_MYSQL_URL`, and for the message-consumer tests the brokers'
//! `IDEMPOTENT_AMQP_URL` and `IDEMPOTENT_NATS_URL`. Where one is unset the tests that need it return early and the
//! `backends` test binary prints a loud SKIPPED banner; with `CI=true` a missing backend fails
//! the run instead. SQLite (a temporary file) and the memory store need nothing.
//!
//! | module | holds |
//! |---|---|
//! | [`backends`] | env var names, the CI rule, [`unique`] names, connecting to each backend, `on_redis_backends!` / `on_kv_backends!` / `on_claim_backends!` |
//! | [`business`] | the business-table suites' per-backend kit (schema, `s3_ledger`, dialect, retryable-error injection), `on_business_backends!` |
//! | [`faults`] | [`Faulty`], the fault-injecting store wrapper, and the fault scenarios every claim store runs ([`FaultSvc`]) |
//! | [`fixtures`] | [`Req`], [`Receipt`], [`AppError`], the pause points [`Gate`] and [`Once`] |
//! | [`ledger`] | [`ledger_ddl`], the SQL and memory ledgers ([`PgLedger`], [`MyLedger`], [`LiteLedger`], [`MemLedger`]), the in-memory [`Effects`] |
//! | [`outcome`] | [`Got`] with [`classify`], [`got`], [`tally`] and [`poll_while`] |
//! | [`statements`] | what a database runs for one call, as it reports it: [`PgWire`] (a proxy reading PostgreSQL's replies), [`MySqlSession`] (session status counters), [`SqliteTrace`] (SQLite's statement trace and commit/rollback hooks) |
//! | [`mariadb_server`] | [`MariaDbServer`], a throwaway MariaDB server the suite can crash and restart |
//! | [`matrix`] | the fault matrix (issue 15): strategies × backends × faults, the `fault_worker` protocol, `GUARANTEES.md` |
//! | [`skew`] | [`SkewSvc`](skew::SkewSvc) and the `skew_worker` protocol: processes sharing one SQLite file with clocks apart |
//! | [`redis_server`] | [`RedisServer`], [`RedisCluster`], [`free_port`], the throwaway server and cluster |
//! | [`redis_replication`] | [`RedisReplicaSet`]: primary + replica (+ 3 Sentinels), promotion, failover |
//!
//! The items test files use are re-exported here, so they `use idempotent_tests::{…}`.

pub mod backends;
pub mod business;
pub mod faults;
pub mod fixtures;
pub mod ledger;
pub mod mariadb_server;
pub mod matrix;
pub mod outcome;
pub mod redis_replication;
pub mod redis_server;
pub mod skew;
pub mod statements;
pub mod supervised;

pub use backends::{
    AMQP_ENV, Guard, MYSQL_ENV, NATS_ENV, POSTGRES_ENV, REDIS_CLUSTER_ENV, REDIS_ENV, amqp_url, ci,
    mariadb_snapshot_pool, mysql, mysql_in_database, mysql_pool, nats_url, pg_pool, postgres,
    postgres_in_schema, redis, redis_cluster, server_url, sqlite, sqlite_pool, unique,
};
pub use faults::{FaultSvc, Faults, Faulty, Lease, Observed};
pub use fixtures::{AppError, Gate, Once, Receipt, Req, req};
pub use ledger::{Effects, LiteLedger, MemLedger, MyLedger, PgLedger, ledger_ddl};
pub use mariadb_server::{MariaDbServer, mariadb_server_available};
pub use outcome::{Got, classify, got, poll_while, tally};
pub use redis_replication::{RedisReplicaSet, replication_available};
pub use redis_server::{
    Commands, CountCommands, RedisCluster, RedisServer, SCRIPT_INTERNAL, WARM_KEYS,
    assert_round_trips, cluster_urls, counting, free_port, private_redis, private_redis_cluster,
    redis_server_on_path, throwaway_redis_url,
};
pub use statements::{MySqlSession, PgLog, PgWire, SqliteLog, SqliteTrace};
