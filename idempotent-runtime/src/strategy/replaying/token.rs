//! `strategy = "token"`: the client first gets a one-time token ([`issue_token`]), then sends
//! it with the request; the call consumes it in one server-side step.
//!
//! Protocol (one entry point, [`run`]):
//!
//! 1. **Consume** — one atomic step (a Lua script on Redis, never GET then DEL): an issued token
//!    becomes *consumed by this caller* for `lease`; a token consumed by another running call
//!    gives [`Error::Duplicate`]; a completed token replays its response; an unknown or expired
//!    token gives [`Error::TokenInvalid`].
//! 2. **Body**. On success the response is stored under the token for `ttl` by compare-and-set
//!    on the consumer; a retry with the same token replays it. On an error the token is
//!    restored to issued (compare-and-set), so the client retries with the same token. A future
//!    dropped mid-body keeps the token consumed until the lease ends (`on_cancel = "keep"`, the
//!    default: a retry meanwhile gets [`Error::Duplicate`], after it the next call with the
//!    token runs) or restores it at once in the background (`on_cancel = "release"`, see
//!    [`OnCancel`]).
//!
//! The token is bound to the call that consumed it: its *binding* is the storage key of
//! (operation name, scope, token), so the token replays only for the same operation and scope
//! (another gets [`Error::TokenInvalid`]) and the same payload (another gets
//! [`Error::FingerprintMismatch`]).
//!
//! Round trips on Redis: a fresh call 2 (consume, complete), a replay 1.
//!
//! The replay codec, renewal, drop guard and completion are the replaying family's, in
//! [`replaying`](super).

use std::time::Duration;

use super::durations::{DEFAULT_LEASE, DEFAULT_TTL, check_acquisition, check_lease_and_ttl};
use super::{
    Completion, DEFAULT_MAX_RESPONSE_BYTES, DropGuard, ErrorPolicy, ReleaseAll, SameValue,
    acquiring, answer, check_fingerprint, first_renewal, replayed, settle, while_renewing,
};
use crate::store::{Consumed, TokenStore, new_owner, random_token};
use crate::strategy::OnCancel;
use crate::telemetry::{self, Decision};
use crate::{Error, Fingerprint, KeyBuilder, KeyPart, StorageKey};

/// The operation name under which tokens are stored.
const TOKEN_OPERATION: &str = "idempotent::token";

/// Options of one `token` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// How long a consumed token stays with its consumer without completion, default 30 s, at
    /// least [`MIN_LEASE`](super::durations::MIN_LEASE) (300 ms); after it a crashed consumer's
    /// token can be used again.
    pub lease: Duration,
    /// How long the response is kept and replayed to retries with the token, default 24 h, at
    /// least `lease`. (How long an issued, unused token stays valid is `issue_token`'s `ttl`.)
    pub ttl: Duration,
    /// What a future dropped mid-body does with the consumed token, default
    /// [`OnCancel::Keep`]: it stays consumed until the lease ends, so an immediate retry with
    /// the token gets [`Error::Duplicate`] rather than a second run.
    pub on_cancel: OnCancel,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            lease: DEFAULT_LEASE,
            ttl: DEFAULT_TTL,
            on_cancel: OnCancel::Keep,
        }
    }
}

impl Options {
    /// Checks the durations against what the protocol needs ([`durations`](super::durations)):
    /// `lease` at least [`MIN_LEASE`](super::durations::MIN_LEASE), `ttl` at least `lease`.
    /// [`run`] calls it first; call it yourself to reject options read from configuration at
    /// startup.
    ///
    /// Errors: [`Error::InvalidOption`] naming the option, its value and the minimum.
    pub fn check(&self) -> Result<(), Error> {
        check_lease_and_ttl(self.lease, self.ttl)
    }
}

/// The storage key of a token (its own namespace, independent of any operation).
///
/// Errors: [`Error::InvalidKey`] for an empty or oversized token, saying "the token" ("the
/// token is empty", "the token is 2000 bytes; the limit is 1024").
#[doc(hidden)]
pub fn token_key<K: KeyPart + ?Sized>(token: &K) -> Result<StorageKey, Error> {
    KeyBuilder::new(TOKEN_OPERATION)
        .part(token)
        .finish_named("the token")
}

/// Issues a one-time token valid for `ttl`: 16 random bytes from the OS RNG as 32 lowercase
/// hex characters, stored in `store` as unused. Hand it to the client, which sends it with the
/// request (and with every retry of that request).
///
/// Errors: [`Error::InvalidOption`] (option `"ttl"`) when `ttl` is below
/// [`MIN_LEASE`](crate::strategy::durations::MIN_LEASE) (a token that expires before a call
/// can consume it can never be used; nothing is stored); [`Error::Backend`] when the store
/// fails or the OS has no randomness.
pub async fn issue_token<S: TokenStore>(store: &S, ttl: Duration) -> Result<String, Error> {
    let minimum = crate::strategy::durations::MIN_LEASE;
    if ttl < minimum {
        return Err(Error::InvalidOption {
            option: "ttl",
            value: ttl,
            minimum,
            reason: "a token that expires before a call can consume it can never be used",
        });
    }
    let token = random_token()?;
    store.issue_token(&token_key(token.as_str())?, ttl).await?;
    Ok(token)
}

/// How a token consumed or completed by a call of binding `stored_binding` is judged for a
/// call of `binding`: another operation or scope is [`Error::TokenInvalid`], then the
/// fingerprint rule ([`check_fingerprint`]). The memory store applies it in place.
pub(crate) fn check(
    stored_binding: &str,
    stored_fp: Option<&str>,
    binding: &str,
    fp: Option<&str>,
) -> Result<(), Error> {
    if stored_binding != binding {
        return Err(Error::TokenInvalid);
    }
    check_fingerprint(stored_fp, fp)
}

/// Consumes `token` in `store`, runs `body`, and stores its response under the token for
/// replay (or restores the token if the body fails).
///
/// `binding` is the call's storage key (operation name, scope, token). Returns the body's
/// result or the replayed response of the call that consumed the token. Errors (converted into
/// `E`): [`Error::TokenInvalid`] (unknown, expired, or bound to another operation or scope),
/// [`Error::Duplicate`] (another call with the token is running), [`Error::FingerprintMismatch`],
/// [`Error::LockLost`] (the consumption's lease ended and another call took the token;
/// [`Error::LeaseShorterThanAcquisition`] when consuming took the whole lease),
/// [`Error::Unrecorded`] (the body ran but its response could not be recorded: completion runs
/// in a task of its own that survives the caller's future and retries backend errors for up to
/// the lease, renewing it), [`Error::InvalidOption`] (see [`Options::check`]; nothing ran),
/// [`Error::InvalidKey`], [`Error::Serialization`], [`Error::Backend`] (before the body ran; a
/// consumption whose reply may have been lost is restored by owner in the background).
///
/// The response's round trip is checked on what serde writes; the macro also compares the value
/// read back with `==` when `T: PartialEq` (see the crate's README, "replay").
///
/// `same` compares the response with the copy read back from its JSON (a difference makes it
/// unstorable): the macro passes `==` when `T: PartialEq`; a direct caller passes
/// [`not_compared`](crate::strategy::not_compared) or its own comparison.
pub async fn run<S, K, T, E, F>(
    store: &S,
    token: &K,
    binding: StorageKey,
    fingerprint: Option<Fingerprint>,
    options: Options,
    same: SameValue<T>,
    body: F,
) -> Result<T, E>
where
    S: TokenStore,
    K: KeyPart + ?Sized,
    T: super::Replayable,
    E: From<Error>,
    F: AsyncFnOnce() -> Result<T, E>,
{
    run_with_policy(
        store,
        token,
        binding,
        fingerprint,
        options,
        same,
        ReleaseAll,
        body,
    )
    .await
}

/// [`run`] with an [`ErrorPolicy`], which decides whether an error from the body restores the
/// token: an error `policy` stores (a terminal error, see [`Terminal`](super::Terminal))
/// completes the token with it — consumed for good, by compare-and-set on the consumer, as a
/// response is — so a retry with the token gets the same error back for `ttl` without running
/// the body; the caller gets the body's error as it was. Any other error restores the token as
/// in [`run`]. Errors as [`run`]'s.
#[allow(clippy::too_many_arguments)]
pub fn run_with_policy<S, K, T, E, P, F>(
    store: &S,
    token: &K,
    binding: StorageKey,
    fingerprint: Option<Fingerprint>,
    options: Options,
    same: SameValue<T>,
    policy: P,
    body: F,
) -> impl Future<Output = Result<T, E>>
where
    S: TokenStore,
    K: KeyPart + ?Sized,
    T: super::Replayable,
    E: From<Error>,
    P: ErrorPolicy<E>,
    F: AsyncFnOnce() -> Result<T, E>,
{
    let traced = telemetry::traced("token", store.backend_name(), &binding);
    // The call itself, inside the call's span.
    let call = async move {
        options.check()?;
        let key = token_key(token)?;
        let owner = new_owner()?;
        let fp = fingerprint.map(|f| f.hex_inline());
        let bind = binding.hex();
        let sent = tokio::time::Instant::now();
        let consumed = store.consume_token(&key, &owner, &bind, fp.as_deref(), options.lease);
        match acquiring(consumed, || {
            store.restore_token_detached(key.clone(), owner.to_string())
        })
        .await?
        {
            Consumed::Claimed => telemetry::event(Decision::Claimed),
            Consumed::Invalid => return Err(Error::TokenInvalid.into()),
            Consumed::Busy {
                binding,
                fingerprint,
            } => {
                telemetry::check(check(
                    &binding,
                    fingerprint.as_deref(),
                    &bind,
                    fp.as_deref(),
                ))?;
                return Err(telemetry::check(Err(Error::Duplicate))?);
            }
            Consumed::Matched(response) => return answer(replayed(&response)?, &policy),
            Consumed::Replay {
                binding,
                fingerprint,
                response,
            } => {
                telemetry::check(check(
                    &binding,
                    fingerprint.as_deref(),
                    &bind,
                    fp.as_deref(),
                ))?;
                return answer(replayed(&response)?, &policy);
            }
        }

        // The consumed call's steps run on the heap: only a fresh call needs them, and kept
        // inline they made this future (and every layer awaiting it) kilobytes larger, copied
        // between the layers on every call, replays too.
        Box::pin(async move {
            // A consumption that took its whole lease may have expired: the body does not run.
            let took = sent.elapsed();
            if let Err(e) = check_acquisition(took, options.lease) {
                if let Err(restore) = Box::pin(store.restore_token(&key, &owner)).await {
                    tracing::warn!(?key, error = %restore, "restoring a consumption that outlived its lease failed; it frees itself when its lease ends");
                }
                telemetry::event(Decision::Released);
                return Err(e.into());
            }

            let mut guard = DropGuard::new(options.on_cancel, || {
                store.restore_token_detached(key.clone(), owner.to_string())
            });
            // Renew the consumption while the body runs, so a slow body keeps its claim on the token
            // and a retry never runs it a second time.
            let mut next_renewal = first_renewal(sent, options.lease);
            let result = while_renewing(options.lease, &mut next_renewal, body(), || {
                store.renew_token(&key, &owner, options.lease)
            })
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
                || store.restore_token(&key, &owner),
                options.lease,
                next_renewal,
            )
            .await
        })
        .await
    };
    traced.run(call)
}

/// The completion of a `token` call, on an owned store handle (see [`Completion`]).
struct Completing<S> {
    store: S,
    key: StorageKey,
    owner: String,
    response: Vec<u8>,
    ttl: Duration,
    lease: Duration,
}

impl<S: TokenStore> Completion for Completing<S> {
    fn complete(&self) -> impl Future<Output = Result<bool, Error>> + Send {
        self.store
            .complete_token(&self.key, &self.owner, &self.response, self.ttl)
    }

    fn renew(&self) -> impl Future<Output = Result<bool, Error>> + Send {
        self.store.renew_token(&self.key, &self.owner, self.lease)
    }
}
