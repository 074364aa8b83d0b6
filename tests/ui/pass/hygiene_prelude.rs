//! Issue 11: the expansion names the standard items it uses by their full paths. Items named
//! `Ok`, `Err`, `Some`, `None`, `Result`, `Option`, `Default`, `Sized`, `Box`, `String`, `Vec`
//! and `Into` shadow the prelude where the annotated functions are (the bodies name the real
//! ones by path); every strategy family compiles and runs.
#![allow(non_upper_case_globals, dead_code)]

use std::time::Duration;

use idempotent_runtime::{Disposition, Error, observe};
use idempotent_tests::{AppError, Receipt, req};

mod shadowed {
    use idempotent_runtime::{FencingToken, MemoryStore, idempotent};
    use idempotent_tests::{AppError, Receipt, Req};
    use sqlx::{SqliteConnection, SqlitePool};

    const Ok: u8 = 0;
    const Err: u8 = 0;
    const Some: u8 = 0;
    const None: u8 = 0;
    pub struct Result;
    pub struct Option;
    pub struct Default;
    pub struct Sized;
    pub struct Box;
    pub struct String;
    pub struct Vec;
    pub struct Into;

    fn receipt(r: &Req, serial: u64) -> Receipt {
        Receipt {
            tenant: r.tenant.clone(),
            id: r.id.clone(),
            amount: r.amount,
            serial,
        }
    }

    #[idempotent(
        strategy = "dedup_table",
        key = "r.id",
        scope = "r.tenant",
        lease = "5s",
        on_cancel = "release"
    )]
    pub async fn claim(store: &MemoryStore, r: &Req) -> ::core::result::Result<Receipt, AppError> {
        ::core::result::Result::Ok(receipt(r, 1))
    }

    #[idempotent(strategy = "dedup_table", key = "r.id", name = "hygiene.in_tx")]
    pub async fn in_tx(
        pool: &SqlitePool,
        r: &Req,
        #[tx] tx: &mut SqliteConnection,
    ) -> ::core::result::Result<Receipt, AppError> {
        sqlx::query("SELECT 1").execute(&mut *tx).await?;
        ::core::result::Result::Ok(receipt(r, 2))
    }

    #[idempotent(strategy = "distributed_lock", key = "r.id", on_busy = "wait(1s)")]
    pub async fn locked(
        store: &MemoryStore,
        r: &Req,
        #[fence] fence: FencingToken,
    ) -> ::core::result::Result<Receipt, AppError> {
        ::core::result::Result::Ok(receipt(r, fence.0))
    }

    #[idempotent(strategy = "token", key = "r.id", ttl = "1h")]
    pub async fn spend(store: &MemoryStore, r: &Req) -> ::core::result::Result<Receipt, AppError> {
        ::core::result::Result::Ok(receipt(r, 3))
    }

    #[idempotent(strategy = "unique_index", key = "r.id", table = "orders")]
    pub async fn insert(
        pool: &SqlitePool,
        r: &Req,
        #[tx] tx: &mut SqliteConnection,
    ) -> ::core::result::Result<i64, AppError> {
        sqlx::query("INSERT INTO orders (id, amount) VALUES (?, ?)")
            .bind(&r.id)
            .bind(r.amount)
            .execute(&mut *tx)
            .await?;
        ::core::result::Result::Ok(r.amount)
    }

    pub struct Svc {
        pub db: MemoryStore,
    }

    impl Svc {
        #[idempotent(strategy = "dedup_table", key = "r.id", store = "self.db")]
        pub async fn place(&self, r: &Req) -> ::core::result::Result<Receipt, AppError> {
            ::core::result::Result::Ok(receipt(r, 4))
        }
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
    let memory = idempotent_runtime::MemoryStore::new();
    let (pool, _dir) = idempotent_tests::sqlite().await.expect("sqlite");
    sqlx::query("CREATE TABLE orders (id TEXT PRIMARY KEY, amount INTEGER NOT NULL)")
        .execute(&pool)
        .await
        .expect("orders");
    let r = req("t1", "k1", 100);

    twice(|| shadowed::claim(&memory, &r)).await;
    twice(|| shadowed::in_tx(&pool, &r)).await;
    twice(|| shadowed::locked(&memory, &r)).await;
    let svc = shadowed::Svc {
        db: idempotent_runtime::MemoryStore::new(),
    };
    twice(|| svc.place(&r)).await;
    let issued = idempotent_runtime::issue_token(&memory, Duration::from_secs(60))
        .await
        .expect("token");
    let t = req("t1", &issued, 100);
    twice(|| shadowed::spend(&memory, &t)).await;

    assert_eq!(shadowed::insert(&pool, &r).await.expect("insert"), 100);
    assert!(matches!(
        shadowed::insert(&pool, &r).await,
        Err(AppError::Idempotency(Error::Duplicate))
    ));
}

pub fn main() {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run());
}
