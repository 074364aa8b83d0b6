//! `pessimistic` with only what it needs: `key`, `table` and a `#[tx]` parameter.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Req};

use sqlx::{SqliteConnection, SqlitePool};

#[idempotent(strategy = "pessimistic", key = "req.id", table = "payments")]
pub async fn pay(
    pool: &SqlitePool,
    req: &Req,
    #[tx] tx: &mut SqliteConnection,
) -> Result<(), AppError> {
    sqlx::query("INSERT INTO payments (id, amount) VALUES (?, ?)")
        .bind(&req.id)
        .bind(req.amount)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

pub fn main() {}
