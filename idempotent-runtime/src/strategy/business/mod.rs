//! The business-table strategies — [`select_before_insert`], [`pessimistic`], [`optimistic`],
//! [`unique_index`] and [`state_machine`] — which guard the application's own rows in the
//! body's transaction, and what they share: running the body in the strategy's transaction and
//! committing it, classifying the body's error by the database error inside it (through the
//! one classification in `store/sql/errors.rs`), and the bounded retry of a whole transaction
//! after a deadlock or a serialization failure.
//!
//! The strategies see databases only through the generic [`TxStore`](crate::TxStore) and
//! [`BusinessBackend`](crate::store::sql::business::BusinessBackend) traits.

use std::error::Error as StdError;

use super::Backoff;
use crate::Error;
use crate::error::{Disposition, record};
use crate::store::sql::errors::{database_error, is_transient, is_unique};

pub mod optimistic;
pub mod pessimistic;
pub mod select_before_insert;
pub mod state_machine;
pub mod unique_index;

/// How many times one call runs its transaction before giving up with
/// [`Error::Contention`].
pub(crate) const MAX_ATTEMPTS: u32 = 10;

/// Counts the runs of one call's transaction.
pub(crate) struct Retry {
    attempts: u32,
    backoff: Backoff,
}

impl Retry {
    pub(crate) fn new() -> Self {
        Retry {
            attempts: 0,
            backoff: Backoff::new(),
        }
    }

    /// Another run after `last` failed: waits a little, or gives up with
    /// [`Error::Contention`] once [`MAX_ATTEMPTS`] runs failed.
    pub(crate) async fn again(&mut self, last: String) -> Result<(), Error> {
        self.attempts += 1;
        if self.attempts >= MAX_ATTEMPTS {
            return Err(Error::Contention {
                attempts: self.attempts,
                last,
            });
        }
        tracing::debug!(attempt = self.attempts, error = %last, "retrying the transaction");
        self.backoff.wait().await;
        Ok(())
    }

    /// After one of the strategy's own statements failed: `Ok(())` to run again when the
    /// failure is retryable, else the error.
    pub(crate) async fn on_error(&mut self, e: Error) -> Result<(), Error> {
        let retryable = {
            let dyn_e: &(dyn StdError + 'static) = &e;
            database_error(dyn_e).is_some_and(is_transient)
        };
        if retryable {
            self.again(e.to_string()).await
        } else {
            Err(e)
        }
    }

    /// [`Retry::on_error`] for a sqlx error.
    pub(crate) async fn on_sqlx(&mut self, e: sqlx::Error) -> Result<(), Error> {
        self.on_error(e.into()).await
    }
}

/// How the body's error relates to the database.
pub(crate) enum BodyFailure {
    /// A deadlock or serialization failure: run the transaction again.
    Retryable(String),
    /// A unique violation, with the constraint's name where the backend reports it.
    Unique(Option<String>),
    /// Anything else: the body's own error.
    Other,
}

/// Classifies the body's error by the database error in its source chain.
pub(crate) fn body_failure<E: StdError + 'static>(e: &E) -> BodyFailure {
    let dyn_e: &(dyn StdError + 'static) = e;
    match database_error(dyn_e) {
        Some(d) if is_transient(d) => BodyFailure::Retryable(d.message().to_owned()),
        Some(d) if is_unique(d) => BodyFailure::Unique(d.constraint().map(str::to_owned)),
        _ => BodyFailure::Other,
    }
}

/// What running the body in the strategy's transaction came to.
pub(crate) enum Ran<T, E> {
    /// The body succeeded and the transaction committed (recorded as executed).
    Committed(T),
    /// The commit failed with a retryable error, already waited for: run the whole
    /// transaction again.
    Again,
    /// The body failed; the transaction was rolled back.
    Failed(E),
}

/// Runs `body` on `tx` and commits. A commit that fails is retried through `retry` (or its
/// error returned); a failed body rolls the transaction back and hands its error on for the
/// strategy to classify with [`body_failure`].
pub(crate) async fn run_and_commit<DB, T, E, B>(
    mut tx: sqlx::Transaction<'_, DB>,
    body: B,
    retry: &mut Retry,
) -> Result<Ran<T, E>, Error>
where
    DB: sqlx::Database,
    B: AsyncFnOnce(&mut DB::Connection) -> Result<T, E>,
{
    match body(&mut *tx).await {
        Ok(value) => match tx.commit().await {
            Ok(()) => {
                record(Disposition::Executed);
                Ok(Ran::Committed(value))
            }
            Err(e) => {
                retry.on_sqlx(e).await?;
                Ok(Ran::Again)
            }
        },
        Err(e) => {
            let _ = tx.rollback().await;
            Ok(Ran::Failed(e))
        }
    }
}
