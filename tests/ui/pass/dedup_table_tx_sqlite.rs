//! `dedup_table` in transactional mode (`#[tx]`) on SQLite: minimal, fullest, and on a connection.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};

use sqlx::{SqliteConnection, SqlitePool};

#[idempotent(strategy = "dedup_table", key = "req.id")]
pub async fn minimal(
    pool: &SqlitePool,
    req: &Req,
    #[tx] tx: &mut SqliteConnection,
) -> Result<Receipt, AppError> {
    sqlx::query("SELECT 1").execute(&mut *tx).await?;
    Ok(Receipt {
        tenant: req.tenant.clone(),
        id: req.id.clone(),
        amount: req.amount,
        serial: 1,
    })
}

#[idempotent(
    strategy = "dedup_table",
    key = "req.id",
    scope = "req.tenant",
    store = "db",
    name = "orders.place_tx",
    fingerprint = "req",
    lease = "10s",
    ttl = "7days",
    on_busy = "wait(2s)"
)]
pub async fn fullest(
    db: &SqlitePool,
    req: Req,
    #[tx] mut tx: &mut SqliteConnection,
) -> Result<Receipt, AppError> {
    sqlx::query("SELECT 1").execute(&mut *tx).await?;
    let _ = &mut tx;
    Ok(Receipt {
        tenant: req.tenant,
        id: req.id,
        amount: req.amount,
        serial: 1,
    })
}

/// The store is the caller's own connection: the claim goes in a SAVEPOINT of its transaction.
#[idempotent(strategy = "dedup_table", key = "req.id", store = "conn")]
pub async fn on_connection(
    conn: &mut SqliteConnection,
    req: &Req,
    #[tx] tx: &mut SqliteConnection,
) -> Result<Receipt, AppError> {
    sqlx::query("SELECT 1").execute(&mut *tx).await?;
    Ok(Receipt {
        tenant: req.tenant.clone(),
        id: req.id.clone(),
        amount: req.amount,
        serial: 1,
    })
}

pub fn main() {}
