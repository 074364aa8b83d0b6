//! Generic code bounded by the public store traits: `K: LockStore` for `distributed_lock`,
//! `K: TokenStore` for `token`.

use idempotent_runtime::{LockStore, TokenStore, idempotent};
use idempotent_tests::{AppError, Req};

#[idempotent(strategy = "distributed_lock", key = "req.id", store = "kv")]
pub async fn settle<K: LockStore>(kv: &K, req: &Req) -> Result<i64, AppError> {
    Ok(req.amount)
}

#[idempotent(strategy = "token", key = "req.id", store = "kv")]
pub async fn checkout<K: TokenStore + ?Sized>(kv: &K, req: &Req) -> Result<i64, AppError> {
    Ok(req.amount)
}

pub fn main() {}
