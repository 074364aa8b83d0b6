//! The `#[fence]` parameter receives the lock's `FencingToken`; a `u64` is not one.

use idempotent_runtime::{MemoryStore, idempotent};
use idempotent_tests::{AppError, Req};

#[idempotent(strategy = "distributed_lock", key = "req.id")]
pub async fn settle(store: &MemoryStore, req: &Req, #[fence] fence: u64) -> Result<i64, AppError> {
    Ok(req.amount + fence as i64)
}

fn main() {}
