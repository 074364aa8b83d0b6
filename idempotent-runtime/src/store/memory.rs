//! The in-process memory store: records in sharded concurrent maps (dashmap), for tests and
//! single-process services. Every step is atomic per key (it runs under the key's shard lock);
//! expiry is judged by tokio's clock on every access, so `tokio::time::pause` works in tests.
//! Records vanish with the process.
//!
//! Why dashmap and not a cache crate: measured with the benchmarks (`BENCHMARKS.md`, "memory
//! store"), moka's `and_compute_with` took 63% of a fresh call and made the memory path 6× the
//! CPU of a hand-written sharded `Mutex<HashMap>`; a sharded map with expiry judged on access
//! costs what the hand-written map does. Dead entries are swept in bulk (`Table::room`), so
//! memory stays bounded without a background task.
//!
//! Here live the memory store's [`ClaimStore`], [`LockStore`] and [`TokenStore`] impls and its
//! store-argument impls ([`AsClaimStore`] and its siblings).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry as Slot;
use dashmap::mapref::one::RefMut;
use tokio::time::Instant;

use super::{
    Acquired, AsClaimStore, AsLockStore, AsTokenStore, Claim, ClaimOrRecord, ClaimStore, Consumed,
    LockStore, Record, RecordState, Store, TokenStore,
};
use crate::strategy::replaying::check_fingerprint;
use crate::{Error, StorageKey};

/// How long past its lease or TTL an entry is kept before a sweep may drop it: the strategies
/// judge expiry themselves (an expired claim is taken over, not forgotten), the sweep only
/// reclaims memory.
const GRACE: Duration = Duration::from_secs(1);

/// Shards of each table's map, a power of two: as many as the hand-written map the benchmarks
/// compare with (dashmap's default, 4 × the cores rounded up, is 8 on 2 cores).
const SHARDS: usize = 64;

/// The fewest entries a table holds before its first sweep.
const MIN_SWEEP: usize = 4096;

/// How often a full table sweeps again to find room: in between, a new key is refused at once
/// instead of every refused call walking the whole table (unless an entry is removed meanwhile).
const FULL_SWEEP_EVERY: Duration = Duration::from_millis(10);

/// `d` after `now`, clamped to a century: a lease or TTL of `Duration::MAX` (which the
/// strategies' floors allow) means "for good", not an overflow. Each store step reads the
/// clock once, before taking its shard lock, and passes that reading on (a clock read is
/// ~20 ns, several a call were a measurable share of a memory-store call): a wait for the lock
/// makes the end it sets earlier, never later.
fn after(now: Instant, d: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);
    now + d.min(CENTURY)
}

/// An entry that ends: a sweep drops it once it is [`dead`](Expiring::dead).
trait Expiring {
    /// `true` when nothing in the entry is live any more, judged at `now` less [`GRACE`].
    fn dead(&self, now: Instant) -> bool;
}

/// One stripe of a table's entry count, on a cache line of its own: the count of the keys
/// whose digest's first byte falls in the stripe, and the count at which a write to the stripe
/// first sweeps.
#[repr(align(128))]
#[derive(Default)]
struct Stripe {
    len: AtomicUsize,
    sweep_at: AtomicUsize,
}

/// One table of the store: a sharded map from storage-key digest to entry, with its length
/// counted in [`STRIPES`] stripes and the length at which a write first sweeps out dead
/// entries.
///
/// Why stripes: one counter written by every new key made concurrent fresh calls wait on its
/// cache line (measured with `bench --only "memory store alone"`, 32 concurrent calls on 2
/// cores: 0.78–0.82× of a 64-shard `Mutex<HashMap>` with one counter, 0.86–0.99× without).
/// A stripe is written only by the keys of its digests, spread like the map's shards.
struct Table<V> {
    map: DashMap<[u8; 32], V, foldhash::fast::RandomState>,
    /// Entries in the map per stripe, kept by the writers (reset to the exact counts by each
    /// sweep). Each stripe's `sweep_at` is its share of the mark at which the table sweeps:
    /// twice the live entries after the last sweep (at least [`MIN_SWEEP`], at most
    /// `capacity`), so sweeping costs O(1) a write amortized. The marks never add up to more
    /// than `capacity`, so a write below its stripe's mark never overfills the table.
    stripes: Box<[Stripe]>,
    capacity: usize,
    /// What the table holds, for the "full" error: "records", "locks" or "tokens".
    holds: &'static str,
    /// The last sweep's mark was the capacity (twice its live entries reached it): a stripe
    /// that reaches its mark then has its share of the room left handed out again from the
    /// counts ([`Table::remark`], no walk), and the table sweeps only once it is full. Without
    /// this, each sweep near the capacity spread a smaller room over the stripes, and the
    /// last few thousand keys below it each paid a walk over the whole table (measured: a
    /// round of 100,000 fresh keys from 900,000 to 1,000,000 in a 1,000,000 store ran at a
    /// sixth of its speed).
    capped: std::sync::atomic::AtomicBool,
    /// Walks over the map so far (each sweep), for the tests that bound them.
    #[cfg(test)]
    sweeps: AtomicUsize,
    /// `Some(when)`: the sweep at `when` left the table full (cleared by a removal).
    full_since: std::sync::Mutex<Option<Instant>>,
    /// `full_since.is_some()`, read without the lock by every removal.
    full: std::sync::atomic::AtomicBool,
}

/// Stripes of a table's entry count (a power of two, at most 256: a stripe is picked by the
/// digest's first byte).
const STRIPES: usize = 64;

/// The stripe of `key` (a SHA-256 digest, so its bytes are uniform).
fn stripe_of(key: &[u8; 32]) -> usize {
    usize::from(key[0]) % STRIPES
}

impl<V: Expiring> Table<V> {
    fn new(capacity: usize, holds: &'static str) -> Self {
        let table = Table {
            map: DashMap::with_hasher_and_shard_amount(
                foldhash::fast::RandomState::default(),
                SHARDS,
            ),
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
            capacity,
            holds,
            capped: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            sweeps: AtomicUsize::new(0),
            full_since: std::sync::Mutex::new(None),
            full: std::sync::atomic::AtomicBool::new(false),
        };
        table.set_marks(&[0; STRIPES], MIN_SWEEP.min(capacity), None);
        table
    }

    fn full_since(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        // Holds one `Option<Instant>`, written whole: a poisoned lock is safe to keep using.
        self.full_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_full(&self, since: Option<Instant>) {
        *self.full_since() = since;
        self.full.store(since.is_some(), Relaxed);
    }

    /// The entries counted in every stripe.
    fn counted(&self) -> usize {
        self.stripes.iter().map(|s| s.len.load(Relaxed)).sum()
    }

    /// Sets each stripe's count to `live` and its mark to its count plus an even share of
    /// `mark - Σ live` (the share of a `reserve`d stripe counts one write about to be made
    /// there), so the marks add up to at most `mark`.
    fn set_marks(&self, live: &[usize; STRIPES], mark: usize, reserve: Option<usize>) {
        for (stripe, &n) in self.stripes.iter().zip(live) {
            stripe.len.store(n, Relaxed);
        }
        self.mark_from(live, mark, reserve);
    }

    /// Sets each stripe's mark to `counts[i]` plus an even share of `mark - Σ counts` (the
    /// share of a `reserve`d stripe counts one write about to be made there). The counts are
    /// left as they are.
    fn mark_from(&self, counts: &[usize; STRIPES], mark: usize, reserve: Option<usize>) {
        let total: usize = counts.iter().sum::<usize>() + usize::from(reserve.is_some());
        let room = mark.saturating_sub(total);
        for (i, (stripe, &n)) in self.stripes.iter().zip(counts).enumerate() {
            let share = room / STRIPES + usize::from(i < room % STRIPES);
            let reserved = usize::from(reserve == Some(i));
            stripe.sweep_at.store(n + reserved + share, Relaxed);
        }
    }

    /// On a [`capped`](Self::capped) table, a stripe at its mark while the table is below its
    /// capacity: the room left is shared out again from the stripes' counts as they are (one
    /// read and one write per stripe, no walk over the map), `key`'s stripe reserving one.
    /// `false` (nothing done) when the table is not capped or is full. A count a concurrent
    /// write adds meanwhile only makes its stripe's new mark lower (the counts are read before
    /// the marks are written, and never overwritten here), so the marks still add up to at
    /// most the capacity.
    fn remark(&self, key: &[u8; 32]) -> bool {
        if !self.capped.load(Relaxed) {
            return false;
        }
        let mut counts = [0usize; STRIPES];
        for (n, stripe) in counts.iter_mut().zip(self.stripes.iter()) {
            *n = stripe.len.load(Relaxed);
        }
        if counts.iter().sum::<usize>() >= self.capacity {
            return false;
        }
        self.mark_from(&counts, self.capacity, Some(stripe_of(key)));
        true
    }

    /// Called before a write that may add `key` (never while holding one of the map's
    /// guards). A key with a live entry adds nothing, so it always has room: its own record is
    /// judged as usual (in progress, replay, take-over). Otherwise, once the key's stripe has
    /// grown to its mark, sweeps the dead entries — on a [`capped`](Self::capped) table only
    /// once it is full: below the capacity the room left is shared out again
    /// ([`remark`](Self::remark)); when the live ones still fill the capacity,
    /// sweeps again without the second of grace (an entry past its lease or TTL is never
    /// replayed or waited for, so a full store gives its room at once), and refuses only when
    /// that leaves no room. A table left full sweeps again only [`FULL_SWEEP_EVERY`] later or
    /// after a removal: refused calls in between cost no walk over the table.
    ///
    /// Errors: [`Error::Backend`] "the memory store is full", naming the capacity: a new key
    /// is refused rather than another key's record forgotten (forgetting it would let a retry
    /// run a second time).
    fn room(&self, key: &[u8; 32]) -> Result<(), Error> {
        if self.below_mark(key) {
            return Ok(());
        }
        let now = Instant::now();
        if self.map.get(key).is_some_and(|e| !e.dead(now)) || self.remark(key) {
            return Ok(());
        }
        let swept_lately = self
            .full_since()
            .is_some_and(|at| now.saturating_duration_since(at) < FULL_SWEEP_EVERY);
        let still_full = swept_lately
            .then(|| self.counted())
            .filter(|&n| n >= self.capacity);
        let live = if let Some(n) = still_full {
            n
        } else {
            let mut live = self.sweep(now, Some(key));
            if live >= self.capacity {
                live = self.sweep(now + GRACE, Some(key));
            }
            self.set_full((live >= self.capacity).then_some(now));
            live
        };
        if live >= self.capacity {
            return Err(Error::Backend(
                format!(
                    "the memory store is full: {live} live {} of at most {} \
                     (MemoryStore::with_capacity); a new key is refused rather than forgetting \
                     another key's record",
                    self.holds, self.capacity
                )
                .into(),
            ));
        }
        Ok(())
    }

    /// Drops the entries dead at `now` (an entry is dead [`GRACE`] after its end, so a `now`
    /// one grace ahead drops every entry past its end); returns the others. `adding`: the key
    /// a write is about to add, when there is room for it, counted in its stripe's mark.
    fn sweep(&self, now: Instant, adding: Option<&[u8; 32]>) -> usize {
        #[cfg(test)]
        self.sweeps.fetch_add(1, Relaxed);
        let mut live = [0usize; STRIPES];
        self.map.retain(|k, v| {
            let keep = !v.dead(now);
            live[stripe_of(k)] += usize::from(keep);
            keep
        });
        let total: usize = live.iter().sum();
        let mark = total
            .saturating_mul(2)
            .clamp(MIN_SWEEP.min(self.capacity), self.capacity);
        let reserve = adding.filter(|_| total < self.capacity).map(stripe_of);
        self.capped.store(mark >= self.capacity, Relaxed);
        self.set_marks(
            &live,
            mark.max(total + usize::from(reserve.is_some())),
            reserve,
        );
        total
    }

    /// `true` when `key`'s stripe is below its sweep mark: a new key fits without a sweep
    /// ([`room`](Self::room)'s first check, cheap enough to make under a shard lock).
    fn below_mark(&self, key: &[u8; 32]) -> bool {
        let stripe = &self.stripes[stripe_of(key)];
        stripe.len.load(Relaxed) < stripe.sweep_at.load(Relaxed)
    }

    /// The entry of `key` under its shard's write lock, a new `V::default()` put in when there
    /// is none. [`room`](Self::room) is checked only for a key with no entry, and, past the
    /// cheap check, after letting go of the shard lock (a sweep takes every shard's): a key
    /// that has an entry (a replay, a held lock) reads no stripe.
    fn entry_or_default(&self, key: &[u8; 32]) -> Result<RefMut<'_, [u8; 32], V>, Error>
    where
        V: Default,
    {
        Ok(match self.slot(key, true)? {
            Slot::Occupied(o) => o.into_ref(),
            Slot::Vacant(v) => {
                self.added(key);
                v.insert(V::default())
            }
        })
    }

    /// The slot of `key` under its shard's write lock. When `may_add` and the key has no
    /// entry, [`room`](Self::room) is checked first — past its cheap check, after letting go
    /// of the shard lock (a sweep takes every shard's) and looking again; a key that has an
    /// entry reads no stripe.
    fn slot(&self, key: &[u8; 32], may_add: bool) -> Result<Slot<'_, [u8; 32], V>, Error> {
        let mut checked = !may_add;
        loop {
            match self.map.entry(*key) {
                Slot::Vacant(v) if !checked && !self.below_mark(key) => {
                    drop(v);
                    self.room(key)?;
                    checked = true;
                }
                slot => return Ok(slot),
            }
        }
    }

    fn added(&self, key: &[u8; 32]) {
        self.stripes[stripe_of(key)].len.fetch_add(1, Relaxed);
    }

    fn removed(&self, key: &[u8; 32]) {
        // Saturating: a sweep may have reset the count between the removal and this call.
        let _ = self.stripes[stripe_of(key)]
            .len
            .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
        if self.full.load(Relaxed) {
            // The room it frees is found at once, not after the full table's pause.
            self.set_full(None);
        }
    }
}

/// A `dedup_table` record.
///
/// The response is an `Arc<[u8]>`, not a `Bytes`: a replay clones it, and an `Arc`'s count
/// sits with its bytes, so a replay of a record not in cache touches one allocation, not a
/// `Bytes`' separate shared header too (measured with `MEMCPU_FILLED=100000 memcpu`, where the
/// records outgrow the CPU's caches as in `bench`).
#[derive(Debug)]
struct Entry {
    owner: Arc<str>,
    fingerprint: Option<Arc<str>>,
    response: Option<Arc<[u8]>>,
    expires_at: Instant,
}

impl Entry {
    fn expired(&self, now: Instant) -> bool {
        self.expires_at <= now
    }

    fn claim(c: &Claim<'_>, now: Instant) -> Entry {
        Entry {
            owner: c.owner.into(),
            fingerprint: c.fingerprint.map(Into::into),
            response: None,
            expires_at: after(now, c.lease),
        }
    }

    /// The record as it stands at `now` (one clock read for the caller's whole step).
    fn record_at(&self, now: Instant) -> Record {
        Record {
            // Shared, not copied: a replay reads the record without an allocation.
            owner: self.owner.clone(),
            fingerprint: self.fingerprint.clone(),
            expired: self.expires_at <= now,
            expires_at_ms: None,
            state: match &self.response {
                None => RecordState::InProgress,
                Some(r) => RecordState::Completed(bytes::Bytes::from_owner(r.clone())),
            },
        }
    }

    /// The stored response when this is a completed record, unexpired at `now`, whose
    /// fingerprint equals `fingerprint` (or either is `None`): a replay, judged in place.
    fn replay_at(&self, now: Instant, fingerprint: Option<&str>) -> Option<Arc<[u8]>> {
        let response = self.response.as_ref()?;
        let same = check_fingerprint(self.fingerprint.as_deref(), fingerprint).is_ok();
        (same && self.expires_at > now).then(|| response.clone())
    }
}

impl Expiring for Entry {
    fn dead(&self, now: Instant) -> bool {
        self.expires_at + GRACE <= now
    }
}

/// An in-process idempotency store. Cloning is cheap and clones share the records.
///
/// Capacity: at most `max_records` live entries per table (records, locks, tokens; default
/// 1,000,000 each). Entries past their lease or TTL are swept out as the tables grow; when the
/// live ones fill a table, a call with a new key gets [`Error::Backend`] ("the memory store is
/// full") instead of another key's record being forgotten — size it for your key rate × TTL.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Tables>,
}

/// The store's tables and its fencing counter.
struct Tables {
    records: Table<Entry>,
    locks: Table<LockEntry>,
    tokens: Table<TokenEntry>,
    /// The last fencing token handed out, store-wide (so that sweeping an idle lock entry can
    /// never make a key's fencing token go backwards).
    fence: AtomicU64,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("records", &self.inner.records.map.len())
            .finish()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store holding at most 1,000,000 live records (and as many locks and tokens).
    pub fn new() -> Self {
        Self::with_capacity(1_000_000)
    }

    /// A store holding at most `max_records` live records (and as many locks and tokens); at
    /// least 1.
    pub fn with_capacity(max_records: u64) -> Self {
        let capacity = usize::try_from(max_records).unwrap_or(usize::MAX).max(1);
        MemoryStore {
            inner: Arc::new(Tables {
                records: Table::new(capacity, "records"),
                locks: Table::new(capacity, "locks"),
                tokens: Table::new(capacity, "tokens"),
                fence: AtomicU64::new(0),
            }),
        }
    }

    fn records(&self) -> &Table<Entry> {
        &self.inner.records
    }

    /// Applies `step` to the live record of `key` (`None`: absent, or dead and awaiting a
    /// sweep) under the key's shard lock, judged at `now` (read by the caller before the
    /// lock), which `step` gets too. `step` returns what to do with the record ([`Change`])
    /// and a result. When `may_add` and the key has no entry, [`Table::room`] is checked
    /// before `step` runs (past its cheap check, with the shard lock let go meanwhile); a key
    /// with an entry reads no stripe.
    fn with_record<R>(
        &self,
        key: &StorageKey,
        may_add: bool,
        now: Instant,
        step: impl FnOnce(Option<&mut Entry>, Instant) -> (Change<Entry>, R),
    ) -> Result<R, Error> {
        let table = self.records();
        Ok(match table.slot(key.digest(), may_add)? {
            Slot::Vacant(v) => {
                let (change, r) = step(None, now);
                if let Change::Put(e) = change {
                    v.insert(e);
                    table.added(key.digest());
                }
                r
            }
            Slot::Occupied(mut o) => {
                let live = !o.get().dead(now);
                let (change, r) = step(live.then(|| o.get_mut()), now);
                match change {
                    Change::Put(e) => {
                        o.insert(e);
                    }
                    Change::Remove => {
                        o.remove();
                        table.removed(key.digest());
                    }
                    Change::Keep => {}
                }
                r
            }
        })
    }

    /// Claims `c.key`, or returns the record that holds it, in one step under the key's
    /// shard lock, judged at `now`: a completed record of the same fingerprint as
    /// [`ClaimOrRecord::Replay`] (its response alone), any other as `Existing`.
    fn claim_now(&self, c: &Claim<'_>, now: Instant) -> Result<ClaimOrRecord, Error> {
        self.with_record(c.key, true, now, |cur, now| match cur {
            None => (Change::Put(Entry::claim(c, now)), ClaimOrRecord::Claimed),
            Some(e) if let Some(response) = e.replay_at(now, c.fingerprint) => {
                (Change::Keep, ClaimOrRecord::Replay(response))
            }
            // The same owner claiming again (a resent claim): still theirs, lease reset.
            Some(e) if &*e.owner == c.owner && e.response.is_none() => {
                e.expires_at = after(now, c.lease);
                (Change::Keep, ClaimOrRecord::Claimed)
            }
            Some(e) => (
                Change::Keep,
                ClaimOrRecord::Existing(Some(e.record_at(now))),
            ),
        })
    }

    fn take_over_now(&self, c: &Claim<'_>, previous_owner: &str) -> Result<bool, Error> {
        self.with_record(c.key, true, Instant::now(), |cur, now| match cur {
            Some(e) if &*e.owner == previous_owner && e.expired(now) => {
                (Change::Put(Entry::claim(c, now)), true)
            }
            _ => (Change::Keep, false),
        })
    }

    fn complete_now(&self, key: &StorageKey, owner: &str, response: &[u8], ttl: Duration) -> bool {
        self.with_record(key, false, Instant::now(), |cur, now| match cur {
            Some(e) if &*e.owner == owner && e.response.is_none() => {
                e.response = Some(response.into());
                e.expires_at = after(now, ttl);
                (Change::Keep, true)
            }
            _ => (Change::Keep, false),
        })
        .unwrap_or(false)
    }

    fn renew_now(&self, key: &StorageKey, owner: &str, lease: Duration) -> bool {
        self.with_record(key, false, Instant::now(), |cur, now| match cur {
            Some(e) if &*e.owner == owner && e.response.is_none() => {
                e.expires_at = after(now, lease);
                (Change::Keep, true)
            }
            _ => (Change::Keep, false),
        })
        .unwrap_or(false)
    }

    fn release_now(&self, key: &StorageKey, owner: &str) {
        let _ = self.with_record(key, false, Instant::now(), |cur, _| match cur {
            Some(e) if &*e.owner == owner && e.response.is_none() => (Change::Remove, ()),
            _ => (Change::Keep, ()),
        });
    }

    fn read_now(&self, key: &StorageKey) -> Option<Record> {
        let now = Instant::now();
        self.records()
            .map
            .get(key.digest())
            .filter(|e| !e.dead(now))
            .map(|e| e.record_at(now))
    }

    /// Number of live records (claims and completed records within their lease or TTL, and
    /// those less than a second past it); sweeps the dead ones first.
    pub fn len(&self) -> u64 {
        self.records().sweep(Instant::now(), None) as u64
    }

    /// `true` when the store holds no live record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a step does to the entry it was given.
enum Change<V> {
    /// Leave it (changed in place or not).
    Keep,
    /// Put this entry in its place (or in the empty slot).
    Put(V),
    /// Remove it.
    Remove,
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
        Ok(self.claim_now(claim, Instant::now())? == ClaimOrRecord::Claimed)
    }

    /// One step under the key's shard lock, as a hand-written map's `get`, then `insert`
    /// under one guard: a completed, unexpired record of the same fingerprint is answered as
    /// [`ClaimOrRecord::Replay`] (the fingerprint compared in place, one `Arc` cloned), an
    /// absent one is claimed, any other is read. (A shared-lock probe for replays first cost a
    /// fresh call a second lookup and lock, and a replay no less.)
    async fn claim_or_read(&self, claim: &Claim<'_>) -> Result<ClaimOrRecord, Error> {
        self.claim_now(claim, Instant::now())
    }

    async fn read_record(&self, key: &StorageKey) -> Result<Option<Record>, Error> {
        Ok(self.read_now(key))
    }

    async fn take_over_claim(
        &self,
        claim: &Claim<'_>,
        previous_owner: &str,
    ) -> Result<bool, Error> {
        self.take_over_now(claim, previous_owner)
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
type HeldLock = (Box<str>, Option<Arc<str>>, Instant, u64);
/// A stored response: `(fingerprint, response, ttl end)` (an `Arc<[u8]>`, as [`Entry`]'s).
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
    fn live_lock(&self, now: Instant) -> Option<&HeldLock> {
        self.lock.as_ref().filter(|l| l.2 > now)
    }
    fn live_response(&self, now: Instant) -> Option<&StoredResponse> {
        self.response.as_ref().filter(|r| r.2 > now)
    }
    fn held_by(&self, owner: &str, now: Instant) -> bool {
        self.live_lock(now).is_some_and(|l| &*l.0 == owner)
    }
}

impl Expiring for LockEntry {
    fn dead(&self, now: Instant) -> bool {
        self.lock.as_ref().is_none_or(|l| l.2 + GRACE <= now)
            && self.response.as_ref().is_none_or(|r| r.2 + GRACE <= now)
    }
}

/// One token's state (`token`).
#[derive(Debug)]
struct TokenEntry {
    /// `None` while issued and unused; `(owner, lease end)` while a call holds it.
    consumer: Option<(Box<str>, Instant)>,
    binding: Option<Arc<str>>,
    fingerprint: Option<Arc<str>>,
    response: Option<Arc<[u8]>>,
    /// When the entry ends: the token's own expiry, pushed out while a consumer's lease runs
    /// past it, then the response's TTL once completed.
    expires_at: Instant,
    /// The expiry `issue_token` gave the token, which a restored token goes back to (expired
    /// at once when it has passed), as the Redis store's restore script does.
    issued_until: Instant,
}

impl Expiring for TokenEntry {
    fn dead(&self, now: Instant) -> bool {
        self.expires_at + GRACE <= now
    }
}

impl MemoryStore {
    fn locks(&self) -> &Table<LockEntry> {
        &self.inner.locks
    }

    fn tokens(&self) -> &Table<TokenEntry> {
        &self.inner.tokens
    }

    /// Runs `step` on `key`'s lock entry (absent: `None`), under its shard lock, with the
    /// clock read once before the lock.
    fn with_lock<R>(
        &self,
        key: &StorageKey,
        step: impl FnOnce(&mut LockEntry, Instant) -> R,
    ) -> Option<R> {
        let now = Instant::now();
        self.locks()
            .map
            .get_mut(key.digest())
            .map(|mut e| step(&mut e, now))
    }

    /// Runs `step` on the live (unexpired) token `token_key` (absent or expired: `None`), under
    /// its shard lock.
    fn with_token<R>(
        &self,
        token_key: &StorageKey,
        step: impl FnOnce(&mut TokenEntry, Instant) -> R,
    ) -> Option<R> {
        let now = Instant::now();
        let mut t = self.tokens().map.get_mut(token_key.digest())?;
        (t.expires_at > now).then(|| step(&mut t, now))
    }

    fn release_lock_now(&self, key: &StorageKey, owner: &str) -> bool {
        self.with_lock(key, |e, now| {
            let held = e.held_by(owner, now);
            if held {
                e.lock = None;
            }
            held
        })
        .unwrap_or(false)
    }

    fn restore_token_now(&self, token_key: &StorageKey, owner: &str) -> bool {
        self.with_token(token_key, |t, _| {
            let ours = t.response.is_none() && t.consumer.as_ref().is_some_and(|c| &*c.0 == owner);
            if ours {
                t.consumer = None;
                t.binding = None;
                t.fingerprint = None;
                // Back to the token's own expiry: a consumer's lease no longer keeps it.
                t.expires_at = t.issued_until;
            }
            ours
        })
        .unwrap_or(false)
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
        let now = Instant::now();
        let mut e = self.locks().entry_or_default(key.digest())?;
        if let Some((fp, response, _)) = e.live_response(now) {
            // The fingerprint compared in place: handed out only when both are set and differ.
            let differs = check_fingerprint(fp.as_deref(), fingerprint).is_err();
            return Ok(Acquired::Replay {
                fingerprint: if differs { fp.clone() } else { None },
                response: response.clone(),
            });
        }
        if let Some((holder, fp, _, held)) = e.live_lock(now) {
            if &**holder == owner {
                // The same owner acquiring again (a resent acquisition): still theirs, with
                // the fence it holds, lease reset.
                let held = *held;
                if let Some(l) = e.lock.as_mut() {
                    l.2 = after(now, lease);
                }
                return Ok(Acquired::Acquired { fence: held });
            }
            return Ok(Acquired::Held {
                fingerprint: fp.clone(),
            });
        }
        // Under the key's shard lock: the key's tokens grow with its acquisitions.
        let fence = self.inner.fence.fetch_add(1, Relaxed) + 1;
        e.lock = Some((
            owner.into(),
            fingerprint.map(Into::into),
            after(now, lease),
            fence,
        ));
        Ok(Acquired::Acquired { fence })
    }

    async fn renew_lock(
        &self,
        key: &StorageKey,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, Error> {
        Ok(self
            .with_lock(key, |e, now| {
                let held = e.held_by(owner, now);
                if let Some(l) = e.lock.as_mut().filter(|_| held) {
                    l.2 = after(now, lease);
                }
                held
            })
            .unwrap_or(false))
    }

    async fn complete_lock(
        &self,
        key: &StorageKey,
        owner: &str,
        response: &[u8],
        ttl: Duration,
    ) -> Result<bool, Error> {
        Ok(self
            .with_lock(key, |e, now| {
                let held = e.held_by(owner, now);
                if held {
                    let fp = e.lock.take().and_then(|l| l.1);
                    e.response = Some((fp, response.into(), after(now, ttl)));
                }
                held
            })
            .unwrap_or(false))
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
        let table = self.tokens();
        table.room(token_key.digest())?;
        let until = after(Instant::now(), ttl);
        let entry = TokenEntry {
            consumer: None,
            binding: None,
            fingerprint: None,
            response: None,
            expires_at: until,
            issued_until: until,
        };
        if table.map.insert(*token_key.digest(), entry).is_none() {
            table.added(token_key.digest());
        }
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
        let consumed = self.with_token(token_key, |t, now| {
            // The binding and fingerprint of the call that holds or completed the token.
            let theirs = |t: &TokenEntry| {
                (
                    t.binding.clone().unwrap_or_else(|| "".into()),
                    t.fingerprint.clone(),
                )
            };
            if let Some(response) = &t.response {
                // Judged in place: the same call's replay is its response alone.
                let same = crate::strategy::replaying::token::check(
                    t.binding.as_deref().unwrap_or_default(),
                    t.fingerprint.as_deref(),
                    binding,
                    fingerprint,
                )
                .is_ok();
                if same {
                    return Consumed::Matched(response.clone());
                }
                let (binding, fingerprint) = theirs(t);
                return Consumed::Replay {
                    binding,
                    fingerprint,
                    response: bytes::Bytes::from_owner(response.clone()),
                };
            }
            // A live consumption by another owner is busy; the same owner consuming again (a
            // resent consumption) takes it again below, lease reset.
            if t.consumer
                .as_ref()
                .is_some_and(|c| c.1 > now && &*c.0 != owner)
            {
                let (binding, fingerprint) = theirs(t);
                return Consumed::Busy {
                    binding,
                    fingerprint,
                };
            }
            let ends = after(now, lease);
            t.consumer = Some((owner.into(), ends));
            t.binding = Some(binding.into());
            t.fingerprint = fingerprint.map(Into::into);
            t.expires_at = t.expires_at.max(ends);
            Consumed::Claimed
        });
        Ok(consumed.unwrap_or(Consumed::Invalid))
    }

    async fn complete_token(
        &self,
        token_key: &StorageKey,
        owner: &str,
        response: &[u8],
        ttl: Duration,
    ) -> Result<bool, Error> {
        // Not `with_token`: a consumption whose token's TTL ended mid-body still completes (the
        // consumer's lease extended the TTL; this only matters for leases longer than it).
        let now = Instant::now();
        let Some(mut t) = self.tokens().map.get_mut(token_key.digest()) else {
            return Ok(false);
        };
        let ours = t.response.is_none() && t.consumer.as_ref().is_some_and(|c| &*c.0 == owner);
        if ours {
            t.response = Some(response.into());
            t.consumer = None;
            t.expires_at = after(now, ttl);
        }
        Ok(ours)
    }

    async fn renew_token(
        &self,
        token_key: &StorageKey,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, Error> {
        let now = Instant::now();
        let Some(mut t) = self.tokens().map.get_mut(token_key.digest()) else {
            return Ok(false);
        };
        let ours = t.response.is_none() && t.consumer.as_ref().is_some_and(|c| &*c.0 == owner);
        if ours {
            let ends = after(now, lease);
            t.consumer = Some((owner.into(), ends));
            t.expires_at = t.expires_at.max(ends);
        }
        Ok(ours)
    }

    async fn restore_token(&self, token_key: &StorageKey, owner: &str) -> Result<bool, Error> {
        Ok(self.restore_token_now(token_key, owner))
    }

    fn restore_token_detached(&self, token_key: StorageKey, owner: String) {
        self.restore_token_now(&token_key, &owner);
    }
}

impl crate::admin::AdminStore for MemoryStore {
    async fn inspect_key(&self, key: &StorageKey) -> Result<crate::admin::KeyState, Error> {
        use crate::admin::KeyState;
        let now = Instant::now();
        Ok(match self.records().map.get(key.digest()) {
            Some(e) if !e.expired(now) => match e.response {
                None => KeyState::InProgress {
                    owner: e.owner.to_string(),
                    lease_left: e.expires_at.saturating_duration_since(now),
                },
                Some(_) => KeyState::Completed {
                    created_at_ms: None,
                    expires_in: e.expires_at.saturating_duration_since(now),
                },
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
        let evicted = self.with_record(key, false, Instant::now(), |cur, now| match cur {
            None => (Change::Keep, Evicted::Absent),
            Some(e) if e.response.is_none() && !e.expired(now) && !force => (
                Change::Keep,
                Evicted::LiveClaim {
                    lease_left: e.expires_at.saturating_duration_since(now),
                },
            ),
            Some(_) => (Change::Remove, Evicted::Removed),
        })?;
        Ok(evicted)
    }

    /// Sweeps every record past its lease or TTL at once (one walk of the map, each shard
    /// locked in turn); `batch` is not needed here.
    async fn purge_expired_batch(&self, _batch: u32) -> Result<u64, Error> {
        let records = self.records();
        let before = records.map.len();
        let live = records.sweep(Instant::now() + GRACE, None);
        Ok(before.saturating_sub(live) as u64)
    }

    const BATCHED: bool = false;
}

impl crate::admin::LockAdminStore for MemoryStore {
    async fn inspect_lock_key(&self, key: &StorageKey) -> Result<crate::admin::LockState, Error> {
        use crate::admin::{LockState, StoredResponse};
        let now = Instant::now();
        Ok(self
            .locks()
            .map
            .get(key.digest())
            .and_then(|e| {
                if let Some((owner, _, ends, fence)) = e.live_lock(now) {
                    return Some(LockState::Held {
                        owner: owner.to_string(),
                        fence: Some(*fence),
                        lease_left: ends.saturating_duration_since(now),
                    });
                }
                e.live_response(now)
                    .map(|(_, response, ends)| LockState::Completed {
                        expires_in: ends.saturating_duration_since(now),
                        response: StoredResponse::from_bytes(response),
                    })
            })
            .unwrap_or(LockState::Absent))
    }

    /// Removes the key's whole entry (lock and stored response); fencing tokens are counted
    /// store-wide, so they keep growing.
    async fn evict_lock_key(
        &self,
        key: &StorageKey,
        force: bool,
    ) -> Result<crate::admin::Evicted, Error> {
        use crate::admin::Evicted;
        let table = self.locks();
        let Slot::Occupied(o) = table.map.entry(*key.digest()) else {
            return Ok(Evicted::Absent);
        };
        let e = o.get();
        let now = Instant::now();
        if let Some((_, _, ends, _)) = e.live_lock(now).filter(|_| !force) {
            return Ok(Evicted::LiveClaim {
                lease_left: ends.saturating_duration_since(now),
            });
        }
        let live = e.live_lock(now).is_some() || e.live_response(now).is_some();
        o.remove();
        table.removed(key.digest());
        Ok(if live {
            Evicted::Removed
        } else {
            Evicted::Absent
        })
    }
}

impl crate::admin::TokenAdminStore for MemoryStore {
    async fn inspect_token_key(
        &self,
        token_key: &StorageKey,
    ) -> Result<crate::admin::TokenState, Error> {
        use crate::admin::{StoredResponse, TokenState};
        let now = Instant::now();
        let Some(t) = self.tokens().map.get(token_key.digest()) else {
            return Ok(TokenState::Absent);
        };
        let expires_in = t.expires_at.saturating_duration_since(now);
        let binding = || t.binding.as_deref().unwrap_or_default().to_owned();
        Ok(match (&t.response, &t.consumer) {
            _ if t.expires_at <= now => TokenState::Absent,
            (Some(response), _) => TokenState::Completed {
                binding: binding(),
                expires_in,
                response: StoredResponse::from_bytes(response),
            },
            (None, Some((owner, ends))) if *ends > now => TokenState::Consumed {
                owner: owner.to_string(),
                binding: binding(),
                lease_left: ends.saturating_duration_since(now),
                expires_in,
            },
            (None, _) => TokenState::Issued { expires_in },
        })
    }

    async fn evict_token_key(
        &self,
        token_key: &StorageKey,
        force: bool,
    ) -> Result<crate::admin::Evicted, Error> {
        use crate::admin::Evicted;
        let table = self.tokens();
        let Slot::Occupied(o) = table.map.entry(*token_key.digest()) else {
            return Ok(Evicted::Absent);
        };
        let t = o.get();
        let now = Instant::now();
        let consumed = t
            .consumer
            .as_ref()
            .filter(|c| t.response.is_none() && c.1 > now);
        if let Some((_, ends)) = consumed.filter(|_| !force) {
            return Ok(Evicted::LiveClaim {
                lease_left: ends.saturating_duration_since(now),
            });
        }
        // A consumption's lease may outlast the token's own TTL (`expires_at` is pushed out).
        let live = t.expires_at > now || consumed.is_some();
        o.remove();
        table.removed(token_key.digest());
        Ok(if live {
            Evicted::Removed
        } else {
            Evicted::Absent
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyBuilder;

    fn key(i: usize) -> StorageKey {
        KeyBuilder::new("memory.tests")
            .part(&format!("k{i}"))
            .finish()
            .expect("valid key")
    }

    fn claim<'a>(key: &'a StorageKey, owner: &'a str, lease: Duration) -> Claim<'a> {
        Claim {
            key,
            fingerprint: Some("fp"),
            owner,
            lease,
        }
    }

    const LEASE: Duration = Duration::from_secs(1);
    const TTL: Duration = Duration::from_secs(10);

    /// A replay is judged in place and reads the stored response without copying it: a claim
    /// of the same fingerprint (or none) on a completed record gets
    /// [`ClaimOrRecord::Replay`] with the one stored buffer, every time; a claim of another
    /// fingerprint gets the whole record (owner, stored fingerprint, response), which the
    /// strategy judges a mismatch. The same for a lock's stored response, whose fingerprint is
    /// handed out only when it differs, and for a completed token ([`Consumed::Matched`] for
    /// the same binding and fingerprint, every field for another).
    #[tokio::test]
    async fn a_replay_is_judged_in_place_and_shares_the_stored_response() {
        let store = MemoryStore::new();
        let k = key(1);
        let c = claim(&k, "owner-a", LEASE);
        assert!(store.try_claim(&c).await.expect("room"));
        assert!(
            store
                .complete_claim(&k, "owner-a", b"{\"id\":7}", TTL)
                .await
                .expect("ok")
        );
        let replay = |fingerprint| {
            let store = store.clone();
            let k = k.clone();
            async move {
                let c = Claim {
                    fingerprint,
                    ..claim(&k, "owner-b", LEASE)
                };
                match store.claim_or_read(&c).await {
                    Ok(ClaimOrRecord::Replay(response)) => response,
                    other => panic!("expected a replay, got {other:?}"),
                }
            }
        };
        let (first, second) = (replay(Some("fp")).await, replay(None).await);
        assert_eq!(&first[..], b"{\"id\":7}");
        assert!(Arc::ptr_eq(&first, &second), "the response was copied");
        // Another fingerprint: the whole record, as stored.
        let other = Claim {
            fingerprint: Some("other"),
            ..claim(&k, "owner-b", LEASE)
        };
        match store.claim_or_read(&other).await {
            Ok(ClaimOrRecord::Existing(Some(rec))) => {
                assert_eq!(&*rec.owner, "owner-a");
                assert_eq!(rec.fingerprint.as_deref(), Some("fp"));
                assert!(!rec.expired);
                assert_eq!(
                    rec.state,
                    RecordState::Completed(b"{\"id\":7}".to_vec().into())
                );
            }
            other => panic!("expected the completed record, got {other:?}"),
        }
        // `read_record` reads the same record, its response still shared.
        let read = store.read_record(&k).await.expect("ok").expect("kept");
        let RecordState::Completed(bytes) = &read.state else {
            panic!("expected a completed record: {read:?}");
        };
        assert_eq!(bytes.as_ptr(), first.as_ptr(), "the response was copied");

        // A lock's stored response.
        let lk = key(2);
        assert!(matches!(
            store.acquire_lock(&lk, "owner-a", Some("fp"), LEASE).await,
            Ok(Acquired::Acquired { .. })
        ));
        assert!(
            store
                .complete_lock(&lk, "owner-a", b"\"done\"", TTL)
                .await
                .expect("ok")
        );
        let replay = |fingerprint| {
            let store = store.clone();
            let lk = lk.clone();
            async move {
                match store.acquire_lock(&lk, "owner-b", fingerprint, LEASE).await {
                    Ok(Acquired::Replay {
                        fingerprint,
                        response,
                    }) => (fingerprint, response),
                    other => panic!("expected a replay, got {other:?}"),
                }
            }
        };
        let ((fa, ra), (fb, rb)) = (replay(Some("fp")).await, replay(None).await);
        assert_eq!(&ra[..], b"\"done\"");
        assert!(Arc::ptr_eq(&ra, &rb), "the lock's response was copied");
        assert_eq!(
            (fa, fb),
            (None, None),
            "an equal fingerprint is not handed out"
        );
        let (fc, rc) = replay(Some("other")).await;
        assert_eq!(fc.as_deref(), Some("fp"), "a different one is");
        assert!(Arc::ptr_eq(&ra, &rc));

        // A completed token: the same binding and fingerprint (or none) get the stored
        // response alone, shared; another fingerprint or binding gets every field.
        let tk = key(3);
        store.issue_token(&tk, TTL).await.expect("room");
        assert_eq!(
            store
                .consume_token(&tk, "owner-a", "bind", Some("fp"), LEASE)
                .await
                .expect("ok"),
            Consumed::Claimed
        );
        assert!(
            store
                .complete_token(&tk, "owner-a", b"\"paid\"", TTL)
                .await
                .expect("ok")
        );
        let consume = |binding: &'static str, fingerprint| {
            let store = store.clone();
            let tk = tk.clone();
            async move {
                store
                    .consume_token(&tk, "owner-b", binding, fingerprint, LEASE)
                    .await
                    .expect("ok")
            }
        };
        let (Consumed::Matched(ta), Consumed::Matched(tb)) = (
            consume("bind", Some("fp")).await,
            consume("bind", None).await,
        ) else {
            panic!("expected the same call's replays");
        };
        assert_eq!(&ta[..], b"\"paid\"");
        assert!(Arc::ptr_eq(&ta, &tb), "the token's response was copied");
        for (binding, fingerprint) in [("bind", Some("other")), ("another", Some("fp"))] {
            match consume(binding, fingerprint).await {
                Consumed::Replay {
                    binding,
                    fingerprint,
                    response,
                } => {
                    assert_eq!((&*binding, fingerprint.as_deref()), ("bind", Some("fp")));
                    assert_eq!(response.as_ptr(), ta.as_ptr(), "the response was copied");
                }
                other => panic!("expected the completed token's fields, got {other:?}"),
            }
        }
    }

    /// A full store refuses a new key with an error naming the capacity, and every record it
    /// holds still replays: nothing is forgotten to make room.
    #[tokio::test(start_paused = true)]
    async fn a_full_store_refuses_new_keys_and_forgets_nothing() {
        let store = MemoryStore::with_capacity(3);
        let keys: Vec<StorageKey> = (0..4).map(key).collect();
        for k in &keys[..3] {
            assert!(store.try_claim(&claim(k, "a", LEASE)).await.expect("room"));
            assert!(store.complete_claim(k, "a", b"r", TTL).await.expect("ok"));
        }
        let err = store
            .try_claim(&claim(&keys[3], "a", LEASE))
            .await
            .expect_err("full");
        let text = err.to_string();
        assert!(text.contains("the memory store is full"), "{text}");
        assert!(text.contains("3 live records of at most 3"), "{text}");
        // Each table names what it holds (found by a new user: full tokens said "records").
        for k in &keys[..3] {
            store.issue_token(k, TTL).await.expect("room");
        }
        let full = store.issue_token(&keys[3], TTL).await.expect_err("full");
        assert!(
            full.to_string().contains("3 live tokens of at most 3"),
            "{full}"
        );
        for k in &keys[..3] {
            let rec = store.read_record(k).await.expect("ok").expect("kept");
            assert_eq!(rec.state, RecordState::Completed(b"r".to_vec().into()));
        }
        assert_eq!(store.len(), 3);
    }

    /// Filling a store to its capacity walks the table a few times (each time twice the live
    /// entries is reached, then once when full), not once per key near the capacity: 20,000
    /// keys that never expire into a store of 20,000 take every key, sweep at most 6 times,
    /// and refuse the next key. Once the leases end, a new key gets in (the full store sweeps).
    #[tokio::test(start_paused = true)]
    async fn filling_to_the_capacity_sweeps_a_few_times_not_per_key() {
        const CAPACITY: usize = 20_000;
        let store = MemoryStore::with_capacity(CAPACITY as u64);
        for i in 0..CAPACITY {
            assert!(
                store
                    .try_claim(&claim(&key(i), "a", LEASE))
                    .await
                    .expect("room"),
                "key {i}"
            );
        }
        let sweeps = store.records().sweeps.load(Relaxed);
        assert!(sweeps <= 6, "{sweeps} sweeps to fill the store");
        let refused = store.try_claim(&claim(&key(CAPACITY), "a", LEASE)).await;
        assert!(
            refused.is_err_and(|e| e.to_string().contains("the memory store is full")),
            "a full store takes no more keys"
        );
        assert!(store.records().sweeps.load(Relaxed) <= sweeps + 2);
        tokio::time::advance(LEASE + Duration::from_millis(1)).await;
        assert!(
            store
                .try_claim(&claim(&key(CAPACITY), "a", LEASE))
                .await
                .expect("room once the leases ended")
        );
    }

    /// The count is kept in stripes, but the capacity is exact: a store of 300 takes exactly
    /// 300 new keys of 2,000 (every stripe's share of the capacity handed out, none twice),
    /// whichever stripes they fall in, and takes new keys again as soon as entries expire.
    #[tokio::test(start_paused = true)]
    async fn the_capacity_is_exact_across_stripes() {
        for capacity in [1, 63, 300] {
            let store = MemoryStore::with_capacity(capacity);
            let mut taken = 0;
            for i in 0..2_000 {
                if store
                    .try_claim(&claim(&key(i), "a", LEASE))
                    .await
                    .is_ok_and(|claimed| claimed)
                {
                    taken += 1;
                }
            }
            assert_eq!(taken, capacity, "capacity {capacity}");
            assert_eq!(store.len(), capacity);
            let counted = store.records().counted();
            assert_eq!(counted as u64, capacity, "the stripes count every entry");
            tokio::time::advance(LEASE + GRACE + FULL_SWEEP_EVERY).await;
            assert!(
                store
                    .try_claim(&claim(&key(5_000), "a", LEASE))
                    .await
                    .expect("room once the claims expired")
            );
        }
    }

    /// A full store walks its table at most once per [`FULL_SWEEP_EVERY`] to find room (a
    /// storm of refused calls costs no sweep each), and a removal gives its room at once.
    #[tokio::test(start_paused = true)]
    async fn a_full_store_sweeps_again_only_after_a_pause_or_a_removal() {
        let store = MemoryStore::with_capacity(2);
        let (a, b) = (key(0), key(1));
        assert!(store.try_claim(&claim(&a, "a", LEASE)).await.expect("room"));
        assert!(store.try_claim(&claim(&b, "a", LEASE)).await.expect("room"));
        assert!(store.try_claim(&claim(&key(2), "a", LEASE)).await.is_err());
        let marked = *store.records().full_since();
        assert!(marked.is_some(), "the refusing sweep marks the table full");
        // Half the pause later a sweep would mark a later instant: none happens.
        tokio::time::advance(FULL_SWEEP_EVERY / 2).await;
        for i in 3..100 {
            assert!(store.try_claim(&claim(&key(i), "a", LEASE)).await.is_err());
        }
        assert_eq!(*store.records().full_since(), marked, "no sweep in between");
        tokio::time::advance(FULL_SWEEP_EVERY / 2).await;
        assert!(store.try_claim(&claim(&key(2), "a", LEASE)).await.is_err());
        assert!(
            *store.records().full_since() > marked,
            "swept again after the pause"
        );
        // A released claim's room is given at once, pause or not.
        store.release_claim(&a, "a").await.expect("ok");
        assert!(
            store
                .try_claim(&claim(&key(2), "a", LEASE))
                .await
                .expect("room")
        );
    }

    /// A full store gives the room of a record past its TTL at once (no second of grace
    /// then), and never the room of a record within it.
    #[tokio::test(start_paused = true)]
    async fn expired_records_are_swept_to_make_room() {
        let store = MemoryStore::with_capacity(2);
        let (a, b, c) = (key(0), key(1), key(2));
        assert!(store.try_claim(&claim(&a, "a", LEASE)).await.expect("room"));
        assert!(store.complete_claim(&a, "a", b"r", TTL).await.expect("ok"));
        tokio::time::advance(LEASE).await;
        assert!(store.try_claim(&claim(&b, "a", LEASE)).await.expect("room"));
        assert!(store.complete_claim(&b, "a", b"r", TTL).await.expect("ok"));
        // Both within their TTL: full.
        assert!(store.try_claim(&claim(&c, "a", LEASE)).await.is_err());
        tokio::time::advance(TTL - LEASE).await;
        // `a` is past its TTL (read as expired until swept), `b` is not: `a`'s room goes to `c`.
        let rec = store.read_record(&a).await.expect("ok").expect("held");
        assert!(rec.expired);
        assert!(store.try_claim(&claim(&c, "a", LEASE)).await.expect("room"));
        assert_eq!(store.read_record(&a).await.expect("ok"), None);
        let kept = store.read_record(&b).await.expect("ok").expect("kept");
        assert_eq!(kept.state, RecordState::Completed(b"r".to_vec().into()));
        assert_eq!(store.len(), 2);
    }

    /// In a full store, a key that is already there is answered as always: its running claim
    /// is busy to another owner, its completed record replays, its expired claim is taken over,
    /// its lock replays — none of them "full".
    #[tokio::test(start_paused = true)]
    async fn a_full_store_still_answers_the_keys_it_holds() {
        let store = MemoryStore::with_capacity(2);
        let (running, done, other) = (key(0), key(1), key(2));
        assert!(
            store
                .try_claim(&claim(&running, "a", LEASE))
                .await
                .expect("room")
        );
        assert!(
            store
                .try_claim(&claim(&done, "a", LEASE))
                .await
                .expect("room")
        );
        assert!(
            store
                .complete_claim(&done, "a", b"r", TTL)
                .await
                .expect("ok")
        );
        assert!(store.try_claim(&claim(&other, "a", LEASE)).await.is_err());
        // Busy to another owner, not "full".
        assert_eq!(
            store
                .claim_or_read(&claim(&running, "b", LEASE))
                .await
                .expect("busy"),
            ClaimOrRecord::Existing(Some(Record {
                owner: "a".into(),
                fingerprint: Some("fp".into()),
                state: RecordState::InProgress,
                expired: false,
                expires_at_ms: None,
            }))
        );
        let replay = store
            .claim_or_read(&claim(&done, "b", LEASE))
            .await
            .expect("replay");
        assert_eq!(replay, ClaimOrRecord::Replay(Arc::from(&b"r"[..])));
        // The running claim's lease ends: taken over by `b` although the store is full.
        tokio::time::advance(LEASE).await;
        assert!(
            store
                .take_over_claim(&claim(&running, "b", LEASE), "a")
                .await
                .expect("room")
        );

        let locks = MemoryStore::with_capacity(1);
        let l = key(3);
        assert!(matches!(
            locks
                .acquire_lock(&l, "a", None, LEASE)
                .await
                .expect("room"),
            Acquired::Acquired { .. }
        ));
        assert!(locks.complete_lock(&l, "a", b"r", TTL).await.expect("ok"));
        assert!(matches!(
            locks
                .acquire_lock(&l, "b", None, LEASE)
                .await
                .expect("replay"),
            Acquired::Replay { .. }
        ));
        assert!(locks.acquire_lock(&key(4), "b", None, LEASE).await.is_err());
    }

    /// A sweep never drops a live claim or a live lock, and fencing tokens keep growing after
    /// idle lock entries are swept.
    #[tokio::test(start_paused = true)]
    async fn sweeps_keep_live_entries_and_fencing_tokens_grow() {
        let store = MemoryStore::with_capacity(10_000);
        let held = key(0);
        let Acquired::Acquired { fence: first } = store
            .acquire_lock(&held, "holder", None, Duration::from_secs(3600))
            .await
            .expect("ok")
        else {
            panic!("not acquired")
        };
        assert!(
            store
                .try_claim(&claim(&held, "holder", Duration::from_secs(3600)))
                .await
                .expect("ok")
        );
        // Enough short-lived locks to pass the first sweep mark twice.
        let mut last = first;
        for i in 1..=(2 * MIN_SWEEP + 1) {
            let k = key(i);
            let Acquired::Acquired { fence } =
                store.acquire_lock(&k, "o", None, LEASE).await.expect("ok")
            else {
                panic!("not acquired")
            };
            assert!(fence > last, "fencing token went from {last} to {fence}");
            last = fence;
            assert!(store.release_lock(&k, "o").await.expect("ok"));
            if i == MIN_SWEEP {
                tokio::time::advance(LEASE + GRACE).await;
            }
        }
        assert!(
            store.inner.locks.map.len() < 2 * MIN_SWEEP,
            "idle lock entries were swept"
        );
        // The live lock and the live claim survived every sweep.
        assert!(
            store
                .renew_lock(&held, "holder", Duration::from_secs(3600))
                .await
                .expect("ok")
        );
        let rec = store.read_record(&held).await.expect("ok").expect("kept");
        assert_eq!(rec.state, RecordState::InProgress);
        assert_eq!(&*rec.owner, "holder");
    }
}
