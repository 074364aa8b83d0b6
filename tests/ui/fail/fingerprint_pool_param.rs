//! Issue 11: a pool passed next to the store is fingerprinted by default, and a pool is not
//! `Serialize`: the error names the parameter and the `fingerprint` that leaves it out.

use idempotent_runtime::{MemoryStore, idempotent};
use idempotent_tests::{AppError, Receipt, Req};
use sqlx::PgPool;

#[idempotent(strategy = "dedup_table", key = "req.id")]
pub async fn place(store: &MemoryStore, pool: &PgPool, req: &Req) -> Result<Receipt, AppError> {
    sqlx::query("INSERT INTO orders (id) VALUES ($1)")
        .bind(&req.id)
        .execute(pool)
        .await?;
    Ok(Receipt { tenant: req.tenant.clone(), id: req.id.clone(), amount: req.amount, serial: 1 })
}

fn main() {}
