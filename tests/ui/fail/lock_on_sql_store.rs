//! `distributed_lock` needs a lock store (memory or Redis); a SQL pool has no leased locks.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Req};

use sqlx::SqlitePool;

#[idempotent(strategy = "distributed_lock", key = "req.id")]
pub async fn settle(pool: &SqlitePool, req: &Req) -> Result<i64, AppError> {
    Ok(req.amount)
}

fn main() {}
