//! `idempotent-admin` end to end on SQLite (and on PostgreSQL, MariaDB and Redis when
//! `IDEMPOTENT_POSTGRES_URL` / `IDEMPOTENT_MYSQL_URL` / `IDEMPOTENT_REDIS_URL` are set): the
//! built binary inspects a record a real call wrote, evicts it (the next call runs again) and
//! purges an expired one (on Redis, which expires records itself, a purge reports 0); on Redis
//! it inspects and evicts `distributed_lock` locks and one-time tokens made by annotated
//! functions (held, completed, consumed, refused unless forced, the forced holder's `LockLost`
//! naming the eviction). The table's exact lines (rounded durations, RFC 3339 times), the JSON's
//! `_ms` fields, argument errors (`--batch 0`, no URL, a lock on SQL) and the README's recipe
//! for a key made by the HTTP example are checked too.
//!
//! Durations in the table are rounded to the minute from an hour up, so the tests give their
//! claims leases and TTLs of hours and compare exact strings ("2h", "1day"): a run would need
//! 30 s between a write and the next line of output to see another value.

use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use idempotent_runtime::admin::{self, AdminStore};
use idempotent_runtime::strategy::{dedup_table, not_compared};
use idempotent_runtime::{ClaimStore, Error, FencingToken, idempotent, issue_token};
use tokio::process::Command;
use tokio::sync::Notify;

const OWNER: &str = "0123456789abcdef0123456789abcdef";
const HOURS_2: Duration = Duration::from_secs(2 * 3600);

/// Runs the binary with `args`, as is.
async fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idempotent-admin"))
        .args(args)
        .output()
        .await
        .expect("run idempotent-admin")
}

/// Runs the binary against `target` (`["--database-url", url]` or `["--redis-url", url]`)
/// with `--json`; asserts it succeeded.
async fn cli(target: [&str; 2], args: &[&str]) -> serde_json::Value {
    let out = run(&[&target[..], &["--json"], args].concat()).await;
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

/// The table the binary prints against `target`; asserts it exited with `code`.
async fn table(target: [&str; 2], args: &[&str], code: i32) -> String {
    let out = run(&[&target[..], args].concat()).await;
    assert_eq!(
        out.status.code(),
        Some(code),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 table")
}

/// `rows` as the table prints them.
fn lines(rows: &[(&str, &str)]) -> String {
    rows.iter()
        .map(|(name, value)| format!("{name:<24} {value}\n"))
        .collect()
}

fn unique(prefix: &str) -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("random");
    format!("{prefix}-{}", u64::from_le_bytes(b))
}

fn now_ms() -> i64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    i64::try_from(since.as_millis()).expect("ms fit")
}

/// A `_ms` field is a whole number of milliseconds within the minute before `d`.
fn assert_ms(value: &serde_json::Value, d: Duration) {
    let ms = value.as_u64().unwrap_or_else(|| panic!("not ms: {value}"));
    let d = d.as_millis() as u64;
    assert!(
        ms <= d && ms > d - 60_000,
        "{ms} ms, expected just under {d}"
    );
}

async fn end_to_end<S: AdminStore + ClaimStore>(store: &S, url: [&str; 2]) {
    let op = "admin_cli::place";
    let order = unique("order");
    let key = admin::storage_key(op, Some("tenant-1"), &[&order]).unwrap();
    let effects = AtomicU32::new(0);
    let body = async || -> Result<u32, Error> { Ok(effects.fetch_add(1, SeqCst) + 1) };
    let opts = dedup_table::Options::default();
    dedup_table::run(store, key.clone(), None, opts, not_compared, body)
        .await
        .unwrap();
    let k = [
        "--operation",
        op,
        "--scope",
        "tenant-1",
        "--key",
        order.as_str(),
    ];

    let seen = cli(url, &[&["inspect"][..], &k].concat()).await;
    assert_eq!(seen["record"]["state"], "completed", "{seen}");
    assert_ms(&seen["record"]["expires_in_ms"], opts.ttl);
    assert_eq!(seen["kind"], "record");
    assert_eq!(seen["storage_key"], key.hex());
    let evicted = cli(url, &[&["evict"][..], &k].concat()).await;
    assert_eq!(evicted["result"]["evicted"], "removed", "{evicted}");
    // `--kind record` is the default, and may be given.
    let seen = cli(url, &[&["inspect", "--kind", "record"][..], &k].concat()).await;
    assert_eq!(seen["record"]["state"], "absent", "{seen}");
    // Evicted: the next call runs the body again.
    let again = dedup_table::run(store, key, None, opts, not_compared, body)
        .await
        .unwrap();
    assert_eq!((again, effects.load(SeqCst)), (2, 2));

    // A live claim is not evicted without --force: exit code 3, a line saying so on stderr,
    // and the record still there. Its lease is shown rounded.
    let held = unique("held");
    let held_key = admin::storage_key(op, Some("tenant-1"), &[&held]).unwrap();
    let claim = idempotent_runtime::store::Claim {
        key: &held_key,
        fingerprint: None,
        owner: OWNER,
        lease: HOURS_2,
    };
    assert!(store.try_claim(&claim).await.unwrap());
    let k = [
        "--operation",
        op,
        "--scope",
        "tenant-1",
        "--key",
        held.as_str(),
    ];
    let redis_key = format!("idem:{{{}}}:rec", held_key.hex());
    let mut head = vec![("kind", "record"), ("operation", op), ("scope", "tenant-1")];
    if url[0] == "--redis-url" {
        head.push(("redis_key", &redis_key));
    }
    let hex = held_key.hex();
    head.push(("storage_key", &hex));
    let shown = table(url, &[&["inspect"][..], &k].concat(), 0).await;
    let rows = [
        ("record.state", "in_progress"),
        ("record.owner", OWNER),
        ("record.lease_left", "2h"),
    ];
    assert_eq!(shown, lines(&[&head[..], &rows].concat()));
    let seen = cli(url, &[&["inspect"][..], &k].concat()).await;
    assert_ms(&seen["record"]["lease_left_ms"], HOURS_2);

    let out = run(&[&url[..], &["evict"], &k].concat()).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("not evicted") && stderr.contains("--force"),
        "{stderr}"
    );
    let rows = [
        ("result.evicted", "live_claim"),
        ("result.lease_left", "2h"),
    ];
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        lines(&[&head[..], &rows].concat())
    );
    let seen = cli(url, &[&["inspect"][..], &k].concat()).await;
    assert_eq!(seen["record"]["state"], "in_progress", "{seen}");
    let forced = cli(url, &[&["evict", "--force"][..], &k].concat()).await;
    assert_eq!(forced["result"]["evicted"], "removed", "{forced}");
}

#[tokio::test]
async fn sqlite_inspect_evict_purge() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}?mode=rwc", dir.path().join("admin.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    idempotent_runtime::migrate(&pool).await.unwrap();
    let target = ["--database-url", url.as_str()];
    end_to_end(&pool, target).await;

    // A completed record's creation time is shown in RFC 3339 UTC, its TTL left rounded; the
    // JSON keeps Unix ms and whole ms.
    let key = admin::storage_key("admin_cli::format", None, &["o-1"]).unwrap();
    sqlx::query(
        "INSERT INTO idempotency_records (idempotency_key, operation, fingerprint, status, owner, response, expires_at_ms, created_at_ms) \
         VALUES (?1, 'admin_cli::format', NULL, 'completed', 'o', X'31', ?2, 1700000000123)",
    )
    .bind(key.hex())
    .bind(now_ms() + 2 * 3_600_000)
    .execute(&pool)
    .await
    .unwrap();
    let k = [
        "inspect",
        "--operation",
        "admin_cli::format",
        "--key",
        "o-1",
    ];
    let hex = key.hex();
    assert_eq!(
        table(target, &k, 0).await,
        lines(&[
            ("kind", "record"),
            ("operation", "admin_cli::format"),
            ("storage_key", &hex),
            ("record.state", "completed"),
            ("record.created_at", "2023-11-14T22:13:20Z"),
            ("record.expires_in", "2h"),
        ])
    );
    let seen = cli(target, &k).await;
    assert_eq!(seen["record"]["created_at_ms"], 1_700_000_000_123_i64);
    assert_ms(&seen["record"]["expires_in_ms"], HOURS_2);

    sqlx::query(
        "INSERT INTO idempotency_records (idempotency_key, operation, fingerprint, status, owner, response, expires_at_ms, created_at_ms) \
         VALUES ('old', 'admin_cli::old', NULL, 'completed', 'o', X'31', 1000, 1000)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let purged = cli(target, &["purge", "--batch", "10"]).await;
    assert_eq!(purged["purged"], 1, "{purged}");
    assert_eq!(
        table(target, &["purge"], 0).await,
        lines(&[("purged", "0")])
    );
}

/// Argument errors exit with code 2 and say what is allowed.
/// Runs the tool with `args` and asserts it exits with `code` and says `expected` on stderr.
async fn refused(args: &[&str], code: i32, expected: &str) {
    let out = run(args).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    assert!(stderr.contains(expected), "{stderr}");
}

#[tokio::test]
async fn argument_errors_name_what_is_allowed() {
    refused(
        &["--database-url", "sqlite::memory:", "purge", "--batch", "0"],
        2,
        "invalid value '0' for '--batch <BATCH>': 0 is not in 1..=100000",
    )
    .await;

    refused(
        &["inspect", "--operation", "op", "--key", "k"],
        2,
        "error: no store given: pass --database-url (sqlite:PATH, postgres://…, mysql://…) \
             for the records in a SQL database, or --redis-url (redis://…, or Redis Cluster \
             nodes comma-separated) for the records, locks and tokens in Redis",
    )
    .await;

    refused(
        &[
            "--database-url",
            "sqlite::memory:",
            "inspect",
            "--kind",
            "lock",
            "--operation",
            "op",
            "--key",
            "k",
        ],
        2,
        "--kind lock: a SQL database holds no distributed_lock entries",
    )
    .await;

    refused(
        &["--database-url", "sqlite::memory:", "inspect", "--key", "k"],
        2,
        "--kind record needs --operation",
    )
    .await;

    // A URL of another scheme, and a key the runtime refuses, are bad arguments too (found by
    // a new user's run: they exited 1, as a server failure does).
    refused(
        &[
            "--database-url",
            "ftp://x",
            "inspect",
            "--operation",
            "op",
            "--key",
            "k",
        ],
        2,
        "unsupported --database-url `ftp://x`: use postgres://, mysql:// (or mariadb://) or sqlite://",
    )
    .await;
    refused(
        &[
            "--redis-url",
            "http://127.0.0.1:6379",
            "inspect",
            "--operation",
            "op",
            "--key",
            "k",
        ],
        2,
        "unsupported --redis-url `http://127.0.0.1:6379`: use redis://host:port",
    )
    .await;
    for key in ["", &"k".repeat(1025)] {
        refused(
            &[
                "--database-url",
                "sqlite::memory:",
                "inspect",
                "--operation",
                "op",
                "--key",
                key,
            ],
            2,
            "invalid idempotency key",
        )
        .await;
    }

    // A SQLite file that does not exist is named (the tool never creates one).
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite:{}",
        dir.path().join("missing").join("x.db").display()
    );
    refused(
        &[
            "--database-url",
            &url,
            "inspect",
            "--operation",
            "op",
            "--key",
            "k",
        ],
        1,
        &format!(
            "idempotent-admin: no SQLite database at {} (the tool never creates one; check --database-url)",
            dir.path().join("missing").join("x.db").display()
        ),
    )
    .await;
    // A database without the records table (not the service's database) is said so, with
    // the driver's error (found by a new user's run: the driver's error alone).
    let empty = dir.path().join("empty.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}?mode=rwc", empty.display()))
        .await
        .unwrap();
    pool.close().await;
    refused(
        &[
            "--database-url",
            &format!("sqlite:{}", empty.display()),
            "inspect",
            "--operation",
            "op",
            "--key",
            "k",
        ],
        1,
        "idempotent-admin: this database has no idempotency_records table: is it the service's database?",
    )
    .await;
    // A bad key is a bad argument whatever the store: refused before any connection.
    refused(
        &[
            "--database-url",
            &url,
            "inspect",
            "--operation",
            "op",
            "--key",
            "",
        ],
        2,
        "invalid idempotency key",
    )
    .await;
    refused(
        &[
            "--redis-url",
            "redis://127.0.0.1:1",
            "evict",
            "--kind",
            "lock",
            "--operation",
            "op",
            "--key",
            "",
        ],
        2,
        "invalid idempotency key",
    )
    .await;
}

/// The README's recipe: a key made by the HTTP example (`POST /orders` with
/// `x-customer: <customer>` and `Idempotency-Key: "<key>"`) is found under the operation
/// `http_example.orders`, the customer as scope and the key without its quotes; the refund
/// route's under `http_example.refund`.
#[tokio::test]
async fn finds_a_key_made_by_the_http_example() {
    use idempotent_examples::http::{App, CUSTOMER, Db, router};
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}?mode=rwc", dir.path().join("http.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    idempotent_runtime::migrate(&pool).await.unwrap();
    let db = Db::Sqlite(pool.clone());
    db.create_tables().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = App {
        db,
        store: pool,
        hook: None,
    };
    tokio::spawn(async move { axum::serve(listener, router(app)).await });
    let client = reqwest::Client::new();
    let post = |path: &str, key: &str| {
        client
            .post(format!("http://{addr}{path}"))
            .header(CUSTOMER, "c1")
            .header("Idempotency-Key", format!("\"{key}\""))
            .header("content-type", "application/json")
            .body(r#"{"amount_cents":500}"#)
            .send()
    };
    let created = post("/orders", "k1").await.unwrap();
    assert_eq!(created.status(), 201);
    let order: serde_json::Value = serde_json::from_slice(&created.bytes().await.unwrap()).unwrap();
    let order_id = order["order_id"].as_str().unwrap();
    let refunded = post(&format!("/orders/{order_id}/refund"), "r1")
        .await
        .unwrap();
    assert_eq!(refunded.status(), 200);

    let target = ["--database-url", url.as_str()];
    for (op, key) in [("http_example.orders", "k1"), ("http_example.refund", "r1")] {
        let seen = cli(
            target,
            &["inspect", "--operation", op, "--scope", "c1", "--key", key],
        )
        .await;
        assert_eq!(seen["record"]["state"], "completed", "{op}: {seen}");
    }
}

#[cfg_attr(not(has_postgres), ignore = "IDEMPOTENT_POSTGRES_URL is not set")]
#[tokio::test]
async fn postgres_inspect_evict() {
    let Ok(url) = std::env::var("IDEMPOTENT_POSTGRES_URL") else {
        assert!(
            std::env::var("CI").is_err(),
            "CI=true needs IDEMPOTENT_POSTGRES_URL"
        );
        eprintln!("SKIPPED: IDEMPOTENT_POSTGRES_URL not set");
        return;
    };
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    idempotent_runtime::migrate(&pool).await.unwrap();
    end_to_end(&pool, ["--database-url", &url]).await;
}

#[cfg_attr(not(has_mysql), ignore = "IDEMPOTENT_MYSQL_URL is not set")]
#[tokio::test]
async fn mysql_inspect_evict() {
    let Ok(url) = std::env::var("IDEMPOTENT_MYSQL_URL") else {
        assert!(
            std::env::var("CI").is_err(),
            "CI=true needs IDEMPOTENT_MYSQL_URL"
        );
        eprintln!("SKIPPED: IDEMPOTENT_MYSQL_URL not set");
        return;
    };
    let pool = sqlx::MySqlPool::connect(&url).await.unwrap();
    idempotent_runtime::migrate(&pool).await.unwrap();
    end_to_end(&pool, ["--database-url", &url]).await;
}

fn redis_url() -> Option<String> {
    match std::env::var("IDEMPOTENT_REDIS_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(
                std::env::var("CI").is_err(),
                "CI=true needs IDEMPOTENT_REDIS_URL"
            );
            eprintln!("SKIPPED: IDEMPOTENT_REDIS_URL not set");
            None
        }
    }
}

#[cfg_attr(
    not(has_redis),
    ignore = "IDEMPOTENT_REDIS_URL is not set and redis-server is not on PATH"
)]
#[tokio::test]
async fn redis_inspect_evict_purge() {
    let Some(url) = redis_url() else { return };
    let store = idempotent_runtime::RedisStore::connect(&url).await.unwrap();
    end_to_end(&store, ["--redis-url", &url]).await;
    let purged = cli(["--redis-url", &url], &["purge"]).await;
    assert_eq!(purged["purged"], 0, "{purged}");
}

/// Annotated functions holding real locks and consuming real tokens; with `park` set, the
/// next body signals `entered` and waits for `release`.
struct Svc {
    store: idempotent_runtime::RedisStore,
    runs: AtomicU32,
    park: AtomicBool,
    entered: Notify,
    release: Notify,
    fence: AtomicU64,
}

impl Svc {
    async fn body(&self) -> u32 {
        if self.park.swap(false, SeqCst) {
            self.entered.notify_one();
            self.release.notified().await;
        }
        self.runs.fetch_add(1, SeqCst) + 1
    }

    #[idempotent(
        strategy = "distributed_lock",
        key = "id",
        scope = "tenant",
        store = "self.store",
        name = "admin_cli.settle",
        lease = "2h"
    )]
    async fn settle(
        &self,
        tenant: &str,
        id: &str,
        #[fence] fence: FencingToken,
    ) -> Result<u64, Error> {
        self.fence.store(fence.get(), SeqCst);
        self.body().await;
        Ok(fence.get())
    }

    #[idempotent(
        strategy = "token",
        key = "token",
        scope = "tenant",
        store = "self.store",
        name = "admin_cli.checkout",
        lease = "2h"
    )]
    async fn checkout(&self, tenant: &str, token: &str) -> Result<u32, Error> {
        Ok(self.body().await)
    }
}

/// The forced holder's error names every way a claim is lost, eviction by an operator among
/// them.
fn assert_evicted_lock_lost<T: std::fmt::Debug>(held: Result<T, Error>) {
    match held {
        Err(e @ Error::LockLost) => {
            let text = e.to_string();
            assert!(
                text.contains("an operator evicted it (idempotent-admin evict --force)")
                    && text.contains("its lease expired")
                    && text.contains("a Redis restart without persistence"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[cfg_attr(
    not(has_redis),
    ignore = "IDEMPOTENT_REDIS_URL is not set and redis-server is not on PATH"
)]
#[tokio::test]
async fn redis_locks() {
    let Some(url) = redis_url() else { return };
    let target = ["--redis-url", url.as_str()];
    let svc = Svc {
        store: idempotent_runtime::RedisStore::connect(&url).await.unwrap(),
        runs: AtomicU32::new(0),
        park: false.into(),
        entered: Notify::new(),
        release: Notify::new(),
        fence: 0.into(),
    };
    let tenant = unique("tenant");
    let id = unique("order");
    let key = admin::storage_key("admin_cli.settle", Some(&tenant), &[&id]).unwrap();
    let (hex, redis_key) = (key.hex(), format!("idem:{{{}}}:lock", key.hex()));
    let head = [
        ("kind", "lock"),
        ("operation", "admin_cli.settle"),
        ("scope", tenant.as_str()),
        ("redis_key", redis_key.as_str()),
        ("storage_key", hex.as_str()),
    ];
    let k = [
        "--kind",
        "lock",
        "--operation",
        "admin_cli.settle",
        "--scope",
        &tenant,
        "--key",
        &id,
    ];
    let inspect = [&["inspect"][..], &k].concat();
    assert_eq!(
        table(target, &inspect, 0).await,
        lines(&[&head[..], &[("lock.state", "absent")]].concat())
    );

    // Completed: the stored response (the fencing token the body returned), TTL left 24 h.
    let fence = svc.settle(&tenant, &id).await.unwrap();
    let fence_text = fence.to_string();
    assert_eq!(
        table(target, &inspect, 0).await,
        lines(
            &[
                &head[..],
                &[
                    ("lock.state", "completed"),
                    ("lock.expires_in", "1day"),
                    ("lock.response_kind", "response"),
                    ("lock.response", &fence_text),
                ]
            ]
            .concat()
        )
    );
    let seen = cli(target, &inspect).await;
    assert_ms(&seen["lock"]["expires_in_ms"], Duration::from_secs(86_400));
    // Evicted: the next call runs again, with a higher fencing token.
    let evicted = cli(target, &[&["evict"][..], &k].concat()).await;
    assert_eq!(evicted["result"]["evicted"], "removed", "{evicted}");
    let next = svc.settle(&tenant, &id).await.unwrap();
    assert!(next > fence, "{next} after {fence}");
    assert_eq!(svc.runs.load(SeqCst), 2);

    // Held: owner, the fencing token the body got, lease left; refused, then forced.
    let id2 = unique("order");
    let key2 = admin::storage_key("admin_cli.settle", Some(&tenant), &[&id2]).unwrap();
    let (hex2, redis_key2) = (key2.hex(), format!("idem:{{{}}}:lock", key2.hex()));
    let head2 = [
        ("kind", "lock"),
        ("operation", "admin_cli.settle"),
        ("scope", tenant.as_str()),
        ("redis_key", redis_key2.as_str()),
        ("storage_key", hex2.as_str()),
    ];
    let k2 = [
        "--kind",
        "lock",
        "--operation",
        "admin_cli.settle",
        "--scope",
        &tenant,
        "--key",
        &id2,
    ];
    svc.park.store(true, SeqCst);
    let (held, ()) = tokio::join!(svc.settle(&tenant, &id2), async {
        svc.entered.notified().await;
        let inspect = [&["inspect"][..], &k2].concat();
        let seen = cli(target, &inspect).await;
        let owner = seen["lock"]["owner"].as_str().unwrap().to_owned();
        assert_eq!(owner.len(), 32, "{seen}");
        assert_eq!(seen["lock"]["state"], "held", "{seen}");
        assert_eq!(seen["lock"]["fence"], svc.fence.load(SeqCst), "{seen}");
        assert_ms(&seen["lock"]["lease_left_ms"], HOURS_2);
        let fence = svc.fence.load(SeqCst).to_string();
        assert_eq!(
            table(target, &inspect, 0).await,
            lines(
                &[
                    &head2[..],
                    &[
                        ("lock.state", "held"),
                        ("lock.owner", &owner),
                        ("lock.fence", &fence),
                        ("lock.lease_left", "2h"),
                    ]
                ]
                .concat()
            )
        );
        assert_eq!(
            table(target, &[&["evict"][..], &k2].concat(), 3).await,
            lines(
                &[
                    &head2[..],
                    &[
                        ("result.evicted", "live_claim"),
                        ("result.lease_left", "2h")
                    ]
                ]
                .concat()
            )
        );
        let forced = cli(target, &[&["evict", "--force"][..], &k2].concat()).await;
        assert_eq!(forced["result"]["evicted"], "removed", "{forced}");
        svc.release.notify_one();
    });
    assert_evicted_lock_lost(held);
    assert_eq!(svc.runs.load(SeqCst), 3, "the evicted holder's body ran");
    let seen = cli(target, &[&["inspect"][..], &k2].concat()).await;
    assert_eq!(seen["lock"]["state"], "absent", "{seen}");
}

#[cfg_attr(
    not(has_redis),
    ignore = "IDEMPOTENT_REDIS_URL is not set and redis-server is not on PATH"
)]
#[tokio::test]
async fn redis_tokens() {
    let Some(url) = redis_url() else { return };
    let target = ["--redis-url", url.as_str()];
    let svc = Svc {
        store: idempotent_runtime::RedisStore::connect(&url).await.unwrap(),
        runs: AtomicU32::new(0),
        park: false.into(),
        entered: Notify::new(),
        release: Notify::new(),
        fence: 0.into(),
    };
    let tenant = unique("tenant");
    let token = issue_token(&svc.store, HOURS_2).await.unwrap();
    let key = admin::token_storage_key(&token).unwrap();
    let (hex, redis_key) = (key.hex(), format!("idem:{{{}}}:tok", key.hex()));
    let head = [
        ("kind", "token"),
        ("redis_key", redis_key.as_str()),
        ("storage_key", hex.as_str()),
    ];
    let inspect = ["inspect", "--kind", "token", "--key", &token];
    assert_eq!(
        table(target, &inspect, 0).await,
        lines(
            &[
                &head[..],
                &[("token.state", "issued"), ("token.expires_in", "2h")]
            ]
            .concat()
        )
    );

    // Completed: bound to the operation and scope that consumed it, the response stored.
    assert_eq!(svc.checkout(&tenant, &token).await.unwrap(), 1);
    let binding = admin::storage_key("admin_cli.checkout", Some(&tenant), &[&token])
        .unwrap()
        .hex();
    let bound = [
        "inspect",
        "--kind",
        "token",
        "--operation",
        "admin_cli.checkout",
        "--scope",
        &tenant,
        "--key",
        &token,
    ];
    assert_eq!(
        table(target, &bound, 0).await,
        lines(&[
            ("kind", "token"),
            ("operation", "admin_cli.checkout"),
            ("scope", &tenant),
            ("redis_key", &redis_key),
            ("storage_key", &hex),
            ("token.state", "completed"),
            ("token.binding_matches", "true"),
            ("token.binding", &binding),
            ("token.expires_in", "1day"),
            ("token.response_kind", "response"),
            ("token.response", "1"),
        ])
    );
    let other_scope = [
        "inspect",
        "--kind",
        "token",
        "--operation",
        "admin_cli.checkout",
        "--scope",
        "someone-else",
        "--key",
        &token,
    ];
    let seen = cli(target, &other_scope).await;
    assert_eq!(seen["token"]["binding_matches"], false, "{seen}");
    assert_eq!(seen["token"]["binding"], binding.as_str(), "{seen}");
    assert_ms(&seen["token"]["expires_in_ms"], Duration::from_secs(86_400));
    // Evicted: no replay any more, the token is refused.
    let evicted = cli(target, &["evict", "--kind", "token", "--key", &token]).await;
    assert_eq!(evicted["result"]["evicted"], "removed", "{evicted}");
    let refused = svc.checkout(&tenant, &token).await;
    assert!(matches!(refused, Err(Error::TokenInvalid)), "{refused:?}");
    assert_eq!(svc.runs.load(SeqCst), 1);

    // Consumed by a running call: refused, then forced.
    let live = issue_token(&svc.store, HOURS_2).await.unwrap();
    let live_key = admin::token_storage_key(&live).unwrap();
    let (live_hex, live_redis) = (live_key.hex(), format!("idem:{{{}}}:tok", live_key.hex()));
    let live_binding = admin::storage_key("admin_cli.checkout", Some(&tenant), &[&live])
        .unwrap()
        .hex();
    svc.park.store(true, SeqCst);
    let (held, ()) = tokio::join!(svc.checkout(&tenant, &live), async {
        svc.entered.notified().await;
        let inspect = ["inspect", "--kind", "token", "--key", &live];
        let seen = cli(target, &inspect).await;
        assert_eq!(seen["token"]["state"], "consumed", "{seen}");
        assert_eq!(seen["token"]["binding"], live_binding.as_str(), "{seen}");
        assert_ms(&seen["token"]["lease_left_ms"], HOURS_2);
        assert_ms(&seen["token"]["expires_in_ms"], HOURS_2);
        let owner = seen["token"]["owner"].as_str().unwrap().to_owned();
        assert_eq!(
            table(target, &inspect, 0).await,
            lines(&[
                ("kind", "token"),
                ("redis_key", &live_redis),
                ("storage_key", &live_hex),
                ("token.state", "consumed"),
                ("token.owner", &owner),
                ("token.binding", &live_binding),
                ("token.lease_left", "2h"),
                ("token.expires_in", "2h"),
            ])
        );
        let out = run(&[&target[..], &["evict", "--kind", "token", "--key", &live]].concat()).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{stderr}");
        assert!(stderr.contains("pass --force"), "{stderr}");
        let forced = cli(
            target,
            &["evict", "--force", "--kind", "token", "--key", &live],
        )
        .await;
        assert_eq!(forced["result"]["evicted"], "removed", "{forced}");
        svc.release.notify_one();
    });
    assert_evicted_lock_lost(held);
    assert_eq!(svc.runs.load(SeqCst), 2, "the evicted consumer's body ran");
    let seen = cli(target, &["inspect", "--kind", "token", "--key", &live]).await;
    assert_eq!(seen["token"]["state"], "absent", "{seen}");
}
