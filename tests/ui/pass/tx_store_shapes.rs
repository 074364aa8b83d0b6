//! The shapes a `#[tx]` store may take: `&Pool`, `&&Pool`, `&mut Pool`, a `&mut` connection,
//! and a generic `&Pool<DB>`.

use idempotent_runtime::{SqlBackend, idempotent};
use idempotent_tests::{AppError, Receipt, Req};
use sqlx::{SqliteConnection, SqlitePool};

#[idempotent(strategy = "unique_index", key = "req.id", table = "orders")]
pub async fn by_ref_ref(
    pool: &&SqlitePool,
    req: &Req,
    #[tx] tx: &mut SqliteConnection,
) -> Result<(), AppError> {
    let _ = tx;
    Ok(())
}

#[idempotent(strategy = "unique_index", key = "req.id", table = "orders")]
pub async fn by_mut(
    pool: &mut SqlitePool,
    req: &Req,
    #[tx] tx: &mut SqliteConnection,
) -> Result<(), AppError> {
    let _ = tx;
    Ok(())
}

#[idempotent(strategy = "dedup_table", key = "req.id", store = "conn")]
pub async fn on_connection(
    conn: &mut SqliteConnection,
    req: &Req,
    #[tx] tx: &mut SqliteConnection,
) -> Result<Receipt, AppError> {
    let _ = tx;
    Ok(Receipt {
        tenant: req.tenant.clone(),
        id: req.id.clone(),
        amount: req.amount,
        serial: 1,
    })
}

#[idempotent(strategy = "dedup_table", key = "req.id")]
pub async fn generic<DB: SqlBackend>(
    pool: &sqlx::Pool<DB>,
    req: &Req,
    #[tx] tx: &mut DB::Connection,
) -> Result<i64, AppError> {
    let _ = tx;
    Ok(req.amount)
}

pub fn main() {}
