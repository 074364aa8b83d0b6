//! The five business-table strategies — select_before_insert, pessimistic, optimistic,
//! unique_index, state_machine — on PostgreSQL, MySQL/MariaDB and SQLite. Every test counts
//! effects in a ledger table and asserts the outcome each caller got; concurrency is lined up
//! with barriers, never sleeps. Tables have fixed names (the attribute names them at compile
//! time); tests isolate themselves with run-unique keys.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

use idempotent_runtime::{Error, idempotent};
use idempotent_tests::{AppError, unique};
use tokio::sync::Barrier;

/// What a caller got.
#[derive(Debug, Clone, PartialEq)]
enum Got {
    Ok,
    Duplicate,
    Conflict,
    NotFound,
    Other(String),
}

fn got<T: std::fmt::Debug>(r: Result<T, AppError>) -> Got {
    match r {
        Ok(_) => Got::Ok,
        Err(AppError::Idempotency(Error::Duplicate)) => Got::Duplicate,
        Err(AppError::Idempotency(Error::Conflict(_))) => Got::Conflict,
        Err(AppError::Idempotency(Error::NotFound(_))) => Got::NotFound,
        Err(e) => Got::Other(format!("{e:?}")),
    }
}

fn tally(all: &[Got]) -> (usize, usize) {
    let ok = all.iter().filter(|g| **g == Got::Ok).count();
    let dup = all.iter().filter(|g| **g == Got::Duplicate).count();
    assert_eq!(
        ok + dup,
        all.len(),
        "only Ok and Duplicate expected: {all:?}"
    );
    (ok, dup)
}

/// Waits at `barrier` the first `n` times it is called (later calls — reruns of a transaction
/// — pass straight through).
struct Once {
    barrier: Barrier,
    n: u32,
    seen: AtomicU32,
}

impl Once {
    fn new(n: usize) -> Arc<Once> {
        Arc::new(Once {
            barrier: Barrier::new(n),
            n: n as u32,
            seen: AtomicU32::new(0),
        })
    }
    async fn pass(&self) {
        if self.seen.fetch_add(1, SeqCst) < self.n {
            self.barrier.wait().await;
        }
    }
}

#[derive(Debug, Clone)]
pub struct Customer {
    pub email: String,
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct NewOrder {
    pub tenant: String,
    pub code: String,
    pub invoice: Option<String>,
    pub amount: Option<i64>,
    pub customer: Option<String>,
}

#[derive(Debug, Clone)]
pub struct AccountRef {
    pub code: String,
    pub version: i64,
}

#[derive(Debug, Clone)]
pub struct ShipRef {
    pub code: String,
}

#[derive(Debug, Clone)]
pub struct Debit {
    pub wallet: String,
    pub payment_id: String,
    pub amount: i64,
}

macro_rules! suite {
    (
        mod $m:ident;
        pool = $pool:ty;
        conn = $conn:ty;
        connect = $connect:expr;
        fix = $fix:expr;
        ddl = [$($ddl:literal),* $(,)?];
        raise_retryable = $raise:expr;
        single_writer = $single:expr;
    ) => {
        mod $m {
            use super::*;

            fn sql(text: &str) -> sqlx::AssertSqlSafe<String> {
                sqlx::AssertSqlSafe(($fix)(text))
            }

            pub struct Env {
                pub db: $pool,
                pub _guard: Box<dyn std::any::Any + Send + Sync>,
            }

            static SCHEMA: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

            pub async fn env(max: u32) -> Option<Env> {
                let (db, guard) = ($connect)(max).await?;
                let init = async {
                    for stmt in [$($ddl),*] {
                        sqlx::query(sql(stmt)).execute(&db).await.expect(stmt);
                    }
                };
                if $single {
                    init.await;
                } else {
                    SCHEMA.get_or_init(|| init).await;
                }
                Some(Env { db, _guard: guard })
            }

            async fn ledger(conn: &mut $conn, op: &str, k: &str) -> Result<(), sqlx::Error> {
                sqlx::query(sql("INSERT INTO s3_ledger (op, k) VALUES ($1, $2)"))
                    .bind(op)
                    .bind(k)
                    .execute(conn)
                    .await?;
                Ok(())
            }

            async fn effects(db: &$pool, op: &str, k: &str) -> i64 {
                sqlx::query_scalar(sql("SELECT COUNT(*) FROM s3_ledger WHERE op = $1 AND k = $2"))
                    .bind(op)
                    .bind(k)
                    .fetch_one(db)
                    .await
                    .unwrap()
            }

            async fn exec(db: &$pool, text: &str, binds: &[&str]) {
                let mut q = sqlx::query(sql(text));
                for b in binds {
                    q = q.bind(*b);
                }
                q.execute(db).await.unwrap();
            }

            async fn scalar_i64(db: &$pool, text: &str, k: &str) -> i64 {
                sqlx::query_scalar(sql(text)).bind(k).fetch_one(db).await.unwrap()
            }

            // ---------------------------------------------------------------- select_before_insert

            #[idempotent(strategy = "select_before_insert", key = "c.email", table = "s3_customers")]
            async fn register(db: &$pool, c: &Customer, gate: &Once, #[tx] tx: &mut $conn) -> Result<(), AppError> {
                gate.pass().await;
                sqlx::query(sql("INSERT INTO s3_customers (email, name) VALUES ($1, $2)"))
                    .bind(&c.email)
                    .bind(&c.name)
                    .execute(&mut *tx)
                    .await?;
                ledger(tx, "register", &c.email).await?;
                Ok(())
            }

            async fn rename_existing(db: &$pool, c: &Customer, _gate: &Once) -> Result<(), AppError> {
                sqlx::query(sql("UPDATE s3_customers SET name = $1 WHERE email = $2"))
                    .bind(&c.name)
                    .bind(&c.email)
                    .execute(db)
                    .await?;
                let mut conn = db.acquire().await?;
                ledger(&mut conn, "rename", &c.email).await?;
                Ok(())
            }

            #[idempotent(strategy = "select_before_insert", key = "c.email", table = "s3_customers", on_duplicate = "rename_existing")]
            async fn upsert(db: &$pool, c: &Customer, gate: &Once, #[tx] tx: &mut $conn) -> Result<(), AppError> {
                sqlx::query(sql("INSERT INTO s3_customers (email, name) VALUES ($1, $2)"))
                    .bind(&c.email)
                    .bind(&c.name)
                    .execute(&mut *tx)
                    .await?;
                ledger(tx, "register", &c.email).await?;
                let _ = gate;
                Ok(())
            }

            fn customer(email: &str) -> Customer {
                Customer { email: email.into(), name: "Ada".into() }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sbi_sequential_duplicate_does_not_run_the_body() {
                let Some(env) = env(4).await else { return };
                let c = customer(&unique("c"));
                let open = Once::new(1);
                open.seen.store(1, SeqCst);
                assert_eq!(got(register(&env.db, &c, &open).await), Got::Ok);
                assert_eq!(got(register(&env.db, &c, &open).await), Got::Duplicate);
                assert_eq!(effects(&env.db, "register", &c.email).await, 1);
                // on_duplicate: the update path instead of Error::Duplicate.
                let renamed = Customer { name: "Grace".into(), ..c.clone() };
                assert_eq!(got(upsert(&env.db, &renamed, &open).await), Got::Ok);
                assert_eq!(effects(&env.db, "register", &c.email).await, 1);
                assert_eq!(effects(&env.db, "rename", &c.email).await, 1);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sbi_20_concurrent_first_calls_past_the_check() {
                let Some(env) = env(24).await else { return };
                let env = Arc::new(env);
                let c = customer(&unique("c"));
                let gate = Once::new(20);
                let tasks: Vec<_> = (0..20)
                    .map(|_| {
                        let (env, c, gate) = (env.clone(), c.clone(), gate.clone());
                        tokio::spawn(async move { got(register(&env.db, &c, &gate).await) })
                    })
                    .collect();
                let mut all = Vec::new();
                for t in tasks {
                    all.push(t.await.unwrap());
                }
                assert_eq!(tally(&all), (1, 19), "{all:?}");
                assert_eq!(effects(&env.db, "register", &c.email).await, 1);
            }

            // ---------------------------------------------------------------- unique_index

            #[idempotent(strategy = "unique_index", key = "o.code", table = "s3_ui_pk", constraint = "s3_ui_pk_pkey")]
            async fn create_pk(db: &$pool, o: &NewOrder, gate: &Once, #[tx] tx: &mut $conn) -> Result<(), AppError> {
                gate.pass().await;
                insert_order(tx, "s3_ui_pk", o).await
            }

            #[idempotent(strategy = "unique_index", key = "o.code", table = "s3_ui_uq", constraint = "s3_ui_uq_code")]
            async fn create_uq(db: &$pool, o: &NewOrder, #[tx] tx: &mut $conn) -> Result<(), AppError> {
                insert_order(tx, "s3_ui_uq", o).await
            }

            #[idempotent(strategy = "unique_index", key = ["o.tenant", "o.code"], table = "s3_ui_comp", constraint = "s3_ui_comp_tc")]
            async fn create_comp(db: &$pool, o: &NewOrder, #[tx] tx: &mut $conn) -> Result<(), AppError> {
                insert_order(tx, "s3_ui_comp", o).await
            }

            async fn insert_order(tx: &mut $conn, table: &str, o: &NewOrder) -> Result<(), AppError> {
                let text = format!(
                    "INSERT INTO {table} (tenant, code, invoice, amount, customer) VALUES ($1, $2, $3, $4, $5)"
                );
                sqlx::query(sql(&text))
                    .bind(&o.tenant)
                    .bind(&o.code)
                    .bind(&o.invoice)
                    .bind(o.amount)
                    .bind(&o.customer)
                    .execute(&mut *tx)
                    .await?;
                ledger(tx, table, &format!("{}/{}", o.tenant, o.code)).await?;
                Ok(())
            }

            fn order(code: &str) -> NewOrder {
                NewOrder {
                    tenant: "t1".into(),
                    code: code.into(),
                    invoice: None,
                    amount: Some(10),
                    customer: None,
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn unique_index_20_concurrent_creates() {
                let Some(env) = env(24).await else { return };
                let env = Arc::new(env);
                let o = order(&unique("o"));
                let gate = Once::new(if $single { 1 } else { 20 });
                let tasks: Vec<_> = (0..20)
                    .map(|_| {
                        let (env, o, gate) = (env.clone(), o.clone(), gate.clone());
                        tokio::spawn(async move { got(create_pk(&env.db, &o, &gate).await) })
                    })
                    .collect();
                let mut all = Vec::new();
                for t in tasks {
                    all.push(t.await.unwrap());
                }
                assert_eq!(tally(&all), (1, 19), "{all:?}");
                let k = format!("t1/{}", o.code);
                assert_eq!(effects(&env.db, "s3_ui_pk", &k).await, 1);
                assert_eq!(scalar_i64(&env.db, "SELECT COUNT(*) FROM s3_ui_pk WHERE code = $1", &o.code).await, 1);
            }

            #[tokio::test]
            async fn unique_index_key_as_pk_unique_and_composite_are_duplicates() {
                let Some(env) = env(4).await else { return };
                let open = Once::new(1);
                open.seen.store(1, SeqCst);
                let o = order(&unique("o"));
                assert_eq!(got(create_pk(&env.db, &o, &open).await), Got::Ok);
                assert_eq!(got(create_pk(&env.db, &o, &open).await), Got::Duplicate);
                assert_eq!(got(create_uq(&env.db, &o).await), Got::Ok);
                assert_eq!(got(create_uq(&env.db, &o).await), Got::Duplicate);
                assert_eq!(got(create_comp(&env.db, &o).await), Got::Ok);
                assert_eq!(got(create_comp(&env.db, &o).await), Got::Duplicate);
                // Same code, other tenant: a different composite key.
                let other = NewOrder { tenant: "t2".into(), ..o.clone() };
                assert_eq!(got(create_comp(&env.db, &other).await), Got::Ok);
                for table in ["s3_ui_pk", "s3_ui_uq", "s3_ui_comp"] {
                    assert_eq!(effects(&env.db, table, &format!("t1/{}", o.code)).await, 1, "{table}");
                }
                assert_eq!(effects(&env.db, "s3_ui_comp", &format!("t2/{}", o.code)).await, 1);
            }

            #[tokio::test]
            async fn unique_index_other_violations_are_errors() {
                let Some(env) = env(4).await else { return };
                let invoice = unique("inv");
                let first = NewOrder { invoice: Some(invoice.clone()), ..order(&unique("o")) };
                assert_eq!(got(create_uq(&env.db, &first).await), Got::Ok);
                let cases = [
                    ("other unique index, fresh key", NewOrder { invoice: Some(invoice.clone()), ..order(&unique("o")) }),
                    ("NOT NULL", NewOrder { amount: None, ..order(&unique("o")) }),
                    ("foreign key", NewOrder { customer: Some(unique("nobody")), ..order(&unique("o")) }),
                    ("CHECK", NewOrder { amount: Some(-1), ..order(&unique("o")) }),
                ];
                for (what, o) in cases {
                    let r = create_uq(&env.db, &o).await;
                    assert!(matches!(r, Err(AppError::Db(sqlx::Error::Database(_)))), "{what}: {r:?}");
                    assert_eq!(effects(&env.db, "s3_ui_uq", &format!("t1/{}", o.code)).await, 0, "{what}");
                }
            }

            // ---------------------------------------------------------------- optimistic

            #[idempotent(strategy = "optimistic", key = "acct.code", table = "s3_accounts")]
            async fn set_amount(db: &$pool, acct: &AccountRef, amount: i64, gate: &Once, #[tx] tx: &mut $conn) -> Result<(), AppError> {
                gate.pass().await;
                sqlx::query(sql("UPDATE s3_accounts SET amount = $1 WHERE code = $2"))
                    .bind(amount)
                    .bind(&acct.code)
                    .execute(&mut *tx)
                    .await?;
                ledger(tx, "set_amount", &acct.code).await?;
                Ok(())
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn optimistic_two_concurrent_with_version_5() {
                let Some(env) = env(8).await else { return };
                let env = Arc::new(env);
                let code = unique("a");
                exec(&env.db, "INSERT INTO s3_accounts (code, amount, version) VALUES ($1, 100, 5)", &[&code]).await;
                let acct = AccountRef { code: code.clone(), version: 5 };
                let gate = Once::new(1);
                let tasks: Vec<_> = [150, 200]
                    .into_iter()
                    .map(|amount| {
                        let (env, acct, gate) = (env.clone(), acct.clone(), gate.clone());
                        tokio::spawn(async move { got(set_amount(&env.db, &acct, amount, &gate).await) })
                    })
                    .collect();
                let mut all = Vec::new();
                for t in tasks {
                    all.push(t.await.unwrap());
                }
                assert_eq!(tally(&all), (1, 1), "{all:?}");
                assert_eq!(scalar_i64(&env.db, "SELECT version FROM s3_accounts WHERE code = $1", &code).await, 6);
                assert_eq!(effects(&env.db, "set_amount", &code).await, 1);
                // A stale version later is a duplicate too.
                assert_eq!(got(set_amount(&env.db, &acct, 300, &gate).await), Got::Duplicate);
                assert_eq!(effects(&env.db, "set_amount", &code).await, 1);
            }

            #[tokio::test]
            async fn optimistic_same_values_still_apply() {
                let Some(env) = env(4).await else { return };
                let code = unique("a");
                exec(&env.db, "INSERT INTO s3_accounts (code, amount, version) VALUES ($1, 100, 5)", &[&code]).await;
                let open = Once::new(1);
                open.seen.store(1, SeqCst);
                let acct = AccountRef { code: code.clone(), version: 5 };
                assert_eq!(got(set_amount(&env.db, &acct, 100, &open).await), Got::Ok);
                assert_eq!(scalar_i64(&env.db, "SELECT version FROM s3_accounts WHERE code = $1", &code).await, 6);
                assert_eq!(scalar_i64(&env.db, "SELECT amount FROM s3_accounts WHERE code = $1", &code).await, 100);
                assert_eq!(got(set_amount(&env.db, &acct, 100, &open).await), Got::Duplicate);
                let fresh = AccountRef { code: code.clone(), version: 6 };
                assert_eq!(got(set_amount(&env.db, &fresh, 100, &open).await), Got::Ok);
                assert_eq!(scalar_i64(&env.db, "SELECT version FROM s3_accounts WHERE code = $1", &code).await, 7);
                assert_eq!(effects(&env.db, "set_amount", &code).await, 2);
            }

            // ---------------------------------------------------------------- state_machine

            #[idempotent(strategy = "state_machine", key = "o.code", table = "s3_shipments", status_column = "status", from = "PAID", to = "SHIPPED")]
            async fn ship(db: &$pool, o: &ShipRef, #[tx] tx: &mut $conn) -> Result<(), AppError> {
                ledger(tx, "ship", &o.code).await?;
                Ok(())
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn state_machine_20_concurrent_ships() {
                let Some(env) = env(24).await else { return };
                let env = Arc::new(env);
                let code = unique("s");
                exec(&env.db, "INSERT INTO s3_shipments (code, status) VALUES ($1, 'PAID')", &[&code]).await;
                let barrier = Arc::new(Barrier::new(20));
                let tasks: Vec<_> = (0..20)
                    .map(|_| {
                        let (env, barrier, o) = (env.clone(), barrier.clone(), ShipRef { code: code.clone() });
                        tokio::spawn(async move {
                            barrier.wait().await;
                            got(ship(&env.db, &o).await)
                        })
                    })
                    .collect();
                let mut all = Vec::new();
                for t in tasks {
                    all.push(t.await.unwrap());
                }
                assert_eq!(tally(&all), (1, 19), "{all:?}");
                assert_eq!(effects(&env.db, "ship", &code).await, 1);
            }

            #[tokio::test]
            async fn state_machine_shipped_cancelled_missing() {
                let Some(env) = env(4).await else { return };
                let (shipped, cancelled) = (unique("s"), unique("s"));
                exec(&env.db, "INSERT INTO s3_shipments (code, status) VALUES ($1, 'SHIPPED')", &[&shipped]).await;
                exec(&env.db, "INSERT INTO s3_shipments (code, status) VALUES ($1, 'CANCELLED')", &[&cancelled]).await;
                assert_eq!(got(ship(&env.db, &ShipRef { code: shipped.clone() }).await), Got::Duplicate);
                assert_eq!(got(ship(&env.db, &ShipRef { code: cancelled.clone() }).await), Got::Conflict);
                let missing = unique("s");
                assert_eq!(got(ship(&env.db, &ShipRef { code: missing.clone() }).await), Got::NotFound);
                for k in [&shipped, &cancelled, &missing] {
                    assert_eq!(effects(&env.db, "ship", k).await, 0);
                }
                let status: String = sqlx::query_scalar(sql("SELECT status FROM s3_shipments WHERE code = $1"))
                    .bind(&cancelled).fetch_one(&env.db).await.unwrap();
                assert_eq!(status, "CANCELLED");
            }

            // ---------------------------------------------------------------- pessimistic

            #[idempotent(strategy = "pessimistic", key = "d.wallet", table = "s3_wallets", column = "id")]
            async fn debit(db: &$pool, d: &Debit, #[tx] tx: &mut $conn) -> Result<(), AppError> {
                let seen: Option<i64> = sqlx::query_scalar(sql("SELECT amount FROM s3_payments WHERE payment_id = $1"))
                    .bind(&d.payment_id).fetch_optional(&mut *tx).await?;
                if seen.is_some() {
                    return Err(Error::Duplicate.into());
                }
                let done = sqlx::query(sql("UPDATE s3_wallets SET balance = balance - $1 WHERE id = $2 AND balance >= $3"))
                    .bind(d.amount).bind(&d.wallet).bind(d.amount).execute(&mut *tx).await?;
                if done.rows_affected() != 1 {
                    return Err(AppError::Rejected);
                }
                sqlx::query(sql("INSERT INTO s3_payments (payment_id, wallet, amount) VALUES ($1, $2, $3)"))
                    .bind(&d.payment_id).bind(&d.wallet).bind(d.amount).execute(&mut *tx).await?;
                ledger(tx, "debit", &d.payment_id).await?;
                Ok(())
            }

            #[idempotent(strategy = "pessimistic", key = "d.payment_id", table = "s3_payments")]
            async fn pay_once(db: &$pool, d: &Debit, gate: &Once, #[tx] tx: &mut $conn) -> Result<(), AppError> {
                gate.pass().await;
                let seen: Option<i64> = sqlx::query_scalar(sql("SELECT amount FROM s3_payments WHERE payment_id = $1"))
                    .bind(&d.payment_id).fetch_optional(&mut *tx).await?;
                if seen.is_some() {
                    return Err(Error::Duplicate.into());
                }
                sqlx::query(sql("INSERT INTO s3_payments (payment_id, wallet, amount) VALUES ($1, $2, $3)"))
                    .bind(&d.payment_id).bind(&d.wallet).bind(d.amount).execute(&mut *tx).await?;
                ledger(tx, "pay_once", &d.payment_id).await?;
                Ok(())
            }

            async fn debit_storm(env: Arc<Env>) {
                let wallet = unique("w");
                exec(&env.db, "INSERT INTO s3_wallets (id, balance) VALUES ($1, 150)", &[&wallet]).await;
                let d = Debit { wallet: wallet.clone(), payment_id: unique("p"), amount: 100 };
                let barrier = Arc::new(Barrier::new(10));
                let tasks: Vec<_> = (0..10)
                    .map(|_| {
                        let (env, barrier, d) = (env.clone(), barrier.clone(), d.clone());
                        tokio::spawn(async move {
                            barrier.wait().await;
                            got(debit(&env.db, &d).await)
                        })
                    })
                    .collect();
                let mut all = Vec::new();
                for t in tasks {
                    all.push(t.await.unwrap());
                }
                assert_eq!(tally(&all), (1, 9), "{all:?}");
                assert_eq!(effects(&env.db, "debit", &d.payment_id).await, 1);
                assert_eq!(scalar_i64(&env.db, "SELECT balance FROM s3_wallets WHERE id = $1", &wallet).await, 50);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn pessimistic_10_concurrent_debits_one_effect() {
                let Some(env) = env(16).await else { return };
                debit_storm(Arc::new(env)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn pessimistic_pool_of_two_completes() {
                let Some(env) = env(2).await else { return };
                debit_storm(Arc::new(env)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn pessimistic_missing_row_never_surfaces_a_deadlock() {
                let Some(env) = env(16).await else { return };
                let env = Arc::new(env);
                let d = Debit { wallet: "w".into(), payment_id: unique("p"), amount: 1 };
                let gate = Once::new(if $single { 1 } else { 10 });
                let tasks: Vec<_> = (0..10)
                    .map(|_| {
                        let (env, gate, d) = (env.clone(), gate.clone(), d.clone());
                        tokio::spawn(async move { got(pay_once(&env.db, &d, &gate).await) })
                    })
                    .collect();
                let mut all = Vec::new();
                for t in tasks {
                    all.push(t.await.unwrap());
                }
                assert_eq!(tally(&all), (1, 9), "{all:?}");
                assert_eq!(effects(&env.db, "pay_once", &d.payment_id).await, 1);
            }

            // ---------------------------------------------------------------- retries

            #[idempotent(strategy = "state_machine", key = "o.code", table = "s3_shipments", status_column = "status", from = "PAID", to = "SHIPPED")]
            async fn ship_flaky(db: &$pool, o: &ShipRef, failures: &AtomicU32, runs: &AtomicU32, #[tx] tx: &mut $conn) -> Result<(), AppError> {
                runs.fetch_add(1, SeqCst);
                if failures.load(SeqCst) > 0 {
                    failures.fetch_sub(1, SeqCst);
                    ($raise)(&mut *tx, db).await?;
                }
                ledger(tx, "ship", &o.code).await?;
                Ok(())
            }

            #[tokio::test]
            async fn serialization_failure_reruns_the_whole_transaction() {
                let Some(env) = env(4).await else { return };
                let code = unique("s");
                exec(&env.db, "INSERT INTO s3_shipments (code, status) VALUES ($1, 'PAID')", &[&code]).await;
                let (failures, runs) = (AtomicU32::new(2), AtomicU32::new(0));
                let o = ShipRef { code: code.clone() };
                assert_eq!(got(ship_flaky(&env.db, &o, &failures, &runs).await), Got::Ok);
                assert_eq!(runs.load(SeqCst), 3);
                assert_eq!(effects(&env.db, "ship", &code).await, 1);
                let status: String = sqlx::query_scalar(sql("SELECT status FROM s3_shipments WHERE code = $1"))
                    .bind(&code).fetch_one(&env.db).await.unwrap();
                assert_eq!(status, "SHIPPED");
            }

            #[tokio::test]
            async fn retries_are_bounded_then_contention() {
                let Some(env) = env(4).await else { return };
                let code = unique("s");
                exec(&env.db, "INSERT INTO s3_shipments (code, status) VALUES ($1, 'PAID')", &[&code]).await;
                let (failures, runs) = (AtomicU32::new(u32::MAX), AtomicU32::new(0));
                let o = ShipRef { code: code.clone() };
                let r = ship_flaky(&env.db, &o, &failures, &runs).await;
                assert!(
                    matches!(r, Err(AppError::Idempotency(Error::Contention { attempts: 10, .. }))),
                    "{r:?}"
                );
                assert_eq!(runs.load(SeqCst), 10);
                assert_eq!(effects(&env.db, "ship", &code).await, 0);
                let status: String = sqlx::query_scalar(sql("SELECT status FROM s3_shipments WHERE code = $1"))
                    .bind(&code).fetch_one(&env.db).await.unwrap();
                assert_eq!(status, "PAID", "every run rolled back");
            }
        }
    };
}

fn dollar(s: &str) -> String {
    s.to_owned()
}

/// `$1, $2, …` → `?` (MySQL and SQLite take positional `?`).
fn question(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
            while chars.peek().is_some_and(|d| d.is_ascii_digit()) {
                chars.next();
            }
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

type Guard = Box<dyn std::any::Any + Send + Sync>;

async fn pg(max: u32) -> Option<(sqlx::PgPool, Guard)> {
    let url = idempotent_tests::server_url(idempotent_tests::POSTGRES_ENV, "PostgreSQL")?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(max)
        .connect(&url)
        .await
        .unwrap();
    Some((pool, Box::new(())))
}

async fn my(max: u32) -> Option<(sqlx::MySqlPool, Guard)> {
    let url = idempotent_tests::server_url(idempotent_tests::MYSQL_ENV, "MySQL/MariaDB")?;
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(max)
        .connect(&url)
        .await
        .unwrap();
    Some((pool, Box::new(())))
}

async fn lite(max: u32) -> Option<(sqlx::SqlitePool, Guard)> {
    let dir = tempfile::tempdir().unwrap();
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("t.db"))
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .busy_timeout(std::time::Duration::from_secs(30));
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(max)
        .connect_with(opts)
        .await
        .unwrap();
    Some((pool, Box::new(dir)))
}

/// PostgreSQL: raise SQLSTATE 40001 (serialization_failure).
async fn pg_raise(tx: &mut sqlx::PgConnection, _db: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("DO $$ BEGIN RAISE EXCEPTION 'forced' USING ERRCODE = '40001'; END $$")
        .execute(tx)
        .await?;
    Ok(())
}

/// MariaDB/MySQL: SIGNAL SQLSTATE 40001 (what error 1213, a deadlock, reports).
async fn my_raise(
    tx: &mut sqlx::MySqlConnection,
    _db: &sqlx::MySqlPool,
) -> Result<(), sqlx::Error> {
    sqlx::query("CALL s3_fail()").execute(tx).await?;
    Ok(())
}

/// SQLite: a genuine SQLITE_BUSY — another connection (busy timeout 0) tries to write while
/// this transaction holds the write lock; the body surfaces that error.
async fn lite_raise(
    _tx: &mut sqlx::SqliteConnection,
    db: &sqlx::SqlitePool,
) -> Result<(), sqlx::Error> {
    use sqlx::ConnectOptions;
    let opts = (*db.connect_options())
        .clone()
        .busy_timeout(std::time::Duration::ZERO);
    let mut other = opts.connect().await?;
    sqlx::query("INSERT INTO s3_ledger (op, k) VALUES ('never', 'never')")
        .execute(&mut other)
        .await?;
    Ok(())
}

suite! {
    mod postgres;
    pool = sqlx::PgPool;
    conn = sqlx::PgConnection;
    connect = pg;
    fix = dollar;
    ddl = [
        "CREATE TABLE IF NOT EXISTS s3_ledger (op VARCHAR(64) NOT NULL, k VARCHAR(255) NOT NULL)",
        "CREATE TABLE IF NOT EXISTS s3_customers (email VARCHAR(200) PRIMARY KEY, name VARCHAR(200) NOT NULL)",
        "CREATE TABLE IF NOT EXISTS s3_ui_pk (code VARCHAR(100) NOT NULL, tenant VARCHAR(100) NOT NULL, invoice VARCHAR(100), amount BIGINT NOT NULL CHECK (amount >= 0), customer VARCHAR(200) REFERENCES s3_customers (email), CONSTRAINT s3_ui_pk_pkey PRIMARY KEY (code))",
        "CREATE TABLE IF NOT EXISTS s3_ui_uq (code VARCHAR(100) NOT NULL, tenant VARCHAR(100) NOT NULL, invoice VARCHAR(100), amount BIGINT NOT NULL CHECK (amount >= 0), customer VARCHAR(200) REFERENCES s3_customers (email), CONSTRAINT s3_ui_uq_code UNIQUE (code), CONSTRAINT s3_ui_uq_invoice UNIQUE (invoice))",
        "CREATE TABLE IF NOT EXISTS s3_ui_comp (code VARCHAR(100) NOT NULL, tenant VARCHAR(100) NOT NULL, invoice VARCHAR(100), amount BIGINT NOT NULL CHECK (amount >= 0), customer VARCHAR(200) REFERENCES s3_customers (email), CONSTRAINT s3_ui_comp_tc UNIQUE (tenant, code))",
        "CREATE TABLE IF NOT EXISTS s3_accounts (code VARCHAR(100) PRIMARY KEY, amount BIGINT NOT NULL, version BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS s3_shipments (code VARCHAR(100) PRIMARY KEY, status VARCHAR(20) NOT NULL)",
        "CREATE TABLE IF NOT EXISTS s3_wallets (id VARCHAR(100) PRIMARY KEY, balance BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS s3_payments (payment_id VARCHAR(100) PRIMARY KEY, wallet VARCHAR(100) NOT NULL, amount BIGINT NOT NULL)",
    ];
    raise_retryable = pg_raise;
    single_writer = false;
}

suite! {
    mod mysql;
    pool = sqlx::MySqlPool;
    conn = sqlx::MySqlConnection;
    connect = my;
    fix = question;
    ddl = [
        "CREATE TABLE IF NOT EXISTS s3_ledger (op VARCHAR(64) NOT NULL, k VARCHAR(255) NOT NULL) ENGINE=InnoDB",
        "CREATE TABLE IF NOT EXISTS s3_customers (email VARCHAR(200) PRIMARY KEY, name VARCHAR(200) NOT NULL) ENGINE=InnoDB",
        "CREATE TABLE IF NOT EXISTS s3_ui_pk (code VARCHAR(100) NOT NULL, tenant VARCHAR(100) NOT NULL, invoice VARCHAR(100), amount BIGINT NOT NULL CHECK (amount >= 0), customer VARCHAR(200), PRIMARY KEY (code), FOREIGN KEY (customer) REFERENCES s3_customers (email)) ENGINE=InnoDB",
        "CREATE TABLE IF NOT EXISTS s3_ui_uq (code VARCHAR(100) NOT NULL, tenant VARCHAR(100) NOT NULL, invoice VARCHAR(100), amount BIGINT NOT NULL CHECK (amount >= 0), customer VARCHAR(200), CONSTRAINT s3_ui_uq_code UNIQUE (code), CONSTRAINT s3_ui_uq_invoice UNIQUE (invoice), FOREIGN KEY (customer) REFERENCES s3_customers (email)) ENGINE=InnoDB",
        "CREATE TABLE IF NOT EXISTS s3_ui_comp (code VARCHAR(100) NOT NULL, tenant VARCHAR(100) NOT NULL, invoice VARCHAR(100), amount BIGINT NOT NULL CHECK (amount >= 0), customer VARCHAR(200), CONSTRAINT s3_ui_comp_tc UNIQUE (tenant, code), FOREIGN KEY (customer) REFERENCES s3_customers (email)) ENGINE=InnoDB",
        "CREATE TABLE IF NOT EXISTS s3_accounts (code VARCHAR(100) PRIMARY KEY, amount BIGINT NOT NULL, version BIGINT NOT NULL) ENGINE=InnoDB",
        "CREATE TABLE IF NOT EXISTS s3_shipments (code VARCHAR(100) PRIMARY KEY, status VARCHAR(20) NOT NULL) ENGINE=InnoDB",
        "CREATE TABLE IF NOT EXISTS s3_wallets (id VARCHAR(100) PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB",
        "CREATE TABLE IF NOT EXISTS s3_payments (payment_id VARCHAR(100) PRIMARY KEY, wallet VARCHAR(100) NOT NULL, amount BIGINT NOT NULL) ENGINE=InnoDB",
        "CREATE PROCEDURE IF NOT EXISTS s3_fail() SIGNAL SQLSTATE '40001' SET MESSAGE_TEXT = 'forced'",
    ];
    raise_retryable = my_raise;
    single_writer = false;
}

suite! {
    mod sqlite;
    pool = sqlx::SqlitePool;
    conn = sqlx::SqliteConnection;
    connect = lite;
    fix = question;
    ddl = [
        "CREATE TABLE IF NOT EXISTS s3_ledger (op VARCHAR(64) NOT NULL, k VARCHAR(255) NOT NULL)",
        "CREATE TABLE IF NOT EXISTS s3_customers (email VARCHAR(200) PRIMARY KEY, name VARCHAR(200) NOT NULL)",
        "CREATE TABLE IF NOT EXISTS s3_ui_pk (code VARCHAR(100) NOT NULL, tenant VARCHAR(100) NOT NULL, invoice VARCHAR(100), amount BIGINT NOT NULL CHECK (amount >= 0), customer VARCHAR(200) REFERENCES s3_customers (email), CONSTRAINT s3_ui_pk_pkey PRIMARY KEY (code))",
        "CREATE TABLE IF NOT EXISTS s3_ui_uq (code VARCHAR(100) NOT NULL, tenant VARCHAR(100) NOT NULL, invoice VARCHAR(100), amount BIGINT NOT NULL CHECK (amount >= 0), customer VARCHAR(200) REFERENCES s3_customers (email), CONSTRAINT s3_ui_uq_code UNIQUE (code), CONSTRAINT s3_ui_uq_invoice UNIQUE (invoice))",
        "CREATE TABLE IF NOT EXISTS s3_ui_comp (code VARCHAR(100) NOT NULL, tenant VARCHAR(100) NOT NULL, invoice VARCHAR(100), amount BIGINT NOT NULL CHECK (amount >= 0), customer VARCHAR(200) REFERENCES s3_customers (email), CONSTRAINT s3_ui_comp_tc UNIQUE (tenant, code))",
        "CREATE TABLE IF NOT EXISTS s3_accounts (code VARCHAR(100) PRIMARY KEY, amount BIGINT NOT NULL, version BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS s3_shipments (code VARCHAR(100) PRIMARY KEY, status VARCHAR(20) NOT NULL)",
        "CREATE TABLE IF NOT EXISTS s3_wallets (id VARCHAR(100) PRIMARY KEY, balance BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS s3_payments (payment_id VARCHAR(100) PRIMARY KEY, wallet VARCHAR(100) NOT NULL, amount BIGINT NOT NULL)",
    ];
    raise_retryable = lite_raise;
    single_writer = true;
}

/// PostgreSQL: a duplicate inside the caller's own transaction (the store is the caller's
/// connection, so the insert runs in a SAVEPOINT) leaves that transaction usable, and its
/// earlier writes commit.
mod postgres_caller_transaction {
    use super::*;
    use sqlx::PgConnection;

    #[idempotent(
        strategy = "unique_index",
        key = "o.code",
        table = "s3_ui_uq",
        constraint = "s3_ui_uq_code",
        store = "conn"
    )]
    async fn create_in(
        conn: &mut PgConnection,
        o: &NewOrder,
        #[tx] tx: &mut PgConnection,
    ) -> Result<(), AppError> {
        sqlx::query("INSERT INTO s3_ui_uq (tenant, code, amount) VALUES ($1, $2, $3)")
            .bind(&o.tenant)
            .bind(&o.code)
            .bind(o.amount)
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    #[tokio::test]
    async fn duplicate_keeps_the_callers_transaction_usable() {
        let Some(env) = postgres::env(4).await else {
            return;
        };
        let o = NewOrder {
            tenant: "t1".into(),
            code: unique("o"),
            invoice: None,
            amount: Some(1),
            customer: None,
        };
        let mut tx = env.db.begin().await.unwrap();
        let before = unique("before");
        sqlx::query("INSERT INTO s3_ledger (op, k) VALUES ('caller', $1)")
            .bind(&before)
            .execute(&mut *tx)
            .await
            .unwrap();
        assert_eq!(got(create_in(&mut tx, &o).await), Got::Ok);
        assert_eq!(got(create_in(&mut tx, &o).await), Got::Duplicate);
        let after = unique("after");
        sqlx::query("INSERT INTO s3_ledger (op, k) VALUES ('caller', $1)")
            .bind(&after)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        for k in [&before, &after] {
            let n: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM s3_ledger WHERE op = 'caller' AND k = $1")
                    .bind(k)
                    .fetch_one(&env.db)
                    .await
                    .unwrap();
            assert_eq!(n, 1);
        }
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM s3_ui_uq WHERE code = $1")
            .bind(&o.code)
            .fetch_one(&env.db)
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
}
