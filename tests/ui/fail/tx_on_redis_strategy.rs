//! `#[tx]` on `distributed_lock`, which runs on Redis and has no SQL transaction.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};

#[idempotent(strategy = "distributed_lock", key = "req.id")]
pub async fn place(
    store: &idempotent_runtime::MemoryStore,
    req: &Req,
    #[tx] tx: &mut sqlx::SqliteConnection,
) -> Result<Receipt, AppError> {
    todo!()
}

fn main() {}
