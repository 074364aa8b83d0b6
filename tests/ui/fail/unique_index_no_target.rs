//! `unique_index` needs `constraint` or `table`: otherwise any unique violation would count as a
//! duplicate.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Req};

use sqlx::{SqliteConnection, SqlitePool};

#[idempotent(strategy = "unique_index", key = "req.id")]
pub async fn create(
    pool: &SqlitePool,
    req: &Req,
    #[tx] tx: &mut SqliteConnection,
) -> Result<(), AppError> {
    let _ = (req, tx);
    Ok(())
}

fn main() {}
