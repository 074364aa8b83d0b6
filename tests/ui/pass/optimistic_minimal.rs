//! `optimistic` with only what it needs: `key`, `table` and a `#[tx]` parameter; the version is
//! the key root's `version` field (`acct.version`).

use idempotent_runtime::idempotent;
use idempotent_tests::AppError;

use sqlx::{SqliteConnection, SqlitePool};

pub struct AccountRef {
    pub code: String,
    pub version: i64,
}

#[idempotent(strategy = "optimistic", key = "acct.code", table = "accounts")]
pub async fn set_amount(
    pool: &SqlitePool,
    acct: &AccountRef,
    amount: i64,
    #[tx] tx: &mut SqliteConnection,
) -> Result<(), AppError> {
    sqlx::query("UPDATE accounts SET amount = ? WHERE code = ?")
        .bind(amount)
        .bind(&acct.code)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

pub fn main() {}
