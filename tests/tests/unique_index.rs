//! unique_index on PostgreSQL, MySQL/MariaDB and SQLite: of 20 concurrent creates exactly one
//! inserts; a key that is the primary key, a unique index or a composite unique index makes a
//! second insert a duplicate; other violations (another unique index, NOT NULL, foreign key,
//! CHECK) stay errors; on PostgreSQL a duplicate inside the caller's own transaction leaves it
//! usable. Every test counts effects in the `s3_ledger` table and asserts the outcome each
//! caller got; concurrency is lined up with barriers, never sleeps. Tables have fixed names (the
//! attribute names them at compile time); tests isolate themselves with run-unique keys.

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Got, Once, got, tally, unique};

#[derive(Debug, Clone)]
pub struct NewOrder {
    pub tenant: String,
    pub code: String,
    pub invoice: Option<String>,
    pub amount: Option<i64>,
    pub customer: Option<String>,
}

macro_rules! suite {
    ($m:ident, $pool:ty, $conn:ty, $skip:meta) => {
        mod $m {
            use super::*;
            use idempotent_tests::business::$m::*;


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

            #[idempotent(strategy = "unique_index", key = "o.code", constraint = "s3_ui_uq_code")]
            async fn create_constraint_only(db: &$pool, o: &NewOrder, #[tx] tx: &mut $conn) -> Result<(), AppError> {
                insert_order(tx, "s3_ui_uq", o).await
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
            #[$skip]
            async fn unique_index_20_concurrent_creates() {
                let Some(env) = env(24).await else { return };
                let env = Arc::new(env);
                let o = order(&unique("o"));
                let gate = Once::new(if SINGLE_WRITER { 1 } else { 20 });
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
            #[$skip]
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

            /// Issue 12 item 3: (A, INV-1) then (B, INV-1), B violating the invoice's unique
            /// index, not the key's. With `table` (every backend): B gets the database's unique
            /// violation, not `Duplicate`. With `constraint` alone: PostgreSQL names the
            /// constraint, so the same; MySQL/MariaDB and SQLite name none, so the call is
            /// refused with `Error::Unsupported` before anything runs — never a lost B.
            #[tokio::test]
            #[$skip]
            async fn unique_index_other_column_violation_is_never_a_duplicate() {
                use idempotent_runtime::store::business::BusinessBackend;
                let Some(env) = env(4).await else { return };
                let names_constraints =
                    <<$conn as sqlx::Connection>::Database as BusinessBackend>::NAMES_CONSTRAINTS;
                let invoice = unique("INV");
                let a = NewOrder { invoice: Some(invoice.clone()), ..order(&unique("A")) };
                let b = NewOrder { invoice: Some(invoice.clone()), ..order(&unique("B")) };
                let rows = |code: &str| {
                    let (db, code) = (&env.db, code.to_owned());
                    async move { scalar_i64(db, "SELECT COUNT(*) FROM s3_ui_uq WHERE code = $1", &code).await }
                };
                if names_constraints {
                    assert_eq!(got(create_constraint_only(&env.db, &a).await), Got::Ok);
                    let r = create_constraint_only(&env.db, &b).await;
                    assert!(matches!(&r, Err(AppError::Db(sqlx::Error::Database(d))) if d.is_unique_violation()), "{r:?}");
                    assert_eq!(got(create_constraint_only(&env.db, &a).await), Got::Duplicate);
                } else {
                    for o in [&a, &b] {
                        let r = create_constraint_only(&env.db, o).await;
                        assert!(
                            matches!(&r, Err(AppError::Idempotency(idempotent_runtime::Error::Unsupported(why))) if why.contains("needs `table`")),
                            "{r:?}"
                        );
                        assert_eq!(rows(&o.code).await, 0, "nothing ran");
                    }
                    assert_eq!(got(create_uq(&env.db, &a).await), Got::Ok);
                }
                // With `table`: B is the database's error on every backend, A's retry a duplicate.
                let r = create_uq(&env.db, &b).await;
                assert!(matches!(&r, Err(AppError::Db(sqlx::Error::Database(d))) if d.is_unique_violation()), "{r:?}");
                assert_eq!(got(create_uq(&env.db, &a).await), Got::Duplicate);
                assert_eq!(rows(&a.code).await, 1);
                assert_eq!(rows(&b.code).await, 0, "B was refused with an error, not dropped as a duplicate");
                assert_eq!(effects(&env.db, "s3_ui_uq", &format!("t1/{}", a.code)).await, 1);
                assert_eq!(effects(&env.db, "s3_ui_uq", &format!("t1/{}", b.code)).await, 0);
            }

            #[tokio::test]
            #[$skip]
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
        }
    };
}

idempotent_tests::on_business_backends!(suite);

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
    #[cfg_attr(not(has_postgres), ignore = "IDEMPOTENT_POSTGRES_URL is not set")]
    async fn duplicate_keeps_the_callers_transaction_usable() {
        let Some(env) = idempotent_tests::business::postgres::env(4).await else {
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

/// Issue 12 item 8, MariaDB: a key column's collation decides which keys are equal. Under
/// `utf8mb4_nopad_bin` (what README recommends; `utf8mb4_0900_bin` on MySQL 8) `"k"` and
/// `"k "` are two keys, two effects; under `utf8mb4_bin` (PAD SPACE) `'k' = 'k '`, so `"k "`
/// after `"k"` is a `Duplicate` — that behaviour is documented, not fixed.
mod mysql_collation {
    use super::*;
    use idempotent_tests::business::mysql::*;
    use sqlx::{MySqlConnection, MySqlPool};

    #[idempotent(strategy = "unique_index", key = "o.code", table = "s3_nopad")]
    async fn create_nopad(
        db: &MySqlPool,
        o: &NewOrder,
        #[tx] tx: &mut MySqlConnection,
    ) -> Result<(), AppError> {
        sqlx::query("INSERT INTO s3_nopad (code) VALUES (?)")
            .bind(&o.code)
            .execute(&mut *tx)
            .await?;
        ledger(tx, "s3_nopad", &o.code).await?;
        Ok(())
    }

    #[idempotent(strategy = "unique_index", key = "o.code", table = "s3_padbin")]
    async fn create_padbin(
        db: &MySqlPool,
        o: &NewOrder,
        #[tx] tx: &mut MySqlConnection,
    ) -> Result<(), AppError> {
        sqlx::query("INSERT INTO s3_padbin (code) VALUES (?)")
            .bind(&o.code)
            .execute(&mut *tx)
            .await?;
        ledger(tx, "s3_padbin", &o.code).await?;
        Ok(())
    }

    fn order(code: &str) -> NewOrder {
        NewOrder {
            tenant: "t1".into(),
            code: code.into(),
            invoice: None,
            amount: None,
            customer: None,
        }
    }

    /// The ledger's `k` is `VARCHAR` under the server's default collation, which pads: count
    /// the exact key with `BINARY`.
    async fn exact_effects(db: &MySqlPool, op: &str, k: &str) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM s3_ledger WHERE op = ? AND BINARY k = BINARY ?")
            .bind(op)
            .bind(k)
            .fetch_one(db)
            .await
            .unwrap()
    }

    #[tokio::test]
    #[cfg_attr(not(has_mysql), ignore = "IDEMPOTENT_MYSQL_URL is not set")]
    async fn nopad_bin_keeps_a_trailing_space_apart() {
        let Some(env) = env(4).await else { return };
        let k = unique("k");
        let spaced = format!("{k} ");
        assert_eq!(got(create_nopad(&env.db, &order(&k)).await), Got::Ok);
        assert_eq!(got(create_nopad(&env.db, &order(&spaced)).await), Got::Ok);
        assert_eq!(
            got(create_nopad(&env.db, &order(&spaced)).await),
            Got::Duplicate
        );
        assert_eq!(exact_effects(&env.db, "s3_nopad", &k).await, 1);
        assert_eq!(exact_effects(&env.db, "s3_nopad", &spaced).await, 1);
    }

    #[tokio::test]
    #[cfg_attr(not(has_mysql), ignore = "IDEMPOTENT_MYSQL_URL is not set")]
    async fn bin_pads_so_a_trailing_space_is_the_same_key() {
        let Some(env) = env(4).await else { return };
        let k = unique("k");
        let spaced = format!("{k} ");
        assert_eq!(got(create_padbin(&env.db, &order(&k)).await), Got::Ok);
        assert_eq!(
            got(create_padbin(&env.db, &order(&spaced)).await),
            Got::Duplicate
        );
        assert_eq!(exact_effects(&env.db, "s3_padbin", &k).await, 1);
        assert_eq!(exact_effects(&env.db, "s3_padbin", &spaced).await, 0);
    }
}
