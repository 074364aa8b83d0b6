//! `token` with every option it takes, on the memory store and on Redis.

use idempotent_runtime::{MemoryStore, RedisStore, idempotent};
use idempotent_tests::{AppError, Receipt, Req};

pub struct Ctx {
    pub tenant_id: u64,
}

#[idempotent(
    strategy = "token",
    key = "token",
    scope = "ctx.tenant_id",
    store = "tokens",
    name = "checkout.pay",
    fingerprint = ["req", "req.amount"],
    lease = "30s",
    ttl = "24h",
    on_cancel = "keep",
    crate = "::idempotent_runtime"
)]
pub async fn checkout(
    tokens: &MemoryStore,
    ctx: &Ctx,
    token: &str,
    req: &Req,
) -> Result<Receipt, AppError> {
    let _ = (ctx, token);
    Ok(Receipt {
        tenant: req.tenant.clone(),
        id: req.id.clone(),
        amount: req.amount,
        serial: 1,
    })
}

pub struct Checkout {
    pub redis: RedisStore,
}

impl Checkout {
    #[idempotent(
        strategy = "token",
        key = "req.id",
        scope = "req.tenant",
        store = "self.redis",
        name = "checkout.pay_redis",
        fingerprint = false,
        lease = "500ms",
        ttl = "7days",
        on_cancel = "release",
        crate = "::idempotent_runtime"
    )]
    pub async fn checkout(&self, req: &Req) -> Result<Receipt, AppError> {
        Ok(Receipt {
            tenant: req.tenant.clone(),
            id: req.id.clone(),
            amount: req.amount,
            serial: 1,
        })
    }
}

pub fn main() {
    // Each function has an operation name of its own.
    assert!(idempotent_runtime::check_operation_names().is_ok());
}
