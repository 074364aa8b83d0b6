//! optimistic on PostgreSQL, MySQL/MariaDB and SQLite: of two concurrent updates carrying
//! version 5 one applies and bumps the version, the other (and any later stale version) is a
//! duplicate; an update that writes the same values still applies. Every test counts effects in
//! the `s3_ledger` table and asserts the outcome each caller got; concurrency is lined up with
//! barriers, never sleeps. Tables have fixed names (the attribute names them at compile time);
//! tests isolate themselves with run-unique keys.

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Got, Once, got, tally, unique};

#[derive(Debug, Clone)]
pub struct AccountRef {
    pub code: String,
    pub version: i64,
}

macro_rules! suite {
    ($m:ident, $pool:ty, $conn:ty, $skip:meta) => {
        mod $m {
            use super::*;
            use idempotent_tests::business::$m::*;

            #[idempotent(strategy = "optimistic", key = "acct.code", table = "s3_accounts")]
            async fn set_amount(
                db: &$pool,
                acct: &AccountRef,
                amount: i64,
                gate: &Once,
                #[tx] tx: &mut $conn,
            ) -> Result<(), AppError> {
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
            #[$skip]
            async fn optimistic_two_concurrent_with_version_5() {
                let Some(env) = env(8).await else { return };
                let env = Arc::new(env);
                let code = unique("a");
                exec(
                    &env.db,
                    "INSERT INTO s3_accounts (code, amount, version) VALUES ($1, 100, 5)",
                    &[&code],
                )
                .await;
                let acct = AccountRef {
                    code: code.clone(),
                    version: 5,
                };
                let gate = Once::new(1);
                let tasks: Vec<_> = [150, 200]
                    .into_iter()
                    .map(|amount| {
                        let (env, acct, gate) = (env.clone(), acct.clone(), gate.clone());
                        tokio::spawn(
                            async move { got(set_amount(&env.db, &acct, amount, &gate).await) },
                        )
                    })
                    .collect();
                let mut all = Vec::new();
                for t in tasks {
                    all.push(t.await.unwrap());
                }
                assert_eq!(tally(&all), (1, 1), "{all:?}");
                assert_eq!(
                    scalar_i64(
                        &env.db,
                        "SELECT version FROM s3_accounts WHERE code = $1",
                        &code
                    )
                    .await,
                    6
                );
                assert_eq!(effects(&env.db, "set_amount", &code).await, 1);
                // A stale version later is a duplicate too.
                assert_eq!(
                    got(set_amount(&env.db, &acct, 300, &gate).await),
                    Got::Duplicate
                );
                assert_eq!(effects(&env.db, "set_amount", &code).await, 1);
            }

            #[tokio::test]
            #[$skip]
            async fn optimistic_same_values_still_apply() {
                let Some(env) = env(4).await else { return };
                let code = unique("a");
                exec(
                    &env.db,
                    "INSERT INTO s3_accounts (code, amount, version) VALUES ($1, 100, 5)",
                    &[&code],
                )
                .await;
                let open = Once::new(1);
                open.seen.store(1, SeqCst);
                let acct = AccountRef {
                    code: code.clone(),
                    version: 5,
                };
                assert_eq!(got(set_amount(&env.db, &acct, 100, &open).await), Got::Ok);
                assert_eq!(
                    scalar_i64(
                        &env.db,
                        "SELECT version FROM s3_accounts WHERE code = $1",
                        &code
                    )
                    .await,
                    6
                );
                assert_eq!(
                    scalar_i64(
                        &env.db,
                        "SELECT amount FROM s3_accounts WHERE code = $1",
                        &code
                    )
                    .await,
                    100
                );
                assert_eq!(
                    got(set_amount(&env.db, &acct, 100, &open).await),
                    Got::Duplicate
                );
                let fresh = AccountRef {
                    code: code.clone(),
                    version: 6,
                };
                assert_eq!(got(set_amount(&env.db, &fresh, 100, &open).await), Got::Ok);
                assert_eq!(
                    scalar_i64(
                        &env.db,
                        "SELECT version FROM s3_accounts WHERE code = $1",
                        &code
                    )
                    .await,
                    7
                );
                assert_eq!(effects(&env.db, "set_amount", &code).await, 2);
            }

            /// Issue 12 item 10: a missing row is `NotFound`, not `Duplicate` (which the
            /// caller's own retry gets); once the row exists the same call applies, and the
            /// stale retry is a duplicate.
            #[tokio::test]
            #[$skip]
            async fn optimistic_missing_row_is_not_found() {
                let Some(env) = env(4).await else { return };
                let code = unique("a");
                let open = Once::new(1);
                open.seen.store(1, SeqCst);
                let acct = AccountRef {
                    code: code.clone(),
                    version: 5,
                };
                assert_eq!(
                    got(set_amount(&env.db, &acct, 100, &open).await),
                    Got::NotFound
                );
                assert_eq!(effects(&env.db, "set_amount", &code).await, 0);
                exec(
                    &env.db,
                    "INSERT INTO s3_accounts (code, amount, version) VALUES ($1, 100, 5)",
                    &[&code],
                )
                .await;
                assert_eq!(got(set_amount(&env.db, &acct, 150, &open).await), Got::Ok);
                assert_eq!(
                    got(set_amount(&env.db, &acct, 150, &open).await),
                    Got::Duplicate
                );
                assert_eq!(effects(&env.db, "set_amount", &code).await, 1);
            }
        }
    };
}

idempotent_tests::on_business_backends!(suite);
