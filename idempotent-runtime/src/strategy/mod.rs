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

/// The body succeeded: its response serialized for replay, or — when it cannot be kept (fails
/// to serialize, does not read back, exceeds `limit` bytes) — the "unstorable" marker, so the
/// record still completes and a retry never runs the body again (it gets
/// `Error::Serialization`).
pub(crate) fn response_bytes<T>(key: &crate::StorageKey, value: &T, limit: usize) -> Vec<u8>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    dedup_table::storable(value, limit).unwrap_or_else(|reason| {
        tracing::warn!(?key, %reason, "the response is not stored for replay; duplicates get Error::Serialization");
        [dedup_table::UNSTORABLE, reason.as_bytes()].concat()
    })
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
