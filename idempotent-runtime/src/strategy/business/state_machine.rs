//! `strategy = "state_machine"`: a guarded state transition.
//!
//! In one transaction: `UPDATE table SET status = to WHERE key = ? AND status = from`. One row
//! → the body runs on the same connection (`#[tx]`) and commits with the transition. No row →
//! the row is read: at `to` or at one of the `done` states (those past `to`, e.g. `DELIVERED`
//! after `SHIPPED`: a retried ship whose first attempt succeeded) → [`Error::Duplicate`] (or
//! `on_duplicate`); in another state → [`Error::Conflict`]; absent → [`Error::NotFound`]. The
//! UPDATE always carries the previous state in its WHERE clause and `from != to` (checked at
//! compile time), so a matched row is a changed row on MySQL/MariaDB too. A body error rolls
//! back, restoring the state.

use std::error::Error as StdError;

use sqlx::Database;

use super::{BodyFailure, Ran, Retry, run_and_commit};
use crate::Error;
use crate::store::sql::TxStore;
use crate::store::sql::business::{BusinessBackend, KeyValues, SqlIdent, Target, query};

/// The transition a `state_machine` call makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The business table and its key column(s).
    pub target: Target,
    /// The status column (text).
    pub status_column: SqlIdent,
    /// The state the row must be in.
    pub from: &'static str,
    /// The state the row moves to.
    pub to: &'static str,
    /// Further states that count as already applied, besides `to` (which always does): the
    /// states a row reaches after `to` (`done = ["SHIPPED", "DELIVERED"]`). A row found in one
    /// of them answers [`Error::Duplicate`] instead of [`Error::Conflict`]. Empty: only `to`.
    pub done: &'static [&'static str],
}

/// Moves the row whose key columns equal `key` from `transition.from` to `transition.to`,
/// runs `body` in the same transaction and commits.
///
/// Returns the body's result. Errors: [`Error::Duplicate`] (via `on_duplicate`) when the row is
/// already at `to` or at one of `transition.done`; [`Error::Conflict`] naming the row's state when it is elsewhere;
/// [`Error::NotFound`] when there is no row; [`Error::Contention`] after repeated deadlocks or
/// serialization failures (each reruns the whole transaction, body included); the body's own
/// errors; [`Error::Backend`].
pub async fn run<S, K, T, E, F, B, D>(
    mut store: S,
    transition: Transition,
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
    let Transition {
        target,
        status_column,
        from,
        to,
        done,
    } = transition;
    let ph = <S::Database as BusinessBackend>::placeholder;
    let update = format!(
        "UPDATE {table} SET {s} = {p1} WHERE {key} AND {s} = {pn}",
        table = target.table.as_str(),
        s = status_column.as_str(),
        p1 = ph(1),
        key = target.key_predicate::<S::Database>(2),
        pn = ph(K::COUNT + 2),
    );
    let read = format!(
        "SELECT {s} FROM {table} WHERE {key}{latest}",
        s = status_column.as_str(),
        table = target.table.as_str(),
        key = target.key_predicate::<S::Database>(1),
        latest = <S::Database as BusinessBackend>::READ_LATEST,
    );
    let mut retry = Retry::new(store.in_callers_transaction());
    loop {
        let mut tx = match store.begin().await {
            Ok(tx) => tx,
            Err(e) => {
                retry.on_begin_error(e).await?;
                continue;
            }
        };
        let bind_text = <S::Database as BusinessBackend>::bind_text;
        let q = bind_text(key.bind_to(bind_text(query(&update), to)), from);
        let moved = match <S::Database as BusinessBackend>::execute(&mut *tx, q).await {
            Ok(n) => n,
            Err(e) => {
                drop(tx);
                retry.on_sqlx(e, &mut store).await?;
                continue;
            }
        };
        if moved == 0 {
            let state =
                <S::Database as BusinessBackend>::fetch_text(&mut *tx, key.bind_to(query(&read)))
                    .await;
            let _ = tx.rollback().await;
            let state = match state {
                Ok(s) => s,
                Err(e) => {
                    retry.on_sqlx(e, &mut store).await?;
                    continue;
                }
            };
            return match state {
                Some(Some(s)) if s == to || done.contains(&s.as_str()) => on_duplicate().await,
                Some(s) => Err(Error::Conflict(format!(
                    "{}.{} is {}, not {from}: cannot move it to {to}",
                    target.table.as_str(),
                    status_column.as_str(),
                    s.as_deref().map_or("NULL".to_owned(), |s| format!("`{s}`")),
                ))
                .into()),
                None => Err(Error::NotFound(format!(
                    "no row in {} with this key",
                    target.table.as_str()
                ))
                .into()),
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
