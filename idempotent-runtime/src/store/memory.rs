//! The in-process memory store: records in a concurrent map with expiry (moka), for tests and
//! single-process services. Every step is atomic per key (moka's `and_compute_with` runs
//! calls on one key serially); expiry is judged by tokio's clock, so `tokio::time::pause` works
//! in tests. Records vanish with the process.

use std::sync::Arc;
use std::time::Duration;

use moka::ops::compute::Op;
use tokio::time::Instant;

use super::{Claim, ClaimStore, Record, RecordState};
use crate::{Error, StorageKey};

#[derive(Clone, Debug)]
struct Entry {
    owner: Arc<str>,
    fingerprint: Option<Arc<str>>,
    response: Option<Arc<[u8]>>,
    expires_at: Instant,
}

impl Entry {
    fn expired(&self) -> bool {
        self.expires_at <= Instant::now()
    }

    fn claim(c: &Claim<'_>) -> Entry {
        Entry {
            owner: c.owner.into(),
            fingerprint: c.fingerprint.map(Into::into),
            response: None,
            expires_at: Instant::now() + c.lease,
        }
    }
}

/// Lets moka evict a record shortly after its lease or TTL ends (a second of grace: the
/// strategies judge expiry themselves, moka only reclaims memory).
struct ExpireAt;

impl moka::Expiry<[u8; 32], Entry> for ExpireAt {
    fn expire_after_create(
        &self,
        _: &[u8; 32],
        v: &Entry,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(v.expires_at.saturating_duration_since(Instant::now()) + Duration::from_secs(1))
    }
    fn expire_after_update(
        &self,
        _: &[u8; 32],
        v: &Entry,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.expires_at.saturating_duration_since(Instant::now()) + Duration::from_secs(1))
    }
}

/// An in-process idempotency store. Cloning is cheap and clones share the records.
///
/// Capacity: at most `max_records` records (default 1,000,000); beyond that moka evicts the
/// least recently used ones, which forgets their idempotency — size it for your key rate × TTL.
#[derive(Clone)]
pub struct MemoryStore {
    map: moka::sync::Cache<[u8; 32], Entry>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("records", &self.map.entry_count())
            .finish()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store holding at most 1,000,000 records.
    pub fn new() -> Self {
        Self::with_capacity(1_000_000)
    }

    /// A store holding at most `max_records` records.
    pub fn with_capacity(max_records: u64) -> Self {
        MemoryStore {
            map: moka::sync::Cache::builder()
                .max_capacity(max_records)
                .expire_after(ExpireAt)
                .build(),
        }
    }

    fn claim_now(&self, c: &Claim<'_>) -> bool {
        let result = self
            .map
            .entry(*c.key.digest())
            .and_compute_with(|cur| match cur {
                None => Op::Put(Entry::claim(c)),
                Some(_) => Op::Nop,
            });
        matches!(result, moka::ops::compute::CompResult::Inserted(_))
    }

    fn take_over_now(&self, c: &Claim<'_>, previous_owner: &str) -> bool {
        let result = self
            .map
            .entry(*c.key.digest())
            .and_compute_with(|cur| match cur {
                Some(e) if &*e.value().owner == previous_owner && e.value().expired() => {
                    Op::Put(Entry::claim(c))
                }
                _ => Op::Nop,
            });
        matches!(result, moka::ops::compute::CompResult::ReplacedWith(_))
    }

    fn complete_now(&self, key: &StorageKey, owner: &str, response: &[u8], ttl: Duration) -> bool {
        let result = self
            .map
            .entry(*key.digest())
            .and_compute_with(|cur| match cur {
                Some(e) if &*e.value().owner == owner && e.value().response.is_none() => {
                    let mut done = e.into_value();
                    done.response = Some(response.into());
                    done.expires_at = Instant::now() + ttl;
                    Op::Put(done)
                }
                _ => Op::Nop,
            });
        matches!(result, moka::ops::compute::CompResult::ReplacedWith(_))
    }

    fn renew_now(&self, key: &StorageKey, owner: &str, lease: Duration) -> bool {
        let result = self
            .map
            .entry(*key.digest())
            .and_compute_with(|cur| match cur {
                Some(e) if &*e.value().owner == owner && e.value().response.is_none() => {
                    let mut renewed = e.into_value();
                    renewed.expires_at = Instant::now() + lease;
                    Op::Put(renewed)
                }
                _ => Op::Nop,
            });
        matches!(result, moka::ops::compute::CompResult::ReplacedWith(_))
    }

    fn release_now(&self, key: &StorageKey, owner: &str) {
        self.map
            .entry(*key.digest())
            .and_compute_with(|cur| match cur {
                Some(e) if &*e.value().owner == owner && e.value().response.is_none() => Op::Remove,
                _ => Op::Nop,
            });
    }

    /// Number of records currently held (approximate while moka has pending maintenance).
    pub fn len(&self) -> u64 {
        self.map.run_pending_tasks();
        self.map.entry_count()
    }

    /// `true` when the store holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ClaimStore for MemoryStore {
    fn backend_name(&self) -> &'static str {
        "memory"
    }

    async fn try_claim(&self, claim: &Claim<'_>) -> Result<bool, Error> {
        Ok(self.claim_now(claim))
    }

    async fn read(&self, key: &StorageKey) -> Result<Option<Record>, Error> {
        Ok(self.map.get(key.digest()).map(|e| Record {
            owner: e.owner.to_string(),
            fingerprint: e.fingerprint.as_deref().map(str::to_owned),
            expired: e.expired(),
            state: match &e.response {
                None => RecordState::InProgress,
                Some(r) => RecordState::Completed(r.to_vec()),
            },
        }))
    }

    async fn take_over(&self, claim: &Claim<'_>, previous_owner: &str) -> Result<bool, Error> {
        Ok(self.take_over_now(claim, previous_owner))
    }

    async fn complete(
        &self,
        key: &StorageKey,
        owner: &str,
        response: &[u8],
        ttl: Duration,
    ) -> Result<bool, Error> {
        Ok(self.complete_now(key, owner, response, ttl))
    }

    async fn renew(&self, key: &StorageKey, owner: &str, lease: Duration) -> Result<bool, Error> {
        Ok(self.renew_now(key, owner, lease))
    }

    async fn release(&self, key: &StorageKey, owner: &str) -> Result<(), Error> {
        self.release_now(key, owner);
        Ok(())
    }

    fn release_detached(&self, key: StorageKey, owner: String) {
        self.release_now(&key, &owner);
    }
}
