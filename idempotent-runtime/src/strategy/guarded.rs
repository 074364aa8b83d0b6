//! What the five business-table strategies share: running the body in the strategy's
//! transaction and committing it, recognising database errors inside the body's own error
//! type, and the bounded retry of a whole transaction after a deadlock or a serialization
//! failure.

use std::error::Error as StdError;

use sqlx::error::{DatabaseError, ErrorKind};

use super::Backoff;
use crate::Error;
use crate::error::{Disposition, record};

/// How many times one call runs its transaction before giving up with
/// [`Error::Contention`].
pub(crate) const MAX_ATTEMPTS: u32 = 10;

/// The first database error in `e`'s source chain (`e` included): a `sqlx::Error::Database`,
/// the boxed database error itself (what `#[error(transparent)]` wrappers expose), a
/// backend-specific error type, or one inside [`Error::Backend`].
pub(crate) fn database_error<'a>(
    e: &'a (dyn StdError + 'static),
) -> Option<&'a (dyn DatabaseError + 'static)> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(sqlx::Error::Database(d)) = err.downcast_ref::<sqlx::Error>() {
            return Some(&**d);
        }
        if let Some(d) = err.downcast_ref::<Box<dyn DatabaseError>>() {
            return Some(&**d);
        }
        #[cfg(feature = "postgres")]
        if let Some(d) = err.downcast_ref::<sqlx::postgres::PgDatabaseError>() {
            return Some(d);
        }
        #[cfg(feature = "mysql")]
        if let Some(d) = err.downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
            return Some(d);
        }
        #[cfg(feature = "sqlite")]
        if let Some(d) = err.downcast_ref::<sqlx::sqlite::SqliteError>() {
            return Some(d);
        }
        if let Some(Error::Backend(inner)) = err.downcast_ref::<Error>() {
            let inner: &(dyn StdError + 'static) = &**inner;
            return database_error(inner);
        }
        current = err.source();
    }
    None
}

/// `true` for a deadlock or serialization failure (SQLSTATE 40001 — MySQL reports error 1213
/// with it — or 40P01) and SQLite's busy/locked codes: the transaction may be run again.
pub(crate) fn is_retryable(d: &dyn DatabaseError) -> bool {
    matches!(
        d.code().as_deref(),
        Some("40001" | "40P01" | "5" | "6" | "261" | "262" | "517")
    )
}

/// `true` for a unique or primary-key violation, by sqlx's error kind.
pub(crate) fn is_unique(d: &dyn DatabaseError) -> bool {
    d.kind() == ErrorKind::UniqueViolation
}

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
            database_error(dyn_e).is_some_and(is_retryable)
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
        Some(d) if is_retryable(d) => BodyFailure::Retryable(d.message().to_owned()),
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
