//! `state_machine` with only what it needs: `key`, `table`, `status_column`, `from`, `to` and a
//! `#[tx]` parameter.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Req};

use sqlx::{SqliteConnection, SqlitePool};

#[idempotent(
    strategy = "state_machine",
    key = "req.id",
    table = "shipments",
    status_column = "status",
    from = "PAID",
    to = "SHIPPED"
)]
pub async fn ship(
    pool: &SqlitePool,
    req: &Req,
    #[tx] tx: &mut SqliteConnection,
) -> Result<(), AppError> {
    sqlx::query("INSERT INTO shipped (id) VALUES (?)")
        .bind(&req.id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

pub fn main() {}
