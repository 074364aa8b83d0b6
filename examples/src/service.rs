//! The order service, once per database: the same three idempotent operations on PostgreSQL,
//! MySQL/MariaDB and SQLite (the functions differ only in their connection type).
//!
//! - `place_order` — `dedup_table`, transactional: the idempotency record and the order's
//!   ledger row commit in one transaction (`#[tx]`).
//! - `consume_payment` — `dedup_table`, claim mode on the database: a redelivered payment
//!   message is processed once; the claim commits first with a lease.
//! - `reserve_stock` — `dedup_table`, claim mode on the in-process memory store.

use idempotent_runtime::{Disposition, Error};
use serde::{Deserialize, Serialize};

use crate::report::Outcome;
use crate::storm::{Attempt, Call};

/// The service's error type: what the wrapper converts idempotency errors into.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Idempotency outcome (duplicate, in progress, mismatch, …).
    #[error(transparent)]
    Idempotency(#[from] Error),
    /// Database failure.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Place an order (HTTP `POST /orders` with an `Idempotency-Key`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlaceOrder {
    /// The customer (the scope of the key).
    pub customer: String,
    /// The client's idempotency key for this order.
    pub order_id: String,
    /// Amount in cents.
    pub amount_cents: i64,
}

/// The response of `place_order`, stored and replayed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderReceipt {
    /// Echo of the key.
    pub order_id: String,
    /// Amount charged, cents.
    pub amount_cents: i64,
    /// `placed` when fresh (replays return the same text).
    pub status: String,
}

/// A payment message as a broker (re)delivers it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PaymentMessage {
    /// The merchant (the scope of the key).
    pub merchant: String,
    /// The broker's message id (the key).
    pub message_id: String,
    /// Amount in cents.
    pub amount_cents: i64,
}

/// The acknowledgement of a processed payment message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentAck {
    /// Echo of the key.
    pub message_id: String,
    /// Amount settled, cents.
    pub settled_cents: i64,
}

/// One operation of the demo.
#[derive(Debug, Clone, Copy)]
pub struct Operation {
    /// Name in the report and the ledger.
    pub name: &'static str,
    /// Strategy name.
    pub strategy: &'static str,
    /// `true` when its records live in the memory store rather than the database.
    pub memory: bool,
}

/// The operations, in report order.
pub const OPERATIONS: [Operation; 3] = [
    Operation {
        name: "place_order",
        strategy: "dedup_table",
        memory: false,
    },
    Operation {
        name: "consume_payment",
        strategy: "dedup_table",
        memory: false,
    },
    Operation {
        name: "reserve_stock",
        strategy: "dedup_table",
        memory: true,
    },
];

/// The service on one database, as the storm driver sees it.
#[allow(async_fn_in_trait)]
pub trait Demo {
    /// Database name (`sqlite`, `postgres`, `mysql`).
    fn backend(&self) -> &'static str;
    /// One attempt of operation `op` (index into [`OPERATIONS`]) for `call`.
    async fn call(&self, op: usize, call: Call) -> Attempt;
    /// Effects of `op` in this run, counted from the ledger table.
    async fn effects(&self, op: &str) -> Result<u64, sqlx::Error>;
}

/// Maps a wrapped call's result to what the storm records.
pub fn attempt<T>(r: Result<T, DemoError>, how: Option<Disposition>) -> Attempt {
    match r {
        Ok(_) if how == Some(Disposition::Replayed) => Attempt::Done(Outcome::Replayed),
        Ok(_) => Attempt::Done(Outcome::Executed),
        Err(DemoError::Idempotency(Error::InProgress)) => Attempt::Busy,
        Err(DemoError::Idempotency(Error::FingerprintMismatch)) => Attempt::Done(Outcome::Mismatch),
        Err(e) => {
            eprintln!("error: {e}");
            Attempt::Done(Outcome::Error)
        }
    }
}

/// The ledger table: one row per effect applied.
pub const LEDGER_DDL: &str = "CREATE TABLE IF NOT EXISTS demo_ledger (run VARCHAR(64) NOT NULL, op VARCHAR(64) NOT NULL, k VARCHAR(255) NOT NULL, amount BIGINT NOT NULL)";

macro_rules! service {
    ($m:ident, $name:literal, $pool:ty, $conn:ty, insert = $insert:literal, count = $count:literal) => {
        /// The service on this database.
        pub mod $m {
            use super::*;
            use idempotent_runtime::{MemoryStore, idempotent, observe};

            /// The order service.
            pub struct Orders {
                /// The database.
                pub db: $pool,
                /// The in-process store for `reserve_stock`.
                pub store: MemoryStore,
                /// This run's id: part of every scope and ledger row, so runs never replay each
                /// other.
                pub run: String,
            }

            impl Orders {
                async fn ledger(
                    &self,
                    conn: &mut $conn,
                    op: &str,
                    key: &str,
                    amount: i64,
                ) -> Result<(), sqlx::Error> {
                    sqlx::query($insert)
                        .bind(&self.run)
                        .bind(op)
                        .bind(key)
                        .bind(amount)
                        .execute(conn)
                        .await?;
                    Ok(())
                }

                /// Places an order: the idempotency record and the ledger row commit together.
                #[idempotent(
                    strategy = "dedup_table",
                    key = "req.order_id",
                    scope = "req.customer",
                    name = "orders.place_order"
                )]
                pub async fn place_order(
                    &self,
                    req: &PlaceOrder,
                    #[tx] tx: &mut $conn,
                ) -> Result<OrderReceipt, DemoError> {
                    self.ledger(tx, "place_order", &req.order_id, req.amount_cents)
                        .await?;
                    Ok(OrderReceipt {
                        order_id: req.order_id.clone(),
                        amount_cents: req.amount_cents,
                        status: "placed".into(),
                    })
                }

                /// Consumes a payment message; redeliveries replay the first acknowledgement.
                #[idempotent(
                    strategy = "dedup_table",
                    key = "msg.message_id",
                    scope = "msg.merchant",
                    name = "payments.consume",
                    lease = "15s"
                )]
                pub async fn consume_payment(
                    &self,
                    msg: &PaymentMessage,
                ) -> Result<PaymentAck, DemoError> {
                    let mut conn = self.db.acquire().await?;
                    self.ledger(
                        &mut conn,
                        "consume_payment",
                        &msg.message_id,
                        msg.amount_cents,
                    )
                    .await?;
                    Ok(PaymentAck {
                        message_id: msg.message_id.clone(),
                        settled_cents: msg.amount_cents,
                    })
                }

                /// Reserves stock for an order, deduplicated in the memory store.
                #[idempotent(
                    strategy = "dedup_table",
                    key = "req.order_id",
                    scope = "req.customer",
                    name = "stock.reserve",
                    store = "self.store",
                    lease = "15s"
                )]
                pub async fn reserve_stock(
                    &self,
                    req: &PlaceOrder,
                ) -> Result<OrderReceipt, DemoError> {
                    let mut conn = self.db.acquire().await?;
                    self.ledger(&mut conn, "reserve_stock", &req.order_id, req.amount_cents)
                        .await?;
                    Ok(OrderReceipt {
                        order_id: req.order_id.clone(),
                        amount_cents: req.amount_cents,
                        status: "reserved".into(),
                    })
                }

                fn order(&self, c: Call) -> PlaceOrder {
                    PlaceOrder {
                        customer: format!("{}-customer-{}", self.run, c.key % 17),
                        order_id: format!("order-{}", c.key),
                        amount_cents: 1000 + c.key as i64 + i64::from(c.different_payload),
                    }
                }
            }

            impl Demo for Orders {
                fn backend(&self) -> &'static str {
                    $name
                }

                async fn call(&self, op: usize, c: Call) -> Attempt {
                    match op {
                        0 => {
                            let (r, how) = observe(self.place_order(&self.order(c))).await;
                            attempt(r, how)
                        }
                        1 => {
                            let msg = PaymentMessage {
                                merchant: format!("{}-merchant-{}", self.run, c.key % 5),
                                message_id: format!("msg-{}", c.key),
                                amount_cents: 500 + c.key as i64 + i64::from(c.different_payload),
                            };
                            let (r, how) = observe(self.consume_payment(&msg)).await;
                            attempt(r, how)
                        }
                        _ => {
                            let (r, how) = observe(self.reserve_stock(&self.order(c))).await;
                            attempt(r, how)
                        }
                    }
                }

                async fn effects(&self, op: &str) -> Result<u64, sqlx::Error> {
                    let n: i64 = sqlx::query_scalar($count)
                        .bind(&self.run)
                        .bind(op)
                        .fetch_one(&self.db)
                        .await?;
                    Ok(u64::try_from(n).unwrap_or(0))
                }
            }
        }
    };
}

service!(
    postgres,
    "postgres",
    sqlx::PgPool,
    sqlx::PgConnection,
    insert = "INSERT INTO demo_ledger (run, op, k, amount) VALUES ($1, $2, $3, $4)",
    count = "SELECT COUNT(*) FROM demo_ledger WHERE run = $1 AND op = $2"
);
service!(
    mysql,
    "mysql",
    sqlx::MySqlPool,
    sqlx::MySqlConnection,
    insert = "INSERT INTO demo_ledger (run, op, k, amount) VALUES (?, ?, ?, ?)",
    count = "SELECT COUNT(*) FROM demo_ledger WHERE run = ? AND op = ?"
);
service!(
    sqlite,
    "sqlite",
    sqlx::SqlitePool,
    sqlx::SqliteConnection,
    insert = "INSERT INTO demo_ledger (run, op, k, amount) VALUES (?1, ?2, ?3, ?4)",
    count = "SELECT COUNT(*) FROM demo_ledger WHERE run = ?1 AND op = ?2"
);
