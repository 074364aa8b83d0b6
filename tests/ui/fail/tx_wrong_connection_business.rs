//! A business-table strategy's `#[tx]` connection must be of the store's database: the store is
//! a SQLite pool, the parameter a PostgreSQL connection.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Req};
use sqlx::{PgConnection, SqlitePool};

#[idempotent(strategy = "unique_index", key = "req.id", table = "orders")]
pub async fn create(
    pool: &SqlitePool,
    req: &Req,
    #[tx] tx: &mut PgConnection,
) -> Result<(), AppError> {
    let _ = tx;
    Ok(())
}

fn main() {}
