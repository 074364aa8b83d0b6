//! A typo in a method a key calls (`to_strin` for `to_string`): rustc's error is at the key
//! string, with no suggestion that would replace the string by a bare method name.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt};
use sqlx::SqlitePool;

#[derive(serde::Serialize)]
pub struct Order {
    pub number: u64,
}

#[idempotent(strategy = "dedup_table", key = "order.number.to_strin()")]
pub async fn place(pool: &SqlitePool, order: &Order) -> Result<Receipt, AppError> {
    todo!()
}

fn main() {}
