//! A key part whose type does not implement `KeyPart`.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt};
use sqlx::SqlitePool;

#[derive(serde::Serialize)]
pub struct OrderId(pub String);

#[derive(serde::Serialize)]
pub struct PlaceOrder {
    pub id: OrderId,
}

#[idempotent(strategy = "dedup_table", key = "req.id")]
pub async fn place(pool: &SqlitePool, req: &PlaceOrder) -> Result<Receipt, AppError> {
    todo!()
}

fn main() {}
