//! The HTTP orders API (`src/bin/http.rs`): axum routes made idempotent two ways.
//!
//! | route | idempotency |
//! |---|---|
//! | `POST /orders` — create an order | [`IdempotencyLayer`], key required, scope: the `x-customer` header |
//! | `POST /orders/{id}/pay` — pay it | the layer; a payment provider failure is a `503`, not stored |
//! | `POST /orders/{id}/receipt?bytes=N` — an N-byte receipt | the layer; a receipt over [`MAX_STORED_RESPONSE`] is passed through, not stored |
//! | `POST /orders/{id}/refund` — refund it | no layer: the handler reads the key with the [`IdempotencyKey`] extractor and calls an `#[idempotent]` function |
//! | `GET /orders/{id}/effects` — the ledger rows of the order (one per effect) | none (`GET`) |
//!
//! Every effect is one row of the `http_ledger` table (customer, operation, order, amount):
//! counting them is how the tests see that a retried request had its effect once.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::future::BoxFuture;
use idempotent_runtime::http::{IdempotencyKey, IdempotencyLayer, Problem};
use idempotent_runtime::{ClaimStore, Error, idempotent, observe};
use serde::{Deserialize, Serialize};

/// The largest response the layer stores for replay here, in bytes (64 KiB).
pub const MAX_STORED_RESPONSE: usize = 64 * 1024;

/// The header naming the caller: the scope of its idempotency keys (a real service takes the
/// authenticated user from the request's extensions instead).
pub const CUSTOMER: &str = "x-customer";

/// The ledger table, the same text on every database.
pub const LEDGER_DDL: &str = "CREATE TABLE IF NOT EXISTS http_ledger (customer VARCHAR(64) NOT NULL, op VARCHAR(16) NOT NULL, order_id VARCHAR(64) NOT NULL, amount BIGINT NOT NULL)";

/// The database holding the ledger.
#[derive(Clone, Debug)]
pub enum Db {
    /// PostgreSQL.
    Postgres(sqlx::PgPool),
    /// MySQL or MariaDB.
    MySql(sqlx::MySqlPool),
    /// SQLite.
    Sqlite(sqlx::SqlitePool),
}

/// Runs `$body` with `$pool` bound to the pool and `$dollar` to whether its placeholders are
/// `$1` (PostgreSQL) rather than `?` (see [`sql`](crate::service::sql)).
macro_rules! on_db {
    ($db:expr, |$pool:ident, $dollar:ident| $body:expr) => {
        match $db {
            Db::Postgres($pool) => {
                let $dollar = true;
                $body
            }
            Db::MySql($pool) => {
                let $dollar = false;
                $body
            }
            Db::Sqlite($pool) => {
                let $dollar = false;
                $body
            }
        }
    };
}

impl Db {
    /// Creates the ledger table. On PostgreSQL under an advisory lock, because concurrent
    /// `CREATE TABLE IF NOT EXISTS` race on its catalog (servers started together on a fresh
    /// database). Errors: sqlx's.
    pub async fn create_tables(&self) -> Result<(), sqlx::Error> {
        if let Db::Postgres(pool) = self {
            let mut tx = pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext('http_ledger'))")
                .execute(&mut *tx)
                .await?;
            sqlx::query(LEDGER_DDL).execute(&mut *tx).await?;
            return tx.commit().await;
        }
        on_db!(self, |pool, _dollar| sqlx::query(LEDGER_DDL)
            .execute(pool)
            .await
            .map(drop))
    }

    /// Writes one effect. Errors: sqlx's.
    pub async fn record(
        &self,
        customer: &str,
        op: &str,
        order_id: &str,
        amount: i64,
    ) -> Result<(), sqlx::Error> {
        const SQL: &str =
            "INSERT INTO http_ledger (customer, op, order_id, amount) VALUES ($1, $2, $3, $4)";
        on_db!(self, |pool, dollar| {
            sqlx::query(crate::service::sql(SQL, dollar))
                .bind(customer)
                .bind(op)
                .bind(order_id)
                .bind(amount)
                .execute(pool)
                .await
                .map(drop)
        })
    }

    /// How many effects `op` had for `customer` (on any order). Errors: sqlx's.
    pub async fn effects(&self, customer: &str, op: &str) -> Result<i64, sqlx::Error> {
        const SQL: &str = "SELECT COUNT(*) FROM http_ledger WHERE customer = $1 AND op = $2";
        on_db!(self, |pool, dollar| {
            sqlx::query_scalar::<_, i64>(crate::service::sql(SQL, dollar))
                .bind(customer)
                .bind(op)
                .fetch_one(pool)
                .await
        })
    }

    /// The effects on one order, in no particular order: `(op, amount)`. Errors: sqlx's.
    pub async fn order_effects(&self, order_id: &str) -> Result<Vec<(String, i64)>, sqlx::Error> {
        const SQL: &str = "SELECT op, amount FROM http_ledger WHERE order_id = $1";
        on_db!(self, |pool, dollar| {
            sqlx::query_as::<_, (String, i64)>(crate::service::sql(SQL, dollar))
                .bind(order_id)
                .fetch_all(pool)
                .await
        })
    }
}

/// A place in a handler where a test can hold or fail it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// `POST /orders`: the order's row is written; the response is not sent yet.
    OrderCreated,
    /// `POST /orders/{id}/pay`: about to charge; an `Err` is the payment provider failing.
    Charging,
}

/// Called at each [`Point`] with the customer; an `Err(reason)` fails the request there.
pub type Hook = Arc<dyn Fn(Point, &str) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The service state: the ledger's database, the claim store of the idempotency records, and
/// an optional [`Hook`] (tests).
pub struct App<K> {
    /// The ledger.
    pub db: Db,
    /// Where the layer and `refund` keep claims and responses.
    pub store: K,
    /// Test hook; `None` in the binary.
    pub hook: Option<Hook>,
}

/// A new order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewOrder {
    /// Amount in cents.
    pub amount_cents: i64,
}

/// An order as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    /// Its id (random, 16 hex digits).
    pub order_id: String,
    /// Amount in cents.
    pub amount_cents: i64,
    /// `created`, `paid` or `refunded`.
    pub status: String,
}

/// A refund request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefundRequest {
    /// Amount in cents.
    pub amount_cents: i64,
}

/// The handlers' error: idempotency outcomes as problem+json with their status
/// (`IntoResponse` for [`Error`]), the rest `500`/`503`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Duplicate in progress, payload mismatch, store failure, …
    #[error(transparent)]
    Idempotency(#[from] Error),
    /// The ledger's database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// The (simulated) payment provider failed: `503`.
    #[error("the payment provider is unavailable: {0}")]
    Provider(String),
    /// The request is missing the customer header: `400`.
    #[error("the {CUSTOMER} header is missing")]
    NoCustomer,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let detail = self.to_string();
        match self {
            ApiError::Idempotency(e) => e.into_response(),
            ApiError::Db(_) => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                None,
                "Database error",
                detail,
            )
            .into_response(),
            ApiError::Provider(_) => Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                "Payment provider unavailable",
                detail,
            )
            .into_response(),
            ApiError::NoCustomer => {
                Problem::new(StatusCode::BAD_REQUEST, None, "No customer", detail).into_response()
            }
        }
    }
}

fn customer(headers: &HeaderMap) -> Result<String, ApiError> {
    headers
        .get(CUSTOMER)
        .and_then(|v| v.to_str().ok())
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .ok_or(ApiError::NoCustomer)
}

fn new_id() -> Result<String, ApiError> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| Error::Backend(e.to_string().into()))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

impl<K: ClaimStore> App<K> {
    async fn hook(&self, point: Point, customer: &str) -> Result<(), String> {
        match &self.hook {
            Some(hook) => hook(point, customer).await,
            None => Ok(()),
        }
    }

    /// Refunds an order once per idempotency key: an `#[idempotent]` function (claim mode on
    /// the same store as the layer), called by the `refund` handler with the key the
    /// [`IdempotencyKey`] extractor read.
    #[idempotent(
        strategy = "dedup_table",
        key = "key",
        scope = "customer",
        store = "self.store",
        name = "http_example.refund"
    )]
    pub async fn refund(
        &self,
        customer: &str,
        order_id: &str,
        key: &str,
        req: &RefundRequest,
    ) -> Result<Order, ApiError> {
        self.db
            .record(customer, "refund", order_id, req.amount_cents)
            .await?;
        Ok(Order {
            order_id: order_id.to_owned(),
            amount_cents: req.amount_cents,
            status: "refunded".into(),
        })
    }
}

async fn create_order<K: ClaimStore>(
    State(app): State<Arc<App<K>>>,
    headers: HeaderMap,
    Json(req): Json<NewOrder>,
) -> Result<(StatusCode, Json<Order>), ApiError> {
    let customer = customer(&headers)?;
    let order_id = new_id()?;
    app.db
        .record(&customer, "order", &order_id, req.amount_cents)
        .await?;
    app.hook(Point::OrderCreated, &customer)
        .await
        .map_err(ApiError::Provider)?;
    Ok((
        StatusCode::CREATED,
        Json(Order {
            order_id,
            amount_cents: req.amount_cents,
            status: "created".into(),
        }),
    ))
}

async fn pay<K: ClaimStore>(
    State(app): State<Arc<App<K>>>,
    Path(order_id): Path<String>,
    headers: HeaderMap,
    Json(req): Json<NewOrder>,
) -> Result<Json<Order>, ApiError> {
    let customer = customer(&headers)?;
    app.hook(Point::Charging, &customer)
        .await
        .map_err(ApiError::Provider)?;
    app.db
        .record(&customer, "payment", &order_id, req.amount_cents)
        .await?;
    Ok(Json(Order {
        order_id,
        amount_cents: req.amount_cents,
        status: "paid".into(),
    }))
}

/// The receipt's size.
#[derive(Debug, Deserialize)]
pub struct ReceiptSize {
    /// Bytes of receipt text.
    pub bytes: usize,
}

async fn receipt<K: ClaimStore>(
    State(app): State<Arc<App<K>>>,
    Path(order_id): Path<String>,
    Query(size): Query<ReceiptSize>,
    headers: HeaderMap,
) -> Result<String, ApiError> {
    let customer = customer(&headers)?;
    app.db.record(&customer, "receipt", &order_id, 0).await?;
    let line = format!("receipt for order {order_id}\n");
    Ok(line.repeat(size.bytes / line.len() + 1)[..size.bytes].to_owned())
}

async fn refund<K: ClaimStore>(
    State(app): State<Arc<App<K>>>,
    Path(order_id): Path<String>,
    IdempotencyKey(key): IdempotencyKey,
    headers: HeaderMap,
    Json(req): Json<RefundRequest>,
) -> Result<Response, ApiError> {
    let customer = customer(&headers)?;
    let (result, how) = observe(app.refund(&customer, &order_id, &key, &req)).await;
    let mut response = Json(result?).into_response();
    if how == Some(idempotent_runtime::Disposition::Replayed) {
        response.headers_mut().insert(
            idempotent_runtime::http::IDEMPOTENT_REPLAYED,
            axum::http::HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}

async fn effects<K: ClaimStore>(
    State(app): State<Arc<App<K>>>,
    Path(order_id): Path<String>,
) -> Result<Json<Vec<(String, i64)>>, ApiError> {
    Ok(Json(app.db.order_effects(&order_id).await?))
}

/// The idempotency layer of the API: key required, scoped by the [`CUSTOMER`] header,
/// responses up to [`MAX_STORED_RESPONSE`] stored.
pub fn layer<K: ClaimStore>(store: K) -> IdempotencyLayer<K> {
    IdempotencyLayer::new(store)
        .name("http_example.orders")
        .required(true)
        .max_response_bytes(MAX_STORED_RESPONSE)
        .lease(Duration::from_secs(15))
        .scope(|req| {
            req.headers
                .get(CUSTOMER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
}

/// The API's routes on `app`.
pub fn router<K: ClaimStore>(app: App<K>) -> Router {
    let layer = layer(app.store.clone());
    Router::new()
        .route("/orders", post(create_order::<K>))
        .route("/orders/{id}/pay", post(pay::<K>))
        .route("/orders/{id}/receipt", post(receipt::<K>))
        .route_layer(layer)
        .route("/orders/{id}/refund", post(refund::<K>))
        .route("/orders/{id}/effects", get(effects::<K>))
        .with_state(Arc::new(app))
}
