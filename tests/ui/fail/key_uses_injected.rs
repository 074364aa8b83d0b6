//! The key is read from the injected transaction, which the caller does not pass.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};
use sqlx::SqlitePool;

#[idempotent(strategy = "dedup_table", key = "tx.id")]
pub async fn place(
    pool: &SqlitePool,
    req: &Req,
    #[tx] tx: &mut sqlx::SqliteConnection,
) -> Result<Receipt, AppError> {
    sqlx::query("SELECT 1").execute(&mut *tx).await?;
    todo!()
}

fn main() {}
