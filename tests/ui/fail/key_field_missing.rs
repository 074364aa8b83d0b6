//! The key names a field `Req` does not have: rustc reports it at the key string.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};
use sqlx::SqlitePool;

#[idempotent(strategy = "dedup_table", key = "req.code")]
pub async fn place(pool: &SqlitePool, req: &Req) -> Result<Receipt, AppError> {
    todo!()
}

fn main() {}
