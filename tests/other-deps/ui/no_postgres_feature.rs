//! The application passes a `sqlx::PgPool`, but idempotent-runtime is built without its
//! `postgres` feature: one error at `store`, naming the feature (and nothing about the pool
//! afterwards).

use idempotent_runtime::idempotent;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Idempotency(#[from] idempotent_runtime::Error),
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Receipt {
    pub id: String,
}

#[idempotent(strategy = "dedup_table", key = "id")]
pub async fn place(pool: &sqlx::PgPool, id: &str) -> Result<Receipt, AppError> {
    todo!()
}

fn main() {}
