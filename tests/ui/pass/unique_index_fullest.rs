//! `unique_index` with every option it takes: `constraint` and `table`, explicit `store`,
//! `column`, `crate` and an `on_duplicate` handler; plus a compound key.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Req};

use sqlx::{SqliteConnection, SqlitePool};

async fn existing(db: &SqlitePool, req: &Req) -> Result<String, AppError> {
    let _ = db;
    Ok(req.id.clone())
}

#[idempotent(
    strategy = "unique_index",
    key = "req.id",
    store = "db",
    constraint = "orders_code_key",
    table = "orders",
    column = "code",
    on_duplicate = "existing",
    crate = "::idempotent_runtime"
)]
pub async fn create(
    db: &SqlitePool,
    req: &Req,
    #[tx] tx: &mut SqliteConnection,
) -> Result<String, AppError> {
    sqlx::query("INSERT INTO orders (code, amount) VALUES (?, ?)")
        .bind(&req.id)
        .bind(req.amount)
        .execute(&mut *tx)
        .await?;
    Ok(req.id.clone())
}

#[idempotent(
    strategy = "unique_index",
    key = ["req.tenant", "req.id"],
    table = "orders",
    constraint = "orders_tenant_id"
)]
pub async fn create_per_tenant(
    pool: &SqlitePool,
    req: &Req,
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
