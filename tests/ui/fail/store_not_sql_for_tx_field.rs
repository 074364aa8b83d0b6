//! With `#[tx]` the store must be a SQL pool or connection. A field's type is not visible to the
//! macro, so the store-argument trait reports it: its notes name the rules and fixes, without a
//! version number to go stale.

use idempotent_runtime::{MemoryStore, idempotent};
use idempotent_tests::{AppError, Receipt, Req};

pub struct Svc {
    pub store: MemoryStore,
}

impl Svc {
    #[idempotent(strategy = "dedup_table", key = "req.id", store = "self.store")]
    pub async fn place(
        &self,
        req: &Req,
        #[tx] tx: &mut sqlx::SqliteConnection,
    ) -> Result<Receipt, AppError> {
        sqlx::query("SELECT 1").execute(&mut *tx).await?;
        todo!()
    }
}

fn main() {}
