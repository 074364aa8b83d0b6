//! `select_before_insert` with every option it takes: explicit `store`, `column`, `crate` and an
//! `on_duplicate` handler (called with every argument but `#[tx]`); plus a compound key whose
//! columns are the parts' last fields.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Req};

use sqlx::{SqliteConnection, SqlitePool};

/// Called for a duplicate instead of returning `Error::Duplicate`.
async fn already_placed(db: &SqlitePool, req: &Req) -> Result<i64, AppError> {
    let _ = db;
    Ok(req.amount)
}

#[idempotent(
    strategy = "select_before_insert",
    key = "req.id",
    store = "db",
    table = "orders",
    column = "order_id",
    on_duplicate = "already_placed",
    crate = "::idempotent_runtime"
)]
pub async fn place(
    db: &SqlitePool,
    req: &Req,
    #[tx] tx: &mut SqliteConnection,
) -> Result<i64, AppError> {
    sqlx::query("INSERT INTO orders (order_id, amount) VALUES (?, ?)")
        .bind(&req.id)
        .bind(req.amount)
        .execute(&mut *tx)
        .await?;
    Ok(req.amount)
}

#[idempotent(
    strategy = "select_before_insert",
    key = ["req.tenant", "req.id"],
    table = "orders"
)]
pub async fn place_per_tenant(
    pool: &SqlitePool,
    req: Req,
    #[tx] tx: &mut SqliteConnection,
) -> Result<(), AppError> {
    sqlx::query("INSERT INTO orders (tenant, id) VALUES (?, ?)")
        .bind(&req.tenant)
        .bind(&req.id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

pub fn main() {}
