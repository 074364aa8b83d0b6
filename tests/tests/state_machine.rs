//! state_machine on PostgreSQL, MySQL/MariaDB and SQLite: of 20 concurrent ships exactly one
//! moves PAID to SHIPPED; SHIPPED is a duplicate, another status a conflict, a missing row not
//! found. Also the business strategies' transaction retry loop, driven through state_machine: a
//! serialization failure (deadlock, busy) reruns the whole transaction, and retries are bounded,
//! then `Error::Contention`. Every test counts effects in the `s3_ledger` table and asserts the
//! outcome each caller got; concurrency is lined up with barriers, never sleeps. Tables have
//! fixed names (the attribute names them at compile time); tests isolate themselves with
//! run-unique keys.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

use idempotent_runtime::{Error, idempotent};
use idempotent_tests::{AppError, Got, got, tally, unique};
use tokio::sync::Barrier;

#[derive(Debug, Clone)]
pub struct ShipRef {
    pub code: String,
}

macro_rules! suite {
    ($m:ident, $pool:ty, $conn:ty, $skip:meta) => {
        mod $m {
            use super::*;
            use idempotent_tests::business::$m::*;

            #[idempotent(
                strategy = "state_machine",
                key = "o.code",
                table = "s3_shipments",
                status_column = "status",
                from = "PAID",
                to = "SHIPPED"
            )]
            async fn ship(db: &$pool, o: &ShipRef, #[tx] tx: &mut $conn) -> Result<(), AppError> {
                ledger(tx, "ship", &o.code).await?;
                Ok(())
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[$skip]
            async fn state_machine_20_concurrent_ships() {
                let Some(env) = env(24).await else { return };
                let env = Arc::new(env);
                let code = unique("s");
                exec(
                    &env.db,
                    "INSERT INTO s3_shipments (code, status) VALUES ($1, 'PAID')",
                    &[&code],
                )
                .await;
                let barrier = Arc::new(Barrier::new(20));
                let tasks: Vec<_> = (0..20)
                    .map(|_| {
                        let (env, barrier, o) =
                            (env.clone(), barrier.clone(), ShipRef { code: code.clone() });
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
            #[$skip]
            async fn state_machine_shipped_cancelled_missing() {
                let Some(env) = env(4).await else { return };
                let (shipped, cancelled) = (unique("s"), unique("s"));
                exec(
                    &env.db,
                    "INSERT INTO s3_shipments (code, status) VALUES ($1, 'SHIPPED')",
                    &[&shipped],
                )
                .await;
                exec(
                    &env.db,
                    "INSERT INTO s3_shipments (code, status) VALUES ($1, 'CANCELLED')",
                    &[&cancelled],
                )
                .await;
                assert_eq!(
                    got(ship(
                        &env.db,
                        &ShipRef {
                            code: shipped.clone()
                        }
                    )
                    .await),
                    Got::Duplicate
                );
                assert_eq!(
                    got(ship(
                        &env.db,
                        &ShipRef {
                            code: cancelled.clone()
                        }
                    )
                    .await),
                    Got::Conflict
                );
                let missing = unique("s");
                assert_eq!(
                    got(ship(
                        &env.db,
                        &ShipRef {
                            code: missing.clone()
                        }
                    )
                    .await),
                    Got::NotFound
                );
                for k in [&shipped, &cancelled, &missing] {
                    assert_eq!(effects(&env.db, "ship", k).await, 0);
                }
                let status: String =
                    sqlx::query_scalar(sql("SELECT status FROM s3_shipments WHERE code = $1"))
                        .bind(&cancelled)
                        .fetch_one(&env.db)
                        .await
                        .unwrap();
                assert_eq!(status, "CANCELLED");
            }

            // rustfmt re-indents this attribute on every run (a list value inside
            // `macro_rules!`): keep it as written.
    #[rustfmt::skip]
            #[idempotent(
                strategy = "state_machine",
                key = "o.code",
                table = "s3_shipments",
                status_column = "status",
                from = "PAID",
                to = "SHIPPED",
                done = ["SHIPPED", "DELIVERED"]
            )]
            async fn ship_done(
                db: &$pool,
                o: &ShipRef,
                #[tx] tx: &mut $conn,
            ) -> Result<(), AppError> {
                ledger(tx, "ship_done", &o.code).await?;
                Ok(())
            }

            async fn set_status(env: &Env, code: &str, status: &str) {
                exec(
                    &env.db,
                    "UPDATE s3_shipments SET status = $1 WHERE code = $2",
                    &[status, code],
                )
                .await;
            }

            /// Issue 12 item 10: a retried ship whose first attempt succeeded gets `Duplicate`
            /// once the order moved past `to` (SHIPPED → DELIVERED) when `done` names that
            /// state; without `done` it is a `Conflict`, as for any other state.
            #[tokio::test]
            #[$skip]
            async fn state_machine_done_states_are_duplicates() {
                let Some(env) = env(4).await else { return };
                let code = unique("s");
                exec(
                    &env.db,
                    "INSERT INTO s3_shipments (code, status) VALUES ($1, 'PAID')",
                    &[&code],
                )
                .await;
                let o = ShipRef { code: code.clone() };
                assert_eq!(got(ship_done(&env.db, &o).await), Got::Ok);
                assert_eq!(
                    got(ship_done(&env.db, &o).await),
                    Got::Duplicate,
                    "at SHIPPED"
                );
                set_status(&env, &code, "DELIVERED").await;
                assert_eq!(
                    got(ship_done(&env.db, &o).await),
                    Got::Duplicate,
                    "at DELIVERED"
                );
                assert_eq!(
                    got(ship(&env.db, &o).await),
                    Got::Conflict,
                    "DELIVERED without `done`"
                );
                set_status(&env, &code, "CANCELLED").await;
                assert_eq!(got(ship_done(&env.db, &o).await), Got::Conflict);
                let missing = ShipRef { code: unique("s") };
                assert_eq!(got(ship_done(&env.db, &missing).await), Got::NotFound);
                assert_eq!(effects(&env.db, "ship_done", &code).await, 1);
                assert_eq!(effects(&env.db, "ship_done", &missing.code).await, 0);
                assert_eq!(effects(&env.db, "ship", &code).await, 0);
            }

            // ---------------------------------------------------------------- retries

            #[idempotent(
                strategy = "state_machine",
                key = "o.code",
                table = "s3_shipments",
                status_column = "status",
                from = "PAID",
                to = "SHIPPED"
            )]
            async fn ship_flaky(
                db: &$pool,
                o: &ShipRef,
                failures: &AtomicU32,
                runs: &AtomicU32,
                #[tx] tx: &mut $conn,
            ) -> Result<(), AppError> {
                runs.fetch_add(1, SeqCst);
                if failures.load(SeqCst) > 0 {
                    failures.fetch_sub(1, SeqCst);
                    raise_retryable(&mut *tx, db).await?;
                }
                ledger(tx, "ship", &o.code).await?;
                Ok(())
            }

            #[tokio::test]
            #[$skip]
            async fn serialization_failure_reruns_the_whole_transaction() {
                let Some(env) = env(4).await else { return };
                let code = unique("s");
                exec(
                    &env.db,
                    "INSERT INTO s3_shipments (code, status) VALUES ($1, 'PAID')",
                    &[&code],
                )
                .await;
                let (failures, runs) = (AtomicU32::new(2), AtomicU32::new(0));
                let o = ShipRef { code: code.clone() };
                assert_eq!(
                    got(ship_flaky(&env.db, &o, &failures, &runs).await),
                    Got::Ok
                );
                assert_eq!(runs.load(SeqCst), 3);
                assert_eq!(effects(&env.db, "ship", &code).await, 1);
                let status: String =
                    sqlx::query_scalar(sql("SELECT status FROM s3_shipments WHERE code = $1"))
                        .bind(&code)
                        .fetch_one(&env.db)
                        .await
                        .unwrap();
                assert_eq!(status, "SHIPPED");
            }

            #[tokio::test]
            #[$skip]
            async fn retries_are_bounded_then_contention() {
                let Some(env) = env(4).await else { return };
                let code = unique("s");
                exec(
                    &env.db,
                    "INSERT INTO s3_shipments (code, status) VALUES ($1, 'PAID')",
                    &[&code],
                )
                .await;
                let (failures, runs) = (AtomicU32::new(u32::MAX), AtomicU32::new(0));
                let o = ShipRef { code: code.clone() };
                let r = ship_flaky(&env.db, &o, &failures, &runs).await;
                assert!(
                    matches!(
                        r,
                        Err(AppError::Idempotency(Error::Contention {
                            attempts: 10,
                            ..
                        }))
                    ),
                    "{r:?}"
                );
                assert_eq!(runs.load(SeqCst), 10);
                assert_eq!(effects(&env.db, "ship", &code).await, 0);
                let status: String =
                    sqlx::query_scalar(sql("SELECT status FROM s3_shipments WHERE code = $1"))
                        .bind(&code)
                        .fetch_one(&env.db)
                        .await
                        .unwrap();
                assert_eq!(status, "PAID", "every run rolled back");
            }
        }
    };
}

idempotent_tests::on_business_backends!(suite);
