//! `impl Trait` arguments, fingerprinted through `Serialize`.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt};

use serde::Serialize;

#[idempotent(strategy = "dedup_table", key = "id")]
pub async fn place(
    pool: &sqlx::SqlitePool,
    id: impl AsRef<str> + Serialize + Send + Sync + idempotent_runtime::KeyPart,
    note: impl Serialize + Send + Sync,
) -> Result<Receipt, AppError> {
    let _ = (pool, note);
    Ok(Receipt {
        tenant: String::new(),
        id: id.as_ref().to_owned(),
        amount: 0,
        serial: 1,
    })
}

pub fn main() {}
