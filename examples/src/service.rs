//! The order service, once per database: the same idempotent operations on PostgreSQL,
//! MySQL/MariaDB and SQLite (the functions differ only in their connection type).
//!
//! - `place_order` — `dedup_table`, transactional: the idempotency record and the order's
//!   ledger row commit in one transaction (`#[tx]`).
//! - `consume_payment` — `dedup_table`, claim mode on the database: a redelivered payment
//!   message is processed once; the claim commits first with a lease.
//! - `reserve_stock` — `dedup_table`, claim mode on the key-value store (memory, or Redis with
//!   `--redis-url`).
//! - `register_customer` — `select_before_insert` on `demo_customers` (email primary key).
//! - `create_order_by_code` — `unique_index` on `demo_orders` (unique `code`).
//! - `add_to_order_amount` — `optimistic` on `demo_accounts.version` (callers carry version 1).
//! - `ship_order` — `state_machine` on `demo_shipments.status`, PAID → SHIPPED.
//! - `debit_wallet` — `pessimistic`: locks the `demo_wallets` row, re-checks `demo_payments`.
//! - `settle_period` — `distributed_lock` on the key-value store (memory, or Redis with
//!   `--redis-url`): 8 workers per period run the settlement job, one settles (its fencing token
//!   goes into the ledger row), the others get the settlement replayed.
//! - `checkout` — `token`: the client gets a one-time token, submits, double-clicks and
//!   retries with the same token; one checkout per token.

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
    /// `true` when its records live in the key-value store (memory, or Redis with
    /// `--redis-url`) rather than the database.
    pub memory: bool,
}

/// The operations, in report order.
pub const OPERATIONS: [Operation; 10] = [
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
    Operation {
        name: "register_customer",
        strategy: "select_before_insert",
        memory: false,
    },
    Operation {
        name: "create_order_by_code",
        strategy: "unique_index",
        memory: false,
    },
    Operation {
        name: "add_to_order_amount",
        strategy: "optimistic",
        memory: false,
    },
    Operation {
        name: "ship_order",
        strategy: "state_machine",
        memory: false,
    },
    Operation {
        name: "debit_wallet",
        strategy: "pessimistic",
        memory: false,
    },
    Operation {
        name: "settle_period",
        strategy: "distributed_lock",
        memory: true,
    },
    Operation {
        name: "checkout",
        strategy: "token",
        memory: true,
    },
];

/// The business tables of the five business-table operations (the same text on every backend).
pub const DEMO_DDL: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS demo_customers (email VARCHAR(255) NOT NULL PRIMARY KEY, name VARCHAR(255) NOT NULL)",
    "CREATE TABLE IF NOT EXISTS demo_orders (code VARCHAR(255) NOT NULL, amount BIGINT NOT NULL, CONSTRAINT demo_orders_code_key UNIQUE (code))",
    "CREATE TABLE IF NOT EXISTS demo_accounts (code VARCHAR(255) NOT NULL PRIMARY KEY, amount BIGINT NOT NULL, version BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS demo_shipments (code VARCHAR(255) NOT NULL PRIMARY KEY, status VARCHAR(20) NOT NULL)",
    "CREATE TABLE IF NOT EXISTS demo_wallets (id VARCHAR(255) NOT NULL PRIMARY KEY, balance BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS demo_payments (payment_id VARCHAR(255) NOT NULL PRIMARY KEY, wallet VARCHAR(255) NOT NULL, amount BIGINT NOT NULL)",
];

/// Every table the demo creates besides the runtime's `idempotency_records`, in the order the
/// demo creates them: the ledger ([`LEDGER_DDL`]) and the business tables ([`DEMO_DDL`]).
pub const DEMO_TABLES: [&str; 7] = [
    "demo_ledger",
    "demo_customers",
    "demo_orders",
    "demo_accounts",
    "demo_shipments",
    "demo_wallets",
    "demo_payments",
];

/// The runtime's table of idempotency records (created by `idempotent_runtime::migrate`).
pub const RECORDS_TABLE: &str = "idempotency_records";

/// `$1, $2, …` kept for PostgreSQL, turned into `?` for MySQL and SQLite. The text is the
/// demo's own constant SQL; values are always bound.
pub fn sql(text: &str, dollar: bool) -> sqlx::AssertSqlSafe<String> {
    if dollar {
        return sqlx::AssertSqlSafe(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
            out.push('?');
        } else {
            out.push(c);
        }
    }
    sqlx::AssertSqlSafe(out)
}

/// A business-table request: the key's index in the storm and its payload.
#[derive(Debug, Clone)]
pub struct KeyedRequest {
    /// The business key (email, order code, account code, wallet id).
    pub code: String,
    /// The payment id (`debit_wallet`).
    pub payment_id: String,
    /// The version the caller read (`add_to_order_amount`).
    pub version: i64,
    /// Payload: an amount in cents (differs for the different-payload request).
    pub amount: i64,
}

/// The service on one database, as the storm driver sees it.
#[allow(async_fn_in_trait)]
pub trait Demo {
    /// Database name (`sqlite`, `postgres`, `mysql`).
    fn backend(&self) -> &'static str;
    /// One attempt of operation `op` (index into [`OPERATIONS`]) for `call`.
    async fn call(&self, op: usize, call: Call) -> Attempt;
    /// Effects of `op` in this run, counted from the ledger table.
    async fn effects(&self, op: &str) -> Result<u64, sqlx::Error>;
    /// Inserts the rows the storm's `keys` keys need before it starts (accounts, shipments,
    /// wallets). Errors: the database's.
    async fn prepare(&self, keys: usize) -> Result<(), sqlx::Error> {
        let _ = keys;
        Ok(())
    }
    /// Where the key-value operations (`memory: true`) keep their records: `memory`,
    /// `redis` or `redis-cluster`.
    fn kv_backend(&self) -> &'static str {
        "memory"
    }
}

/// The key-value store of the lock- and token-guarded operations (`--redis-url` selects Redis;
/// the default is the in-process memory store).
#[derive(Debug, Clone)]
pub enum Kv {
    /// The in-process memory store.
    Memory(idempotent_runtime::MemoryStore),
    /// Redis, standalone or Cluster.
    Redis(idempotent_runtime::RedisStore),
}

impl Kv {
    /// `memory`, `redis` or `redis-cluster`.
    pub fn name(&self) -> &'static str {
        match self {
            Kv::Memory(_) => "memory",
            Kv::Redis(r) => r.name(),
        }
    }
}

/// A settlement job for one period: every worker of the period runs it, exactly one settles.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SettlementJob {
    /// The ledger (the scope of the key).
    pub ledger: String,
    /// The period (the key), e.g. `2025-06-period-7`.
    pub period: String,
}

/// The outcome of a settlement, stored and replayed to the other workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settlement {
    /// Echo of the period.
    pub period: String,
    /// The fencing token the settling worker held.
    pub fence: u64,
}

/// A checkout submitted with a one-time token from `issue_token`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkout {
    /// The customer (the scope).
    pub customer: String,
    /// The one-time token the client got before submitting (the key).
    pub token: String,
    /// Amount in cents.
    pub amount_cents: i64,
}

/// Workers per settlement period in the demo.
pub const WORKERS_PER_PERIOD: usize = 8;

/// Maps a token-guarded call's result: a concurrent duplicate (`Duplicate`, the double click
/// while the first submit runs) makes the client retry with the same token, like `InProgress`.
pub fn token_attempt<T>(r: Result<T, DemoError>, how: Option<Disposition>) -> Attempt {
    match r {
        Err(DemoError::Idempotency(Error::Duplicate)) => Attempt::Busy,
        other => attempt(other, how),
    }
}

/// Maps a wrapped call's result to what the storm records.
pub fn attempt<T>(r: Result<T, DemoError>, how: Option<Disposition>) -> Attempt {
    match r {
        Ok(_) if how == Some(Disposition::Replayed) => Attempt::Done(Outcome::Replayed),
        Ok(_) => Attempt::Done(Outcome::Executed),
        Err(DemoError::Idempotency(Error::InProgress)) => Attempt::Busy,
        Err(DemoError::Idempotency(Error::FingerprintMismatch)) => Attempt::Done(Outcome::Mismatch),
        Err(DemoError::Idempotency(Error::Duplicate)) => Attempt::Done(Outcome::Duplicate),
        Err(e) => Attempt::Failed(error_text(&e)),
    }
}

/// One line for an error the storm tallies: a database's own error as its message and code
/// (`duplicate key value violates unique constraint "…" (code 23505)`), without sqlx's
/// PostgreSQL suffix `at line N` (a line of the server's C source, no help to a reader);
/// anything else as it displays.
pub fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(sqlx::Error::Database(db)) = err.downcast_ref::<sqlx::Error>() {
            let code = db
                .code()
                .map(|c| format!(" (code {c})"))
                .unwrap_or_default();
            return format!("database error: {}{code}", db.message());
        }
        cur = err.source();
    }
    e.to_string()
}

/// The ledger table: one row per effect applied.
pub const LEDGER_DDL: &str = "CREATE TABLE IF NOT EXISTS demo_ledger (run VARCHAR(64) NOT NULL, op VARCHAR(64) NOT NULL, k VARCHAR(255) NOT NULL, amount BIGINT NOT NULL)";

macro_rules! service {
    ($m:ident, $name:literal, $pool:ty, $conn:ty, insert = $insert:literal, count = $count:literal, dollar = $dollar:literal, ddl_lock = $ddl_lock:expr) => {
        /// The service on this database.
        pub mod $m {
            use super::*;
            use idempotent_runtime::{
                ClaimStore, FencingToken, LockStore, TokenStore, idempotent, issue_token, observe,
            };

            /// Creates the demo's tables ([`LEDGER_DDL`], [`DEMO_DDL`]) in one transaction. On
            /// PostgreSQL the transaction first takes an advisory lock, because concurrent
            /// `CREATE TABLE IF NOT EXISTS` race on its catalog (two demos started together on
            /// a fresh database). Errors: sqlx's.
            pub async fn create_tables(db: &$pool) -> Result<(), sqlx::Error> {
                let mut tx = db.begin().await?;
                let lock: Option<&str> = $ddl_lock;
                if let Some(lock) = lock {
                    sqlx::query(lock).execute(&mut *tx).await?;
                }
                sqlx::query(LEDGER_DDL).execute(&mut *tx).await?;
                for ddl in DEMO_DDL {
                    sqlx::query(*ddl).execute(&mut *tx).await?;
                }
                tx.commit().await
            }

            /// `true` when the runtime's [`RECORDS_TABLE`] exists in `db` already (so the demo
            /// did not create it and `--cleanup` leaves it). A failure other than the
            /// database's own error (no such table) counts as "exists": nothing is dropped on
            /// a guess.
            pub async fn records_table_exists(db: &$pool) -> bool {
                match sqlx::query("SELECT 1 FROM idempotency_records WHERE 1 = 0")
                    .execute(db)
                    .await
                {
                    Ok(_) => true,
                    Err(sqlx::Error::Database(_)) => false,
                    Err(_) => true,
                }
            }

            /// Drops [`DEMO_TABLES`] and, when `records` is `true`, the runtime's
            /// [`RECORDS_TABLE`] (`DROP TABLE IF EXISTS` each). Errors: sqlx's.
            pub async fn drop_tables(db: &$pool, records: bool) -> Result<(), sqlx::Error> {
                let records = records.then_some(RECORDS_TABLE);
                for table in DEMO_TABLES.iter().copied().chain(records) {
                    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}")))
                        .execute(db)
                        .await?;
                }
                Ok(())
            }

            /// The order service.
            pub struct Orders {
                /// The database.
                pub db: $pool,
                /// This run's id: part of every scope and ledger row, so runs never replay each
                /// other.
                pub run: String,
                /// The store of `reserve_stock` (claims), `settle_period` (locks) and
                /// `checkout` (tokens).
                pub kv: Kv,
                /// The token each checkout key's client got (issued once per key).
                pub tokens: std::sync::Mutex<
                    std::collections::HashMap<usize, std::sync::Arc<tokio::sync::OnceCell<String>>>,
                >,
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
                    store = "self.db",
                    scope = "req.customer"
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
                    store = "self.db",
                    scope = "msg.merchant",
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

                /// Reserves stock for an order, deduplicated in the key-value store (claim
                /// mode: the claim commits first, with a lease).
                #[idempotent(
                    strategy = "dedup_table",
                    key = "req.order_id",
                    scope = "req.customer",
                    store = "kv",
                    lease = "15s"
                )]
                pub async fn reserve_stock<K: ClaimStore>(
                    &self,
                    kv: &K,
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

                /// Registers a customer: inserted only when no row has this email.
                #[idempotent(strategy = "select_before_insert", key = "req.code", store = "self.db", table = "demo_customers", column = "email")]
                pub async fn register_customer(
                    &self,
                    req: &KeyedRequest,
                    #[tx] tx: &mut $conn,
                ) -> Result<(), DemoError> {
                    sqlx::query(sql("INSERT INTO demo_customers (email, name) VALUES ($1, $2)", $dollar))
                        .bind(&req.code)
                        .bind(format!("customer {}", req.amount))
                        .execute(&mut *tx)
                        .await?;
                    self.ledger(tx, "register_customer", &req.code, req.amount).await?;
                    Ok(())
                }

                /// Creates an order by its code: the unique index on `code` is the claim.
                #[idempotent(strategy = "unique_index", key = "req.code", store = "self.db", table = "demo_orders", constraint = "demo_orders_code_key")]
                pub async fn create_order_by_code(
                    &self,
                    req: &KeyedRequest,
                    #[tx] tx: &mut $conn,
                ) -> Result<(), DemoError> {
                    sqlx::query(sql("INSERT INTO demo_orders (code, amount) VALUES ($1, $2)", $dollar))
                        .bind(&req.code)
                        .bind(req.amount)
                        .execute(&mut *tx)
                        .await?;
                    self.ledger(tx, "create_order_by_code", &req.code, req.amount).await?;
                    Ok(())
                }

                /// Adds to an order's amount if its version is still the one the caller read.
                #[idempotent(strategy = "optimistic", key = "req.code", store = "self.db", table = "demo_accounts")]
                pub async fn add_to_order_amount(
                    &self,
                    req: &KeyedRequest,
                    #[tx] tx: &mut $conn,
                ) -> Result<(), DemoError> {
                    sqlx::query(sql("UPDATE demo_accounts SET amount = amount + $1 WHERE code = $2", $dollar))
                        .bind(req.amount)
                        .bind(&req.code)
                        .execute(&mut *tx)
                        .await?;
                    self.ledger(tx, "add_to_order_amount", &req.code, req.amount).await?;
                    Ok(())
                }

                /// Ships a paid order (PAID → SHIPPED).
                #[idempotent(strategy = "state_machine", key = "req.code", store = "self.db", table = "demo_shipments", status_column = "status", from = "PAID", to = "SHIPPED")]
                pub async fn ship_order(
                    &self,
                    req: &KeyedRequest,
                    #[tx] tx: &mut $conn,
                ) -> Result<(), DemoError> {
                    self.ledger(tx, "ship_order", &req.code, req.amount).await?;
                    Ok(())
                }

                /// Debits a wallet for a payment, holding the wallet's row lock; the body
                /// re-checks whether the payment was applied.
                #[idempotent(strategy = "pessimistic", key = "req.code", store = "self.db", table = "demo_wallets", column = "id")]
                pub async fn debit_wallet(
                    &self,
                    req: &KeyedRequest,
                    #[tx] tx: &mut $conn,
                ) -> Result<(), DemoError> {
                    let seen: Option<String> = sqlx::query_scalar(sql("SELECT wallet FROM demo_payments WHERE payment_id = $1", $dollar))
                        .bind(&req.payment_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                    if seen.is_some() {
                        return Err(Error::Duplicate.into());
                    }
                    sqlx::query(sql("UPDATE demo_wallets SET balance = balance - $1 WHERE id = $2 AND balance >= $3", $dollar))
                        .bind(req.amount)
                        .bind(&req.code)
                        .bind(req.amount)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query(sql("INSERT INTO demo_payments (payment_id, wallet, amount) VALUES ($1, $2, $3)", $dollar))
                        .bind(&req.payment_id)
                        .bind(&req.code)
                        .bind(req.amount)
                        .execute(&mut *tx)
                        .await?;
                    self.ledger(tx, "debit_wallet", &req.payment_id, req.amount).await?;
                    Ok(())
                }

                fn keyed(&self, prefix: &str, c: Call) -> KeyedRequest {
                    KeyedRequest {
                        code: format!("{}-{prefix}-{}", self.run, c.key),
                        payment_id: format!("{}-payment-{}", self.run, c.key),
                        version: 1,
                        amount: 100 + i64::from(c.different_payload),
                    }
                }

                /// Settles one period; run by every worker, applied once. The ledger row
                /// carries the fencing token the settling worker held.
                #[idempotent(
                    strategy = "distributed_lock",
                    key = "job.period",
                    scope = "job.ledger",
                    store = "kv",
                    lease = "10s"
                )]
                pub async fn settle_period<K: LockStore>(
                    &self,
                    kv: &K,
                    job: &SettlementJob,
                    #[fence] fence: FencingToken,
                ) -> Result<Settlement, DemoError> {
                    let mut conn = self.db.acquire().await?;
                    let fence_value = i64::try_from(fence.get()).unwrap_or(i64::MAX);
                    self.ledger(&mut conn, "settle_period", &job.period, fence_value)
                        .await?;
                    Ok(Settlement {
                        period: job.period.clone(),
                        fence: fence.get(),
                    })
                }

                /// Checks out with a one-time token: the submit and every retry carry the same
                /// token; the first consumes it, the retries replay its receipt.
                #[idempotent(
                    strategy = "token",
                    key = "req.token",
                    scope = "req.customer",
                    store = "kv",
                    lease = "10s"
                )]
                pub async fn checkout<K: TokenStore>(
                    &self,
                    kv: &K,
                    req: &Checkout,
                ) -> Result<OrderReceipt, DemoError> {
                    let mut conn = self.db.acquire().await?;
                    self.ledger(&mut conn, "checkout", &req.token, req.amount_cents)
                        .await?;
                    Ok(OrderReceipt {
                        order_id: req.token.clone(),
                        amount_cents: req.amount_cents,
                        status: "checked_out".into(),
                    })
                }

                /// The token of checkout key `key`, issued on first use (once per key).
                async fn token_for(&self, key: usize) -> Result<String, Error> {
                    let cell = self
                        .tokens
                        .lock()
                        .map_err(|_| Error::Backend("token table poisoned".into()))?
                        .entry(key)
                        .or_default()
                        .clone();
                    let ttl = std::time::Duration::from_secs(3600);
                    cell.get_or_try_init(|| async {
                        match &self.kv {
                            Kv::Memory(m) => issue_token(m, ttl).await,
                            Kv::Redis(r) => issue_token(r, ttl).await,
                        }
                    })
                    .await
                    .cloned()
                }

                async fn call_settle(&self, c: Call) -> Attempt {
                    let job = SettlementJob {
                        ledger: format!("{}-ledger-{}", self.run, c.key % 3),
                        period: format!("period-{}", c.key),
                    };
                    let (r, how) = match &self.kv {
                        Kv::Memory(m) => observe(self.settle_period(m, &job)).await,
                        Kv::Redis(r) => observe(self.settle_period(r, &job)).await,
                    };
                    attempt(r, how)
                }

                async fn call_checkout(&self, c: Call) -> Attempt {
                    let token = match self.token_for(c.key).await {
                        Ok(t) => t,
                        Err(e) => return attempt::<()>(Err(e.into()), None),
                    };
                    let req = Checkout {
                        customer: format!("{}-customer-{}", self.run, c.key % 17),
                        token,
                        amount_cents: 2000 + c.key as i64 + i64::from(c.different_payload),
                    };
                    let (r, how) = match &self.kv {
                        Kv::Memory(m) => observe(self.checkout(m, &req)).await,
                        Kv::Redis(r) => observe(self.checkout(r, &req)).await,
                    };
                    token_attempt(r, how)
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
                        2 => {
                            let order = self.order(c);
                            let (r, how) = match &self.kv {
                                Kv::Memory(m) => observe(self.reserve_stock(m, &order)).await,
                                Kv::Redis(r) => observe(self.reserve_stock(r, &order)).await,
                            };
                            attempt(r, how)
                        }
                        3 => {
                            let (r, how) = observe(self.register_customer(&self.keyed("customer", c))).await;
                            attempt(r, how)
                        }
                        4 => {
                            let (r, how) = observe(self.create_order_by_code(&self.keyed("order", c))).await;
                            attempt(r, how)
                        }
                        5 => {
                            let (r, how) = observe(self.add_to_order_amount(&self.keyed("account", c))).await;
                            attempt(r, how)
                        }
                        6 => {
                            let (r, how) = observe(self.ship_order(&self.keyed("shipment", c))).await;
                            attempt(r, how)
                        }
                        7 => {
                            let (r, how) = observe(self.debit_wallet(&self.keyed("wallet", c))).await;
                            attempt(r, how)
                        }
                        8 => self.call_settle(c).await,
                        _ => self.call_checkout(c).await,
                    }
                }

                async fn prepare(&self, keys: usize) -> Result<(), sqlx::Error> {
                    let mut tx = self.db.begin().await?;
                    for key in 0..keys {
                        let run = &self.run;
                        sqlx::query(sql("INSERT INTO demo_accounts (code, amount, version) VALUES ($1, 0, 1)", $dollar))
                            .bind(format!("{run}-account-{key}"))
                            .execute(&mut *tx)
                            .await?;
                        sqlx::query(sql("INSERT INTO demo_shipments (code, status) VALUES ($1, 'PAID')", $dollar))
                            .bind(format!("{run}-shipment-{key}"))
                            .execute(&mut *tx)
                            .await?;
                        sqlx::query(sql("INSERT INTO demo_wallets (id, balance) VALUES ($1, 150)", $dollar))
                            .bind(format!("{run}-wallet-{key}"))
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await
                }

                fn kv_backend(&self) -> &'static str {
                    self.kv.name()
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
    count = "SELECT COUNT(*) FROM demo_ledger WHERE run = $1 AND op = $2",
    dollar = true,
    ddl_lock = Some("SELECT pg_advisory_xact_lock(7297175460591402612)")
);
service!(
    mysql,
    "mysql",
    sqlx::MySqlPool,
    sqlx::MySqlConnection,
    insert = "INSERT INTO demo_ledger (run, op, k, amount) VALUES (?, ?, ?, ?)",
    count = "SELECT COUNT(*) FROM demo_ledger WHERE run = ? AND op = ?",
    dollar = false,
    ddl_lock = None
);
service!(
    sqlite,
    "sqlite",
    sqlx::SqlitePool,
    sqlx::SqliteConnection,
    insert = "INSERT INTO demo_ledger (run, op, k, amount) VALUES (?1, ?2, ?3, ?4)",
    count = "SELECT COUNT(*) FROM demo_ledger WHERE run = ?1 AND op = ?2",
    dollar = false,
    ddl_lock = None
);
