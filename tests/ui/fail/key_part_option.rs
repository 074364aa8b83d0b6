//! Issue 11 item 11 (tester): an optional key field is not a key part; the note says how to
//! handle the `Option` (a field that is always set, or the key as a parameter of its own), not
//! to default it to an empty key, which is rejected at run time.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt};
use sqlx::SqlitePool;

#[derive(serde::Serialize)]
pub struct PlaceOrder {
    pub request_id: Option<uuid::Uuid>,
    pub amount: i64,
}

#[idempotent(strategy = "dedup_table", key = "req.request_id")]
pub async fn place(pool: &SqlitePool, req: &PlaceOrder) -> Result<Receipt, AppError> {
    todo!()
}

fn main() {}
