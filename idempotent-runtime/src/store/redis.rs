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

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, Script, ScriptInvocation};

use super::{
    Acquired, Claim, ClaimStore, Consumed, LockStore, Record, RecordState, TokenStore, millis,
};
use crate::{Error, StorageKey};

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

// ---------------------------------------------------------------- distributed_lock

/// KEYS: lock, fence, resp. ARGV: owner..fingerprint, lease ms.
/// → {0, fence, ''} acquired | {1, fingerprint, response} replay | {2, holder value, ''} held.
static LOCK_ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local r = redis.call('HMGET', KEYS[3], 'f', 'r')
if r[2] then return {1, r[1] or '', r[2]} end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if redis.call('EXISTS', KEYS[2]) == 0 then
    -- A missing counter (new key, or Redis restarted without persistence) starts at the
    -- server's clock in microseconds, above any value an earlier counter reached.
    local now = redis.call('TIME')
    redis.call('SET', KEYS[2], string.format('%d', tonumber(now[1]) * 1000000 + tonumber(now[2])))
  end
  return {0, string.format('%d', redis.call('INCR', KEYS[2])), ''}
end
return {2, redis.call('GET', KEYS[1]) or '', ''}
",
    )
});

/// KEYS: lock. ARGV: owner, lease ms. → 1 renewed, 0 not the owner's.
static LOCK_RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
",
    )
});

/// KEYS: lock, resp. ARGV: owner, response, ttl ms. → 1 completed, 0 not the owner's.
static LOCK_COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('GET', KEYS[1])
if not v or string.sub(v, 1, #ARGV[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'f', string.sub(v, #ARGV[1] + 1), 'r', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('DEL', KEYS[1])
return 1
",
    )
});

/// KEYS: lock. ARGV: owner. → 1 deleted, 0 not the owner's.
static LOCK_RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

impl LockStore for RedisStore {
    fn lock_backend_name(&self) -> &'static str {
        self.name
    }

    async fn acquire(
        &self,
        key: &StorageKey,
        owner: &str,
        fingerprint: Option<&str>,
        lease: Duration,
    ) -> Result<Acquired, Error> {
        let value = format!("{owner}{}", fingerprint.unwrap_or(""));
        let (code, a, b): (i64, Vec<u8>, Vec<u8>) = self
            .eval(
                LOCK_ACQUIRE
                    .key(rkey(key, "lock"))
                    .key(rkey(key, "fence"))
                    .key(rkey(key, "resp"))
                    .arg(value)
                    .arg(millis(lease).max(1)),
            )
            .await?;
        match code {
            0 => {
                let fence = text(a)?.parse::<u64>().map_err(|_| {
                    Error::Serialization("the fencing counter is not a number".into())
                })?;
                Ok(Acquired::Acquired { fence })
            }
            1 => Ok(Acquired::Replay {
                fingerprint: opt(a)?,
                response: b,
            }),
            _ => {
                let holder = text(a)?;
                let fp = holder.get(owner.len()..).unwrap_or("");
                Ok(Acquired::Held {
                    fingerprint: (!fp.is_empty()).then(|| fp.to_owned()),
                })
            }
        }
    }

    async fn renew(&self, key: &StorageKey, owner: &str, lease: Duration) -> Result<bool, Error> {
        self.eval_cas(
            LOCK_RENEW
                .key(rkey(key, "lock"))
                .arg(owner)
                .arg(millis(lease).max(1)),
        )
        .await
    }

    async fn complete_lock(
        &self,
        key: &StorageKey,
        owner: &str,
        response: &[u8],
        ttl: Duration,
    ) -> Result<bool, Error> {
        self.eval_cas(
            LOCK_COMPLETE
                .key(rkey(key, "lock"))
                .key(rkey(key, "resp"))
                .arg(owner)
                .arg(response)
                .arg(millis(ttl).max(1)),
        )
        .await
    }

    async fn release_lock(&self, key: &StorageKey, owner: &str) -> Result<bool, Error> {
        self.eval_cas(LOCK_RELEASE.key(rkey(key, "lock")).arg(owner))
            .await
    }

    fn release_lock_detached(&self, key: StorageKey, owner: String) {
        self.spawn(|s| async move {
            let _ = s.release_lock(&key, &owner).await;
        });
    }
}

// ---------------------------------------------------------------- token

/// KEYS: tok. ARGV: ttl ms.
static TOKEN_ISSUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 's', 'i')
return redis.call('PEXPIRE', KEYS[1], ARGV[1])
",
    )
});

/// KEYS: tok. ARGV: owner, lease ms, binding, fingerprint.
/// → {0,..} invalid | {1,..} claimed | {2, binding, fp, ''} busy | {3, binding, fp, response}.
static TOKEN_CONSUME: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('HMGET', KEYS[1], 's', 'd', 'b', 'f', 'r')
if not t[1] then return {0, '', '', ''} end
if t[1] == 'c' then return {3, t[3] or '', t[4] or '', t[5] or ''} end
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if t[1] == 'p' and tonumber(t[2]) > ms then return {2, t[3] or '', t[4] or '', ''} end
local lease = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 's', 'p', 'o', ARGV[1], 'd', string.format('%d', ms + lease), 'b', ARGV[3], 'f', ARGV[4])
if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
return {1, '', '', ''}
",
    )
});

/// KEYS: tok. ARGV: owner, response, ttl ms. → 1 completed, 0 not the owner's (or lease over).
static TOKEN_COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('HMGET', KEYS[1], 's', 'o')
if t[1] ~= 'p' or t[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 's', 'c', 'r', ARGV[2])
redis.call('HDEL', KEYS[1], 'o', 'd')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
",
    )
});

/// KEYS: tok. ARGV: owner, lease ms. → 1 renewed (compare-and-set on the owner), 0 not the
/// owner's consumption.
static TOKEN_RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('HMGET', KEYS[1], 's', 'o')
if t[1] ~= 'p' or t[2] ~= ARGV[1] then return 0 end
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local lease = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'd', string.format('%d', ms + lease))
if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
return 1
",
    )
});

/// KEYS: tok. ARGV: owner. → 1 restored to issued, 0 not the owner's.
static TOKEN_RESTORE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('HMGET', KEYS[1], 's', 'o')
if t[1] ~= 'p' or t[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 's', 'i')
redis.call('HDEL', KEYS[1], 'o', 'd', 'b', 'f')
return 1
",
    )
});

impl TokenStore for RedisStore {
    async fn issue(&self, token_key: &StorageKey, ttl: Duration) -> Result<(), Error> {
        let _: i64 = self
            .eval(
                TOKEN_ISSUE
                    .key(rkey(token_key, "tok"))
                    .arg(millis(ttl).max(1)),
            )
            .await?;
        Ok(())
    }

    async fn consume(
        &self,
        token_key: &StorageKey,
        owner: &str,
        binding: &str,
        fingerprint: Option<&str>,
        lease: Duration,
    ) -> Result<Consumed, Error> {
        let (code, b, f, r): (i64, Vec<u8>, Vec<u8>, Vec<u8>) = self
            .eval(
                TOKEN_CONSUME
                    .key(rkey(token_key, "tok"))
                    .arg(owner)
                    .arg(millis(lease).max(1))
                    .arg(binding)
                    .arg(fingerprint.unwrap_or("")),
            )
            .await?;
        Ok(match code {
            1 => Consumed::Claimed,
            2 => Consumed::Busy {
                binding: text(b)?,
                fingerprint: opt(f)?,
            },
            3 => Consumed::Replay {
                binding: text(b)?,
                fingerprint: opt(f)?,
                response: r,
            },
            _ => Consumed::Invalid,
        })
    }

    async fn complete_token(
        &self,
        token_key: &StorageKey,
        owner: &str,
        response: &[u8],
        ttl: Duration,
    ) -> Result<bool, Error> {
        self.eval_cas(
            TOKEN_COMPLETE
                .key(rkey(token_key, "tok"))
                .arg(owner)
                .arg(response)
                .arg(millis(ttl).max(1)),
        )
        .await
    }

    async fn renew_token(
        &self,
        token_key: &StorageKey,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, Error> {
        self.eval_cas(
            TOKEN_RENEW
                .key(rkey(token_key, "tok"))
                .arg(owner)
                .arg(millis(lease).max(1)),
        )
        .await
    }

    async fn restore_token(&self, token_key: &StorageKey, owner: &str) -> Result<bool, Error> {
        self.eval_cas(TOKEN_RESTORE.key(rkey(token_key, "tok")).arg(owner))
            .await
    }

    fn restore_token_detached(&self, token_key: StorageKey, owner: String) {
        self.spawn(|s| async move {
            let _ = s.restore_token(&token_key, &owner).await;
        });
    }
}

// ---------------------------------------------------------------- dedup_table (claim mode)

/// KEYS: rec. ARGV: owner, fingerprint, lease ms. → 1 claimed, 0 a record exists.
static REC_CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'o', ARGV[1], 'f', ARGV[2], 's', 'p')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
",
    )
});

/// KEYS: rec. ARGV: owner, response, ttl ms. → 1 completed, 0 not the owner's claim.
static REC_COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('HMGET', KEYS[1], 's', 'o')
if t[1] ~= 'p' or t[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 's', 'c', 'r', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
",
    )
});

/// KEYS: rec. ARGV: owner, lease ms. → 1 renewed (compare-and-`PEXPIRE`), 0 not the owner's
/// in-progress claim.
static REC_RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('HMGET', KEYS[1], 's', 'o')
if t[1] ~= 'p' or t[2] ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
",
    )
});

/// KEYS: rec. ARGV: owner. → 1 deleted, 0 not the owner's claim.
static REC_RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('HMGET', KEYS[1], 's', 'o')
if t[1] ~= 'p' or t[2] ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
",
    )
});

/// KEYS: rec. → {owner, fingerprint, state, response} (all '' when absent).
static REC_READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('HMGET', KEYS[1], 'o', 'f', 's', 'r')
return {t[1] or '', t[2] or '', t[3] or '', t[4] or ''}
",
    )
});

/// `dedup_table` claim mode on Redis: the record is a hash whose `PX` is the claim's lease,
/// then the response's TTL. Redis deletes expired records itself, so [`ClaimStore::read`]
/// never reports an expired record and a take-over is a fresh claim.
impl ClaimStore for RedisStore {
    fn backend_name(&self) -> &'static str {
        self.name
    }

    async fn try_claim(&self, claim: &Claim<'_>) -> Result<bool, Error> {
        self.eval_cas(
            REC_CLAIM
                .key(rkey(claim.key, "rec"))
                .arg(claim.owner)
                .arg(claim.fingerprint.unwrap_or(""))
                .arg(millis(claim.lease).max(1)),
        )
        .await
    }

    async fn read(&self, key: &StorageKey) -> Result<Option<Record>, Error> {
        let (o, f, s, r): (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) =
            self.eval(&mut REC_READ.key(rkey(key, "rec"))).await?;
        if s.is_empty() {
            return Ok(None);
        }
        Ok(Some(Record {
            owner: text(o)?,
            fingerprint: opt(f)?,
            state: if s == b"c" {
                RecordState::Completed(r)
            } else {
                RecordState::InProgress
            },
            expired: false,
        }))
    }

    async fn take_over(&self, claim: &Claim<'_>, _previous_owner: &str) -> Result<bool, Error> {
        // Redis removed the expired record itself: taking over is claiming a free key.
        self.try_claim(claim).await
    }

    async fn complete(
        &self,
        key: &StorageKey,
        owner: &str,
        response: &[u8],
        ttl: Duration,
    ) -> Result<bool, Error> {
        self.eval_cas(
            REC_COMPLETE
                .key(rkey(key, "rec"))
                .arg(owner)
                .arg(response)
                .arg(millis(ttl).max(1)),
        )
        .await
    }

    async fn renew(&self, key: &StorageKey, owner: &str, lease: Duration) -> Result<bool, Error> {
        self.eval_cas(
            REC_RENEW
                .key(rkey(key, "rec"))
                .arg(owner)
                .arg(millis(lease).max(1)),
        )
        .await
    }

    async fn release(&self, key: &StorageKey, owner: &str) -> Result<(), Error> {
        let _: i64 = self
            .eval(REC_RELEASE.key(rkey(key, "rec")).arg(owner))
            .await?;
        Ok(())
    }

    fn release_detached(&self, key: StorageKey, owner: String) {
        self.spawn(|s| async move {
            let _ = ClaimStore::release(&s, &key, &owner).await;
        });
    }
}
