//! `optimistic` with every option it takes: explicit `store`, `column`, `version`, `crate` and an
//! `on_duplicate` handler.

use idempotent_runtime::idempotent;
use idempotent_tests::AppError;

use sqlx::{SqliteConnection, SqlitePool};

pub struct AccountRef {
    pub code: String,
}

/// A stale version: report the current amount instead of `Error::Duplicate`.
async fn stale(
    db: &SqlitePool,
    acct: &AccountRef,
    seen: i64,
    amount: i64,
) -> Result<i64, AppError> {
    let _ = (db, acct, seen);
    Ok(amount)
}

#[idempotent(
    strategy = "optimistic",
    key = "acct.code",
    store = "db",
    table = "accounts",
    column = "account_code",
    version = "seen",
    on_duplicate = "stale",
    crate = "::idempotent_runtime"
)]
pub async fn set_amount(
    db: &SqlitePool,
    acct: &AccountRef,
    seen: i64,
    amount: i64,
    #[tx] tx: &mut SqliteConnection,
) -> Result<i64, AppError> {
    sqlx::query("UPDATE accounts SET amount = ? WHERE account_code = ?")
        .bind(amount)
        .bind(&acct.code)
        .execute(&mut *tx)
        .await?;
    Ok(amount)
}

pub fn main() {}
