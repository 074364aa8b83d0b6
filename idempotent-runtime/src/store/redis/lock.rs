//! `distributed_lock` on Redis: the [`LockStore`] impl and its scripts. Keys `idem:{H}:lock`
//! (while held `p`, the owner's length, `:`, owner, fingerprint, `PX lease`; once completed `c`,
//! the fingerprint's length, `:`, fingerprint, the response, `PX ttl`: lengths, not separators,
//! so no owner or fingerprint can pass for another) and `idem:{H}:fence` (the last fencing token); see the [module](super)
//! for the layout. A fresh call executes 5 commands inside Redis (acquire 3, complete 2), a
//! replay 2, each call one script.

use std::sync::LazyLock;
use std::time::Duration;

use super::{Lua, RedisStore, opt, rkey, rkeys, text};
use crate::store::{Acquired, LockStore, millis};
use crate::{Error, StorageKey};

/// KEYS: lock, fence. ARGV: 'p'..#owner..':'..owner..fingerprint, lease ms, owner.
/// → {0, fence} acquired, fence = max(last token + 1, server clock in µs) (or already held by
/// the owner: a resent acquisition, lease reset, same fence) | {1, 'c'..#fp..':'..fp..response}
/// replay | {2, 'p'..#holder..':'..holder..fp} held. A fresh acquisition executes 3 commands (SET NX, TIME,
/// SET … GET), a replay 2.
#[doc(hidden)]
pub const LOCK_ACQUIRE_LUA: &str = r"
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
local ours = 'p' .. #ARGV[3] .. ':' .. ARGV[3]
if string.sub(v, 1, #ours) == ours then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {0, redis.call('GET', KEYS[2]) or '0'}
end
return {2, v}
";
static LOCK_ACQUIRE: LazyLock<Lua> = LazyLock::new(|| Lua::new(LOCK_ACQUIRE_LUA));

/// KEYS: lock. ARGV: owner, lease ms. → 1 renewed, 0 not the owner's.
#[doc(hidden)]
pub const LOCK_RENEW_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
local ours = 'p' .. #ARGV[1] .. ':' .. ARGV[1]
if v and string.sub(v, 1, #ours) == ours then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";
static LOCK_RENEW: LazyLock<Lua> = LazyLock::new(|| Lua::new(LOCK_RENEW_LUA));

/// KEYS: lock. ARGV: owner, response, ttl ms. → 1 completed (the lock's value replaced by
/// 'c'..#fingerprint..':'..fingerprint..response, `PX ttl`: 2 commands), 0 not the owner's.
#[doc(hidden)]
pub const LOCK_COMPLETE_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
local ours = 'p' .. #ARGV[1] .. ':' .. ARGV[1]
if not v or string.sub(v, 1, #ours) ~= ours then return 0 end
local fp = string.sub(v, #ours + 1)
redis.call('SET', KEYS[1], 'c' .. #fp .. ':' .. fp .. ARGV[2], 'PX', ARGV[3])
return 1
";
static LOCK_COMPLETE: LazyLock<Lua> = LazyLock::new(|| Lua::new(LOCK_COMPLETE_LUA));

/// KEYS: lock. ARGV: owner. → 1 deleted, 0 not the owner's.
#[doc(hidden)]
pub const LOCK_RELEASE_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
local ours = 'p' .. #ARGV[1] .. ':' .. ARGV[1]
if v and string.sub(v, 1, #ours) == ours then return redis.call('DEL', KEYS[1]) end
return 0
";
static LOCK_RELEASE: LazyLock<Lua> = LazyLock::new(|| Lua::new(LOCK_RELEASE_LUA));

impl LockStore for RedisStore {
    async fn acquire_lock(
        &self,
        key: &StorageKey,
        owner: &str,
        fingerprint: Option<&str>,
        lease: Duration,
    ) -> Result<Acquired, Error> {
        let value = format!("p{}:{owner}{}", owner.len(), fingerprint.unwrap_or(""));
        let [lock_key, fence_key] = rkeys(key, ["lock", "fence"]);
        let ((code, v), acknowledged): ((i64, Vec<u8>), _) = self
            .eval_waiting(
                LOCK_ACQUIRE
                    .keys(&[&lock_key, &fence_key])
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
                // 'c', the fingerprint's length, ':', the fingerprint, the response.
                let (fingerprint, response) = length_prefixed(&v)?;
                Ok(Acquired::Replay {
                    fingerprint: opt(fingerprint.to_vec())?.map(Into::into),
                    response: response.into(),
                })
            }
            _ => {
                // 'p', the holder's length, ':', the holder, its fingerprint.
                let (_, fingerprint) = length_prefixed(&v)?;
                Ok(Acquired::Held {
                    fingerprint: opt(fingerprint.to_vec())?.map(Into::into),
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
                .key(&rkey(key, "lock"))
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
        self.eval_cas(LOCK_RELEASE.key(&rkey(key, "lock")).arg(owner))
            .await
    }

    fn release_lock_detached(&self, key: StorageKey, owner: String) {
        self.spawn(|s| async move {
            let _ = s.release_lock(&key, &owner).await;
        });
    }
}

/// KEYS: lock, fence. → {value, pttl, fence}: value `''` when there is no lock entry, else the
/// stored value (`p…` held, `c…` completed); pttl its time to live in ms; fence the key's last
/// fencing token (`''` when the counter is missing).
const LOCK_INSPECT_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return {'', -2, ''} end
return {v, redis.call('PTTL', KEYS[1]), redis.call('GET', KEYS[2]) or ''}
";
static LOCK_INSPECT: LazyLock<Lua> = LazyLock::new(|| Lua::new(LOCK_INSPECT_LUA));

/// KEYS: lock. ARGV: force ('1' or '0'). → {'removed', 0}, {'absent', 0}, or {'live', pttl}:
/// a held lock left alone (no `force`). The fencing counter is never deleted.
const LOCK_EVICT_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return {'absent', 0} end
if string.sub(v, 1, 1) == 'p' and ARGV[1] ~= '1' then return {'live', redis.call('PTTL', KEYS[1])} end
redis.call('DEL', KEYS[1])
return {'removed', 0}
";
static LOCK_EVICT: LazyLock<Lua> = LazyLock::new(|| Lua::new(LOCK_EVICT_LUA));

/// `distributed_lock` entries on Redis: `idem:{H}:lock` read or deleted in one script each.
/// Redis expires a lock at the end of its lease and a stored response at the end of its TTL,
/// so neither is seen past it. An eviction leaves `idem:{H}:fence`, so the next acquisition's
/// fencing token is still above every earlier one.
impl crate::admin::LockAdminStore for RedisStore {
    async fn inspect_lock_key(&self, key: &StorageKey) -> Result<crate::admin::LockState, Error> {
        use crate::admin::{LockState, StoredResponse};
        let [lock_key, fence_key] = rkeys(key, ["lock", "fence"]);
        let (v, ttl, fence): (Vec<u8>, i64, Vec<u8>) = self
            .eval(&mut LOCK_INSPECT.keys(&[&lock_key, &fence_key]))
            .await?;
        Ok(match v.first() {
            Some(b'p') => {
                let (owner, _) = length_prefixed(&v)?;
                let fence = match text(fence)? {
                    f if f.is_empty() => None,
                    f => Some(f.parse::<u64>().map_err(|_| {
                        Error::Serialization("the fencing counter is not a number".into())
                    })?),
                };
                LockState::Held {
                    owner: text(owner.to_vec())?,
                    fence,
                    lease_left: super::record::pttl(ttl),
                }
            }
            Some(b'c') => {
                let (_, response) = length_prefixed(&v)?;
                LockState::Completed {
                    expires_in: super::record::pttl(ttl),
                    response: StoredResponse::from_bytes(response),
                }
            }
            _ => LockState::Absent,
        })
    }

    async fn evict_lock_key(
        &self,
        key: &StorageKey,
        force: bool,
    ) -> Result<crate::admin::Evicted, Error> {
        use crate::admin::Evicted;
        let (what, ttl): (String, i64) = self
            .eval(
                LOCK_EVICT
                    .key(&rkey(key, "lock"))
                    .arg(if force { "1" } else { "0" }),
            )
            .await?;
        Ok(match what.as_str() {
            "removed" => Evicted::Removed,
            "live" => Evicted::LiveClaim {
                lease_left: super::record::pttl(ttl),
            },
            _ => Evicted::Absent,
        })
    }
}

/// A stored value `<letter><n>:<n bytes><rest>` as (the `n` bytes, the rest).
fn length_prefixed(v: &[u8]) -> Result<(&[u8], &[u8]), Error> {
    let malformed = || Error::Serialization("a stored lock value is malformed".into());
    let body = v.get(1..).ok_or_else(malformed)?;
    let colon = body.iter().position(|&b| b == b':').ok_or_else(malformed)?;
    let n: usize = std::str::from_utf8(&body[..colon])
        .ok()
        .and_then(|n| n.parse().ok())
        .ok_or_else(malformed)?;
    let rest = &body[colon + 1..];
    if rest.len() < n {
        return Err(malformed());
    }
    Ok(rest.split_at(n))
}
