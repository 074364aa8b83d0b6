//! The replaying strategies — [`dedup_table`], [`distributed_lock`] and [`token`] — and the
//! protocol they share: a call claims its key (a claim, a lock, a token), runs the body while
//! renewing the claim's lease, and records the body's response for later duplicates, which get
//! it back instead of running the body again.
//!
//! This file holds the shared parts, each used by all three:
//!
//! - the **replay codec**: `storable` / `response_bytes` turn a response into the bytes
//!   stored (or the "unstorable" marker, so the record still completes), `replayed` turns them
//!   back; [`DEFAULT_MAX_RESPONSE_BYTES`] bounds them;
//! - **busy-wait**: `busy` applies [`OnBusy`] to a key another caller holds;
//! - **fingerprints**: `check_fingerprint` compares a stored fingerprint with the call's;
//! - **renewal**: `while_renewing` runs the body while renewing the lease every third of it,
//!   on a schedule that starts when the acquisition was sent and carries on into completion;
//! - the **drop guard** `DropGuard`, which applies [`OnCancel`] when the caller's future is
//!   dropped mid-body (keep the claim until its lease ends, or give it back at once);
//! - **completion**: `complete_recorded` records the response by compare-and-set on the owner,
//!   in a task of its own that outlives the caller's future, retrying backend errors for up to
//!   the lease from the first failure while renewing it;
//! - **acquisition**: `acquiring` releases by owner when an acquisition step failed with a
//!   backend error (its reply may have been lost) or the caller gave up while it was in flight;
//! - [`Replayable`], the bound on a replayed response type;
//! - the **error policy** ([`ErrorPolicy`]): whether an error from the body releases the claim
//!   (the default, [`ReleaseAll`]) or is stored and replayed like a response ([`Terminal`]);
//! - the duration options' defaults and floors, checked by each entry point first, in
//!   [`durations`].

use std::pin::Pin;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Backoff, OnBusy, OnCancel};
use crate::Error;

pub mod dedup_table;
pub mod distributed_lock;
pub mod durations;
pub mod token;

/// The largest response stored for replay by default: 4 MiB of JSON (below MySQL's and
/// MariaDB's default `max_allowed_packet` of 16 MiB / 64 MiB).
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// Stored instead of a response that could not be kept (fails to serialize, fails to
/// deserialize back, or is too large). Never valid JSON, so never mistaken for a response.
pub(crate) const UNSTORABLE: &[u8] = b"\0unstorable:";

/// A response type a replaying strategy (`dedup_table`, `distributed_lock`, `token`) can store
/// and give back to duplicates: any `T: Serialize + DeserializeOwned` (stored as JSON).
///
/// One trait instead of two bounds so that a response type that is neither gives one compile
/// error, at the function's `T`, saying what to derive.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be stored for replay: a replaying strategy's response type must be `Serialize + DeserializeOwned`",
    label = "the `Ok` type of this function is stored and replayed to duplicates",
    note = "add `#[derive(serde::Serialize, serde::Deserialize)]` to `{Self}`, or return a type that has them"
)]
pub trait Replayable: serde::Serialize + serde::de::DeserializeOwned {}

#[diagnostic::do_not_recommend]
impl<T: serde::Serialize + serde::de::DeserializeOwned> Replayable for T {}

/// Compares a response with the copy read back from its JSON: `Some(equal)` when `T` can be
/// compared (`T: PartialEq`), `None` when it cannot. The macro picks it for the concrete `T`
/// (`__private::Probe`); direct callers of the strategies' `run` pass [`not_compared`].
pub type SameValue<T> = fn(&T, &T) -> Option<bool>;

/// The [`SameValue`] of a type that cannot be compared: always `None`.
pub fn not_compared<T>(_: &T, _: &T) -> Option<bool> {
    None
}

/// Serializes `value` for replay and checks the round trip replay depends on: the JSON read
/// back as a `T` serializes again to the same JSON text — byte for byte, except that members of
/// a JSON object may come in another order (a `HashMap`'s iteration order) — and has the same
/// canonical form as `value` (the fingerprint's, [`crate::fingerprint`], which tells apart what
/// JSON writes alike: `None` and `Some(None)`, NaN and ±∞ and `null`); and, when `same` can
/// compare `T` (`T: PartialEq`), the value read back equals `value` (which catches what serde
/// writes alike: an `#[serde(untagged)]` enum's variants with the same content, a
/// `#[serde(skip)]` field). When `same` says the copy read back equals `value`, that alone
/// decides: the JSON and canonical comparisons exist for types `==` cannot judge, so one
/// deserialization is the whole check. The reason when it cannot be stored.
pub(crate) fn storable<T: Serialize + DeserializeOwned>(
    value: &T,
    limit: usize,
    same: SameValue<T>,
) -> Result<Vec<u8>, String> {
    let bytes = serde_json::to_vec(value).map_err(|e| format!("it failed to serialize: {e}"))?;
    if bytes.len() > limit {
        return Err(format!(
            "it is {} bytes of JSON; the limit is {limit} bytes",
            bytes.len()
        ));
    }
    let back = serde_json::from_slice::<T>(&bytes)
        .map_err(|e| format!("it does not read back after serializing: {e}"))?;
    // `T`'s own `==` says the copy read back is the value returned: that is what a replay
    // must give, and the checks below (which exist for types that cannot be compared) would
    // only serialize both again to say so.
    let compared = same(value, &back);
    if compared == Some(true) {
        return Ok(bytes);
    }
    // A value that reads back as a different one (an `#[serde(untagged)]` enum taking another
    // variant, a field skipped on one side, a number read back as another type) would replay
    // something the body never returned.
    let again = serde_json::to_vec(&back)
        .map_err(|e| format!("it does not serialize again after reading back: {e}"))?;
    if bytes != again && !same_json_but_member_order(&bytes, &again) {
        return Err(format!(
            "it reads back as a different value (serialized {} then {}): replaying it would change the response",
            String::from_utf8_lossy(&bytes),
            String::from_utf8_lossy(&again)
        ));
    }
    // Same JSON, but JSON writes some different values alike (`Some(None)` and `None`,
    // `Some(NaN)` and `None`): the read-back copy must also be the same serde value. Skipped
    // only when `Serialize` fails for the canonical serializer though it worked for JSON.
    if let (Ok(sent), Ok(read)) = (
        crate::fingerprint::canonical(value),
        crate::fingerprint::canonical(&back),
    ) && sent != read
    {
        return Err(format!(
            "it reads back as a different value (JSON {} stands for another value too, e.g. `null` for `None`, `Some(None)`, NaN and infinities): replaying it would change the response",
            String::from_utf8_lossy(&bytes)
        ));
    }
    // Same JSON and same serde value, but serde writes some different values alike (an
    // untagged enum's variants with the same content, a skipped field read back as its
    // default): `T`'s own `PartialEq`, when it has one, tells them apart.
    if compared == Some(false) {
        return Err(format!(
            "it reads back as a different value (JSON {} reads back as a value that is not `==` to the one returned: an `#[serde(untagged)]` variant written like another, or a `#[serde(skip)]` field): replaying it would change the response",
            String::from_utf8_lossy(&bytes)
        ));
    }
    Ok(bytes)
}

/// Whether two JSON texts are the same but for the order of members within objects: every
/// scalar (number, string, literal) must have the same text, arrays the same order. `false`
/// when either is not JSON.
fn same_json_but_member_order(a: &[u8], b: &[u8]) -> bool {
    match (std::str::from_utf8(a), std::str::from_utf8(b)) {
        (Ok(a), Ok(b)) => matches!((json_tree(a), json_tree(b)), (Ok(x), Ok(y)) if x == y),
        _ => false,
    }
}

/// A JSON text's structure, keeping each scalar's exact text; an object's members sorted.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum JsonTree<'a> {
    Scalar(&'a str),
    Array(Vec<JsonTree<'a>>),
    Object(Vec<(String, JsonTree<'a>)>),
}

fn json_tree(text: &str) -> Result<JsonTree<'_>, serde_json::Error> {
    use serde_json::value::RawValue;
    match text.trim_start().as_bytes().first() {
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text)?;
            let items = items.into_iter().map(|i| json_tree(i.get()));
            Ok(JsonTree::Array(items.collect::<Result<_, _>>()?))
        }
        Some(b'{') => {
            let Members(members) = serde_json::from_str(text)?;
            let mut members = members
                .into_iter()
                .map(|(k, v)| json_tree(v.get()).map(|v| (k, v)))
                .collect::<Result<Vec<_>, _>>()?;
            members.sort();
            Ok(JsonTree::Object(members))
        }
        _ => Ok(JsonTree::Scalar(text.trim())),
    }
}

/// A JSON object's members in their order, duplicates kept, values as raw text.
struct Members<'a>(Vec<(String, &'a serde_json::value::RawValue)>);

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// The body succeeded: its response serialized for replay, or — when it cannot be kept (fails
/// to serialize, does not read back, exceeds `limit` bytes) — the "unstorable" marker, so the
/// record still completes and a retry never runs the body again (it gets
/// `Error::Serialization`).
pub(crate) fn response_bytes<T>(
    key: &crate::StorageKey,
    value: &T,
    limit: usize,
    same: SameValue<T>,
) -> Vec<u8>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    storable(value, limit, same).unwrap_or_else(|reason| {
        tracing::warn!(?key, %reason, "the response is not stored for replay; duplicates get Error::Serialization");
        [UNSTORABLE, reason.as_bytes()].concat()
    })
}

/// Stored before the JSON of a terminal error the body returned ([`ErrorPolicy`]). Never
/// valid JSON, so a stored response (plain JSON, as before error policies existed) is never
/// mistaken for an error, nor an error for a response.
pub(crate) const STORED_ERROR: &[u8] = b"\0error:";

/// A stored record's answer, read back: the response, or the JSON of a stored terminal error
/// (decoded by the caller's [`ErrorPolicy`]).
pub(crate) enum Replayed<T> {
    /// The first call's response.
    Response(T),
    /// The first call's terminal error, as JSON.
    Error(Vec<u8>),
}

/// Reads a stored answer back; [`Error::Serialization`] when the first call's response was
/// recorded as not storable, or does not read back as a `T`.
pub(crate) fn replayed<T: DeserializeOwned>(bytes: &[u8]) -> Result<Replayed<T>, Error> {
    if let Some(error) = bytes.strip_prefix(STORED_ERROR) {
        return Ok(Replayed::Error(error.to_vec()));
    }
    match bytes.strip_prefix(UNSTORABLE) {
        Some(reason) => Err(Error::Serialization(format!(
            "the first call with this idempotency key succeeded, but its response was not stored for replay: {}",
            String::from_utf8_lossy(reason)
        ))),
        None => Ok(Replayed::Response(serde_json::from_slice(bytes)?)),
    }
}

/// What a replayed answer gives the caller: the response, or the stored terminal error decoded
/// by `policy` (a runtime error converted into `E` when it cannot be decoded). Records the call
/// as replayed.
pub(crate) fn answer<T, E: From<Error>>(
    replayed: Replayed<T>,
    policy: &impl ErrorPolicy<E>,
) -> Result<T, E> {
    let answer = match replayed {
        Replayed::Response(value) => Ok(value),
        Replayed::Error(json) => Err(policy.replayed(&json).unwrap_or_else(E::from)),
    };
    crate::error::record(crate::Disposition::Replayed);
    answer
}

/// What a replaying strategy does with an error its body returns: release the claim (lock,
/// token) so that a retry runs the body again — the default, [`ReleaseAll`] — or, for an error
/// the policy calls *terminal*, store it in the record like a response, so that duplicates get
/// the same error back for the record's `ttl` without running the body ([`Terminal`]).
///
/// Implemented by the two policies below; the macro's `terminal = "path::to::fn"` option
/// picks [`Terminal`]. A stored error is JSON after a marker that is never valid JSON, so
/// records written before error policies existed replay as they did.
pub trait ErrorPolicy<E> {
    /// Whether this policy ever stores an error: `dedup_table`'s transactional mode then runs
    /// the body in a SAVEPOINT, so that a stored error commits the record without the body's
    /// writes.
    fn stores_errors(&self) -> bool;

    /// The error as stored (JSON, at most `limit` bytes) when it is terminal; `None` when the
    /// claim is to be released instead: the error is retryable, or it cannot be stored (it
    /// fails to serialize, does not read back, or exceeds `limit`; logged as a warning).
    fn stored(&self, error: &E, limit: usize) -> Option<Vec<u8>>;

    /// A stored terminal error read back from its JSON. Errors: [`Error::Serialization`] when
    /// it does not deserialize as an `E`, or this policy stores no errors (the record was
    /// written by a build whose policy did).
    fn replayed(&self, json: &[u8]) -> Result<E, Error>;
}

/// The default [`ErrorPolicy`]: every error from the body releases the claim, so a retry runs
/// the body again.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReleaseAll;

impl<E> ErrorPolicy<E> for ReleaseAll {
    fn stores_errors(&self) -> bool {
        false
    }

    fn stored(&self, _: &E, _: usize) -> Option<Vec<u8>> {
        None
    }

    fn replayed(&self, _: &[u8]) -> Result<E, Error> {
        Err(Error::Serialization(
            "the first call with this idempotency key failed with an error that was stored as terminal, but this function has no `terminal` error policy to read it back".to_owned(),
        ))
    }
}

/// The [`ErrorPolicy`] of `terminal = "path::to::fn"`: an error for which the function returns
/// `true` is terminal — stored as JSON and replayed to duplicates for the record's `ttl` —
/// and any other releases the claim. Built by [`Terminal::new`], which needs
/// `E: Serialize + DeserializeOwned`; the policy itself holds plain function pointers, so it is
/// an [`ErrorPolicy<E>`] for any `E`.
pub struct Terminal<E> {
    is_terminal: fn(&E) -> bool,
    encode: fn(&E, usize) -> Result<Vec<u8>, String>,
    decode: fn(&[u8]) -> Result<E, serde_json::Error>,
}

impl<E: Serialize + DeserializeOwned> Terminal<E> {
    /// The policy that stores the errors `is_terminal` calls terminal.
    pub fn new(is_terminal: fn(&E) -> bool) -> Self {
        Terminal {
            is_terminal,
            encode: |e, limit| storable(e, limit, not_compared),
            decode: |json| serde_json::from_slice(json),
        }
    }
}

impl<E> Clone for Terminal<E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E> Copy for Terminal<E> {}

impl<E> std::fmt::Debug for Terminal<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Terminal(..)")
    }
}

impl<E> ErrorPolicy<E> for Terminal<E> {
    fn stores_errors(&self) -> bool {
        true
    }

    fn stored(&self, error: &E, limit: usize) -> Option<Vec<u8>> {
        if !(self.is_terminal)(error) {
            return None;
        }
        match (self.encode)(error, limit) {
            Ok(json) => Some([STORED_ERROR, &json].concat()),
            Err(reason) => {
                tracing::warn!(%reason, "a terminal error cannot be stored for replay; the claim is released instead, so a retry runs again");
                None
            }
        }
    }

    fn replayed(&self, json: &[u8]) -> Result<E, Error> {
        (self.decode)(json).map_err(|e| {
            Error::Serialization(format!(
                "the first call with this idempotency key failed with a terminal error, stored for replay, that does not read back: {e}"
            ))
        })
    }
}

/// [`Error::FingerprintMismatch`] when both fingerprints are known and differ.
pub(crate) fn check_fingerprint(stored: Option<&str>, ours: Option<&str>) -> Result<(), Error> {
    match (stored, ours) {
        (Some(s), Some(o)) if s != o => Err(Error::FingerprintMismatch),
        _ => Ok(()),
    }
}

/// Handles a busy key per `on_busy`: `Ok(())` to try again after a pause,
/// [`Error::InProgress`] (reject) or [`Error::WaitTimeout`] (waited `limit` since `started`).
pub(crate) async fn busy(
    on_busy: OnBusy,
    started: tokio::time::Instant,
    backoff: &mut Backoff,
) -> Result<(), Error> {
    match on_busy {
        OnBusy::Reject => Err(Error::InProgress),
        OnBusy::Wait(limit) => {
            if started.elapsed() >= limit {
                return Err(Error::WaitTimeout(limit));
            }
            crate::telemetry::waiting();
            backoff.wait().await;
            Ok(())
        }
    }
}

/// Applies [`OnCancel`] when the caller's future is dropped mid-body: with
/// [`OnCancel::Release`] runs `undo` (a detached release or restore) on drop unless
/// [`disarm`](DropGuard::disarm)ed first; with [`OnCancel::Keep`] does nothing, so the claim,
/// lock or consumed token stays until its lease ends (its renewal died with the future).
pub(crate) struct DropGuard<F: FnOnce()> {
    undo: Option<F>,
}

impl<F: FnOnce()> DropGuard<F> {
    /// A guard armed with `undo` when `on_cancel` is [`OnCancel::Release`], inert otherwise.
    pub(crate) fn new(on_cancel: OnCancel, undo: F) -> Self {
        DropGuard {
            undo: (on_cancel == OnCancel::Release).then_some(undo),
        }
    }

    /// The body returned: nothing to undo on drop.
    pub(crate) fn disarm(&mut self) {
        self.undo = None;
    }
}

impl<F: FnOnce()> Drop for DropGuard<F> {
    fn drop(&mut self) {
        if let Some(undo) = self.undo.take() {
            undo();
        }
    }
}

/// Runs `body` while calling `renew` every `lease / 3`, so a body slower than its lease keeps
/// its claim, lock or token. When a renewal reports the claim lost (`Ok(false)`) renewing
/// stops and the body runs on; its completion is then refused (compare-and-set on the owner).
/// Shared by `dedup_table` claim mode, `distributed_lock` and `token`.
///
/// A future of its own, not an `async fn`: an `async fn` keeps its `body` argument and the
/// pinned body as two fields (and `tokio::select!` pads them), so every fresh call's future held
/// the body twice. This one holds the body and the renewal loop once each.
pub(crate) fn while_renewing<B: Future, Fut>(
    lease: Duration,
    next: &mut tokio::time::Instant,
    body: B,
    renew: impl FnMut() -> Fut,
) -> WhileRenewing<B, impl Future<Output = ()>>
where
    Fut: Future<Output = Result<bool, crate::Error>>,
{
    WhileRenewing {
        body,
        renewing: keep_renewed(lease, next, renew),
        renewed_for_good: false,
    }
}

pin_project_lite::pin_project! {
    /// The future of [`while_renewing`]: the body, polled first on every wake-up, and the
    /// renewal loop, polled after it until the loop ends (the claim was lost).
    pub(crate) struct WhileRenewing<B, K> {
        #[pin]
        body: B,
        #[pin]
        renewing: K,
        // The renewal loop ended: only the body is polled from then on.
        renewed_for_good: bool,
    }
}

impl<B: Future, K: Future<Output = ()>> Future for WhileRenewing<B, K> {
    type Output = B::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<B::Output> {
        let this = self.project();
        if let std::task::Poll::Ready(r) = this.body.poll(cx) {
            return std::task::Poll::Ready(r);
        }
        if !*this.renewed_for_good && this.renewing.poll(cx).is_ready() {
            *this.renewed_for_good = true;
        }
        std::task::Poll::Pending
    }
}

/// How often a claim is renewed: every third of its lease, so two renewals fit in a lease.
pub(crate) fn renewal_period(lease: Duration) -> Duration {
    (lease / 3).max(Duration::from_millis(1))
}

/// When the first renewal of a claim acquired by a request sent at `sent` is due: one renewal
/// period after the request, not after the reply or the body's start, so a slow reply does not
/// push the first renewal past the claim's expiry.
pub(crate) fn first_renewal(sent: tokio::time::Instant, lease: Duration) -> tokio::time::Instant {
    sent + renewal_period(lease)
}

/// Renews the claim when `*next` is due, then one renewal period after each renewal was sent
/// (the store extends the claim from when it runs the renewal, no earlier),
/// until a renewal reports the claim lost (`Ok(false)`); never returns while the claim is held.
/// A failed renewal is logged and tried again after a quarter period, so a short store outage
/// costs a fraction of the lease, not a whole period. `*next` is left at the next due time, for
/// the completion to carry on the same schedule.
async fn keep_renewed<Fut>(
    lease: Duration,
    next: &mut tokio::time::Instant,
    mut renew: impl FnMut() -> Fut,
) where
    Fut: Future<Output = Result<bool, crate::Error>>,
{
    let every = renewal_period(lease);
    loop {
        tokio::time::sleep_until(*next).await;
        // Scheduled before the round trip: if the body finishes while this renewal is in
        // flight (its future dropped), the completion does not resend it at once.
        *next = tokio::time::Instant::now() + every;
        // On the heap: a renewal is due once a third of a lease, while this loop's state sits
        // beside the body's (and the completion's) in every fresh call; inline, the store's
        // request future (kilobytes on SQL stores) widened each of them.
        match Box::pin(renew()).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(
                    "the claim was lost before the body finished; completion will fail with LockLost"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing the claim failed; retrying shortly");
                *next = tokio::time::Instant::now() + (every / 4).max(Duration::from_millis(1));
            }
        }
    }
}

/// One completion of a call whose body returned `Ok`, on an owned store handle, so that it
/// can run in a task of its own: the compare-and-set that records the response, and the lease
/// renewal that keeps the claim while completion is retried. Each replaying strategy has one
/// (`dedup_table`: `complete_claim`/`renew_claim`, `distributed_lock`: `complete_lock`/
/// `renew_lock`, `token`: `complete_token`/`renew_token`).
pub(crate) trait Completion: Send + Sync + 'static {
    /// Records the response if the claim is still this caller's: `Ok(true)` recorded,
    /// `Ok(false)` the claim is no longer this caller's.
    fn complete(&self) -> impl Future<Output = Result<bool, Error>> + Send;

    /// Extends this caller's claim by the lease: `Ok(false)` when it is no longer theirs.
    fn renew(&self) -> impl Future<Output = Result<bool, Error>> + Send;

    /// After a refused completion that followed a failed attempt: `Ok(true)` when the record
    /// shows that the failed attempt did land (its reply was lost), so the call is recorded.
    /// The default knows no way to tell and answers `Ok(false)`.
    fn landed(&self) -> impl Future<Output = Result<bool, Error>> + Send {
        std::future::ready(Ok(false))
    }
}

/// Records a call whose body returned `Ok`: runs `completion` in place; if the caller's
/// future is dropped before it finishes, the rest runs in a task of its own on the current
/// tokio runtime, so the record is written even then.
///
/// The task retries every [`Error::Backend`] with backoff (5 ms doubling to 100 ms) for up to
/// `lease` from the first failure, renewing the lease meanwhile on the schedule the body's renewal left (`next_renewal`): the effect has happened, so a
/// retry of the call should replay, not re-run. `Ok(())` marks the call executed;
/// [`Error::LockLost`] when the claim is no longer this caller's (it expired and was taken
/// over); [`Error::Unrecorded`] when the record could not be written (the claim then stays in
/// progress until its lease ends).
pub(crate) fn complete_recorded<C: Completion>(
    completion: C,
    lease: Duration,
    next_renewal: tokio::time::Instant,
) -> impl Future<Output = Result<(), Error>> + Send {
    // Not an `async fn`, here and in the three functions below: an `async fn` keeps each
    // argument twice (as passed, and moved into its body), which made the future of a fresh
    // call, boxed on every call, hundreds of bytes (on SQL stores kilobytes) larger.
    let completing = completed(completion, lease, next_renewal);
    async move {
        let outcome = completing.await;
        if outcome.is_ok() {
            crate::error::record(crate::Disposition::Executed);
        }
        outcome
    }
}

/// Records a terminal error the body returned, as [`complete_recorded`] records a response
/// (`completion` holds the stored error): `Ok(())` reports the call's `stored_error` decision,
/// [`Error::LockLost`] its `lock_lost` decision (the claim was taken over: nothing stored).
/// On failure the error is logged and returned; the caller gets the body's error either way.
pub(crate) fn complete_with_error<C: Completion>(
    completion: C,
    lease: Duration,
    next_renewal: tokio::time::Instant,
) -> impl Future<Output = Result<(), Error>> + Send {
    let completing = completed(completion, lease, next_renewal);
    async move {
        let outcome = completing.await;
        match &outcome {
            Ok(()) => {
                crate::telemetry::event(crate::telemetry::Decision::StoredError);
                crate::error::note(crate::Disposition::Executed);
            }
            Err(e) => {
                if matches!(e, Error::LockLost) {
                    crate::telemetry::event(crate::telemetry::Decision::LockLost);
                }
                tracing::warn!(error = %e, "the body's terminal error could not be stored; the caller gets it, a retry may run again");
            }
        }
        outcome
    }
}

/// The end of a claim-mode call, once its body has returned `result` (the same for
/// `dedup_table`, `distributed_lock` and `token`): an `Ok` value is recorded with
/// [`complete_recorded`] (its JSON, at most `max_response_bytes`; `same` checks the copy read
/// back) and returned; an error `policy` stores (terminal) is recorded with
/// [`complete_with_error`] and returned as it was; any other error runs `release` (the claim
/// goes back, the `released` decision) and is returned as it was. `completion` builds the
/// strategy's [`Completion`] around the bytes to record. Errors: the body's own, or
/// [`complete_recorded`]'s when the value could not be recorded.
// `manual_async_fn`: written out on purpose, see `complete_recorded`.
#[allow(clippy::too_many_arguments, clippy::manual_async_fn)]
pub(crate) fn settle<T, E, P, C, R, Rel>(
    result: Result<T, E>,
    key: &crate::StorageKey,
    policy: &P,
    max_response_bytes: usize,
    same: SameValue<T>,
    completion: impl FnOnce(Vec<u8>) -> C,
    release: impl FnOnce() -> Rel,
    lease: Duration,
    next_renewal: tokio::time::Instant,
) -> impl Future<Output = Result<T, E>>
where
    Rel: Future<Output = Result<R, Error>>,
    T: Replayable,
    E: From<Error>,
    P: ErrorPolicy<E>,
    C: Completion,
{
    async move {
        let value = match result {
            Ok(v) => v,
            Err(e) => {
                if let Some(stored) = policy.stored(&e, max_response_bytes) {
                    // Stored or not (logged), the caller gets the body's own error.
                    let _ = complete_with_error(completion(stored), lease, next_renewal).await;
                    return Err(e);
                }
                // Made and run only on this path, on the heap: the store's request future
                // would otherwise widen every fresh call's completion.
                if let Err(release) = Box::pin(release()).await {
                    tracing::warn!(?key, error = %release, "giving the claim back after the body's error failed; it frees itself when its lease ends");
                }
                crate::telemetry::event(crate::telemetry::Decision::Released);
                return Err(e);
            }
        };
        // The effect has happened: record it even when the response cannot be kept, so a retry
        // never runs the body a second time.
        let bytes = response_bytes(key, &value, max_response_bytes, same);
        crate::telemetry::check(complete_recorded(completion(bytes), lease, next_renewal).await)?;
        Ok(value)
    }
}

/// [`complete_recorded`] without reporting the outcome.
fn completed<C: Completion>(
    completion: C,
    lease: Duration,
    next_renewal: tokio::time::Instant,
) -> Detaching<impl Future<Output = Result<(), Error>> + Send + 'static> {
    // Polled right here, not spawned: a task per call cost a spawn, a cross-worker wake-up
    // and a join on every fresh call. The future is on the heap and owned by `Detaching`: if
    // the caller's future is dropped before it finishes, its `Drop` hands what is left to a
    // task of its own on the current runtime, so the record is still written. Nothing can
    // drop it halfway through a poll: a poll runs to its end.
    let task = Box::pin(tracing::Instrument::instrument(
        finish(completion, lease, next_renewal),
        tracing::Span::current(),
    ));
    Detaching(Some(task))
}

/// A completion awaited in place, whose remainder is spawned if it is dropped unfinished.
struct Detaching<F: Future<Output = Result<(), Error>> + Send + 'static>(Option<Pin<Box<F>>>);

impl<F: Future<Output = Result<(), Error>> + Send + 'static> Future for Detaching<F> {
    type Output = Result<(), Error>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Error>> {
        let Some(task) = self.0.as_mut() else {
            return std::task::Poll::Ready(Err(Error::Backend(
                "a completion polled after it finished".into(),
            )));
        };
        let outcome = std::task::ready!(task.as_mut().poll(cx));
        self.0 = None;
        std::task::Poll::Ready(outcome)
    }
}

impl<F: Future<Output = Result<(), Error>> + Send + 'static> Drop for Detaching<F> {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                // The outcome is logged by `finish`; nobody waits for it any more.
                Ok(runtime) => drop(runtime.spawn(task)),
                Err(_) => tracing::warn!(
                    "a call was dropped while recording its response, outside a tokio runtime: the record is not written and the claim stays until its lease ends"
                ),
            }
        }
    }
}

/// The completion task: tries `completion` until it answers, retrying backend errors for up to
/// `lease` from the first failure while renewing the claim.
///
/// Not an `async fn`: an `async fn` keeps each argument twice (as passed, and moved into the
/// body), and this future is boxed on every fresh call.
#[allow(clippy::manual_async_fn)]
fn finish<C: Completion>(
    completion: C,
    lease: Duration,
    mut next_renewal: tokio::time::Instant,
) -> impl Future<Output = Result<(), Error>> + Send {
    async move {
        let attempts = async {
            let mut backoff = Backoff::new();
            // When the first attempt failed: the retries last up to `lease` from then. Read only
            // on a failure, so a completion that lands at once reads no clock.
            let mut failed_at: Option<tokio::time::Instant> = None;
            loop {
                match completion.complete().await {
                    Ok(true) => return Ok(()),
                    // `landed` is asked only after a failed attempt: its future on the heap.
                    Ok(false)
                        if failed_at.is_some()
                            && Box::pin(completion.landed()).await.unwrap_or(false) =>
                    {
                        return Ok(());
                    }
                    Ok(false) => return Err(Error::LockLost),
                    Err(e @ Error::Backend(_))
                        if failed_at
                            .get_or_insert_with(tokio::time::Instant::now)
                            .elapsed()
                            + backoff.next()
                            < lease =>
                    {
                        tracing::warn!(error = %e, "recording the response failed; retrying while the lease lasts");
                        crate::telemetry::event(crate::telemetry::Decision::CompletionRetried);
                        backoff.wait().await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the body's effect happened but its response could not be recorded; the claim stays until its lease ends");
                        return Err(Error::Unrecorded {
                            retried_for: failed_at.map_or(Duration::ZERO, |at| at.elapsed()),
                            last: Box::new(e),
                        });
                    }
                }
            }
        };
        while_renewing(lease, &mut next_renewal, attempts, || completion.renew()).await
    }
}

/// Runs one acquisition step (claim, take-over, lock, token consumption) so that the key is
/// never left held by a caller that gave up on it: `release` — a detached release by this
/// caller's owner token — runs when the caller's future is dropped while the step is in flight
/// (a client timeout: the step may have run on the server), and when the step fails with
/// [`Error::Backend`] (its reply may have been lost after it ran). Acquisition is idempotent
/// per owner, so a resent step is harmless, and releasing what was never taken is a no-op.
/// Either way the body has not run, so releasing is safe whatever `on_cancel` says.
///
/// A future of its own, not an `async fn`: an `async fn` keeps its `step` argument and the
/// awaited `step` as two fields, so the step's state was held twice in every claim, replays
/// included.
pub(crate) fn acquiring<R, F: Future<Output = Result<R, Error>>, U: FnOnce()>(
    step: F,
    release: U,
) -> Acquiring<F, U> {
    Acquiring {
        step,
        guard: DropGuard::new(OnCancel::Release, release),
    }
}

pin_project_lite::pin_project! {
    /// The future of [`acquiring`]: the step, and the guard that releases if it is dropped
    /// unfinished or fails with a backend error.
    pub(crate) struct Acquiring<F, U: FnOnce()> {
        #[pin]
        step: F,
        guard: DropGuard<U>,
    }
}

impl<R, F: Future<Output = Result<R, Error>>, U: FnOnce()> Future for Acquiring<F, U> {
    type Output = Result<R, Error>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<R, Error>> {
        let this = self.project();
        let result = std::task::ready!(this.step.poll(cx));
        if !matches!(result, Err(Error::Backend(_))) {
            this.guard.disarm();
        }
        std::task::Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::{not_compared, storable};

    /// An untagged enum whose second variant reads back as the first.
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(untagged)]
    enum Shipment {
        Pending { id: u32 },
        Sent { id: u32, carrier: Option<String> },
    }

    #[test]
    fn a_value_that_reads_back_as_another_is_not_storable() {
        let sent = Shipment::Sent {
            id: 7,
            carrier: None,
        };
        let reason = storable(&sent, usize::MAX, not_compared).unwrap_err();
        assert!(
            reason.contains("reads back as a different value"),
            "{reason}"
        );
        // The variant that survives the round trip is stored as it is.
        let pending = Shipment::Pending { id: 7 };
        assert_eq!(
            storable(&pending, usize::MAX, not_compared).unwrap(),
            br#"{"id":7}"#
        );
    }

    #[test]
    fn map_key_order_is_not_a_change() {
        let map: HashMap<String, u32> = (0..64).map(|i| (format!("k{i}"), i)).collect();
        assert_eq!(
            storable(&map, usize::MAX, not_compared).unwrap(),
            serde_json::to_vec(&map).unwrap()
        );
        let nested: HashMap<String, HashMap<u32, Vec<f64>>> = (0..16)
            .map(|i| {
                (
                    format!("k{i}"),
                    (0..16).map(|j| (j, vec![0.5, f64::from(j)])).collect(),
                )
            })
            .collect();
        assert!(storable(&nested, usize::MAX, not_compared).is_ok());
    }

    /// An untagged enum whose `Big` variant reads back as `Float`: the JSON texts differ
    /// (`18446744073709551617` then `1.8446744073709552e+19`) though they parse to the same
    /// `serde_json::Value` — comparing values, as before, stored it.
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(untagged)]
    enum Amount {
        Float(f64),
        Big(u128),
    }

    #[test]
    fn a_number_that_reads_back_as_another_type_is_not_storable() {
        let big = Amount::Big((1 << 64) + 1);
        let reason = storable(&big, usize::MAX, not_compared).unwrap_err();
        assert!(
            reason.contains("serialized 18446744073709551617 then 1.8446744073709552e+19"),
            "{reason}"
        );
        let as_values = |t: &str| serde_json::from_str::<serde_json::Value>(t).unwrap();
        assert_eq!(
            as_values("18446744073709551617"),
            as_values("1.8446744073709552e+19")
        );
        assert_eq!(
            storable(&Amount::Float(2.5), usize::MAX, not_compared).unwrap(),
            b"2.5".to_vec()
        );
    }

    #[test]
    fn values_json_writes_alike_are_not_storable() {
        // `Some(None)` and `None` are both `null`: it would replay as `None`.
        let reason = storable(&Some(None::<u8>), usize::MAX, not_compared).unwrap_err();
        assert!(reason.contains("stands for another value too"), "{reason}");
        // NaN and infinities are written as `null`: `Some(NaN)` would replay as `None`.
        for f in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let reason = storable(&Some(f), usize::MAX, not_compared).unwrap_err();
            assert!(
                reason.contains("stands for another value too"),
                "{f}: {reason}"
            );
        }
        // Plain `None` and `Some(Some(x))` survive.
        assert_eq!(
            storable(&None::<Option<u8>>, usize::MAX, not_compared).unwrap(),
            b"null"
        );
        assert_eq!(
            storable(&Some(Some(3u8)), usize::MAX, not_compared).unwrap(),
            b"3"
        );
    }

    /// Variants serde writes alike: `A(1)` and `B(1)` are both `1`.
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    #[serde(untagged)]
    enum Alike {
        A(u8),
        B(u8),
    }

    /// A field serde leaves out: read back as its default.
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Skipped {
        a: u8,
        #[serde(skip)]
        b: u8,
    }

    fn equal<T: PartialEq>(a: &T, b: &T) -> Option<bool> {
        Some(a == b)
    }

    #[test]
    fn values_serde_writes_alike_are_not_storable_when_compared() {
        for reason in [
            storable(&Alike::B(1), usize::MAX, equal).unwrap_err(),
            storable(&Skipped { a: 1, b: 9 }, usize::MAX, equal).unwrap_err(),
        ] {
            assert!(
                reason.contains("reads back as a different value") && reason.contains("`==`"),
                "{reason}"
            );
        }
        // What reads back equal is stored.
        assert_eq!(storable(&Alike::A(1), usize::MAX, equal).unwrap(), b"1");
        assert_eq!(
            storable(&Skipped { a: 1, b: 0 }, usize::MAX, equal).unwrap(),
            br#"{"a":1}"#
        );
        // Without a comparison (no `PartialEq`), only what serde writes is checked: the limit.
        assert!(storable(&Alike::B(1), usize::MAX, not_compared).is_ok());
        assert!(storable(&Skipped { a: 1, b: 9 }, usize::MAX, not_compared).is_ok());
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum PayError {
        Declined(String),
        Unavailable,
    }

    #[test]
    fn terminal_errors_are_stored_behind_a_marker_and_responses_as_before() {
        use super::{ErrorPolicy, ReleaseAll, Replayed, Terminal, replayed};
        let policy = Terminal::new(|e: &PayError| matches!(e, PayError::Declined(_)));
        let stored = policy
            .stored(&PayError::Declined("limit".into()), usize::MAX)
            .unwrap();
        assert_eq!(stored, b"\0error:{\"Declined\":\"limit\"}");
        assert_eq!(policy.stored(&PayError::Unavailable, usize::MAX), None);
        // Over the limit: released instead of stored.
        assert_eq!(policy.stored(&PayError::Declined("limit".into()), 8), None);
        match replayed::<u32>(&stored).unwrap() {
            Replayed::Error(json) => assert_eq!(
                policy.replayed(&json).unwrap(),
                PayError::Declined("limit".into())
            ),
            Replayed::Response(v) => panic!("{v}"),
        }
        // A response is plain JSON, as records written before error policies.
        assert!(matches!(
            replayed::<u32>(b"7").unwrap(),
            Replayed::Response(7)
        ));
        // A function without `terminal` cannot read a stored error back.
        let released: &dyn ErrorPolicy<PayError> = &ReleaseAll;
        assert_eq!(
            released.stored(&PayError::Declined("x".into()), usize::MAX),
            None
        );
        assert!(matches!(
            released.replayed(b"{}"),
            Err(crate::Error::Serialization(_))
        ));
    }

    #[test]
    fn json_texts_compare_but_for_member_order() {
        use super::same_json_but_member_order as same;
        assert!(same(
            br#"{"a":1,"b":[1,{"x":"y","z":null}]}"#,
            br#"{"b":[1,{"z":null,"x":"y"}],"a":1}"#
        ));
        assert!(same(br#"{"a":1,"a":2}"#, br#"{"a":2,"a":1}"#));
        assert!(!same(br#"{"a":1,"a":2}"#, br#"{"a":2}"#));
        assert!(!same(b"[1,2]", b"[2,1]"));
        assert!(!same(b"1", b"1.0"));
        assert!(!same(b"-0.0", b"0.0"));
        assert!(!same(br#""\u00e9""#, br#""\u00c9""#));
        assert!(!same(b"{", b"{"), "not JSON");
    }

    /// `while_renewing` on tokio's paused clock: the renewals sent (each answering
    /// `answers[i]`, then `Ok(true)`), the body's output, and where the schedule was left.
    mod renewing {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::time::Duration;

        use tokio::time::Instant;

        use super::super::{first_renewal, while_renewing};
        use crate::Error;

        const LEASE: Duration = Duration::from_millis(300);

        async fn run(
            body_ms: u64,
            answers: &[Result<bool, ()>],
        ) -> (usize, &'static str, Duration) {
            let start = Instant::now();
            let sent = AtomicUsize::new(0);
            let mut next = first_renewal(start, LEASE);
            let body = async {
                tokio::time::sleep(Duration::from_millis(body_ms)).await;
                "done"
            };
            let out = while_renewing(LEASE, &mut next, body, || {
                let i = sent.fetch_add(1, Ordering::SeqCst);
                let answer = answers.get(i).cloned().unwrap_or(Ok(true));
                async move { answer.map_err(|()| Error::Backend("down".into())) }
            })
            .await;
            (sent.load(Ordering::SeqCst), out, next - start)
        }

        #[tokio::test(start_paused = true)]
        async fn a_body_done_before_the_first_renewal_renews_nothing() {
            assert_eq!(run(0, &[]).await, (0, "done", Duration::from_millis(100)));
            assert_eq!(run(99, &[]).await, (0, "done", Duration::from_millis(100)));
        }

        #[tokio::test(start_paused = true)]
        async fn renews_every_third_of_the_lease_while_the_body_runs() {
            // Due at 100, 200 and 300 ms; the body ends at 350 ms: three renewals, the next
            // one due at 400 ms for the completion to carry on.
            assert_eq!(run(350, &[]).await, (3, "done", Duration::from_millis(400)));
        }

        #[tokio::test(start_paused = true)]
        async fn the_body_is_polled_before_a_renewal_due_at_the_same_instant() {
            assert_eq!(run(300, &[]).await, (2, "done", Duration::from_millis(300)));
        }

        #[tokio::test(start_paused = true)]
        async fn a_lost_claim_stops_renewing_and_the_body_runs_on() {
            let (sent, out, _) = run(1000, &[Ok(false)]).await;
            assert_eq!((sent, out), (1, "done"));
        }

        #[tokio::test(start_paused = true)]
        async fn a_failed_renewal_is_retried_after_a_quarter_period() {
            // Fails at 100 ms, retried at 125 ms, then due every 100 ms: 125, 225, 325.
            assert_eq!(
                run(350, &[Err(())]).await,
                (4, "done", Duration::from_millis(425))
            );
        }
    }
}
