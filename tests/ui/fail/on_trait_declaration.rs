//! The attribute on a trait method declaration, which has no body to wrap.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};

pub trait Orders {
    #[idempotent(strategy = "dedup_table", key = "req.id")]
    async fn place(&self, req: &Req) -> Result<Receipt, AppError>;
}

fn main() {}
