//! Issue 11: a business-table body that writes through the pool instead of its `#[tx]`
//! connection would wait on its own row lock (PostgreSQL: for ever); a `#[tx]` parameter the
//! body never uses is an error saying so.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Req};
use sqlx::{PgConnection, PgPool};

#[idempotent(strategy = "pessimistic", key = "req.id", table = "payments")]
pub async fn apply(pool: &PgPool, req: &Req, #[tx] tx: &mut PgConnection) -> Result<(), AppError> {
    sqlx::query("UPDATE payments SET applied = TRUE WHERE id = $1")
        .bind(&req.id)
        .execute(pool)
        .await?;
    Ok(())
}

fn main() {}
