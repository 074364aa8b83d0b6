//! A generic store type must be bounded by the store trait the strategy needs (here
//! `LockStore`); an unbounded `K` cannot hold locks.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Req};

#[idempotent(strategy = "distributed_lock", key = "req.id", store = "kv")]
pub async fn settle<K: Send + Sync>(kv: &K, req: &Req) -> Result<i64, AppError> {
    Ok(req.amount)
}

fn main() {}
