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
    // Connecting works: the message says the pool had no free connection, not "cannot connect".
    assert!(
        e.to_string()
            .contains("no free connection in the pool of sqlite://"),
        "{e}"
    );
    assert!(!e.to_string().contains("cannot connect"), "{e}");
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

/// A server that wants a password: connecting without one (the server answers the first
/// command with `NOAUTH`) and with a wrong one (`WRONGPASS` in the handshake) are both named
/// as authentication failures with the URL, without the password; so is a connection the
/// caller made without the password (`from_manager`).
#[tokio::test]
#[cfg_attr(
    not(has_redis_server),
    ignore = "needs redis-server on PATH (starts a server of its own)"
)]
async fn a_redis_wanting_a_password_says_authentication_with_none_and_a_wrong_one() {
    if !idempotent_tests::redis_server_on_path() {
        return;
    }
    let server = idempotent_tests::RedisServer::start(&[]);
    // Set after start: the harness's readiness `PING` goes without a password.
    server.cli(&["CONFIG", "SET", "requirepass", "right-one"]);
    let port = server.port;
    for (url, target) in [
        (
            format!("redis://127.0.0.1:{port}"),
            format!("redis://127.0.0.1:{port}"),
        ),
        (
            format!("redis://:wr0ng@127.0.0.1:{port}"),
            format!("redis://127.0.0.1:{port}"),
        ),
    ] {
        let Err(e) = RedisStore::connect(&url).await else {
            panic!("{url}: the server wants a password");
        };
        let c = connect_error(&e);
        assert_eq!(c.cause, ConnectCause::Auth, "{url}: {e}");
        assert_eq!(c.target, target, "{e}");
        assert!(
            e.to_string().contains(&format!(
                "cannot connect to {target}: authentication failed"
            )),
            "{url}: {e}"
        );
        assert!(!e.to_string().contains("wr0ng"), "{e}");
    }
    // A connection made by the caller (`from_manager`) without the password: the same cause
    // (the store does not know the manager's URL).
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).expect("a Redis URL");
    let manager = redis::aio::ConnectionManager::new(client)
        .await
        .expect("connecting sends no command that needs the password");
    let Err(e) = RedisStore::from_manager(manager).await else {
        panic!("from_manager: the server wants a password");
    };
    let c = connect_error(&e);
    assert_eq!(c.cause, ConnectCause::Auth, "from_manager: {e}");
    assert!(
        e.to_string().contains("authentication failed"),
        "from_manager: {e}"
    );
    let store = RedisStore::connect(&format!("redis://:right-one@127.0.0.1:{port}")).await;
    assert!(
        store.is_ok(),
        "the right password connects: {:?}",
        store.err()
    );
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

/// A listener that accepts TCP connections and holds them without ever answering: a port
/// where another kind of server listens (or a database that hangs). Its port; the connections
/// stay open until the test's runtime ends.
async fn silent_listener() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let port = listener.local_addr().expect("local address").port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    port
}

/// `migrate` on a pool whose server accepts the connection but never answers the handshake:
/// one error naming the time-out and that the port may belong to another kind of server (the
/// wait is the pool's `acquire_timeout`, once: not asserted, a time is no assertion).
#[tokio::test]
async fn migrate_against_a_silent_server_names_the_missing_handshake() {
    let port = silent_listener().await;
    let pg = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy(&format!("postgres://app:s3cret@127.0.0.1:{port}/orders"))
        .expect("a valid URL");
    let my = sqlx::mysql::MySqlPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy(&format!("mysql://app:s3cret@127.0.0.1:{port}/orders"))
        .expect("a valid URL");
    let pg = idempotent_runtime::migrate(&pg)
        .await
        .expect_err("no handshake");
    let my = idempotent_runtime::migrate(&my)
        .await
        .expect_err("no handshake");
    for (e, scheme, what) in [
        (&pg, "postgres", "PostgreSQL"),
        (&my, "mysql", "MySQL/MariaDB"),
    ] {
        let c = connect_error(e);
        assert_eq!(c.cause, ConnectCause::TimedOut, "{e}");
        assert_eq!(c.target, format!("{scheme}://app@127.0.0.1:{port}/orders"));
        let text = e.to_string();
        assert!(
            text.contains(&format!(
                "a TCP connection to 127.0.0.1:{port} opens, but no {what} handshake came within 500ms"
            )),
            "{text}"
        );
        assert!(text.contains("not another kind of server?"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }
}

/// `check_connection` on a closed port: the same `ConnectError` as `migrate`.
#[tokio::test]
async fn check_connection_on_a_closed_port_says_refused() {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(500))
        .connect_lazy("postgres://app@127.0.0.1:1/orders")
        .expect("a valid URL");
    let e = idempotent_runtime::check_connection(&pool)
        .await
        .expect_err("nothing listens on port 1");
    assert_eq!(connect_error(&e).cause, ConnectCause::Refused);
    assert!(
        e.to_string()
            .contains("cannot connect to postgres://app@127.0.0.1:1/orders (the pool's first connection, within its acquire_timeout of 500ms): connection refused"),
        "{e}"
    );
}

/// Sentinels that cannot be reached: a `ConnectError` like the other connect functions', its
/// target the sentinels' URLs without passwords, its context the service.
#[tokio::test]
async fn sentinels_on_a_closed_port_say_refused_without_the_password() {
    let Err(e) =
        RedisStore::connect_sentinel(&["redis://:s3cret@127.0.0.1:1"], "orders-primary").await
    else {
        panic!("nothing listens on port 1");
    };
    let c = connect_error(&e);
    assert_eq!(c.cause, ConnectCause::Refused, "{e}");
    assert_eq!(c.target, "redis://127.0.0.1:1");
    let text = e.to_string();
    assert!(
        text.contains(
            "cannot connect to redis://127.0.0.1:1 (the primary of \"orders-primary\", as its sentinels name it): connection refused"
        ),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "{text}");
}

/// `.invalid` never resolves (RFC 2606): one sentinel whose name does not resolve.
#[tokio::test]
async fn an_unknown_sentinel_host_is_named() {
    let Err(e) = RedisStore::connect_sentinel(&["redis://sentinel.invalid:26379"], "orders").await
    else {
        panic!("the name does not resolve");
    };
    assert_eq!(connect_error(&e).cause, ConnectCause::UnknownHost, "{e}");
}

/// A Redis URL whose port is served by something that never answers: a `ConnectError` that
/// says it timed out although a TCP connection opens (another kind of server).
#[tokio::test]
async fn a_silent_redis_port_says_timed_out() {
    let port = silent_listener().await;
    let Err(e) = RedisStore::connect(&format!("redis://:s3cret@127.0.0.1:{port}")).await else {
        panic!("nothing answers");
    };
    let c = connect_error(&e);
    assert_eq!(c.target, format!("redis://127.0.0.1:{port}"));
    assert_eq!(c.cause, ConnectCause::TimedOut, "{e}");
    let text = e.to_string();
    assert!(
        text.contains(&format!(
            "a TCP connection to 127.0.0.1:{port} opens, but no Redis handshake came within 2s"
        )),
        "{text}"
    );
    assert!(text.contains("not another kind of server?"), "{text}");
    assert!(!text.contains("s3cret"), "{text}");
}

/// A port served by another kind of server that answers at once (here: an HTTP server
/// refusing whatever it got): the cause is the protocol, not a time-out.
async fn http_listener() -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let port = listener.local_addr().expect("local address").port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                // Reads what the client sent first, as an HTTP server reads a request.
                let mut request = [0u8; 512];
                let _ = stream.read(&mut request).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
                let _ = stream.shutdown().await;
                // Held open until the client closes it (a read of 0 bytes or an error).
                let _ = stream.read(&mut request).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn an_http_server_on_the_redis_port_is_named() {
    let port = http_listener().await;
    let Err(e) = RedisStore::connect(&format!("redis://127.0.0.1:{port}")).await else {
        panic!("not a Redis server");
    };
    assert_eq!(connect_error(&e).cause, ConnectCause::Protocol, "{e}");
    assert!(e.to_string().contains("another kind of server"), "{e}");
}

#[tokio::test]
async fn an_http_server_on_the_postgres_port_is_named() {
    let port = http_listener().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(&format!("postgres://app@127.0.0.1:{port}/orders"))
        .expect("a valid URL");
    let e = idempotent_runtime::migrate(&pool)
        .await
        .expect_err("not a PostgreSQL server");
    assert_eq!(connect_error(&e).cause, ConnectCause::Protocol, "{e}");
    assert!(e.to_string().contains("another kind of server"), "{e}");
}

/// A port served by another kind of server that drops a client without a word: after reading
/// its first bytes (`read_first`: PostgreSQL does so with a Redis command read as a startup
/// packet; a new user's `--redis-url` on the PostgreSQL port said only "broken pipe"), or at
/// once (for MySQL, whose clients wait for the server to speak first).
async fn closing_listener(read_first: bool) -> u16 {
    use tokio::io::AsyncReadExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let port = listener.local_addr().expect("local address").port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut first = [0u8; 512];
                if read_first {
                    let _ = stream.read(&mut first).await;
                }
                // Closed without a word: the client sees an end of stream, a reset or a broken
                // pipe, whichever its next read or write meets first.
                drop(stream);
            });
        }
    });
    port
}

#[tokio::test]
async fn a_server_closing_on_the_redis_handshake_is_named() {
    let port = closing_listener(true).await;
    let Err(e) = RedisStore::connect(&format!("redis://:s3cret@127.0.0.1:{port}")).await else {
        panic!("not a Redis server");
    };
    assert_eq!(connect_error(&e).cause, ConnectCause::Protocol, "{e}");
    assert!(e.to_string().contains("another kind of server"), "{e}");
    assert!(!e.to_string().contains("s3cret"), "{e}");
}

#[tokio::test]
async fn a_server_closing_on_the_postgres_and_mysql_handshake_is_named() {
    let port = closing_listener(true).await;
    let pg = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(&format!("postgres://app@127.0.0.1:{port}/orders"))
        .expect("a valid URL");
    let e = idempotent_runtime::migrate(&pg)
        .await
        .expect_err("not a PostgreSQL server");
    assert_eq!(connect_error(&e).cause, ConnectCause::Protocol, "{e}");
    let port = closing_listener(false).await;
    let my = sqlx::mysql::MySqlPoolOptions::new()
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(&format!("mysql://root@127.0.0.1:{port}/test"))
        .expect("a valid URL");
    let e = idempotent_runtime::migrate(&my)
        .await
        .expect_err("not a MySQL server");
    assert_eq!(connect_error(&e).cause, ConnectCause::Protocol, "{e}");
}

/// The case a new user met: a Redis URL naming the PostgreSQL server's port (when the suite
/// has one).
#[tokio::test]
async fn a_redis_url_on_the_postgres_port_is_named() {
    use std::str::FromStr as _;
    let Some(pg) = idempotent_tests::backends::server_url(
        idempotent_tests::backends::POSTGRES_ENV,
        "PostgreSQL",
    ) else {
        eprintln!("skipped: IDEMPOTENT_POSTGRES_URL is unset");
        return;
    };
    let options = sqlx::postgres::PgConnectOptions::from_str(&pg).expect("a PostgreSQL URL");
    let (host, port) = (options.get_host(), options.get_port());
    let Err(e) = RedisStore::connect(&format!("redis://{host}:{port}")).await else {
        panic!("PostgreSQL is not a Redis server");
    };
    assert_eq!(connect_error(&e).cause, ConnectCause::Protocol, "{e}");
}
