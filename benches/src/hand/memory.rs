//! Hand-written memory stores: 64 shards of `Mutex<HashMap<String, _>>`, expiry by
//! `Instant`, the same steps as the runtime's `MemoryStore` (claim or read, complete; acquire
//! with a fencing counter, complete; issue, consume, complete).

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{LEASE_MS, TTL_MS, busy, encode, fingerprint, key, lost, mismatch, owner, token_key};
use crate::{AppError, Receipt, Req, receipt};

const SHARDS: usize = 64;

/// A map split in 64 independently locked shards.
pub struct Sharded<V> {
    shards: Box<[Mutex<HashMap<String, V>>]>,
}

impl<V> Default for Sharded<V> {
    fn default() -> Self {
        Sharded {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl<V> Sharded<V> {
    fn shard(&self, key: &str) -> MutexGuard<'_, HashMap<String, V>> {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        let i = (h.finish() as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn lease() -> Duration {
    Duration::from_millis(LEASE_MS as u64)
}

fn ttl() -> Duration {
    Duration::from_millis(TTL_MS as u64)
}

struct Record {
    owner: String,
    fingerprint: String,
    response: Option<Arc<[u8]>>,
    expires_at: Instant,
}

/// `dedup_table` claim mode by hand.
#[derive(Default)]
pub struct Claim {
    map: Sharded<Record>,
}

impl Claim {
    pub async fn place(&self, req: &Req) -> Result<Receipt, AppError> {
        let key = key("hand.claim", req);
        let fp = fingerprint(req);
        let owner = {
            let mut m = self.map.shard(&key);
            let now = Instant::now();
            match m.get(&key) {
                Some(r) if r.expires_at > now => {
                    if r.fingerprint != fp {
                        return Err(mismatch());
                    }
                    let Some(bytes) = r.response.clone() else {
                        return Err(busy());
                    };
                    drop(m);
                    return Ok(serde_json::from_slice(&bytes)?);
                }
                _ => {
                    let owner = owner();
                    m.insert(
                        key.clone(),
                        Record {
                            owner: owner.clone(),
                            fingerprint: fp,
                            response: None,
                            expires_at: now + lease(),
                        },
                    );
                    owner
                }
            }
        };
        let value = receipt(req, 0);
        let bytes = encode(&value)?;
        let mut m = self.map.shard(&key);
        match m.get_mut(&key) {
            Some(r) if r.owner == owner && r.response.is_none() => {
                r.response = Some(bytes.into());
                r.expires_at = Instant::now() + ttl();
                Ok(value)
            }
            _ => Err(lost()),
        }
    }
}

/// The hand-written claim map alone (no key building, fingerprinting or JSON): the steps of
/// [`Claim::place`] on a key and fingerprint made beforehand, for comparing the memory store's
/// own cost with a sharded map's (`memcpu store|hand-store`).
#[derive(Default)]
pub struct ClaimMap {
    map: Sharded<Record>,
}

impl ClaimMap {
    /// Claims `key` (or finds its completed record: `true` when the fingerprint matches),
    /// then completes it with `response`; `false` when the key is busy or the claim was lost.
    pub fn claim_and_complete(&self, key: &str, fp: &str, owner: &str, response: &[u8]) -> bool {
        {
            let mut m = self.map.shard(key);
            let now = Instant::now();
            match m.get(key) {
                Some(r) if r.expires_at > now => {
                    return r.response.is_some() && r.fingerprint == fp;
                }
                _ => {
                    m.insert(
                        key.to_owned(),
                        Record {
                            owner: owner.to_owned(),
                            fingerprint: fp.to_owned(),
                            response: None,
                            expires_at: now + lease(),
                        },
                    );
                }
            }
        }
        let mut m = self.map.shard(key);
        match m.get_mut(key) {
            Some(r) if r.owner == owner && r.response.is_none() => {
                r.response = Some(response.into());
                r.expires_at = Instant::now() + ttl();
                true
            }
            _ => false,
        }
    }
}

#[derive(Default)]
struct LockEntry {
    /// (owner, fingerprint, lease end, fence)
    lock: Option<(String, String, Instant, u64)>,
    /// (fingerprint, response, ttl end)
    response: Option<(String, Arc<[u8]>, Instant)>,
}

/// `distributed_lock` by hand: a lock with a fencing token from one counter, then the response.
#[derive(Default)]
pub struct Lock {
    map: Sharded<LockEntry>,
    fence: AtomicU64,
}

impl Lock {
    pub async fn settle(&self, req: &Req) -> Result<Receipt, AppError> {
        let key = key("hand.lock", req);
        let fp = fingerprint(req);
        let (owner, fence) = {
            let mut m = self.map.shard(&key);
            let now = Instant::now();
            let e = m.entry(key.clone()).or_default();
            if let Some((stored, bytes, _)) = e.response.as_ref().filter(|r| r.2 > now) {
                if *stored != fp {
                    return Err(mismatch());
                }
                let bytes = bytes.clone();
                drop(m);
                return Ok(serde_json::from_slice(&bytes)?);
            }
            if e.lock.as_ref().is_some_and(|l| l.2 > now) {
                return Err(busy());
            }
            let owner = owner();
            let fence = self.fence.fetch_add(1, Ordering::Relaxed) + 1;
            e.lock = Some((owner.clone(), fp, now + lease(), fence));
            (owner, fence)
        };
        let value = receipt(req, fence);
        let bytes = encode(&value)?;
        let mut m = self.map.shard(&key);
        let now = Instant::now();
        match m.get_mut(&key) {
            Some(e) if e.lock.as_ref().is_some_and(|l| l.0 == owner && l.2 > now) => {
                let (_, fp, _, _) = e.lock.take().expect("checked");
                e.response = Some((fp, bytes.into(), now + ttl()));
                Ok(value)
            }
            _ => Err(lost()),
        }
    }
}

struct TokenEntry {
    /// (owner, lease end) while a call holds it.
    consumer: Option<(String, Instant)>,
    binding: String,
    fingerprint: String,
    response: Option<Arc<[u8]>>,
    expires_at: Instant,
}

/// `token` by hand: issue, consume (bound to operation and scope, fingerprinted), complete.
#[derive(Default)]
pub struct Token {
    map: Sharded<TokenEntry>,
}

impl Token {
    /// A new token valid for `ttl`.
    pub fn issue(&self, ttl: Duration) -> String {
        let token = owner();
        let k = token_key(&token);
        self.map.shard(&k).insert(
            k,
            TokenEntry {
                consumer: None,
                binding: String::new(),
                fingerprint: String::new(),
                response: None,
                expires_at: Instant::now() + ttl,
            },
        );
        token
    }

    pub async fn checkout(&self, req: &Req) -> Result<Receipt, AppError> {
        let binding = key("hand.token", req);
        let fp = fingerprint(req);
        let k = token_key(&req.id);
        let owner = {
            let mut m = self.map.shard(&k);
            let now = Instant::now();
            let Some(t) = m.get_mut(&k).filter(|t| t.expires_at > now) else {
                return Err(AppError::Hand("invalid token".into()));
            };
            if let Some(bytes) = &t.response {
                if t.binding != binding || t.fingerprint != fp {
                    return Err(mismatch());
                }
                let bytes = bytes.clone();
                drop(m);
                return Ok(serde_json::from_slice(&bytes)?);
            }
            if t.consumer.as_ref().is_some_and(|c| c.1 > now) {
                return Err(busy());
            }
            let owner = owner();
            t.consumer = Some((owner.clone(), now + lease()));
            t.binding = binding;
            t.fingerprint = fp;
            t.expires_at = t.expires_at.max(now + lease());
            owner
        };
        let value = receipt(req, 0);
        let bytes = encode(&value)?;
        let mut m = self.map.shard(&k);
        match m.get_mut(&k) {
            Some(t)
                if t.response.is_none() && t.consumer.as_ref().is_some_and(|c| c.0 == owner) =>
            {
                t.response = Some(bytes.into());
                t.consumer = None;
                t.expires_at = Instant::now() + ttl();
                Ok(value)
            }
            _ => Err(lost()),
        }
    }
}
