//! An argument listed in `fingerprint` that is not `Serialize`: the error is at the entry and
//! says to remove it from the list.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};
use sqlx::SqlitePool;

pub struct Note(pub String);

#[idempotent(strategy = "dedup_table", key = "req.id", fingerprint = ["req", "note"])]
pub async fn place(pool: &SqlitePool, req: &Req, note: Note) -> Result<Receipt, AppError> {
    let _ = note.0;
    Ok(Receipt { tenant: req.tenant.clone(), id: req.id.clone(), amount: req.amount, serial: 1 })
}

fn main() {}
