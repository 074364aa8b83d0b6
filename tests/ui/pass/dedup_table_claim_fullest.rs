//! `dedup_table` in claim mode with every option it takes, on the memory store.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};

pub struct Ctx {
    pub tenant_id: u64,
}

#[idempotent(
    strategy = "dedup_table",
    key = ["req.tenant", "req.id"],
    scope = "ctx.tenant_id",
    store = "memory",
    name = "orders.place",
    fingerprint = ["req", "req.amount"],
    lease = "30s",
    ttl = "24h",
    on_busy = "wait(5s)",
    on_cancel = "release",
    crate = "::idempotent_runtime"
)]
pub async fn place(
    memory: &idempotent_runtime::MemoryStore,
    ctx: &Ctx,
    req: &Req,
) -> Result<Receipt, AppError> {
    let _ = ctx;
    Ok(Receipt {
        tenant: req.tenant.clone(),
        id: req.id.clone(),
        amount: req.amount,
        serial: 1,
    })
}

/// The smallest claim-mode use on the memory store, with fingerprinting off and rejecting
/// concurrent duplicates.
#[idempotent(
    strategy = "dedup_table",
    key = "id",
    fingerprint = false,
    on_busy = "reject"
)]
pub async fn touch(store: &idempotent_runtime::MemoryStore, id: u64) -> Result<u64, AppError> {
    Ok(id)
}

pub fn main() {}
