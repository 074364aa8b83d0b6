//! An error type that cannot hold `idempotent_runtime::Error`.

use idempotent_runtime::idempotent;
use idempotent_tests::{Receipt, Req};
use sqlx::SqlitePool;

#[derive(Debug)]
pub struct MyError;

#[idempotent(strategy = "dedup_table", key = "req.id")]
pub async fn place(pool: &SqlitePool, req: &Req) -> Result<Receipt, MyError> {
    todo!()
}

fn main() {}
