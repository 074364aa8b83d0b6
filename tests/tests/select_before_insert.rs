//! select_before_insert on PostgreSQL, MySQL/MariaDB and SQLite: a sequential duplicate does
//! not run the body (or runs `on_duplicate` instead), and of 20 concurrent first calls past the
//! check exactly one has an effect; on SQLite 32 concurrent calls on distinct keys all succeed,
//! one body run each (`BEGIN IMMEDIATE`). Every test counts effects in the `s3_ledger` table and
//! asserts the outcome each caller got; concurrency is lined up with barriers, never sleeps.
//! Tables have fixed names (the attribute names them at compile time); tests isolate
//! themselves with run-unique keys.

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Got, Once, got, tally, unique};

#[derive(Debug, Clone)]
pub struct Customer {
    pub email: String,
    pub name: String,
}

macro_rules! suite {
    ($m:ident, $pool:ty, $conn:ty, $skip:meta) => {
        mod $m {
            use super::*;
            use idempotent_tests::business::$m::*;

            #[idempotent(
                strategy = "select_before_insert",
                key = "c.email",
                table = "s3_customers"
            )]
            async fn register(
                db: &$pool,
                c: &Customer,
                gate: &Once,
                #[tx] tx: &mut $conn,
            ) -> Result<(), AppError> {
                gate.pass().await;
                sqlx::query(sql(
                    "INSERT INTO s3_customers (email, name) VALUES ($1, $2)",
                ))
                .bind(&c.email)
                .bind(&c.name)
                .execute(&mut *tx)
                .await?;
                ledger(tx, "register", &c.email).await?;
                Ok(())
            }

            async fn rename_existing(
                db: &$pool,
                c: &Customer,
                _gate: &Once,
            ) -> Result<(), AppError> {
                sqlx::query(sql("UPDATE s3_customers SET name = $1 WHERE email = $2"))
                    .bind(&c.name)
                    .bind(&c.email)
                    .execute(db)
                    .await?;
                let mut conn = db.acquire().await?;
                ledger(&mut conn, "rename", &c.email).await?;
                Ok(())
            }

            #[idempotent(
                strategy = "select_before_insert",
                key = "c.email",
                table = "s3_customers",
                on_duplicate = "rename_existing"
            )]
            async fn upsert(
                db: &$pool,
                c: &Customer,
                gate: &Once,
                #[tx] tx: &mut $conn,
            ) -> Result<(), AppError> {
                sqlx::query(sql(
                    "INSERT INTO s3_customers (email, name) VALUES ($1, $2)",
                ))
                .bind(&c.email)
                .bind(&c.name)
                .execute(&mut *tx)
                .await?;
                ledger(tx, "register", &c.email).await?;
                let _ = gate;
                Ok(())
            }

            fn customer(email: &str) -> Customer {
                Customer {
                    email: email.into(),
                    name: "Ada".into(),
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[$skip]
            async fn sbi_sequential_duplicate_does_not_run_the_body() {
                let Some(env) = env(4).await else { return };
                let c = customer(&unique("c"));
                let open = Once::new(1);
                open.seen.store(1, SeqCst);
                assert_eq!(got(register(&env.db, &c, &open).await), Got::Ok);
                assert_eq!(got(register(&env.db, &c, &open).await), Got::Duplicate);
                assert_eq!(effects(&env.db, "register", &c.email).await, 1);
                // on_duplicate: the update path instead of Error::Duplicate.
                let renamed = Customer {
                    name: "Grace".into(),
                    ..c.clone()
                };
                assert_eq!(got(upsert(&env.db, &renamed, &open).await), Got::Ok);
                assert_eq!(effects(&env.db, "register", &c.email).await, 1);
                assert_eq!(effects(&env.db, "rename", &c.email).await, 1);
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[$skip]
            async fn sbi_20_concurrent_first_calls_past_the_check() {
                let Some(env) = env(24).await else { return };
                let env = Arc::new(env);
                let c = customer(&unique("c"));
                // SQLite's `BEGIN IMMEDIATE` admits one writer at a time: no two bodies can
                // be lined up inside their transactions there.
                let gate = Once::new(if SINGLE_WRITER { 1 } else { 20 });
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
        }
    };
}

idempotent_tests::on_business_backends!(suite);

/// Issue 12 item 6, SQLite (a file database): the check and the insert run in a transaction
/// opened with `BEGIN IMMEDIATE`, so 32 concurrent first calls on distinct keys take the write
/// lock one at a time (each waiting within the busy timeout) — with a deferred `BEGIN` their
/// read locks could not be upgraded (`SQLITE_BUSY_SNAPSHOT`), the bodies reran and some calls
/// gave up with `Contention`. Every call succeeds and every body runs exactly once.
mod sqlite_writers {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;
    use idempotent_tests::business::sqlite::*;
    use tokio::sync::Barrier;

    #[idempotent(
        strategy = "select_before_insert",
        key = "c.email",
        table = "s3_customers"
    )]
    async fn register_counted(
        db: &Pool,
        c: &Customer,
        runs: &Mutex<HashMap<String, u32>>,
        #[tx] tx: &mut Conn,
    ) -> Result<(), AppError> {
        *runs.lock().unwrap().entry(c.email.clone()).or_default() += 1;
        sqlx::query(sql(
            "INSERT INTO s3_customers (email, name) VALUES ($1, $2)",
        ))
        .bind(&c.email)
        .bind(&c.name)
        .execute(&mut *tx)
        .await?;
        ledger(tx, "register_counted", &c.email).await?;
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sbi_32_concurrent_distinct_keys_all_succeed_one_run_each() {
        let Some(env) = env(32).await else { return };
        let env = Arc::new(env);
        let runs = Arc::new(Mutex::new(HashMap::new()));
        let barrier = Arc::new(Barrier::new(32));
        let customers: Vec<Customer> = (0..32)
            .map(|i| Customer {
                email: unique(&format!("c{i}")),
                name: "Ada".into(),
            })
            .collect();
        let tasks: Vec<_> = customers
            .iter()
            .map(|c| {
                let (env, runs, barrier, c) =
                    (env.clone(), runs.clone(), barrier.clone(), c.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    got(register_counted(&env.db, &c, &runs).await)
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await.unwrap());
        }
        assert_eq!(tally(&all), (32, 0), "{all:?}");
        let runs = runs.lock().unwrap().clone();
        for c in &customers {
            assert_eq!(runs.get(&c.email), Some(&1), "body runs of {}", c.email);
            assert_eq!(effects(&env.db, "register_counted", &c.email).await, 1);
        }
    }
}
