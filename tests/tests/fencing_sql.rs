//! A `FencingToken` bound into SQL (issue 11 item 11): a `distributed_lock` body (locks on the
//! memory store) updates a row guarded by `WHERE fence < <token>` on PostgreSQL and
//! MySQL/MariaDB (`BIGINT`) and SQLite (`INTEGER`), binding the token as it is — no cast — and
//! the stored fence reads back as the same token. A stale holder's write is refused by the
//! guard; a hand-built token above `i64::MAX` fails to encode and writes nothing; a negative
//! fence does not decode as a token.

use std::sync::Mutex;

use idempotent_runtime::{Disposition, FencingToken, MemoryStore, idempotent, observe};
use idempotent_tests::{AppError, unique};

macro_rules! fenced_suite {
    (
        mod $m:ident;
        pool = $pool:ty;
        connect = $connect:expr;
        placeholder = $ph:literal;
        fence_type = $fence_type:literal;
        skip = $skip:meta;
    ) => {
        mod $m {
            use super::*;

            /// `$ph` with `N` replaced by `i`.
            fn p(i: usize) -> String {
                $ph.replace("N", &i.to_string())
            }

            pub struct Svc {
                locks: MemoryStore,
                pool: $pool,
                table: String,
                /// The token each body received, in order.
                seen: Mutex<Vec<FencingToken>>,
            }

            impl Svc {
                /// Sets the row's fence and writer to this call's, unless a higher or equal
                /// fence was written already: the storage side of fencing.
                async fn guarded(&self, writer: &str, fence: FencingToken) -> Result<u64, sqlx::Error> {
                    let sql = format!(
                        "UPDATE {} SET fence = {}, writer = {} WHERE id = {} AND fence < {}",
                        self.table,
                        p(1),
                        p(2),
                        p(3),
                        p(4)
                    );
                    let done = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .bind(fence)
                        .bind(writer)
                        .bind("acct")
                        .bind(fence)
                        .execute(&self.pool)
                        .await?;
                    Ok(done.rows_affected())
                }

                /// The row's fence read back as a token, its raw `i64` and its writer.
                async fn row(&self) -> Result<(FencingToken, i64, String), sqlx::Error> {
                    let sql = format!(
                        "SELECT fence, fence, writer FROM {} WHERE id = {}",
                        self.table,
                        p(1)
                    );
                    sqlx::query_as(sqlx::AssertSqlSafe(sql))
                        .bind("acct")
                        .fetch_one(&self.pool)
                        .await
                }

                #[idempotent(
                    strategy = "distributed_lock",
                    key = "op",
                    store = "self.locks"
                )]
                async fn write(&self, op: &str, #[fence] fence: FencingToken) -> Result<u64, AppError> {
                    self.seen.lock().unwrap().push(fence);
                    Ok(self.guarded(op, fence).await?)
                }
            }

            async fn svc() -> Option<(Svc, idempotent_tests::Guard)> {
                let (pool, guard) = $connect.await?;
                let table = unique("fenced");
                let ddl = format!(
                    "CREATE TABLE {table} (id VARCHAR(64) PRIMARY KEY, fence {} NOT NULL, writer VARCHAR(64) NOT NULL)",
                    $fence_type
                );
                sqlx::query(sqlx::AssertSqlSafe(ddl))
                    .execute(&pool)
                    .await
                    .unwrap();
                let seed = format!(
                    "INSERT INTO {table} (id, fence, writer) VALUES ('acct', 0, 'nobody')"
                );
                sqlx::query(sqlx::AssertSqlSafe(seed))
                    .execute(&pool)
                    .await
                    .unwrap();
                Some((
                    Svc {
                        locks: MemoryStore::new(),
                        pool,
                        table,
                        seen: Mutex::new(Vec::new()),
                    },
                    guard,
                ))
            }

            #[tokio::test]
            #[$skip]
            async fn a_fencing_token_binds_as_a_signed_64_bit_integer() {
                let Some((svc, _guard)) = svc().await else { return };

                // Two holders one after the other: each body binds its token as it is.
                let (first, how) = observe(svc.write("op-1")).await;
                assert_eq!((first.unwrap(), how), (1, Some(Disposition::Executed)));
                let (second, how) = observe(svc.write("op-2")).await;
                assert_eq!((second.unwrap(), how), (1, Some(Disposition::Executed)));
                let seen = svc.seen.lock().unwrap().clone();
                let [t1, t2] = seen[..] else {
                    panic!("two bodies ran: {seen:?}")
                };
                assert!(t2 > t1, "{t1} then {t2}");
                assert_eq!(svc.row().await.unwrap(), (t2, t2.as_i64(), "op-2".to_owned()));

                // The first holder writing late (its lease lapsed, a newer holder wrote): refused.
                assert_eq!(svc.guarded("op-1 late", t1).await.unwrap(), 0);
                assert_eq!(svc.guarded("op-2 again", t2).await.unwrap(), 0);
                assert_eq!(svc.row().await.unwrap(), (t2, t2.as_i64(), "op-2".to_owned()));

                // A Redis token (seeded from the server's clock in microseconds), then the
                // largest token a signed column holds: both stored and read back exactly.
                let redis = FencingToken(1_780_000_000_000_123);
                assert_eq!(svc.guarded("redis", redis).await.unwrap(), 1);
                assert_eq!(
                    svc.row().await.unwrap(),
                    (redis, 1_780_000_000_000_123, "redis".to_owned())
                );
                let max = FencingToken(i64::MAX as u64);
                assert_eq!(svc.guarded("max", max).await.unwrap(), 1);
                assert_eq!(svc.row().await.unwrap(), (max, i64::MAX, "max".to_owned()));

                // A hand-built token above i64::MAX: an encode error, nothing written.
                let above = svc.guarded("above", FencingToken(i64::MAX as u64 + 1)).await;
                assert!(
                    matches!(&above, Err(sqlx::Error::Encode(e)) if e.to_string().contains("above i64::MAX")),
                    "{above:?}"
                );
                assert_eq!(svc.row().await.unwrap(), (max, i64::MAX, "max".to_owned()));

                // A negative fence is not a token.
                let sql = format!("UPDATE {} SET fence = -1 WHERE id = 'acct'", svc.table);
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&svc.pool)
                    .await
                    .unwrap();
                let negative = svc.row().await;
                assert!(
                    matches!(&negative, Err(sqlx::Error::ColumnDecode { source, .. }) if source.to_string().contains("cannot be negative")),
                    "{negative:?}"
                );

                let drop = format!("DROP TABLE {}", svc.table);
                sqlx::query(sqlx::AssertSqlSafe(drop))
                    .execute(&svc.pool)
                    .await
                    .unwrap();
            }
        }
    };
}

fenced_suite! {
    mod postgres;
    pool = sqlx::PgPool;
    connect = idempotent_tests::pg_pool(2);
    placeholder = "$N";
    fence_type = "BIGINT";
    skip = cfg_attr(not(has_postgres), ignore = "IDEMPOTENT_POSTGRES_URL is not set");
}

fenced_suite! {
    mod mysql;
    pool = sqlx::MySqlPool;
    connect = idempotent_tests::mysql_pool(2);
    placeholder = "?";
    fence_type = "BIGINT";
    skip = cfg_attr(not(has_mysql), ignore = "IDEMPOTENT_MYSQL_URL is not set");
}

fenced_suite! {
    mod sqlite;
    pool = sqlx::SqlitePool;
    connect = idempotent_tests::sqlite_pool(2);
    placeholder = "?N";
    fence_type = "INTEGER";
    skip = cfg_attr(any(), ignore);
}
