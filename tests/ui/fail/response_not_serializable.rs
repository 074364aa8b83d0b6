//! A replaying strategy whose response type cannot be stored: `Order` is not `Serialize + DeserializeOwned`.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Req};
use sqlx::SqlitePool;

pub struct Order {
    pub id: u64,
}

#[idempotent(strategy = "dedup_table", key = "req.id")]
pub async fn place(pool: &SqlitePool, req: &Req) -> Result<Order, AppError> {
    todo!()
}

fn main() {}
