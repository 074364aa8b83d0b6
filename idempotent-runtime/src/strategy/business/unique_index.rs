//! `strategy = "unique_index"`: the business table's unique index is the claim.
//!
//! The body runs in a transaction (a SAVEPOINT when the store is a connection already inside the
//! caller's transaction, which therefore stays usable on PostgreSQL) and inserts the row keyed
//! by the idempotency key. If its insert violates the unique index *on the key* the transaction
//! rolls back and the call is a duplicate ([`Error::Duplicate`], or `on_duplicate`). A
//! violation counts only when sqlx's error kind is `UniqueViolation` and
//! - the constraint the backend names (PostgreSQL does; MySQL and SQLite do not) is the
//!   configured `constraint`, and
//! - when `table` is configured, a row with the key now exists (read after the rollback, as the
//!   latest committed data).
//!
//! So a NOT NULL, foreign-key or CHECK violation, or a violation of another unique index with
//! a fresh key, stays the body's error. Message text is never inspected.
//!
//! MySQL/MariaDB and SQLite report no constraint name, so there the `table` check is the only
//! one that tells the key's violation from another unique column's: `constraint` without
//! `table` on them is refused with [`Error::Unsupported`] before anything runs (the macro
//! cannot refuse it, since it does not know the store's database when it expands). Neither
//! `constraint` nor `table` is refused on every backend.

use std::error::Error as StdError;

use sqlx::Database;

use super::{BodyFailure, Ran, Retry, run_and_commit};
use crate::Error;
use crate::store::sql::TxStore;
use crate::store::sql::business::{BusinessBackend, KeyValues, SqlIdent, Target, query};

/// Which unique violation means "duplicate".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Options {
    /// The unique index / constraint on the key, compared where the backend reports
    /// constraint names (PostgreSQL).
    pub constraint: Option<SqlIdent>,
    /// The business table and key column(s): after a violation, the key's row must exist.
    pub target: Option<Target>,
}

/// Runs `body` in a transaction and commits; a unique violation on the key is a duplicate.
///
/// Returns the body's result, or `on_duplicate()`'s (the macro passes one returning
/// [`Error::Duplicate`]). [`Error::Unsupported`], before any statement, when `options` cannot
/// tell the key's violation from another's on this backend: no `target` where the backend
/// names no constraints (MySQL/MariaDB, SQLite), or neither `constraint` nor `target`. Deadlocks and serialization failures rerun the whole transaction,
/// body included, then give up with [`Error::Contention`]. Other errors: the body's own
/// (including unique violations that are not on the key), [`Error::Backend`].
pub async fn run<S, K, T, E, F, B, D>(
    mut store: S,
    options: Options,
    key: K,
    mut body: F,
    on_duplicate: D,
) -> Result<T, E>
where
    S: TxStore,
    S::Database: BusinessBackend,
    K: KeyValues<S::Database>,
    E: From<Error> + StdError + 'static,
    F: FnMut() -> B,
    B: AsyncFnOnce(&mut <S::Database as Database>::Connection) -> Result<T, E>,
    D: AsyncFnOnce() -> Result<T, E>,
{
    if options.target.is_none() {
        let why = match options.constraint {
            None => Some(
                "unique_index needs `table` (the key's row must exist after a unique violation) or `constraint`: otherwise any unique violation would count as a duplicate"
                    .to_owned(),
            ),
            Some(c) if !<S::Database as BusinessBackend>::NAMES_CONSTRAINTS => Some(format!(
                "unique_index with constraint = \"{}\" needs `table` on {}: it does not report which constraint a unique violation broke, so a violation of another unique column would count as a duplicate and that request would be lost; add table = \"...\" (and column, if not the key's last field) naming the key's table",
                c.as_str(),
                <S::Database as sqlx::Database>::NAME,
            )),
            Some(_) => None,
        };
        if let Some(why) = why {
            return Err(Error::Unsupported(why).into());
        }
    }
    let exists = options
        .target
        .map(|t| t.exists_sql::<S::Database>(<S::Database as BusinessBackend>::READ_LATEST));
    let mut retry = Retry::new(store.in_callers_transaction());
    loop {
        let tx = match store.begin().await {
            Ok(tx) => tx,
            Err(e) => {
                retry.on_begin_error(e).await?;
                continue;
            }
        };
        let failure = match run_and_commit(tx, body(), &mut retry).await? {
            Ran::Committed(value) => return Ok(value),
            Ran::Again => continue,
            Ran::Failed(e) => e,
        };
        match retry.body_failure(&failure, &mut store).await {
            BodyFailure::Retryable(last) => retry.again(last).await?,
            BodyFailure::Unique(reported) => {
                let same_constraint = match (reported.as_deref(), options.constraint) {
                    (Some(reported), Some(ours)) => reported == ours.as_str(),
                    _ => true,
                };
                if !same_constraint {
                    return Err(failure);
                }
                let Some(sql) = &exists else {
                    return on_duplicate().await;
                };
                let mut tx = store.begin_deferred().await?;
                let found = <S::Database as BusinessBackend>::fetch_exists(
                    &mut *tx,
                    key.bind_to(query(sql)),
                )
                .await;
                let _ = tx.rollback().await;
                return match found {
                    Ok(true) => on_duplicate().await,
                    Ok(false) => Err(failure),
                    Err(e) => Err(Error::from(e).into()),
                };
            }
            BodyFailure::Other => return Err(failure),
        }
    }
}
