//! Redis (standalone and Cluster) through redis-rs: leased locks with fencing tokens
//! (`distributed_lock`), one-time tokens (`token`) and idempotency records (`dedup_table`'s
//! claim mode).
//!
//! Every step is one Lua script (`EVALSHA`, falling back to `EVAL` once per server), so each is
//! atomic and costs one round trip. Key layout, for a storage key with hex digest `H`; the
//! hash tag `{H}` puts every key of one script in the same Cluster hash slot:
//!
//! | key | type | content |
//! |---|---|---|
//! | `idem:{H}:lock` | string, `PX lease` | owner (32 hex) followed by the fingerprint (64 hex or nothing) |
//! | `idem:{H}:fence` | integer, no expiry | the fencing counter, `INCR`ed by every acquisition |
//! | `idem:{H}:resp` | hash, `PX ttl` | `f` fingerprint, `r` the stored (JSON) response |
//! | `idem:{H}:tok` | hash | `s` state (`i` issued, `p` consumed, `c` completed), `o` owner, `d` lease end (server ms), `b` binding, `f` fingerprint, `r` response |
//! | `idem:{H}:rec` | hash, `PX lease/ttl` | `dedup_table` record: `o` owner, `f` fingerprint, `s` (`p`/`c`), `r` response |
//!
//! Expiry is Redis's own (`PX`, `PEXPIRE`, `TIME` inside scripts), never the application's
//! clock. Fencing counters never expire (a counter that expired would restart at 1 and let a
//! stale holder's token look current): one small key per locked storage key.
//!
//! This file holds the connection (standalone or Cluster), the script helpers and the
//! store-argument impls; each store trait lives with its scripts: `record.rs`
//! ([`ClaimStore`](crate::ClaimStore)), `lock.rs` ([`LockStore`](crate::LockStore)), `token.rs`
//! ([`TokenStore`](crate::TokenStore)).

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, Script, ScriptInvocation};

use super::{AsClaimStore, AsLockStore, AsTokenStore, Store};
use crate::{Error, StorageKey};

mod lock;
mod record;
mod token;

/// The oldest Redis the scripts run on: 6.2 (multi-field `HSET`, `PEXPIRE`, `TIME` inside
/// scripts under effects replication, `GETDEL`-era semantics).
pub const MIN_REDIS_VERSION: (u32, u32) = (6, 2);

/// How long a command may wait for its reply before failing with [`Error::Backend`].
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting may take before failing with [`Error::Backend`].
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    #[cfg(feature = "redis-cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

/// A Redis-backed idempotency store: one connection (manager) shared by clones.
///
/// Build it with [`RedisStore::connect`] (standalone) or [`RedisStore::connect_cluster`]
/// (feature `redis-cluster`); both check that the server runs Lua scripts and is Redis ≥ 6.2
/// and fail with [`Error::Backend`] if not. Every error talking to Redis (unreachable,
/// restarted, timed out after 5 s) is [`Error::Backend`] with the redis-rs error as source.
#[derive(Clone)]
pub struct RedisStore {
    conn: Conn,
    name: &'static str,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("backend", &self.name)
            .finish()
    }
}

static CHECK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
return redis.call('INFO', 'server')
",
    )
});

impl RedisStore {
    /// Connects to a standalone Redis at `url` (`redis://host:port/db`) through a
    /// [`ConnectionManager`] (reconnects after failures; 2 s connect and 5 s response
    /// timeouts), and checks server support.
    ///
    /// Errors: [`Error::Backend`] when the URL is invalid, the server does not answer, or it is
    /// older than [`MIN_REDIS_VERSION`] or cannot run scripts.
    pub async fn connect(url: &str) -> Result<RedisStore, Error> {
        let client = redis::Client::open(url).map_err(Error::backend)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(2);
        let manager = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(Error::backend)?;
        Self::from_manager(manager).await
    }

    /// Wraps an existing [`ConnectionManager`] (your own timeouts, TLS, credentials) after
    /// checking server support; errors as [`connect`](Self::connect).
    pub async fn from_manager(manager: ConnectionManager) -> Result<RedisStore, Error> {
        let store = RedisStore {
            conn: Conn::Single(manager),
            name: "redis",
        };
        store.check_support().await?;
        Ok(store)
    }

    /// Connects to a Redis Cluster through any of its nodes (`redis://127.0.0.1:7000`, …)
    /// with redis-rs `cluster-async` (follows `MOVED`/`ASK`, 2 s connect and 5 s response
    /// timeouts), and checks server support on a node. Feature `redis-cluster`.
    ///
    /// Errors: as [`connect`](Self::connect).
    #[cfg(feature = "redis-cluster")]
    pub async fn connect_cluster<U: AsRef<str>>(nodes: &[U]) -> Result<RedisStore, Error> {
        let client = redis::cluster::ClusterClient::builder(nodes.iter().map(|u| u.as_ref()))
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .build()
            .map_err(Error::backend)?;
        let conn = client
            .get_async_connection()
            .await
            .map_err(Error::backend)?;
        let store = RedisStore {
            conn: Conn::Cluster(conn),
            name: "redis-cluster",
        };
        store.check_support().await?;
        Ok(store)
    }

    /// `"redis"` or `"redis-cluster"`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    async fn check_support(&self) -> Result<(), Error> {
        let info: String =
            self.eval(&mut CHECK.key("idem:{check}"))
                .await
                .map_err(|e| match e {
                    Error::Backend(source) => Error::Backend(
                        format!("Redis cannot run the idempotency Lua scripts: {source}").into(),
                    ),
                    other => other,
                })?;
        let version = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .map(str::trim)
            .unwrap_or("0");
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        if found < MIN_REDIS_VERSION {
            return Err(Error::Backend(
                format!(
                    "Redis {version} is too old: the idempotency scripts need Redis {}.{} or newer",
                    MIN_REDIS_VERSION.0, MIN_REDIS_VERSION.1
                )
                .into(),
            ));
        }
        Ok(())
    }

    async fn eval<T: FromRedisValue>(&self, inv: &mut ScriptInvocation<'_>) -> Result<T, Error> {
        match &self.conn {
            Conn::Single(c) => run(inv, &mut c.clone()).await,
            #[cfg(feature = "redis-cluster")]
            Conn::Cluster(c) => run(inv, &mut c.clone()).await,
        }
    }

    /// Runs a compare-and-set script, which returns 1 when the owner (or state) matched and
    /// the write happened, 0 otherwise.
    async fn eval_cas(&self, inv: &mut ScriptInvocation<'_>) -> Result<bool, Error> {
        let n: i64 = self.eval(inv).await?;
        Ok(n == 1)
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

async fn run<T: FromRedisValue>(
    inv: &mut ScriptInvocation<'_>,
    conn: &mut impl ConnectionLike,
) -> Result<T, Error> {
    inv.invoke_async(conn).await.map_err(Error::backend)
}

fn rkey(key: &StorageKey, suffix: &str) -> String {
    format!("idem:{{{}}}:{suffix}", key.hex())
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
