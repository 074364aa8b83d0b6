//! The shortest use: a free function, `store` defaulting to the parameter named `pool`.

use idempotent_runtime::idempotent;
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;

#[derive(Debug)]
pub enum AppError {
    Idempotency(idempotent_runtime::Error),
}

impl From<idempotent_runtime::Error> for AppError {
    fn from(e: idempotent_runtime::Error) -> Self {
        AppError::Idempotency(e)
    }
}

#[derive(Serialize)]
pub struct PlaceOrder {
    pub request_id: String,
}

#[derive(Serialize, Deserialize)]
pub struct Receipt {
    pub order_id: u64,
}

#[idempotent(strategy = "dedup_table", key = "req.request_id")]
pub async fn place_order(pool: &SqlitePool, req: &PlaceOrder) -> Result<Receipt, AppError> {
    let _ = (pool, req);
    Ok(Receipt { order_id: 1 })
}

pub fn main() {}
