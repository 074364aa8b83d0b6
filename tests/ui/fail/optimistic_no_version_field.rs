//! `optimistic` without `version` reads `<key root>.version`; here the key's root has no such
//! field, so the user must name the version the caller read.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Req};

use sqlx::{SqliteConnection, SqlitePool};

#[idempotent(strategy = "optimistic", key = "req.id", table = "accounts")]
pub async fn set_amount(
    pool: &SqlitePool,
    req: &Req,
    #[tx] tx: &mut SqliteConnection,
) -> Result<(), AppError> {
    let _ = tx;
    Ok(())
}

fn main() {}
