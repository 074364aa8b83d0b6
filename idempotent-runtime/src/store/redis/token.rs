//! `token` on Redis: the [`TokenStore`] impl and its scripts. One string per token,
//! `idem:{H}:tok`; see the [module](super) for the layout. A fresh call executes 5 commands
//! inside Redis (consume: GET, TIME, SET; complete: GET, SET), a replay 1.

use std::sync::LazyLock;
use std::time::Duration;

use super::{Lua, RedisStore, opt, rkey, text};
use crate::store::{Consumed, TokenStore, millis};
use crate::{Error, StorageKey};

/// KEYS: tok. ARGV: ttl ms. → 1. The value `i|<end of the token's TTL, server ms>`.
#[doc(hidden)]
pub const TOKEN_ISSUE_LUA: &str = r"
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('SET', KEYS[1], 'i|' .. string.format('%d', ms + tonumber(ARGV[1])), 'PX', ARGV[1])
return 1
";
static TOKEN_ISSUE: LazyLock<Lua> = LazyLock::new(|| Lua::new(TOKEN_ISSUE_LUA));

/// KEYS: tok. ARGV: owner, lease ms, binding, fingerprint.
/// → {0, ''} invalid | {1, ''} claimed (also when already consumed by the owner: a resent
/// consumption, lease reset) | {2, value} busy | {3, value} completed (replay). Claiming
/// executes 3 commands (GET, TIME, SET).
#[doc(hidden)]
pub const TOKEN_CONSUME_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return {0, ''} end
local state = string.sub(v, 1, 1)
if state == 'c' then return {3, v} end
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local ends
if state == 'i' then
  ends = string.sub(v, 3)
else
  local e, d, o = string.match(v, '^p|(%d+)|(%d+)|([^|]*)|')
  if tonumber(d) > ms and o ~= ARGV[1] then return {2, v} end
  ends = e
end
local lease = tonumber(ARGV[2])
local px = math.max(tonumber(ends) - ms, lease)
redis.call('SET', KEYS[1], 'p|' .. ends .. '|' .. string.format('%d', ms + lease) .. '|' .. ARGV[1] .. '|' .. ARGV[3] .. '|' .. ARGV[4], 'PX', string.format('%d', px))
return {1, ''}
";
static TOKEN_CONSUME: LazyLock<Lua> = LazyLock::new(|| Lua::new(TOKEN_CONSUME_LUA));

/// KEYS: tok. ARGV: owner, response, ttl ms. → 1 completed (2 commands: GET, SET), 0 not the
/// owner's consumption.
#[doc(hidden)]
pub const TOKEN_COMPLETE_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local o, b, f = string.match(v, '^p|%d+|%d+|([^|]*)|([^|]*)|([^|]*)$')
if o ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], 'c|' .. b .. '|' .. f .. '|' .. ARGV[2], 'PX', ARGV[3])
return 1
";
static TOKEN_COMPLETE: LazyLock<Lua> = LazyLock::new(|| Lua::new(TOKEN_COMPLETE_LUA));

/// KEYS: tok. ARGV: owner, lease ms. → 1 renewed (compare-and-set on the owner), 0 not the
/// owner's consumption.
#[doc(hidden)]
pub const TOKEN_RENEW_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local e, o, rest = string.match(v, '^p|(%d+)|%d+|([^|]*)(|.*)$')
if o ~= ARGV[1] then return 0 end
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local lease = tonumber(ARGV[2])
local px = math.max(tonumber(e) - ms, lease)
redis.call('SET', KEYS[1], 'p|' .. e .. '|' .. string.format('%d', ms + lease) .. '|' .. o .. rest, 'PX', string.format('%d', px))
return 1
";
static TOKEN_RENEW: LazyLock<Lua> = LazyLock::new(|| Lua::new(TOKEN_RENEW_LUA));

/// KEYS: tok. ARGV: owner. → 1 restored to issued (or deleted when the token's own TTL is
/// over), 0 not the owner's.
#[doc(hidden)]
pub const TOKEN_RESTORE_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local e, o = string.match(v, '^p|(%d+)|%d+|([^|]*)|')
if o ~= ARGV[1] then return 0 end
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local left = tonumber(e) - ms
if left <= 0 then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], 'i|' .. e, 'PX', string.format('%d', left))
end
return 1
";
static TOKEN_RESTORE: LazyLock<Lua> = LazyLock::new(|| Lua::new(TOKEN_RESTORE_LUA));

impl TokenStore for RedisStore {
    async fn issue_token(&self, token_key: &StorageKey, ttl: Duration) -> Result<(), Error> {
        let tok_key = rkey(token_key, "tok");
        let (_, acknowledged): (i64, _) = self
            .eval_waiting(TOKEN_ISSUE.key(&tok_key).arg(millis(ttl).max(1)), &tok_key)
            .await?;
        match self.not_replicated(acknowledged)? {
            Some(not_replicated) => Err(not_replicated),
            None => Ok(()),
        }
    }

    async fn consume_token(
        &self,
        token_key: &StorageKey,
        owner: &str,
        binding: &str,
        fingerprint: Option<&str>,
        lease: Duration,
    ) -> Result<Consumed, Error> {
        // The stored value separates its fields with '|' (the strategy's owners, bindings and
        // fingerprints are hex); a hand-written caller's field with one would read back wrong.
        if [owner, binding, fingerprint.unwrap_or("")]
            .iter()
            .any(|f| f.contains('|'))
        {
            return Err(Error::Unsupported(
                "the Redis token store's owner, binding and fingerprint must not contain '|'"
                    .into(),
            ));
        }
        let tok_key = rkey(token_key, "tok");
        let ((code, v), acknowledged): ((i64, Vec<u8>), _) = self
            .eval_waiting(
                TOKEN_CONSUME
                    .key(&tok_key)
                    .arg(owner)
                    .arg(millis(lease).max(1))
                    .arg(binding)
                    .arg(fingerprint.unwrap_or("")),
                &tok_key,
            )
            .await?;
        if code == 1
            && let Some(not_replicated) = self.not_replicated(acknowledged)?
        {
            let _ = self.restore_token(token_key, owner).await;
            return Err(not_replicated);
        }
        Ok(match code {
            1 => Consumed::Claimed,
            2 => {
                // p|ends|deadline|owner|binding|fingerprint
                let mut fields = v.splitn(6, |&b| b == b'|').skip(4);
                let (b, f) = (fields.next(), fields.next());
                Consumed::Busy {
                    binding: text(b.unwrap_or_default().to_vec())?.into(),
                    fingerprint: opt(f.unwrap_or_default().to_vec())?.map(Into::into),
                }
            }
            3 => {
                // c|binding|fingerprint|response
                let mut fields = v.splitn(4, |&b| b == b'|').skip(1);
                let (b, f, r) = (fields.next(), fields.next(), fields.next());
                Consumed::Replay {
                    binding: text(b.unwrap_or_default().to_vec())?.into(),
                    fingerprint: opt(f.unwrap_or_default().to_vec())?.map(Into::into),
                    response: bytes::Bytes::copy_from_slice(r.unwrap_or_default()),
                }
            }
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
        let tok_key = rkey(token_key, "tok");
        let (n, acknowledged): (i64, _) = self
            .eval_waiting(
                TOKEN_COMPLETE
                    .key(&tok_key)
                    .arg(owner)
                    .arg(response)
                    .arg(millis(ttl).max(1)),
                &tok_key,
            )
            .await?;
        if n == 1 {
            self.completion_replicated(acknowledged);
        }
        Ok(n == 1)
    }

    async fn renew_token(
        &self,
        token_key: &StorageKey,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, Error> {
        self.eval_cas(
            TOKEN_RENEW
                .key(&rkey(token_key, "tok"))
                .arg(owner)
                .arg(millis(lease).max(1)),
        )
        .await
    }

    async fn restore_token(&self, token_key: &StorageKey, owner: &str) -> Result<bool, Error> {
        self.eval_cas(TOKEN_RESTORE.key(&rkey(token_key, "tok")).arg(owner))
            .await
    }

    fn restore_token_detached(&self, token_key: StorageKey, owner: String) {
        self.spawn(|s| async move {
            let _ = s.restore_token(&token_key, &owner).await;
        });
    }
}

/// KEYS: tok. → {value, pttl, now}: value `''` when there is no token, else the stored value;
/// pttl its time to live in ms; now the server's clock in Unix ms (to judge a consumer's lease).
const TOKEN_INSPECT_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return {'', -2, 0} end
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
return {v, redis.call('PTTL', KEYS[1]), ms}
";
static TOKEN_INSPECT: LazyLock<Lua> = LazyLock::new(|| Lua::new(TOKEN_INSPECT_LUA));

/// KEYS: tok. ARGV: force ('1' or '0'). → {'removed', 0}, {'absent', 0}, or {'live', lease
/// left ms}: a consumption within its lease left alone (no `force`).
const TOKEN_EVICT_LUA: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return {'absent', 0} end
if string.sub(v, 1, 1) == 'p' and ARGV[1] ~= '1' then
  local d = tonumber(string.match(v, '^p|%d+|(%d+)|'))
  local now = redis.call('TIME')
  local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  if d and d > ms then return {'live', d - ms} end
end
redis.call('DEL', KEYS[1])
return {'removed', 0}
";
static TOKEN_EVICT: LazyLock<Lua> = LazyLock::new(|| Lua::new(TOKEN_EVICT_LUA));

/// One-time tokens on Redis: `idem:{H}:tok` read or deleted in one script each. Redis expires
/// a token at the end of its TTL (or of its consumer's lease, when later) and a stored
/// response at the end of its TTL.
impl crate::admin::TokenAdminStore for RedisStore {
    async fn inspect_token_key(
        &self,
        token_key: &StorageKey,
    ) -> Result<crate::admin::TokenState, Error> {
        use crate::admin::{StoredResponse, TokenState};
        let (v, ttl, now): (Vec<u8>, i64, i64) = self
            .eval(&mut TOKEN_INSPECT.key(&rkey(token_key, "tok")))
            .await?;
        let ms = |d: i64| Duration::from_millis(u64::try_from(d).unwrap_or(0));
        let malformed = || Error::Serialization("a stored token is malformed".into());
        let number = |f: Option<&[u8]>| -> Result<i64, Error> {
            std::str::from_utf8(f.ok_or_else(malformed)?)
                .ok()
                .and_then(|n| n.parse().ok())
                .ok_or_else(malformed)
        };
        Ok(match v.first() {
            Some(b'i') => TokenState::Issued {
                expires_in: ms(ttl),
            },
            Some(b'p') => {
                // p|ends|deadline|owner|binding|fingerprint
                let mut fields = v.splitn(6, |&b| b == b'|').skip(1);
                let ends = number(fields.next())?;
                let deadline = number(fields.next())?;
                let owner = text(fields.next().unwrap_or_default().to_vec())?;
                let binding = text(fields.next().unwrap_or_default().to_vec())?;
                if deadline > now {
                    TokenState::Consumed {
                        owner,
                        binding,
                        lease_left: ms(deadline - now),
                        expires_in: ms(ttl),
                    }
                } else {
                    // The consumer's lease ended: the next call consumes the token.
                    TokenState::Issued {
                        expires_in: ms(ends - now),
                    }
                }
            }
            Some(b'c') => {
                // c|binding|fingerprint|response
                let mut fields = v.splitn(4, |&b| b == b'|').skip(1);
                let (b, _, r) = (fields.next(), fields.next(), fields.next());
                TokenState::Completed {
                    binding: text(b.unwrap_or_default().to_vec())?,
                    expires_in: ms(ttl),
                    response: StoredResponse::from_bytes(r.unwrap_or_default()),
                }
            }
            _ => TokenState::Absent,
        })
    }

    async fn evict_token_key(
        &self,
        token_key: &StorageKey,
        force: bool,
    ) -> Result<crate::admin::Evicted, Error> {
        use crate::admin::Evicted;
        let (what, left): (String, i64) = self
            .eval(
                TOKEN_EVICT
                    .key(&rkey(token_key, "tok"))
                    .arg(if force { "1" } else { "0" }),
            )
            .await?;
        Ok(match what.as_str() {
            "removed" => Evicted::Removed,
            "live" => Evicted::LiveClaim {
                lease_left: Duration::from_millis(u64::try_from(left).unwrap_or(0)),
            },
            _ => Evicted::Absent,
        })
    }
}
