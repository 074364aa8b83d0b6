//! `distributed_lock` on Redis: the [`LockStore`] impl and its scripts. Keys `idem:{H}:lock`
//! (while held `p`, owner, fingerprint, `PX lease`; once completed `c`, fingerprint, `:`, the
//! response, `PX ttl`) and `idem:{H}:fence` (the last fencing token); see the [module](super)
//! for the layout. A fresh call executes 5 commands inside Redis (acquire 3, complete 2), a
//! replay 2, each call one script.

use std::sync::LazyLock;
use std::time::Duration;

use super::{Lua, RedisStore, opt, rkey, text};
use crate::store::{Acquired, LockStore, millis};
use crate::{Error, StorageKey};

/// KEYS: lock, fence. ARGV: 'p'..owner..fingerprint, lease ms, owner.
/// → {0, fence} acquired, fence = max(last token + 1, server clock in µs) (or already held by
/// the owner: a resent acquisition, lease reset, same fence) | {1, 'c'..fp..':'..response}
/// replay | {2, 'p'..holder..fp} held. A fresh acquisition executes 3 commands (SET NX, TIME,
/// SET … GET), a replay 2.
static LOCK_ACQUIRE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  -- The token: one above the last and at least the server's clock in microseconds. The clock
  -- keeps it above every token handed out before even where the counter is missing (Redis
  -- restarted without persistence) or stale (a replica promoted before the last write
  -- reached it): tokens of one key are at least a lease apart in time.
  local now = redis.call('TIME')
  local token = tonumber(now[1]) * 1000000 + tonumber(now[2])
  local last = tonumber(redis.call('SET', KEYS[2], string.format('%d', token), 'GET') or '0') or 0
  if last >= token then
    token = last + 1
    redis.call('SET', KEYS[2], string.format('%d', token))
  end
  return {0, string.format('%d', token)}
end
local v = redis.call('GET', KEYS[1]) or ''
if string.sub(v, 1, 1) == 'c' then return {1, v} end
if string.sub(v, 2, #ARGV[3] + 1) == ARGV[3] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {0, redis.call('GET', KEYS[2]) or '0'}
end
return {2, v}
",
    )
});

/// KEYS: lock. ARGV: owner, lease ms. → 1 renewed, 0 not the owner's.
static LOCK_RENEW: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[1] + 1) == 'p' .. ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
",
    )
});

/// KEYS: lock. ARGV: owner, response, ttl ms. → 1 completed (the lock's value replaced by
/// 'c'..fingerprint..':'..response, `PX ttl`: 2 commands), 0 not the owner's.
static LOCK_COMPLETE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local v = redis.call('GET', KEYS[1])
if not v or string.sub(v, 1, #ARGV[1] + 1) ~= 'p' .. ARGV[1] then return 0 end
redis.call('SET', KEYS[1], 'c' .. string.sub(v, #ARGV[1] + 2) .. ':' .. ARGV[2], 'PX', ARGV[3])
return 1
",
    )
});

/// KEYS: lock. ARGV: owner. → 1 deleted, 0 not the owner's.
static LOCK_RELEASE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[1] + 1) == 'p' .. ARGV[1] then return redis.call('DEL', KEYS[1]) end
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
        let value = format!("p{owner}{}", fingerprint.unwrap_or(""));
        let lock_key = rkey(key, "lock");
        let ((code, v), acknowledged): ((i64, Vec<u8>), _) = self
            .eval_waiting(
                LOCK_ACQUIRE
                    .key(&lock_key)
                    .key(rkey(key, "fence"))
                    .arg(value)
                    .arg(millis(lease).max(1))
                    .arg(owner),
                &lock_key,
            )
            .await?;
        match code {
            0 => {
                let fence = text(v)?.parse::<u64>().map_err(|_| {
                    Error::Serialization("the fencing counter is not a number".into())
                })?;
                if let Some(not_replicated) = self.not_replicated(acknowledged)? {
                    let _ = self.release_lock(key, owner).await;
                    return Err(not_replicated);
                }
                Ok(Acquired::Acquired { fence })
            }
            1 => {
                // 'c', the fingerprint (64 hex or nothing), ':', the response.
                let colon = v.iter().position(|&b| b == b':').ok_or_else(|| {
                    Error::Serialization("a stored lock response is malformed".into())
                })?;
                let fingerprint = opt(v.get(1..colon).unwrap_or_default().to_vec())?;
                let response = v.get(colon + 1..).unwrap_or_default().to_vec();
                Ok(Acquired::Replay {
                    fingerprint,
                    response,
                })
            }
            _ => {
                // 'p', the holder's owner token (as long as ours), its fingerprint.
                let holder = text(v)?;
                let fp = holder.get(1 + owner.len()..).unwrap_or("");
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
        let lock_key = rkey(key, "lock");
        let (n, acknowledged): (i64, _) = self
            .eval_waiting(
                LOCK_COMPLETE
                    .key(&lock_key)
                    .arg(owner)
                    .arg(response)
                    .arg(millis(ttl).max(1)),
                &lock_key,
            )
            .await?;
        if n == 1 {
            self.completion_replicated(acknowledged);
        }
        Ok(n == 1)
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
