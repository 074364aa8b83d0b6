//! `optimistic` compares the version column with the version the caller read, so `version`
//! must be a value sqlx can bind; a `Duration` is not. One error, naming `version`.

use idempotent_runtime::idempotent;
use idempotent_tests::AppError;
use sqlx::{SqliteConnection, SqlitePool};

pub struct OrderRef {
    pub code: String,
    pub seen: std::time::Duration,
}

#[idempotent(strategy = "optimistic", key = "order.code", table = "orders", version = "order.seen")]
pub async fn add(
    pool: &SqlitePool,
    order: &OrderRef,
    #[tx] tx: &mut SqliteConnection,
) -> Result<(), AppError> {
    let _ = tx;
    Ok(())
}

fn main() {}
