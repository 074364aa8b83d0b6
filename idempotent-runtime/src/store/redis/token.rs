//! `token` on Redis: the [`TokenStore`] impl and its scripts. One hash per token,
//! `idem:{H}:tok`; see the [module](super) for the layout.

use std::sync::LazyLock;
use std::time::Duration;

use super::{Lua, RedisStore, opt, rkey, text};
use crate::store::{Consumed, TokenStore, millis};
use crate::{Error, StorageKey};

/// KEYS: tok. ARGV: ttl ms.
static TOKEN_ISSUE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 's', 'i')
return redis.call('PEXPIRE', KEYS[1], ARGV[1])
",
    )
});

/// KEYS: tok. ARGV: owner, lease ms, binding, fingerprint.
/// → {0,..} invalid | {1,..} claimed (also when already consumed by the owner: a resent
/// consumption, lease reset) | {2, binding, fp, ''} busy | {3, binding, fp, response}.
static TOKEN_CONSUME: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"
local t = redis.call('HMGET', KEYS[1], 's', 'd', 'b', 'f', 'r', 'o')
if not t[1] then return {0, '', '', ''} end
if t[1] == 'c' then return {3, t[3] or '', t[4] or '', t[5] or ''} end
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if t[1] == 'p' and tonumber(t[2]) > ms and t[6] ~= ARGV[1] then return {2, t[3] or '', t[4] or '', ''} end
local lease = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 's', 'p', 'o', ARGV[1], 'd', string.format('%d', ms + lease), 'b', ARGV[3], 'f', ARGV[4])
if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
return {1, '', '', ''}
",
    )
});

/// KEYS: tok. ARGV: owner, response, ttl ms. → 1 completed, 0 not the owner's (or lease over).
static TOKEN_COMPLETE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
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
static TOKEN_RENEW: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
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
static TOKEN_RESTORE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
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
    async fn issue_token(&self, token_key: &StorageKey, ttl: Duration) -> Result<(), Error> {
        let tok_key = rkey(token_key, "tok");
        let _: i64 = self
            .eval(TOKEN_ISSUE.key(&tok_key).arg(millis(ttl).max(1)))
            .await?;
        match self.acquisition_replicated(&tok_key).await? {
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
        let tok_key = rkey(token_key, "tok");
        let (code, b, f, r): (i64, Vec<u8>, Vec<u8>, Vec<u8>) = self
            .eval(
                TOKEN_CONSUME
                    .key(&tok_key)
                    .arg(owner)
                    .arg(millis(lease).max(1))
                    .arg(binding)
                    .arg(fingerprint.unwrap_or("")),
            )
            .await?;
        if code == 1
            && let Some(not_replicated) = self.acquisition_replicated(&tok_key).await?
        {
            let _ = self.restore_token(token_key, owner).await;
            return Err(not_replicated);
        }
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
        let tok_key = rkey(token_key, "tok");
        let completed = self
            .eval_cas(
                TOKEN_COMPLETE
                    .key(&tok_key)
                    .arg(owner)
                    .arg(response)
                    .arg(millis(ttl).max(1)),
            )
            .await?;
        if completed {
            self.completion_replicated(&tok_key).await;
        }
        Ok(completed)
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
