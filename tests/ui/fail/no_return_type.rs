//! No return type at all.

use idempotent_runtime::idempotent;
use idempotent_tests::Req;
use sqlx::SqlitePool;

#[idempotent(strategy = "dedup_table", key = "req.id")]
pub async fn place(pool: &SqlitePool, req: &Req) {
    todo!()
}

fn main() {}
