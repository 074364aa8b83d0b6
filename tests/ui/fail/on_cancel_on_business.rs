//! `on_cancel` means nothing to a business-table strategy: its claim is the body's own
//! transaction, which a dropped future rolls back.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Req};
use sqlx::{SqliteConnection, SqlitePool};

#[idempotent(strategy = "unique_index", key = "req.id", table = "orders", on_cancel = "release")]
pub async fn place(pool: &SqlitePool, req: &Req, #[tx] tx: &mut SqliteConnection) -> Result<(), AppError> {
    let _ = (req, tx);
    Ok(())
}

fn main() {}
