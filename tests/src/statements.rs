//! Counting what a database runs for one call, as the database (or its library) reports it, on
//! a pool of one connection so that everything the call sends goes through the counted
//! session:
//!
//! - PostgreSQL: [`PgWire`], a loopback proxy in front of the server that reads the server's
//!   replies: one `CommandComplete` per statement run (its tag: `SELECT 1`, `BEGIN`, …), one
//!   `ReadyForQuery` per round trip, whose transaction status says whether the session is in a
//!   transaction block.
//! - MariaDB/MySQL: [`MySqlSession`], the server's own session counters (`SHOW SESSION STATUS`:
//!   `Questions`, `Com_begin`, `Com_commit`, `Com_rollback`).
//! - SQLite: [`SqliteTrace`], the library's statement trace (`sqlite3_trace_v2`,
//!   `SQLITE_TRACE_STMT`: every statement started, with its text) and its commit and rollback
//!   hooks (every transaction that ends, explicit or not; a read-only statement outside a
//!   transaction fires neither).
//!
//! Each pool has `test_before_acquire(false)`, so the pool's own liveness ping is not counted.

use std::collections::BTreeMap;
use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{MySqlPool, PgPool, SqlitePool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::backends::{MYSQL_ENV, POSTGRES_ENV, server_url};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ------------------------------------------------------------------------------ PostgreSQL

/// What the PostgreSQL server answered through a [`PgWire`] proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PgLog {
    /// The tag of every statement that completed (`SELECT 1`, `BEGIN`, `INSERT 0 1`,
    /// `ROLLBACK`…), and `ERROR` for every error reply, in order.
    pub commands: Vec<String>,
    /// Round trips: `ReadyForQuery` messages ending a reply with something in it (each simple
    /// query, each `Sync` after extended-protocol messages). One that answers a bare `Sync` is
    /// not counted: that is sqlx's ping of every connection returned to its pool, run in a task
    /// of its own after the caller is done with the connection.
    pub round_trips: usize,
    /// Transaction blocks opened: `ReadyForQuery` reporting "in a transaction" (or a failed
    /// one) after one reporting "idle".
    pub transactions: usize,
}

impl PgLog {
    /// What was answered after `earlier` (an earlier snapshot of the same log).
    pub fn since(&self, earlier: &PgLog) -> PgLog {
        PgLog {
            commands: self.commands[earlier.commands.len()..].to_vec(),
            round_trips: self.round_trips - earlier.round_trips,
            transactions: self.transactions - earlier.transactions,
        }
    }
}

/// A loopback TCP proxy in front of the PostgreSQL server of `IDEMPOTENT_POSTGRES_URL` that
/// forwards both directions untouched and parses the server's replies into a [`PgLog`].
/// The proxy runs as long as the test's runtime.
pub struct PgWire {
    log: Arc<Mutex<PgLog>>,
    options: PgConnectOptions,
}

impl PgWire {
    /// Starts the proxy, or `None` when PostgreSQL is skipped (panics under `CI=true`).
    pub async fn start() -> Option<PgWire> {
        let url = server_url(POSTGRES_ENV, "PostgreSQL")?;
        let server = PgConnectOptions::from_str(&url).expect("a PostgreSQL URL");
        let upstream = format!("{}:{}", server.get_host(), server.get_port());
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a proxy");
        let addr: SocketAddr = listener.local_addr().expect("the proxy's address");
        let log = Arc::new(Mutex::new(PgLog::default()));
        tokio::spawn({
            let log = log.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let upstream = upstream.clone();
                    let log = log.clone();
                    tokio::spawn(async move {
                        if let Ok(server) = TcpStream::connect(&upstream).await {
                            relay(client, server, log).await;
                        }
                    });
                }
            }
        });
        // Plain text, so the replies can be read: no TLS between the pool and the proxy.
        let options = server
            .host("127.0.0.1")
            .port(addr.port())
            .ssl_mode(PgSslMode::Disable);
        Some(PgWire { log, options })
    }

    /// A pool of one connection through the proxy, with the idempotency-record table migrated.
    pub async fn pool(&self) -> PgPool {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(self.options.clone())
            .await
            .expect("connect through the proxy");
        idempotent_runtime::migrate(&pool)
            .await
            .expect("migrate postgres");
        pool
    }

    /// Everything answered so far.
    pub fn snapshot(&self) -> PgLog {
        lock(&self.log).clone()
    }
}

/// Copies `client` → `server` as it is, and `server` → `client` while parsing the server's
/// messages (type byte, 4-byte big-endian length that counts itself, body).
async fn relay(client: TcpStream, server: TcpStream, log: Arc<Mutex<PgLog>>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upward = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        let _ = server_write.shutdown().await;
    });
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut idle = true;
    // Messages since the last `ReadyForQuery`.
    let mut answered = 0;
    loop {
        let n = match server_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let mut at = 0;
        while pending.len() - at >= 5 {
            let len = u32::from_be_bytes([
                pending[at + 1],
                pending[at + 2],
                pending[at + 3],
                pending[at + 4],
            ]) as usize;
            if pending.len() - at < 1 + len {
                break;
            }
            let body = &pending[at + 5..at + 1 + len];
            let mut log = lock(&log);
            match pending[at] {
                b'C' => log.commands.push(
                    String::from_utf8_lossy(body.split(|b| *b == 0).next().unwrap_or_default())
                        .into_owned(),
                ),
                b'E' => log.commands.push("ERROR".to_owned()),
                b'Z' => {
                    if answered > 0 {
                        log.round_trips += 1;
                    }
                    answered = 0;
                    let now_idle = body.first() == Some(&b'I');
                    if idle && !now_idle {
                        log.transactions += 1;
                    }
                    idle = now_idle;
                }
                _ => {}
            }
            if pending[at] != b'Z' {
                answered += 1;
            }
            at += 1 + len;
        }
        pending.drain(..at);
        if client_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    upward.abort();
}

// ----------------------------------------------------------------------------- MariaDB

/// A MariaDB/MySQL pool of one connection and that session's own counters.
pub struct MySqlSession {
    /// The pool: one connection, whose session the counters describe.
    pub pool: MySqlPool,
}

/// The session counters [`MySqlSession::counters`] reads.
const COUNTERS: &str = "SHOW SESSION STATUS WHERE Variable_name IN ('Questions', 'Com_begin', 'Com_commit', 'Com_rollback', 'Com_select', 'Com_stmt_execute', 'Com_show_status')";

impl MySqlSession {
    /// Connects, or `None` when MariaDB/MySQL is skipped (panics under `CI=true`).
    pub async fn connect() -> Option<MySqlSession> {
        let url = server_url(MYSQL_ENV, "MySQL/MariaDB")?;
        let options = MySqlConnectOptions::from_str(&url).expect("a MySQL URL");
        let pool = MySqlPoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .expect("connect to MySQL");
        idempotent_runtime::migrate(&pool)
            .await
            .expect("migrate mysql");
        Some(MySqlSession { pool })
    }

    /// The session's counters (`Questions`, `Com_begin`, …) by name. Reading them is itself a
    /// statement: see [`MySqlSession::overhead`].
    pub async fn counters(&self) -> BTreeMap<String, u64> {
        let rows: Vec<(String, String)> = sqlx::query_as(COUNTERS)
            .fetch_all(&self.pool)
            .await
            .expect("SHOW SESSION STATUS");
        rows.into_iter()
            .map(|(name, value)| (name, value.parse().unwrap_or(0)))
            .collect()
    }

    /// `after - before - overhead`, counter by counter: what the session ran between two
    /// readings, without the second reading itself when `overhead` is
    /// [`MySqlSession::overhead`].
    pub fn between(
        before: &BTreeMap<String, u64>,
        after: &BTreeMap<String, u64>,
        overhead: &BTreeMap<String, u64>,
    ) -> BTreeMap<String, u64> {
        after
            .iter()
            .map(|(name, value)| {
                let d = value
                    - before.get(name).copied().unwrap_or(0)
                    - overhead.get(name).copied().unwrap_or(0);
                (name.clone(), d)
            })
            .collect()
    }

    /// What one reading of the counters adds to them (one `SHOW STATUS`: a question and a
    /// `Com_show_status`), measured by two readings in a row once the reading is prepared.
    pub async fn overhead(&self) -> BTreeMap<String, u64> {
        self.counters().await;
        let a = self.counters().await;
        let b = self.counters().await;
        Self::between(&a, &b, &BTreeMap::new())
    }
}

// ------------------------------------------------------------------------------ SQLite

/// What a SQLite connection ran, from the library's trace and hooks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SqliteLog {
    /// The text of every statement started, in order.
    pub statements: Vec<String>,
    /// Transactions committed (explicit or a writing statement's own).
    pub commits: usize,
    /// Transactions rolled back.
    pub rollbacks: usize,
}

impl SqliteLog {
    /// What ran after `earlier` (an earlier snapshot of the same log).
    pub fn since(&self, earlier: &SqliteLog) -> SqliteLog {
        SqliteLog {
            statements: self.statements[earlier.statements.len()..].to_vec(),
            commits: self.commits - earlier.commits,
            rollbacks: self.rollbacks - earlier.rollbacks,
        }
    }
}

/// A SQLite pool of one connection on a fresh temporary file (WAL) whose statements and
/// transactions are logged by the library itself.
pub struct SqliteTrace {
    /// The pool: one connection, traced.
    pub pool: SqlitePool,
    log: Arc<Mutex<SqliteLog>>,
    /// The file's directory, removed on drop; [`SqliteTrace::options`] opens more connections
    /// on the same file.
    pub dir: tempfile::TempDir,
}

/// `sqlite3_trace_v2`'s callback for `SQLITE_TRACE_STMT`: `ctx` is the connection's
/// `Mutex<SqliteLog>`, `x` the statement's text (nul-terminated).
unsafe extern "C" fn on_statement(
    _event: c_uint,
    ctx: *mut c_void,
    _statement: *mut c_void,
    x: *mut c_void,
) -> c_int {
    if ctx.is_null() || x.is_null() {
        return 0;
    }
    // SAFETY: `ctx` is the pointer `SqliteTrace::open` leaked from an `Arc<Mutex<SqliteLog>>`,
    // never freed; SQLite passes the statement's nul-terminated text as `x` for this event.
    let (log, text) = unsafe {
        (
            &*(ctx as *const Mutex<SqliteLog>),
            CStr::from_ptr(x as *const c_char),
        )
    };
    lock(log)
        .statements
        .push(text.to_string_lossy().into_owned());
    0
}

impl SqliteTrace {
    /// Opens the traced pool, with the idempotency-record table migrated. A busy writer makes
    /// its statements wait at most `busy_timeout`.
    pub async fn open(busy_timeout: Duration) -> SqliteTrace {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = Arc::new(Mutex::new(SqliteLog::default()));
        let options = Self::file_options(&dir, busy_timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .after_connect({
                let log = log.clone();
                move |conn, _| {
                    let log = log.clone();
                    Box::pin(async move {
                        let mut handle = conn.lock_handle().await?;
                        handle.set_commit_hook({
                            let log = log.clone();
                            move || {
                                lock(&log).commits += 1;
                                true
                            }
                        });
                        handle.set_rollback_hook({
                            let log = log.clone();
                            move || lock(&log).rollbacks += 1
                        });
                        // The trace keeps one reference for as long as the connection may
                        // call it: leaked, never freed (a test's connection, a few bytes).
                        let ctx = Arc::into_raw(log) as *mut c_void;
                        // SAFETY: the handle is this connection's open database, locked for
                        // the call; `on_statement` matches the callback type and `ctx` stays
                        // valid forever.
                        unsafe {
                            libsqlite3_sys::sqlite3_trace_v2(
                                handle.as_raw_handle().as_ptr(),
                                libsqlite3_sys::SQLITE_TRACE_STMT as c_uint,
                                Some(on_statement),
                                ctx,
                            );
                        }
                        Ok(())
                    })
                }
            })
            .connect_with(options)
            .await
            .expect("open sqlite");
        idempotent_runtime::migrate(&pool)
            .await
            .expect("migrate sqlite");
        SqliteTrace { pool, log, dir }
    }

    fn file_options(dir: &tempfile::TempDir, busy_timeout: Duration) -> SqliteConnectOptions {
        SqliteConnectOptions::new()
            .filename(dir.path().join("traced.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(busy_timeout)
    }

    /// Options for more (untraced) connections on the same file.
    pub fn options(&self, busy_timeout: Duration) -> SqliteConnectOptions {
        Self::file_options(&self.dir, busy_timeout)
    }

    /// Everything run so far.
    pub fn snapshot(&self) -> SqliteLog {
        lock(&self.log).clone()
    }
}
