//! A `#[tx]` parameter named `_tx` is still unused: the body cannot be atomic with the
//! strategy's transition unless it writes through it.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Req};
use sqlx::{SqliteConnection, SqlitePool};

#[idempotent(
    strategy = "state_machine",
    key = "req.id",
    table = "orders",
    status_column = "status",
    from = "PAID",
    to = "SHIPPED"
)]
pub async fn ship(pool: &SqlitePool, req: &Req, #[tx] _tx: &mut SqliteConnection) -> Result<(), AppError> {
    sqlx::query("INSERT INTO shipments (id) VALUES (?)")
        .bind(&req.id)
        .execute(pool)
        .await?;
    Ok(())
}

fn main() {}
