//! A store that cannot be reached is reported with its cause and its address without the
//! password — not as sqlx's bare "pool timed out while waiting for an open connection" after
//! the pool's whole `acquire_timeout`. Runs against loopback port 1, where nothing listens, so
//! it needs no server; the busy-pool case holds the only connection of a SQLite pool.

use std::time::Duration;

use idempotent_runtime::{ConnectCause, ConnectError, Error, RedisStore};

/// The `ConnectError` inside an [`Error::Backend`].
fn connect_error(e: &Error) -> &ConnectError {
    match e {
        Error::Backend(source) => source
            .downcast_ref::<ConnectError>()
            .unwrap_or_else(|| panic!("not a ConnectError: {e}")),
        other => panic!("not Error::Backend: {other:?}"),
    }
}

#[tokio::test]
async fn a_postgres_pool_on_a_closed_port_says_refused_without_the_password() {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("postgres://app:s3cret@127.0.0.1:1/orders")
        .expect("a valid URL");
    let e = idempotent_runtime::migrate(&pool)
        .await
        .expect_err("nothing listens on port 1");
    let c = connect_error(&e);
    assert_eq!(c.cause, ConnectCause::Refused);
    assert_eq!(c.target, "postgres://app@127.0.0.1:1/orders");
    let text = e.to_string();
    assert!(text.contains("connection refused"), "{text}");
    assert!(text.contains("acquire_timeout of 500ms"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

#[tokio::test]
async fn a_mysql_pool_on_a_closed_port_says_refused() {
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("mysql://root:pw@127.0.0.1:1/test")
        .expect("a valid URL");
    let e = idempotent_runtime::migrate(&pool)
        .await
        .expect_err("nothing listens on port 1");
    let c = connect_error(&e);
    assert_eq!(c.cause, ConnectCause::Refused);
    assert!(!e.to_string().contains("pw"), "{e}");
}

/// Every connection lent out for the whole time-out: said as such, not as a connect failure.
#[tokio::test]
async fn a_pool_whose_connections_are_all_busy_says_so() {
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(300))
        .connect("sqlite::memory:")
        .await
        .expect("in-memory SQLite");
    let held = pool.acquire().await.expect("the only connection");
    let e = idempotent_runtime::migrate(&pool)
        .await
        .expect_err("the connection is held");
    assert_eq!(connect_error(&e).cause, ConnectCause::PoolBusy);
    assert!(e.to_string().contains("1 of 1 connections open"), "{e}");
    drop(held);
    idempotent_runtime::migrate(&pool)
        .await
        .expect("free again");
}

#[tokio::test]
async fn a_redis_on_a_closed_port_says_refused_without_the_password() {
    let Err(e) = RedisStore::connect("redis://:s3cret@127.0.0.1:1").await else {
        panic!("nothing listens on port 1");
    };
    let c = connect_error(&e);
    assert_eq!(c.cause, ConnectCause::Refused);
    assert_eq!(c.target, "redis://127.0.0.1:1");
    assert!(!e.to_string().contains("s3cret"), "{e}");
}

/// `.invalid` never resolves (RFC 2606).
#[tokio::test]
async fn an_unknown_redis_host_is_named() {
    let Err(e) = RedisStore::connect("redis://cache.invalid:6379").await else {
        panic!("the name does not resolve");
    };
    assert_eq!(connect_error(&e).cause, ConnectCause::UnknownHost);
}

/// A user the server does not know: refused at once (sqlx does not retry it), named as an
/// authentication failure with the pool's URL.
#[tokio::test]
#[cfg_attr(not(has_postgres), ignore = "IDEMPOTENT_POSTGRES_URL is not set")]
async fn a_postgres_pool_with_an_unknown_user_says_authentication() {
    let Some(url) = idempotent_tests::server_url(idempotent_tests::POSTGRES_ENV, "PostgreSQL")
    else {
        return;
    };
    let mut options: sqlx::postgres::PgConnectOptions = url.parse().expect("a PostgreSQL URL");
    options = options.username("idempotent_no_such_user").password("pw");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options);
    let e = idempotent_runtime::migrate(&pool)
        .await
        .expect_err("no such user");
    let c = connect_error(&e);
    assert_eq!(c.cause, ConnectCause::Auth, "{e}");
    assert!(
        c.target.starts_with("postgres://idempotent_no_such_user@"),
        "{e}"
    );
    assert!(!e.to_string().contains(":pw@"), "{e}");
}
