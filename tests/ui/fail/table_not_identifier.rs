//! A table name that is not a plain SQL identifier (it would be spliced into SQL).

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};
use sqlx::{SqliteConnection, SqlitePool};

#[idempotent(strategy = "select_before_insert", key = "req.id", table = "orders; DROP TABLE orders")]
pub async fn place(pool: &SqlitePool, req: &Req, #[tx] tx: &mut SqliteConnection) -> Result<Receipt, AppError> {
    sqlx::query("SELECT 1").execute(&mut *tx).await?;
    todo!()
}

fn main() {}
