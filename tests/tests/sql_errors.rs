//! Issue 12 items 1 and 4: the retryable database errors, and what happens to them inside the
//! caller's transaction.
//!
//! - `snapshot_isolation` (MariaDB, every session with `innodb_snapshot_isolation = ON`, the
//!   default from 11.6.2): a duplicate insert, a locking read or a guarded update meeting a row
//!   newer than the transaction's snapshot fails with 1020 ("Record has changed since last
//!   read") and MariaDB rolls the whole transaction back. The strategies' own transactions run
//!   again (the loser gets `Duplicate`, one effect); inside the caller's older snapshot, where
//!   no answer can be read any more, the caller gets the original 1020 at once (retryable), and
//!   its own retry gets the replay.
//! - `callers_transaction`: with the store a connection inside the caller's transaction
//!   (`store = "conn"`), a deadlock or serialization failure is returned at once with the
//!   original error — PostgreSQL REPEATABLE READ 40001 on the first occurrence (not ten runs
//!   and `Contention`), MySQL's deadlock 1213 with the caller as victim (not 1305 "SAVEPOINT
//!   does not exist"), in the strategy's own statement and in the body — and the caller's
//!   `rollback()` then succeeds.
//!
//! Effects are counted in ledgers; concurrency is lined up with barriers and gates, never
//! sleeps.

use std::sync::Arc;

use idempotent_runtime::store::sql::is_retryable;
use idempotent_runtime::{Disposition, Error, idempotent, observe};
use idempotent_tests::{AppError, Got, Once, got, tally, unique};
use sqlx::error::DatabaseError;

#[derive(Debug, Clone)]
pub struct ShipRef {
    pub code: String,
}

#[derive(Debug, Clone)]
pub struct AccountRef {
    pub code: String,
    pub version: i64,
}

#[derive(Debug, Clone)]
pub struct WalletRef {
    pub id: String,
}

#[derive(Debug, Clone)]
pub struct Customer {
    pub email: String,
}

#[derive(Debug, Clone)]
pub struct Payment {
    pub payment_id: String,
}

/// The database error inside `e`: the runtime's `Error::Backend` or the body's own sqlx error.
fn db_error(e: &AppError) -> Option<&(dyn DatabaseError + 'static)> {
    let sqlx_error = match e {
        AppError::Idempotency(Error::Backend(b)) => b.downcast_ref::<sqlx::Error>()?,
        AppError::Db(e) => e,
        _ => return None,
    };
    match sqlx_error {
        sqlx::Error::Database(d) => Some(&**d),
        _ => None,
    }
}

/// MySQL's error number inside `r`'s error (`None`: none, or `r` is `Ok`).
fn mysql_number<T>(r: &Result<T, AppError>) -> Option<u16> {
    let d = db_error(r.as_ref().err()?)?;
    Some(
        d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()?
            .number(),
    )
}

/// PostgreSQL's SQLSTATE inside `r`'s error.
fn pg_code<T>(r: &Result<T, AppError>) -> Option<String> {
    Some(db_error(r.as_ref().err()?)?.code()?.into_owned())
}

/// `r` is the runtime's `Error::Backend`, retryable (the classification callers can use).
fn runtime_retryable<T>(r: &Result<T, AppError>) -> bool {
    matches!(r, Err(AppError::Idempotency(e)) if matches!(e, Error::Backend(_)) && is_retryable(e))
}

mod snapshot_isolation {
    use super::*;
    use idempotent_tests::business::mysql::{Env, effects, exec, ledger};
    use idempotent_tests::{Gate, MyLedger, Receipt, Req, classify, mariadb_snapshot_pool, req};
    use sqlx::{MySqlConnection, MySqlPool};
    use tokio::sync::Barrier;

    /// A business-table kit whose every session has `innodb_snapshot_isolation = ON`.
    async fn env(max: u32) -> Option<Env> {
        // Creates the business tables once.
        idempotent_tests::business::mysql::env(1).await?;
        let db = mariadb_snapshot_pool(max).await?;
        Some(Env {
            db,
            _guard: Box::new(()),
        })
    }

    #[idempotent(
        strategy = "select_before_insert",
        key = "c.email",
        table = "s3_customers"
    )]
    async fn register(
        db: &MySqlPool,
        c: &Customer,
        gate: &Once,
        #[tx] tx: &mut MySqlConnection,
    ) -> Result<(), AppError> {
        // Every caller has read (its snapshot is taken) before any of them inserts.
        gate.pass().await;
        sqlx::query("INSERT INTO s3_customers (email, name) VALUES (?, 'Ada')")
            .bind(&c.email)
            .execute(&mut *tx)
            .await?;
        ledger(tx, "si_register", &c.email).await?;
        Ok(())
    }

    /// The duplicate inserts of 20 concurrent first calls past the check meet the winner's row,
    /// newer than their snapshots: 1020, rerun, `Duplicate` (before: `Backend(1020)`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[cfg_attr(not(has_mysql), ignore = "IDEMPOTENT_MYSQL_URL is not set")]
    async fn select_before_insert_20_first_calls() {
        let Some(env) = env(24).await else { return };
        let env = Arc::new(env);
        let c = Customer {
            email: unique("si"),
        };
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
        assert_eq!(effects(&env.db, "si_register", &c.email).await, 1);
    }

    #[idempotent(strategy = "pessimistic", key = "p.payment_id", table = "s3_payments")]
    async fn pay_once(
        db: &MySqlPool,
        p: &Payment,
        gate: &Once,
        #[tx] tx: &mut MySqlConnection,
    ) -> Result<(), AppError> {
        let seen: Option<i64> =
            sqlx::query_scalar("SELECT amount FROM s3_payments WHERE payment_id = ?")
                .bind(&p.payment_id)
                .fetch_optional(&mut *tx)
                .await?;
        gate.pass().await;
        if seen.is_some() {
            return Err(Error::Duplicate.into());
        }
        sqlx::query("INSERT INTO s3_payments (payment_id, wallet, amount) VALUES (?, 'w', 1)")
            .bind(&p.payment_id)
            .execute(&mut *tx)
            .await?;
        ledger(tx, "si_pay_once", &p.payment_id).await?;
        Ok(())
    }

    /// `pessimistic` on a missing row: the locking read locks a gap, every body reads (snapshot)
    /// and inserts; the losers meet the winner's newer row (1020, or a deadlock), rerun, lock
    /// the committed row and answer `Duplicate`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[cfg_attr(not(has_mysql), ignore = "IDEMPOTENT_MYSQL_URL is not set")]
    async fn pessimistic_missing_row_10_first_calls() {
        let Some(env) = env(16).await else { return };
        let env = Arc::new(env);
        let p = Payment {
            payment_id: unique("si"),
        };
        let gate = Once::new(10);
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let (env, p, gate) = (env.clone(), p.clone(), gate.clone());
                tokio::spawn(async move { got(pay_once(&env.db, &p, &gate).await) })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await.unwrap());
        }
        assert_eq!(tally(&all), (1, 9), "{all:?}");
        assert_eq!(effects(&env.db, "si_pay_once", &p.payment_id).await, 1);
    }

    #[idempotent(
        strategy = "state_machine",
        key = "o.code",
        table = "s3_shipments",
        status_column = "status",
        from = "PAID",
        to = "SHIPPED",
        store = "conn"
    )]
    async fn ship_in(
        conn: &mut MySqlConnection,
        o: &ShipRef,
        #[tx] tx: &mut MySqlConnection,
    ) -> Result<(), AppError> {
        ledger(tx, "si_ship", &o.code).await?;
        Ok(())
    }

    /// A guarded update inside the caller's transaction, whose snapshot predates another
    /// caller's transition: 1020 at once, as it is (MariaDB has rolled the caller's transaction
    /// back, so no answer read now would belong to it); the caller's `rollback()` succeeds and
    /// its retry answers `Duplicate`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(not(has_mysql), ignore = "IDEMPOTENT_MYSQL_URL is not set")]
    async fn state_machine_in_the_callers_older_snapshot() {
        let Some(env) = env(4).await else { return };
        let o = ShipRef { code: unique("si") };
        exec(
            &env.db,
            "INSERT INTO s3_shipments (code, status) VALUES ($1, 'PAID')",
            &[&o.code],
        )
        .await;
        let mut tx = env.db.begin().await.unwrap();
        let seen: String = sqlx::query_scalar("SELECT status FROM s3_shipments WHERE code = ?")
            .bind(&o.code)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(seen, "PAID");
        let mut other = env.db.acquire().await.unwrap();
        assert_eq!(got(ship_in(&mut other, &o).await), Got::Ok);

        let r = ship_in(&mut tx, &o).await;
        assert_eq!(mysql_number(&r), Some(1020), "{r:?}");
        assert!(runtime_retryable(&r), "{r:?}");
        tx.rollback().await.unwrap();

        let mut retry = env.db.begin().await.unwrap();
        assert_eq!(got(ship_in(&mut retry, &o).await), Got::Duplicate);
        retry.commit().await.unwrap();
        assert_eq!(effects(&env.db, "si_ship", &o.code).await, 1);
    }

    #[idempotent(
        strategy = "dedup_table",
        key = "req.id",
        scope = "req.tenant",
        name = "tests.si_place",
        fingerprint = "req"
    )]
    async fn place(
        db: &MySqlPool,
        ledger: &MyLedger,
        gate: &Gate,
        req: &Req,
        #[tx] tx: &mut MySqlConnection,
    ) -> Result<Receipt, AppError> {
        ledger.record_in(&mut *tx, req).await?;
        gate.pass().await;
        Ok(Receipt {
            tenant: req.tenant.clone(),
            id: req.id.clone(),
            amount: req.amount,
            serial: 1,
        })
    }

    #[idempotent(
        strategy = "dedup_table",
        key = "req.id",
        scope = "req.tenant",
        name = "tests.si_place_in",
        store = "conn",
        fingerprint = "req"
    )]
    async fn place_in(
        conn: &mut MySqlConnection,
        ledger: &MyLedger,
        req: &Req,
        #[tx] tx: &mut MySqlConnection,
    ) -> Result<Receipt, AppError> {
        ledger.record_in(&mut *tx, req).await?;
        Ok(Receipt {
            tenant: req.tenant.clone(),
            id: req.id.clone(),
            amount: req.amount,
            serial: 2,
        })
    }

    /// `dedup_table` with `#[tx]` on a pool: 16 concurrent duplicates while the first holds its
    /// uncommitted claim; each duplicate's own transaction meets the committed record and
    /// replays it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[cfg_attr(not(has_mysql), ignore = "IDEMPOTENT_MYSQL_URL is not set")]
    async fn dedup_table_16_duplicates_replay() {
        let Some(db) = mariadb_snapshot_pool(20).await else {
            return;
        };
        let ledger = Arc::new(MyLedger::create(&db).await);
        let gate = Arc::new(Gate::default());
        let r = req(&unique("t"), "order-1", 100);
        gate.arm();
        let barrier = Arc::new(Barrier::new(16));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (db, ledger, gate, barrier, r) = (
                    db.clone(),
                    ledger.clone(),
                    gate.clone(),
                    barrier.clone(),
                    r.clone(),
                );
                tokio::spawn(async move {
                    barrier.wait().await;
                    classify(observe(place(&db, &ledger, &gate, &r)).await)
                })
            })
            .collect();
        gate.entered.notified().await;
        gate.release.notify_one();
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await.unwrap());
        }
        let executed = all.iter().filter(|g| matches!(g, Got::Executed(_))).count();
        let replayed = all.iter().filter(|g| matches!(g, Got::Replayed(_))).count();
        assert_eq!((executed, replayed), (1, 15), "{all:?}");
        assert_eq!(ledger.count(&r).await, 1);
    }

    /// `dedup_table` with `#[tx]` inside the caller's transaction, whose snapshot predates the
    /// first call's commit: the duplicate claim meets the newer record (1020) and MariaDB rolls
    /// the caller's whole transaction back, so the caller gets the original, retryable error at
    /// once; its `rollback()` succeeds, and running its transaction again replays the first
    /// call's response. One effect.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(not(has_mysql), ignore = "IDEMPOTENT_MYSQL_URL is not set")]
    async fn dedup_table_duplicate_in_the_callers_older_snapshot() {
        let Some(db) = mariadb_snapshot_pool(4).await else {
            return;
        };
        let ledger = MyLedger::create(&db).await;
        let r = req(&unique("t"), "order-1", 100);
        let mut tx = db.begin().await.unwrap();
        let before = req(&r.tenant, "written-before", 1);
        ledger.record_in(&mut tx, &before).await.unwrap();
        // The caller's snapshot, taken before the first call commits.
        let _: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM idempotency_records")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        // The first call commits in a transaction of its own, through the same operation.
        let mut first_tx = db.begin().await.unwrap();
        let first = place_in(&mut first_tx, &ledger, &r).await.unwrap();
        first_tx.commit().await.unwrap();

        let dup = place_in(&mut tx, &ledger, &r).await;
        assert_eq!(mysql_number(&dup), Some(1020), "{dup:?}");
        assert!(runtime_retryable(&dup), "{dup:?}");
        tx.rollback().await.unwrap();
        assert_eq!(
            ledger.count(&before).await,
            0,
            "rolled back with the caller's transaction"
        );

        let mut again = db.begin().await.unwrap();
        ledger.record_in(&mut again, &before).await.unwrap();
        let (replay, how) = observe(place_in(&mut again, &ledger, &r)).await;
        assert_eq!(how, Some(Disposition::Replayed), "{replay:?}");
        assert_eq!(replay.unwrap(), first);
        again.commit().await.unwrap();
        assert_eq!(ledger.count(&r).await, 1);
        assert_eq!(ledger.count(&before).await, 1);
    }
}

mod callers_transaction {
    use super::*;

    mod postgres {
        use super::*;
        use idempotent_tests::business::postgres::{effects, env, exec, ledger};
        use sqlx::{PgConnection, PgPool};

        #[idempotent(
            strategy = "state_machine",
            key = "o.code",
            table = "s3_shipments",
            status_column = "status",
            from = "PAID",
            to = "SHIPPED",
            store = "conn"
        )]
        async fn ship_in(
            conn: &mut PgConnection,
            o: &ShipRef,
            #[tx] tx: &mut PgConnection,
        ) -> Result<(), AppError> {
            ledger(tx, "rr_ship", &o.code).await?;
            Ok(())
        }

        #[idempotent(
            strategy = "optimistic",
            key = "acct.code",
            table = "s3_accounts",
            store = "conn"
        )]
        async fn bump_touching(
            conn: &mut PgConnection,
            acct: &AccountRef,
            other: &str,
            #[tx] tx: &mut PgConnection,
        ) -> Result<(), AppError> {
            sqlx::query("UPDATE s3_accounts SET amount = amount + 1 WHERE code = $1")
                .bind(other)
                .execute(&mut *tx)
                .await?;
            ledger(tx, "rr_bump", &acct.code).await?;
            Ok(())
        }

        /// A REPEATABLE READ caller whose snapshot was taken; then `touch` commits elsewhere.
        async fn stale_caller(
            db: &PgPool,
            touch: &str,
            code: &str,
        ) -> sqlx::Transaction<'static, sqlx::Postgres> {
            let mut tx = db
                .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ")
                .await
                .unwrap();
            sqlx::query("SELECT 1").execute(&mut *tx).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(touch.to_owned()))
                .bind(code)
                .execute(db)
                .await
                .unwrap();
            tx
        }

        /// The strategy's own UPDATE meets a row updated after the caller's snapshot: 40001 on
        /// the first occurrence, as the runtime's `Backend` (before: ten runs, `Contention`).
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[cfg_attr(not(has_postgres), ignore = "IDEMPOTENT_POSTGRES_URL is not set")]
        async fn repeatable_read_serialization_failure_in_the_strategy() {
            let Some(env) = env(4).await else { return };
            let o = ShipRef { code: unique("rr") };
            exec(
                &env.db,
                "INSERT INTO s3_shipments (code, status) VALUES ($1, 'PAID')",
                &[&o.code],
            )
            .await;
            let touch = "UPDATE s3_shipments SET status = 'PAID' WHERE code = $1";
            let mut tx = stale_caller(&env.db, touch, &o.code).await;
            let r = ship_in(&mut tx, &o).await;
            assert_eq!(pg_code(&r).as_deref(), Some("40001"), "{r:?}");
            assert!(runtime_retryable(&r), "{r:?}");
            // The savepoint was rolled back: the caller's transaction answers until it ends.
            sqlx::query("SELECT 1").execute(&mut *tx).await.unwrap();
            tx.rollback().await.unwrap();
            assert_eq!(effects(&env.db, "rr_ship", &o.code).await, 0);

            let mut again = env.db.begin().await.unwrap();
            assert_eq!(got(ship_in(&mut again, &o).await), Got::Ok);
            again.commit().await.unwrap();
            assert_eq!(effects(&env.db, "rr_ship", &o.code).await, 1);
        }

        /// The body's UPDATE meets a row updated after the caller's snapshot: the body's own
        /// error (40001) on the first occurrence.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[cfg_attr(not(has_postgres), ignore = "IDEMPOTENT_POSTGRES_URL is not set")]
        async fn repeatable_read_serialization_failure_in_the_body() {
            let Some(env) = env(4).await else { return };
            let (code, other) = (unique("rr"), unique("rr"));
            for c in [&code, &other] {
                exec(
                    &env.db,
                    "INSERT INTO s3_accounts (code, amount, version) VALUES ($1, 0, 1)",
                    &[c],
                )
                .await;
            }
            let acct = AccountRef {
                code: code.clone(),
                version: 1,
            };
            let touch = "UPDATE s3_accounts SET amount = amount WHERE code = $1";
            let mut tx = stale_caller(&env.db, touch, &other).await;
            let r = bump_touching(&mut tx, &acct, &other).await;
            assert!(matches!(r, Err(AppError::Db(_))), "{r:?}");
            assert_eq!(pg_code(&r).as_deref(), Some("40001"), "{r:?}");
            tx.rollback().await.unwrap();
            assert_eq!(effects(&env.db, "rr_bump", &code).await, 0);
        }
    }

    mod mysql {
        use super::*;
        use idempotent_tests::business::mysql::{effects, env, exec, ledger};
        use idempotent_tests::{MyLedger, Receipt, Req, req};
        use sqlx::{MySqlConnection, MySqlPool};

        #[idempotent(
            strategy = "pessimistic",
            key = "w.id",
            table = "s3_wallets",
            column = "id",
            store = "conn"
        )]
        async fn debit_in(
            conn: &mut MySqlConnection,
            w: &WalletRef,
            #[tx] tx: &mut MySqlConnection,
        ) -> Result<(), AppError> {
            ledger(tx, "dl_debit", &w.id).await?;
            Ok(())
        }

        #[idempotent(
            strategy = "optimistic",
            key = "acct.code",
            table = "s3_accounts",
            store = "conn"
        )]
        async fn bump_touching(
            conn: &mut MySqlConnection,
            acct: &AccountRef,
            wallet: &str,
            #[tx] tx: &mut MySqlConnection,
        ) -> Result<(), AppError> {
            sqlx::query("UPDATE s3_wallets SET balance = balance + 1 WHERE id = ?")
                .bind(wallet)
                .execute(&mut *tx)
                .await?;
            ledger(tx, "dl_bump", &acct.code).await?;
            Ok(())
        }

        #[idempotent(
            strategy = "dedup_table",
            key = "req.id",
            scope = "req.tenant",
            name = "tests.dl_place",
            store = "conn",
            fingerprint = "req"
        )]
        async fn place_touching(
            conn: &mut MySqlConnection,
            ledger: &MyLedger,
            req: &Req,
            wallet: &str,
            #[tx] tx: &mut MySqlConnection,
        ) -> Result<Receipt, AppError> {
            ledger.record_in(&mut *tx, req).await?;
            sqlx::query("UPDATE s3_wallets SET balance = balance + 1 WHERE id = ?")
                .bind(wallet)
                .execute(&mut *tx)
                .await?;
            Ok(Receipt {
                tenant: req.tenant.clone(),
                id: req.id.clone(),
                amount: req.amount,
                serial: 1,
            })
        }

        /// Two wallets `(a, b)`.
        async fn wallets(db: &MySqlPool) -> (String, String) {
            let (a, b) = (unique("dl"), unique("dl"));
            for w in [&a, &b] {
                exec(
                    db,
                    "INSERT INTO s3_wallets (id, balance) VALUES ($1, 0)",
                    &[w],
                )
                .await;
            }
            (a, b)
        }

        /// The caller's transaction `tx` holds wallet `a` (and wrote a `before` ledger row);
        /// another transaction, heavier (50 rows written, so InnoDB picks the caller as the
        /// victim), holds wallet `b`. Then at once the other asks for `a` and `call` (on `tx`)
        /// needs `b`: whichever asks second closes the cycle. Returns `call`'s result after
        /// the other transaction got `a` (the caller's transaction was rolled back).
        async fn caller_is_the_deadlock_victim<T>(
            db: &MySqlPool,
            (a, b): (&str, &str),
            call: impl Future<Output = T>,
        ) -> T {
            let mut other = db.begin().await.unwrap();
            for _ in 0..50 {
                sqlx::query("INSERT INTO s3_ledger (op, k) VALUES ('dl_weight', ?)")
                    .bind(b)
                    .execute(&mut *other)
                    .await
                    .unwrap();
            }
            sqlx::query("SELECT id FROM s3_wallets WHERE id = ? FOR UPDATE")
                .bind(b)
                .execute(&mut *other)
                .await
                .unwrap();
            let wants_a = async {
                sqlx::query("UPDATE s3_wallets SET balance = balance + 1 WHERE id = ?")
                    .bind(a)
                    .execute(&mut *other)
                    .await
            };
            let (got_a, result) = tokio::join!(wants_a, call);
            got_a.expect("the heavier transaction survives the deadlock");
            other.rollback().await.unwrap();
            result
        }

        /// The caller's transaction, holding wallet `a`, with one write of its own.
        async fn caller_holding(
            db: &MySqlPool,
            a: &str,
        ) -> sqlx::Transaction<'static, sqlx::MySql> {
            let mut tx = db.begin().await.unwrap();
            sqlx::query("UPDATE s3_wallets SET balance = balance + 1 WHERE id = ?")
                .bind(a)
                .execute(&mut *tx)
                .await
                .unwrap();
            ledger(&mut tx, "dl_before", a).await.unwrap();
            tx
        }

        /// The strategy's own locking read is the victim: the caller gets 1213 (before: 1305
        /// "SAVEPOINT does not exist"), its `rollback()` succeeds, and its earlier write is gone
        /// with its transaction.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[cfg_attr(not(has_mysql), ignore = "IDEMPOTENT_MYSQL_URL is not set")]
        async fn deadlock_in_the_strategy_returns_1213() {
            let Some(env) = env(4).await else { return };
            let (a, b) = wallets(&env.db).await;
            let mut tx = caller_holding(&env.db, &a).await;
            let w = WalletRef { id: b.clone() };
            let r = caller_is_the_deadlock_victim(&env.db, (&a, &b), debit_in(&mut tx, &w)).await;
            assert_eq!(mysql_number(&r), Some(1213), "{r:?}");
            assert!(runtime_retryable(&r), "{r:?}");
            tx.rollback().await.unwrap();
            assert_eq!(effects(&env.db, "dl_before", &a).await, 0);
            assert_eq!(effects(&env.db, "dl_debit", &b).await, 0);
        }

        /// The body's UPDATE is the victim: the body's own error (1213), the same way.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[cfg_attr(not(has_mysql), ignore = "IDEMPOTENT_MYSQL_URL is not set")]
        async fn deadlock_in_the_body_returns_1213() {
            let Some(env) = env(4).await else { return };
            let (a, b) = wallets(&env.db).await;
            let code = unique("dl");
            exec(
                &env.db,
                "INSERT INTO s3_accounts (code, amount, version) VALUES ($1, 0, 1)",
                &[&code],
            )
            .await;
            let acct = AccountRef {
                code: code.clone(),
                version: 1,
            };
            let mut tx = caller_holding(&env.db, &a).await;
            let r =
                caller_is_the_deadlock_victim(&env.db, (&a, &b), bump_touching(&mut tx, &acct, &b))
                    .await;
            assert!(matches!(r, Err(AppError::Db(_))), "{r:?}");
            assert_eq!(mysql_number(&r), Some(1213), "{r:?}");
            tx.rollback().await.unwrap();
            assert_eq!(effects(&env.db, "dl_before", &a).await, 0);
            assert_eq!(effects(&env.db, "dl_bump", &code).await, 0);
        }

        /// `dedup_table` with `#[tx]` in the caller's transaction, the body the victim: 1213,
        /// and the caller's `rollback()` succeeds; a retry runs the body (nothing was recorded).
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[cfg_attr(not(has_mysql), ignore = "IDEMPOTENT_MYSQL_URL is not set")]
        async fn deadlock_in_a_dedup_table_body_returns_1213() {
            let Some(env) = env(4).await else { return };
            idempotent_runtime::migrate(&env.db).await.unwrap();
            let ledger = MyLedger::create(&env.db).await;
            let (a, b) = wallets(&env.db).await;
            let r = req(&unique("t"), "order-1", 100);
            let mut tx = caller_holding(&env.db, &a).await;
            let first = caller_is_the_deadlock_victim(
                &env.db,
                (&a, &b),
                place_touching(&mut tx, &ledger, &r, &b),
            )
            .await;
            assert!(matches!(first, Err(AppError::Db(_))), "{first:?}");
            assert_eq!(mysql_number(&first), Some(1213), "{first:?}");
            tx.rollback().await.unwrap();
            assert_eq!(ledger.count(&r).await, 0);

            let mut again = env.db.begin().await.unwrap();
            let (second, how) = observe(place_touching(&mut again, &ledger, &r, &b)).await;
            assert_eq!(how, Some(Disposition::Executed), "{second:?}");
            again.commit().await.unwrap();
            assert_eq!(ledger.count(&r).await, 1);
        }
    }
}
