//! The business-table strategies store no record: `scope` means nothing to them.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Req};

use sqlx::{SqliteConnection, SqlitePool};

#[idempotent(strategy = "pessimistic", key = "req.id", scope = "req.tenant", table = "payments")]
pub async fn pay(
    pool: &SqlitePool,
    req: &Req,
    #[tx] tx: &mut SqliteConnection,
) -> Result<(), AppError> {
    let _ = (req, tx);
    Ok(())
}

fn main() {}
