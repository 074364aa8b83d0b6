//! Issue 11 item 9: a connection parameter written without `#[tx]` next to a `dedup_table`
//! store is fingerprinted by default, and a connection is not `Serialize` (rustc then suggests
//! borrowing it mutably). The error is at the parameter: mark it `#[tx]` for transactional mode,
//! or leave it out of the fingerprint.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};
use sqlx::{SqliteConnection, SqlitePool};

#[idempotent(strategy = "dedup_table", key = "req.id")]
pub async fn place(
    pool: &SqlitePool,
    req: &Req,
    tx: &mut SqliteConnection,
) -> Result<Receipt, AppError> {
    sqlx::query("INSERT INTO orders (id) VALUES (?)")
        .bind(&req.id)
        .execute(&mut *tx)
        .await?;
    Ok(Receipt { tenant: req.tenant.clone(), id: req.id.clone(), amount: req.amount, serial: 1 })
}

fn main() {}
