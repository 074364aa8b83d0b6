//! A business-table strategy on a `sqlx::PgPool` with idempotent-runtime built without its
//! `postgres` feature: one error at `store`, naming the feature (and nothing about the pool,
//! the key or the `#[tx]` connection afterwards).

use idempotent_runtime::idempotent;
use sqlx::{PgConnection, PgPool};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Idempotency(#[from] idempotent_runtime::Error),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

#[idempotent(strategy = "select_before_insert", key = "id", table = "orders")]
pub async fn place(pool: &PgPool, id: &str, #[tx] tx: &mut PgConnection) -> Result<(), AppError> {
    let _ = tx;
    Ok(())
}

fn main() {}
