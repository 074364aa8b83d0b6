//! The strategies. Each module has one entry point that generated code calls through
//! [`__private`](crate::__private).

use std::time::Duration;

pub mod dedup_table;
pub mod distributed_lock;
#[cfg(feature = "sqlx")]
pub(crate) mod guarded;
#[cfg(feature = "sqlx")]
pub mod optimistic;
#[cfg(feature = "sqlx")]
pub mod pessimistic;
#[cfg(feature = "sqlx")]
pub mod select_before_insert;
#[cfg(feature = "sqlx")]
pub mod state_machine;
pub mod token;
#[cfg(feature = "sqlx")]
pub mod unique_index;

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
