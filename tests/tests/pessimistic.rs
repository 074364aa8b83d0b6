//! pessimistic on PostgreSQL, MySQL/MariaDB and SQLite: of 10 concurrent debits of one
//! payment exactly one takes effect (also with a pool of two connections), a missing row
//! never surfaces a deadlock, and concurrent first calls for a missing row on a table without
//! a unique index on the key have one effect. Every test counts effects in the `s3_ledger` table and asserts
//! the outcome each caller got; concurrency is lined up with barriers, never sleeps. Tables have
//! fixed names (the attribute names them at compile time); tests isolate themselves with
//! run-unique keys.

use std::sync::Arc;

use idempotent_runtime::{Error, idempotent};
use idempotent_tests::{AppError, Once, got, tally, unique};
use tokio::sync::Barrier;

#[derive(Debug, Clone)]
pub struct Debit {
    pub wallet: String,
    pub payment_id: String,
    pub amount: i64,
}

macro_rules! suite {
    ($m:ident, $pool:ty, $conn:ty, $skip:meta) => {
        mod $m {
            use super::*;
            use idempotent_tests::business::$m::*;

            #[idempotent(
                strategy = "pessimistic",
                key = "d.wallet",
                table = "s3_wallets",
                column = "id"
            )]
            async fn debit(db: &$pool, d: &Debit, #[tx] tx: &mut $conn) -> Result<(), AppError> {
                let seen: Option<i64> =
                    sqlx::query_scalar(sql("SELECT amount FROM s3_payments WHERE payment_id = $1"))
                        .bind(&d.payment_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                if seen.is_some() {
                    return Err(Error::Duplicate.into());
                }
                let done = sqlx::query(sql(
                    "UPDATE s3_wallets SET balance = balance - $1 WHERE id = $2 AND balance >= $3",
                ))
                .bind(d.amount)
                .bind(&d.wallet)
                .bind(d.amount)
                .execute(&mut *tx)
                .await?;
                if done.rows_affected() != 1 {
                    return Err(AppError::Rejected);
                }
                sqlx::query(sql(
                    "INSERT INTO s3_payments (payment_id, wallet, amount) VALUES ($1, $2, $3)",
                ))
                .bind(&d.payment_id)
                .bind(&d.wallet)
                .bind(d.amount)
                .execute(&mut *tx)
                .await?;
                ledger(tx, "debit", &d.payment_id).await?;
                Ok(())
            }

            #[idempotent(strategy = "pessimistic", key = "d.payment_id", table = "s3_payments")]
            async fn pay_once(
                db: &$pool,
                d: &Debit,
                gate: &Once,
                #[tx] tx: &mut $conn,
            ) -> Result<(), AppError> {
                gate.pass().await;
                let seen: Option<i64> =
                    sqlx::query_scalar(sql("SELECT amount FROM s3_payments WHERE payment_id = $1"))
                        .bind(&d.payment_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                if seen.is_some() {
                    return Err(Error::Duplicate.into());
                }
                sqlx::query(sql(
                    "INSERT INTO s3_payments (payment_id, wallet, amount) VALUES ($1, $2, $3)",
                ))
                .bind(&d.payment_id)
                .bind(&d.wallet)
                .bind(d.amount)
                .execute(&mut *tx)
                .await?;
                ledger(tx, "pay_once", &d.payment_id).await?;
                Ok(())
            }

            /// Records an event once: `s3_events` has no unique index on `event_id` (only a
            /// plain one), so nothing but the strategy's lock keeps two first calls apart.
            #[idempotent(
                strategy = "pessimistic",
                key = "e.payment_id",
                table = "s3_events",
                column = "event_id"
            )]
            async fn record_event(
                db: &$pool,
                e: &Debit,
                #[tx] tx: &mut $conn,
            ) -> Result<(), AppError> {
                let seen: Option<i64> =
                    sqlx::query_scalar(sql("SELECT amount FROM s3_events WHERE event_id = $1"))
                        .bind(&e.payment_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                if seen.is_some() {
                    return Err(Error::Duplicate.into());
                }
                sqlx::query(sql(
                    "INSERT INTO s3_events (event_id, amount) VALUES ($1, $2)",
                ))
                .bind(&e.payment_id)
                .bind(e.amount)
                .execute(&mut *tx)
                .await?;
                ledger(tx, "record_event", &e.payment_id).await?;
                Ok(())
            }

            /// Issue 12 item 5: 10 concurrent first calls for one missing key, on a table
            /// without a unique index on it, lined up on a barrier: exactly one effect, the
            /// others' re-check answers `Duplicate` (PostgreSQL: the advisory lock; InnoDB:
            /// the gap lock, its deadlocks rerun; SQLite: `BEGIN IMMEDIATE`).
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[$skip]
            async fn pessimistic_missing_row_without_unique_index_one_effect() {
                let Some(env) = env(16).await else { return };
                let env = Arc::new(env);
                let e = Debit {
                    wallet: "w".into(),
                    payment_id: unique("e"),
                    amount: 7,
                };
                let barrier = Arc::new(Barrier::new(10));
                let tasks: Vec<_> = (0..10)
                    .map(|_| {
                        let (env, barrier, e) = (env.clone(), barrier.clone(), e.clone());
                        tokio::spawn(async move {
                            barrier.wait().await;
                            got(record_event(&env.db, &e).await)
                        })
                    })
                    .collect();
                let mut all = Vec::new();
                for t in tasks {
                    all.push(t.await.unwrap());
                }
                assert_eq!(tally(&all), (1, 9), "{all:?}");
                assert_eq!(effects(&env.db, "record_event", &e.payment_id).await, 1);
                assert_eq!(
                    scalar_i64(
                        &env.db,
                        "SELECT COUNT(*) FROM s3_events WHERE event_id = $1",
                        &e.payment_id
                    )
                    .await,
                    1
                );
            }

            async fn debit_storm(env: Arc<Env>) {
                let wallet = unique("w");
                exec(
                    &env.db,
                    "INSERT INTO s3_wallets (id, balance) VALUES ($1, 150)",
                    &[&wallet],
                )
                .await;
                let d = Debit {
                    wallet: wallet.clone(),
                    payment_id: unique("p"),
                    amount: 100,
                };
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
                assert_eq!(
                    scalar_i64(
                        &env.db,
                        "SELECT balance FROM s3_wallets WHERE id = $1",
                        &wallet
                    )
                    .await,
                    50
                );
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[$skip]
            async fn pessimistic_10_concurrent_debits_one_effect() {
                let Some(env) = env(16).await else { return };
                debit_storm(Arc::new(env)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[$skip]
            async fn pessimistic_pool_of_two_completes() {
                let Some(env) = env(2).await else { return };
                debit_storm(Arc::new(env)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[$skip]
            async fn pessimistic_missing_row_never_surfaces_a_deadlock() {
                let Some(env) = env(16).await else { return };
                let env = Arc::new(env);
                let d = Debit {
                    wallet: "w".into(),
                    payment_id: unique("p"),
                    amount: 1,
                };
                // Where first calls run one at a time, only the first body can wait here.
                let gate = Once::new(if SERIAL_FIRST_CALLS { 1 } else { 10 });
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
        }
    };
}

idempotent_tests::on_business_backends!(suite);
