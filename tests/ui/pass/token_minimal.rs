//! `token` with only `key` (the token from `issue_token`), on the memory store and on Redis.

use idempotent_runtime::{MemoryStore, RedisStore, idempotent};
use idempotent_tests::{AppError, Receipt, Req};

#[idempotent(strategy = "token", key = "req.id")]
pub async fn checkout(store: &MemoryStore, req: &Req) -> Result<Receipt, AppError> {
    Ok(Receipt {
        tenant: req.tenant.clone(),
        id: req.id.clone(),
        amount: req.amount,
        serial: 1,
    })
}

#[idempotent(strategy = "token", key = "req.id")]
pub async fn checkout_redis(store: &RedisStore, req: &Req) -> Result<Receipt, AppError> {
    Ok(Receipt {
        tenant: req.tenant.clone(),
        id: req.id.clone(),
        amount: req.amount,
        serial: 1,
    })
}

pub fn main() {}
