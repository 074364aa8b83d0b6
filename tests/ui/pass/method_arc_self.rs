//! A method on `self: Arc<Self>` (a service shared across tasks), its store the field `self.db`.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};

use std::sync::Arc;

pub struct Svc {
    pub db: idempotent_runtime::MemoryStore,
}

impl Svc {
    #[idempotent(strategy = "dedup_table", key = "req.id", store = "self.db")]
    pub async fn place(self: Arc<Self>, req: Req) -> Result<Receipt, AppError> {
        let _ = &self.db;
        Ok(Receipt {
            tenant: req.tenant,
            id: req.id,
            amount: req.amount,
            serial: 1,
        })
    }
}

pub fn main() {}
