//! `strategy = "dedup_table"`: an anti-duplicate table of idempotency records.
//!
//! Two modes, chosen by the macro from the function's parameters:
//!
//! - **Transactional** ([`run_in_tx`], the body takes `#[tx]`): the record is inserted in the
//!   same transaction as the body's own writes and completed in it, so both commit together or
//!   not at all. A concurrent duplicate's insert waits on the primary key until the first
//!   transaction ends, then reads the committed record and replays it (PostgreSQL
//!   `ON CONFLICT DO NOTHING`, SQLite `BEGIN IMMEDIATE`, MySQL's duplicate-key error, recognised
//!   by sqlx's error kind). A rollback or a crash leaves no record. A duplicate of a completed
//!   call opens no transaction: on a pool (or a connection outside any transaction) the record
//!   is first read in one statement outside any transaction
//!   ([`TxStore::read_or_begin`](crate::TxStore::read_or_begin)); completed and unexpired by
//!   the database's clock, it is judged there (replay, or [`Error::FingerprintMismatch`]).
//!   Absent, expired or in progress, the transaction opens on the same connection and claims
//!   as above, judging what it reads itself.
//! - **Claim** ([`run`], no `#[tx]`, any [`ClaimStore`]): the claim commits first as
//!   `in_progress` with a lease judged by the store's clock; the body runs; completion stores the
//!   response by compare-and-set on the claim's owner token, in a task of its own that outlives
//!   the caller's future and retries backend errors for up to the lease. An error from the body deletes the
//!   claim; a future dropped mid-body keeps it until its lease ends (`on_cancel = "keep"`, the
//!   default) or releases it at once (`on_cancel = "release"`, see [`OnCancel`]); an expired
//!   claim is taken over by exactly one caller (compare-and-set on owner and expiry). On a store
//!   without a clock its clients share ([`ClaimStore::SHARED_CLOCK`] `false`: SQLite) an
//!   in-progress claim is judged dead not by the clock but by watching it (`unrenewed`): it is
//!   taken over once this process has seen its stored expiry unchanged for one full lease of
//!   its own monotonic time (compare-and-set on owner and that expiry).
//!
//! In both modes a later duplicate gets the stored response, replayed
//! ([`Disposition::Replayed`](crate::Disposition)); the same key with another fingerprint gets
//! [`Error::FingerprintMismatch`], checked before in-progress and replay handling.
//!
//! The replay codec, renewal, drop guard and busy-wait are the replaying family's, in
//! [`replaying`](super).

use std::time::Duration;

use serde::de::DeserializeOwned;

pub use super::DEFAULT_MAX_RESPONSE_BYTES;
use super::durations::{
    DEFAULT_LEASE, DEFAULT_TTL, check_acquisition, check_lease_and_ttl, check_on_busy,
};
use super::{
    Completion, DropGuard, ErrorPolicy, ReleaseAll, Replayed, SameValue, acquiring, answer, busy,
    check_fingerprint, first_renewal, replayed, settle, while_renewing,
};
#[cfg(feature = "sqlx")]
use crate::error::{Disposition, record};
use crate::store::{Claim, ClaimOrRecord, ClaimStore, Record, RecordState, new_owner, retryable};
use crate::strategy::{Backoff, OnBusy, OnCancel};
use crate::telemetry::{self, Decision};
use crate::{Error, Fingerprint, StorageKey};

/// How many times a claim attempt is retried after a deadlock, a serialization failure, SQLite
/// busy, or a record that vanished between the failed insert and the read.
const MAX_ATTEMPTS: u32 = 16;

/// Options of one `dedup_table` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// How long an in-progress claim lives without renewal (claim mode), default 30 s, at
    /// least [`MIN_LEASE`](super::durations::MIN_LEASE) (300 ms). The claim is renewed every
    /// `lease / 3` while the body runs, so only a crashed or stalled process lets it expire; a
    /// claim taken over after expiry makes the late completion fail with [`Error::LockLost`].
    pub lease: Duration,
    /// How long a completed record is kept and replayed, default 24 h (as Stripe), at least
    /// `lease`.
    pub ttl: Duration,
    /// What a concurrent duplicate gets, default [`OnBusy::Reject`]; a wait is at least
    /// [`MIN_WAIT`](super::durations::MIN_WAIT) (10 ms).
    pub on_busy: OnBusy,
    /// What a future dropped mid-body does with its claim (claim mode only; a dropped
    /// transaction rolls back), default [`OnCancel::Keep`]: the claim stays until its lease
    /// ends, so an immediate retry gets [`Error::InProgress`] rather than a second run.
    pub on_cancel: OnCancel,
    /// The largest serialized (JSON) response stored for replay, in bytes, default
    /// [`DEFAULT_MAX_RESPONSE_BYTES`].
    pub max_response_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            lease: DEFAULT_LEASE,
            ttl: DEFAULT_TTL,
            on_busy: OnBusy::Reject,
            on_cancel: OnCancel::Keep,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }
}

impl Options {
    /// Checks the durations against what the protocol needs ([`durations`](super::durations)):
    /// `lease` at least [`MIN_LEASE`](super::durations::MIN_LEASE), `ttl` at least `lease`,
    /// `on_busy = Wait(d)` with `d` at least [`MIN_WAIT`](super::durations::MIN_WAIT).
    /// [`run`] and `run_in_tx` call it first; call it yourself to reject options read from
    /// configuration at startup.
    ///
    /// Errors: [`Error::InvalidOption`] naming the option, its value and the minimum.
    pub fn check(&self) -> Result<(), Error> {
        check_lease_and_ttl(self.lease, self.ttl)?;
        check_on_busy(self.on_busy)
    }
}

/// Runs `step` again while it fails with a transient backend error (a deadlock, a
/// serialization failure, SQLite busy), at most [`MAX_ATTEMPTS`] times in all, with backoff;
/// each rerun is reported as the call's `contention_retry` decision.
async fn retrying<R, Fut: Future<Output = Result<R, Error>>>(
    mut step: impl FnMut() -> Fut,
) -> Result<R, Error> {
    let mut backoff = Backoff::new();
    let mut attempts = 1;
    loop {
        // The step's result is dropped before the backoff's `.await`: held across it (as a
        // `match` scrutinee would be), it would widen this future on every call.
        match step().await {
            Err(e) if retryable(&e) && attempts < MAX_ATTEMPTS => {}
            other => return other,
        }
        attempts += 1;
        telemetry::event(Decision::ContentionRetry);
        backoff.wait().await;
    }
}

/// What to do about an existing record.
enum Verdict<T> {
    /// A completed record: its response, or its stored terminal error.
    Replay(Replayed<T>),
    /// The record expired by the store's clock: take it over from this owner.
    TakeOver(std::sync::Arc<str>),
    /// The in-progress claim of this owner, with this stored expiry, went unrenewed for a
    /// lease (watched by this process): take it over if it still is that claim.
    TakeOverUnrenewed(std::sync::Arc<str>, i64),
    Busy,
    /// The record is this caller's own unexpired claim.
    Ours,
}

/// Judges an existing record. `watch` is `Some((key, lease))` on a store without a shared
/// clock: an in-progress claim of another owner is then judged by [`unrenewed`] rather than
/// by [`Record::expired`] (a completed record's TTL is still judged by the clock).
fn judge<T: DeserializeOwned>(
    rec: Record,
    owner: &str,
    fingerprint: Option<&str>,
    watch: Option<(&StorageKey, Duration)>,
) -> Result<Verdict<T>, Error> {
    // `Some(unrenewed)` when the claim is judged by watching, `None` when by the clock.
    let watched = match (watch, rec.expires_at_ms) {
        (Some((key, lease)), Some(expires_at_ms))
            if rec.state == RecordState::InProgress && &*rec.owner != owner =>
        {
            Some(
                unrenewed::for_a_lease(key, &rec.owner, expires_at_ms, lease)
                    .then_some(expires_at_ms),
            )
        }
        _ => None,
    };
    match watched {
        Some(Some(expires_at_ms)) => {
            return Ok(Verdict::TakeOverUnrenewed(rec.owner, expires_at_ms));
        }
        None if rec.expired => return Ok(Verdict::TakeOver(rec.owner)),
        _ => {}
    }
    if &*rec.owner == owner && rec.state == RecordState::InProgress {
        // This caller's own claim, sent again after its reply was lost (or resent by the
        // client): claimed. Judged here, on the read the strategy makes anyway, so no store
        // needs an extra read to make its claim idempotent per owner.
        return Ok(Verdict::Ours);
    }
    check_fingerprint(rec.fingerprint.as_deref(), fingerprint)?;
    match rec.state {
        RecordState::Completed(bytes) => Ok(Verdict::Replay(replayed(&bytes)?)),
        RecordState::InProgress => Ok(Verdict::Busy),
    }
}

/// The in-progress claims this process has seen on stores without a shared clock
/// ([`ClaimStore::SHARED_CLOCK`] `false`), and since when, so that a claim is judged dead by
/// observation rather than by comparing its expiry (written by another process's clock) with
/// this process's clock.
///
/// A live holder renews every `lease / 3`, and each renewal writes a new expiry; a claim whose
/// `(owner, expires_at_ms)` this process has seen unchanged for one full lease of its own
/// monotonic time ([`std::time::Instant`]) has not been renewed for that long. So whatever the
/// processes' wall clocks say, a renewing holder is never taken over, and a dead one is taken
/// over one lease after this process first saw it (plus its next read). Process-local and
/// bounded: at most [`CAPACITY`](unrenewed::CAPACITY) claims, least recently used evicted;
/// forgetting a claim only restarts its watch (a later take-over), never an early one. The
/// lease is the watching caller's own: processes must agree on an operation's lease (they do
/// when they run the same build).
mod unrenewed {
    use std::sync::LazyLock;
    use std::time::{Duration, Instant};

    use moka::ops::compute::Op;
    use moka::policy::EvictionPolicy;
    use moka::sync::Cache;

    use crate::StorageKey;

    /// The most claims one process watches at once.
    pub(super) const CAPACITY: u64 = 10_000;

    /// A claim as first seen: its owner and stored expiry, and when this process saw it.
    #[derive(Clone)]
    struct Seen {
        owner: String,
        expires_at_ms: i64,
        since: Instant,
    }

    /// Storage-key digest → the claim seen on it.
    static WATCHED: LazyLock<Cache<[u8; 32], Seen>> = LazyLock::new(|| {
        Cache::builder()
            .max_capacity(CAPACITY)
            .eviction_policy(EvictionPolicy::lru())
            .build()
    });

    /// `true` when this process has seen `owner`'s claim on `key` with stored expiry
    /// `expires_at_ms` unchanged for at least `lease`; otherwise starts (or keeps) watching it
    /// and answers `false`.
    pub(super) fn for_a_lease(
        key: &StorageKey,
        owner: &str,
        expires_at_ms: i64,
        lease: Duration,
    ) -> bool {
        let now = Instant::now();
        let mut unrenewed = false;
        WATCHED
            .entry(*key.digest())
            .and_compute_with(|seen| match seen {
                Some(e) if e.value().owner == owner && e.value().expires_at_ms == expires_at_ms => {
                    unrenewed = now.duration_since(e.value().since) >= lease;
                    Op::Nop
                }
                _ => Op::Put(Seen {
                    owner: owner.to_owned(),
                    expires_at_ms,
                    since: now,
                }),
            });
        unrenewed
    }
}

/// Claim mode: claims `key` in `store`, runs `body` outside any transaction, then completes the
/// record with the body's response (or deletes the claim if the body fails).
///
/// Returns the body's result, or the replayed response of an earlier call. Errors (converted
/// into `E`): [`Error::FingerprintMismatch`], [`Error::InProgress`] (or
/// [`Error::WaitTimeout`] with `on_busy = wait`), [`Error::LockLost`] when the claim expired and
/// was taken over before completion ([`Error::LeaseShorterThanAcquisition`] when claiming took
/// the whole lease), [`Error::Unrecorded`] when the body ran but its response could not be
/// recorded (completion runs in a task of its own that survives the caller's future and retries
/// backend errors for up to the lease), [`Error::InvalidOption`] (see [`Options::check`];
/// nothing ran), [`Error::Serialization`], [`Error::Backend`] (before the body ran; a claim
/// whose reply may have been lost is released by owner in the background).
///
/// The response's round trip is checked on what serde writes; the macro also compares the value
/// read back with `==` when `T: PartialEq` (see the crate's README, "replay").
///
/// `same` compares the response with the copy read back from its JSON (a difference makes it
/// unstorable): the macro passes `==` when `T: PartialEq`; a direct caller passes
/// [`not_compared`](crate::strategy::not_compared) or its own comparison.
///
/// Every error from the body releases the claim ([`ReleaseAll`]); [`run_with_policy`] takes
/// an [`ErrorPolicy`] that may store terminal errors instead.
pub async fn run<S, T, E, F>(
    store: &S,
    key: StorageKey,
    fingerprint: Option<Fingerprint>,
    options: Options,
    same: SameValue<T>,
    body: F,
) -> Result<T, E>
where
    S: ClaimStore,
    T: super::Replayable,
    E: From<Error>,
    F: AsyncFnOnce() -> Result<T, E>,
{
    run_with_policy(store, key, fingerprint, options, same, ReleaseAll, body).await
}

/// [`run`] with an [`ErrorPolicy`]: an error from the body that `policy` stores (a terminal
/// error, see [`Terminal`](super::Terminal)) completes the record with it instead of
/// releasing the claim — by compare-and-set on the owner, as a response is — so duplicates
/// get the same error back for `ttl` without running the body; the caller gets the body's
/// error as it was. Any other error releases the claim as in [`run`]. Errors as [`run`]'s.
pub fn run_with_policy<S, T, E, P, F>(
    store: &S,
    key: StorageKey,
    fingerprint: Option<Fingerprint>,
    options: Options,
    same: SameValue<T>,
    policy: P,
    body: F,
) -> impl Future<Output = Result<T, E>>
where
    S: ClaimStore,
    T: super::Replayable,
    E: From<Error>,
    P: ErrorPolicy<E>,
    F: AsyncFnOnce() -> Result<T, E>,
{
    let traced = telemetry::traced("dedup_table", store.backend_name(), &key);
    // The call itself, inside the call's span.
    traced.run(async move {
        options.check()?;
        let owner = new_owner()?;
        let fp = fingerprint.map(|f| f.hex_inline());
        let claim = Claim {
            key: &key,
            fingerprint: fp.as_deref(),
            owner: &owner,
            lease: options.lease,
        };
        let started = tokio::time::Instant::now();
        let mut backoff = Backoff::new();
        let mut attempts = 0;
        // When the store request that claimed was sent (not the first of its retries after a
        // deadlock or busy error): a claim that took its whole lease may have expired. The
        // first request goes out at `started` (nothing waits in between); later ones read the
        // clock again (a clock read is ~20 ns, a sixth of a memory-store replay).
        let mut sent = started;
        let mut first_request = true;
        // A store whose clients do not share a clock: in-progress claims are judged by watching.
        let watch = (!S::SHARED_CLOCK).then_some((&key, options.lease));
        loop {
            attempts += 1;
            let release = || store.release_claim_detached(key.clone(), owner.to_string());
            let found = retrying(|| {
                if !std::mem::replace(&mut first_request, false) {
                    sent = tokio::time::Instant::now();
                }
                store.claim_or_read(&claim)
            });
            let existing = match acquiring(found, release).await? {
                ClaimOrRecord::Claimed => break,
                ClaimOrRecord::Existing(existing) => existing,
                // Judged by the store in its own step (the memory store): the response alone.
                ClaimOrRecord::Replay(response) => {
                    return answer(telemetry::check(replayed(&response))?, &policy);
                }
            };
            match existing {
                None if attempts < MAX_ATTEMPTS => continue,
                None => return Err(telemetry::check(Err(Error::InProgress))?),
                Some(rec) => {
                    match telemetry::check(judge::<T>(rec, claim.owner, claim.fingerprint, watch))? {
                        Verdict::Ours => break,
                        Verdict::Replay(v) => return answer(v, &policy),
                        // The rare arms' futures on the heap: inline, each would widen this
                        // future, moved to the heap on every call, replays included.
                        Verdict::TakeOver(previous) => {
                            let taken = Box::pin(retrying(|| {
                                sent = tokio::time::Instant::now();
                                store.take_over_claim(&claim, &previous)
                            }));
                            if acquiring(taken, release).await? {
                                break;
                            }
                        }
                        Verdict::TakeOverUnrenewed(previous, expires_at_ms) => {
                            let taken = Box::pin(retrying(|| {
                                sent = tokio::time::Instant::now();
                                store.take_over_unrenewed(&claim, &previous, expires_at_ms)
                            }));
                            if acquiring(taken, release).await? {
                                break;
                            }
                        }
                        Verdict::Busy => {
                            telemetry::check(
                                Box::pin(busy(options.on_busy, started, &mut backoff)).await,
                            )?
                        }
                    }
                }
            }
        }
        telemetry::event(Decision::Claimed);

        // The claimed call's steps run on the heap: only a fresh call needs them, and kept inline
        // they made this future (and every layer awaiting it) kilobytes larger, copied between
        // the layers on every call, replays too.
        Box::pin(async move {
            let took = sent.elapsed();
            if let Err(e) = check_acquisition(took, options.lease) {
                if let Err(release) =
                    Box::pin(retrying(|| store.release_claim(&key, &owner))).await
                {
                    tracing::warn!(?key, error = %release, "releasing a claim that outlived its lease failed; it frees itself when its lease ends");
                }
                telemetry::event(Decision::Released);
                return Err(e.into());
            }

            let mut guard = DropGuard::new(options.on_cancel, || {
                store.release_claim_detached(key.clone(), owner.to_string())
            });
            let mut next_renewal = first_renewal(sent, options.lease);
            let result = while_renewing(options.lease, &mut next_renewal, body(), || {
                store.renew_claim(&key, &owner, options.lease)
            })
            .await;
            guard.disarm();
            settle(
                result,
                &key,
                &policy,
                options.max_response_bytes,
                same,
                |response| Completing {
                    store: store.clone(),
                    key: key.clone(),
                    owner: owner.to_string(),
                    response,
                    ttl: options.ttl,
                    lease: options.lease,
                },
                || retrying(|| store.release_claim(&key, &owner)),
                options.lease,
                next_renewal,
            )
            .await
        })
        .await
    })
}

/// The completion of a claim-mode call, on an owned store handle (see [`Completion`]).
struct Completing<S> {
    store: S,
    key: StorageKey,
    owner: String,
    response: Vec<u8>,
    ttl: Duration,
    lease: Duration,
}

impl<S: ClaimStore> Completion for Completing<S> {
    fn complete(&self) -> impl Future<Output = Result<bool, Error>> + Send {
        self.store
            .complete_claim(&self.key, &self.owner, &self.response, self.ttl)
    }

    fn renew(&self) -> impl Future<Output = Result<bool, Error>> + Send {
        self.store.renew_claim(&self.key, &self.owner, self.lease)
    }

    /// The record is completed under this caller's owner token: an earlier attempt landed.
    async fn landed(&self) -> Result<bool, Error> {
        Ok(self.store.read_record(&self.key).await?.is_some_and(|r| {
            *r.owner == *self.owner && matches!(r.state, RecordState::Completed(_))
        }))
    }
}

#[cfg(feature = "sqlx")]
pub use transactional::{run_in_tx, run_in_tx_with_policy};

#[cfg(feature = "sqlx")]
mod transactional {
    use super::super::storable;
    use super::*;
    use crate::store::sql::{ReadOrBegun, SqlBackend, TxStore, is_retryable};

    /// Transactional mode: opens a transaction on `store`, inserts the record, runs `body` on
    /// that transaction's connection, completes the record and commits — one commit for the
    /// record and the body's writes. A body error rolls everything back; the retry runs again.
    ///
    /// A duplicate of a completed call is answered before any transaction: unless `store` is
    /// inside the caller's transaction, each attempt first reads the record in one statement
    /// outside any transaction, on the pooled connection the transaction then uses
    /// ([`TxStore::read_or_begin`]). A record completed and unexpired by the database's clock
    /// is judged as it would be inside the transaction — another fingerprint is
    /// [`Error::FingerprintMismatch`], else its response is replayed — with no `BEGIN`
    /// (on SQLite, no write lock). Anything else — no record, an expired one, one in
    /// progress — goes on to the transaction, whose claim reads and judges again: the
    /// first read never decides a claim. So a replay costs one statement, and a fresh call
    /// one statement more than the transaction alone.
    ///
    /// Deadlocks and serialization failures while claiming (the retryable errors of
    /// [`is_retryable`]: MySQL 1213, MariaDB 1020, SQLSTATE 40001/40P01, SQLite busy) retry the
    /// attempt up to 16 times — except inside the caller's transaction (`store` a connection
    /// already in one), where the first is returned as it is: only the caller can run its whole
    /// transaction again. Errors are those of [`run`](super::run),
    /// except that [`Error::LockLost`] cannot happen (the claim lives in the transaction); the
    /// options are checked the same way ([`Options::check`], [`Error::InvalidOption`]).
    ///
    /// The response's round trip is checked as in [`run`](super::run).
    ///
    /// `same` compares the response with the copy read back from its JSON (a difference makes it
    /// unstorable): the macro passes `==` when `T: PartialEq`; a direct caller passes
    /// [`not_compared`](crate::strategy::not_compared) or its own comparison.
    pub async fn run_in_tx<S, T, E, F>(
        store: S,
        key: StorageKey,
        fingerprint: Option<Fingerprint>,
        options: Options,
        same: SameValue<T>,
        body: F,
    ) -> Result<T, E>
    where
        S: TxStore,
        T: crate::strategy::replaying::Replayable,
        E: From<Error>,
        F: AsyncFnOnce(&mut <S::Database as sqlx::Database>::Connection) -> Result<T, E>,
    {
        run_in_tx_with_policy(store, key, fingerprint, options, same, ReleaseAll, body).await
    }

    /// [`run_in_tx`] with an [`ErrorPolicy`]. When `policy` may store errors
    /// ([`ErrorPolicy::stores_errors`]) the body runs in a SAVEPOINT inside the claim's
    /// transaction: an error the policy stores (terminal) rolls back to the savepoint — none
    /// of the body's writes remain — then completes the record with the error and commits,
    /// so the record and the absence of the body's writes commit together and duplicates get
    /// the error back for `ttl`. Any other error rolls everything back as in [`run_in_tx`].
    /// When the savepoint cannot be rolled back (MySQL ends the whole transaction on a
    /// deadlock), the error is not stored: the transaction rolls back and a retry runs again.
    /// Errors as [`run_in_tx`]'s.
    pub fn run_in_tx_with_policy<S, T, E, P, F>(
        store: S,
        key: StorageKey,
        fingerprint: Option<Fingerprint>,
        options: Options,
        same: SameValue<T>,
        policy: P,
        body: F,
    ) -> impl Future<Output = Result<T, E>>
    where
        S: TxStore,
        T: crate::strategy::replaying::Replayable,
        E: From<Error>,
        P: ErrorPolicy<E>,
        F: AsyncFnOnce(&mut <S::Database as sqlx::Database>::Connection) -> Result<T, E>,
    {
        let name = <S::Database as sqlx::Database>::NAME;
        let traced = telemetry::traced("dedup_table", name, &key);
        // The call itself, inside the call's span.
        traced.run(async move {
            let mut store = store;
            options.check()?;
            let owner = new_owner()?;
            let fp = fingerprint.map(|f| f.hex_inline());
            let claim = Claim {
                key: &key,
                fingerprint: fp.as_deref(),
                owner: &owner,
                lease: options.lease,
            };
            let started = tokio::time::Instant::now();
            let mut backoff = Backoff::new();
            let mut attempts = 0;
            loop {
                attempts += 1;
                let nested = store.in_callers_transaction();
                let may_retry = |e: &Error| !nested && is_retryable(e) && attempts < MAX_ATTEMPTS;
                let mut tx = match store
                    .read_or_begin(&key, |rec| replay_before_begin::<T>(rec, &claim))
                    .await
                {
                    Ok(ReadOrBegun::Begun(tx)) => tx,
                    Ok(ReadOrBegun::Settled(replay)) => {
                        return answer(telemetry::check(replay)?, &policy);
                    }
                    Err(e) if may_retry(&e) => {
                        telemetry::event(Decision::ContentionRetry);
                        backoff.wait().await;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                let claimed = match telemetry::check(
                    claim_in_tx::<S::Database, T>(&mut *tx, &claim, !nested).await,
                ) {
                        Ok(c) => c,
                        Err(e) if may_retry(&e) => {
                            drop(tx);
                            telemetry::event(Decision::ContentionRetry);
                            backoff.wait().await;
                            continue;
                        }
                        Err(e) => {
                            drop(tx);
                            return Err(settled(&mut store, nested, e).await.into());
                        }
                    };
                match claimed {
                    InTx::Claimed => {
                        telemetry::event(Decision::Claimed);
                        let result = if policy.stores_errors() {
                            // The body in a savepoint, so that a terminal error can be stored
                            // without its writes.
                            match in_savepoint(&mut tx, body, &policy, options.max_response_bytes).await
                            {
                                Savepointed::Done(result) => result,
                                Savepointed::Terminal(e, stored) => {
                                    match S::Database::complete_claim(
                                        &mut *tx,
                                        &key,
                                        &owner,
                                        &stored,
                                        options.ttl,
                                    )
                                    .await
                                    {
                                        Ok(true) => match tx.commit().await {
                                            Ok(()) => {
                                                telemetry::event(Decision::StoredError);
                                                crate::error::note(Disposition::Executed);
                                            }
                                            Err(commit) => {
                                                tracing::warn!(?key, error = %commit, "storing the terminal error failed; a retry runs again");
                                                let _ =
                                                    settled(&mut store, nested, commit.into()).await;
                                            }
                                        },
                                        Ok(false) => {
                                            let _ = tx.rollback().await;
                                        }
                                        Err(complete) => {
                                            tracing::warn!(?key, error = %complete, "storing the terminal error failed; a retry runs again");
                                            drop(tx);
                                            let _ = settled(&mut store, nested, complete).await;
                                        }
                                    }
                                    return Err(e);
                                }
                            }
                        } else {
                            body(&mut *tx).await
                        };
                        let value = match result {
                            Ok(v) => v,
                            Err(e) => {
                                // A savepoint that cannot be rolled back is gone with the caller's
                                // whole transaction (a deadlock in the body on MySQL).
                                if tx.rollback().await.is_err() && nested {
                                    store.settle().await;
                                }
                                telemetry::event(Decision::Released);
                                return Err(e);
                            }
                        };
                        // Nothing is committed yet: a response that cannot be stored undoes the
                        // whole call, and the caller learns why.
                        let bytes = match storable(&value, options.max_response_bytes, same) {
                            Ok(b) => b,
                            Err(reason) => {
                                let _ = tx.rollback().await;
                                return Err(Error::Serialization(format!(
                                    "the response cannot be stored for replay, so the call was rolled back: {reason}"
                                ))
                                .into());
                            }
                        };
                        match S::Database::complete_claim(&mut *tx, &key, &owner, &bytes, options.ttl)
                            .await
                        {
                            Ok(true) => {}
                            // Not expected: the claim lives in this transaction.
                            Ok(false) => return Err(telemetry::check(Err(Error::LockLost))?),
                            Err(e) => {
                                drop(tx);
                                return Err(settled(&mut store, nested, e).await.into());
                            }
                        }
                        if let Err(e) = tx.commit().await {
                            return Err(settled(&mut store, nested, e.into()).await.into());
                        }
                        record(Disposition::Executed);
                        return Ok(value);
                    }
                    InTx::Replay(v) => {
                        let _ = tx.rollback().await;
                        return answer(v, &policy);
                    }
                    InTx::Retry => {
                        let _ = tx.rollback().await;
                        if nested || attempts >= MAX_ATTEMPTS {
                            return Err(telemetry::check(Err(Error::InProgress))?);
                        }
                        backoff.wait().await;
                    }
                    InTx::Busy => {
                        let _ = tx.rollback().await;
                        telemetry::check(busy(options.on_busy, started, &mut backoff).await)?;
                    }
                }
            }
        })
    }

    /// The answer a record read before any transaction ([`TxStore::read_or_begin`]) settles
    /// the call with: only a completed record unexpired by the store's clock, judged exactly as
    /// inside the transaction ([`judge`]: another fingerprint → [`Error::FingerprintMismatch`],
    /// else its response, replayed). Anything else (expired, in progress) is `None`: the call
    /// goes on in a transaction, which reads and judges again.
    fn replay_before_begin<T: DeserializeOwned>(
        rec: Record,
        claim: &Claim<'_>,
    ) -> Option<Result<Replayed<T>, Error>> {
        if rec.expired || !matches!(rec.state, RecordState::Completed(_)) {
            return None;
        }
        match judge::<T>(rec, claim.owner, claim.fingerprint, None) {
            Ok(Verdict::Replay(v)) => Some(Ok(v)),
            Err(e) => Some(Err(e)),
            Ok(_) => None,
        }
    }

    /// `e`, after the transaction that failed with it was dropped. Inside the caller's
    /// transaction a retryable failure is returned as it is, the store settled first
    /// ([`TxStore::settle`]: on MySQL the caller's whole transaction is already gone).
    async fn settled<S: TxStore>(store: &mut S, nested: bool, e: Error) -> Error {
        if nested && is_retryable(&e) {
            store.settle().await;
        }
        e
    }

    /// How the body ran in its savepoint.
    enum Savepointed<T, E> {
        /// Its result, the savepoint released (`Ok`) or rolled back (`Err`, not stored).
        Done(Result<T, E>),
        /// A terminal error, the savepoint rolled back, and the error as stored.
        Terminal(E, Vec<u8>),
    }

    /// Runs `body` in a savepoint of `tx`: released when it succeeds; rolled back when it
    /// fails — a terminal error (one `policy` stores) then comes back with its stored form,
    /// unless the rollback failed (the transaction is gone: nothing can be stored).
    async fn in_savepoint<DB, T, E, P, F>(
        tx: &mut sqlx::Transaction<'_, DB>,
        body: F,
        policy: &P,
        limit: usize,
    ) -> Savepointed<T, E>
    where
        DB: SqlBackend,
        E: From<Error>,
        P: ErrorPolicy<E>,
        F: AsyncFnOnce(&mut DB::Connection) -> Result<T, E>,
    {
        let mut savepoint = match sqlx::Connection::begin(&mut **tx).await {
            Ok(sp) => sp,
            Err(e) => return Savepointed::Done(Err(Error::from(e).into())),
        };
        match body(&mut *savepoint).await {
            Ok(value) => Savepointed::Done(match savepoint.commit().await {
                Ok(()) => Ok(value),
                Err(e) => Err(Error::from(e).into()),
            }),
            Err(e) => {
                let stored = policy.stored(&e, limit);
                match (savepoint.rollback().await, stored) {
                    (Ok(()), Some(stored)) => Savepointed::Terminal(e, stored),
                    _ => Savepointed::Done(Err(e)),
                }
            }
        }
    }

    enum InTx<T> {
        Claimed,
        Replay(Replayed<T>),
        Retry,
        Busy,
    }

    /// The claim inside the transaction. `read_first`: the record was read before the
    /// transaction began ([`TxStore::read_or_begin`]) and did not settle the call, so it is
    /// most likely missing and the claim most likely lands: the plain `INSERT … ON CONFLICT DO
    /// NOTHING` ([`SqlBackend::try_claim`]), with the record read only after a conflict (its
    /// new statement sees the record the conflicting transaction committed). Inside the
    /// caller's transaction nothing was read first, and a duplicate is as likely as a new key:
    /// [`SqlBackend::claim_or_read`] (on PostgreSQL one statement either way). On MySQL/MariaDB
    /// and SQLite both are the same two statements.
    async fn claim_in_tx<DB: SqlBackend, T: DeserializeOwned>(
        conn: &mut DB::Connection,
        claim: &Claim<'_>,
        read_first: bool,
    ) -> Result<InTx<T>, Error> {
        let found = if read_first {
            if DB::try_claim(&mut *conn, claim).await? {
                return Ok(InTx::Claimed);
            }
            None
        } else {
            match DB::claim_or_read(&mut *conn, claim).await? {
                ClaimOrRecord::Claimed => return Ok(InTx::Claimed),
                ClaimOrRecord::Existing(rec) => rec,
                ClaimOrRecord::Replay(response) => return Ok(InTx::Replay(replayed(&response)?)),
            }
        };
        let rec = match found {
            Some(rec) => rec,
            // PostgreSQL's one-statement read sees the snapshot its statement started with: a
            // record committed by the transaction the claim waited for needs a fresh look.
            None => match DB::read_record(conn, claim.key).await? {
                Some(rec) => rec,
                None => return Ok(InTx::Retry),
            },
        };
        // Judged by the clock even without a shared one: this transaction holds the write lock
        // (SQLite's `BEGIN IMMEDIATE`), and a transactional claim is never seen in progress; an
        // in-progress record here is a claim-mode call's on the same key.
        Ok(
            match judge::<T>(rec, claim.owner, claim.fingerprint, None)? {
                Verdict::Ours => InTx::Claimed,
                Verdict::Replay(v) => InTx::Replay(v),
                Verdict::TakeOver(previous) => {
                    if DB::take_over_claim(conn, claim, &previous).await? {
                        InTx::Claimed
                    } else {
                        InTx::Retry
                    }
                }
                Verdict::TakeOverUnrenewed(previous, expires_at_ms) => {
                    if DB::take_over_unrenewed(conn, claim, &previous, expires_at_ms).await? {
                        InTx::Claimed
                    } else {
                        InTx::Retry
                    }
                }
                Verdict::Busy => InTx::Busy,
            },
        )
    }
}
