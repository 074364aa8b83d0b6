//! A method whose `store` names a field `self` does not have.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};
use sqlx::SqlitePool;

pub struct Svc {
    pub pool: SqlitePool,
}

impl Svc {
    #[idempotent(strategy = "dedup_table", key = "req.id", store = "self.database")]
    pub async fn place(&self, req: &Req) -> Result<Receipt, AppError> {
        todo!()
    }
}

fn main() {}
