//! `unique_index` with only what it needs: `key`, `constraint` (or `table`) and a `#[tx]`
//! parameter.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Req};

use sqlx::{SqliteConnection, SqlitePool};

#[idempotent(strategy = "unique_index", key = "req.id", constraint = "orders_id_key")]
pub async fn create(
    pool: &SqlitePool,
    req: &Req,
    #[tx] tx: &mut SqliteConnection,
) -> Result<(), AppError> {
    sqlx::query("INSERT INTO orders (id, amount) VALUES (?, ?)")
        .bind(&req.id)
        .bind(req.amount)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// `table` alone: a unique violation counts as a duplicate when the key's row exists.
#[idempotent(strategy = "unique_index", key = "req.id", table = "orders")]
pub async fn create_by_table(
    pool: &SqlitePool,
    req: &Req,
    #[tx] tx: &mut SqliteConnection,
) -> Result<(), AppError> {
    sqlx::query("INSERT INTO orders (id) VALUES (?)")
        .bind(&req.id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

fn main() {}
