//! A method of a trait implementation (the trait declares a plain `async fn`).

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};

trait Orders {
    async fn place(&self, req: &Req) -> Result<Receipt, AppError>;
}

pub struct Svc {
    pub store: idempotent_runtime::MemoryStore,
}

impl Orders for Svc {
    #[idempotent(strategy = "dedup_table", key = "req.id", store = "self.store")]
    async fn place(&self, req: &Req) -> Result<Receipt, AppError> {
        Ok(Receipt {
            tenant: req.tenant.clone(),
            id: req.id.clone(),
            amount: req.amount,
            serial: 1,
        })
    }
}

pub fn main() {}
