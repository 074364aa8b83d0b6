//! A typo in a key's field name (`cod` for `code`): rustc's error is at the key string, with no
//! suggestion that would replace the string by a bare `code` (not attribute syntax).

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt};
use sqlx::SqlitePool;

#[derive(serde::Serialize)]
pub struct Order {
    pub code: String,
}

#[idempotent(strategy = "dedup_table", key = "order.cod")]
pub async fn place(pool: &SqlitePool, order: &Order) -> Result<Receipt, AppError> {
    todo!()
}

fn main() {}
