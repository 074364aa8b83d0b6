//! One-line bodies with an injected `#[tx]` or `#[fence]` parameter draw no warning (the
//! wrapper splices the body's statements after the injected binding), and a store shared
//! behind an `Arc` is accepted as the store it points to.
#![deny(warnings)]

use std::sync::Arc;

use idempotent_runtime::{FencingToken, MemoryStore, idempotent};
use idempotent_tests::AppError;
use sqlx::{SqliteConnection, SqlitePool};

#[idempotent(strategy = "distributed_lock", key = "id")]
pub async fn fence_one_line(
    store: &MemoryStore,
    id: u64,
    #[fence] fence: FencingToken,
) -> Result<u64, AppError> {
    Ok(fence.0 + id)
}

#[idempotent(strategy = "dedup_table", key = "id")]
pub async fn tx_one_line(
    pool: &SqlitePool,
    id: u64,
    #[tx] tx: &mut SqliteConnection,
) -> Result<u64, AppError> {
    sqlx::query("SELECT 1").execute(&mut *tx).await?;
    Ok(id + 1)
}

#[idempotent(strategy = "unique_index", key = "id", table = "orders")]
pub async fn business_one_line(
    pool: &SqlitePool,
    id: String,
    #[tx] tx: &mut SqliteConnection,
) -> Result<(), AppError> {
    sqlx::query("SELECT 1").execute(&mut *tx).await?;
    Ok(())
}

pub struct Svc {
    pub store: Arc<MemoryStore>,
}

impl Svc {
    #[idempotent(strategy = "dedup_table", key = "id", store = "self.store")]
    pub async fn claim(&self, id: u64) -> Result<u64, AppError> {
        Ok(id)
    }

    #[idempotent(strategy = "distributed_lock", key = "id", store = "self.store")]
    pub async fn lock(&self, id: u64) -> Result<u64, AppError> {
        Ok(id)
    }

    #[idempotent(strategy = "token", key = "token", store = "self.store")]
    pub async fn spend(&self, token: String) -> Result<u64, AppError> {
        Ok(token.len() as u64)
    }
}

pub fn main() {}
