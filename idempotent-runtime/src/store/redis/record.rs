//! `dedup_table`'s claim mode on Redis: the [`ClaimStore`] impl and its scripts. One hash per
//! record, `idem:{H}:rec`; see the [module](super) for the layout.

use std::sync::LazyLock;
use std::time::Duration;

use super::{Lua, RedisStore, opt, rkey, text};
use crate::store::{Claim, ClaimOrRecord, ClaimStore, Record, RecordState, millis};
use crate::{Error, StorageKey};

/// KEYS: rec. ARGV: owner, fingerprint, lease ms. → {'1'} claimed (or already the owner's
/// in-progress claim: a resent claim, lease reset), {'0', owner, fingerprint, state, response}
/// another record exists (a replay reads it from this reply: one round trip, one `HMGET`).
#[doc(hidden)]
pub const REC_CLAIM_LUA: &str = r"
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
";
static REC_CLAIM: LazyLock<Lua> = LazyLock::new(|| Lua::new(REC_CLAIM_LUA));

/// KEYS: rec. ARGV: owner, response, ttl ms. → 1 completed, 0 not the owner's claim.
#[doc(hidden)]
pub const REC_COMPLETE_LUA: &str = r"
local t = redis.call('HMGET', KEYS[1], 's', 'o')
if t[1] ~= 'p' or t[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 's', 'c', 'r', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";
static REC_COMPLETE: LazyLock<Lua> = LazyLock::new(|| Lua::new(REC_COMPLETE_LUA));

/// KEYS: rec. ARGV: owner, lease ms. → 1 renewed (compare-and-`PEXPIRE`), 0 not the owner's
/// in-progress claim.
#[doc(hidden)]
pub const REC_RENEW_LUA: &str = r"
local t = redis.call('HMGET', KEYS[1], 's', 'o')
if t[1] ~= 'p' or t[2] ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
";
static REC_RENEW: LazyLock<Lua> = LazyLock::new(|| Lua::new(REC_RENEW_LUA));

/// KEYS: rec. ARGV: owner. → 1 deleted, 0 not the owner's claim.
#[doc(hidden)]
pub const REC_RELEASE_LUA: &str = r"
local t = redis.call('HMGET', KEYS[1], 's', 'o')
if t[1] ~= 'p' or t[2] ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
";
static REC_RELEASE: LazyLock<Lua> = LazyLock::new(|| Lua::new(REC_RELEASE_LUA));

/// KEYS: rec. → {owner, fingerprint, state, response} (all '' when absent).
#[doc(hidden)]
pub const REC_READ_LUA: &str = r"
local t = redis.call('HMGET', KEYS[1], 'o', 'f', 's', 'r')
return {t[1] or '', t[2] or '', t[3] or '', t[4] or ''}
";
static REC_READ: LazyLock<Lua> = LazyLock::new(|| Lua::new(REC_READ_LUA));

/// `dedup_table` claim mode on Redis: the record is a hash whose `PX` is the claim's lease,
/// then the response's TTL. Redis deletes expired records itself, so [`ClaimStore::read_record`]
/// never reports an expired record and a take-over is a fresh claim.
impl ClaimStore for RedisStore {
    async fn try_claim(&self, claim: &Claim<'_>) -> Result<bool, Error> {
        Ok(self.claim_or_read(claim).await? == ClaimOrRecord::Claimed)
    }

    async fn claim_or_read(&self, claim: &Claim<'_>) -> Result<ClaimOrRecord, Error> {
        let rec_key = rkey(claim.key, "rec");
        let (mut reply, acknowledged): (Vec<Vec<u8>>, _) = self
            .eval_waiting(
                REC_CLAIM
                    .key(&rec_key)
                    .arg(claim.owner)
                    .arg(claim.fingerprint.unwrap_or(""))
                    .arg(millis(claim.lease).max(1)),
                &rec_key,
            )
            .await?;
        if reply.first().map(Vec::as_slice) == Some(b"1") {
            if let Some(not_replicated) = self.not_replicated(acknowledged)? {
                let _ = self.release_claim(claim.key, claim.owner).await;
                return Err(not_replicated);
            }
            return Ok(ClaimOrRecord::Claimed);
        }
        if reply.len() != 5 {
            return Err(Error::Serialization(
                "unexpected reply of the Redis claim script".into(),
            ));
        }
        let response = reply.pop().unwrap_or_default();
        let state = reply.pop().unwrap_or_default();
        let fingerprint = reply.pop().unwrap_or_default();
        let owner = reply.pop().unwrap_or_default();
        Ok(ClaimOrRecord::Existing(record(
            owner,
            fingerprint,
            state,
            response,
        )?))
    }

    async fn read_record(&self, key: &StorageKey) -> Result<Option<Record>, Error> {
        let (o, f, s, r): (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) =
            self.eval(&mut REC_READ.key(&rkey(key, "rec"))).await?;
        record(o, f, s, r)
    }

    async fn take_over_claim(
        &self,
        claim: &Claim<'_>,
        _previous_owner: &str,
    ) -> Result<bool, Error> {
        // Redis removed the expired record itself: taking over is claiming a free key.
        self.try_claim(claim).await
    }

    async fn complete_claim(
        &self,
        key: &StorageKey,
        owner: &str,
        response: &[u8],
        ttl: Duration,
    ) -> Result<bool, Error> {
        let rec_key = rkey(key, "rec");
        let (n, acknowledged): (i64, _) = self
            .eval_waiting(
                REC_COMPLETE
                    .key(&rec_key)
                    .arg(owner)
                    .arg(response)
                    .arg(millis(ttl).max(1)),
                &rec_key,
            )
            .await?;
        if n == 1 {
            self.completion_replicated(acknowledged);
        }
        Ok(n == 1)
    }

    async fn renew_claim(
        &self,
        key: &StorageKey,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, Error> {
        self.eval_cas(
            REC_RENEW
                .key(&rkey(key, "rec"))
                .arg(owner)
                .arg(millis(lease).max(1)),
        )
        .await
    }

    async fn release_claim(&self, key: &StorageKey, owner: &str) -> Result<(), Error> {
        let _: i64 = self
            .eval(REC_RELEASE.key(&rkey(key, "rec")).arg(owner))
            .await?;
        Ok(())
    }

    fn release_claim_detached(&self, key: StorageKey, owner: String) {
        self.spawn(|s| async move {
            let _ = s.release_claim(&key, &owner).await;
        });
    }
}

/// A record from its stored fields (all empty: none).
fn record(o: Vec<u8>, f: Vec<u8>, s: Vec<u8>, r: Vec<u8>) -> Result<Option<Record>, Error> {
    if s.is_empty() {
        return Ok(None);
    }
    Ok(Some(Record {
        owner: text(o)?.into(),
        fingerprint: opt(f)?.map(Into::into),
        state: if s == b"c" {
            RecordState::Completed(r.into())
        } else {
            RecordState::InProgress
        },
        expired: false,
        expires_at_ms: None,
    }))
}

/// KEYS: rec. → {state, owner, pttl}: state `''` when absent, `'p'` in progress, `'c'`
/// completed; pttl the record's time to live in ms (its lease left, or its TTL left).
const REC_INSPECT_LUA: &str = r"
local t = redis.call('HMGET', KEYS[1], 's', 'o')
if not t[1] then return {'', '', -2} end
return {t[1], t[2] or '', redis.call('PTTL', KEYS[1])}
";
static REC_INSPECT: LazyLock<Lua> = LazyLock::new(|| Lua::new(REC_INSPECT_LUA));

/// KEYS: rec. ARGV: force ('1' or '0'). → {'removed', 0}, {'absent', 0}, or
/// {'live', pttl}: an in-progress claim left alone (no `force`).
const REC_EVICT_LUA: &str = r"
local s = redis.call('HGET', KEYS[1], 's')
if not s then return {'absent', 0} end
if s == 'p' and ARGV[1] ~= '1' then return {'live', redis.call('PTTL', KEYS[1])} end
redis.call('DEL', KEYS[1])
return {'removed', 0}
";
static REC_EVICT: LazyLock<Lua> = LazyLock::new(|| Lua::new(REC_EVICT_LUA));

/// A PTTL reply as a duration (`-1`, no expiry, and `-2`, gone, as zero).
pub(super) fn pttl(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// `dedup_table` records on Redis (standalone, Cluster, Sentinel), one script per step. Redis
/// expires records itself (a claim at the end of its lease, a completed record at the end of
/// its TTL), so an expired record is never seen and
/// [`purge_expired_batch`](crate::admin::AdminStore::purge_expired_batch) has nothing to do:
/// it returns 0 without a round trip. The creation time is not kept (`created_at_ms: None`).
impl crate::admin::AdminStore for RedisStore {
    const BATCHED: bool = false;

    async fn inspect_key(&self, key: &StorageKey) -> Result<crate::admin::KeyState, Error> {
        use crate::admin::KeyState;
        let (state, owner, ttl): (Vec<u8>, String, i64) =
            self.eval(&mut REC_INSPECT.key(&rkey(key, "rec"))).await?;
        Ok(match state.as_slice() {
            b"p" => KeyState::InProgress {
                owner,
                lease_left: pttl(ttl),
            },
            b"c" => KeyState::Completed {
                created_at_ms: None,
                expires_in: pttl(ttl),
            },
            _ => KeyState::Absent,
        })
    }

    async fn evict_key(
        &self,
        key: &StorageKey,
        force: bool,
    ) -> Result<crate::admin::Evicted, Error> {
        use crate::admin::Evicted;
        let (what, ttl): (String, i64) = self
            .eval(
                REC_EVICT
                    .key(&rkey(key, "rec"))
                    .arg(if force { "1" } else { "0" }),
            )
            .await?;
        Ok(match what.as_str() {
            "removed" => Evicted::Removed,
            "live" => Evicted::LiveClaim {
                lease_left: pttl(ttl),
            },
            _ => Evicted::Absent,
        })
    }

    /// Nothing to purge: Redis deletes expired records itself. Returns 0.
    async fn purge_expired_batch(&self, _batch: u32) -> Result<u64, Error> {
        Ok(0)
    }
}
