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
/// It runs under `sh` ([`supervised`](crate::supervised)): the server dies with the test
/// binary, and its directory is removed, even when statics are never dropped. [`stop`](Self::stop) and
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
        let child = crate::supervised::spawn("redis-server", &args, self.dir.path());
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

    /// Whether the server process runs (it was not [`stop`](Self::stop)ped).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (`SIGKILL`: an outage, not a clean shutdown) and waits for it to exit.
    pub fn stop(&mut self) {
        crate::supervised::stop(&mut self.child);
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

    /// Errors this server replied, by code (`MOVED`, `ASK`, `TRYAGAIN`, `NOSCRIPT`, …), from
    /// `INFO errorstats` (`errorstat_<CODE>:count=<n>`).
    pub fn error_stats(&self) -> std::collections::BTreeMap<String, u64> {
        self.cli(&["INFO", "errorstats"])
            .lines()
            .filter_map(|l| l.strip_prefix("errorstat_"))
            .filter_map(|l| l.split_once(':'))
            .filter_map(|(code, rest)| {
                let n = rest.strip_prefix("count=")?.split(',').next()?.trim();
                Some((code.to_owned(), n.parse().ok()?))
            })
            .collect()
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
        Self::start_with(n, &[])
    }

    /// [`start`](Self::start) with `extra` arguments for every node after the defaults
    /// (`--cluster-node-timeout 5000`); a later argument wins, so
    /// `["--cluster-node-timeout", "1000", "--cluster-require-full-coverage", "no"]` overrides.
    pub fn start_with(n: usize, extra: &[&str]) -> RedisCluster {
        let mut args = vec![
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "5000",
        ];
        args.extend_from_slice(extra);
        let nodes: Vec<RedisServer> = (0..n).map(|_| RedisServer::start(&args)).collect();
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
        let cluster = RedisCluster { nodes };
        assert!(
            cluster.wait_state("ok", Duration::from_secs(10)),
            "the Redis Cluster on {addrs:?} never reached cluster_state:ok"
        );
        cluster
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

    /// Waits up to `within` until every running node reports `cluster_state:<state>` (`ok` or
    /// `fail`); `false` when it did not happen in time.
    pub fn wait_state(&self, state: &str, within: Duration) -> bool {
        let want = format!("cluster_state:{state}");
        let started = std::time::Instant::now();
        loop {
            if self
                .nodes
                .iter()
                .filter(|s| s.running())
                .all(|s| s.cli(&["CLUSTER", "INFO"]).contains(&want))
            {
                return true;
            }
            if started.elapsed() > within {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A running node to ask about the cluster.
    fn any_running(&self) -> &RedisServer {
        self.nodes
            .iter()
            .find(|s| s.running())
            .expect("no node of the cluster is running")
    }

    /// The cluster node id of node `i` (`CLUSTER MYID`).
    pub fn node_id(&self, i: usize) -> String {
        let id = self.nodes[i].cli(&["CLUSTER", "MYID"]).trim().to_owned();
        assert_eq!(id.len(), 40, "CLUSTER MYID on node {i}: {id:?}");
        id
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT` on a running node).
    pub fn keyslot(&self, key: &str) -> u16 {
        let out = self.any_running().cli(&["CLUSTER", "KEYSLOT", key]);
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("CLUSTER KEYSLOT {key}: {out:?}"))
    }

    /// The hash slot of every Redis key of the storage key `key` (`idem:{<hex>}:…`; the hash
    /// tag puts them all in one slot).
    pub fn slot_of(&self, key: &idempotent_runtime::StorageKey) -> u16 {
        self.keyslot(&format!("idem:{{{}}}:rec", key.hex()))
    }

    /// Which node (index into [`nodes`](Self::nodes)) serves `slot`, as a running node's
    /// `CLUSTER NODES` says (a slot being migrated counts as its source's until the migration
    /// ends).
    pub fn node_serving(&self, slot: u16) -> usize {
        self.slot_owners()[usize::from(slot)]
            .unwrap_or_else(|| panic!("no node serves slot {slot}"))
    }

    /// For each of the 16384 slots, the node (index into [`nodes`](Self::nodes)) that serves
    /// it, from one `CLUSTER NODES` on a running node; `None` for an unassigned slot.
    pub fn slot_owners(&self) -> Vec<Option<usize>> {
        let mut owners = vec![None; 16384];
        let table = self.any_running().cli(&["CLUSTER", "NODES"]);
        for line in table.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                continue;
            }
            let port: u16 = fields[1]
                .split(['@', ','])
                .next()
                .and_then(|addr| addr.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("CLUSTER NODES address {:?}", fields[1]));
            let Some(node) = self.nodes.iter().position(|s| s.port == port) else {
                panic!("port {port} is not a node of this cluster: {table}");
            };
            // Slot ranges (`0-5460`) or single slots; `[slot->-id]` entries mark migrations.
            for range in fields[8..].iter().filter(|r| !r.starts_with('[')) {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                let (lo, hi): (usize, usize) = (
                    lo.parse().expect("slot number"),
                    hi.parse().expect("slot number"),
                );
                for owner in &mut owners[lo..=hi] {
                    *owner = Some(node);
                }
            }
        }
        owners
    }

    /// The flags of node `i` (`master`, `master,fail?`, `master,fail`, …) in the `CLUSTER
    /// NODES` of running node `observer`.
    pub fn node_flags(&self, observer: usize, i: usize) -> String {
        let id = self.node_id_seen_by(observer, i);
        let table = self.nodes[observer].cli(&["CLUSTER", "NODES"]);
        table
            .lines()
            .find(|l| l.starts_with(&id))
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or_else(|| panic!("node {i} ({id}) not in {table}"))
            .to_owned()
    }

    /// Node `i`'s id, read from `observer`'s `CLUSTER NODES` by port (works when `i` is
    /// down).
    fn node_id_seen_by(&self, observer: usize, i: usize) -> String {
        let port = format!("127.0.0.1:{}@", self.nodes[i].port);
        let table = self.nodes[observer].cli(&["CLUSTER", "NODES"]);
        table
            .lines()
            .find(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|a| a.starts_with(&port))
            })
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("node {i} ({port}) not in {table}"))
            .to_owned()
    }

    /// Errors the running nodes replied, summed by code (`MOVED`, `ASK`, `TRYAGAIN`,
    /// `NOSCRIPT`, `CLUSTERDOWN`, …), from `INFO errorstats`.
    pub fn error_stats(&self) -> std::collections::BTreeMap<String, u64> {
        let mut sum = std::collections::BTreeMap::new();
        for node in self.nodes.iter().filter(|s| s.running()) {
            for (code, n) in node.error_stats() {
                *sum.entry(code).or_insert(0) += n;
            }
        }
        sum
    }

    /// Kills node `i` (`SIGKILL`, see [`RedisServer::stop`]).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].stop();
    }

    /// `SCRIPT FLUSH` on node `i`: it forgets every cached Lua script (the next `EVALSHA` of
    /// one gets `NOSCRIPT`).
    pub fn script_flush(&self, i: usize) {
        let out = self.nodes[i].cli(&["SCRIPT", "FLUSH"]);
        assert_eq!(out.trim(), "OK", "SCRIPT FLUSH on node {i}: {out:?}");
    }

    /// Moves `slot` from node `from` to node `to` with the standard procedure:
    /// [`begin_migration`](Self::begin_migration), [`move_keys`](Self::move_keys),
    /// [`finish_migration`](Self::finish_migration). Returns the number of keys moved.
    pub fn migrate_slot(&self, slot: u16, from: usize, to: usize) -> usize {
        self.begin_migration(slot, from, to);
        let moved = self.move_keys(slot, from, to);
        self.finish_migration(slot, from, to);
        moved
    }

    /// Opens the migration of `slot`: `CLUSTER SETSLOT <slot> IMPORTING <from-id>` on `to`,
    /// then `MIGRATING <to-id>` on `from`. From here until
    /// [`finish_migration`](Self::finish_migration), `from` answers a command on a missing key
    /// of the slot with `ASK`, a multi-key command it has only some keys of with `TRYAGAIN`,
    /// and `to` serves `ASKING` clients (multi-key commands only when it has every key).
    pub fn begin_migration(&self, slot: u16, from: usize, to: usize) {
        let slot_s = slot.to_string();
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        let out = self.nodes[to].cli(&["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", &from_id]);
        assert_eq!(
            out.trim(),
            "OK",
            "SETSLOT {slot} IMPORTING on node {to}: {out:?}"
        );
        let out = self.nodes[from].cli(&["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", &to_id]);
        assert_eq!(
            out.trim(),
            "OK",
            "SETSLOT {slot} MIGRATING on node {from}: {out:?}"
        );
    }

    /// Moves every key of `slot` from node `from` to node `to` (`CLUSTER GETKEYSINSLOT`, then
    /// `MIGRATE <host> <port> "" 0 5000 KEYS …`, until `from` has none left); returns how many
    /// were moved. Call between [`begin_migration`](Self::begin_migration) and
    /// [`finish_migration`](Self::finish_migration).
    pub fn move_keys(&self, slot: u16, from: usize, to: usize) -> usize {
        let slot_s = slot.to_string();
        let port = self.nodes[to].port.to_string();
        let mut moved = 0;
        loop {
            let listed = self.nodes[from].cli(&["CLUSTER", "GETKEYSINSLOT", &slot_s, "100"]);
            let keys: Vec<&str> = listed.split_whitespace().collect();
            if keys.is_empty() {
                return moved;
            }
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(&keys);
            let out = self.nodes[from].cli(&args);
            assert!(
                matches!(out.trim(), "OK" | "NOKEY"),
                "MIGRATE of {keys:?} from node {from} to node {to}: {out:?}"
            );
            moved += keys.len();
        }
    }

    /// Closes the migration of `slot`: `CLUSTER SETSLOT <slot> NODE <to-id>` on `to`, on
    /// `from`, then on every other running node (so no node's map lags behind gossip).
    pub fn finish_migration(&self, slot: u16, from: usize, to: usize) {
        let slot_s = slot.to_string();
        let to_id = self.node_id(to);
        let others = (0..self.nodes.len()).filter(|&i| i != from && i != to);
        for i in [to, from].into_iter().chain(others) {
            if !self.nodes[i].running() {
                continue;
            }
            let out = self.nodes[i].cli(&["CLUSTER", "SETSLOT", &slot_s, "NODE", &to_id]);
            assert_eq!(out.trim(), "OK", "SETSLOT {slot} NODE on node {i}: {out:?}");
        }
    }
}

/// What a Redis deployment the suite owns has run, from `INFO commandstats` on every node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Commands {
    /// Commands clients sent (round trips): for the idempotency store, its scripts
    /// ([`RedisServer::commands_executed`]).
    pub sent: u64,
    /// Commands those scripts executed inside Redis
    /// ([`RedisServer::script_commands_executed`]).
    pub inside: u64,
}

/// A deployment whose [`Commands`] can be read: [`RedisServer`] and [`RedisCluster`].
pub trait CountCommands {
    /// The commands run so far.
    fn commands(&self) -> Commands;
}

impl CountCommands for RedisServer {
    fn commands(&self) -> Commands {
        Commands {
            sent: self.commands_executed(),
            inside: self.script_commands_executed(),
        }
    }
}

impl CountCommands for RedisCluster {
    fn commands(&self) -> Commands {
        Commands {
            sent: self.commands_executed(),
            inside: self.script_commands_executed(),
        }
    }
}

/// How many distinct keys a round-trip test warms up with before it counts: the first use of
/// each script on a node loads it there (`EVALSHA` → `NOSCRIPT` → `EVAL`), and 60 random keys
/// reach every node of a 3-master Cluster but with probability 3·(2/3)^60 ≈ 10^-10.
pub const WARM_KEYS: usize = 60;

/// Awaits `call` and returns its output with the [`Commands`] it cost on `servers`.
pub async fn counting<F: std::future::Future>(
    servers: &impl CountCommands,
    call: F,
) -> (F::Output, Commands) {
    let before = servers.commands();
    let out = call.await;
    let after = servers.commands();
    let cost = Commands {
        sent: after.sent - before.sent,
        inside: after.inside - before.inside,
    };
    (out, cost)
}

/// Asserts the cost of a fresh call and of its replay: at most 2 scripts and `fresh_inside`
/// commands inside Redis for the fresh call, 1 script and `replay_inside` for the replay.
pub fn assert_round_trips(
    fresh: Commands,
    replay: Commands,
    fresh_inside: u64,
    replay_inside: u64,
) {
    assert!(fresh.sent <= 2, "a fresh call cost {} commands", fresh.sent);
    assert!(replay.sent <= 1, "a replay cost {} commands", replay.sent);
    assert!(
        fresh.inside <= fresh_inside,
        "a fresh call executed {} commands inside Redis",
        fresh.inside
    );
    assert!(
        replay.inside <= replay_inside,
        "a replay executed {} commands inside Redis",
        replay.inside
    );
}

/// A store on a standalone `redis-server` of its own (so that no other test's commands or
/// outages touch it), with the server; `None` when `redis-server` is not on PATH (a panic under
/// `CI=true`, see [`redis_server_on_path`]).
pub async fn private_redis() -> Option<(RedisServer, idempotent_runtime::RedisStore)> {
    if !redis_server_on_path() {
        return None;
    }
    let server = RedisServer::start(&[]);
    let store = idempotent_runtime::RedisStore::connect(&server.url())
        .await
        .unwrap_or_else(|e| panic!("connect to the private redis-server: {e}"));
    Some((server, store))
}

/// [`private_redis`] for a 3-master [`RedisCluster`] of its own.
pub async fn private_redis_cluster() -> Option<(RedisCluster, idempotent_runtime::RedisStore)> {
    if !redis_server_on_path() {
        return None;
    }
    let cluster = RedisCluster::start(3);
    let store = idempotent_runtime::RedisStore::connect_cluster(&cluster.urls())
        .await
        .unwrap_or_else(|e| panic!("connect to the private Redis Cluster: {e}"));
    Some((cluster, store))
}
