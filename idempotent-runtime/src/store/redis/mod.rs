//! Redis (standalone and Cluster) through redis-rs: leased locks with fencing tokens
//! (`distributed_lock`), one-time tokens (`token`) and idempotency records (`dedup_table`'s
//! claim mode).
//!
//! Every step is one Lua script, so each is atomic and costs one round trip. A script is sent
//! as `EVALSHA` to the node that owns its keys; a node that answers `NOSCRIPT` (it never saw
//! the script, restarted, was flushed with `SCRIPT FLUSH`, or is a new primary after a
//! failover) gets the same call once more as `EVAL`, which runs it and caches it there. No
//! `SCRIPT LOAD` goes to other nodes, so one dead Cluster node affects only the slots it
//! serves. On a Cluster, redis-rs follows `MOVED` (refreshing its slot map) and `ASK` (sending
//! `ASKING` to the importing node) and retries `TRYAGAIN` (a multi-key script whose keys are
//! split by a slot migration in progress) with backoff; what still fails after its retries
//! comes back as [`Error::Backend`]. All keys of one script share a hash tag, hence one slot. Key layout, for a storage key with hex digest `H`; the
//! hash tag `{H}` puts every key of one script in the same Cluster hash slot:
//!
//! | key | type | content |
//! |---|---|---|
//! | `idem:{H}:lock` | string, `PX lease` then `PX ttl` | held: `p`, the owner's length, `:`, owner, fingerprint (64 hex or nothing); completed: `c`, the fingerprint's length, `:`, fingerprint, the stored (JSON) response |
//! | `idem:{H}:fence` | integer, no expiry | the last fencing token: each acquisition sets it to max(itself + 1, server clock in µs) |
//! | `idem:{H}:tok` | string | issued `i\|<TTL end>`, `PX ttl`; consumed `p\|<TTL end>\|<lease end>\|<owner>\|<binding>\|<fingerprint>`, `PX` the later of both; completed `c\|<binding>\|<fingerprint>\|<response>`, `PX ttl` (ends in server ms) |
//! | `idem:{H}:rec` | hash, `PX lease/ttl` | `dedup_table` record: `o` owner, `f` fingerprint, `s` (`p`/`c`), `r` response |
//!
//! Expiry is Redis's own (`PX`, `PEXPIRE`, `TIME` inside scripts), never the application's
//! clock. Fencing counters never expire: one small key per locked storage key. A token is at
//! least the server's clock in microseconds, so a counter that is missing (a restart without
//! persistence) or stale (a replica promoted before the last increments reached it) still
//! yields a token above every earlier one, as long as the servers' clocks agree to within the
//! time between the two acquisitions (at least the time the first holder ran).
//!
//! Replicas: Redis replicates asynchronously, so a failover can lose the last writes: an
//! acquisition (the new primary lets a second caller in while the first still runs) or a
//! completion (the key runs again after the lease). [`RedisOptions::wait_for_replicas`] closes
//! the first window (`WAIT` after each acquisition; not acknowledged → released and
//! [`Error::NotReplicated`]) and narrows the second.
//!
//! This file holds the connection (standalone or Cluster), the script helpers and the
//! store-argument impls; each store trait lives with its scripts: `record.rs`
//! ([`ClaimStore`](crate::ClaimStore)), `lock.rs` ([`LockStore`](crate::LockStore)), `token.rs`
//! ([`TokenStore`](crate::TokenStore)).

use std::borrow::Cow;
#[cfg(any(feature = "redis-cluster", feature = "redis-sentinel"))]
use std::sync::Arc;
use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, ErrorKind, FromRedisValue, RedisError, ServerErrorKind, ToRedisArgs, Value};

use super::{AsClaimStore, AsLockStore, AsTokenStore, Store};
use crate::{Error, StorageKey};

#[cfg(feature = "redis-cluster")]
mod cluster;
mod lock;
mod record;

/// The Lua sources of the store's scripts, for the benchmarks' hand-written baseline (which
/// must run the same protocol). Not a stable API.
#[doc(hidden)]
pub mod scripts {
    pub use super::lock::{LOCK_ACQUIRE_LUA, LOCK_COMPLETE_LUA};
    pub use super::record::{REC_CLAIM_LUA, REC_COMPLETE_LUA};
    pub use super::token::{TOKEN_COMPLETE_LUA, TOKEN_CONSUME_LUA, TOKEN_ISSUE_LUA};
}
#[cfg(feature = "redis-sentinel")]
mod sentinel;
mod token;

/// The oldest Redis the scripts run on: 6.2 (multi-field `HSET`, `PEXPIRE`, `TIME` inside
/// scripts under effects replication, `GETDEL`-era semantics).
pub const MIN_REDIS_VERSION: (u32, u32) = (6, 2);

/// How long a command may wait for its reply before failing with [`Error::Backend`].
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting may take before failing with [`Error::Backend`].
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A Lua script of the store: its source and SHA1 digest.
pub(super) struct Lua {
    code: &'static str,
    sha: String,
}

impl Lua {
    fn new(code: &'static str) -> Lua {
        Lua {
            code,
            sha: redis::Script::new(code).get_hash().to_owned(),
        }
    }

    /// A call of this script without keys (on a Cluster, redis-rs sends it to any node).
    fn keyless(&self) -> Call<'_> {
        self.keys(&[])
    }

    /// A call of this script with `key` as `KEYS[1]`.
    fn key(&self, key: &str) -> Call<'_> {
        self.keys(&[key])
    }

    /// A call of this script with `keys` as `KEYS`.
    fn keys(&self, keys: &[&str]) -> Call<'_> {
        // Room for the keys and a few arguments (owner, lease, fingerprint…): most calls write
        // their command without growing it; a response to store grows it once.
        let mut cmd = Cmd::with_capacity(3 + keys.len() + 5, 256);
        cmd.arg("EVALSHA").arg(&self.sha).arg(keys.len());
        for key in keys {
            cmd.arg(*key);
        }
        Call { lua: self, cmd }
    }
}

/// One call of a [`Lua`] script: `EVALSHA sha numkeys KEYS… ARGV…`, written argument by
/// argument straight into the command sent (no per-argument buffers, no copy on the way).
pub(super) struct Call<'a> {
    lua: &'a Lua,
    cmd: Cmd,
}

impl Call<'_> {
    fn arg<A: ToRedisArgs>(&mut self, arg: A) -> &mut Self {
        self.cmd.arg(arg);
        self
    }

    /// `EVALSHA sha n keys… args…`, or with `source`, `EVAL script n keys… args…` (built
    /// only then: a node answered `NOSCRIPT`).
    fn cmd(&self, source: bool) -> Cow<'_, Cmd> {
        if !source {
            return Cow::Borrowed(&self.cmd);
        }
        let args = self.cmd.args_iter().skip(2);
        let mut cmd = Cmd::with_capacity(args.len() + 2, self.lua.code.len() + 256);
        cmd.arg("EVAL").arg(self.lua.code);
        // Every argument is `Simple`: the store never writes a `SCAN` cursor.
        for arg in args {
            if let redis::Arg::Simple(bytes) = arg {
                cmd.arg(bytes);
            }
        }
        Cow::Owned(cmd)
    }
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    #[cfg(feature = "redis-cluster")]
    Cluster(Arc<cluster::ClusterConn>),
    #[cfg(feature = "redis-sentinel")]
    Sentinel(Arc<sentinel::SentinelConn>),
}

/// A Redis-backed idempotency store: one connection (manager) shared by clones.
///
/// Build it with [`RedisStore::connect`] (standalone), [`RedisStore::connect_cluster`]
/// (feature `redis-cluster`) or [`RedisStore::connect_sentinel`] (feature `redis-sentinel`),
/// or with [`RedisStore::options`] for the options of [`RedisOptions`]. Each checks that the
/// server runs Lua scripts, is Redis ≥ 6.2 and cannot evict keys (`maxmemory-policy
/// noeviction`), and fails with [`Error::Backend`] or [`Error::EvictionPolicy`] if not. Every
/// error talking to Redis (unreachable, restarted, failing over, timed out after 5 s) is
/// [`Error::Backend`] with the redis-rs error as source.
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    name: &'static str,
    replicas: Option<(u32, Duration)>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("backend", &self.name)
            .field("replicas", &self.replicas)
            .finish()
    }
}

static CHECK: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local t = redis.call('TIME')
return redis.call('INFO', 'server') .. redis.call('INFO', 'memory') .. redis.call('INFO', 'replication')
",
    )
});

/// How [`RedisStore`] connects: eviction policy check and replica acknowledgements.
///
/// ```no_run
/// # async fn f() -> Result<(), idempotent_runtime::Error> {
/// use std::time::Duration;
/// use idempotent_runtime::RedisStore;
/// let store = RedisStore::options()
///     .wait_for_replicas(1, Duration::from_millis(500))
///     .connect("redis://127.0.0.1:6379")
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct RedisOptions {
    allow_eviction: bool,
    replicas: Option<(u32, Duration)>,
}

impl RedisOptions {
    /// The defaults: refuse servers that can evict keys, do not wait for replicas.
    pub fn new() -> RedisOptions {
        RedisOptions::default()
    }

    /// With `true`, connect even when a server's `maxmemory-policy` is not `noeviction`
    /// (default `false`: [`Error::EvictionPolicy`]). Under an evicting policy Redis may drop
    /// locks, claims, tokens and stored responses when memory runs out, and a retry then runs
    /// the body again: only for deployments that accept that (or never reach `maxmemory`).
    pub fn allow_eviction(mut self, allow: bool) -> RedisOptions {
        self.allow_eviction = allow;
        self
    }

    /// After every acquisition (a `distributed_lock` lock, a `dedup_table` claim, a `token`
    /// issue or consumption) and every completion, sends
    /// [`WAIT replicas timeout`](https://redis.io/docs/latest/commands/wait/) to the key's
    /// primary, on the connection that wrote it. An acquisition acknowledged by fewer than
    /// `replicas` replicas within `timeout` is released again and the call fails with
    /// [`Error::NotReplicated`] before the body runs; a completion that is not acknowledged
    /// is logged (`tracing` warning) and the call still returns its result (the effect has
    /// happened). `replicas = 0` turns it off (the default). `timeout` must be below the
    /// store's 5 s response time-out (connecting fails with [`Error::Unsupported`] otherwise);
    /// connecting logs a warning when the primary has fewer replicas attached than `replicas`.
    ///
    /// What it buys: a replica promoted after the call returned holds the acquisition, so a
    /// failover cannot hand the same key to a second caller while the first still runs.
    /// What it costs: one more round trip per step, and `WAIT` holds the shared (multiplexed)
    /// connection until the replicas answer or `timeout` passes, so keep `timeout` short
    /// (milliseconds). `WAIT` does not make Redis strongly consistent: a replica that
    /// acknowledged can still lose the write if it fails too.
    pub fn wait_for_replicas(mut self, replicas: u32, timeout: Duration) -> RedisOptions {
        self.replicas = (replicas > 0).then_some((replicas, timeout));
        self
    }

    /// Connects to a standalone Redis at `url` (`redis://host:port/db`) through a
    /// [`ConnectionManager`] (reconnects after failures to the same address; 2 s connect and
    /// 5 s response timeouts), and checks the server.
    ///
    /// Errors: [`Error::Backend`] when the URL is invalid, the server does not answer (holding a
    /// [`ConnectError`](crate::ConnectError) that names the URL without its password and the
    /// cause: refused, unknown host, authentication, timed out), or it is
    /// older than [`MIN_REDIS_VERSION`] or cannot run scripts; [`Error::EvictionPolicy`] (see
    /// [`allow_eviction`](Self::allow_eviction)).
    pub async fn connect(&self, url: &str) -> Result<RedisStore, Error> {
        let target = crate::connect::redact_url(url);
        let client = redis::Client::open(url).map_err(|e| {
            Error::Backend(
                format!("{target} is not a Redis URL (redis://host:port/db): {e}").into(),
            )
        })?;
        let address = client.get_connection_info().addr().to_string();
        let host = tcp_host(url);
        // Looked at while redis-rs connects: a time-out then says whether the port accepts
        // TCP connections (another kind of server) or not.
        let tcp = match client.get_connection_info().addr() {
            redis::ConnectionAddr::Tcp(host, port)
            | redis::ConnectionAddr::TcpTls { host, port, .. } => {
                crate::connect::TcpCheck::start(host, *port, CONNECT_TIMEOUT)
            }
            _ => None,
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(2);
        let manager = match ConnectionManager::new_with_config(client, config).await {
            Ok(manager) => manager,
            Err(e) => {
                let mut e =
                    crate::ConnectError::diagnose(target, host.as_deref(), Box::new(e)).await;
                if e.cause == crate::ConnectCause::TimedOut {
                    let detail =
                        crate::connect::TcpCheck::timed_out(tcp, "Redis", CONNECT_TIMEOUT).await;
                    e.source = Some(Box::new(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        detail,
                    )));
                }
                return Err(Error::backend(e));
            }
        };
        self.checked(Conn::Single(manager), "redis", Some(address))
            .await
            .map_err(|e| match e {
                // A connection failure the check found (credentials refused) names the URL
                // it was given, as one found while connecting does.
                Error::Backend(mut source) => {
                    if let Some(c) = source.downcast_mut::<crate::ConnectError>() {
                        c.target = target;
                    }
                    Error::Backend(source)
                }
                other => other,
            })
    }

    /// Wraps an existing [`ConnectionManager`] (your own timeouts, TLS, credentials) after
    /// checking the server; errors as [`connect`](Self::connect).
    pub async fn from_manager(&self, manager: ConnectionManager) -> Result<RedisStore, Error> {
        self.checked(Conn::Single(manager), "redis", None).await
    }

    /// Connects to a Redis Cluster through any of its nodes (`redis://127.0.0.1:7000`, …)
    /// with redis-rs `cluster-async` (follows `MOVED`/`ASK`, retries `TRYAGAIN`; 2 s connect
    /// and 5 s response timeouts), and checks the servers: version and scripts on one node,
    /// the eviction policy on every primary. Feature `redis-cluster`.
    ///
    /// Errors: as [`connect`](Self::connect); [`Error::EvictionPolicy`] names the first
    /// primary with an evicting policy.
    #[cfg(feature = "redis-cluster")]
    pub async fn connect_cluster<U: AsRef<str>>(&self, nodes: &[U]) -> Result<RedisStore, Error> {
        let client = redis::cluster::ClusterClient::builder(nodes.iter().map(|u| u.as_ref()))
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .build()
            .map_err(Error::backend)?;
        let conn = match cluster::ClusterConn::new(client).await {
            Ok(conn) => conn,
            Err(e) => {
                let target = nodes
                    .iter()
                    .map(|u| crate::connect::redact_url(u.as_ref()))
                    .collect::<Vec<_>>()
                    .join(",");
                let e = crate::ConnectError::diagnose(target, None, Box::new(e)).await;
                return Err(Error::backend(e));
            }
        };
        self.checked(Conn::Cluster(Arc::new(conn)), "redis-cluster", None)
            .await
    }

    /// Connects to the primary of `service_name` (the name in the sentinels'
    /// `sentinel monitor <name> …`) as reported by the [Redis
    /// Sentinels](https://redis.io/docs/latest/operate/oss_and_stack/management/sentinel/) at
    /// `sentinels` (`redis://127.0.0.1:26379`, …), and checks the server. Feature
    /// `redis-sentinel` (redis-rs `sentinel`).
    ///
    /// The store keeps one multiplexed connection to the primary. After an I/O error, a
    /// time-out, a `READONLY` reply (the node was demoted by a failover) or `NOREPLICAS` (a
    /// primary cut off from its replicas under `min-replicas-to-write`) it drops that
    /// connection and asks the sentinels again on the next call; the failing call itself
    /// returns [`Error::Backend`] and may be retried. Each new primary's eviction policy is
    /// checked as the first one's (refused: calls fail with [`Error::Backend`] naming the
    /// policy until the sentinels name another primary). Errors: as [`connect`](Self::connect);
    /// when no sentinel answers, none knows `service_name` or the primary they name cannot be
    /// reached, [`Error::Backend`] holding a [`ConnectError`](crate::ConnectError) whose target
    /// is the sentinels' URLs without passwords (comma-separated), whose context names the
    /// service and whose cause is read from the last failure (refused, unknown host,
    /// authentication, timed out, or other: a service no sentinel knows).
    #[cfg(feature = "redis-sentinel")]
    pub async fn connect_sentinel<U: AsRef<str>>(
        &self,
        sentinels: &[U],
        service_name: &str,
    ) -> Result<RedisStore, Error> {
        let conn = sentinel::SentinelConn::new(sentinels, service_name, self.allow_eviction)?;
        // The first primary, asked for now so that a failure names the sentinels and its
        // cause (a primary refused for its eviction policy is left to the check below).
        if let Err(e) = conn.connect().await
            && !sentinel::is_eviction_refusal(&e)
        {
            let target = sentinels
                .iter()
                .map(|u| crate::connect::redact_url(u.as_ref()))
                .collect::<Vec<_>>()
                .join(",");
            // With one sentinel, a name that does not resolve is told apart.
            let host = match sentinels {
                [one] => tcp_host(one.as_ref()),
                _ => None,
            };
            let mut e = crate::ConnectError::diagnose(target, host.as_deref(), Box::new(e)).await;
            e.context = format!("the primary of {service_name:?}, as its sentinels name it");
            return Err(Error::backend(e));
        }
        self.checked(Conn::Sentinel(Arc::new(conn)), "redis-sentinel", None)
            .await
    }

    /// The store on `conn` after [`RedisStore::check_support`]; `address` names the server
    /// in errors (`host:port`; `None`: from the server's `INFO`).
    async fn checked(
        &self,
        conn: Conn,
        name: &'static str,
        address: Option<String>,
    ) -> Result<RedisStore, Error> {
        if let Some((_, timeout)) = self.replicas
            && timeout >= RESPONSE_TIMEOUT
        {
            return Err(Error::Unsupported(format!(
                "wait_for_replicas timeout {timeout:?} is not below the store's {RESPONSE_TIMEOUT:?} response time-out: the WAIT reply would never arrive in time; use a timeout of milliseconds"
            )));
        }
        let store = RedisStore {
            conn,
            name,
            replicas: self.replicas,
        };
        store.check_support(self.allow_eviction, address).await?;
        Ok(store)
    }
}

/// The TCP host of a Redis URL (`redis://cache:6379` → `cache`), for telling an unknown host
/// from other failures; `None` for a Unix socket or a URL redis-rs does not read.
fn tcp_host(url: &str) -> Option<String> {
    match redis::Client::open(url).ok()?.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(host, _) | redis::ConnectionAddr::TcpTls { host, .. } => {
            Some(host.clone())
        }
        _ => None,
    }
}

impl RedisStore {
    /// [`RedisOptions`] with the defaults, to set options before connecting.
    pub fn options() -> RedisOptions {
        RedisOptions::new()
    }

    /// [`RedisOptions::connect`] with the default options.
    pub async fn connect(url: &str) -> Result<RedisStore, Error> {
        RedisOptions::new().connect(url).await
    }

    /// [`RedisOptions::from_manager`] with the default options.
    pub async fn from_manager(manager: ConnectionManager) -> Result<RedisStore, Error> {
        RedisOptions::new().from_manager(manager).await
    }

    /// [`RedisOptions::connect_cluster`] with the default options. Feature `redis-cluster`.
    #[cfg(feature = "redis-cluster")]
    pub async fn connect_cluster<U: AsRef<str>>(nodes: &[U]) -> Result<RedisStore, Error> {
        RedisOptions::new().connect_cluster(nodes).await
    }

    /// [`RedisOptions::connect_sentinel`] with the default options. Feature `redis-sentinel`.
    #[cfg(feature = "redis-sentinel")]
    pub async fn connect_sentinel<U: AsRef<str>>(
        sentinels: &[U],
        service_name: &str,
    ) -> Result<RedisStore, Error> {
        RedisOptions::new()
            .connect_sentinel(sentinels, service_name)
            .await
    }

    /// `"redis"`, `"redis-cluster"` or `"redis-sentinel"`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Checks every primary: it runs the scripts (the check is a script), is at least
    /// [`MIN_REDIS_VERSION`], and (unless `allow_eviction`) has `maxmemory-policy noeviction`.
    /// `address` names a standalone or Sentinel primary in errors.
    async fn check_support(
        &self,
        allow_eviction: bool,
        address: Option<String>,
    ) -> Result<(), Error> {
        for (node, info) in self.check_every_primary(address).await? {
            let info = info?;
            let version = info_field(&info, "redis_version").unwrap_or("0");
            let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
            let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
            if found < MIN_REDIS_VERSION {
                return Err(Error::Backend(
                    format!(
                        "Redis {version} at {node} is too old: the idempotency scripts need Redis {}.{} or newer",
                        MIN_REDIS_VERSION.0, MIN_REDIS_VERSION.1
                    )
                    .into(),
                ));
            }
            if info_field(&info, "role") == Some("slave") {
                return Err(Error::Backend(
                    format!(
                        "Redis at {node} is a replica (role:slave): the idempotency records must be written on the primary; connect to the primary, or use connect_sentinel to follow it"
                    )
                    .into(),
                ));
            }
            if let Some((required, _)) = self.replicas {
                let connected = info_field(&info, "connected_slaves")
                    .and_then(|n| n.parse::<u32>().ok())
                    .unwrap_or(0);
                if connected < required {
                    tracing::warn!(
                        node = %node,
                        connected,
                        required,
                        "wait_for_replicas asks for more replicas than the primary has now: every acquisition fails with NotReplicated until enough replicas are attached"
                    );
                }
            }
            if !allow_eviction && let Some(refused) = evicting(&node, &info) {
                return Err(refused);
            }
        }
        Ok(())
    }

    /// The check script's reply (`INFO server` and `INFO memory`) from every primary, as
    /// (node, reply). On a Cluster it goes to every primary that redis-rs has a connection to
    /// (a primary down at that moment is not checked, and does not stop the others);
    /// elsewhere to the one primary, named `address` (or by its port).
    async fn check_every_primary(
        &self,
        address: Option<String>,
    ) -> Result<Vec<(String, Result<String, Error>)>, Error> {
        #[cfg(feature = "redis-cluster")]
        if let Conn::Cluster(c) = &self.conn {
            use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
            let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
            let reply = c
                .route_command(CHECK.keyless().cmd(true).into_owned(), routing)
                .await
                .map_err(Error::backend)?;
            let Value::Map(nodes) = reply else {
                return Err(Error::Backend(
                    format!("unexpected reply to the check sent to every primary: {reply:?}")
                        .into(),
                ));
            };
            return nodes
                .into_iter()
                .map(|(node, reply)| {
                    let node = String::from_redis_value(node).map_err(Error::backend)?;
                    let info = match reply {
                        Value::ServerError(e) => Err(cannot_run(&node, &RedisError::from(e))),
                        v => String::from_redis_value(v).map_err(Error::backend),
                    };
                    Ok((node, info))
                })
                .collect();
        }
        let info = self
            .eval::<String>(&mut CHECK.keyless())
            .await
            .map_err(|e| match e {
                Error::Backend(source) => source,
                other => Box::new(other),
            });
        let address = match (address, &self.conn) {
            (Some(address), _) => address,
            #[cfg(feature = "redis-sentinel")]
            (None, Conn::Sentinel(s)) => s.address(),
            _ => {
                let port = info
                    .as_deref()
                    .ok()
                    .and_then(|i| info_field(i, "tcp_port"))
                    .unwrap_or("?");
                format!("the server on port {port}")
            }
        };
        let info = info.map_err(|source| {
            // A server error is the server refusing the script; anything else (unreachable,
            // timed out, a sentinel that knows no such service) says so itself.
            match source.downcast_ref::<RedisError>() {
                // Credentials refused (none given: `NOAUTH` on this first command): said as a
                // connection failure of the server, as a wrong password in the handshake is.
                Some(e) if refused_auth(e) => Error::backend(crate::ConnectError {
                    target: address.clone(),
                    cause: crate::ConnectCause::Auth,
                    source: Some(source),
                    context: String::new(),
                }),
                Some(e) if matches!(e.kind(), ErrorKind::Server(_)) => cannot_run(&address, e),
                _ => Error::Backend(
                    format!("Redis at {address} failed the connection check: {source}").into(),
                ),
            }
        });
        Ok(vec![(address, info)])
    }

    /// Runs `cmd` (on a Cluster: on the node that owns its key, as redis-rs routes it).
    async fn query(&self, cmd: &Cmd) -> Result<Value, RedisError> {
        match &self.conn {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await,
            #[cfg(feature = "redis-cluster")]
            // Boxed, like the Sentinel path: replacing a wedged connection is a deep future.
            Conn::Cluster(c) => erased(c.query(cmd)).await,
            #[cfg(feature = "redis-sentinel")]
            // Boxed: redis-rs's sentinel look-up is a deep future, and every store call
            // would carry its layout (and users' async fns would hit the recursion limit).
            Conn::Sentinel(s) => erased(s.query(cmd)).await,
        }
    }

    /// Runs `pipe` on a standalone or Sentinel primary's connection (never on a Cluster).
    async fn query_pipe(&self, pipe: &redis::Pipeline) -> Result<Vec<Value>, RedisError> {
        match &self.conn {
            Conn::Single(c) => pipe.query_async(&mut c.clone()).await,
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(_) => Err(RedisError::from((
                ErrorKind::Client,
                "pipelines are not sent to a Cluster",
            ))),
            #[cfg(feature = "redis-sentinel")]
            Conn::Sentinel(s) => erased(s.query_pipe(pipe)).await,
        }
    }

    /// Runs a script call: `EVALSHA`, and `EVAL` once more when the node answers `NOSCRIPT`.
    async fn eval<T: FromRedisValue>(&self, call: &mut Call<'_>) -> Result<T, Error> {
        let value = match self.query(&call.cmd(false)).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.query(&call.cmd(true)).await
            }
            other => other,
        }
        .map_err(Error::backend)?;
        T::from_redis_value(value).map_err(Error::backend)
    }

    /// Runs a compare-and-set script, which returns 1 when the owner (or state) matched and
    /// the write happened, 0 otherwise.
    async fn eval_cas(&self, inv: &mut Call<'_>) -> Result<bool, Error> {
        let n: i64 = self.eval(inv).await?;
        Ok(n == 1)
    }

    /// Runs a script that may write (`EVALSHA`, `EVAL` on `NOSCRIPT`, as [`eval`](Self::eval))
    /// and, with [`RedisOptions::wait_for_replicas`], `WAIT` right after it on the same
    /// connection: on a standalone or Sentinel primary both go in one pipeline, so `WAIT`
    /// counts this very write even if the shared connection is replaced right after (a `WAIT`
    /// on a fresh connection, which wrote nothing, would return at once); on a Cluster, `WAIT`
    /// is routed to the primary of `key` (by default redis-rs would send it to every primary).
    /// Returns the script's reply and what `WAIT` said.
    async fn eval_waiting<T: FromRedisValue>(
        &self,
        call: &mut Call<'_>,
        key: &str,
    ) -> Result<(T, Acknowledged), Error> {
        let Some((required, timeout)) = self.replicas else {
            return Ok((self.eval(call).await?, Ok(Ok(()))));
        };
        let wait = redis::cmd("WAIT")
            .arg(required)
            .arg(super::millis(timeout).max(1))
            .take();
        #[cfg(feature = "redis-cluster")]
        if let Conn::Cluster(c) = &self.conn {
            use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
            let reply = self.eval(call).await?;
            let route = Route::with_key(key, SlotAddr::Master);
            let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
            let acked = erased(c.route_command(wait, routing))
                .await
                .map_err(Error::backend);
            return Ok((reply, acked.and_then(|v| enough(v, required))));
        }
        let _ = key;
        for source in [false, true] {
            let mut pipe = redis::pipe();
            pipe.ignore_errors()
                .add_command(call.cmd(source).into_owned())
                .add_command(wait.clone());
            let values = self.query_pipe(&pipe).await.map_err(Error::backend)?;
            let [script, acked]: [Value; 2] = values.try_into().map_err(|_| {
                Error::Serialization("unexpected reply to a script and WAIT".into())
            })?;
            if let Value::ServerError(e) = &script {
                if !source && e.kind() == Some(ServerErrorKind::NoScript) {
                    continue;
                }
                return Err(Error::backend(RedisError::from(e.clone())));
            }
            let reply = T::from_redis_value(script).map_err(Error::backend)?;
            return Ok((reply, enough(acked, required)));
        }
        Err(Error::Backend(
            "Redis answered NOSCRIPT to EVAL, which carries the script".into(),
        ))
    }

    /// For an acquisition: `Ok(None)` when acknowledged (or not required), `Ok(Some(error))`
    /// with the [`Error::NotReplicated`] to return after undoing the acquisition, `Err` when
    /// `WAIT` itself failed.
    fn not_replicated(&self, acknowledged: Acknowledged) -> Result<Option<Error>, Error> {
        Ok(match acknowledged? {
            Ok(()) => None,
            Err(acknowledged) => {
                let (required, timeout) = self.replicas.unwrap_or_default();
                Some(Error::NotReplicated {
                    acknowledged,
                    required,
                    timeout,
                })
            }
        })
    }

    /// For a completion, whose effect has happened: a shortfall or a failing `WAIT` is logged,
    /// never returned.
    fn completion_replicated(&self, acknowledged: Acknowledged) {
        match acknowledged {
            Ok(Ok(())) => {}
            Ok(Err(acknowledged)) => tracing::warn!(
                acknowledged,
                required = self.replicas.map(|r| r.0).unwrap_or(0),
                "an idempotency record's completion was not acknowledged by enough Redis replicas; a failover now could lose the stored response"
            ),
            Err(error) => {
                tracing::warn!(%error, "WAIT after an idempotency record's completion failed")
            }
        }
    }

    /// Spawns `f(store)` on the current tokio runtime, if any (detached releases).
    fn spawn<F, Fut>(&self, f: F)
    where
        F: FnOnce(RedisStore) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(f(self.clone()));
        }
    }
}

/// `e` is the server refusing the client's credentials: none given (`NOAUTH`) or wrong ones
/// (`WRONGPASS`, or redis-rs's `AuthenticationFailed` during its handshake).
fn refused_auth(e: &RedisError) -> bool {
    e.kind() == ErrorKind::AuthenticationFailed || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"))
}

/// The server at `node` refused the check script with `e`.
fn cannot_run(node: &str, e: &RedisError) -> Error {
    Error::Backend(format!("Redis at {node} cannot run the idempotency Lua scripts: {e}").into())
}

/// `fut` boxed as a `dyn Future + Send`: the Cluster and Sentinel paths reconnect inside
/// (redis-rs connection set-up is a deep future), and erasing the type here keeps its layout
/// and its `Send` proof out of every caller's future (the store's callers would otherwise hit
/// the compiler's recursion limit in `tokio::spawn`).
#[cfg(any(feature = "redis-cluster", feature = "redis-sentinel"))]
fn erased<'a, T>(
    fut: impl Future<Output = T> + Send + 'a,
) -> std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>> {
    Box::pin(fut)
}

/// What `WAIT` said after a write: `Ok(Ok(()))` enough replicas acknowledged it (or none were
/// asked for), `Ok(Err(n))` only `n`, `Err` `WAIT` itself failed.
type Acknowledged = Result<Result<(), u32>, Error>;

/// `WAIT`'s reply against the number of replicas required.
fn enough(reply: Value, required: u32) -> Acknowledged {
    if let Value::ServerError(e) = reply {
        return Err(Error::backend(RedisError::from(e)));
    }
    let acknowledged = i64::from_redis_value(reply).map_err(Error::backend)?;
    let acknowledged = u32::try_from(acknowledged).unwrap_or(0);
    Ok(if acknowledged >= required {
        Ok(())
    } else {
        Err(acknowledged)
    })
}

/// [`Error::EvictionPolicy`] when the `INFO memory` of the server at `node` shows a
/// `maxmemory-policy` other than `noeviction`.
fn evicting(node: &str, info: &str) -> Option<Error> {
    let policy = info_field(info, "maxmemory_policy").unwrap_or("");
    (policy != "noeviction").then(|| Error::EvictionPolicy {
        node: node.to_owned(),
        policy: policy.to_owned(),
    })
}

/// The value of `field` in an `INFO` reply (`field:value` lines).
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

fn rkey(key: &StorageKey, suffix: &str) -> String {
    let [k] = rkeys(key, [suffix]);
    k
}

/// The Redis keys of `key` with these suffixes (`idem:{<hex>}:<suffix>`), the digest
/// hex-encoded once for all of them.
fn rkeys<const N: usize>(key: &StorageKey, suffixes: [&str; N]) -> [String; N] {
    let hex = key.hex();
    suffixes.map(|suffix| format!("idem:{{{hex}}}:{suffix}"))
}

fn opt(bytes: Vec<u8>) -> Result<Option<String>, Error> {
    if bytes.is_empty() {
        Ok(None)
    } else {
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| Error::Serialization("a stored fingerprint is not UTF-8".into()))
    }
}

fn text(bytes: Vec<u8>) -> Result<String, Error> {
    Ok(opt(bytes)?.unwrap_or_default())
}

impl Store for RedisStore {
    fn backend_name(&self) -> &'static str {
        self.name
    }
}

#[diagnostic::do_not_recommend]
impl AsClaimStore for RedisStore {
    type Store = Self;
    fn as_claim_store(&self) -> &Self {
        self
    }
}

#[diagnostic::do_not_recommend]
impl AsLockStore for RedisStore {
    type Store = Self;
    fn as_lock_store(&self) -> &Self {
        self
    }
}

#[diagnostic::do_not_recommend]
impl AsTokenStore for RedisStore {
    type Store = Self;
    fn as_token_store(&self) -> &Self {
        self
    }
}
