//! `state_machine` needs the transition's target state `to`.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Req};

use sqlx::{SqliteConnection, SqlitePool};

#[idempotent(
    strategy = "state_machine",
    key = "req.id",
    table = "shipments",
    status_column = "status",
    from = "PAID"
)]
pub async fn ship(
    pool: &SqlitePool,
    req: &Req,
    #[tx] tx: &mut SqliteConnection,
) -> Result<(), AppError> {
    let _ = (req, tx);
    Ok(())
}

fn main() {}
