//! `strategy = "pessimistic"`: lock the key's row, let the body re-check under the lock.
//!
//! `BEGIN; SELECT 1 FROM table WHERE key = ? FOR UPDATE` (SQLite: `BEGIN IMMEDIATE`, the
//! database's write lock; PostgreSQL first takes `pg_advisory_xact_lock` on a hash of (table,
//! key), which holds whether or not the row exists), then the body runs on that same
//! connection (`#[tx]`) holding the lock — it never needs a second pooled connection —
//! re-checks its precondition (has this payment been applied?) and either applies the effect
//! or returns `Error::Duplicate` itself. Commit on success, rollback on error. Concurrent calls
//! wait for the lock, then re-check.
//!
//! A row that does not exist yet: on PostgreSQL `FOR UPDATE` locks nothing, so the advisory
//! lock is what makes concurrent first calls wait for each other (no unique index needed).
//! On InnoDB the locking read locks the gap where the key would be (or, without an index on the
//! key, every row it scans and the gaps between them): two callers can both hold the gap and
//! deadlock when they insert; the victim runs the whole transaction again (body included:
//! `body` makes a fresh body closure for every run), finds the committed row, locks it, and the
//! body's re-check answers. A unique violation (a row inserted by a caller that did not go
//! through this strategy) reruns the same way. Deadlocks and serialization failures rerun at
//! most 10 (`MAX_ATTEMPTS`) times, a unique violation at most twice; then the error surfaces
//! ([`Error::Contention`], or the body's own).

use std::error::Error as StdError;

use sqlx::Database;

use super::{BodyFailure, Ran, Retry, run_and_commit};
use crate::Error;
use crate::store::sql::TxStore;
use crate::store::sql::business::{BusinessBackend, KeyValues, Target, query};

/// Reruns allowed after the body hit a unique violation.
const UNIQUE_RERUNS: u32 = 2;

/// Locks the row(s) of `target` with key `key` and runs `body` holding the lock, in one
/// transaction on one connection.
///
/// Returns what the body decides (its `Error::Duplicate` included). Errors:
/// [`Error::Contention`] after repeated deadlocks or serialization failures; the body's own;
/// [`Error::Backend`].
pub async fn run<S, K, T, E, F, B>(
    mut store: S,
    target: Target,
    key: K,
    mut body: F,
) -> Result<T, E>
where
    S: TxStore,
    S::Database: BusinessBackend,
    K: KeyValues<S::Database>,
    E: From<Error> + StdError + 'static,
    F: FnMut() -> B,
    B: AsyncFnOnce(&mut <S::Database as Database>::Connection) -> Result<T, E>,
{
    let key_lock = <S::Database as BusinessBackend>::key_lock_sql(target.table, K::COUNT);
    let lock = target.exists_sql::<S::Database>(<S::Database as BusinessBackend>::LOCK_FOR_UPDATE);
    let mut retry = Retry::new(store.in_callers_transaction());
    let mut unique_reruns = 0;
    loop {
        let mut tx = match store.begin().await {
            Ok(tx) => tx,
            Err(e) => {
                retry.on_begin_error(e).await?;
                continue;
            }
        };
        if let Some(key_lock) = &key_lock
            && let Err(e) =
                <S::Database as BusinessBackend>::execute(&mut *tx, key.bind_to(query(key_lock)))
                    .await
        {
            drop(tx);
            retry.on_sqlx(e, &mut store).await?;
            continue;
        }
        if let Err(e) =
            <S::Database as BusinessBackend>::fetch_exists(&mut *tx, key.bind_to(query(&lock)))
                .await
        {
            drop(tx);
            retry.on_sqlx(e, &mut store).await?;
            continue;
        }
        let e = match run_and_commit(tx, body(), &mut retry).await? {
            Ran::Committed(value) => return Ok(value),
            Ran::Again => continue,
            Ran::Failed(e) => e,
        };
        match retry.body_failure(&e, &mut store).await {
            BodyFailure::Retryable(last) => retry.again(last).await?,
            BodyFailure::Unique(_) if unique_reruns < UNIQUE_RERUNS => {
                unique_reruns += 1;
            }
            _ => return Err(e),
        }
    }
}
