//! A connection parameter written without `#[tx]` on a strategy that lends its transaction:
//! the error is at that parameter, says to add `#[tx]`, and names the store's connection type.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Req};
use sqlx::{SqliteConnection, SqlitePool};

#[idempotent(strategy = "select_before_insert", key = "req.id", table = "orders")]
pub async fn place(pool: &SqlitePool, req: &Req, tx: &mut SqliteConnection) -> Result<(), AppError> {
    let _ = tx;
    Ok(())
}

fn main() {}
