//! Idempotent message consumers: a payment message applied to a ledger exactly once in effect,
//! however often RabbitMQ ([`amqp`], through `lapin`) or NATS JetStream ([`jetstream`],
//! through `async-nats`) delivers it.
//!
//! The handler is an ordinary `#[idempotent]` service function keyed by the business key
//! inside the message ([`Payment::key`], scoped by [`Payment::merchant`]):
//!
//! - [`TxPayments`] — `dedup_table` in transactional mode (`#[tx]`) on PostgreSQL or SQLite:
//!   the ledger row and the idempotency record commit in one transaction, so a consumer killed
//!   anywhere leaves either both or neither.
//! - [`ClaimPayments`] — `dedup_table` in claim mode on Redis (or on the SQLite pool): the
//!   claim commits first with a lease, the ledger row is written by the body, the response is
//!   recorded when the body returns. A crash *between* the body's write and the record makes
//!   the redelivery after the lease run the body again: a claim-mode effect must be safe to
//!   repeat, or use transactional mode.
//!
//! A consumer decodes the body ([`decode`]), calls the handler through [`process`] (which also
//! reports whether the call ran or replayed) and settles the delivery with its broker's own
//! calls ([`amqp::settle`], [`jetstream::settle`]), as [`Settle`] says: ack after `Ok` (fresh
//! or replayed), retry later on `InProgress` and other retryable errors, dead-letter on
//! `FingerprintMismatch` and other errors no retry can fix. The README's "Consumers" section
//! gives the rules and the tests that back them.

pub mod amqp;
pub mod jetstream;

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

use idempotent_runtime::consumer::Settle;
use idempotent_runtime::{Disposition, Error, idempotent, observe};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool, SqliteConnection, SqlitePool};
use tokio::sync::Notify;

/// A payment message, the JSON body a producer publishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// The merchant: the scope of the idempotency key (one merchant never replays another's).
    pub merchant: String,
    /// The business key of the payment (the idempotency key): every delivery of it, and every
    /// re-publication of the same payment, carries the same key.
    pub key: String,
    /// Amount in cents; the fingerprint covers it, so the same key with another amount is
    /// refused with [`Error::FingerprintMismatch`].
    pub amount_cents: i64,
}

/// The handler's response, stored with the idempotency record and replayed to a redelivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// Echo of [`Payment::key`].
    pub key: String,
    /// The amount written to the ledger, cents.
    pub amount_cents: i64,
}

/// The handler's error type.
#[derive(Debug, thiserror::Error)]
pub enum PayError {
    /// From the idempotency runtime: in progress, fingerprint mismatch, backend failure, ….
    #[error(transparent)]
    Idempotency(#[from] Error),
    /// The ledger's database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// The message body is not a [`Payment`] in JSON.
    #[error("undecodable message body: {0}")]
    Decode(#[from] serde_json::Error),
}

impl PayError {
    /// How to settle a delivery that failed with this error: the runtime's rules for
    /// idempotency errors ([`Settle::for_error`]), [`Settle::Retry`] after `retry_after` for a
    /// database error (it may pass), [`Settle::DeadLetter`] for an undecodable body (it never
    /// will).
    pub fn settle(&self, retry_after: Duration) -> Settle {
        match self {
            PayError::Idempotency(e) => Settle::for_error(e, retry_after),
            PayError::Db(_) => Settle::Retry { after: retry_after },
            PayError::Decode(_) => Settle::DeadLetter,
        }
    }
}

/// Decodes a message body (JSON) into a [`Payment`]; [`PayError::Decode`] when it is not one.
pub fn decode(body: &[u8]) -> Result<Payment, PayError> {
    Ok(serde_json::from_slice(body)?)
}

/// What became of one delivery: the handler's result, whether the call ran the body or
/// replayed a stored response ([`observe`]; `None` when it failed before deciding), and how
/// to settle it.
#[derive(Debug)]
pub struct Handled {
    /// The handler's result (or the decoding error).
    pub result: Result<Applied, PayError>,
    /// [`Disposition::Executed`] or [`Disposition::Replayed`] for an `Ok`.
    pub how: Option<Disposition>,
    /// What to tell the broker.
    pub settle: Settle,
}

/// Decodes `body` and calls `handle` on it; maps the result to a [`Settle`]: `Ok` (fresh or
/// replayed) → [`Settle::Ack`], an error → [`PayError::settle`] with `retry_after`.
///
/// Broker-independent: [`amqp::settle`] and [`jetstream::settle`] then carry the answer out.
pub async fn process<H>(body: &[u8], handle: H, retry_after: Duration) -> Handled
where
    H: AsyncFnOnce(&Payment) -> Result<Applied, PayError>,
{
    let (result, how) = match decode(body) {
        Ok(payment) => observe(handle(&payment)).await,
        Err(e) => (Err(e), None),
    };
    let settle = match &result {
        Ok(_) => Settle::Ack,
        Err(e) => e.settle(retry_after),
    };
    Handled {
        result,
        how,
        settle,
    }
}

/// The name of a ledger table (one row per applied payment: `merchant`, `k`, `amount`),
/// checked to be a plain SQL identifier so the statements built from it are safe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger(String);

impl Ledger {
    /// The ledger table `name`; `None` unless it is a plain SQL identifier (an ASCII letter or
    /// `_`, then letters, digits or `_`, at most 63 bytes).
    pub fn new(name: &str) -> Option<Ledger> {
        let mut chars = name.chars();
        let first = chars.next()?;
        let plain = (first.is_ascii_alphabetic() || first == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && name.len() <= 63;
        plain.then(|| Ledger(name.to_owned()))
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// `CREATE TABLE IF NOT EXISTS` for the table; the same text works on PostgreSQL and
    /// SQLite.
    pub fn ddl(&self) -> sqlx::AssertSqlSafe<String> {
        // The name is a checked identifier (`Ledger::new`).
        sqlx::AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {} (merchant VARCHAR(200) NOT NULL, k VARCHAR(200) NOT NULL, amount BIGINT NOT NULL)",
            self.0
        ))
    }

    /// The `INSERT` of one ledger row, with `$1, $2, $3` placeholders (PostgreSQL) when
    /// `dollar`, else `?` (SQLite).
    pub fn insert(&self, dollar: bool) -> sqlx::AssertSqlSafe<String> {
        let values = if dollar { "$1, $2, $3" } else { "?, ?, ?" };
        // The name is a checked identifier (`Ledger::new`).
        sqlx::AssertSqlSafe(format!(
            "INSERT INTO {} (merchant, k, amount) VALUES ({values})",
            self.0
        ))
    }
}

/// A pause point in the handler's body, for demos and tests that show a redelivery arriving
/// while the first delivery's handler still runs: when armed, the next body to pass signals
/// `entered` and waits for `release`.
#[derive(Debug, Default)]
pub struct Hold {
    armed: AtomicBool,
    /// Signalled when an armed body reaches the hold.
    pub entered: Notify,
    /// Lets the held body go on.
    pub release: Notify,
}

impl Hold {
    /// Holds the next body that passes.
    pub fn arm(&self) {
        self.armed.store(true, SeqCst);
    }

    /// Called by the bodies: waits only for the first body after [`arm`](Self::arm).
    pub async fn pass(&self) {
        if self.armed.swap(false, SeqCst) {
            self.entered.notify_one();
            self.release.notified().await;
        }
    }
}

/// The payment handler in transactional mode: `dedup_table` with `#[tx]`, so the ledger row and
/// the idempotency record commit in one transaction of `db` (a `PgPool` or a `SqlitePool`,
/// migrated with [`idempotent_runtime::migrate`]).
#[derive(Debug)]
pub struct TxPayments<P> {
    /// The database holding both the idempotency records and the ledger.
    pub db: P,
    /// The ledger table (created with [`Ledger::ddl`]).
    pub ledger: Ledger,
}

impl TxPayments<PgPool> {
    /// Applies a payment to the ledger once per (merchant, key): a redelivery replays the
    /// stored [`Applied`] for `ttl` (24 h, the default). The record and the ledger row commit
    /// together, so a consumer killed before its ack finds both on redelivery.
    #[idempotent(
        strategy = "dedup_table",
        key = "msg.key",
        scope = "msg.merchant",
        store = "self.db",
        name = "payments::apply_tx_postgres"
    )]
    pub async fn apply(
        &self,
        msg: &Payment,
        #[tx] tx: &mut PgConnection,
    ) -> Result<Applied, PayError> {
        sqlx::query(self.ledger.insert(true))
            .bind(&msg.merchant)
            .bind(&msg.key)
            .bind(msg.amount_cents)
            .execute(&mut *tx)
            .await?;
        Ok(Applied {
            key: msg.key.clone(),
            amount_cents: msg.amount_cents,
        })
    }
}

impl TxPayments<SqlitePool> {
    /// [`TxPayments::<PgPool>::apply`] on SQLite: the record and the ledger row commit in one
    /// `BEGIN IMMEDIATE` transaction.
    #[idempotent(
        strategy = "dedup_table",
        key = "msg.key",
        scope = "msg.merchant",
        store = "self.db",
        name = "payments::apply_tx_sqlite"
    )]
    pub async fn apply(
        &self,
        msg: &Payment,
        #[tx] tx: &mut SqliteConnection,
    ) -> Result<Applied, PayError> {
        sqlx::query(self.ledger.insert(false))
            .bind(&msg.merchant)
            .bind(&msg.key)
            .bind(msg.amount_cents)
            .execute(&mut *tx)
            .await?;
        Ok(Applied {
            key: msg.key.clone(),
            amount_cents: msg.amount_cents,
        })
    }
}

/// The payment handler in claim mode: `dedup_table` on a key-value store `kv` (Redis, or a
/// SQL pool), the ledger row written by the body to `db` (SQLite), outside the claim's store.
///
/// The claim commits first with a 10 s lease (renewed while the body runs); a redelivery
/// while the body runs gets [`Error::InProgress`] (retry it later), one after the body returned
/// gets the response replayed. A consumer killed after the body's write and before the record
/// leaves the key in progress until the lease ends, after which a redelivery runs the body
/// again: the limit of claim mode (README, "Consumers").
#[derive(Debug)]
pub struct ClaimPayments<K> {
    /// The idempotency store (claims and records).
    pub kv: K,
    /// The database holding the ledger.
    pub db: SqlitePool,
    /// The ledger table (created with [`Ledger::ddl`]).
    pub ledger: Ledger,
    /// A pause point inside the body, after the claim (see [`Hold`]).
    pub hold: Hold,
}

macro_rules! claim_payments {
    ($($store:ty => $name:tt),*) => {$(
        impl ClaimPayments<$store> {
            /// Applies a payment to the ledger once per (merchant, key), in claim mode (see
            /// [`ClaimPayments`]).
            #[idempotent(
                strategy = "dedup_table",
                key = "msg.key",
                scope = "msg.merchant",
                store = "self.kv",
                lease = "10s",
                name = $name
            )]
            pub async fn apply(&self, msg: &Payment) -> Result<Applied, PayError> {
                self.hold.pass().await;
                sqlx::query(self.ledger.insert(false))
                    .bind(&msg.merchant)
                    .bind(&msg.key)
                    .bind(msg.amount_cents)
                    .execute(&self.db)
                    .await?;
                Ok(Applied {
                    key: msg.key.clone(),
                    amount_cents: msg.amount_cents,
                })
            }
        }
    )*};
}

// Distinct operation names: one process may hold both (a shared name would share records).
claim_payments!(
    idempotent_runtime::RedisStore => "payments::apply_claim_redis",
    SqlitePool => "payments::apply_claim_sqlite"
);
