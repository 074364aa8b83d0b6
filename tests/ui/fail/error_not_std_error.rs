//! A business-table strategy looks for the database's error in the body error's source chain,
//! so the error type must be a `std::error::Error`; this one only converts from the runtime's.

use idempotent_runtime::idempotent;
use idempotent_tests::Req;
use sqlx::{SqliteConnection, SqlitePool};

#[derive(Debug)]
pub enum MyError {
    Idempotency(idempotent_runtime::Error),
}

impl From<idempotent_runtime::Error> for MyError {
    fn from(e: idempotent_runtime::Error) -> Self {
        MyError::Idempotency(e)
    }
}

#[idempotent(strategy = "unique_index", key = "req.id", table = "orders")]
pub async fn create(
    pool: &SqlitePool,
    req: &Req,
    #[tx] tx: &mut SqliteConnection,
) -> Result<(), MyError> {
    let _ = tx;
    Ok(())
}

fn main() {}
