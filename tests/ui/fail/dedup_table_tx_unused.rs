//! `dedup_table` with `#[tx]` whose body writes through the pool: the write does not commit
//! with the idempotency record (and on SQLite waits for the record's write lock).

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};
use sqlx::{SqliteConnection, SqlitePool};

#[idempotent(strategy = "dedup_table", key = "req.id")]
pub async fn place(
    pool: &SqlitePool,
    req: &Req,
    #[tx] tx: &mut SqliteConnection,
) -> Result<Receipt, AppError> {
    sqlx::query("INSERT INTO orders (id) VALUES (?)")
        .bind(&req.id)
        .execute(pool)
        .await?;
    Ok(Receipt { tenant: req.tenant.clone(), id: req.id.clone(), amount: req.amount, serial: 1 })
}

fn main() {}
