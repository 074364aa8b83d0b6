//! A method without `store`: the macro cannot see the struct's fields, so the store field is
//! named unless a parameter named `db`, `pool` or `store` is the store. The error suggests the
//! store-like field the body uses (`self.pool`).

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};
use sqlx::SqlitePool;

pub struct Svc {
    pub pool: SqlitePool,
}

impl Svc {
    #[idempotent(strategy = "dedup_table", key = "req.id")]
    pub async fn place(&self, req: &Req) -> Result<Receipt, AppError> {
        let _ = &self.pool;
        Ok(Receipt { tenant: req.tenant.clone(), id: req.id.clone(), amount: req.amount, serial: 1 })
    }
}

fn main() {}
