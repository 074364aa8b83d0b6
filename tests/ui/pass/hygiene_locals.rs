//! Issue 11: every name the expansion introduces is hygienic. Items named like the locals,
//! closure parameters and patterns a wrapper could use (`value`, `error`, `result`, `tx`,
//! `store`, `key`, `fence`, `ok`, …) are in scope, as constants, a static and unit structs —
//! the kinds of item that turn a binding of the same name into a pattern — next to a replaying
//! strategy in both modes, `distributed_lock`, `token`, a business-table strategy and a method.
//! Each compiles and runs: a first call executes, a second is a duplicate.
#![allow(non_upper_case_globals, non_camel_case_types, dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use idempotent_runtime::{
    Disposition, Error, FencingToken, MemoryStore, idempotent, issue_token, observe,
};
use idempotent_tests::{AppError, Receipt, Req, req};
use sqlx::{SqliteConnection, SqlitePool};

const value: u8 = 0;
static error: u8 = 0;
struct result;
const tx: u8 = 0;
const store: u8 = 0;
const key: u8 = 0;
const fence: u8 = 0;
struct ok;
struct err;
const fingerprint: u8 = 0;
const fingerprinter: u8 = 0;
const label: u8 = 0;
const full: u8 = 0;
const base: u8 = 0;
const output: u8 = 0;
const body: u8 = 0;
const strategy: u8 = 0;
static options: u8 = 0;
const kit: u8 = 0;
const token: u8 = 0;
const name: u8 = 0;
const scope: u8 = 0;

static RUNS: AtomicU64 = AtomicU64::new(0);

fn receipt(r: &Req, serial: u64) -> Receipt {
    Receipt {
        tenant: r.tenant.clone(),
        id: r.id.clone(),
        amount: r.amount,
        serial,
    }
}

#[idempotent(strategy = "dedup_table", key = "r.id", scope = "r.tenant")]
pub async fn claim(db: &MemoryStore, r: &Req) -> Result<Receipt, AppError> {
    Ok(receipt(r, RUNS.fetch_add(1, Ordering::SeqCst) + 1))
}

#[idempotent(strategy = "dedup_table", key = "r.id", fingerprint = ["r.amount", "r.tenant"])]
pub async fn in_tx(
    db: &SqlitePool,
    r: &Req,
    #[tx] c: &mut SqliteConnection,
) -> Result<Receipt, AppError> {
    sqlx::query("INSERT INTO ledger (id) VALUES (?)")
        .bind(&r.id)
        .execute(&mut *c)
        .await?;
    Ok(receipt(r, RUNS.fetch_add(1, Ordering::SeqCst) + 1))
}

#[idempotent(
    strategy = "distributed_lock",
    key = "r.id",
    lease = "5s",
    on_busy = "reject"
)]
pub async fn locked(
    db: &MemoryStore,
    r: &Req,
    #[fence] f: FencingToken,
) -> Result<Receipt, AppError> {
    Ok(receipt(r, f.0))
}

#[idempotent(strategy = "token", key = "r.id")]
pub async fn spend(db: &MemoryStore, r: &Req) -> Result<Receipt, AppError> {
    Ok(receipt(r, RUNS.fetch_add(1, Ordering::SeqCst) + 1))
}

#[idempotent(strategy = "select_before_insert", key = "r.id", table = "orders")]
pub async fn insert(
    db: &SqlitePool,
    r: &Req,
    #[tx] c: &mut SqliteConnection,
) -> Result<i64, AppError> {
    sqlx::query("INSERT INTO orders (id, amount) VALUES (?, ?)")
        .bind(&r.id)
        .bind(r.amount)
        .execute(&mut *c)
        .await?;
    Ok(r.amount)
}

pub struct Svc {
    pub db: MemoryStore,
}

impl Svc {
    #[idempotent(strategy = "dedup_table", key = "r.id", store = "self.db")]
    pub async fn place(&self, r: &Req) -> Result<Receipt, AppError> {
        Ok(receipt(r, RUNS.fetch_add(1, Ordering::SeqCst) + 1))
    }
}

/// The first call executes, the second replays the same response.
async fn twice<F: Future<Output = Result<Receipt, AppError>>>(call: impl Fn() -> F) {
    let (first, how) = observe(call()).await;
    let first = first.expect("first call");
    assert_eq!(how, Some(Disposition::Executed));
    let (second, how) = observe(call()).await;
    assert_eq!(second.expect("replay"), first);
    assert_eq!(how, Some(Disposition::Replayed));
}

async fn run() {
    let memory = MemoryStore::new();
    let (pool, _dir) = idempotent_tests::sqlite().await.expect("sqlite");
    sqlx::query("CREATE TABLE ledger (id TEXT NOT NULL)")
        .execute(&pool)
        .await
        .expect("ledger");
    sqlx::query("CREATE TABLE orders (id TEXT PRIMARY KEY, amount INTEGER NOT NULL)")
        .execute(&pool)
        .await
        .expect("orders");
    let r = req("t1", "k1", 100);

    twice(|| claim(&memory, &r)).await;
    twice(|| in_tx(&pool, &r)).await;
    twice(|| locked(&memory, &r)).await;
    let svc = Svc {
        db: MemoryStore::new(),
    };
    twice(|| svc.place(&r)).await;

    let issued = issue_token(&memory, Duration::from_secs(60))
        .await
        .expect("token");
    let t = req("t1", &issued, 100);
    twice(|| spend(&memory, &t)).await;

    assert_eq!(insert(&pool, &r).await.expect("insert"), 100);
    assert!(matches!(
        insert(&pool, &r).await,
        Err(AppError::Idempotency(Error::Duplicate))
    ));
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ledger")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(rows, 1);
}

pub fn main() {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run());
}
