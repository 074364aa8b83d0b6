//! `#[tx]` on the receiver.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};
use sqlx::SqlitePool;

pub struct Svc {
    pub db: SqlitePool,
}

impl Svc {
    #[idempotent(strategy = "dedup_table", key = "req.id", store = "self.db")]
    pub async fn place(#[tx] &self, req: &Req) -> Result<Receipt, AppError> {
        todo!()
    }
}

fn main() {}
