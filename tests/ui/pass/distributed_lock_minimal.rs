//! `distributed_lock` with only `key`, on the memory store and on Redis (the store is the
//! parameter named `store`); with and without a `#[fence]` parameter.

use idempotent_runtime::{FencingToken, MemoryStore, RedisStore, idempotent};
use idempotent_tests::{AppError, Receipt, Req};

#[idempotent(strategy = "distributed_lock", key = "req.id")]
pub async fn settle(
    store: &MemoryStore,
    req: &Req,
    #[fence] fence: FencingToken,
) -> Result<Receipt, AppError> {
    Ok(Receipt {
        tenant: req.tenant.clone(),
        id: req.id.clone(),
        amount: req.amount,
        serial: fence.0,
    })
}

#[idempotent(strategy = "distributed_lock", key = "req.id")]
pub async fn settle_redis(
    store: &RedisStore,
    req: &Req,
    #[fence] fence: FencingToken,
) -> Result<Receipt, AppError> {
    Ok(Receipt {
        tenant: req.tenant.clone(),
        id: req.id.clone(),
        amount: req.amount,
        serial: fence.0,
    })
}

/// Without `#[fence]`: the token is issued, the body does not see it.
#[idempotent(strategy = "distributed_lock", key = "req.id")]
pub async fn report(store: &MemoryStore, req: &Req) -> Result<i64, AppError> {
    Ok(req.amount)
}

pub fn main() {}
