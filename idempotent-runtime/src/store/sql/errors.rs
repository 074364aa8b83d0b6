//! The one classification of database errors, for every SQL backend and strategy: a unique
//! violation (by sqlx's [`ErrorKind`], never by message text), a retryable failure (deadlock or
//! serialization failure, SQLite busy/locked), and the walk down an error's source chain to the
//! database error inside it.

use std::error::Error as StdError;

use sqlx::error::{DatabaseError, ErrorKind};

use crate::Error;

/// `true` when `e` is a unique/primary-key violation, judged by sqlx's
/// [`ErrorKind`], never by message text.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if is_unique(&**d))
}

/// `true` for a unique or primary-key violation, by sqlx's error kind.
pub(crate) fn is_unique(d: &dyn DatabaseError) -> bool {
    d.kind() == ErrorKind::UniqueViolation
}

/// `true` for a deadlock or serialization failure (SQLSTATE 40001 — MySQL reports error 1213
/// with it — or 40P01) and SQLite's busy/locked codes (5, 6, 261, 262, 517): the transaction
/// may be run again.
pub(crate) fn is_transient(d: &dyn DatabaseError) -> bool {
    matches!(
        d.code().as_deref(),
        Some("40001" | "40P01" | "5" | "6" | "261" | "262" | "517")
    )
}

/// `true` when `e` is a deadlock or serialization failure (SQLSTATE 40001, which MySQL uses for
/// error 1213, or 40P01) or SQLite's busy/locked, after which the whole transaction may be
/// retried: an [`Error::Backend`] holding a `sqlx::Error::Database`.
pub fn is_retryable(e: &Error) -> bool {
    let Error::Backend(source) = e else {
        return false;
    };
    let Some(sqlx::Error::Database(d)) = source.downcast_ref::<sqlx::Error>() else {
        return false;
    };
    is_transient(&**d)
}

/// The first database error in `e`'s source chain (`e` included): a `sqlx::Error::Database`,
/// the boxed database error itself (what `#[error(transparent)]` wrappers expose), a
/// backend-specific error type (each backend's file recognises its own), or one inside
/// [`Error::Backend`].
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
        if let Some(d) = super::backend_database_error(err) {
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
