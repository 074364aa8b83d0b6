//! The function returns `sqlx::Error`, another crate's type: it cannot get
//! `From<idempotent_runtime::Error>` (orphan rule), so the note says to return an error type
//! of one's own rather than to implement it.

use idempotent_runtime::idempotent;
use idempotent_tests::{Receipt, Req};
use sqlx::SqlitePool;

#[idempotent(strategy = "dedup_table", key = "req.id")]
pub async fn place(pool: &SqlitePool, req: &Req) -> Result<Receipt, sqlx::Error> {
    todo!()
}

fn main() {}
