//! A `sqlx::Transaction` parameter written without `#[tx]` on a strategy that lends its
//! transaction: the error is at that parameter and says what to write (`#[tx]` and the
//! connection type, here the PostgreSQL one of the store).

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Req};
use sqlx::{PgPool, Postgres, Transaction};

#[idempotent(strategy = "pessimistic", key = "req.id", table = "orders")]
pub async fn place(
    pool: &PgPool,
    req: &Req,
    tx: &mut Transaction<'_, Postgres>,
) -> Result<(), AppError> {
    let _ = tx;
    Ok(())
}

fn main() {}
