//! Hand-written Redis paths: the runtime's own Lua scripts (their sources, from
//! `idempotent_runtime::store::redis::scripts`, so both sides always run the same protocol), sent with redis-rs
//! `Script::invoke_async` (`EVALSHA`, `EVAL` after `NOSCRIPT`) on a clone of the same
//! `ConnectionManager` the `RedisStore` uses. Keys `hb:{<plain key>}:rec|lock|fence|tok`.

use std::sync::LazyLock;
use std::time::Duration;

use idempotent_runtime::store::redis::scripts;
use redis::Script;
use redis::aio::ConnectionManager;

use super::{LEASE_MS, TTL_MS, busy, encode, fingerprint, key, lost, mismatch, owner, token_key};
use crate::{AppError, Receipt, Req, receipt};

static REC_CLAIM: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::REC_CLAIM_LUA));

static REC_COMPLETE: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::REC_COMPLETE_LUA));

static LOCK_ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::LOCK_ACQUIRE_LUA));

static LOCK_COMPLETE: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::LOCK_COMPLETE_LUA));

static TOKEN_ISSUE: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::TOKEN_ISSUE_LUA));

static TOKEN_CONSUME: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::TOKEN_CONSUME_LUA));

static TOKEN_COMPLETE: LazyLock<Script> =
    LazyLock::new(|| Script::new(scripts::TOKEN_COMPLETE_LUA));

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
        let bytes = encode(&value)?;
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
            .arg(format!("p{}:{owner}{fp}", owner.len()))
            .arg(LEASE_MS)
            .arg(&owner)
            .invoke_async(&mut conn)
            .await?;
        match code {
            0 => {}
            1 => {
                // 'c', the fingerprint's length, ':', fingerprint, response
                let colon = v.iter().position(|&b| b == b':').ok_or_else(lost)?;
                let n: usize = std::str::from_utf8(&v[1..colon])
                    .ok()
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(lost)?;
                let rest = v.get(colon + 1..).ok_or_else(lost)?;
                if rest.len() < n || &rest[..n] != fp.as_bytes() {
                    return Err(mismatch());
                }
                return Ok(serde_json::from_slice(&rest[n..])?);
            }
            _ => return Err(busy()),
        }
        let fence: u64 = std::str::from_utf8(&v)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(lost)?;
        let value = receipt(req, fence);
        let bytes = encode(&value)?;
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
            .key(format!("hb:{{{}}}:tok", token_key(&token)))
            .arg(ttl.as_millis() as i64)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(token)
    }

    /// `token`: one consume script, then one complete script.
    pub async fn checkout(&self, req: &Req) -> Result<Receipt, AppError> {
        let k = format!("hb:{{{}}}:tok", token_key(&req.id));
        let binding = key("hand.token", req);
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
        let bytes = encode(&value)?;
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
