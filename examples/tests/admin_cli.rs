//! `idempotent-admin` end to end on SQLite (and on PostgreSQL, MariaDB and Redis when
//! `IDEMPOTENT_POSTGRES_URL` / `IDEMPOTENT_MYSQL_URL` / `IDEMPOTENT_REDIS_URL` are set): the
//! built binary inspects a record a real call wrote, evicts it (the next call runs again) and
//! purges an expired one (on Redis, which expires records itself, a purge reports 0).

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

use idempotent_runtime::admin::{self, AdminStore};
use idempotent_runtime::strategy::{dedup_table, not_compared};
use idempotent_runtime::{ClaimStore, Error};

/// Runs the binary against `target` (`["--database-url", url]` or `["--redis-url", url]`).
fn cli(target: [&str; 2], args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_idempotent-admin"))
        .args(target)
        .arg("--json")
        .args(args)
        .output()
        .expect("run idempotent-admin");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

fn unique(prefix: &str) -> String {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("random");
    format!("{prefix}-{}", u64::from_le_bytes(b))
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

    let seen = cli(url, &[&["inspect"][..], &k].concat());
    assert_eq!(seen["record"]["state"], "completed", "{seen}");
    let evicted = cli(url, &[&["evict"][..], &k].concat());
    assert_eq!(evicted["result"]["evicted"], "removed", "{evicted}");
    let seen = cli(url, &[&["inspect"][..], &k].concat());
    assert_eq!(seen["record"]["state"], "absent", "{seen}");
    // Evicted: the next call runs the body again.
    let again = dedup_table::run(store, key, None, opts, not_compared, body)
        .await
        .unwrap();
    assert_eq!((again, effects.load(SeqCst)), (2, 2));
    // The table output names the state too.
    let out = Command::new(env!("CARGO_BIN_EXE_idempotent-admin"))
        .args(url)
        .arg("inspect")
        .args(k)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("record.state") && text.contains("\"completed\""),
        "{text}"
    );

    // A live claim is not evicted without --force: exit code 3, a line saying so on stderr,
    // and the record still there.
    let held = unique("held");
    let held_key = admin::storage_key(op, Some("tenant-1"), &[&held]).unwrap();
    let claim = idempotent_runtime::store::Claim {
        key: &held_key,
        fingerprint: None,
        owner: "0123456789abcdef0123456789abcdef",
        lease: std::time::Duration::from_secs(60),
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
    let out = Command::new(env!("CARGO_BIN_EXE_idempotent-admin"))
        .args(url)
        .arg("evict")
        .args(k)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("not evicted") && stderr.contains("--force"),
        "{stderr}"
    );
    let seen = cli(url, &[&["inspect"][..], &k].concat());
    assert_eq!(seen["record"]["state"], "in_progress", "{seen}");
    let forced = cli(url, &[&["evict", "--force"][..], &k].concat());
    assert_eq!(forced["result"]["evicted"], "removed", "{forced}");
}

#[tokio::test]
async fn sqlite_inspect_evict_purge() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}?mode=rwc", dir.path().join("admin.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    idempotent_runtime::migrate(&pool).await.unwrap();
    end_to_end(&pool, ["--database-url", &url]).await;
    sqlx::query(
        "INSERT INTO idempotency_records (idempotency_key, operation, fingerprint, status, owner, response, expires_at_ms, created_at_ms) \
         VALUES ('old', 'admin_cli::old', NULL, 'completed', 'o', X'31', 1000, 1000)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let purged = cli(["--database-url", &url], &["purge", "--batch", "10"]);
    assert_eq!(purged["purged"], 1, "{purged}");
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

#[cfg_attr(
    not(has_redis),
    ignore = "IDEMPOTENT_REDIS_URL is not set and redis-server is not on PATH"
)]
#[tokio::test]
async fn redis_inspect_evict_purge() {
    let Ok(url) = std::env::var("IDEMPOTENT_REDIS_URL") else {
        assert!(
            std::env::var("CI").is_err(),
            "CI=true needs IDEMPOTENT_REDIS_URL"
        );
        eprintln!("SKIPPED: IDEMPOTENT_REDIS_URL not set");
        return;
    };
    let store = idempotent_runtime::RedisStore::connect(&url).await.unwrap();
    end_to_end(&store, ["--redis-url", &url]).await;
    let purged = cli(["--redis-url", &url], &["purge"]);
    assert_eq!(purged["purged"], 0, "{purged}");
}
