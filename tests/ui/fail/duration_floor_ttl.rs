//! A `ttl` shorter than the lease: the record would not outlive the claim it replaces.

use idempotent_runtime::{MemoryStore, idempotent};
use idempotent_tests::{AppError, Receipt, Req};

#[idempotent(strategy = "token", key = "req.id", lease = "2s", ttl = "1999ms")]
pub async fn redeem(store: &MemoryStore, req: &Req) -> Result<Receipt, AppError> {
    todo!()
}

fn main() {}
