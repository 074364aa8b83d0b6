//! `pessimistic` with every option it takes: explicit `store`, `column` and `crate`.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Req};

use sqlx::{SqliteConnection, SqlitePool};

#[idempotent(
    strategy = "pessimistic",
    key = "req.tenant",
    store = "db",
    table = "wallets",
    column = "wallet_id",
    crate = "::idempotent_runtime"
)]
pub async fn debit(
    db: &SqlitePool,
    req: &Req,
    #[tx] tx: &mut SqliteConnection,
) -> Result<u64, AppError> {
    let done = sqlx::query("UPDATE wallets SET balance = balance - ? WHERE wallet_id = ?")
        .bind(req.amount)
        .bind(&req.tenant)
        .execute(&mut *tx)
        .await?;
    Ok(done.rows_affected())
}

pub fn main() {}
