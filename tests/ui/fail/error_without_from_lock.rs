//! `distributed_lock` returns its own errors (in progress, lock lost, backend down) as the
//! function's error type, which here cannot hold them.

use idempotent_runtime::{MemoryStore, idempotent};
use idempotent_tests::Req;

#[derive(Debug)]
pub struct SettleError;

#[idempotent(strategy = "distributed_lock", key = "req.id")]
pub async fn settle(store: &MemoryStore, req: &Req) -> Result<i64, SettleError> {
    Ok(req.amount)
}

fn main() {}
