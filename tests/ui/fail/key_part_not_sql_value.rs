//! A business-table strategy compares the key with its column, so each key part must be a
//! value sqlx can bind; a `Duration` is not.

use idempotent_runtime::idempotent;
use idempotent_tests::AppError;
use sqlx::{SqliteConnection, SqlitePool};

pub struct Shipment {
    pub window: std::time::Duration,
}

#[idempotent(strategy = "select_before_insert", key = "s.window", table = "shipments")]
pub async fn ship(
    pool: &SqlitePool,
    s: &Shipment,
    #[tx] tx: &mut SqliteConnection,
) -> Result<(), AppError> {
    let _ = tx;
    Ok(())
}

fn main() {}
