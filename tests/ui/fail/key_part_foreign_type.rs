//! A key part of another crate's type (`std::net::IpAddr`), which cannot implement `KeyPart`
//! (orphan rule): the note says to convert it in the expression or wrap it in a newtype.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt};
use sqlx::SqlitePool;

#[derive(serde::Serialize)]
pub struct Visit {
    pub ip: std::net::IpAddr,
}

#[idempotent(strategy = "dedup_table", key = "visit.ip")]
pub async fn record(pool: &SqlitePool, visit: &Visit) -> Result<Receipt, AppError> {
    todo!()
}

fn main() {}
