//! A fingerprinted argument that is not `Serialize`: the default fingerprint covers every argument but the store.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};
use sqlx::SqlitePool;

pub struct Note(pub String);

#[idempotent(strategy = "dedup_table", key = "req.id")]
pub async fn place(pool: &SqlitePool, req: &Req, note: Note) -> Result<Receipt, AppError> {
    todo!()
}

fn main() {}
