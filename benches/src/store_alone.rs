//! The memory store's own cost, without the framework around it: each side builds the same
//! storage key (SHA-256, as the macro does) and then runs the claim protocol's store steps —
//! claim or read, then complete — either on the runtime's [`MemoryStore`] or on a hand-written
//! sharded map (64 `Mutex<HashMap>` shards keyed by the same digest). No fingerprinting, no
//! JSON round-trip check, no completion task on either side: the ratio is the store's alone.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use idempotent_runtime::store::{Claim, ClaimOrRecord};
use idempotent_runtime::{ClaimStore, KeyBuilder, MemoryStore, StorageKey};

use crate::hand::{LEASE_MS, TTL_MS, busy, lost, mismatch};
use crate::{AppError, Receipt, Req, receipt};

/// The fingerprint both sides store: fixed, so only the store's work is measured.
const FP: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The owner token both sides claim with.
const OWNER: &str = "0123456789abcdef0123456789abcdef";

fn storage_key(r: &Req) -> Result<StorageKey, AppError> {
    Ok(KeyBuilder::new("bench.store_alone")
        .scope(&r.tenant)
        .part(&r.id)
        .finish()?)
}

/// The runtime's memory store, driven directly through [`ClaimStore`].
pub struct Store {
    pub store: MemoryStore,
    /// The response both sides store (a serialized [`Receipt`]).
    pub response: Vec<u8>,
}

impl Store {
    pub async fn place(&self, req: &Req) -> Result<Receipt, AppError> {
        let key = storage_key(req)?;
        let claim = Claim {
            key: &key,
            fingerprint: Some(FP),
            owner: OWNER,
            lease: Duration::from_millis(LEASE_MS as u64),
        };
        match self.store.claim_or_read(&claim).await? {
            ClaimOrRecord::Claimed => {}
            // The store judged it a replay of the same fingerprint itself.
            ClaimOrRecord::Replay(_) => return Ok(receipt(req, 0)),
            ClaimOrRecord::Existing(Some(r)) if r.fingerprint.as_deref() != Some(FP) => {
                return Err(mismatch());
            }
            ClaimOrRecord::Existing(Some(r)) => {
                return match r.state {
                    idempotent_runtime::store::RecordState::Completed(_) => Ok(receipt(req, 0)),
                    _ => Err(busy()),
                };
            }
            ClaimOrRecord::Existing(None) => return Err(busy()),
        }
        let ttl = Duration::from_millis(TTL_MS as u64);
        if self
            .store
            .complete_claim(&key, OWNER, &self.response, ttl)
            .await?
        {
            Ok(receipt(req, 0))
        } else {
            Err(lost())
        }
    }
}

struct Record {
    owner: String,
    fingerprint: String,
    response: Option<Vec<u8>>,
    expires_at: Instant,
}

/// One shard of [`Hand`]'s map.
type Shard = Mutex<HashMap<[u8; 32], Record>>;

/// A hand-written sharded map with the same steps as [`Store::place`].
pub struct Hand {
    shards: Box<[Shard]>,
    hasher: RandomState,
    pub response: Vec<u8>,
}

impl Hand {
    pub fn new(response: Vec<u8>) -> Self {
        Hand {
            shards: (0..64).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            response,
        }
    }

    fn shard(&self, key: &[u8; 32]) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Record>> {
        let i = (self.hasher.hash_one(key) % 64) as usize;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn place(&self, req: &Req) -> Result<Receipt, AppError> {
        let key = *storage_key(req)?.digest();
        {
            let mut m = self.shard(&key);
            let now = Instant::now();
            match m.get(&key) {
                Some(r) if r.expires_at > now => {
                    if r.fingerprint != FP {
                        return Err(mismatch());
                    }
                    // A replay reads the stored bytes, as the store's read does.
                    let Some(bytes) = r.response.clone() else {
                        return Err(busy());
                    };
                    drop(m);
                    std::hint::black_box(bytes);
                    return Ok(receipt(req, 0));
                }
                _ => {
                    m.insert(
                        key,
                        Record {
                            owner: OWNER.to_owned(),
                            fingerprint: FP.to_owned(),
                            response: None,
                            expires_at: now + Duration::from_millis(LEASE_MS as u64),
                        },
                    );
                }
            }
        }
        let mut m = self.shard(&key);
        match m.get_mut(&key) {
            Some(r) if r.owner == OWNER && r.response.is_none() => {
                r.response = Some(self.response.clone());
                r.expires_at = Instant::now() + Duration::from_millis(TTL_MS as u64);
                Ok(receipt(req, 0))
            }
            _ => Err(lost()),
        }
    }
}
