//! A replicated Redis the suite owns: [`RedisReplicaSet`], one primary and one replica
//! (`--replicaof`), optionally watched by 3 Sentinels (`redis-server <conf> --sentinel`), all
//! [`RedisServer`]s on free loopback ports. Helpers wait for the replica to be in sync, promote
//! it (`REPLICAOF NO ONE`), fail the primary over through the Sentinels, and read the roles.
//!
//! Every wait polls until the condition is observed (25 ms apart, bounded); none orders events
//! by sleeping.

use std::time::{Duration, Instant};

use crate::backends::ci;
use crate::redis_server::RedisServer;

/// The name the Sentinels monitor the primary under.
pub const SERVICE: &str = "idem-primary";

/// Whether `redis-server` and `redis-cli` can be run for the replication and Sentinel tests:
/// prints a loud SKIPPED line when not, and panics under `CI=true`.
pub fn replication_available() -> bool {
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
            panic!(
                "redis-server/redis-cli not on PATH and CI=true: the replication tests need them"
            );
        }
        eprintln!(
            "!!! SKIPPED: redis-server/redis-cli not on PATH; Redis replication/Sentinel tests do not run !!!"
        );
    }
    ok
}

/// Polls `cond` every 25 ms until it returns `Some`, and returns that; panics naming `what`
/// (and the last observation, from `cond`'s `Err`) when `within` passes first.
pub fn poll_until<T>(
    what: &str,
    within: Duration,
    mut cond: impl FnMut() -> Result<T, String>,
) -> T {
    let started = Instant::now();
    loop {
        match cond() {
            Ok(v) => return v,
            Err(last) => {
                assert!(
                    started.elapsed() < within,
                    "gave up after {within:?} waiting for {what}; last seen: {last}"
                );
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The `field:value` lines of `INFO <section>` of `server`.
pub fn info(server: &RedisServer, section: &str) -> std::collections::HashMap<String, String> {
    server
        .cli(&["INFO", section])
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// One primary and one replica, optionally with 3 Sentinels, all owned by the suite and
/// stopped when dropped. `primary` and `replica` name the servers as started; after a
/// promotion or a failover the roles are swapped (ask [`role`](Self::role)).
pub struct RedisReplicaSet {
    /// The server started as the primary.
    pub primary: RedisServer,
    /// The server started as a replica of `primary`.
    pub replica: RedisServer,
    /// The Sentinels monitoring the primary as [`SERVICE`] (empty without Sentinels).
    pub sentinels: Vec<RedisServer>,
}

impl RedisReplicaSet {
    /// Starts a primary and a replica (`--replicaof`), each with `extra` arguments and
    /// `--repl-diskless-sync-delay 0` (a full sync starts at once, not after the default 5 s),
    /// and waits until a write (`replication-probe`) has reached the replica
    /// ([`wait_in_sync`](Self::wait_in_sync)).
    pub fn start(extra: &[&str]) -> RedisReplicaSet {
        let mut args = vec!["--repl-diskless-sync-delay", "0"];
        args.extend_from_slice(extra);
        let primary = RedisServer::start(&args);
        let port = primary.port.to_string();
        args.extend(["--replicaof", "127.0.0.1", &port]);
        let replica = RedisServer::start(&args);
        let set = RedisReplicaSet {
            primary,
            replica,
            sentinels: Vec::new(),
        };
        // After a diskless full sync the primary streams writes only once the replica has
        // sent its first `REPLCONF ACK` (up to 1 s later): until then offsets are trivially
        // equal (0) while a write would not reach the replica. Write once and wait for it.
        set.primary.cli(&["SET", "replication-probe", "1"]);
        set.wait_in_sync();
        set
    }

    /// [`start`](Self::start), then 3 Sentinels (`redis-server <conf> --sentinel`, quorum 2,
    /// `down-after-milliseconds 1000`, `failover-timeout 3000`), and waits until every Sentinel
    /// sees the replica (link ok) and the two other Sentinels.
    pub fn start_with_sentinels(extra: &[&str]) -> RedisReplicaSet {
        let mut set = Self::start(extra);
        let config = format!(
            "sentinel monitor {SERVICE} 127.0.0.1 {} 2\n\
             sentinel down-after-milliseconds {SERVICE} 1000\n\
             sentinel failover-timeout {SERVICE} 3000\n\
             sentinel parallel-syncs {SERVICE} 1\n",
            set.primary.port
        );
        set.sentinels = (0..3)
            .map(|_| RedisServer::start_with_config(&config, &["--sentinel"]))
            .collect();
        for s in &set.sentinels {
            poll_until(
                "a Sentinel to see the replica and the other Sentinels",
                Duration::from_secs(20),
                || {
                    let master = pairs(&s.cli(&["SENTINEL", "MASTER", SERVICE]));
                    let replicas = s.cli(&["SENTINEL", "REPLICAS", SERVICE]);
                    let ready = master.get("num-other-sentinels").map(String::as_str) == Some("2")
                        && master.get("num-slaves").map(String::as_str) == Some("1")
                        && replicas.contains("master-link-status\nok");
                    if ready {
                        Ok(())
                    } else {
                        Err(format!("{master:?} / {replicas:?}"))
                    }
                },
            );
        }
        set
    }

    /// The URL of the server started as the primary.
    pub fn primary_url(&self) -> String {
        self.primary.url()
    }

    /// The URL of the server started as the replica.
    pub fn replica_url(&self) -> String {
        self.replica.url()
    }

    /// The Sentinels' URLs (`redis://127.0.0.1:<port>`).
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisServer::url).collect()
    }

    /// `"master"` or `"slave"`, from `INFO replication` of `server`.
    pub fn role(server: &RedisServer) -> String {
        info(server, "replication")
            .remove("role")
            .unwrap_or_default()
    }

    /// Waits (up to 20 s) until whichever server is a replica has `master_link_status:up`, its
    /// replication offset equals its primary's `master_repl_offset`, and the primary lists it
    /// `state=online` with that offset acknowledged (so `WAIT` counts it).
    pub fn wait_in_sync(&self) {
        poll_until("the replica to be in sync", Duration::from_secs(20), || {
            let (p, r) = if Self::role(&self.replica) == "slave" {
                (&self.primary, &self.replica)
            } else {
                (&self.replica, &self.primary)
            };
            Self::in_sync(p, r)
        });
    }

    fn in_sync(primary: &RedisServer, replica: &RedisServer) -> Result<(), String> {
        let pi = info(primary, "replication");
        let ri = info(replica, "replication");
        let up = ri.get("master_link_status").map(String::as_str) == Some("up")
            && ri.get("master_port") == Some(&primary.port.to_string());
        let offset = pi.get("master_repl_offset");
        // The primary's view too: the replica is online (counted by WAIT) and has acknowledged
        // everything (`slave0:ip=…,port=…,state=online,offset=N,lag=…`).
        let port = format!("port={},", replica.port);
        let acked = pi.values().any(|v| {
            v.contains(&port)
                && v.contains("state=online")
                && offset.is_some_and(|o| v.contains(&format!("offset={o},")))
        });
        if up && acked && offset.is_some() && ri.get("slave_repl_offset") == offset {
            Ok(())
        } else {
            Err(format!("primary {pi:?} / replica {ri:?}"))
        }
    }

    /// Promotes the replica (`REPLICAOF NO ONE`) and waits until it reports `role:master`
    /// and the old primary no longer counts it (`connected_slaves:0`). The old primary stays
    /// a primary: replication is cut, both accept writes.
    pub fn promote_replica(&self) {
        let reply = self.replica.cli(&["REPLICAOF", "NO", "ONE"]);
        assert_eq!(reply.trim(), "OK", "REPLICAOF NO ONE: {reply}");
        poll_until(
            "the promoted replica to be a primary the old one does not feed",
            Duration::from_secs(10),
            || {
                let role = Self::role(&self.replica);
                let fed = info(&self.primary, "replication").remove("connected_slaves");
                if role == "master" && fed.as_deref() == Some("0") {
                    Ok(())
                } else {
                    Err(format!(
                        "role {role}, old primary's connected_slaves {fed:?}"
                    ))
                }
            },
        );
    }

    /// Kills the server started as the primary (`SIGKILL`).
    pub fn kill_primary(&mut self) {
        self.primary.stop();
    }

    /// The port each Sentinel reports as the primary of [`SERVICE`]
    /// (`SENTINEL GET-MASTER-ADDR-BY-NAME`), `None` where it does not answer.
    pub fn sentinel_primaries(&self) -> Vec<Option<u16>> {
        self.sentinels
            .iter()
            .map(|s| {
                s.cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE])
                    .lines()
                    .nth(1)
                    .and_then(|p| p.trim().parse().ok())
            })
            .collect()
    }

    /// Fails the primary over through the Sentinels: sends `SENTINEL FAILOVER` (repeated while
    /// a Sentinel answers `NOGOODSLAVE` or `INPROG`), waits until every Sentinel reports the
    /// other server as the primary and that server reports `role:master`, and returns the new
    /// primary's port. The old primary is left as Sentinel leaves it: still a primary until
    /// Sentinel converts it (`+convert-to-slave`, about 10 s later) — see
    /// [`demote_old_primary`](Self::demote_old_primary).
    pub fn sentinel_failover(&self) -> u16 {
        let before = self.sentinel_primaries();
        let old = before[0].expect("the Sentinels know the primary");
        let new = if old == self.primary.port {
            &self.replica
        } else {
            &self.primary
        };
        poll_until(
            "a Sentinel to accept SENTINEL FAILOVER",
            Duration::from_secs(10),
            || {
                let reply = self.sentinels[0].cli(&["SENTINEL", "FAILOVER", SERVICE]);
                if reply.trim() == "OK" {
                    Ok(())
                } else {
                    Err(reply)
                }
            },
        );
        self.wait_sentinels_report(new.port);
        new.port
    }

    /// Waits (up to 20 s) until every Sentinel reports the server on `port` as the primary and
    /// that server reports `role:master` (after [`sentinel_failover`](Self::sentinel_failover),
    /// or after [`kill_primary`](Self::kill_primary): down after 1 s, then the Sentinels' own
    /// failover).
    pub fn wait_sentinels_report(&self, port: u16) {
        let new = if port == self.primary.port {
            &self.primary
        } else {
            &self.replica
        };
        poll_until(
            "every Sentinel to report the new primary",
            Duration::from_secs(20),
            || {
                let now = self.sentinel_primaries();
                let role = Self::role(new);
                if now.iter().all(|p| *p == Some(port)) && role == "master" {
                    Ok(())
                } else {
                    Err(format!("Sentinels report {now:?}, {port} is {role}"))
                }
            },
        );
    }

    /// Makes the old primary (the server on the other port than `new_primary`) a replica of
    /// `new_primary` (`REPLICAOF`, what Sentinel does itself about 10 s after a failover) and
    /// waits until it is in sync.
    pub fn demote_old_primary(&self, new_primary: u16) {
        let (old, new) = if new_primary == self.replica.port {
            (&self.primary, &self.replica)
        } else {
            (&self.replica, &self.primary)
        };
        let port = new.port.to_string();
        let reply = old.cli(&["REPLICAOF", "127.0.0.1", &port]);
        assert_eq!(reply.trim(), "OK", "REPLICAOF: {reply}");
        poll_until(
            "the old primary to be a replica in sync",
            Duration::from_secs(20),
            || Self::in_sync(new, old),
        );
    }
}

/// The field/value pairs of a `redis-cli` reply printed one item a line (`SENTINEL MASTER`).
fn pairs(reply: &str) -> std::collections::HashMap<String, String> {
    let lines: Vec<&str> = reply.lines().collect();
    lines
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| (c[0].trim().to_owned(), c[1].trim().to_owned()))
        .collect()
}
