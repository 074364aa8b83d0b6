//! The HTTP example (`idempotent_examples::http`, `cargo run -p idempotent-examples --bin
//! http`) served on a free loopback port and driven over real HTTP with reqwest, on every
//! claim store: SQLite (its pool), memory (ledger on SQLite), PostgreSQL and MariaDB (ledger
//! and claims in the database) and Redis standalone and Cluster (ledger on SQLite) when
//! their URLs are set (required under `CI=true`). Effects are counted in the example's ledger
//! table; concurrency is lined up with a barrier and a hook that holds the first handler.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use idempotent_examples::http::{App, CUSTOMER, Db, Hook, MAX_STORED_RESPONSE, Point, router};
use idempotent_runtime::ClaimStore;
use idempotent_runtime::http::IdempotencyLayer;
use idempotent_tests::unique;
use tokio::sync::{Barrier, Notify, Semaphore, mpsc};

/// What the test does at the handlers' [`Point`]s.
struct Hooks {
    /// Hold the first `OrderCreated` until `release` gets a permit.
    hold_first: AtomicBool,
    /// How many handlers reached `OrderCreated`.
    created: AtomicUsize,
    /// Notified when the first handler is held.
    entered: Notify,
    release: Semaphore,
    /// How many handlers reached `Charging`; the first fails (the provider is down).
    charging: AtomicUsize,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            hold_first: AtomicBool::new(false),
            created: AtomicUsize::new(0),
            entered: Notify::new(),
            release: Semaphore::new(0),
            charging: AtomicUsize::new(0),
        }
    }
}

fn hook(h: Arc<Hooks>) -> Hook {
    Arc::new(move |point, _customer| {
        let h = h.clone();
        Box::pin(async move {
            match point {
                Point::OrderCreated => {
                    let n = h.created.fetch_add(1, SeqCst);
                    if n == 0 && h.hold_first.load(SeqCst) {
                        h.entered.notify_one();
                        let _ = h.release.acquire().await.map(|p| p.forget());
                    }
                    Ok(())
                }
                Point::Charging => match h.charging.fetch_add(1, SeqCst) {
                    0 => Err("the provider is down".to_owned()),
                    _ => Ok(()),
                },
            }
        })
    })
}

struct Server {
    base: String,
    db: Db,
    hooks: Arc<Hooks>,
    client: reqwest::Client,
    customer: String,
}

async fn start<K: ClaimStore>(db: Db, store: K) -> Server {
    db.create_tables().await.expect("create the ledger table");
    let hooks = Arc::new(Hooks::default());
    let app = App {
        db: db.clone(),
        store,
        hook: Some(hook(hooks.clone())),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move { axum::serve(listener, router(app)).await });
    Server {
        base: format!("http://{addr}"),
        db,
        hooks,
        client: reqwest::Client::new(),
        customer: unique("c"),
    }
}

/// One response as the client saw it.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    status: u16,
    replayed: bool,
    retry_after: Option<String>,
    content_type: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts an RFC 9457 problem with `status` whose type names the draft's `section`.
    fn assert_problem(&self, status: u16, section: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.content_type.as_deref(),
            Some("application/problem+json")
        );
        let p = self.json();
        assert_eq!(p["status"], status);
        assert!(
            p["type"]
                .as_str()
                .is_some_and(|t| t.ends_with(&format!("#section-{section}"))),
            "{p}"
        );
        assert!(p["title"].is_string() && p["detail"].is_string(), "{p}");
    }
}

fn sf(key: &str) -> String {
    format!("\"{key}\"")
}

impl Server {
    /// POSTs `body` (JSON) to `path` as this test's customer, with `key` as the raw
    /// `Idempotency-Key` header value when given.
    async fn post_with(
        &self,
        client: &reqwest::Client,
        path: &str,
        key: Option<&str>,
        body: &str,
    ) -> Answer {
        let mut req = client
            .post(format!("{}{path}", self.base))
            .header(CUSTOMER, &self.customer)
            .header("content-type", "application/json")
            .body(body.to_owned());
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        let res = req.send().await.expect("the request is answered");
        let header = |name: &str| {
            res.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Answer {
            status: res.status().as_u16(),
            replayed: header("idempotent-replayed").as_deref() == Some("true"),
            retry_after: header("retry-after"),
            content_type: header("content-type"),
            body: res.bytes().await.expect("the body is read").to_vec(),
        }
    }

    async fn post(&self, path: &str, key: Option<&str>, body: &str) -> Answer {
        self.post_with(&self.client, path, key, body).await
    }

    async fn effects(&self, op: &str) -> i64 {
        self.db
            .effects(&self.customer, op)
            .await
            .expect("count the ledger")
    }

    /// Creates an order with a fresh key; its id.
    async fn order(&self) -> String {
        let got = self
            .post(
                "/orders",
                Some(&sf(&unique("o"))),
                r#"{"amount_cents":500}"#,
            )
            .await;
        assert_eq!(got.status, 201, "{got:?}");
        got.json()["order_id"]
            .as_str()
            .expect("order_id")
            .to_owned()
    }
}

const CALLERS: usize = 32;

/// 32 concurrent POSTs with one key, lined up on a barrier, while the first handler is held:
/// the 31 others get `409` with `Retry-After`, one order row is written, and a retry after the
/// first completed gets its status and body with `Idempotent-Replayed: true`.
async fn concurrent_posts_make_one_order<K: ClaimStore>(db: Db, store: K) {
    let s = Arc::new(start(db, store).await);
    s.hooks.hold_first.store(true, SeqCst);
    let key = sf(&unique("k"));
    let barrier = Arc::new(Barrier::new(CALLERS));
    let (tx, mut rx) = mpsc::unbounded_channel();
    for _ in 0..CALLERS {
        let (s, key, barrier, tx) = (s.clone(), key.clone(), barrier.clone(), tx.clone());
        tokio::spawn(async move {
            barrier.wait().await;
            let _ = tx.send(
                s.post("/orders", Some(&key), r#"{"amount_cents":700}"#)
                    .await,
            );
        });
    }
    for _ in 1..CALLERS {
        let busy = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("the duplicates are answered while the first is held")
            .expect("an answer");
        busy.assert_problem(409, "2.7");
        assert_eq!(busy.retry_after.as_deref(), Some("1"));
        assert!(!busy.replayed);
    }
    s.hooks.release.add_permits(1);
    let first = rx.recv().await.expect("the first answer");
    assert_eq!((first.status, first.replayed), (201, false), "{first:?}");
    assert_eq!(first.json()["amount_cents"], 700);
    assert_eq!(s.hooks.created.load(SeqCst), 1);
    assert_eq!(s.effects("order").await, 1);

    let replay = s
        .post("/orders", Some(&key), r#"{"amount_cents":700}"#)
        .await;
    assert_eq!(
        (
            replay.status,
            replay.replayed,
            &replay.body,
            &replay.content_type
        ),
        (201, true, &first.body, &first.content_type)
    );
    assert_eq!(s.hooks.created.load(SeqCst), 1);
    assert_eq!(s.effects("order").await, 1);
}

/// The same key with another body is `422` and writes nothing; a missing or unusable key on
/// the required route is `400` problem+json; another customer's same key is its own.
async fn key_misuse_is_refused<K: ClaimStore>(db: Db, store: K) {
    let s = start(db, store).await;
    let key = sf(&unique("k"));
    let first = s
        .post("/orders", Some(&key), r#"{"amount_cents":500}"#)
        .await;
    assert_eq!(first.status, 201, "{first:?}");
    let other = s
        .post("/orders", Some(&key), r#"{"amount_cents":900}"#)
        .await;
    other.assert_problem(422, "2.7");
    // Another route with the same key is another payload too.
    let order_id = first.json()["order_id"].as_str().expect("id").to_owned();
    let elsewhere = s
        .post(
            &format!("/orders/{order_id}/pay"),
            Some(&key),
            r#"{"amount_cents":500}"#,
        )
        .await;
    elsewhere.assert_problem(422, "2.7");
    assert_eq!(s.effects("order").await, 1);
    assert_eq!(s.effects("payment").await, 0);

    s.post("/orders", None, r#"{"amount_cents":500}"#)
        .await
        .assert_problem(400, "2.7");
    for bad in [
        unique("bare"),              // not quoted: a token, not an sf-string
        "\"\"".to_owned(),           // empty
        sf(&"k".repeat(256)),        // over 255 characters
        "\"unterminated".to_owned(), // not an sf-string
    ] {
        s.post("/orders", Some(&bad), r#"{"amount_cents":500}"#)
            .await
            .assert_problem(400, "2.1");
    }
    assert_eq!(s.effects("order").await, 1);

    // The scope: another customer's request with the same key is a first request.
    let mut other_customer = start_like(&s);
    other_customer.customer = unique("c2");
    let theirs = other_customer
        .post("/orders", Some(&key), r#"{"amount_cents":900}"#)
        .await;
    assert_eq!((theirs.status, theirs.replayed), (201, false), "{theirs:?}");
    assert_eq!(other_customer.effects("order").await, 1);
    assert_eq!(s.effects("order").await, 1);
}

/// The same server, as another customer.
fn start_like(s: &Server) -> Server {
    Server {
        base: s.base.clone(),
        db: s.db.clone(),
        hooks: s.hooks.clone(),
        client: s.client.clone(),
        customer: s.customer.clone(),
    }
}

/// A client that drops its connection while the handler runs, then retries with the same
/// key: the first request's effect happens once, the retry gets `409` while it runs and then
/// its response, replayed.
async fn dropped_connection_then_retry<K: ClaimStore>(db: Db, store: K) {
    let s = Arc::new(start(db, store).await);
    s.hooks.hold_first.store(true, SeqCst);
    let key = sf(&unique("k"));
    let body = r#"{"amount_cents":300}"#;
    let gone = {
        let (s, key) = (s.clone(), key.clone());
        tokio::spawn(async move {
            // A client of its own: its connection goes with it.
            let client = reqwest::Client::new();
            s.post_with(&client, "/orders", Some(&key), body).await
        })
    };
    s.hooks.entered.notified().await;
    gone.abort();
    assert!(gone.await.is_err_and(|e| e.is_cancelled()));

    let busy = s.post("/orders", Some(&key), body).await;
    busy.assert_problem(409, "2.7");
    s.hooks.release.add_permits(1);
    let started = tokio::time::Instant::now();
    let retry = loop {
        let got = s.post("/orders", Some(&key), body).await;
        if got.status != 409 {
            break got;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "still 409 after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((retry.status, retry.replayed), (201, true), "{retry:?}");
    assert_eq!(retry.json()["amount_cents"], 300);
    assert_eq!(s.hooks.created.load(SeqCst), 1);
    assert_eq!(s.effects("order").await, 1);
}

/// A 5xx from the handler is given to the client and not stored: the retry runs the handler
/// again, and only its success is replayed.
async fn server_error_is_not_stored<K: ClaimStore>(db: Db, store: K) {
    let s = start(db, store).await;
    let order_id = s.order().await;
    let path = format!("/orders/{order_id}/pay");
    let key = sf(&unique("k"));
    let body = r#"{"amount_cents":500}"#;
    let failed = s.post(&path, Some(&key), body).await;
    assert_eq!((failed.status, failed.replayed), (503, false), "{failed:?}");
    assert_eq!(s.hooks.charging.load(SeqCst), 1);
    assert_eq!(s.effects("payment").await, 0);

    let paid = s.post(&path, Some(&key), body).await;
    assert_eq!((paid.status, paid.replayed), (200, false), "{paid:?}");
    assert_eq!(paid.json()["status"], "paid");
    assert_eq!(s.hooks.charging.load(SeqCst), 2);
    assert_eq!(s.effects("payment").await, 1);

    let again = s.post(&path, Some(&key), body).await;
    assert_eq!(
        (again.status, again.replayed, &again.body),
        (200, true, &paid.body)
    );
    assert_eq!(s.hooks.charging.load(SeqCst), 2);
    assert_eq!(s.effects("payment").await, 1);
}

/// A response over the stored limit is passed through whole and not stored: its retry runs
/// the handler again (documented in the README); one under the limit is replayed.
async fn large_response_is_passed_through<K: ClaimStore>(db: Db, store: K) {
    let s = start(db, store).await;
    let order_id = s.order().await;
    let big = MAX_STORED_RESPONSE * 3;
    let path = format!("/orders/{order_id}/receipt?bytes={big}");
    let key = sf(&unique("k"));
    for run in 1..=2 {
        let got = s.post(&path, Some(&key), "").await;
        assert_eq!(
            (got.status, got.replayed, got.body.len()),
            (200, false, big)
        );
        assert!(
            got.body
                .starts_with(format!("receipt for order {order_id}").as_bytes())
        );
        assert_eq!(s.effects("receipt").await, run);
    }
    let small = format!("/orders/{order_id}/receipt?bytes=1000");
    let key = sf(&unique("k"));
    let first = s.post(&small, Some(&key), "").await;
    let again = s.post(&small, Some(&key), "").await;
    assert_eq!(
        (first.status, first.replayed, first.body.len()),
        (200, false, 1000)
    );
    assert_eq!(
        (again.status, again.replayed, &again.body),
        (200, true, &first.body)
    );
    assert_eq!(s.effects("receipt").await, 3);
}

/// The refund route has no layer: its handler takes the key with the `IdempotencyKey`
/// extractor and calls an `#[idempotent]` function; errors answer through `IntoResponse` for
/// `idempotent_runtime::Error`.
async fn annotated_function_behind_a_route<K: ClaimStore>(db: Db, store: K) {
    let s = start(db, store).await;
    let order_id = s.order().await;
    let path = format!("/orders/{order_id}/refund");
    let key = sf(&unique("k"));
    let first = s.post(&path, Some(&key), r#"{"amount_cents":200}"#).await;
    assert_eq!((first.status, first.replayed), (200, false), "{first:?}");
    assert_eq!(first.json()["status"], "refunded");
    let again = s.post(&path, Some(&key), r#"{"amount_cents":200}"#).await;
    assert_eq!(
        (again.status, again.replayed, &again.body),
        (200, true, &first.body)
    );
    s.post(&path, Some(&key), r#"{"amount_cents":999}"#)
        .await
        .assert_problem(422, "2.7");
    s.post(&path, None, r#"{"amount_cents":200}"#)
        .await
        .assert_problem(400, "2.7");
    assert_eq!(s.effects("refund").await, 1);
}

/// The answer the `/attempt` route gives: `status`, and `Retry-After: 1` when `retry_after`.
#[derive(serde::Deserialize)]
struct AttemptQuery {
    status: u16,
    #[serde(default)]
    retry_after: bool,
}

/// `POST /attempt?status=N[&retry_after=true]`: writes one ledger row (`attempt`, the
/// effect) for the customer, then answers status N with a body naming it.
async fn attempt(
    axum::extract::State(db): axum::extract::State<Db>,
    headers: axum::http::HeaderMap,
    axum::extract::Query(q): axum::extract::Query<AttemptQuery>,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let customer = headers
        .get(CUSTOMER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    db.record(&customer, "attempt", "-", 0)
        .await
        .expect("record the attempt");
    let status = axum::http::StatusCode::from_u16(q.status).expect("a status");
    let mut response = (status, format!("attempt answered {}", q.status)).into_response();
    if q.retry_after {
        response.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("1"),
        );
    }
    response
}

/// A server whose only route is `/attempt`, behind the example's layer (key required, scope
/// the customer header) as `policy` changes it.
async fn start_attempts<K: ClaimStore>(
    db: Db,
    store: K,
    policy: impl FnOnce(IdempotencyLayer<K>) -> IdempotencyLayer<K>,
) -> Server {
    db.create_tables().await.expect("create the ledger table");
    let app = axum::Router::new()
        .route("/attempt", axum::routing::post(attempt))
        .route_layer(policy(idempotent_examples::http::layer(store)))
        .with_state(db.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server {
        base: format!("http://{addr}"),
        db,
        hooks: Arc::new(Hooks::default()),
        client: reqwest::Client::new(),
        customer: unique("c"),
    }
}

impl Server {
    /// Sends the same request to `path` twice with one fresh key and asserts each answer's
    /// status, whether the second was a replay (then its body is the first's), and how many
    /// times the handler ran in all (ledger rows of this customer, cumulative over the test).
    async fn twice(&self, path: &str, status: u16, stored: bool, runs_so_far: &mut i64) {
        let key = sf(&unique("k"));
        let first = self.post(path, Some(&key), "").await;
        let again = self.post(path, Some(&key), "").await;
        assert_eq!(
            (first.status, first.replayed),
            (status, false),
            "{path}: {first:?}"
        );
        assert_eq!(
            String::from_utf8_lossy(&first.body),
            format!("attempt answered {status}")
        );
        assert_eq!(
            (again.status, again.replayed, &again.body),
            (status, stored, &first.body),
            "{path}: the retry"
        );
        *runs_so_far += if stored { 1 } else { 2 };
        assert_eq!(
            self.effects("attempt").await,
            *runs_so_far,
            "{path}: handler runs"
        );
    }
}

/// Which handler responses are stored and replayed, and which release the claim (the retry
/// runs the handler again): the default (below 500), `terminal` over the status, `terminal`
/// over a header, and `store_status`.
async fn terminal_policy_decides_what_is_stored<K: ClaimStore>(db: Db, store: K) {
    let default = start_attempts(db.clone(), store.clone(), |l| l).await;
    let mut runs = 0;
    default
        .twice("/attempt?status=200", 200, true, &mut runs)
        .await;
    default
        .twice("/attempt?status=402", 402, true, &mut runs)
        .await;
    default
        .twice("/attempt?status=409", 409, true, &mut runs)
        .await;
    default
        .twice("/attempt?status=503", 503, false, &mut runs)
        .await;

    // Only a declined payment is final among the errors; responses below 400 are stored
    // whatever `terminal` says.
    let by_status = start_attempts(db.clone(), store.clone(), |l| {
        l.terminal(|p| p.status == axum::http::StatusCode::PAYMENT_REQUIRED)
    })
    .await;
    let mut runs = 0;
    by_status
        .twice("/attempt?status=201", 201, true, &mut runs)
        .await;
    by_status
        .twice("/attempt?status=402", 402, true, &mut runs)
        .await;
    by_status
        .twice("/attempt?status=409", 409, false, &mut runs)
        .await;
    by_status
        .twice("/attempt?status=503", 503, false, &mut runs)
        .await;

    // Every error final unless the handler sends `Retry-After`: a 5xx without it is stored,
    // a 429 with it released.
    let by_header = start_attempts(db.clone(), store.clone(), |l| {
        l.terminal(|p| !p.headers.contains_key(axum::http::header::RETRY_AFTER))
    })
    .await;
    let mut runs = 0;
    by_header
        .twice("/attempt?status=501", 501, true, &mut runs)
        .await;
    by_header
        .twice(
            "/attempt?status=429&retry_after=true",
            429,
            false,
            &mut runs,
        )
        .await;
    by_header
        .twice(
            "/attempt?status=503&retry_after=true",
            503,
            false,
            &mut runs,
        )
        .await;

    // `store_status` sees every status: successes only.
    let successes = start_attempts(db, store, |l| l.store_status(|s| s.is_success())).await;
    let mut runs = 0;
    successes
        .twice("/attempt?status=200", 200, true, &mut runs)
        .await;
    successes
        .twice("/attempt?status=402", 402, false, &mut runs)
        .await;
}

macro_rules! on_http_backends {
    ($($test:ident),* $(,)?) => {
        /// Ledger and claims in one SQLite file.
        mod sqlite {
            $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                let Some((pool, _dir)) = idempotent_tests::sqlite().await else { return };
                super::$test(super::Db::Sqlite(pool.clone()), pool).await
            }
            )*
        }
        /// Ledger on SQLite, claims in the memory store.
        mod memory {
            $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                let Some((pool, _dir)) = idempotent_tests::sqlite().await else { return };
                super::$test(super::Db::Sqlite(pool), idempotent_runtime::MemoryStore::new()).await
            }
            )*
        }
        mod postgres {
            $(
            #[cfg_attr(not(has_postgres), ignore = "IDEMPOTENT_POSTGRES_URL is not set")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                let Some(pool) = idempotent_tests::postgres().await else { return };
                super::$test(super::Db::Postgres(pool.clone()), pool).await
            }
            )*
        }
        mod mysql {
            $(
            #[cfg_attr(not(has_mysql), ignore = "IDEMPOTENT_MYSQL_URL is not set")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                let Some(pool) = idempotent_tests::mysql().await else { return };
                super::$test(super::Db::MySql(pool.clone()), pool).await
            }
            )*
        }
        /// Ledger on SQLite, claims in standalone Redis.
        mod redis {
            $(
            #[cfg_attr(not(has_redis), ignore = "IDEMPOTENT_REDIS_URL is not set and redis-server is not on PATH")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                let Some(store) = idempotent_tests::redis().await else { return };
                let Some((pool, _dir)) = idempotent_tests::sqlite().await else { return };
                super::$test(super::Db::Sqlite(pool), store).await
            }
            )*
        }
        /// Ledger on SQLite, claims in a Redis Cluster.
        mod redis_cluster {
            $(
            #[cfg_attr(not(has_redis_cluster), ignore = "IDEMPOTENT_REDIS_CLUSTER_URLS is not set and redis-server is not on PATH")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                let Some(store) = idempotent_tests::redis_cluster().await else { return };
                let Some((pool, _dir)) = idempotent_tests::sqlite().await else { return };
                super::$test(super::Db::Sqlite(pool), store).await
            }
            )*
        }
    };
}

on_http_backends!(
    concurrent_posts_make_one_order,
    key_misuse_is_refused,
    dropped_connection_then_retry,
    server_error_is_not_stored,
    large_response_is_passed_through,
    annotated_function_behind_a_route,
    terminal_policy_decides_what_is_stored,
);

/// The HTTP example's first connection goes through the runtime: a database it cannot reach
/// is one line on stderr naming the URL without its password and the cause, and it exits 1.
#[test]
fn the_binary_names_a_database_it_cannot_reach() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_http"))
        .args([
            "--database-url",
            "postgres://app:s3cret@127.0.0.1:1/orders",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .expect("run the http example");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(
            "error: --database-url: cannot connect to postgres://app@127.0.0.1:1/orders (the pool's first connection, within its acquire_timeout of 10s): connection refused"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
}

/// A malformed `--database-url` is refused as the demo refuses it (one shared check,
/// `idempotent_examples::connect::database_scheme`), before any connection, in one line,
/// without the password, as a usage error (exit 2).
#[test]
fn a_malformed_database_url_is_named_before_any_connection() {
    for (url, needle) in [
        (
            "ftp://:pw@x/y",
            "error: unsupported --database-url `ftp://x/y`: use postgres://, mysql:// (or mariadb://) or sqlite://",
        ),
        (
            "mysql://root:pw@127.0.0.1:1",
            "error: --database-url `mysql://root@127.0.0.1:1` names no database",
        ),
        (
            "postgres://app:pw@127.0.0.1:99999/x",
            "error: --database-url postgres://app@127.0.0.1:99999/x does not parse",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_http"))
            .args(["--database-url", url, "--listen", "127.0.0.1:0"])
            .output()
            .expect("run the http example");
        let stderr = String::from_utf8_lossy(&out.stderr);
        // A usage error, as clap's own and as in the `orders` demo: exit 2.
        assert_eq!(out.status.code(), Some(2), "{url}: {stderr}");
        assert!(stderr.starts_with(needle), "{url}: {stderr}");
        assert!(!stderr.contains("pw"), "{url}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{url}: one line: {stderr}");
    }
}

/// A bad `--redis-url` is said as the demo and `idempotent-admin` say it (one shared function,
/// `idempotent_examples::connect::redis`): another scheme or an empty node refused by name
/// (exit 2), a refused port in the shape of a bad `--database-url` (exit 1), no password
/// printed.
#[test]
fn the_binary_names_a_redis_it_cannot_reach() {
    let run = |url: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_http"))
            .args(["--redis-url", url, "--listen", "127.0.0.1:0"])
            .output()
            .expect("run the http example");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Malformed: a usage error (exit 2) before anything connects.
    let (code, stderr) = run("http://127.0.0.1:6379");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: unsupported --redis-url `http://127.0.0.1:6379`: use redis://host:port (comma-separated node URLs select a Redis Cluster)"),
        "{stderr}"
    );
    let (code, stderr) = run("redis://:s3cret@127.0.0.1:1,");
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        stderr,
        "error: --redis-url `redis://127.0.0.1:1,` has an empty node URL (node 2 of 2): remove the extra comma\n"
    );
    // Well formed but unreachable: a failed run (exit 1).
    let (code, stderr) = run("redis://:s3cret@127.0.0.1:1");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.starts_with(
            "error: --redis-url: cannot connect to redis://127.0.0.1:1: connection refused"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
}

/// SIGTERM (`docker stop`, systemd) or Ctrl-C stops the HTTP example cleanly, as the orders
/// demo: it stops listening, says so, exits 0 and its temporary SQLite directory is gone (it
/// was left behind, as the demo's was, before signals were caught).
#[test]
fn the_binary_stops_cleanly_on_sigterm_and_ctrl_c() {
    use std::io::{BufRead as _, Read as _};
    for (signal, name) in [("-TERM", "SIGTERM"), ("-INT", "Ctrl-C")] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_http"))
            .args(["--listen", "127.0.0.1:0"])
            .env_remove("DATABASE_URL")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the http example");
        let mut stderr = std::io::BufReader::new(child.stderr.take().expect("piped stderr"));
        let mut seen = String::new();
        let file = loop {
            let mut line = String::new();
            let n = stderr.read_line(&mut line).expect("read stderr");
            assert!(n > 0, "the server ended before listening:\n{seen}");
            seen.push_str(&line);
            if let Some(rest) = line.strip_prefix("temporary SQLite file ") {
                break std::path::PathBuf::from(&rest[..rest.find(" (").expect("a note")]);
            }
        };
        assert!(file.exists(), "{} missing while serving", file.display());
        let kill = std::process::Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(kill.success(), "kill {signal} failed");
        stderr.read_to_string(&mut seen).expect("read stderr");
        let status = child.wait().expect("wait for the server");
        assert_eq!(status.code(), Some(0), "{seen}");
        assert!(seen.contains(&format!("stopped ({name})")), "{seen}");
        let dir = file.parent().expect("its directory");
        assert!(!dir.exists(), "{} still exists", dir.display());
    }
}
