//! `token` issues no fencing token: `#[fence]` belongs to `distributed_lock`.

use idempotent_runtime::{FencingToken, MemoryStore, idempotent};
use idempotent_tests::{AppError, Req};

#[idempotent(strategy = "token", key = "req.id")]
pub async fn checkout(
    store: &MemoryStore,
    req: &Req,
    #[fence] fence: FencingToken,
) -> Result<i64, AppError> {
    let _ = fence;
    Ok(req.amount)
}

fn main() {}
