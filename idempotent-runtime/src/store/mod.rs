//! The store traits the strategies call ([`ClaimStore`], [`LockStore`], [`TokenStore`], with
//! their common [`Store`]), their record types, and the backends, one home each: SQL databases
//! through sqlx ([`sql`], one file per database), Redis (`redis`) and the in-process
//! [`MemoryStore`](memory::MemoryStore). What a `store = "..."` argument may be is in the
//! store-argument traits ([`AsClaimStore`] and its siblings); each backend implements them
//! next to its store traits.
//!
//! A record is one row (or map entry) per storage key:
//! `(idempotency_key, operation, fingerprint, status, owner, response, expires_at)`.
//! `status` is `in_progress` (a claim, expiring at the end of its lease) or `completed`
//! (expiring after the record's TTL). Every write after the claim is a compare-and-set on the
//! claim's `owner` token, and expiry is judged by the backend's own clock — except where the
//! backend has no clock its clients share ([`ClaimStore::SHARED_CLOCK`], SQLite), where an
//! in-progress claim is judged dead by watching it go unrenewed for a lease.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::{Error, StorageKey};

/// The shared byte buffer a stored response is handed out in ([`RecordState::Completed`],
/// [`Consumed::Replay`]): the `bytes` crate's `Bytes`, re-exported so
/// that a store of your own needs no dependency of its own. A `Vec<u8>` converts with
/// `.into()` (no copy); a borrowed slice with `Bytes::copy_from_slice`.
pub use bytes::Bytes;

mod arg;
#[cfg(feature = "memory")]
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqlx")]
pub mod sql;

/// The business-table access of the SQL strategies, at its former path
/// (`store::business`); it lives in [`sql::business`].
#[cfg(feature = "sqlx")]
#[doc(hidden)]
pub use sql::business;

#[cfg(feature = "sqlx")]
pub use arg::IntoTxStore;
pub use arg::{AsClaimStore, AsLockStore, AsTokenStore};

/// A claim to write: who claims which key for how long.
#[derive(Debug, Clone)]
pub struct Claim<'a> {
    /// The storage key.
    pub key: &'a StorageKey,
    /// The request fingerprint as 64 hex characters, `None` when fingerprinting is off.
    pub fingerprint: Option<&'a str>,
    /// This caller's random owner token (32 hex characters).
    pub owner: &'a str,
    /// How long the claim lives without completion.
    pub lease: Duration,
}

/// The state of an existing record as read from the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordState {
    /// Claimed and not completed.
    InProgress,
    /// Completed, with the serialized (JSON) response. [`Bytes`]: a `Vec<u8>` read from a
    /// server converts without a copy (`Bytes::from(vec)`); the memory store answers a replay
    /// with [`ClaimOrRecord::Replay`] and builds this only on its rarer reads.
    Completed(bytes::Bytes),
}

/// An existing record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The owner token of the claim that wrote it. Shared (`Arc<str>`, from a `String` or
    /// `&str` with `.into()`): the memory store hands out its stored copy on every replay.
    pub owner: Arc<str>,
    /// The stored fingerprint (64 hex characters), if any; shared as `owner` is.
    pub fingerprint: Option<Arc<str>>,
    /// In progress or completed.
    pub state: RecordState,
    /// `true` when the backend's clock says the lease (in progress) or TTL (completed) is over.
    pub expired: bool,
    /// The record's stored expiry in Unix milliseconds, as written by the clock of whoever wrote
    /// it (the SQL stores; `None` where the store does not report it: memory, Redis). Every
    /// renewal of a live claim changes it, which is what a store without a shared clock
    /// ([`ClaimStore::SHARED_CLOCK`] `false`) judges a claim's liveness by.
    pub expires_at_ms: Option<i64>,
}

/// What [`ClaimStore::claim_or_read`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOrRecord {
    /// This caller now holds the claim ([`ClaimStore::try_claim`]'s `Ok(true)`).
    Claimed,
    /// A record exists, and this is it as [`ClaimStore::read_record`] returns it (`None` when
    /// it vanished between the claim attempt and the read of a store that makes two steps).
    Existing(Option<Record>),
    /// A completed, unexpired record whose stored fingerprint equals the claim's
    /// ([`Claim::fingerprint`]; or one of the two is `None`): its stored response (the JSON
    /// bytes, as [`RecordState::Completed`] holds them), to replay as it is. A store may answer
    /// this instead of [`Existing`](Self::Existing) when it judged the record in the same
    /// atomic step: the memory store does, comparing the fingerprint in place and handing out
    /// one shared buffer (an `Arc<[u8]>`, whose count sits with its bytes) instead of a copy
    /// of every field of the record. Any other record (in progress, expired, another
    /// fingerprint) must be answered as `Existing`, so the strategy judges it.
    Replay(Arc<[u8]>),
}

/// What every store has, whichever strategies it serves: a name for logs and the demo.
pub trait Store: Send + Sync {
    /// A short backend name (`"postgres"`, `"mysql"`, `"sqlite"`, `"redis"`,
    /// `"redis-cluster"`, `"memory"`).
    fn backend_name(&self) -> &'static str;
}

/// A store that keeps claims outside the body's transaction ("claim mode" of `dedup_table`).
///
/// Implemented for `sqlx::Pool<Postgres | MySql | Sqlite>` and
/// [`MemoryStore`](memory::MemoryStore). Each method is one atomic step on the backend.
///
/// **Owned handles.** The store must be a cheap-to-clone handle to shared state (`Clone + Send
/// + Sync + 'static`): once the body has returned `Ok`, the strategy records its response with a
/// future holding a clone of the store, which goes on in a task of its own (spawned on the
/// current tokio runtime) if the caller's future is dropped meanwhile, so that the record is
/// still written. Every built-in
/// store is one (a sqlx `Pool`, [`MemoryStore`](memory::MemoryStore), `RedisStore`); a store
/// of your own that owns its state should keep it behind an `Arc`.
///
/// **Idempotent acquisition.** A claim sent again by the same owner (its reply was lost, or
/// the client resent it) must not lock that owner out: [`try_claim`](ClaimStore::try_claim)
/// either answers `Ok(true)` (the Redis scripts and the memory store do), or answers
/// `Ok(false)` and [`read_record`](ClaimStore::read_record) then shows the owner's unexpired
/// in-progress claim, which `dedup_table` counts as claimed on the read it makes anyway (the
/// SQL stores: one statement, no extra read).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an idempotency store: `store` must give a `ClaimStore`",
    label = "this store is a `{Self}`",
    note = "write `store = \"...\"` naming a sqlx pool (`PgPool`, `MySqlPool`, `SqlitePool`) or an `idempotent_runtime::MemoryStore`; or add a `#[tx] tx: &mut <DB>Connection` parameter to claim inside the body's transaction"
)]
pub trait ClaimStore: Store + Clone + 'static + AsClaimStore {
    /// `true` (the default) when every client of the store reads one clock, so a lease's end is
    /// judged alike by all of them: PostgreSQL and MySQL/MariaDB (the server's clock), Redis
    /// (the server's), memory (one process). `false` for SQLite, whose "now" is each client
    /// process's own clock: `dedup_table` then never judges an in-progress claim dead by
    /// [`Record::expired`], but by watching it — a claim whose
    /// [`expires_at_ms`](Record::expires_at_ms) stays unchanged for one full lease of the
    /// watching process's monotonic time is taken over with
    /// [`take_over_unrenewed`](ClaimStore::take_over_unrenewed); a live holder renews every
    /// `lease / 3`, which changes it, so clock skew between processes never takes over a live
    /// claim. A store that sets `false` must implement `take_over_unrenewed` and report
    /// `expires_at_ms`.
    const SHARED_CLOCK: bool = true;

    /// Inserts `claim` as an in-progress record if the key has no record. `Ok(true)` when this
    /// caller now holds the claim (a store may also answer `Ok(true)` when the record is
    /// already `claim.owner`'s unexpired in-progress claim), `Ok(false)` when a record exists.
    fn try_claim(&self, claim: &Claim<'_>) -> impl Future<Output = Result<bool, Error>> + Send;

    /// [`try_claim`](Self::try_claim), and when a record exists, that record — or, for a
    /// completed record this step has judged a replay itself, its response alone
    /// ([`ClaimOrRecord::Replay`]; the memory store does): the first step of every
    /// `dedup_table` claim-mode call, so a replay needs one store request where the store can
    /// answer both in one step (Redis: one script). The default makes the two calls
    /// (`try_claim`, then `read_record` when it answered `false`).
    fn claim_or_read(
        &self,
        claim: &Claim<'_>,
    ) -> impl Future<Output = Result<ClaimOrRecord, Error>> + Send {
        async move {
            if self.try_claim(claim).await? {
                return Ok(ClaimOrRecord::Claimed);
            }
            Ok(ClaimOrRecord::Existing(self.read_record(claim.key).await?))
        }
    }

    /// Reads the record of `key`, `None` when there is none.
    fn read_record(
        &self,
        key: &StorageKey,
    ) -> impl Future<Output = Result<Option<Record>, Error>> + Send;

    /// Replaces an *expired* record owned by `previous_owner` with `claim` (compare-and-set on
    /// owner and expiry). `Ok(true)` when this caller now holds the claim.
    fn take_over_claim(
        &self,
        claim: &Claim<'_>,
        previous_owner: &str,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Replaces `previous_owner`'s in-progress claim with `claim` if its stored expiry is still
    /// `expires_at_ms` (compare-and-set on owner, status and the stored expiry; no clock is
    /// read). `dedup_table` calls it only on stores with [`SHARED_CLOCK`](Self::SHARED_CLOCK)
    /// `false`, after it has seen that same claim unchanged for one full lease. `Ok(true)` when
    /// this caller now holds the claim. The default is
    /// [`take_over_claim`](Self::take_over_claim) (the store's clock), right for every store
    /// with a shared clock.
    fn take_over_unrenewed(
        &self,
        claim: &Claim<'_>,
        previous_owner: &str,
        expires_at_ms: i64,
    ) -> impl Future<Output = Result<bool, Error>> + Send {
        let _ = expires_at_ms;
        self.take_over_claim(claim, previous_owner)
    }

    /// Marks `owner`'s in-progress claim completed with `response`, kept for `ttl`.
    /// `Ok(false)` when the claim is no longer `owner`'s (it expired and was taken over).
    fn complete_claim(
        &self,
        key: &StorageKey,
        owner: &str,
        response: &[u8],
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Extends `owner`'s in-progress claim to end `lease` from now (the backend's clock):
    /// compare-and-set on the owner. `Ok(false)` when the claim is no longer `owner`'s.
    fn renew_claim(
        &self,
        key: &StorageKey,
        owner: &str,
        lease: Duration,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Deletes `owner`'s in-progress claim (compare-and-delete); a no-op when it is not theirs.
    fn release_claim(
        &self,
        key: &StorageKey,
        owner: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Releases `owner`'s claim without waiting: used when the caller's future is dropped
    /// mid-body. Spawns the release on the current tokio runtime when there is one; otherwise
    /// the claim frees itself at the end of its lease.
    fn release_claim_detached(&self, key: StorageKey, owner: String);
}

/// 16 bytes from the OS RNG as 32 hex characters: an unguessable one-time token for
/// [`issue_token`](crate::issue_token).
pub(crate) fn random_token() -> Result<String, Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::Backend(format!("no randomness for a token: {e}").into()))?;
    Ok(crate::key::lower_hex(&bytes))
}

/// A fresh claim owner token, 32 hex characters: this process's 8 random bytes (from the OS
/// RNG, drawn once) followed by a per-process 64-bit counter. Unique across processes with
/// overwhelming probability (two processes would need the same 64-bit random prefix) and
/// within one by construction, at the cost of an atomic increment per call instead of a
/// system call. Owner tokens only tell claims apart; they are not secrets.
pub(crate) fn new_owner() -> Result<crate::key::Hex<32>, Error> {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static PREFIX: OnceLock<[u8; 8]> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = match PREFIX.get() {
        Some(prefix) => prefix,
        None => {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes).map_err(|e| {
                Error::Backend(format!("no randomness for the owner token: {e}").into())
            })?;
            PREFIX.get_or_init(|| bytes)
        }
    };
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(prefix);
    bytes[8..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    Ok(crate::key::Hex::of(&bytes))
}

/// Milliseconds of a duration as the `i64` the SQL and Redis backends send, saturating.
#[cfg(any(feature = "sqlx", feature = "redis"))]
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

/// `true` when `e` is transient for the backend (deadlock, serialization failure, SQLite busy)
/// and the failed step may be retried.
pub(crate) fn retryable(e: &Error) -> bool {
    #[cfg(feature = "sqlx")]
    {
        sql::is_retryable(e)
    }
    #[cfg(not(feature = "sqlx"))]
    {
        let _ = e;
        false
    }
}

/// What [`LockStore::acquire_lock`] found on a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// This caller now holds the lock (`SET … NX PX lease` succeeded); `fence` is the key's
    /// fencing token, one higher than any earlier acquisition's.
    Acquired {
        /// The fencing token of this acquisition.
        fence: u64,
    },
    /// The key has a completed response stored for replay.
    Replay {
        /// The fingerprint (hex) stored with the response, if any (shared, as
        /// [`Record::fingerprint`]). A store that has compared it with the `fingerprint` passed
        /// to [`acquire_lock`](LockStore::acquire_lock) may answer `None` when the comparison
        /// cannot be a mismatch (the two are equal, or the caller passed `None`): the memory
        /// store does, reading it in place rather than handing out a handle to it. So it is
        /// `Some` for certain only when both are set and differ.
        fingerprint: Option<Arc<str>>,
        /// The serialized (JSON) response, in one shared buffer (an `Arc<[u8]>`, whose count
        /// sits with its bytes): the memory store hands out its stored copy; a response read
        /// from a server converts with `.into()` (one copy, beside a round trip).
        response: Arc<[u8]>,
    },
    /// Another caller holds an unexpired lock on the key.
    Held {
        /// The fingerprint (hex) of the holder's request, if any.
        fingerprint: Option<Arc<str>>,
    },
}

/// A store of leased locks with fencing tokens and stored responses: the backend of
/// `distributed_lock`. Implemented for [`MemoryStore`](memory::MemoryStore) and
/// [`RedisStore`](redis::RedisStore) (standalone and Cluster). Each method is one atomic step
/// (one Lua script on Redis); every write after acquisition is a compare-and-set on the owner.
///
/// **Owned handles.** The store must be a cheap-to-clone handle to shared state (`Clone + Send
/// + Sync + 'static`): once the body has returned `Ok`, the strategy records its response with a
/// future holding a clone of the store, which goes on in a task of its own (spawned on the
/// current tokio runtime) if the caller's future is dropped meanwhile, so that the record is
/// still written. Every built-in
/// store is one (a sqlx `Pool`, [`MemoryStore`](memory::MemoryStore), `RedisStore`); a store
/// of your own that owns its state should keep it behind an `Arc`.
///
/// **Idempotent acquisition.** [`acquire_lock`](LockStore::acquire_lock) run again by the owner
/// that holds the lock answers [`Acquired::Acquired`] with the same fencing token.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot hold the leased locks that `distributed_lock` needs: `store` must give a `LockStore`",
    label = "this store is a `{Self}`, which has no leased locks",
    note = "write `store = \"...\"` naming an `idempotent_runtime::RedisStore` or `idempotent_runtime::MemoryStore`; a SQL pool cannot hold a distributed lock (use `dedup_table` for SQL)"
)]
pub trait LockStore: Store + Clone + 'static + AsLockStore<Store = Self> {
    /// In one step: replays a stored response if there is one, else takes the lock for `owner`
    /// for `lease` (if free) and increments the key's fencing counter, else reports the holder.
    /// When the holder is `owner` itself (the same acquisition sent again) the lease is reset
    /// to `lease` and the answer is [`Acquired::Acquired`] with the fence it already holds.
    fn acquire_lock(
        &self,
        key: &StorageKey,
        owner: &str,
        fingerprint: Option<&str>,
        lease: Duration,
    ) -> impl Future<Output = Result<Acquired, Error>> + Send;

    /// Extends `owner`'s lock to `lease` from now (compare-and-`PEXPIRE`). `Ok(false)` when
    /// the lock is no longer `owner`'s.
    fn renew_lock(
        &self,
        key: &StorageKey,
        owner: &str,
        lease: Duration,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Stores `response` for replay for `ttl` and deletes `owner`'s lock, in one step and only
    /// if the lock is still `owner`'s. `Ok(false)` (nothing written) when it is not.
    fn complete_lock(
        &self,
        key: &StorageKey,
        owner: &str,
        response: &[u8],
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Deletes `owner`'s lock (compare-and-delete). `Ok(false)` when it is not `owner`'s.
    fn release_lock(
        &self,
        key: &StorageKey,
        owner: &str,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Releases `owner`'s lock without waiting (the caller's future was dropped): spawned on
    /// the current tokio runtime when there is one, otherwise the lock ends with its lease.
    fn release_lock_detached(&self, key: StorageKey, owner: String);
}

/// What [`TokenStore::consume_token`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consumed {
    /// The token was issued and unused (or its consumer's lease ended): this caller consumed it.
    Claimed,
    /// Another call consumed the token and is still running.
    Busy {
        /// The binding (operation and scope, hex) of that call.
        binding: Arc<str>,
        /// Its request fingerprint (hex), if any.
        fingerprint: Option<Arc<str>>,
    },
    /// A call completed with this token; its response is stored for replay.
    Replay {
        /// The binding (operation and scope, hex) of that call (shared, as
        /// [`Record::owner`]).
        binding: Arc<str>,
        /// Its request fingerprint (hex), if any.
        fingerprint: Option<Arc<str>>,
        /// The serialized (JSON) response (shared, as [`RecordState::Completed`]).
        response: bytes::Bytes,
    },
    /// A call completed with this token under the same binding and a fingerprint equal to
    /// this call's (or one of the two is `None`): its stored response (the JSON bytes, as
    /// [`Replay::response`](Consumed::Replay::response) holds them), to replay as it is. A
    /// store may answer this instead of [`Replay`](Self::Replay) when it judged the
    /// completed token in the same atomic step: the memory store does, comparing binding and
    /// fingerprint in place and handing out one shared buffer (an `Arc<[u8]>`, whose count
    /// sits with its bytes) instead of a copy of every field. A completed token of another
    /// binding or fingerprint must be answered as `Replay`, so the strategy judges it.
    Matched(Arc<[u8]>),
    /// No such token: never issued, expired, or its replay record expired.
    Invalid,
}

/// A store of one-time tokens: the backend of `token`. Implemented for
/// [`MemoryStore`](memory::MemoryStore) and [`RedisStore`](redis::RedisStore). Each method is
/// one atomic step on the server (one Lua script on Redis: never GET then DEL).
///
/// **Owned handles.** The store must be a cheap-to-clone handle to shared state (`Clone + Send
/// + Sync + 'static`): once the body has returned `Ok`, the strategy records its response with a
/// future holding a clone of the store, which goes on in a task of its own (spawned on the
/// current tokio runtime) if the caller's future is dropped meanwhile, so that the record is
/// still written. Every built-in
/// store is one (a sqlx `Pool`, [`MemoryStore`](memory::MemoryStore), `RedisStore`); a store
/// of your own that owns its state should keep it behind an `Arc`.
///
/// **Idempotent consumption.** [`consume_token`](TokenStore::consume_token) run again by the
/// owner that consumed the token answers [`Consumed::Claimed`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot hold the one-time tokens that `token` needs: `store` must give a `TokenStore`",
    label = "this store is a `{Self}`, which has no one-time tokens",
    note = "write `store = \"...\"` naming an `idempotent_runtime::RedisStore` or `idempotent_runtime::MemoryStore`; a SQL pool cannot hold one-time tokens (use `dedup_table` for SQL)"
)]
pub trait TokenStore: Store + Clone + 'static + AsTokenStore<Store = Self> {
    /// Stores a fresh token under `token_key`, valid for `ttl`. (The free function
    /// [`issue_token`](crate::issue_token) makes the token and calls this.)
    fn issue_token(
        &self,
        token_key: &StorageKey,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// Consumes the token for `owner` in one step (see [`Consumed`]). The consumption lasts
    /// `lease`; a consumer that neither completes nor restores within it loses it to the next.
    /// A token already consumed by `owner` (the same step sent again) answers
    /// [`Consumed::Claimed`] with its lease reset to `lease`.
    fn consume_token(
        &self,
        token_key: &StorageKey,
        owner: &str,
        binding: &str,
        fingerprint: Option<&str>,
        lease: Duration,
    ) -> impl Future<Output = Result<Consumed, Error>> + Send;

    /// Stores `response` for replay for `ttl`, if the token is still consumed by `owner`.
    fn complete_token(
        &self,
        token_key: &StorageKey,
        owner: &str,
        response: &[u8],
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Extends `owner`'s consumption of the token to end `lease` from now (compare-and-set on
    /// the owner; the token's own expiry is pushed out if it would end first). `Ok(false)` when
    /// the token is no longer consumed by `owner`.
    fn renew_token(
        &self,
        token_key: &StorageKey,
        owner: &str,
        lease: Duration,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Puts the token back to issued (the body failed retryably), if `owner` consumed it:
    /// unbound, with the expiry [`issue_token`](TokenStore::issue_token) gave it — gone at once
    /// when that has passed while the consumer held it (a consumer's lease never lengthens the
    /// token's own life). `Ok(true)` when it was `owner`'s consumption (restored or expired),
    /// `Ok(false)` otherwise.
    fn restore_token(
        &self,
        token_key: &StorageKey,
        owner: &str,
    ) -> impl Future<Output = Result<bool, Error>> + Send;

    /// [`restore_token`](TokenStore::restore_token) without waiting (dropped future).
    fn restore_token_detached(&self, token_key: StorageKey, owner: String);
}
