//! `terminal` stores the errors it calls terminal and replays them to duplicates, so the
//! function's error type must be `Serialize + DeserializeOwned`; `AppError` (which wraps a
//! `sqlx::Error`) is neither.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};
use sqlx::SqlitePool;

fn is_terminal(e: &AppError) -> bool {
    matches!(e, AppError::Rejected)
}

#[idempotent(strategy = "dedup_table", key = "req.id", terminal = "is_terminal")]
pub async fn place(pool: &SqlitePool, req: &Req) -> Result<Receipt, AppError> {
    let _ = req;
    Err(AppError::Rejected)
}

fn main() {}
