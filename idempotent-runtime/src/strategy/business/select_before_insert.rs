//! `strategy = "select_before_insert"`: look for the key's row, insert only when absent.
//!
//! In one transaction: `SELECT 1 FROM table WHERE key = ?`; a row → duplicate
//! ([`Error::Duplicate`], or `on_duplicate` — the "update instead of insert" path); no row →
//! the body (the insert) runs on the same connection (`#[tx]`) and commits.
//!
//! The SELECT alone cannot stop two concurrent first calls: both see no row. **The key column
//! needs a unique index**; the loser's insert then fails (a unique violation after the winner
//! commits; on MariaDB under `innodb_snapshot_isolation`, error 1020 since the winner's row is
//! newer than the loser's snapshot), the transaction rolls back, the key is looked up again as
//! the latest committed data, and the loser gets a duplicate too — never the raw database
//! error. On SQLite the transaction starts with `BEGIN IMMEDIATE` like every writing
//! strategy's: calls take the database's write lock one at a time (waiting up to the busy
//! timeout), so a later call sees the earlier one's row.

use std::error::Error as StdError;

use sqlx::Database;

use super::{BodyFailure, Ran, Retry, run_and_commit};
use crate::Error;
use crate::store::sql::TxStore;
use crate::store::sql::business::{BusinessBackend, KeyValues, Target, query};

/// Runs `body` when no row of `target` has key `key`, in one transaction with the check.
///
/// Returns the body's result, or `on_duplicate()`'s when the row exists (the macro passes one
/// returning [`Error::Duplicate`]). A body failing with a unique violation or a serialization
/// failure is a duplicate when the key's row now exists; otherwise serialization failures rerun
/// the whole transaction (body included) up to the bound, then [`Error::Contention`] — except
/// inside the caller's transaction, where the first one is returned as it is. Other errors: the
/// body's own, [`Error::Backend`].
pub async fn run<S, K, T, E, F, B, D>(
    mut store: S,
    target: Target,
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
    let check = target.exists_sql::<S::Database>("");
    let recheck = target.exists_sql::<S::Database>(<S::Database as BusinessBackend>::READ_LATEST);
    let mut retry = Retry::new(store.in_callers_transaction());
    loop {
        let mut tx = match store.begin().await {
            Ok(tx) => tx,
            Err(e) => {
                retry.on_begin_error(e).await?;
                continue;
            }
        };
        let found =
            <S::Database as BusinessBackend>::fetch_exists(&mut *tx, key.bind_to(query(&check)))
                .await;
        match found {
            Ok(true) => {
                let _ = tx.rollback().await;
                return on_duplicate().await;
            }
            Ok(false) => {}
            Err(e) => {
                drop(tx);
                retry.on_sqlx(e, &mut store).await?;
                continue;
            }
        }
        let failure = match run_and_commit(tx, body(), &mut retry).await? {
            Ran::Committed(value) => return Ok(value),
            Ran::Again => continue,
            Ran::Failed(e) => e,
        };
        let retryable = match retry.body_failure(&failure, &mut store).await {
            BodyFailure::Other => return Err(failure),
            BodyFailure::Unique(_) => None,
            BodyFailure::Retryable(last) => Some(last),
        };
        let mut tx = store.begin_deferred().await?;
        let found =
            <S::Database as BusinessBackend>::fetch_exists(&mut *tx, key.bind_to(query(&recheck)))
                .await;
        let _ = tx.rollback().await;
        match (found, retryable) {
            (Ok(true), _) => return on_duplicate().await,
            (Ok(false), Some(last)) => retry.again(last).await?,
            (Ok(false), None) => return Err(failure),
            (Err(e), _) => return Err(Error::from(e).into()),
        }
    }
}
