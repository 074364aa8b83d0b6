//! Redis servers the suite owns: [`RedisServer`] (one `redis-server` on a free loopback port,
//! which tests can stop and restart to simulate outages), [`RedisCluster`] (3 masters joined
//! with `redis-cli --cluster create`), [`free_port`], and the throwaway standalone server and
//! cluster each test binary starts when no URL names one.

use std::time::Duration;

use crate::backends::{REDIS_CLUSTER_ENV, ci};

/// The cluster's node URLs (see [`redis_cluster`](crate::redis_cluster)).
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
    config_file: Option<std::path::PathBuf>,
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
            config_file: None,
            child: None,
        };
        server.spawn();
        server
    }

    /// Like [`start`](Self::start), but first writes `config` to `redis.conf` in the server's
    /// temporary directory and passes that file as the first argument (`redis-server <conf>
    /// --sentinel …`): for servers that need a config file, which Sentinel rewrites.
    pub fn start_with_config(config: &str, extra: &[&str]) -> RedisServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_file = dir.path().join("redis.conf");
        std::fs::write(&config_file, config).expect("write redis.conf");
        let mut server = RedisServer {
            port: free_port(),
            args: extra.iter().map(|s| s.to_string()).collect(),
            dir,
            config_file: Some(config_file),
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let dir = self.dir.path().to_string_lossy().into_owned();
        let config_file = self
            .config_file
            .as_ref()
            .map(|f| f.to_string_lossy().into_owned());
        let mut args: Vec<&str> = config_file.as_deref().into_iter().collect();
        args.extend([
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
        ]);
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
    /// (its `dir` is this server's temporary directory, or its `config_file` is this server's
    /// config file: Sentinel has no `CONFIG GET`), not another test's.
    fn wait_answering(&self) {
        for _ in 0..200 {
            if self.cli(&["ping"]).trim() == "PONG" {
                if let Some(config_file) = &self.config_file {
                    let info = self.cli(&["INFO", "server"]);
                    let ours = config_file.to_string_lossy();
                    assert!(
                        info.lines()
                            .any(|l| l.strip_prefix("config_file:").map(str::trim) == Some(&ours)),
                        "port {} is answered by another redis-server (expected config {ours})",
                        self.port
                    );
                    return;
                }
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

    /// Commands the runtime's Lua scripts executed inside Redis (the [`SCRIPT_INTERNAL`]
    /// entries of `INFO commandstats`): the server-side work per call.
    pub fn script_commands_executed(&self) -> u64 {
        let info = self.cli(&["INFO", "commandstats"]);
        info.lines()
            .filter_map(|l| l.strip_prefix("cmdstat_"))
            .filter_map(|l| l.split_once(':'))
            .filter(|(name, _)| SCRIPT_INTERNAL.contains(name))
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

    /// Commands scripts executed on all nodes (see [`RedisServer::script_commands_executed`]).
    pub fn script_commands_executed(&self) -> u64 {
        self.nodes
            .iter()
            .map(RedisServer::script_commands_executed)
            .sum()
    }
}
