//! `strategy = "optimistic"`: optimistic concurrency control on a version column.
//!
//! In one transaction: `UPDATE table SET version = version + 1 WHERE key = ? AND version = ?`
//! with the version the caller read; one row → the body runs on the same connection (`#[tx]`)
//! and everything commits together; no row → the key's row is looked up (as the latest committed
//! data): it exists, so the caller's version is stale, a duplicate ([`Error::Duplicate`], or
//! `on_duplicate`); it does not → [`Error::NotFound`], which a caller can tell from its own
//! retry. The update always bumps the version, so a call
//! whose new values equal the current ones still applies, and MySQL/MariaDB (which report
//! *matched* rows through sqlx) give the same answers. A body error rolls back, restoring the
//! version. Protocol: optimistic offline lock (Fowler, *PoEAA*); HTTP `If-Match` preconditions
//! (RFC 9110 §13.1.1).

use std::error::Error as StdError;

use sqlx::Database;
use sqlx::encode::Encode;
use sqlx::types::Type;

use super::{BodyFailure, Ran, Retry, run_and_commit};
use crate::Error;
use crate::store::sql::TxStore;
use crate::store::sql::business::{BindValue, BusinessBackend, KeyValues, SqlIdent, Target, query};

/// The version column's name: every table guarded by `optimistic` has an integer `version`.
pub const VERSION_COLUMN: SqlIdent = SqlIdent::new("version");

/// Bumps the version of the row whose key columns equal `key` if it still is
/// `expected_version`, then runs `body` in the same transaction and commits.
///
/// Returns the body's result; for a stale version, `on_duplicate()`'s (the macro passes one
/// returning [`Error::Duplicate`] unless `on_duplicate` is given); for a missing row
/// [`Error::NotFound`].
/// Deadlocks and serialization failures — in the UPDATE, the body or the commit — roll back and
/// run the whole transaction again, body included (`body` makes a fresh body closure for every run), at most
/// 10 (`MAX_ATTEMPTS`) times, then [`Error::Contention`]. Other errors:
/// the body's own, or [`Error::Backend`].
pub async fn run<S, K, V, T, E, F, B, D>(
    store: S,
    target: Target,
    key: K,
    expected_version: V,
    body: F,
    on_duplicate: D,
) -> Result<T, E>
where
    S: TxStore,
    S::Database: BusinessBackend,
    K: KeyValues<S::Database>,
    V: for<'t> Encode<'t, S::Database> + Type<S::Database> + Send + Sync,
    E: From<Error> + StdError + 'static,
    F: FnMut() -> B,
    B: AsyncFnOnce(&mut <S::Database as Database>::Connection) -> Result<T, E>,
    D: AsyncFnOnce() -> Result<T, E>,
{
    run_bound(store, target, key, &expected_version, body, on_duplicate).await
}

/// [`run`] with the expected version already checked to be bindable (how the generated code
/// passes it: see [`BindValue`]).
pub(crate) async fn run_bound<S, K, T, E, F, B, D>(
    mut store: S,
    target: Target,
    key: K,
    expected_version: &(dyn BindValue<S::Database> + '_),
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
    let sql = format!(
        "UPDATE {table} SET {v} = {v} + 1 WHERE {key} AND {v} = {p}",
        table = target.table.as_str(),
        v = VERSION_COLUMN.as_str(),
        key = target.key_predicate::<S::Database>(1),
        p = <S::Database as BusinessBackend>::placeholder(K::COUNT + 1),
    );
    let exists = target.exists_sql::<S::Database>(<S::Database as BusinessBackend>::READ_LATEST);
    let mut retry = Retry::new(store.in_callers_transaction());
    loop {
        let mut tx = match store.begin().await {
            Ok(tx) => tx,
            Err(e) => {
                retry.on_begin_error(e).await?;
                continue;
            }
        };
        let q = expected_version.bind_into(key.bind_to(query(&sql)));
        let bumped = match <S::Database as BusinessBackend>::execute(&mut *tx, q).await {
            Ok(n) => n,
            Err(e) => {
                drop(tx);
                retry.on_sqlx(e, &mut store).await?;
                continue;
            }
        };
        if bumped == 0 {
            let found = <S::Database as BusinessBackend>::fetch_exists(
                &mut *tx,
                key.bind_to(query(&exists)),
            )
            .await;
            let _ = tx.rollback().await;
            return match found {
                Ok(true) => on_duplicate().await,
                Ok(false) => Err(Error::NotFound(format!(
                    "no row in {} with this key",
                    target.table.as_str()
                ))
                .into()),
                Err(e) => {
                    retry.on_sqlx(e, &mut store).await?;
                    continue;
                }
            };
        }
        let e = match run_and_commit(tx, body(), &mut retry).await? {
            Ran::Committed(value) => return Ok(value),
            Ran::Again => continue,
            Ran::Failed(e) => e,
        };
        match retry.body_failure(&e, &mut store).await {
            BodyFailure::Retryable(last) => retry.again(last).await?,
            _ => return Err(e),
        }
    }
}
