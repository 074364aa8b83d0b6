//! `unique_index` with only what it needs: `key`, `constraint` (or `table`) and a `#[tx]`
//! parameter.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Req};

use sqlx::{PgConnection, PgPool, SqliteConnection, SqlitePool};

/// `constraint` alone: on PostgreSQL, which names the violated constraint (MySQL/MariaDB and
/// SQLite, which do not, refuse it at run time with `Error::Unsupported`: they need `table`).
#[idempotent(
    strategy = "unique_index",
    key = "req.id",
    constraint = "orders_id_key"
)]
pub async fn create(pool: &PgPool, req: &Req, #[tx] tx: &mut PgConnection) -> Result<(), AppError> {
    sqlx::query("INSERT INTO orders (id, amount) VALUES ($1, $2)")
        .bind(&req.id)
        .bind(req.amount)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// `table` alone: a unique violation counts as a duplicate when the key's row exists.
#[idempotent(strategy = "unique_index", key = "req.id", table = "orders")]
pub async fn create_by_table(
    pool: &SqlitePool,
    req: &Req,
    #[tx] tx: &mut SqliteConnection,
) -> Result<(), AppError> {
    sqlx::query("INSERT INTO orders (id) VALUES (?)")
        .bind(&req.id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

pub fn main() {}
