//! The store starts from a name that is not a parameter (a global, say).

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};

#[idempotent(strategy = "dedup_table", key = "req.id", store = "POOL")]
pub async fn place(req: &Req) -> Result<Receipt, AppError> {
    todo!()
}

fn main() {}
