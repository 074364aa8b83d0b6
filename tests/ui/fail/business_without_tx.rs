//! The business-table strategies run the body in their own transaction: a `#[tx]` parameter is
//! required.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Req};

use sqlx::SqlitePool;

#[idempotent(strategy = "select_before_insert", key = "req.id", table = "orders")]
pub async fn place(pool: &SqlitePool, req: &Req) -> Result<(), AppError> {
    let _ = req;
    Ok(())
}

fn main() {}
