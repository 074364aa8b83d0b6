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

/// Runs each listed `async fn test(store)` on standalone Redis and on the suite's Redis Cluster,
/// as `redis::test` and `cluster::test` (multi-threaded tokio, 4 workers). A backend that is
/// unavailable returns early outside CI and fails under `CI=true` (see [`redis`]).
#[macro_export]
macro_rules! on_redis_backends {
    ($($test:ident),* $(,)?) => {
        mod redis {
            $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                let Some(store) = $crate::redis().await else { return };
                super::$test(store).await
            }
            )*
        }
        mod cluster {
            $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
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

// ------------------------------------------------------------------------------------ Redis

/// Environment variable naming the standalone Redis server for tests (`redis://127.0.0.1:6379`).
pub const REDIS_ENV: &str = "IDEMPOTENT_REDIS_URL";
/// Environment variable naming the nodes of a Redis Cluster for tests, comma-separated
/// (`redis://127.0.0.1:7000,redis://127.0.0.1:7001`). Unset: the suite starts its own
/// 3-master cluster with `redis-server --cluster-enabled yes` if `redis-server` is on PATH.
pub const REDIS_CLUSTER_ENV: &str = "IDEMPOTENT_REDIS_CLUSTER_URLS";

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

/// The cluster's node URLs (see [`redis_cluster`]).
pub fn cluster_urls() -> Option<Vec<String>> {
    if let Ok(urls) = std::env::var(REDIS_CLUSTER_ENV)
        && !urls.trim().is_empty()
    {
        return Some(urls.split(',').map(|u| u.trim().to_owned()).collect());
    }
    static SHARED: std::sync::OnceLock<Option<RedisCluster>> = std::sync::OnceLock::new();
    SHARED
        .get_or_init(|| {
            if !redis_server_on_path() {
                return None;
            }
            Some(RedisCluster::start(3))
        })
        .as_ref()
        .map(RedisCluster::urls)
}

/// The URL of the suite's own standalone `redis-server` (started once per test binary, stopped
/// when it exits), or `None` when `redis-server` is not on PATH. Not used under `CI=true`, where
/// `IDEMPOTENT_REDIS_URL` names the server.
pub fn throwaway_redis_url() -> Option<String> {
    if ci() {
        return None;
    }
    static SHARED: std::sync::OnceLock<Option<RedisServer>> = std::sync::OnceLock::new();
    SHARED
        .get_or_init(|| {
            let on_path = std::process::Command::new("redis-server")
                .arg("--version")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            on_path.then(|| RedisServer::start(&[]))
        })
        .as_ref()
        .map(RedisServer::url)
}

/// Whether `redis-server` and `redis-cli` can be run; panics under `CI=true` when not.
pub fn redis_server_on_path() -> bool {
    let ok = ["redis-server", "redis-cli"].iter().all(|bin| {
        std::process::Command::new(bin)
            .arg("--version")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !ok {
        if ci() {
            panic!("redis-server/redis-cli not on PATH and CI=true: the Redis Cluster is required");
        }
        eprintln!(
            "!!! SKIPPED: redis-server/redis-cli not on PATH; Redis Cluster tests do not run !!!"
        );
    }
    ok
}

/// A free loopback port `p` whose cluster bus port `p + 10000` is free too, never handed out
/// before in this test binary (as a port or as a bus port): tests start servers in parallel,
/// and a port released by one `free_port` call must not go to a second server.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = l.local_addr().expect("local addr").port();
        if port >= 55_000 {
            continue;
        }
        let mut handed_out = HANDED_OUT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let clashes = [port, port + 10_000, port.saturating_sub(10_000)]
            .iter()
            .any(|p| handed_out.contains(p));
        if !clashes && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            handed_out.insert(port);
            handed_out.insert(port + 10_000);
            return port;
        }
    }
}

/// A `redis-server` process the suite owns, on a loopback port, in a temporary directory.
///
/// It runs under `sh`, which kills it when its stdin closes: the server dies with the test
/// binary even when statics are never dropped. [`stop`](Self::stop) and
/// [`restart`](Self::restart) simulate outages.
pub struct RedisServer {
    /// The port it listens on.
    pub port: u16,
    args: Vec<String>,
    dir: tempfile::TempDir,
    child: Option<std::process::Child>,
}

impl RedisServer {
    /// Starts `redis-server` on a free port with `extra` arguments (`--cluster-enabled yes`,
    /// `--appendonly yes`, …) and waits until it answers `PING`.
    pub fn start(extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = RedisServer {
            port: free_port(),
            args: extra.iter().map(|s| s.to_string()).collect(),
            dir,
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let dir = self.dir.path().to_string_lossy().into_owned();
        let mut args = vec![
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--dir",
            &dir,
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            "redis.log",
        ];
        let has_aof = self.args.iter().any(|a| a == "--appendonly");
        if !has_aof {
            args.extend(["--appendonly", "no"]);
        }
        args.extend(self.args.iter().map(String::as_str));
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg(r#"redis-server "$@" & pid=$!; read _ignored; kill -9 $pid; wait $pid"#)
            .arg("sh")
            .args(&args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        self.wait_answering();
    }

    /// Waits until the port answers `PING`, then checks that the server answering is this one
    /// (its `dir` is this server's temporary directory), not another test's.
    fn wait_answering(&self) {
        for _ in 0..200 {
            if self.cli(&["ping"]).trim() == "PONG" {
                let dir = self.cli(&["config", "get", "dir"]);
                let ours = self.dir.path().to_string_lossy();
                assert!(
                    dir.lines().any(|line| line.trim() == ours),
                    "port {} is answered by another redis-server (dir {dir:?}, expected {ours})",
                    self.port
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server on port {} does not answer", self.port);
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (`SIGKILL`: an outage, not a clean shutdown) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            use std::io::Write as _;
            if let Some(stdin) = child.stdin.as_mut() {
                let _ = stdin.write_all(b"stop\n");
            }
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }

    /// [`stop`](Self::stop), then starts it again on the same port and directory (an AOF
    /// written with `--appendonly yes` is reloaded).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Runs `redis-cli -p <port> args…` and returns its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Commands clients sent to the server (round trips), from `INFO commandstats`.
    ///
    /// `INFO commandstats` also counts the commands a Lua script runs inside `EVAL`/`EVALSHA`;
    /// the idempotency store sends nothing but scripts, so the commands its scripts use
    /// internally ([`SCRIPT_INTERNAL`]) are left out, as is the `INFO` this count itself sends.
    pub fn commands_executed(&self) -> u64 {
        let info = self.cli(&["INFO", "commandstats"]);
        info.lines()
            .filter_map(|l| l.strip_prefix("cmdstat_"))
            .filter_map(|l| l.split_once(':'))
            .filter(|(name, _)| *name != "info" && !SCRIPT_INTERNAL.contains(name))
            .filter_map(|(_, rest)| rest.split("calls=").nth(1))
            .filter_map(|rest| rest.split(',').next())
            .filter_map(|n| n.parse::<u64>().ok())
            .sum()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The commands the runtime's Lua scripts run inside `EVALSHA` (counted by `INFO commandstats`
/// as if sent, though they cost no round trip).
pub const SCRIPT_INTERNAL: &[&str] = &[
    "get", "set", "del", "incr", "hmget", "hset", "hdel", "pexpire", "pttl", "exists", "time",
];

/// A Redis Cluster of `n` masters (no replicas) the suite owns: `n` [`RedisServer`]s with
/// `--cluster-enabled yes`, joined with `redis-cli --cluster create … --cluster-replicas 0
/// --cluster-yes`. Stopped when dropped (or when the test binary exits).
pub struct RedisCluster {
    /// The nodes.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts and joins the cluster, and waits until every node reports `cluster_state:ok`.
    pub fn start(n: usize) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..n)
            .map(|_| {
                RedisServer::start(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let out = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for _ in 0..400 {
            if nodes
                .iter()
                .all(|s| s.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
            {
                return RedisCluster { nodes };
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("the Redis Cluster on {addrs:?} never reached cluster_state:ok");
    }

    /// The nodes' URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Commands executed on all nodes (see [`RedisServer::commands_executed`]).
    pub fn commands_executed(&self) -> u64 {
        self.nodes.iter().map(RedisServer::commands_executed).sum()
    }
}

/// What one caller of a test service got: the outcome a test asserts per caller.
#[derive(Debug, Clone, PartialEq)]
pub enum Got {
    /// The body ran for this call.
    Executed(Receipt),
    /// An earlier call's stored response was replayed.
    Replayed(Receipt),
    /// `Error::InProgress`.
    InProgress,
    /// `Error::Duplicate`.
    Duplicate,
    /// Anything else, described.
    Other(String),
}

/// Classifies the result of `observe(call)` into a [`Got`].
pub fn classify(
    r: (
        Result<Receipt, AppError>,
        Option<idempotent_runtime::Disposition>,
    ),
) -> Got {
    use idempotent_runtime::{Disposition, Error};
    match r {
        (Ok(v), Some(Disposition::Executed)) => Got::Executed(v),
        (Ok(v), Some(Disposition::Replayed)) => Got::Replayed(v),
        (Err(AppError::Idempotency(Error::InProgress)), _) => Got::InProgress,
        (Err(AppError::Idempotency(Error::Duplicate)), _) => Got::Duplicate,
        (other, how) => Got::Other(format!("{other:?} / {how:?}")),
    }
}
