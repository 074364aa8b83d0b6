//! A `wait(..)` just below the floor (10 ms): it would give up before its second look.

use idempotent_runtime::{MemoryStore, idempotent};
use idempotent_tests::{AppError, Receipt, Req};

#[idempotent(strategy = "distributed_lock", key = "req.id", on_busy = "wait(9ms)")]
pub async fn settle(store: &MemoryStore, req: &Req) -> Result<Receipt, AppError> {
    todo!()
}

fn main() {}
