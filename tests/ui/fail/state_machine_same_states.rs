//! Conflicting options: a transition from a state to itself.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};
use sqlx::{SqliteConnection, SqlitePool};

#[idempotent(
    strategy = "state_machine",
    key = "req.id",
    table = "orders",
    status_column = "status",
    from = "PAID",
    to = "PAID"
)]
pub async fn ship(pool: &SqlitePool, req: &Req, #[tx] tx: &mut SqliteConnection) -> Result<Receipt, AppError> {
    sqlx::query("SELECT 1").execute(&mut *tx).await?;
    todo!()
}

fn main() {}
