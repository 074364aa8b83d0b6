//! A `#[tx]` connection type for another database than the store.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};
use sqlx::SqlitePool;

#[idempotent(strategy = "dedup_table", key = "req.id")]
pub async fn place(
    pool: &SqlitePool,
    req: &Req,
    #[tx] tx: &mut sqlx::PgConnection,
) -> Result<Receipt, AppError> {
    sqlx::query("SELECT 1").execute(&mut *tx).await?;
    todo!()
}

fn main() {}
