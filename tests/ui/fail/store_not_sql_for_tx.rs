//! With `#[tx]` the store must be a SQL pool or connection; the memory store has no transaction.
//! The parameter's type shows it: one error at the store naming the rule and the fix.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};

#[idempotent(strategy = "dedup_table", key = "req.id")]
pub async fn place(
    store: &idempotent_runtime::MemoryStore,
    req: &Req,
    #[tx] tx: &mut sqlx::SqliteConnection,
) -> Result<Receipt, AppError> {
    sqlx::query("SELECT 1").execute(&mut *tx).await?;
    todo!()
}

fn main() {}
