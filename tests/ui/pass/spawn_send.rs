//! The wrapped future stays `Send`: it can be handed to `tokio::spawn`.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt, Req};

use std::sync::Arc;

pub struct Svc {
    pub db: sqlx::SqlitePool,
}

impl Svc {
    #[idempotent(strategy = "dedup_table", key = "req.id", store = "self.db")]
    pub async fn place(&self, req: Req) -> Result<Receipt, AppError> {
        Ok(Receipt {
            tenant: req.tenant,
            id: req.id,
            amount: req.amount,
            serial: 1,
        })
    }
}

fn assert_send<F: std::future::Future + Send>(_: F) {}

fn check(svc: Arc<Svc>, req: Req) {
    assert_send(async move { svc.place(req).await });
}

pub fn main() {
    let _ = check;
}
