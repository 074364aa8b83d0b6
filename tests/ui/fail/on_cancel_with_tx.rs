//! `on_cancel` with `#[tx]`: a dropped transaction rolls back, claim included, so there is no
//! claim to keep or release.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};
use sqlx::{SqliteConnection, SqlitePool};

#[idempotent(strategy = "dedup_table", key = "req.id", on_cancel = "keep")]
pub async fn place(
    pool: &SqlitePool,
    req: &Req,
    #[tx] tx: &mut SqliteConnection,
) -> Result<Receipt, AppError> {
    sqlx::query("SELECT 1").execute(&mut *tx).await?;
    todo!()
}

fn main() {}
