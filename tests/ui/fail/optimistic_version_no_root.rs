//! `optimistic` without `version` and a key with two roots: no single `<root>.version` exists.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Req};

use sqlx::{SqliteConnection, SqlitePool};

#[idempotent(strategy = "optimistic", key = ["tenant", "req.id"], table = "accounts")]
pub async fn set_amount(
    pool: &SqlitePool,
    tenant: &str,
    req: &Req,
    #[tx] tx: &mut SqliteConnection,
) -> Result<(), AppError> {
    let _ = tx;
    Ok(())
}

fn main() {}
