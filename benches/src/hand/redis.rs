//! Hand-written Redis paths: the runtime's own Lua scripts (copied verbatim from
//! `idempotent-runtime/src/store/redis/{record,lock,token}.rs`), sent with redis-rs
//! `Script::invoke_async` (`EVALSHA`, `EVAL` after `NOSCRIPT`) on a clone of the same
//! `ConnectionManager` the `RedisStore` uses. Keys `hb:{<plain key>}:rec|lock|fence|tok`.

use std::sync::LazyLock;
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

use super::{LEASE_MS, TTL_MS, busy, fingerprint, key, lost, mismatch, owner};
use crate::{AppError, Receipt, Req, receipt};

static REC_CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('HMGET', KEYS[1], 's', 'o', 'f', 'r')
if t[1] then
  if t[1] == 'p' and t[2] == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
    return {'1'}
  end
  return {'0', t[2] or '', t[3] or '', t[1], t[4] or ''}
end
redis.call('HSET', KEYS[1], 'o', ARGV[1], 'f', ARGV[2], 's', 'p')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {'1'}
",
    )
});

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

static LOCK_ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
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

static LOCK_COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('GET', KEYS[1])
if not v or string.sub(v, 1, #ARGV[1] + 1) ~= 'p' .. ARGV[1] then return 0 end
redis.call('SET', KEYS[1], 'c' .. string.sub(v, #ARGV[1] + 2) .. ':' .. ARGV[2], 'PX', ARGV[3])
return 1
",
    )
});

static TOKEN_ISSUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('SET', KEYS[1], 'i|' .. string.format('%d', ms + tonumber(ARGV[1])), 'PX', ARGV[1])
return 1
",
    )
});

static TOKEN_CONSUME: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
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
",
    )
});

static TOKEN_COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local o, b, f = string.match(v, '^p|%d+|%d+|([^|]*)|([^|]*)|([^|]*)$')
if o ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], 'c|' .. b .. '|' .. f .. '|' .. ARGV[2], 'PX', ARGV[3])
return 1
",
    )
});

/// The three Redis paths by hand, on one shared connection manager.
#[derive(Clone)]
pub struct Redis {
    pub conn: ConnectionManager,
}

impl Redis {
    /// `dedup_table` claim mode: one claim-or-read script, then one complete script.
    pub async fn place(&self, req: &Req) -> Result<Receipt, AppError> {
        let k = format!("hb:{{{}}}:rec", key("hand.claim", req));
        let fp = fingerprint(req);
        let owner = owner();
        let mut conn = self.conn.clone();
        let mut reply: Vec<Vec<u8>> = REC_CLAIM
            .key(&k)
            .arg(&owner)
            .arg(&fp)
            .arg(LEASE_MS)
            .invoke_async(&mut conn)
            .await?;
        if reply.first().map(Vec::as_slice) != Some(b"1") {
            // {'0', owner, fingerprint, state, response}
            if reply.len() != 5 {
                return Err(AppError::Hand("unexpected claim reply".into()));
            }
            let response = reply.pop().unwrap_or_default();
            let state = reply.pop().unwrap_or_default();
            if reply[2] != fp.as_bytes() {
                return Err(mismatch());
            }
            if state != b"c" {
                return Err(busy());
            }
            return Ok(serde_json::from_slice(&response)?);
        }
        let value = receipt(req, 0);
        let bytes = serde_json::to_vec(&value)?;
        let done: i64 = REC_COMPLETE
            .key(&k)
            .arg(&owner)
            .arg(bytes)
            .arg(TTL_MS)
            .invoke_async(&mut conn)
            .await?;
        if done != 1 {
            return Err(lost());
        }
        Ok(value)
    }

    /// `distributed_lock`: one acquire script (lock + fencing token), then one complete script.
    pub async fn settle(&self, req: &Req) -> Result<Receipt, AppError> {
        let base = key("hand.lock", req);
        let (lock_key, fence_key) = (
            format!("hb:{{{base}}}:lock"),
            format!("hb:{{{base}}}:fence"),
        );
        let fp = fingerprint(req);
        let owner = owner();
        let mut conn = self.conn.clone();
        let (code, v): (i64, Vec<u8>) = LOCK_ACQUIRE
            .key(&lock_key)
            .key(&fence_key)
            .arg(format!("p{owner}{fp}"))
            .arg(LEASE_MS)
            .arg(&owner)
            .invoke_async(&mut conn)
            .await?;
        match code {
            0 => {}
            1 => {
                // 'c', fingerprint, ':', response
                let colon = v.iter().position(|&b| b == b':').ok_or_else(lost)?;
                if &v[1..colon] != fp.as_bytes() {
                    return Err(mismatch());
                }
                return Ok(serde_json::from_slice(&v[colon + 1..])?);
            }
            _ => return Err(busy()),
        }
        let fence: u64 = std::str::from_utf8(&v)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(lost)?;
        let value = receipt(req, fence);
        let bytes = serde_json::to_vec(&value)?;
        let done: i64 = LOCK_COMPLETE
            .key(&lock_key)
            .arg(&owner)
            .arg(bytes)
            .arg(TTL_MS)
            .invoke_async(&mut conn)
            .await?;
        if done != 1 {
            return Err(lost());
        }
        Ok(value)
    }

    /// Issues a token valid for `ttl` (not timed: the benchmark issues before it measures).
    pub async fn issue(&self, ttl: Duration) -> Result<String, AppError> {
        let token = owner();
        let _: i64 = TOKEN_ISSUE
            .key(format!("hb:{{{token}}}:tok"))
            .arg(ttl.as_millis() as i64)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(token)
    }

    /// `token`: one consume script, then one complete script.
    pub async fn checkout(&self, req: &Req) -> Result<Receipt, AppError> {
        let k = format!("hb:{{{}}}:tok", req.id);
        let binding = format!("hand.token:{}", req.tenant);
        let fp = fingerprint(req);
        let owner = owner();
        let mut conn = self.conn.clone();
        let (code, v): (i64, Vec<u8>) = TOKEN_CONSUME
            .key(&k)
            .arg(&owner)
            .arg(LEASE_MS)
            .arg(&binding)
            .arg(&fp)
            .invoke_async(&mut conn)
            .await?;
        match code {
            1 => {}
            3 => {
                // c|binding|fingerprint|response
                let mut fields = v.splitn(4, |&b| b == b'|').skip(1);
                let (b, f, r) = (fields.next(), fields.next(), fields.next());
                if b != Some(binding.as_bytes()) || f != Some(fp.as_bytes()) {
                    return Err(mismatch());
                }
                return Ok(serde_json::from_slice(r.unwrap_or_default())?);
            }
            2 => return Err(busy()),
            _ => return Err(AppError::Hand("invalid token".into())),
        }
        let value = receipt(req, 0);
        let bytes = serde_json::to_vec(&value)?;
        let done: i64 = TOKEN_COMPLETE
            .key(&k)
            .arg(&owner)
            .arg(bytes)
            .arg(TTL_MS)
            .invoke_async(&mut conn)
            .await?;
        if done != 1 {
            return Err(lost());
        }
        Ok(value)
    }
}
