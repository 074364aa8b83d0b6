//! `token` needs a token store (memory or Redis); a SQL pool has no one-time tokens.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Req};

use sqlx::SqlitePool;

#[idempotent(strategy = "token", key = "req.id")]
pub async fn checkout(pool: &SqlitePool, req: &Req) -> Result<i64, AppError> {
    Ok(req.amount)
}

fn main() {}
