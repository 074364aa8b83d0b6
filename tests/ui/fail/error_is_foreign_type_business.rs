//! A business-table strategy's function returns `sqlx::Error`: it cannot get
//! `From<idempotent_runtime::Error>` (orphan rule), so the note says to return an error type of
//! one's own rather than to implement it.

use idempotent_runtime::idempotent;
use idempotent_tests::Req;
use sqlx::{SqliteConnection, SqlitePool};

#[idempotent(strategy = "unique_index", key = "req.id", table = "orders")]
pub async fn place(
    pool: &SqlitePool,
    req: &Req,
    #[tx] tx: &mut SqliteConnection,
) -> Result<(), sqlx::Error> {
    let _ = tx;
    Ok(())
}

fn main() {}
