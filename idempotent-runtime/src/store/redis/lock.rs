//! `distributed_lock` on Redis: the [`LockStore`] impl and its scripts. Keys `idem:{H}:lock`
//! (owner and fingerprint, `PX lease`), `idem:{H}:fence` (the fencing counter) and
//! `idem:{H}:resp` (the stored response, `PX ttl`); see the [module](super) for the layout.

use std::sync::LazyLock;
use std::time::Duration;

use super::{Lua, RedisStore, opt, rkey, text};
use crate::store::{Acquired, LockStore, millis};
use crate::{Error, StorageKey};

/// KEYS: lock, fence, resp. ARGV: owner..fingerprint, lease ms, owner.
/// → {0, fence, ''} acquired, fence = max(counter + 1, server clock in µs) (or already held by the owner: a resent acquisition, lease reset,
/// same fence) | {1, fingerprint, response} replay | {2, holder value, ''} held.
static LOCK_ACQUIRE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local r = redis.call('HMGET', KEYS[3], 'f', 'r')
if r[2] then return {1, r[1] or '', r[2]} end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  -- The token: one above the counter and at least the server's clock in microseconds. The
  -- clock keeps it above every token handed out before even where the counter is missing
  -- (Redis restarted without persistence) or stale (a replica promoted before the last
  -- increments reached it): tokens of one key are at least a lease apart in time.
  local now = redis.call('TIME')
  local token = tonumber(now[1]) * 1000000 + tonumber(now[2])
  local counted = (tonumber(redis.call('GET', KEYS[2]) or '0') or 0) + 1
  if counted > token then token = counted end
  local s = string.format('%d', token)
  redis.call('SET', KEYS[2], s)
  return {0, s, ''}
end
local v = redis.call('GET', KEYS[1]) or ''
if string.sub(v, 1, #ARGV[3]) == ARGV[3] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {0, redis.call('GET', KEYS[2]) or '0', ''}
end
return {2, v, ''}
",
    )
});

/// KEYS: lock. ARGV: owner, lease ms. → 1 renewed, 0 not the owner's.
static LOCK_RENEW: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
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
static LOCK_COMPLETE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
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
static LOCK_RELEASE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

impl LockStore for RedisStore {
    async fn acquire_lock(
        &self,
        key: &StorageKey,
        owner: &str,
        fingerprint: Option<&str>,
        lease: Duration,
    ) -> Result<Acquired, Error> {
        let value = format!("{owner}{}", fingerprint.unwrap_or(""));
        let lock_key = rkey(key, "lock");
        let (code, a, b): (i64, Vec<u8>, Vec<u8>) = self
            .eval(
                LOCK_ACQUIRE
                    .key(&lock_key)
                    .key(rkey(key, "fence"))
                    .key(rkey(key, "resp"))
                    .arg(value)
                    .arg(millis(lease).max(1))
                    .arg(owner),
            )
            .await?;
        match code {
            0 => {
                let fence = text(a)?.parse::<u64>().map_err(|_| {
                    Error::Serialization("the fencing counter is not a number".into())
                })?;
                if let Some(not_replicated) = self.acquisition_replicated(&lock_key).await? {
                    let _ = self.release_lock(key, owner).await;
                    return Err(not_replicated);
                }
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

    async fn renew_lock(
        &self,
        key: &StorageKey,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, Error> {
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
        let resp_key = rkey(key, "resp");
        let completed = self
            .eval_cas(
                LOCK_COMPLETE
                    .key(rkey(key, "lock"))
                    .key(&resp_key)
                    .arg(owner)
                    .arg(response)
                    .arg(millis(ttl).max(1)),
            )
            .await?;
        if completed {
            self.completion_replicated(&resp_key).await;
        }
        Ok(completed)
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
