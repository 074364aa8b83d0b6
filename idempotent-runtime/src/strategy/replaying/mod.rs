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
//! - **renewal**: `while_renewing` runs the body while renewing the lease every third of it;
//! - the **drop guard** `DropGuard`, which applies [`OnCancel`] when the caller's future is
//!   dropped mid-body (keep the claim until its lease ends, or give it back at once);
//! - **completion**: `complete_recorded` records the response by compare-and-set on the owner;
//! - [`Replayable`], the bound on a replayed response type;
//! - the duration options' defaults and floors, checked by each entry point first, in
//!   [`durations`].

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

/// Serializes `value` for replay and checks that it reads back as a `T`; the reason when it
/// cannot be stored.
pub(crate) fn storable<T: Serialize + DeserializeOwned>(
    value: &T,
    limit: usize,
) -> Result<Vec<u8>, String> {
    let bytes = serde_json::to_vec(value).map_err(|e| format!("it failed to serialize: {e}"))?;
    if bytes.len() > limit {
        return Err(format!(
            "it is {} bytes of JSON; the limit is {limit} (Options::max_response_bytes)",
            bytes.len()
        ));
    }
    serde_json::from_slice::<T>(&bytes)
        .map_err(|e| format!("it does not read back after serializing: {e}"))?;
    Ok(bytes)
}

/// The body succeeded: its response serialized for replay, or — when it cannot be kept (fails
/// to serialize, does not read back, exceeds `limit` bytes) — the "unstorable" marker, so the
/// record still completes and a retry never runs the body again (it gets
/// `Error::Serialization`).
pub(crate) fn response_bytes<T>(key: &crate::StorageKey, value: &T, limit: usize) -> Vec<u8>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    storable(value, limit).unwrap_or_else(|reason| {
        tracing::warn!(?key, %reason, "the response is not stored for replay; duplicates get Error::Serialization");
        [UNSTORABLE, reason.as_bytes()].concat()
    })
}

/// Reads a stored response back; [`Error::Serialization`] when the first call's response was
/// recorded as not storable.
pub(crate) fn replayed<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    match bytes.strip_prefix(UNSTORABLE) {
        Some(reason) => Err(Error::Serialization(format!(
            "the first call with this idempotency key succeeded, but its response was not stored for replay: {}",
            String::from_utf8_lossy(reason)
        ))),
        None => Ok(serde_json::from_slice(bytes)?),
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
pub(crate) async fn while_renewing<R, Fut>(
    lease: Duration,
    body: impl Future<Output = R>,
    renew: impl FnMut() -> Fut,
) -> R
where
    Fut: Future<Output = Result<bool, crate::Error>>,
{
    let mut body = std::pin::pin!(body);
    tokio::select! {
        biased;
        r = &mut body => r,
        () = keep_renewed(lease, renew) => body.await,
    }
}

/// Calls `renew` every `lease / 3` until it reports the claim lost (`Ok(false)`); never returns
/// while the claim is held. A failed renewal is logged and tried again at the next tick.
async fn keep_renewed<Fut>(lease: Duration, mut renew: impl FnMut() -> Fut)
where
    Fut: Future<Output = Result<bool, crate::Error>>,
{
    let every = (lease / 3).max(Duration::from_millis(1));
    loop {
        tokio::time::sleep(every).await;
        match renew().await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(
                    "the claim was lost before the body finished; completion will fail with LockLost"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing the claim failed; retrying at the next tick")
            }
        }
    }
}

/// Records a completed call with `complete` (a compare-and-set on the owner), trying up to 3
/// times on backend errors: the effect has happened, so a retry should replay, not re-run.
/// `Ok(())` marks the call executed; [`Error::LockLost`](crate::Error::LockLost) when the claim
/// is no longer this caller's; the last backend error otherwise.
pub(crate) async fn complete_recorded<Fut>(
    mut complete: impl FnMut() -> Fut,
) -> Result<(), crate::Error>
where
    Fut: Future<Output = Result<bool, crate::Error>>,
{
    let mut backoff = Backoff::new();
    let mut last = None;
    for _ in 0..3 {
        match complete().await {
            Ok(true) => {
                crate::error::record(crate::Disposition::Executed);
                return Ok(());
            }
            Ok(false) => return Err(crate::Error::LockLost),
            Err(e) => {
                last = Some(e);
                backoff.wait().await;
            }
        }
    }
    Err(last.unwrap_or(crate::Error::LockLost))
}
