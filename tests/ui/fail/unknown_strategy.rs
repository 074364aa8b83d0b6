//! An unknown strategy: the error lists the valid ones and suggests the closest.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};
use sqlx::SqlitePool;

#[idempotent(strategy = "dedup", key = "req.id")]
pub async fn place(pool: &SqlitePool, req: &Req) -> Result<Receipt, AppError> {
    todo!()
}

fn main() {}
