//! The return type is not a `Result`: duplicates and backend errors need somewhere to go.

use idempotent_runtime::idempotent;
use idempotent_tests::{Receipt, Req};
use sqlx::SqlitePool;

#[idempotent(strategy = "dedup_table", key = "req.id")]
pub async fn place(pool: &SqlitePool, req: &Req) -> Receipt {
    todo!()
}

fn main() {}
