//! A lease longer than the default `ttl` (24 h) with no `ttl` given.

use idempotent_runtime::{MemoryStore, idempotent};
use idempotent_tests::{AppError, Receipt, Req};

#[idempotent(strategy = "distributed_lock", key = "req.id", lease = "25h")]
pub async fn settle(store: &MemoryStore, req: &Req) -> Result<Receipt, AppError> {
    todo!()
}

fn main() {}
