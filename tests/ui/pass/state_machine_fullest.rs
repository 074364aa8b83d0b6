//! `state_machine` with every option it takes: explicit `store`, `column`, `crate`, the states
//! past `to` that count as done, and an `on_duplicate` handler, as a method with the store in `self`.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Req};

use sqlx::{SqliteConnection, SqlitePool};

pub struct Shipping {
    pub db: SqlitePool,
}

impl Shipping {
    async fn already_shipped(&self, req: &Req) -> Result<bool, AppError> {
        let _ = req;
        Ok(false)
    }

    #[idempotent(
        strategy = "state_machine",
        key = "req.id",
        store = "self.db",
        table = "shipments",
        column = "shipment_code",
        status_column = "state",
        from = "PAID",
        to = "SHIPPED",
        done = ["DELIVERED", "RETURNED"],
        on_duplicate = "Self::already_shipped",
        crate = "::idempotent_runtime"
    )]
    pub async fn ship(&self, req: &Req, #[tx] tx: &mut SqliteConnection) -> Result<bool, AppError> {
        sqlx::query("INSERT INTO shipped (id) VALUES (?)")
            .bind(&req.id)
            .execute(&mut *tx)
            .await?;
        Ok(true)
    }
}

pub fn main() {}
