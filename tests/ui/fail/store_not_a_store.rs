//! The store is not a backend: a `&str` connection string cannot keep claims.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};

#[idempotent(strategy = "dedup_table", key = "req.id", store = "url")]
pub async fn place(url: &str, req: &Req) -> Result<Receipt, AppError> {
    todo!()
}

fn main() {}
