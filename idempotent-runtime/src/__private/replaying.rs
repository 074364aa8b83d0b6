//! The replaying family's adapter: [`replaying`] runs `dedup_table` (claim or in-transaction
//! mode), `distributed_lock` or `token`, picked by the type of [`Replay::strategy`], without
//! a bound on the user's `E`.

use std::marker::PhantomData;
use std::ops::Deref;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::{Error, Failure, Fingerprint, StorageKey};
use crate::key::KeyPart;
use crate::store::{ClaimStore, LockStore, TokenStore};
use crate::strategy::Replayable;
use crate::strategy::replaying::{ErrorPolicy, SameValue, not_compared};
pub use crate::strategy::replaying::{ReleaseAll, Terminal};

pub use crate::strategy::dedup_table::Options as DedupTableOptions;
use crate::strategy::distributed_lock::FencingToken;
pub use crate::strategy::distributed_lock::Options as LockOptions;
pub use crate::strategy::token::Options as TokenOptions;

/// One call of a replaying strategy, as the generated code fills it.
pub struct Replay<M, E, T, P> {
    /// The strategy with its store and options ([`DedupTable`], [`DistributedLock`], …).
    pub strategy: M,
    /// The storage key.
    pub key: StorageKey,
    /// The request's fingerprint (`None`: `fingerprint = false`).
    pub fingerprint: Option<Fingerprint>,
    /// `ErrorType::into_error`, spanned at the user's `E`.
    pub into_error: fn(Error) -> E,
    /// Compares the response with the copy read back from its JSON: `Probe::<T>::new().same()`,
    /// `Some(a == b)` when `T: PartialEq`, else `None` (see [`Probe`]).
    pub same: fn(&T, &T) -> Option<bool>,
    /// What an error from the body does: [`ReleaseAll`], or `terminal = "path"`'s
    /// [`Terminal`] from [`TerminalErrorType::terminal`] (checked at the option).
    pub policy: P,
}

/// The function's error type `E` with `terminal = "path::to::fn"`: a terminal error is stored
/// and replayed, so `E` must be `Serialize + DeserializeOwned`. Called as
/// `TerminalErrorType::terminal(path)`, spanned at the option, `Self` inferred from the
/// function's parameter. What it returns, [`Terminal`], is an `ErrorPolicy` for any `E`, so
/// nothing after the check depends on the bound.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not implement `serde::Serialize` and `serde::de::DeserializeOwned`, which the error type needs with `terminal = \"...\"`",
    label = "`terminal` stores the errors this function calls terminal and replays them to duplicates, so the function's error type `{Self}` (the `E` of its `Result<T, E>`) must be serializable",
    note = "derive `serde::Serialize` and `serde::Deserialize` for `{Self}`; a variant wrapping another crate's error that is never terminal (`idempotent_runtime::Error`, `sqlx::Error`) can be left out with `#[serde(skip)]`, or remove `terminal` so that every error releases the claim"
)]
pub trait TerminalErrorType: Sized {
    /// The policy that stores the errors `is_terminal` calls terminal.
    fn terminal(is_terminal: fn(&Self) -> bool) -> Terminal<Self>;
}

#[diagnostic::do_not_recommend]
impl<E: serde::Serialize + serde::de::DeserializeOwned> TerminalErrorType for E {
    #[inline(always)]
    fn terminal(is_terminal: fn(&E) -> bool) -> Terminal<E> {
        Terminal::new(is_terminal)
    }
}

/// The user's policy seen through [`Failure`]: the body's errors are judged by it, runtime
/// errors are never stored.
struct BodyErrors<P>(P);

impl<E, P: ErrorPolicy<E>> ErrorPolicy<Failure<E>> for BodyErrors<P> {
    fn stores_errors(&self) -> bool {
        self.0.stores_errors()
    }

    fn stored(&self, error: &Failure<E>, limit: usize) -> Option<Vec<u8>> {
        match error {
            Failure::Body(e, _) => self.0.stored(e, limit),
            Failure::Runtime(_) => None,
        }
    }

    fn replayed(&self, json: &[u8]) -> Result<Failure<E>, Error> {
        self.0.replayed(json).map(|e| Failure::Body(e, None))
    }
}

/// Picks how a response type `T` is compared with the copy read back from its JSON, by
/// autoderef specialization: `Probe::<T>::new().same()` is this type's `same` when
/// `T: PartialEq` holds where it is written (`Some(a == b)`), and [`NotComparable::same`]
/// (always `None`) otherwise — through `Deref`, so a `T` without `PartialEq` is no error and
/// nothing needs importing.
///
/// In a generic function whose `T` is not bounded by `PartialEq` the bound cannot be seen, so
/// it falls back to `None` (the round trip is then checked only on what serde writes).
pub struct Probe<T>(PhantomData<fn() -> T>);

/// What [`Probe`] dereferences to: the fallback for a `T` without `PartialEq`.
pub struct NotComparable<T>(PhantomData<fn() -> T>);

impl<T> Probe<T> {
    /// The probe for `T`.
    #[inline(always)]
    pub const fn new() -> Self {
        Probe(PhantomData)
    }
}

impl<T> Default for Probe<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: PartialEq> Probe<T> {
    /// `T: PartialEq`: compares with `==`.
    #[inline(always)]
    pub fn same(&self) -> fn(&T, &T) -> Option<bool> {
        |a, b| Some(a == b)
    }
}

impl<T> Deref for Probe<T> {
    type Target = NotComparable<T>;

    #[inline(always)]
    fn deref(&self) -> &NotComparable<T> {
        &NotComparable(PhantomData)
    }
}

impl<T> NotComparable<T> {
    /// `T` without (visible) `PartialEq`: no comparison.
    #[inline(always)]
    pub fn same(&self) -> fn(&T, &T) -> Option<bool> {
        not_compared
    }
}

/// A replaying strategy with its store and options: what the adapter dispatches on.
pub trait ReplayStrategy {
    /// What the body is lent: the transaction's connection, the fencing token, or `()`.
    type Injected;

    /// Runs the strategy's entry point with `body`.
    #[allow(clippy::too_many_arguments)]
    fn run<T, E, P, F>(
        self,
        key: StorageKey,
        fingerprint: Option<Fingerprint>,
        same: SameValue<T>,
        policy: P,
        body: F,
    ) -> impl Future<Output = Result<T, E>>
    where
        T: Replayable,
        E: From<Error>,
        P: ErrorPolicy<E>,
        F: AsyncFnOnce(&mut Self::Injected) -> Result<T, E>;
}

/// The `Ok` type `T` of a replaying strategy's function: it is stored and replayed, so it must
/// be [`Replayable`]. The adapter is this trait's function, called as
/// `<T as ResponseType>::replaying(..)` spanned at `T`, so that a `T` that is not replayable is
/// one error there, without a note pointing into this crate.
#[diagnostic::on_unimplemented(
    message = "`{Self}` does not implement `serde::Serialize` and `serde::de::DeserializeOwned`, which the response type of a replaying strategy needs",
    label = "the function's response type `{Self}` (the `T` of its `Result<T, E>`) is stored and replayed to duplicates, so it must be serializable",
    note = "derive `serde::Serialize` and `serde::Deserialize` for `{Self}` if it is your own type, or return a type that has them"
)]
pub trait ResponseType: Sized {
    /// The replaying family's adapter: runs `call.strategy` with the body's error passed
    /// through and a runtime error converted by `call.into_error`.
    fn replaying<M, E, P, F>(
        call: Replay<M, E, Self, P>,
        body: F,
    ) -> impl Future<Output = Result<Self, E>>
    where
        M: ReplayStrategy,
        P: ErrorPolicy<E>,
        F: AsyncFnOnce(&mut M::Injected) -> Result<Self, E>;
}

#[diagnostic::do_not_recommend]
impl<T: Replayable> ResponseType for T {
    #[inline(always)]
    fn replaying<M, E, P, F>(
        call: Replay<M, E, Self, P>,
        body: F,
    ) -> impl Future<Output = Result<T, E>>
    where
        M: ReplayStrategy,
        P: ErrorPolicy<E>,
        F: AsyncFnOnce(&mut M::Injected) -> Result<T, E>,
    {
        replaying(call, body)
    }
}

/// See [`ResponseType::replaying`]. A plain function returning the strategy's future wrapped
/// in [`Split`], not an `async fn`: each `async` layer copies the whole future below it into
/// its own state when first polled, kilobytes on every call, replays included.
#[inline]
fn replaying<M, T, E, P, F>(call: Replay<M, E, T, P>, body: F) -> impl Future<Output = Result<T, E>>
where
    M: ReplayStrategy,
    T: Replayable,
    P: ErrorPolicy<E>,
    F: AsyncFnOnce(&mut M::Injected) -> Result<T, E>,
{
    let Replay {
        strategy,
        key,
        fingerprint,
        into_error,
        same,
        policy,
    } = call;
    let body = async move |injected: &mut M::Injected| {
        body(injected).await.map_err(|e| Failure::Body(e, None))
    };
    let policy = BodyErrors(policy);
    Split {
        // The strategy's state is on the heap (`telemetry::Traced::run` puts it there): the
        // layers above move a pointer, not a kilobyte.
        fut: strategy.run(key, fingerprint, same, policy, body),
        into_error,
    }
}

pin_project_lite::pin_project! {
    /// The strategy's future, its [`Failure`] split into the user's error on completion.
    struct Split<Fut, E> {
        #[pin]
        fut: Fut,
        into_error: fn(Error) -> E,
    }
}

impl<T, E, Fut: Future<Output = Result<T, Failure<E>>>> Future for Split<Fut, E> {
    type Output = Result<T, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T, E>> {
        let this = self.project();
        this.fut
            .poll(cx)
            .map(|result| Failure::split(result, *this.into_error))
    }
}

/// `dedup_table` without `#[tx]`: [`crate::strategy::dedup_table::run`].
pub struct DedupTable<'a, S: ?Sized> {
    /// The claim store.
    pub store: &'a S,
    /// `lease`, `ttl`, `on_busy`, `on_cancel`.
    pub options: DedupTableOptions,
}

impl<S: ClaimStore> ReplayStrategy for DedupTable<'_, S> {
    type Injected = ();

    fn run<T, E, P, F>(
        self,
        key: StorageKey,
        fingerprint: Option<Fingerprint>,
        same: SameValue<T>,
        policy: P,
        body: F,
    ) -> impl Future<Output = Result<T, E>>
    where
        T: Replayable,
        E: From<Error>,
        P: ErrorPolicy<E>,
        F: AsyncFnOnce(&mut Self::Injected) -> Result<T, E>,
    {
        let body = async move || body(&mut ()).await;
        crate::strategy::dedup_table::run_with_policy(
            self.store,
            key,
            fingerprint,
            self.options,
            same,
            policy,
            body,
        )
    }
}

/// `dedup_table` with `#[tx]`: [`crate::strategy::dedup_table::run_in_tx`].
#[cfg(feature = "sqlx")]
pub struct DedupTableInTx<S> {
    /// The transactional store.
    pub store: S,
    /// `ttl`, `on_busy` (`on_cancel` does not apply: a dropped transaction rolls back).
    pub options: DedupTableOptions,
}

#[cfg(feature = "sqlx")]
impl<S: crate::TxStore> ReplayStrategy for DedupTableInTx<S> {
    type Injected = <S::Database as sqlx::Database>::Connection;

    fn run<T, E, P, F>(
        self,
        key: StorageKey,
        fingerprint: Option<Fingerprint>,
        same: SameValue<T>,
        policy: P,
        body: F,
    ) -> impl Future<Output = Result<T, E>>
    where
        T: Replayable,
        E: From<Error>,
        P: ErrorPolicy<E>,
        F: AsyncFnOnce(&mut Self::Injected) -> Result<T, E>,
    {
        crate::strategy::dedup_table::run_in_tx_with_policy(
            self.store,
            key,
            fingerprint,
            self.options,
            same,
            policy,
            body,
        )
    }
}

/// `distributed_lock`: [`crate::strategy::distributed_lock::run`]; the body is lent the
/// fencing token.
pub struct DistributedLock<'a, S: ?Sized> {
    /// The lock store.
    pub store: &'a S,
    /// `lease`, `ttl`, `on_busy`, `on_cancel`.
    pub options: LockOptions,
}

impl<S: LockStore> ReplayStrategy for DistributedLock<'_, S> {
    type Injected = FencingToken;

    fn run<T, E, P, F>(
        self,
        key: StorageKey,
        fingerprint: Option<Fingerprint>,
        same: SameValue<T>,
        policy: P,
        body: F,
    ) -> impl Future<Output = Result<T, E>>
    where
        T: Replayable,
        E: From<Error>,
        P: ErrorPolicy<E>,
        F: AsyncFnOnce(&mut Self::Injected) -> Result<T, E>,
    {
        let body = async move |mut fence: FencingToken| body(&mut fence).await;
        crate::strategy::distributed_lock::run_with_policy(
            self.store,
            key,
            fingerprint,
            self.options,
            same,
            policy,
            body,
        )
    }
}

/// `token`: [`crate::strategy::token::run`], consuming `token`.
pub struct Token<'a, S: ?Sized, K: ?Sized> {
    /// The token store.
    pub store: &'a S,
    /// The one-time token (the key's single part), copied out by `KeyPartArg::key_part`.
    pub token: &'a K,
    /// `lease`, `ttl`, `on_cancel`.
    pub options: TokenOptions,
}

impl<S: TokenStore, K: KeyPart + ?Sized> ReplayStrategy for Token<'_, S, K> {
    type Injected = ();

    fn run<T, E, P, F>(
        self,
        key: StorageKey,
        fingerprint: Option<Fingerprint>,
        same: SameValue<T>,
        policy: P,
        body: F,
    ) -> impl Future<Output = Result<T, E>>
    where
        T: Replayable,
        E: From<Error>,
        P: ErrorPolicy<E>,
        F: AsyncFnOnce(&mut Self::Injected) -> Result<T, E>,
    {
        let body = async move || body(&mut ()).await;
        crate::strategy::token::run_with_policy(
            self.store,
            self.token,
            key,
            fingerprint,
            self.options,
            same,
            policy,
            body,
        )
    }
}
