//! A scope whose type does not implement `KeyPart`.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};
use sqlx::SqlitePool;

#[derive(serde::Serialize)]
pub struct Ctx {
    pub tenant: (u32, u32),
}

#[idempotent(strategy = "dedup_table", key = "req.id", scope = "ctx.tenant")]
pub async fn place(pool: &SqlitePool, ctx: &Ctx, req: &Req) -> Result<Receipt, AppError> {
    todo!()
}

fn main() {}
