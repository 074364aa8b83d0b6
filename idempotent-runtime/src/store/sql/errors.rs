//! The one classification of database errors, for every SQL backend and strategy: what a
//! database error means (`Class`: retryable, a unique violation and the constraint that
//! raised it, or anything else) and the walk down an error's source chain to the database
//! error inside it.
//!
//! The codes themselves live in each backend's file (`postgres.rs`, `mysql.rs`, `sqlite.rs`,
//! each a `classify` over its own error type), reached through `classify`; nothing else in
//! the crate names an error code.

use std::error::Error as StdError;

use sqlx::error::{DatabaseError, ErrorKind};

use crate::Error;

/// What a database error means to a strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class<'a> {
    /// The transaction lost a race and may run again from its start: a deadlock or a
    /// serialization failure (PostgreSQL 40001/40P01, MySQL/MariaDB 1213 and SQLSTATE 40001,
    /// MariaDB 1020 under `innodb_snapshot_isolation`), SQLite busy/locked (primary codes 5 and
    /// 6 with every extended code, e.g. 261, 517, 773). On MySQL/MariaDB the server has already
    /// rolled the whole transaction back.
    Retryable,
    /// A unique or primary-key violation (by sqlx's [`ErrorKind`], never by message text), with
    /// the violated constraint's name where the backend reports one (PostgreSQL; MySQL/MariaDB
    /// and SQLite report none).
    Unique {
        /// The constraint (index) name, where reported.
        constraint: Option<&'a str>,
    },
    /// Anything else.
    Other,
}

/// Classifies `d` by the backend that raised it (each backend's file knows its own codes); an
/// error type no compiled-in backend recognises is a unique violation by sqlx's kind, or
/// [`Class::Other`].
pub(crate) fn classify<'a>(d: &'a (dyn DatabaseError + 'static)) -> Class<'a> {
    super::backend_classify(d).unwrap_or_else(|| match d.kind() {
        ErrorKind::UniqueViolation => Class::Unique {
            constraint: d.constraint(),
        },
        _ => Class::Other,
    })
}

/// `true` when `e` is a unique/primary-key violation ([`classify`]).
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if matches!(classify(&**d), Class::Unique { .. }))
}

/// `true` when `e` is a deadlock, a serialization failure, MariaDB's 1020 (record changed since
/// the transaction's snapshot) or SQLite busy/locked (`Class::Retryable`), after which the
/// whole transaction may be run again: an [`Error::Backend`] holding a
/// `sqlx::Error::Database`.
pub fn is_retryable(e: &Error) -> bool {
    let Error::Backend(source) = e else {
        return false;
    };
    let Some(sqlx::Error::Database(d)) = source.downcast_ref::<sqlx::Error>() else {
        return false;
    };
    classify(&**d) == Class::Retryable
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
