//! The application's pool is of sqlx 0.8 while idempotent-runtime is built on sqlx 0.9: one
//! error at `store`, naming the sqlx version.

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
pub async fn place(
    pool: &sqlx08::PgPool,
    id: &str,
    #[tx] tx: &mut sqlx08::PgConnection,
) -> Result<Receipt, AppError> {
    let _ = tx;
    todo!()
}

fn main() {}
