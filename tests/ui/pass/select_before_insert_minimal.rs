//! `select_before_insert` with only what it needs: `key`, `table` and a `#[tx]` parameter; the
//! store is the parameter named `pool` and the column is the key's last field (`id`).

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Req};

use sqlx::{SqliteConnection, SqlitePool};

#[idempotent(strategy = "select_before_insert", key = "req.id", table = "orders")]
pub async fn place(
    pool: &SqlitePool,
    req: &Req,
    #[tx] tx: &mut SqliteConnection,
) -> Result<i64, AppError> {
    sqlx::query("INSERT INTO orders (id, amount) VALUES (?, ?)")
        .bind(&req.id)
        .bind(req.amount)
        .execute(&mut *tx)
        .await?;
    Ok(req.amount)
}

pub fn main() {}
