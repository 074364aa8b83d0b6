//! A method whose `self` has no `db` field to default the store to, and no `store` option.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};
use sqlx::SqlitePool;

pub struct Svc {
    pub pool: SqlitePool,
}

impl Svc {
    #[idempotent(strategy = "dedup_table", key = "req.id")]
    pub async fn place(&self, req: &Req) -> Result<Receipt, AppError> {
        todo!()
    }
}

fn main() {}
