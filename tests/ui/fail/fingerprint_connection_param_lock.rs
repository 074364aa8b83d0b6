//! Issue 11 item 9: `distributed_lock` (no `#[tx]`) fingerprints a connection parameter by
//! default; the error at the parameter says to leave it out of the fingerprint.

use idempotent_runtime::{MemoryStore, idempotent};
use idempotent_tests::{AppError, Receipt, Req};
use sqlx::PgConnection;

#[idempotent(strategy = "distributed_lock", key = "req.id")]
pub async fn place(
    store: &MemoryStore,
    conn: &mut PgConnection,
    req: &Req,
) -> Result<Receipt, AppError> {
    sqlx::query("INSERT INTO orders (id) VALUES ($1)")
        .bind(&req.id)
        .execute(&mut *conn)
        .await?;
    Ok(Receipt { tenant: req.tenant.clone(), id: req.id.clone(), amount: req.amount, serial: 1 })
}

fn main() {}
