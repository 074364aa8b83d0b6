//! No `store`, and no parameter named or typed like a store: the error says what `store` names
//! (an expression giving a pool or store) rather than suggesting a parameter that is not there.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};

pub struct Backend;

#[idempotent(strategy = "dedup_table", key = "req.id")]
pub async fn place(backend: &Backend, req: &Req) -> Result<Receipt, AppError> {
    let _ = backend;
    todo!()
}

fn main() {}
