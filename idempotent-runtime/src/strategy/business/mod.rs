//! The business-table strategies — [`select_before_insert`], [`pessimistic`], [`optimistic`],
//! [`unique_index`] and [`state_machine`] — which guard the application's own rows in the
//! body's transaction, and what they share: running the body in the strategy's transaction and
//! committing it, classifying the body's error by the database error inside it (through the
//! one classification in `store/sql/errors.rs`), and the bounded retry of a whole transaction
//! after a deadlock or a serialization failure — never inside the caller's transaction, where
//! the first such failure is returned as it is (only the caller can run its whole transaction
//! again).
//!
//! The strategies see databases only through the generic `TxStore` and
//! `BusinessBackend` traits (in `store::sql::business`).

use std::error::Error as StdError;

use super::Backoff;
use crate::Error;
use crate::error::{Disposition, record};
use crate::store::sql::TxStore;
use crate::store::sql::errors::{Class, classify, database_error};

pub mod optimistic;
pub mod pessimistic;
pub mod select_before_insert;
pub mod state_machine;
pub mod unique_index;

/// How many times one call runs its transaction before giving up with
/// [`Error::Contention`].
pub(crate) const MAX_ATTEMPTS: u32 = 10;

/// Counts the runs of one call's transaction, and knows whether it runs inside the caller's
/// transaction (then nothing is run again).
pub(crate) struct Retry {
    attempts: u32,
    backoff: Backoff,
    nested: bool,
}

impl Retry {
    /// A retry budget for a call whose store is inside the caller's transaction (`nested`,
    /// [`TxStore::in_callers_transaction`]) or not.
    pub(crate) fn new(nested: bool) -> Self {
        Retry {
            attempts: 0,
            backoff: Backoff::new(),
            nested,
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
        crate::telemetry::event(crate::telemetry::Decision::ContentionRetry);
        self.backoff.wait().await;
        Ok(())
    }

    /// After opening the transaction (`BEGIN`, or `SAVEPOINT` inside the caller's transaction)
    /// failed: `Ok(())` to try again when the failure is retryable and the transaction is the
    /// strategy's own, else the error.
    pub(crate) async fn on_begin_error(&mut self, e: Error) -> Result<(), Error> {
        if !self.nested && crate::store::sql::is_retryable(&e) {
            self.again(e.to_string()).await
        } else {
            Err(e)
        }
    }

    /// After one of the strategy's own statements failed and its transaction was dropped:
    /// `Ok(())` to run again when the failure is retryable, else the error. Inside the
    /// caller's transaction a retryable failure is returned at once, with `store` settled
    /// ([`TxStore::settle`]).
    async fn on_error<S: TxStore>(&mut self, e: Error, store: &mut S) -> Result<(), Error> {
        let retryable = {
            let dyn_e: &(dyn StdError + 'static) = &e;
            database_error(dyn_e).is_some_and(|d| classify(d) == Class::Retryable)
        };
        match (retryable, self.nested) {
            (true, false) => self.again(e.to_string()).await,
            (true, true) => {
                store.settle().await;
                Err(e)
            }
            (false, _) => Err(e),
        }
    }

    /// [`Retry::on_error`] for a sqlx error.
    pub(crate) async fn on_sqlx<S: TxStore>(
        &mut self,
        e: sqlx::Error,
        store: &mut S,
    ) -> Result<(), Error> {
        self.on_error(e.into(), store).await
    }

    /// Classifies the body's error by the database error in its source chain, after its
    /// transaction was rolled back. Inside the caller's transaction a retryable failure is the
    /// body's own error ([`BodyFailure::Other`]), returned as it is, with `store` settled.
    pub(crate) async fn body_failure<E: StdError + 'static, S: TxStore>(
        &self,
        e: &E,
        store: &mut S,
    ) -> BodyFailure {
        match body_failure(e) {
            BodyFailure::Retryable(_) if self.nested => {
                store.settle().await;
                BodyFailure::Other
            }
            failure => failure,
        }
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
fn body_failure<E: StdError + 'static>(e: &E) -> BodyFailure {
    let dyn_e: &(dyn StdError + 'static) = e;
    let Some(d) = database_error(dyn_e) else {
        return BodyFailure::Other;
    };
    match classify(d) {
        Class::Retryable => BodyFailure::Retryable(d.message().to_owned()),
        Class::Unique { constraint } => BodyFailure::Unique(constraint.map(str::to_owned)),
        Class::Other => BodyFailure::Other,
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
/// error returned; inside the caller's transaction at once); a failed body rolls the
/// transaction back and hands its error on for the strategy to classify with
/// [`Retry::body_failure`].
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
                let e = Error::from(e);
                if retry.nested || !crate::store::sql::is_retryable(&e) {
                    return Err(e);
                }
                retry.again(e.to_string()).await?;
                Ok(Ran::Again)
            }
        },
        Err(e) => {
            let _ = tx.rollback().await;
            Ok(Ran::Failed(e))
        }
    }
}
