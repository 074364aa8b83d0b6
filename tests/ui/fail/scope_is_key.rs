//! Conflicting options: the scope is also the key, so every tenant would share one record.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};
use sqlx::SqlitePool;

#[idempotent(strategy = "dedup_table", key = "req.tenant", scope = "req.tenant")]
pub async fn place(pool: &SqlitePool, req: &Req) -> Result<Receipt, AppError> {
    todo!()
}

fn main() {}
