//! The in-process memory store: records in a concurrent map with expiry (moka), for tests and
//! single-process services. Every step is atomic per key (moka's `and_compute_with` runs
//! calls on one key serially); expiry is judged by tokio's clock, so `tokio::time::pause` works
//! in tests. Records vanish with the process.
//!
//! Here live the memory store's [`ClaimStore`], [`LockStore`] and [`TokenStore`] impls and its
//! store-argument impls ([`AsClaimStore`] and its siblings).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use moka::ops::compute::Op;
use tokio::time::Instant;

use super::{
    Acquired, AsClaimStore, AsLockStore, AsTokenStore, Claim, ClaimOrRecord, ClaimStore, Consumed,
    LockStore, Record, RecordState, Store, TokenStore,
};
use crate::{Error, StorageKey};

#[derive(Clone, Debug)]
struct Entry {
    owner: Arc<str>,
    fingerprint: Option<Arc<str>>,
    response: Option<Arc<[u8]>>,
    expires_at: Instant,
}

/// `d` from now, clamped to a century: a lease or TTL of `Duration::MAX` (which the
/// strategies' floors allow) means "for good", not an overflow.
fn after(d: std::time::Duration) -> Instant {
    const CENTURY: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 24 * 60 * 60);
    Instant::now() + d.min(CENTURY)
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
            expires_at: after(c.lease),
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
    locks: Arc<Mutex<Locks>>,
    tokens: Arc<Mutex<HashMap<[u8; 32], TokenEntry>>>,
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
            locks: Arc::default(),
            tokens: Arc::default(),
        }
    }

    fn claim_now(&self, c: &Claim<'_>) -> bool {
        let result = self
            .map
            .entry(*c.key.digest())
            .and_compute_with(|cur| match cur {
                None => Op::Put(Entry::claim(c)),
                // The same owner claiming again (a resent claim): still theirs, lease reset.
                Some(e) if &*e.value().owner == c.owner && e.value().response.is_none() => {
                    Op::Put(Entry::claim(c))
                }
                Some(_) => Op::Nop,
            });
        matches!(
            result,
            moka::ops::compute::CompResult::Inserted(_)
                | moka::ops::compute::CompResult::ReplacedWith(_)
        )
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
                    done.expires_at = after(ttl);
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
                    renewed.expires_at = after(lease);
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

    fn read_now(&self, key: &StorageKey) -> Option<Record> {
        self.map.get(key.digest()).map(|e| Record {
            owner: e.owner.to_string(),
            fingerprint: e.fingerprint.as_deref().map(str::to_owned),
            expired: e.expired(),
            expires_at_ms: None,
            state: match &e.response {
                None => RecordState::InProgress,
                Some(r) => RecordState::Completed(r.to_vec()),
            },
        })
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

impl Store for MemoryStore {
    fn backend_name(&self) -> &'static str {
        "memory"
    }
}

#[diagnostic::do_not_recommend]
impl AsClaimStore for MemoryStore {
    type Store = Self;
    fn as_claim_store(&self) -> &Self {
        self
    }
}

#[diagnostic::do_not_recommend]
impl AsLockStore for MemoryStore {
    type Store = Self;
    fn as_lock_store(&self) -> &Self {
        self
    }
}

#[diagnostic::do_not_recommend]
impl AsTokenStore for MemoryStore {
    type Store = Self;
    fn as_token_store(&self) -> &Self {
        self
    }
}

impl ClaimStore for MemoryStore {
    async fn try_claim(&self, claim: &Claim<'_>) -> Result<bool, Error> {
        Ok(self.claim_now(claim))
    }

    /// A completed, unexpired record is read without the compute step (a replay: one map
    /// read); otherwise as the default (claim, then read when a record exists).
    async fn claim_or_read(&self, claim: &Claim<'_>) -> Result<ClaimOrRecord, Error> {
        let completed = self
            .read_now(claim.key)
            .filter(|r| !r.expired && matches!(r.state, RecordState::Completed(_)));
        if let Some(record) = completed {
            return Ok(ClaimOrRecord::Existing(Some(record)));
        }
        if self.claim_now(claim) {
            return Ok(ClaimOrRecord::Claimed);
        }
        Ok(ClaimOrRecord::Existing(self.read_now(claim.key)))
    }

    async fn read_record(&self, key: &StorageKey) -> Result<Option<Record>, Error> {
        Ok(self.read_now(key))
    }

    async fn take_over_claim(
        &self,
        claim: &Claim<'_>,
        previous_owner: &str,
    ) -> Result<bool, Error> {
        Ok(self.take_over_now(claim, previous_owner))
    }

    async fn complete_claim(
        &self,
        key: &StorageKey,
        owner: &str,
        response: &[u8],
        ttl: Duration,
    ) -> Result<bool, Error> {
        Ok(self.complete_now(key, owner, response, ttl))
    }

    async fn renew_claim(
        &self,
        key: &StorageKey,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, Error> {
        Ok(self.renew_now(key, owner, lease))
    }

    async fn release_claim(&self, key: &StorageKey, owner: &str) -> Result<(), Error> {
        self.release_now(key, owner);
        Ok(())
    }

    fn release_claim_detached(&self, key: StorageKey, owner: String) {
        self.release_now(&key, &owner);
    }
}

/// A held lock: `(owner, fingerprint, lease end, fencing token)`.
type HeldLock = (Arc<str>, Option<Arc<str>>, Instant, u64);
/// A stored response: `(fingerprint, response, ttl end)`.
type StoredResponse = (Option<Arc<str>>, Arc<[u8]>, Instant);

/// One key's lock and stored response (`distributed_lock`).
#[derive(Debug, Default)]
struct LockEntry {
    /// `(owner, fingerprint, lease end, fencing token)` of the current lock.
    lock: Option<HeldLock>,
    /// `(fingerprint, response, ttl end)` of the completed call.
    response: Option<StoredResponse>,
}

impl LockEntry {
    fn live_lock(&self) -> Option<&HeldLock> {
        self.lock.as_ref().filter(|l| l.2 > Instant::now())
    }
    fn live_response(&self) -> Option<&StoredResponse> {
        self.response.as_ref().filter(|r| r.2 > Instant::now())
    }
    fn held_by(&self, owner: &str) -> bool {
        self.live_lock().is_some_and(|l| &*l.0 == owner)
    }
}

/// The lock table: entries plus one store-wide fencing counter (so that purging an idle
/// entry can never make a key's fencing token go backwards).
#[derive(Debug, Default)]
struct Locks {
    entries: HashMap<[u8; 32], LockEntry>,
    fence: u64,
    writes: u64,
}

impl Locks {
    /// Drops idle entries (no live lock, no live response) every 4096 writes.
    fn maybe_purge(&mut self) {
        self.writes += 1;
        if self.writes.is_multiple_of(4096) {
            self.entries
                .retain(|_, e| e.live_lock().is_some() || e.live_response().is_some());
        }
    }
}

/// One token's state (`token`).
#[derive(Debug)]
struct TokenEntry {
    /// `None` while issued and unused; `(owner, lease end)` while a call holds it.
    consumer: Option<(Arc<str>, Instant)>,
    binding: Option<Arc<str>>,
    fingerprint: Option<Arc<str>>,
    response: Option<Arc<[u8]>>,
    expires_at: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the guard cannot leave an entry half-written (each step is one
    // assignment), so a poisoned lock is safe to keep using.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MemoryStore {
    fn release_lock_now(&self, key: &StorageKey, owner: &str) -> bool {
        let mut locks = lock(&self.locks);
        match locks.entries.get_mut(key.digest()) {
            Some(e) if e.held_by(owner) => {
                e.lock = None;
                true
            }
            _ => false,
        }
    }

    fn restore_token_now(&self, token_key: &StorageKey, owner: &str) -> bool {
        let mut tokens = lock(&self.tokens);
        match tokens.get_mut(token_key.digest()) {
            Some(t)
                if t.response.is_none()
                    && t.expires_at > Instant::now()
                    && t.consumer.as_ref().is_some_and(|c| &*c.0 == owner) =>
            {
                t.consumer = None;
                t.binding = None;
                t.fingerprint = None;
                true
            }
            _ => false,
        }
    }
}

impl LockStore for MemoryStore {
    async fn acquire_lock(
        &self,
        key: &StorageKey,
        owner: &str,
        fingerprint: Option<&str>,
        lease: Duration,
    ) -> Result<Acquired, Error> {
        let mut locks = lock(&self.locks);
        locks.maybe_purge();
        let fence = locks.fence + 1;
        let e = locks.entries.entry(*key.digest()).or_default();
        if let Some((fp, response, _)) = e.live_response() {
            return Ok(Acquired::Replay {
                fingerprint: fp.as_deref().map(str::to_owned),
                response: response.to_vec(),
            });
        }
        if let Some((holder, fp, _, held)) = e.live_lock() {
            if &**holder == owner {
                // The same owner acquiring again (a resent acquisition): still theirs, with
                // the fence it holds, lease reset.
                let held = *held;
                if let Some(l) = e.lock.as_mut() {
                    l.2 = after(lease);
                }
                return Ok(Acquired::Acquired { fence: held });
            }
            return Ok(Acquired::Held {
                fingerprint: fp.as_deref().map(str::to_owned),
            });
        }
        e.lock = Some((
            owner.into(),
            fingerprint.map(Into::into),
            after(lease),
            fence,
        ));
        locks.fence = fence;
        Ok(Acquired::Acquired { fence })
    }

    async fn renew_lock(
        &self,
        key: &StorageKey,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, Error> {
        let mut locks = lock(&self.locks);
        match locks.entries.get_mut(key.digest()) {
            Some(e) if e.held_by(owner) => {
                if let Some(l) = e.lock.as_mut() {
                    l.2 = after(lease);
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn complete_lock(
        &self,
        key: &StorageKey,
        owner: &str,
        response: &[u8],
        ttl: Duration,
    ) -> Result<bool, Error> {
        let mut locks = lock(&self.locks);
        match locks.entries.get_mut(key.digest()) {
            Some(e) if e.held_by(owner) => {
                let fp = e.lock.take().and_then(|l| l.1);
                e.response = Some((fp, response.into(), after(ttl)));
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release_lock(&self, key: &StorageKey, owner: &str) -> Result<bool, Error> {
        Ok(self.release_lock_now(key, owner))
    }

    fn release_lock_detached(&self, key: StorageKey, owner: String) {
        self.release_lock_now(&key, &owner);
    }
}

impl TokenStore for MemoryStore {
    async fn issue_token(&self, token_key: &StorageKey, ttl: Duration) -> Result<(), Error> {
        let mut tokens = lock(&self.tokens);
        let now = Instant::now();
        if tokens.len() % 4096 == 4095 {
            tokens.retain(|_, t| t.expires_at > now);
        }
        tokens.insert(
            *token_key.digest(),
            TokenEntry {
                consumer: None,
                binding: None,
                fingerprint: None,
                response: None,
                expires_at: after(ttl),
            },
        );
        Ok(())
    }

    async fn consume_token(
        &self,
        token_key: &StorageKey,
        owner: &str,
        binding: &str,
        fingerprint: Option<&str>,
        lease: Duration,
    ) -> Result<Consumed, Error> {
        let mut tokens = lock(&self.tokens);
        let now = Instant::now();
        let Some(t) = tokens
            .get_mut(token_key.digest())
            .filter(|t| t.expires_at > now)
        else {
            return Ok(Consumed::Invalid);
        };
        let (b, f) = (
            t.binding.as_deref().unwrap_or_default().to_owned(),
            t.fingerprint.as_deref().map(str::to_owned),
        );
        if let Some(response) = &t.response {
            return Ok(Consumed::Replay {
                binding: b,
                fingerprint: f,
                response: response.to_vec(),
            });
        }
        // A live consumption by another owner is busy; the same owner consuming again (a
        // resent consumption) takes it again below, lease reset.
        if t.consumer
            .as_ref()
            .is_some_and(|c| c.1 > now && &*c.0 != owner)
        {
            return Ok(Consumed::Busy {
                binding: b,
                fingerprint: f,
            });
        }
        t.consumer = Some((owner.into(), after(lease)));
        t.binding = Some(binding.into());
        t.fingerprint = fingerprint.map(Into::into);
        t.expires_at = t.expires_at.max(after(lease));
        Ok(Consumed::Claimed)
    }

    async fn complete_token(
        &self,
        token_key: &StorageKey,
        owner: &str,
        response: &[u8],
        ttl: Duration,
    ) -> Result<bool, Error> {
        let mut tokens = lock(&self.tokens);
        match tokens.get_mut(token_key.digest()) {
            Some(t)
                if t.response.is_none() && t.consumer.as_ref().is_some_and(|c| &*c.0 == owner) =>
            {
                t.response = Some(response.into());
                t.consumer = None;
                t.expires_at = after(ttl);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn renew_token(
        &self,
        token_key: &StorageKey,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, Error> {
        let mut tokens = lock(&self.tokens);
        match tokens.get_mut(token_key.digest()) {
            Some(t)
                if t.response.is_none() && t.consumer.as_ref().is_some_and(|c| &*c.0 == owner) =>
            {
                t.consumer = Some((owner.into(), after(lease)));
                t.expires_at = t.expires_at.max(after(lease));
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn restore_token(&self, token_key: &StorageKey, owner: &str) -> Result<bool, Error> {
        Ok(self.restore_token_now(token_key, owner))
    }

    fn restore_token_detached(&self, token_key: StorageKey, owner: String) {
        self.restore_token_now(&token_key, &owner);
    }
}
