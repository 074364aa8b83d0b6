//! A lease just below the floor (300 ms): renewal every lease/3 could not keep the claim.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};
use sqlx::SqlitePool;

#[idempotent(strategy = "dedup_table", key = "req.id", lease = "299ms")]
pub async fn place(pool: &SqlitePool, req: &Req) -> Result<Receipt, AppError> {
    todo!()
}

fn main() {}
