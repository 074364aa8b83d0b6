//! An `on_cancel` policy that does not exist.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};
use sqlx::SqlitePool;

#[idempotent(strategy = "dedup_table", key = "req.id", on_cancel = "drop")]
pub async fn place(pool: &SqlitePool, req: &Req) -> Result<Receipt, AppError> {
    todo!()
}

fn main() {}
