//! An inherent method on `&self`, its store the field `self.db`.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};

pub struct Svc {
    pub db: sqlx::SqlitePool,
}

impl Svc {
    #[idempotent(
        strategy = "dedup_table",
        key = "req.id",
        store = "self.db",
        scope = "req.tenant"
    )]
    pub async fn place(&self, req: &Req) -> Result<Receipt, AppError> {
        let _ = &self.db;
        Ok(Receipt {
            tenant: req.tenant.clone(),
            id: req.id.clone(),
            amount: req.amount,
            serial: 1,
        })
    }
}

pub fn main() {}
