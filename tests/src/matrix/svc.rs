//! The operations of the fault matrix: one `#[idempotent]` function per strategy and backend,
//! each with the same body — pause at [`Point::Claimed`], write one effect, pause at
//! [`Point::Effect`], return — and [`Svc`], which opens a backend from its URL, prepares a key
//! for a strategy, calls the strategy's operation and counts its effects.
//!
//! Effects are rows of `fm_ledger (op, k)` on the SQL backends — written through the strategy's
//! transaction (`#[tx]`) by the transactional strategies, on a connection of their own in claim
//! mode — and counters `fm:fx:<key>` on Redis (a map in memory for the memory store). Business
//! tables: `fm_items` (`select_before_insert`), `fm_pess` (`pessimistic`), `fm_accounts`
//! (`optimistic`, version column `version`), `fm_uniq` (`unique_index`), `fm_ships`
//! (`state_machine`, `PAID` → `SHIPPED`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idempotent_runtime::{ClaimStore, LockStore, MemoryStore, RedisStore, TokenStore};
use idempotent_runtime::{Error, idempotent, issue_token, observe};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

use super::{Backend, Pause, Point, Strategy};
use crate::backends::unique;
use crate::business::{dollar, question};
use crate::fixtures::{AppError, Receipt, Req, req};
use crate::outcome::{Got, classify, got};

/// The scope (tenant) of every matrix request.
pub const TENANT: &str = "fm";

fn receipt(r: &Req) -> Receipt {
    Receipt {
        tenant: r.tenant.clone(),
        id: r.id.clone(),
        amount: r.amount,
        serial: 0,
    }
}

/// The SQL that creates the matrix's tables on `backend` (`IF NOT EXISTS`).
pub fn ddl(backend: Backend) -> Vec<&'static str> {
    let mut v = vec![
        "CREATE TABLE IF NOT EXISTS fm_items (id VARCHAR(255) PRIMARY KEY)",
        "CREATE TABLE IF NOT EXISTS fm_pess (id VARCHAR(255) PRIMARY KEY)",
        "CREATE TABLE IF NOT EXISTS fm_accounts (id VARCHAR(255) PRIMARY KEY, amount BIGINT NOT NULL, version BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS fm_uniq (id VARCHAR(255) PRIMARY KEY)",
        "CREATE TABLE IF NOT EXISTS fm_ships (id VARCHAR(255) PRIMARY KEY, status VARCHAR(20) NOT NULL)",
    ];
    if backend == Backend::MariaDb {
        v.push("CREATE TABLE IF NOT EXISTS fm_ledger (op VARCHAR(64) NOT NULL, k VARCHAR(255) NOT NULL, KEY fm_ledger_k (k))");
    } else {
        v.push("CREATE TABLE IF NOT EXISTS fm_ledger (op VARCHAR(64) NOT NULL, k VARCHAR(255) NOT NULL)");
        v.push("CREATE INDEX IF NOT EXISTS fm_ledger_k ON fm_ledger (k)");
    }
    v
}

/// One module per SQL backend: the seven SQL operations (`dedup_table` in both modes and the
/// five business-table strategies) and `call`, `prepare`, `effects`.
macro_rules! sql_ops {
    ($(#[$doc:meta])* $m:ident, $pool:ty, $conn:ty, $fix:path) => {
        $(#[$doc])*
        pub mod $m {
            use super::*;

            fn sql(text: &str) -> sqlx::AssertSqlSafe<String> {
                sqlx::AssertSqlSafe($fix(text))
            }

            async fn effect(conn: &mut $conn, op: Strategy, k: &str) -> Result<(), sqlx::Error> {
                sqlx::query(sql("INSERT INTO fm_ledger (op, k) VALUES ($1, $2)"))
                    .bind(op.id())
                    .bind(k)
                    .execute(conn)
                    .await?;
                Ok(())
            }

            async fn insert(conn: &mut $conn, table: &str, k: &str) -> Result<(), sqlx::Error> {
                sqlx::query(sql(&format!("INSERT INTO {table} (id) VALUES ($1)")))
                    .bind(k)
                    .execute(conn)
                    .await?;
                Ok(())
            }

            /// `dedup_table` claim mode, 1 s lease; the effect on a connection of its own.
            #[idempotent(strategy = "dedup_table", key = "r.id", scope = "r.tenant", lease = "1s", fingerprint = ["r"])]
            pub async fn dedup_claim(db: &$pool, r: &Req, p: &Pause) -> Result<Receipt, AppError> {
                p.at(Point::Claimed).await;
                let mut conn = db.acquire().await?;
                effect(&mut conn, Strategy::DedupClaim, &r.id).await?;
                drop(conn);
                p.at(Point::Effect).await;
                Ok(receipt(r))
            }

            /// [`dedup_claim`] with `on_cancel = "release"` and a 30 s lease.
            #[idempotent(strategy = "dedup_table", key = "r.id", scope = "r.tenant", lease = "30s", on_cancel = "release", fingerprint = ["r"])]
            pub async fn dedup_claim_release(db: &$pool, r: &Req, p: &Pause) -> Result<Receipt, AppError> {
                p.at(Point::Claimed).await;
                let mut conn = db.acquire().await?;
                effect(&mut conn, Strategy::DedupClaim, &r.id).await?;
                drop(conn);
                p.at(Point::Effect).await;
                Ok(receipt(r))
            }

            /// `dedup_table` with `#[tx]`: the effect in the record's transaction.
            #[idempotent(strategy = "dedup_table", key = "r.id", scope = "r.tenant", fingerprint = ["r"])]
            pub async fn dedup_tx(db: &$pool, r: &Req, p: &Pause, #[tx] tx: &mut $conn) -> Result<Receipt, AppError> {
                p.at(Point::Claimed).await;
                effect(&mut *tx, Strategy::DedupTx, &r.id).await?;
                p.at(Point::Effect).await;
                Ok(receipt(r))
            }

            /// `select_before_insert` on `fm_items`.
            #[idempotent(strategy = "select_before_insert", key = "r.id", table = "fm_items")]
            pub async fn select_before_insert(db: &$pool, r: &Req, p: &Pause, #[tx] tx: &mut $conn) -> Result<(), AppError> {
                p.at(Point::Claimed).await;
                insert(&mut *tx, "fm_items", &r.id).await?;
                effect(&mut *tx, Strategy::SelectBeforeInsert, &r.id).await?;
                p.at(Point::Effect).await;
                Ok(())
            }

            /// `pessimistic` on `fm_pess`: the body re-checks the row under the lock.
            #[idempotent(strategy = "pessimistic", key = "r.id", table = "fm_pess")]
            pub async fn pessimistic(db: &$pool, r: &Req, p: &Pause, #[tx] tx: &mut $conn) -> Result<(), AppError> {
                p.at(Point::Claimed).await;
                let seen: i64 = sqlx::query_scalar(sql("SELECT COUNT(*) FROM fm_pess WHERE id = $1"))
                    .bind(&r.id)
                    .fetch_one(&mut *tx)
                    .await?;
                if seen > 0 {
                    return Err(Error::Duplicate.into());
                }
                insert(&mut *tx, "fm_pess", &r.id).await?;
                effect(&mut *tx, Strategy::Pessimistic, &r.id).await?;
                p.at(Point::Effect).await;
                Ok(())
            }

            /// `optimistic` on `fm_accounts`; the version the caller read is `r.amount`.
            #[idempotent(strategy = "optimistic", key = "r.id", table = "fm_accounts", version = "r.amount")]
            pub async fn optimistic(db: &$pool, r: &Req, p: &Pause, #[tx] tx: &mut $conn) -> Result<(), AppError> {
                p.at(Point::Claimed).await;
                sqlx::query(sql("UPDATE fm_accounts SET amount = amount + 1 WHERE id = $1"))
                    .bind(&r.id)
                    .execute(&mut *tx)
                    .await?;
                effect(&mut *tx, Strategy::Optimistic, &r.id).await?;
                p.at(Point::Effect).await;
                Ok(())
            }

            /// `unique_index` on `fm_uniq`.
            #[idempotent(strategy = "unique_index", key = "r.id", table = "fm_uniq")]
            pub async fn unique_index(db: &$pool, r: &Req, p: &Pause, #[tx] tx: &mut $conn) -> Result<(), AppError> {
                p.at(Point::Claimed).await;
                insert(&mut *tx, "fm_uniq", &r.id).await?;
                effect(&mut *tx, Strategy::UniqueIndex, &r.id).await?;
                p.at(Point::Effect).await;
                Ok(())
            }

            /// `state_machine` on `fm_ships`, `PAID` → `SHIPPED`.
            #[idempotent(strategy = "state_machine", key = "r.id", table = "fm_ships", status_column = "status", from = "PAID", to = "SHIPPED")]
            pub async fn state_machine(db: &$pool, r: &Req, p: &Pause, #[tx] tx: &mut $conn) -> Result<(), AppError> {
                p.at(Point::Claimed).await;
                effect(&mut *tx, Strategy::StateMachine, &r.id).await?;
                p.at(Point::Effect).await;
                Ok(())
            }

            /// Calls strategy `s`'s `on_cancel = "release"` operation for `r` (claim mode only).
            pub async fn call_releasing(db: &$pool, s: Strategy, r: &Req, p: &Pause) -> Got {
                match s {
                    Strategy::DedupClaim => classify(observe(dedup_claim_release(db, r, p)).await),
                    _ => Got::Other(format!("{} takes no on_cancel", s.id())),
                }
            }

            /// Calls strategy `s`'s operation for `r`.
            pub async fn call(db: &$pool, s: Strategy, r: &Req, p: &Pause) -> Got {
                match s {
                    Strategy::DedupClaim => classify(observe(dedup_claim(db, r, p)).await),
                    Strategy::DedupTx => classify(observe(dedup_tx(db, r, p)).await),
                    Strategy::SelectBeforeInsert => got(select_before_insert(db, r, p).await),
                    Strategy::Pessimistic => got(pessimistic(db, r, p).await),
                    Strategy::Optimistic => got(optimistic(db, r, p).await),
                    Strategy::UniqueIndex => got(unique_index(db, r, p).await),
                    Strategy::StateMachine => got(state_machine(db, r, p).await),
                    Strategy::DistributedLock | Strategy::Token => {
                        Got::Other(format!("{} does not run on SQL here", s.id()))
                    }
                }
            }

            /// Creates the business row strategy `s` needs for key `k` (optimistic: version 0;
            /// state_machine: `PAID`).
            pub async fn prepare(db: &$pool, s: Strategy, k: &str) -> Result<(), sqlx::Error> {
                let text = match s {
                    Strategy::Optimistic => "INSERT INTO fm_accounts (id, amount, version) VALUES ($1, 0, 0)",
                    Strategy::StateMachine => "INSERT INTO fm_ships (id, status) VALUES ($1, 'PAID')",
                    _ => return Ok(()),
                };
                sqlx::query(sql(text)).bind(k).execute(db).await?;
                Ok(())
            }

            /// Effects of strategy `s` on key `k`.
            pub async fn effects(db: &$pool, s: Strategy, k: &str) -> Result<i64, sqlx::Error> {
                sqlx::query_scalar(sql("SELECT COUNT(*) FROM fm_ledger WHERE op = $1 AND k = $2"))
                    .bind(s.id())
                    .bind(k)
                    .fetch_one(db)
                    .await
            }

            /// Migrates the record table and creates the matrix's tables.
            pub async fn setup(db: &$pool, backend: Backend) -> Result<(), String> {
                idempotent_runtime::migrate(db).await.map_err(|e| format!("migrate: {e}"))?;
                for stmt in ddl(backend) {
                    sqlx::query(sqlx::AssertSqlSafe(stmt))
                        .execute(db)
                        .await
                        .map_err(|e| format!("{stmt}: {e}"))?;
                }
                Ok(())
            }
        }
    };
}

sql_ops!(
    /// PostgreSQL.
    pg, sqlx::PgPool, sqlx::PgConnection, dollar
);
sql_ops!(
    /// MySQL/MariaDB.
    my, sqlx::MySqlPool, sqlx::MySqlConnection, question
);
sql_ops!(
    /// SQLite.
    lite, sqlx::SqlitePool, sqlx::SqliteConnection, question
);

/// The effects ledger of a key-value store: counters on Redis (its own connection, which
/// reconnects), a map for the memory store.
pub enum KvLedger {
    /// `INCR fm:fx:<key>` on Redis.
    Redis(redis::aio::ConnectionManager),
    /// `INCR fm:fx:<key>` on a Redis Cluster.
    Cluster(redis::cluster_async::ClusterConnection),
    /// In this process.
    Memory(Mutex<HashMap<String, i64>>),
}

impl KvLedger {
    async fn record(&self, k: &str) -> Result<(), AppError> {
        match self {
            KvLedger::Redis(conn) => {
                let mut conn = conn.clone();
                redis::cmd("INCR")
                    .arg(format!("fm:fx:{k}"))
                    .query_async::<i64>(&mut conn)
                    .await
                    .map_err(|e| AppError::Idempotency(Error::Backend(Box::new(e))))?;
            }
            KvLedger::Cluster(conn) => {
                let mut conn = conn.clone();
                redis::cmd("INCR")
                    .arg(format!("fm:fx:{k}"))
                    .query_async::<i64>(&mut conn)
                    .await
                    .map_err(|e| AppError::Idempotency(Error::Backend(Box::new(e))))?;
            }
            KvLedger::Memory(m) => {
                *m.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entry(k.to_owned())
                    .or_default() += 1;
            }
        }
        Ok(())
    }

    async fn count(&self, k: &str) -> Result<i64, String> {
        match self {
            KvLedger::Redis(conn) => {
                let mut last = String::new();
                // The connection may have been killed by the test: it reconnects on use.
                for _ in 0..5 {
                    let mut conn = conn.clone();
                    match redis::cmd("GET")
                        .arg(format!("fm:fx:{k}"))
                        .query_async::<Option<i64>>(&mut conn)
                        .await
                    {
                        Ok(n) => return Ok(n.unwrap_or(0)),
                        Err(e) => last = e.to_string(),
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(format!("count effects on Redis: {last}"))
            }
            KvLedger::Cluster(conn) => {
                let mut conn = conn.clone();
                redis::cmd("GET")
                    .arg(format!("fm:fx:{k}"))
                    .query_async::<Option<i64>>(&mut conn)
                    .await
                    .map(|n| n.unwrap_or(0))
                    .map_err(|e| format!("count effects on the Redis Cluster: {e}"))
            }
            KvLedger::Memory(m) => Ok(m
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(k)
                .copied()
                .unwrap_or(0)),
        }
    }
}

/// The claim-mode operations on a key-value store (Redis or memory), 1 s lease each.
pub struct Kv<S> {
    /// The store.
    pub store: S,
    /// Where effects are counted.
    pub ledger: KvLedger,
    /// The pause points.
    pub pause: Arc<Pause>,
}

impl<S: ClaimStore + LockStore + TokenStore> Kv<S> {
    async fn body(&self, s: Strategy, r: &Req) -> Result<Receipt, AppError> {
        self.pause.at(Point::Claimed).await;
        self.ledger.record(&effect_key(s, &r.id)).await?;
        self.pause.at(Point::Effect).await;
        Ok(receipt(r))
    }

    /// `dedup_table` claim mode.
    #[idempotent(strategy = "dedup_table", key = "r.id", scope = "r.tenant", store = "self.store", lease = "1s", fingerprint = ["r"])]
    pub async fn dedup_claim(&self, r: &Req) -> Result<Receipt, AppError> {
        self.body(Strategy::DedupClaim, r).await
    }

    /// `distributed_lock`.
    #[idempotent(strategy = "distributed_lock", key = "r.id", scope = "r.tenant", store = "self.store", lease = "1s", fingerprint = ["r"])]
    pub async fn distributed_lock(&self, r: &Req) -> Result<Receipt, AppError> {
        self.body(Strategy::DistributedLock, r).await
    }

    /// `token`: `r.id` is the token.
    #[idempotent(strategy = "token", key = "r.id", scope = "r.tenant", store = "self.store", lease = "1s", fingerprint = ["r"])]
    pub async fn token(&self, r: &Req) -> Result<Receipt, AppError> {
        self.body(Strategy::Token, r).await
    }

    /// [`dedup_claim`](Self::dedup_claim) with `on_cancel = "release"`, 30 s lease.
    #[idempotent(strategy = "dedup_table", key = "r.id", scope = "r.tenant", store = "self.store", lease = "30s", on_cancel = "release", fingerprint = ["r"])]
    pub async fn dedup_claim_release(&self, r: &Req) -> Result<Receipt, AppError> {
        self.body(Strategy::DedupClaim, r).await
    }

    /// [`distributed_lock`](Self::distributed_lock) with `on_cancel = "release"`, 30 s lease.
    #[idempotent(strategy = "distributed_lock", key = "r.id", scope = "r.tenant", store = "self.store", lease = "30s", on_cancel = "release", fingerprint = ["r"])]
    pub async fn distributed_lock_release(&self, r: &Req) -> Result<Receipt, AppError> {
        self.body(Strategy::DistributedLock, r).await
    }

    /// [`token`](Self::token) with `on_cancel = "release"`, 30 s lease.
    #[idempotent(strategy = "token", key = "r.id", scope = "r.tenant", store = "self.store", lease = "30s", on_cancel = "release", fingerprint = ["r"])]
    pub async fn token_release(&self, r: &Req) -> Result<Receipt, AppError> {
        self.body(Strategy::Token, r).await
    }

    /// Calls strategy `s`'s `on_cancel = "release"` operation for `r`.
    pub async fn call_releasing(&self, s: Strategy, r: &Req) -> Got {
        match s {
            Strategy::DedupClaim => classify(observe(self.dedup_claim_release(r)).await),
            Strategy::DistributedLock => classify(observe(self.distributed_lock_release(r)).await),
            Strategy::Token => classify(observe(self.token_release(r)).await),
            _ => Got::Other(format!("{} takes no on_cancel", s.id())),
        }
    }

    /// Calls strategy `s`'s operation for `r`.
    pub async fn call(&self, s: Strategy, r: &Req) -> Got {
        match s {
            Strategy::DedupClaim => classify(observe(self.dedup_claim(r)).await),
            Strategy::DistributedLock => classify(observe(self.distributed_lock(r)).await),
            Strategy::Token => classify(observe(self.token(r)).await),
            _ => Got::Other(format!("{} does not run on a key-value store", s.id())),
        }
    }
}

/// The ledger key of strategy `s`'s effects on key `k` in a key-value store.
fn effect_key(s: Strategy, k: &str) -> String {
    format!("{}:{k}", s.id())
}

/// An open backend.
pub enum Db {
    /// PostgreSQL.
    Pg(sqlx::PgPool),
    /// MySQL/MariaDB.
    My(sqlx::MySqlPool),
    /// SQLite.
    Lite(sqlx::SqlitePool),
    /// Redis, standalone or Cluster.
    Redis(Kv<RedisStore>),
    /// The memory store.
    Memory(Kv<MemoryStore>),
}

/// One backend's operations with their pause points: what a worker process (or a test, in
/// process) calls.
pub struct Svc {
    /// Which backend.
    pub backend: Backend,
    /// Its URL (`memory` for the memory store).
    pub url: String,
    /// The pool or store.
    pub db: Db,
    /// The pause points of every operation of this service.
    pub pause: Arc<Pause>,
    /// Session ids of the pool's connections (PostgreSQL backend pids, MariaDB connection
    /// ids), recorded as they connect, for [`kill_sessions`](Svc::kill_sessions).
    pub sessions: Arc<Mutex<Vec<i64>>>,
}

/// How to open a [`Svc`].
#[derive(Debug, Clone, Copy)]
pub struct Open {
    /// Pool size (SQL).
    pub max_connections: u32,
    /// How long a call waits for a pooled connection (SQL).
    pub acquire_timeout: Duration,
}

impl Default for Open {
    fn default() -> Open {
        Open {
            max_connections: 4,
            acquire_timeout: Duration::from_secs(30),
        }
    }
}

impl Svc {
    /// Opens the backend at `url` (`postgres://…`, `mysql://…`, `sqlite://<path>`,
    /// `redis://…`, `redis-cluster://<host:port>,…`, `memory`) with `pause`. Does not create tables: see [`setup`](Svc::setup).
    pub async fn open(url: &str, pause: Pause, how: Open) -> Result<Svc, String> {
        let backend = Backend::of_url(url).ok_or_else(|| format!("unknown backend URL {url}"))?;
        let pause = Arc::new(pause);
        let sessions: Arc<Mutex<Vec<i64>>> = Arc::default();
        let db = match backend {
            Backend::PostgreSql => {
                let ids = sessions.clone();
                Db::Pg(
                    sqlx::postgres::PgPoolOptions::new()
                        .max_connections(how.max_connections)
                        .acquire_timeout(how.acquire_timeout)
                        .after_connect(move |conn, _| {
                            let ids = ids.clone();
                            Box::pin(async move {
                                let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                                    .fetch_one(&mut *conn)
                                    .await?;
                                push(&ids, i64::from(pid));
                                Ok(())
                            })
                        })
                        .connect(url)
                        .await
                        .map_err(|e| format!("connect to {url}: {e}"))?,
                )
            }
            Backend::MariaDb => {
                let ids = sessions.clone();
                Db::My(
                    sqlx::mysql::MySqlPoolOptions::new()
                        .max_connections(how.max_connections)
                        .acquire_timeout(how.acquire_timeout)
                        .after_connect(move |conn, _| {
                            let ids = ids.clone();
                            Box::pin(async move {
                                let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
                                    .fetch_one(&mut *conn)
                                    .await?;
                                push(&ids, i64::try_from(id).unwrap_or(i64::MAX));
                                Ok(())
                            })
                        })
                        .connect(url)
                        .await
                        .map_err(|e| format!("connect to {url}: {e}"))?,
                )
            }
            Backend::SqliteFile => {
                let path = url.trim_start_matches("sqlite://");
                let opts = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .busy_timeout(Duration::from_secs(30));
                Db::Lite(
                    SqlitePoolOptions::new()
                        .max_connections(how.max_connections)
                        .acquire_timeout(how.acquire_timeout)
                        .connect_with(opts)
                        .await
                        .map_err(|e| format!("open {path}: {e}"))?,
                )
            }
            Backend::Redis => {
                let store = RedisStore::connect(url)
                    .await
                    .map_err(|e| format!("connect to {url}: {e}"))?;
                let client = redis::Client::open(url).map_err(|e| format!("{url}: {e}"))?;
                let conn = redis::aio::ConnectionManager::new(client)
                    .await
                    .map_err(|e| format!("connect the ledger to {url}: {e}"))?;
                Db::Redis(Kv {
                    store,
                    ledger: KvLedger::Redis(conn),
                    pause: pause.clone(),
                })
            }
            Backend::RedisCluster => {
                let nodes = cluster_nodes(url);
                let store = RedisStore::connect_cluster(&nodes)
                    .await
                    .map_err(|e| format!("connect to {url}: {e}"))?;
                let conn = redis::cluster::ClusterClient::new(nodes)
                    .map_err(|e| format!("{url}: {e}"))?
                    .get_async_connection()
                    .await
                    .map_err(|e| format!("connect the ledger to {url}: {e}"))?;
                Db::Redis(Kv {
                    store,
                    ledger: KvLedger::Cluster(conn),
                    pause: pause.clone(),
                })
            }
            Backend::Memory => Db::Memory(Kv {
                store: MemoryStore::new(),
                ledger: KvLedger::Memory(Mutex::default()),
                pause: pause.clone(),
            }),
        };
        Ok(Svc {
            backend,
            url: url.to_owned(),
            db,
            pause,
            sessions,
        })
    }

    /// Counts this service's effects in this process instead of on the store (Redis): for a
    /// test that restarts the store, which may forget its own counters.
    pub fn count_in_memory(&mut self) {
        if let Db::Redis(kv) = &mut self.db {
            kv.ledger = KvLedger::Memory(Mutex::default());
        }
    }

    /// Migrates the record table and creates the matrix's tables (SQL backends).
    pub async fn setup(&self) -> Result<(), String> {
        match &self.db {
            Db::Pg(db) => pg::setup(db, self.backend).await,
            Db::My(db) => my::setup(db, self.backend).await,
            Db::Lite(db) => lite::setup(db, self.backend).await,
            Db::Redis(_) | Db::Memory(_) => Ok(()),
        }
    }

    /// A request on a key no other call used, prepared for strategy `s`: its business row
    /// created, or (for `token`) carrying a freshly issued token.
    pub async fn fresh(&self, s: Strategy) -> Result<Req, String> {
        let id = match (&self.db, s) {
            (Db::Redis(kv), Strategy::Token) => issue_token(&kv.store, Duration::from_secs(3600))
                .await
                .map_err(|e| format!("issue a token: {e}"))?,
            (Db::Memory(kv), Strategy::Token) => issue_token(&kv.store, Duration::from_secs(3600))
                .await
                .map_err(|e| format!("issue a token: {e}"))?,
            _ => unique("fm"),
        };
        let r = req(TENANT, &id, 0);
        let prepared = match &self.db {
            Db::Pg(db) => pg::prepare(db, s, &id).await,
            Db::My(db) => my::prepare(db, s, &id).await,
            Db::Lite(db) => lite::prepare(db, s, &id).await,
            Db::Redis(_) | Db::Memory(_) => Ok(()),
        };
        prepared.map_err(|e| format!("prepare {} for {}: {e}", id, s.id()))?;
        Ok(r)
    }

    /// Calls strategy `s`'s operation for `r` and classifies what it returned.
    pub async fn call(&self, s: Strategy, r: &Req) -> Got {
        let p = &*self.pause;
        match &self.db {
            Db::Pg(db) => pg::call(db, s, r, p).await,
            Db::My(db) => my::call(db, s, r, p).await,
            Db::Lite(db) => lite::call(db, s, r, p).await,
            Db::Redis(kv) => kv.call(s, r).await,
            Db::Memory(kv) => kv.call(s, r).await,
        }
    }

    /// Calls claim-mode strategy `s`'s `on_cancel = "release"` operation (30 s lease) for `r`.
    pub async fn call_releasing(&self, s: Strategy, r: &Req) -> Got {
        let p = &*self.pause;
        match &self.db {
            Db::Pg(db) => pg::call_releasing(db, s, r, p).await,
            Db::My(db) => my::call_releasing(db, s, r, p).await,
            Db::Lite(db) => lite::call_releasing(db, s, r, p).await,
            Db::Redis(kv) => kv.call_releasing(s, r).await,
            Db::Memory(kv) => kv.call_releasing(s, r).await,
        }
    }

    /// The effects strategy `s`'s operation wrote for `r`, by any process.
    pub async fn effects(&self, s: Strategy, r: &Req) -> Result<i64, String> {
        let err = |e: sqlx::Error| format!("count effects: {e}");
        match &self.db {
            Db::Pg(db) => pg::effects(db, s, &r.id).await.map_err(err),
            Db::My(db) => my::effects(db, s, &r.id).await.map_err(err),
            Db::Lite(db) => lite::effects(db, s, &r.id).await.map_err(err),
            Db::Redis(kv) => kv.ledger.count(&effect_key(s, &r.id)).await,
            Db::Memory(kv) => kv.ledger.count(&effect_key(s, &r.id)).await,
        }
    }

    /// Kills every server session this service's pool has opened so far, from a connection of
    /// its own (`pg_terminate_backend`, MariaDB `KILL`); returns how many it killed.
    pub async fn kill_sessions(&self) -> Result<usize, String> {
        use sqlx::Connection;
        let ids: Vec<i64> = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let err = |e: sqlx::Error| format!("kill sessions: {e}");
        match self.backend {
            Backend::PostgreSql => {
                let mut admin = sqlx::PgConnection::connect(&self.url).await.map_err(err)?;
                let mut n = 0;
                for id in &ids {
                    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
                        .bind(i32::try_from(*id).unwrap_or(0))
                        .fetch_one(&mut admin)
                        .await
                        .map_err(err)?;
                    n += usize::from(killed);
                }
                Ok(n)
            }
            Backend::MariaDb => {
                let mut admin = sqlx::MySqlConnection::connect(&self.url)
                    .await
                    .map_err(err)?;
                let mut n = 0;
                for id in &ids {
                    // Unknown thread (1094): the session is gone already.
                    if sqlx::query(sqlx::AssertSqlSafe(format!("KILL {id}")))
                        .execute(&mut admin)
                        .await
                        .is_ok()
                    {
                        n += 1;
                    }
                }
                Ok(n)
            }
            other => Err(format!("{} has no server sessions to kill", other.id())),
        }
    }
}

/// The `redis-cluster://` URL of the nodes at `urls` (`redis://host:port`).
pub fn cluster_url(urls: &[String]) -> String {
    let hosts: Vec<&str> = urls
        .iter()
        .map(|u| u.trim_start_matches("redis://").trim_end_matches('/'))
        .collect();
    format!("redis-cluster://{}", hosts.join(","))
}

/// The node URLs (`redis://host:port`) of a `redis-cluster://` URL.
pub fn cluster_nodes(url: &str) -> Vec<String> {
    url.trim_start_matches("redis-cluster://")
        .split(',')
        .filter(|h| !h.is_empty())
        .map(|h| format!("redis://{h}"))
        .collect()
}

fn push(ids: &Mutex<Vec<i64>>, id: i64) {
    ids.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(id);
}
