//! `#[fence]` on a strategy that takes no lock and so issues no fencing token.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};
use sqlx::SqlitePool;

#[idempotent(strategy = "dedup_table", key = "req.id")]
pub async fn place(pool: &SqlitePool, req: &Req, #[fence] fence: u64) -> Result<Receipt, AppError> {
    todo!()
}

fn main() {}
