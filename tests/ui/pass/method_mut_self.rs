//! An inherent method on `&mut self` that changes `self` in its body; the store is a parameter.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};

pub struct Svc {
    pub served: u64,
}

impl Svc {
    #[idempotent(strategy = "dedup_table", key = "req.id", store = "store")]
    pub async fn place(
        &mut self,
        store: &idempotent_runtime::MemoryStore,
        req: &Req,
    ) -> Result<Receipt, AppError> {
        self.served += 1;
        Ok(Receipt {
            tenant: req.tenant.clone(),
            id: req.id.clone(),
            amount: req.amount,
            serial: self.served,
        })
    }
}

pub fn main() {}
