//! The strategies, in two families, each with one entry point that generated code calls
//! through [`__private`](crate::__private):
//!
//! - [`replaying`]: [`dedup_table`], [`distributed_lock`] and [`token`] claim a key in a store,
//!   run the body and store its response, which later duplicates get back. Their shared
//!   protocol (replay codec, lease renewal, drop guard, completion, busy-wait) is
//!   [`replaying`]'s own module.
//! - `business` (feature `sqlx`): `select_before_insert`, `pessimistic`, `optimistic`,
//!   `unique_index` and `state_machine` guard the application's own rows in the body's
//!   transaction; their transaction run/retry loop is `business`'s own module.
//!
//! Each strategy stays reachable at `strategy::<name>`. This file holds what both families
//! share: [`OnBusy`], [`OnCancel`] and the backoff.

use std::time::Duration;

#[cfg(feature = "sqlx")]
pub mod business;
pub mod replaying;

// Every strategy module (and each family's public items) at `strategy::<name>`, so adding a
// strategy touches its family only.
#[cfg(feature = "sqlx")]
pub use business::*;
pub use replaying::*;

/// What a concurrent duplicate gets while another caller's claim on the same key is in progress
/// (`on_busy = "reject"` or `on_busy = "wait(5s)"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnBusy {
    /// Return [`Error::InProgress`](crate::Error::InProgress) at once (the default).
    #[default]
    Reject,
    /// Poll (5 ms, doubling up to 100 ms) until the in-progress call completes, then replay its
    /// response; give up with [`Error::WaitTimeout`](crate::Error::WaitTimeout) after this long.
    Wait(Duration),
}

/// What happens to a claim, lock or consumed token when the caller's future is dropped (a
/// client timeout, `tokio::time::timeout`, an aborted task) while the body is still running
/// (`on_cancel = "keep"` or `on_cancel = "release"`). Only for the claim-mode strategies:
/// `dedup_table` without `#[tx]` (with `#[tx]` a dropped transaction rolls back, so there is
/// nothing to keep), `distributed_lock` and `token`.
///
/// The dropped body may have stopped anywhere, its effect half done (a payment sent, its reply
/// not yet read). The two choices trade a second run against a blocked key:
///
/// - [`Keep`](OnCancel::Keep) never runs the body a second time on its own: the key stays held
///   until the lease ends, and nobody renews it because the future is gone.
/// - [`Release`](OnCancel::Release) frees the key at once, so a retry does not wait, but that
///   retry runs the body again while the first run's effect may already have happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnCancel {
    /// Leave the claim, lock or consumed token in place until its lease ends (the default). An
    /// immediate retry gets what a concurrent duplicate gets — [`Error::InProgress`]
    /// (`dedup_table`, `distributed_lock`; or it waits, `on_busy = "wait(..)"`) or
    /// [`Error::Duplicate`] (`token`) — instead of a second run; after the lease the key is
    /// free and the next call runs the body. Choose a lease no longer than a retry may wait.
    ///
    /// [`Error::InProgress`]: crate::Error::InProgress
    /// [`Error::Duplicate`]: crate::Error::Duplicate
    #[default]
    Keep,
    /// Release the claim or lock (restore the token to issued) in the background at once, so
    /// an immediate retry runs the body — a second run if the first one's effect had already
    /// happened. A retry racing the background release may still see the key held briefly.
    Release,
}

/// Bounded exponential backoff for polling and transaction retries.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff {
            next: Duration::from_millis(5),
            max: Duration::from_millis(100),
        }
    }

    /// The pause the next [`wait`](Self::wait) takes.
    pub(crate) fn next(&self) -> Duration {
        self.next
    }

    pub(crate) async fn wait(&mut self) {
        // On the heap: a timer is ~100 bytes, and every future that may back off (each store
        // step of a claim loop) would otherwise carry one inline, copied on every call.
        Box::pin(tokio::time::sleep(self.next)).await;
        self.next = (self.next * 2).min(self.max);
    }
}
