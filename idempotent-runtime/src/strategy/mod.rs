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
//! share: [`OnBusy`] and the backoff.

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

    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(self.max);
    }
}
