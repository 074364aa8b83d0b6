//! `strategy = "distributed_lock"`: a leased lock with a fencing token, renewed while the body
//! runs, and the response stored for replay.
//!
//! Protocol (one entry point, [`run`]; Redis details in [`RedisStore`](crate::store::redis)):
//!
//! 1. **Acquire** — one atomic step: a stored response is replayed; else `SET lock owner NX PX
//!    lease` and `INCR fence` hand this caller the lock and a [`FencingToken`] one higher than
//!    any earlier acquisition of the key; else the key is held: [`Error::InProgress`] (or wait,
//!    `on_busy = "wait(5s)"`). The fingerprint is checked first ([`Error::FingerprintMismatch`]).
//! 2. **Validity** — if acquiring took so long that the lease (minus 1 % + 2 ms for clock drift,
//!    as Redlock) is already over, the body never runs: the lock is released and the call fails
//!    with [`Error::LeaseShorterThanAcquisition`].
//! 3. **Body**, with the lease renewed every lease/3 by compare-and-`PEXPIRE` on the owner.
//!    A renewal that finds another owner stops renewing: the lock is lost.
//! 4. **Complete** — compare-and-set in one script: if the lock is still this owner's, store
//!    the response for `ttl` and delete the lock; otherwise nothing is written and the caller
//!    gets [`Error::LockLost`] (its body may have run concurrently with the next holder's: guard
//!    external writes with the fencing token). A body error releases the lock by
//!    compare-and-delete, so a retry runs again; a future dropped mid-body leaves the lock to
//!    its lease (`on_cancel = "keep"`, the default) or releases it at once in the background
//!    (`on_cancel = "release"`, see [`OnCancel`]).
//!
//! Round trips on Redis: a fresh call costs 2 commands (acquire, complete) plus one per
//! renewal; a replay costs 1.
//!
//! The replay codec, renewal, drop guard, completion and busy-wait are the replaying family's,
//! in [`replaying`](super).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::durations::{
    DEFAULT_LEASE, DEFAULT_TTL, check_acquisition, check_lease_and_ttl, check_on_busy,
};
use super::{
    Completion, DEFAULT_MAX_RESPONSE_BYTES, DropGuard, ErrorPolicy, ReleaseAll, SameValue,
    acquiring, answer, busy, check_fingerprint, first_renewal, replayed, settle, while_renewing,
};
use crate::store::{Acquired, LockStore, new_owner};
use crate::strategy::{Backoff, OnBusy, OnCancel};
use crate::telemetry::{self, Decision};
use crate::{Error, Fingerprint, StorageKey};

/// A fencing token: a number that grows with every acquisition of the same key's lock.
///
/// The body receives it as `#[fence] fence: FencingToken` and passes it along with its writes
/// to other systems, which reject a write carrying a token lower than one they have already
/// seen (Kleppmann, "How to do distributed locking", 2016). A holder whose lease expired and
/// whose lock was taken over then cannot overwrite the new holder's writes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct FencingToken(pub u64);

impl FencingToken {
    /// The token's value.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The token as an `i64`, for a signed 64-bit column (PostgreSQL and MySQL/MariaDB
    /// `BIGINT`, SQLite `INTEGER`). With the `postgres`, `mysql` or `sqlite` feature the token
    /// also binds directly (`.bind(fence)`: sqlx `Type`, `Encode` and `Decode` as that column
    /// type), e.g. `UPDATE account SET balance = $1, fence = $2 WHERE id = $3 AND fence < $2`.
    ///
    /// Every token a store hands out fits: Redis keeps the counter as a signed 64-bit integer
    /// (`INCR` fails rather than pass `i64::MAX`) started from the server's clock in
    /// microseconds (about 1.8 × 10¹⁵, over 5000 times below `i64::MAX`), and the memory store
    /// counts from 1.
    ///
    /// # Panics
    ///
    /// When the token is above `i64::MAX`, which only a hand-built `FencingToken(u64)` can be;
    /// nothing is wrapped or saturated. Use `i64::try_from(token)` to handle such a token
    /// (binding one fails the query with sqlx's encode error).
    pub fn as_i64(self) -> i64 {
        match i64::try_from(self.0) {
            Ok(v) => v,
            Err(_) => panic!(
                "the fencing token {} is above i64::MAX: no store hands out such a token",
                self.0
            ),
        }
    }
}

/// The token as an `i64`; fails for a token above `i64::MAX` (only a hand-built one can be).
impl TryFrom<FencingToken> for i64 {
    type Error = std::num::TryFromIntError;

    fn try_from(token: FencingToken) -> Result<i64, Self::Error> {
        i64::try_from(token.0)
    }
}

impl std::fmt::Display for FencingToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Options of one `distributed_lock` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// How long the lock lives without renewal, default 30 s, at least
    /// [`MIN_LEASE`](super::durations::MIN_LEASE) (300 ms). It is renewed every third of it
    /// while the body runs; a holder that stops renewing (crashed, partitioned) loses it after
    /// at most this long.
    pub lease: Duration,
    /// How long the response is kept and replayed, default 24 h, at least `lease`.
    pub ttl: Duration,
    /// What a concurrent duplicate gets, default [`OnBusy::Reject`]; a wait is at least
    /// [`MIN_WAIT`](super::durations::MIN_WAIT) (10 ms).
    pub on_busy: OnBusy,
    /// What a future dropped mid-body does with its lock, default [`OnCancel::Keep`]: the lock
    /// stays until its lease ends, so an immediate retry gets [`Error::InProgress`] rather than
    /// a second run.
    pub on_cancel: OnCancel,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            lease: DEFAULT_LEASE,
            ttl: DEFAULT_TTL,
            on_busy: OnBusy::Reject,
            on_cancel: OnCancel::Keep,
        }
    }
}

impl Options {
    /// Checks the durations against what the protocol needs ([`durations`](super::durations)):
    /// `lease` at least [`MIN_LEASE`](super::durations::MIN_LEASE), `ttl` at least `lease`,
    /// `on_busy = Wait(d)` with `d` at least [`MIN_WAIT`](super::durations::MIN_WAIT).
    /// [`run`] calls it first; call it yourself to reject options read from configuration at
    /// startup.
    ///
    /// Errors: [`Error::InvalidOption`] naming the option, its value and the minimum.
    pub fn check(&self) -> Result<(), Error> {
        check_lease_and_ttl(self.lease, self.ttl)?;
        check_on_busy(self.on_busy)
    }
}

type HookFn =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync + 'static>;

/// Test hooks (fault injection), installed for one task with [`with_hooks`]. Not for
/// production use.
#[doc(hidden)]
#[derive(Clone, Default)]
pub struct Hooks {
    /// Never renew the lease (simulates a holder that is paused or partitioned).
    pub block_renewal: bool,
    /// Awaited right after the acquire step returns, before the validity check (simulates a
    /// slow acquisition).
    pub after_acquire: Option<HookFn>,
}

impl Hooks {
    /// Builds the `after_acquire` hook from an async closure.
    pub fn after_acquire<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.after_acquire = Some(Arc::new(move || Box::pin(f())));
        self
    }
}

tokio::task_local! {
    static HOOKS: Hooks;
}

/// Runs `fut` with `hooks` installed for the `distributed_lock` calls it makes. Test-only.
#[doc(hidden)]
pub async fn with_hooks<F: Future>(hooks: Hooks, fut: F) -> F::Output {
    HOOKS.scope(hooks, fut).await
}

/// Acquires the lock on `key` in `store`, runs `body` with the acquisition's fencing token
/// while renewing the lease, then stores the response for replay and releases the lock in one
/// compare-and-set step.
///
/// Returns the body's result or the replayed response of an earlier call. Errors (converted
/// into `E`): [`Error::FingerprintMismatch`], [`Error::InProgress`] (or
/// [`Error::WaitTimeout`]), [`Error::LeaseShorterThanAcquisition`] (acquiring took the whole
/// lease, less the drift allowance: the body was not run), [`Error::LockLost`] (the lease ran
/// out before completion and another caller took the lock), [`Error::InvalidOption`] (see
/// [`Options::check`]; nothing ran), [`Error::Serialization`], [`Error::Unrecorded`] (the body
/// ran but its response could not be recorded: completion runs in a task of its own that
/// survives the caller's future and retries backend errors for up to the lease, renewing it),
/// [`Error::Backend`] (Redis unreachable or restarted before the body ran; the body never runs
/// twice within one call, and a lock whose acquisition reply may have been lost is released by
/// owner in the background).
///
/// The response's round trip is checked on what serde writes; the macro also compares the value
/// read back with `==` when `T: PartialEq` (see the crate's README, "replay").
///
/// `same` compares the response with the copy read back from its JSON (a difference makes it
/// unstorable): the macro passes `==` when `T: PartialEq`; a direct caller passes
/// [`not_compared`](crate::strategy::not_compared) or its own comparison.
pub async fn run<S, T, E, F>(
    store: &S,
    key: StorageKey,
    fingerprint: Option<Fingerprint>,
    options: Options,
    same: SameValue<T>,
    body: F,
) -> Result<T, E>
where
    S: LockStore,
    T: super::Replayable,
    E: From<Error>,
    F: AsyncFnOnce(FencingToken) -> Result<T, E>,
{
    run_with_policy(store, key, fingerprint, options, same, ReleaseAll, body).await
}

/// [`run`] with an [`ErrorPolicy`]: an error from the body that `policy` stores (a terminal
/// error, see [`Terminal`](super::Terminal)) is recorded under the key and the lock released
/// in the same compare-and-set step a response takes, so duplicates get the same error back
/// for `ttl` without running the body; the caller gets the body's error as it was. Any other
/// error releases the lock as in [`run`]. Errors as [`run`]'s.
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
    S: LockStore,
    T: super::Replayable,
    E: From<Error>,
    P: ErrorPolicy<E>,
    F: AsyncFnOnce(FencingToken) -> Result<T, E>,
{
    let traced = telemetry::traced("distributed_lock", store.backend_name(), &key);
    // The call itself, inside the call's span.
    let call = async move {
        options.check()?;
        let owner = new_owner()?;
        let fp = fingerprint.map(|f| f.hex_inline());
        let hooks = HOOKS.try_with(Hooks::clone).unwrap_or_default();
        let started = Instant::now();
        let mut backoff = Backoff::new();
        // When the acquisition request went out: the first at `started` (nothing waits in
        // between), a retry after a busy answer when its wait ended.
        let mut sent = started;
        let fence = loop {
            let acquired = store.acquire_lock(&key, &owner, fp.as_deref(), options.lease);
            match acquiring(acquired, || {
                store.release_lock_detached(key.clone(), owner.to_string())
            })
            .await?
            {
                Acquired::Acquired { fence } => break fence,
                Acquired::Replay {
                    fingerprint,
                    response,
                } => {
                    telemetry::check(check_fingerprint(fingerprint.as_deref(), fp.as_deref()))?;
                    return answer(replayed(&response)?, &policy);
                }
                Acquired::Held { fingerprint } => {
                    telemetry::check(check_fingerprint(fingerprint.as_deref(), fp.as_deref()))?;
                    telemetry::check(Box::pin(busy(options.on_busy, started, &mut backoff)).await)?;
                    sent = Instant::now();
                }
            }
        };
        telemetry::event(Decision::Claimed);

        // The acquired call's steps run on the heap: only a fresh call needs them, and kept
        // inline they made this future (and every layer awaiting it) kilobytes larger, copied
        // between the layers on every call, replays too.
        Box::pin(async move {
            let mut guard = DropGuard::new(options.on_cancel, || {
                store.release_lock_detached(key.clone(), owner.to_string())
            });
            if let Some(hook) = &hooks.after_acquire {
                hook().await;
            }
            if let Err(e) = check_acquisition(sent.elapsed(), options.lease) {
                guard.disarm();
                let _ = Box::pin(store.release_lock(&key, &owner)).await;
                telemetry::event(Decision::Released);
                return Err(e.into());
            }

            let mut next_renewal = first_renewal(sent, options.lease);
            let result = while_renewing(
                options.lease,
                &mut next_renewal,
                body(FencingToken(fence)),
                || async {
                    if hooks.block_renewal {
                        // Test hook: the renewal never happens, as when Redis is partitioned away.
                        std::future::pending::<()>().await;
                    }
                    store.renew_lock(&key, &owner, options.lease).await
                },
            )
            .await;
            guard.disarm();

            settle(
                result,
                &key,
                &policy,
                DEFAULT_MAX_RESPONSE_BYTES,
                same,
                |response| Completing {
                    store: store.clone(),
                    key: key.clone(),
                    owner: owner.to_string(),
                    response,
                    ttl: options.ttl,
                    lease: options.lease,
                },
                || store.release_lock(&key, &owner),
                options.lease,
                next_renewal,
            )
            .await
        })
        .await
    };
    traced.run(call)
}

/// The completion of a `distributed_lock` call, on an owned store handle (see [`Completion`]).
struct Completing<S> {
    store: S,
    key: StorageKey,
    owner: String,
    response: Vec<u8>,
    ttl: Duration,
    lease: Duration,
}

impl<S: LockStore> Completion for Completing<S> {
    fn complete(&self) -> impl Future<Output = Result<bool, Error>> + Send {
        self.store
            .complete_lock(&self.key, &self.owner, &self.response, self.ttl)
    }

    fn renew(&self) -> impl Future<Output = Result<bool, Error>> + Send {
        self.store.renew_lock(&self.key, &self.owner, self.lease)
    }
}

#[cfg(test)]
mod tests {
    use super::FencingToken;

    #[test]
    fn fencing_token_as_i64() {
        // A Redis token: the server's clock in microseconds, plus acquisitions.
        let redis = FencingToken(1_780_000_000_000_001);
        assert_eq!(redis.as_i64(), 1_780_000_000_000_001);
        let max = FencingToken(i64::MAX as u64);
        assert_eq!(max.as_i64(), i64::MAX);
        assert_eq!(i64::try_from(max), Ok(i64::MAX));
        assert!(i64::try_from(FencingToken(i64::MAX as u64 + 1)).is_err());
        assert!(i64::try_from(FencingToken(u64::MAX)).is_err());
    }

    #[test]
    #[should_panic(expected = "the fencing token 9223372036854775808 is above i64::MAX")]
    fn a_hand_built_token_above_i64_max_panics_rather_than_wraps() {
        let _ = FencingToken(i64::MAX as u64 + 1).as_i64();
    }
}
