//! `done` written as a boolean instead of a list of states.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};
use sqlx::{SqliteConnection, SqlitePool};

#[idempotent(
    strategy = "state_machine",
    key = "req.id",
    table = "orders",
    status_column = "status",
    from = "PAID",
    to = "SHIPPED",
    done = true
)]
pub async fn ship(pool: &SqlitePool, req: &Req, #[tx] tx: &mut SqliteConnection) -> Result<Receipt, AppError> {
    let _ = tx;
    todo!()
}

fn main() {}
