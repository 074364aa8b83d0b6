//! `distributed_lock` with every option it takes, on the memory store and on Redis.

use idempotent_runtime::{FencingToken, MemoryStore, RedisStore, idempotent};
use idempotent_tests::{AppError, Receipt, Req};

pub struct Ctx {
    pub tenant_id: u64,
}

#[idempotent(
    strategy = "distributed_lock",
    key = ["req.tenant", "req.id"],
    scope = "ctx.tenant_id",
    store = "locks",
    name = "payments.settle",
    fingerprint = ["req", "req.amount"],
    lease = "30s",
    ttl = "24h",
    on_busy = "wait(5s)",
    on_cancel = "release",
    crate = "::idempotent_runtime"
)]
pub async fn settle(
    locks: &MemoryStore,
    ctx: &Ctx,
    req: &Req,
    #[fence] fence: FencingToken,
) -> Result<Receipt, AppError> {
    let _ = ctx;
    Ok(Receipt {
        tenant: req.tenant.clone(),
        id: req.id.clone(),
        amount: req.amount,
        serial: fence.0,
    })
}

pub struct Payments {
    pub redis: RedisStore,
}

impl Payments {
    #[idempotent(
        strategy = "distributed_lock",
        key = "req.id",
        scope = "req.tenant",
        store = "self.redis",
        name = "payments.settle_redis",
        fingerprint = false,
        lease = "500ms",
        ttl = "7days",
        on_busy = "reject",
        on_cancel = "keep",
        crate = "::idempotent_runtime"
    )]
    pub async fn settle(
        &self,
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
}

pub fn main() {
    // Each function has an operation name of its own.
    assert!(idempotent_runtime::check_operation_names().is_ok());
}
