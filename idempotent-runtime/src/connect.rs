//! Why connecting to a store failed: [`ConnectError`] names the store's address (its URL
//! without the password) and the cause — refused, unknown host, credentials, unknown database,
//! timed out (saying whether a TCP connection to the port opened: then another kind of server
//! may listen there), an answer in another protocol — read from the error the driver
//! returned, so a user need not guess it from a pool time-out.
//!
//! The runtime returns it (inside [`Error::Backend`](crate::Error::Backend)) where it connects:
//! [`RedisStore::connect`](crate::RedisStore) and its Cluster and Sentinel forms,
//! [`check_connection`](crate::store::sql::check_connection) (and so
//! [`migrate`](crate::store::sql::migrate)) on a SQL pool, and where a SQL pool fails to lend
//! a connection within its `acquire_timeout` (sqlx then reports only "pool timed out"; the
//! runtime opens one connection with the pool's own options to find out why, see
//! [`diagnose_pool_timeout`](crate::store::sql::diagnose_pool_timeout)).

use std::fmt;

/// What made connecting fail, as far as the driver's error (and, for an unexplained I/O error,
/// a look-up of the host name) tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectCause {
    /// Nothing listens at the address: the server is down, or the host or port is wrong.
    Refused,
    /// The host name does not resolve (DNS).
    UnknownHost,
    /// The server refused the user name or password (PostgreSQL SQLSTATE 28P01 or 28000,
    /// MySQL/MariaDB error 1045 or 1698, Redis `WRONGPASS`/`NOAUTH`).
    Auth,
    /// The database named in the URL does not exist (PostgreSQL 3D000, MySQL/MariaDB 1049).
    UnknownDatabase,
    /// No answer in time: a firewall dropping packets, a wrong address, an overloaded server.
    TimedOut,
    /// The server answered, but not in the store's protocol, or closed the connection on the
    /// client's first bytes (an HTTP, SSH, PostgreSQL or other server on that port, or TLS
    /// where plain text was expected): a wrong port, most likely.
    Protocol,
    /// Connections open fine, but every one of the pool's connections stayed lent out for the
    /// whole `acquire_timeout`: raise `max_connections` or `acquire_timeout`, or look for calls
    /// that hold connections for long.
    PoolBusy,
    /// Something else (TLS, protocol, a closed pool): the source error says what.
    Other,
}

impl fmt::Display for ConnectCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConnectCause::Refused => {
                "connection refused: nothing listens at that host and port (is the server running? is the port right?)"
            }
            ConnectCause::UnknownHost => "unknown host: the host name does not resolve (DNS)",
            ConnectCause::Auth => "authentication failed: the server refused the user or password",
            ConnectCause::UnknownDatabase => "the database named in the URL does not exist",
            ConnectCause::TimedOut => "timed out: no answer from that address in time",
            ConnectCause::Protocol => {
                "the server there answered, but not in the store's protocol, or closed the connection at the handshake (is another kind of server listening on that port?)"
            }
            ConnectCause::PoolBusy => {
                "every pooled connection stayed busy for the whole acquire_timeout (raise max_connections or acquire_timeout)"
            }
            ConnectCause::Other => "connecting failed",
        })
    }
}

/// Connecting to a store failed, or a pool lent no connection in time: where to (the URL
/// without its password) and why.
#[derive(Debug)]
pub struct ConnectError {
    /// The store's address: a URL without its password (`postgres://app@db:5432/orders`), or
    /// the list of Redis nodes.
    pub target: String,
    /// The cause, as far as it could be told.
    pub cause: ConnectCause,
    /// What the driver returned (`None` for [`ConnectCause::PoolBusy`], where nothing failed).
    pub source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    /// Context added before the cause, e.g. `no connection from the pool within its
    /// acquire_timeout of 30s`; empty when connecting directly.
    pub context: String,
}

impl fmt::Display for ConnectError {
    /// `cannot connect to <target> (<context>): <cause>: <source>`; a busy pool, where
    /// connecting works, `no free connection in the pool of <target> (<context>): <cause>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.cause == ConnectCause::PoolBusy {
            write!(f, "no free connection in the pool of {}", self.target)?;
        } else {
            write!(f, "cannot connect to {}", self.target)?;
        }
        if !self.context.is_empty() {
            write!(f, " ({})", self.context)?;
        }
        write!(f, ": {}", self.cause)?;
        if let Some(source) = &self.source {
            write!(f, ": ")?;
            write_source(f, source.as_ref())?;
        }
        Ok(())
    }
}

/// A database's own error as its message and code (sqlx's PostgreSQL errors otherwise end in
/// `at line N`, a line of the server's C source); anything else as it displays, its first
/// line only (followed by ` …` when there were more).
fn write_source(
    f: &mut fmt::Formatter<'_>,
    source: &(dyn std::error::Error + 'static),
) -> fmt::Result {
    #[cfg(feature = "sqlx")]
    if let Some(sqlx::Error::Database(db)) = source.downcast_ref::<sqlx::Error>() {
        return match db.code() {
            Some(code) => write!(f, "{} (code {code})", db.message()),
            None => f.write_str(db.message()),
        };
    }
    // One line: the first of the source's text (a redis-rs parse error lists every byte it
    // did not expect, a line each).
    let text = source.to_string();
    let mut lines = text.lines();
    f.write_str(lines.next().unwrap_or_default())?;
    if lines.next().is_some() {
        f.write_str(" …")?;
    }
    Ok(())
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl ConnectError {
    /// A `ConnectError` for `source` when connecting to `target`: the cause read from its
    /// chain ([`cause_of`]); when that says [`ConnectCause::Other`] and `host` is given, a name
    /// look-up of `host` that fails makes it [`ConnectCause::UnknownHost`].
    pub async fn diagnose(
        target: impl Into<String>,
        host: Option<&str>,
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    ) -> ConnectError {
        let mut cause = cause_of(source.as_ref());
        if cause == ConnectCause::Other
            && let Some(host) = host
            && !resolves(host).await
        {
            cause = ConnectCause::UnknownHost;
        }
        ConnectError {
            target: target.into(),
            cause,
            source: Some(source),
            context: String::new(),
        }
    }
}

/// A plain TCP connection to a store's `host:port`, tried on a blocking thread while the
/// driver connects, so that a driver's time-out can tell "nothing answers at that address"
/// from "something accepts connections there but does not speak the store's protocol"
/// (another kind of server) without waiting any longer.
#[cfg(any(feature = "sqlx", feature = "redis"))]
pub(crate) struct TcpCheck {
    address: String,
    opened: tokio::task::JoinHandle<bool>,
}

#[cfg(any(feature = "sqlx", feature = "redis"))]
impl TcpCheck {
    /// Starts the check of `host:port` (a TCP connection, closed at once, within `limit`);
    /// `None` without a tokio runtime or for a Unix socket path.
    pub(crate) fn start(host: &str, port: u16, limit: std::time::Duration) -> Option<TcpCheck> {
        if host.is_empty() || host.starts_with('/') || host.contains('%') {
            return None;
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let address = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let rt = tokio::runtime::Handle::try_current().ok()?;
        let target = address.clone();
        let opened = rt.spawn_blocking(move || {
            use std::net::ToSocketAddrs as _;
            target.to_socket_addrs().is_ok_and(|mut all| {
                all.any(|a| std::net::TcpStream::connect_timeout(&a, limit).is_ok())
            })
        });
        Some(TcpCheck { address, opened })
    }

    /// The text saying why the driver's connection timed out after `limit`: with the TCP
    /// connection open, that `what` (`PostgreSQL`, `Redis`, …) never answered on it and
    /// another kind of server may listen there. A check still running counts as "did not
    /// open" (it is not waited for).
    pub(crate) async fn timed_out(
        check: Option<TcpCheck>,
        what: &str,
        limit: std::time::Duration,
    ) -> String {
        match check {
            Some(check) => {
                let opened = check.opened.is_finished() && check.opened.await.unwrap_or(false);
                if opened {
                    format!(
                        "a TCP connection to {} opens, but no {what} handshake came within {limit:?} (is a {what} server listening on that port, not another kind of server?)",
                        check.address
                    )
                } else {
                    format!(
                        "no {what} handshake from {} within {limit:?}",
                        check.address
                    )
                }
            }
            None => format!("no {what} connection opened within {limit:?}"),
        }
    }
}

/// `false` when `host` does not resolve to any address (looked up on a blocking thread when a
/// tokio runtime is running, inline otherwise). A bare socket path (`/…`) counts as resolved.
async fn resolves(host: &str) -> bool {
    use std::net::ToSocketAddrs as _;
    if host.starts_with('/') || host.is_empty() {
        return true;
    }
    let target = format!("{}:0", host.trim_start_matches('[').trim_end_matches(']'));
    let lookup = move || {
        target
            .to_socket_addrs()
            .is_ok_and(|mut a| a.next().is_some())
    };
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => rt.spawn_blocking(lookup).await.unwrap_or(true),
        Err(_) => lookup(),
    }
}

/// The cause of a connection failure, read from `e` and its sources: an I/O error's kind
/// (refused, timed out), a database's error code (credentials, unknown database), a driver's
/// protocol error (another kind of server), a redis-rs error's kind. [`ConnectCause::Other`] when none of them tells.
pub fn cause_of(e: &(dyn std::error::Error + 'static)) -> ConnectCause {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return ConnectCause::Refused,
                std::io::ErrorKind::TimedOut => return ConnectCause::TimedOut,
                // The server's answer ended in the middle of a message the driver read from
                // its first bytes (an HTTP reply read as a PostgreSQL message's length), or
                // was not the protocol at all.
                // Or the server closed the connection on the client's first bytes, as
                // PostgreSQL does with a Redis command read as a startup packet (the client's
                // next write meets a reset or a broken pipe).
                std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::InvalidData
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted => {
                    return ConnectCause::Protocol;
                }
                _ => {}
            }
        }
        #[cfg(feature = "sqlx")]
        if let Some(e) = err.downcast_ref::<sqlx::Error>() {
            match e {
                sqlx::Error::Database(db) => match db.code().as_deref() {
                    Some("28P01" | "28000" | "1045" | "1698") => return ConnectCause::Auth,
                    Some("3D000" | "1049") => return ConnectCause::UnknownDatabase,
                    _ => {}
                },
                sqlx::Error::PoolTimedOut => return ConnectCause::TimedOut,
                sqlx::Error::Protocol(_) => return ConnectCause::Protocol,
                _ => {}
            }
        }
        #[cfg(feature = "redis")]
        if let Some(e) = err.downcast_ref::<redis::RedisError>() {
            if e.kind() == redis::ErrorKind::AuthenticationFailed
                || matches!(e.code(), Some("WRONGPASS" | "NOAUTH"))
            {
                return ConnectCause::Auth;
            }
            if e.is_connection_refusal() {
                return ConnectCause::Refused;
            }
            if e.is_timeout() {
                return ConnectCause::TimedOut;
            }
            if e.kind() == redis::ErrorKind::Parse {
                return ConnectCause::Protocol;
            }
            // The server closed the connection on the client's first command (redis-rs keeps
            // the I/O error behind an `Arc`, out of reach of the downcast above).
            if e.kind() == redis::ErrorKind::Io && e.is_connection_dropped() {
                return ConnectCause::Protocol;
            }
        }
        cur = err.source();
    }
    ConnectCause::Other
}

/// `url` without its password (`postgres://app:secret@db/orders` → `postgres://app@db/orders`,
/// `redis://:secret@cache:6379` → `redis://cache:6379`), nor its `password=` and
/// `sslpassword=` query parameters (`postgres://app@db/orders?password=secret&sslmode=require`
/// → `postgres://app@db/orders?sslmode=require`); text that is not a URL with credentials is
/// returned as it is.
pub fn redact_url(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return redact_user_info(url);
    };
    // `password=` (PostgreSQL's and MySQL's connection parameter) and `sslpassword=` (the
    // client key's) are dropped from the query too.
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or_default();
            !(name.eq_ignore_ascii_case("password") || name.eq_ignore_ascii_case("sslpassword"))
        })
        .collect();
    let base = redact_user_info(base);
    if kept.is_empty() {
        base
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

/// [`redact_url`]'s first half: the password of the URL's user information.
fn redact_user_info(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let user = rest[..at].split(':').next().unwrap_or_default();
    let host = &rest[at + 1..];
    if user.is_empty() {
        return format!("{}{host}", &url[..scheme_end + 3]);
    }
    format!("{}{user}@{host}", &url[..scheme_end + 3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_drops_password_parameters() {
        assert_eq!(
            redact_url("postgres://app@db/orders?password=hunter2&sslmode=require"),
            "postgres://app@db/orders?sslmode=require"
        );
        assert_eq!(
            redact_url("mysql://root:pw@db/test?PASSWORD=x&sslpassword=y"),
            "mysql://root@db/test"
        );
        assert_eq!(
            redact_url("postgres://db/orders?sslmode=require&password="),
            "postgres://db/orders?sslmode=require"
        );
    }

    #[test]
    fn redact_url_drops_only_the_password() {
        assert_eq!(
            redact_url("postgres://app:s3cr@t@db:5432/orders?sslmode=require"),
            "postgres://app@db:5432/orders?sslmode=require"
        );
        assert_eq!(
            redact_url("redis://:pw@127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(
            redact_url("mysql://root@127.0.0.1/test"),
            "mysql://root@127.0.0.1/test"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn refused_and_timed_out_io_errors_are_named() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(cause_of(&refused), ConnectCause::Refused);
        let timed_out = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert_eq!(cause_of(&timed_out), ConnectCause::TimedOut);
        let other = std::io::Error::other("tls handshake");
        assert_eq!(cause_of(&other), ConnectCause::Other);
        for kind in [
            std::io::ErrorKind::UnexpectedEof,
            std::io::ErrorKind::BrokenPipe,
            std::io::ErrorKind::ConnectionReset,
        ] {
            let cut = std::io::Error::from(kind);
            assert_eq!(cause_of(&cut), ConnectCause::Protocol, "{kind:?}");
        }
    }

    #[tokio::test]
    async fn an_unresolvable_host_is_unknown_host() {
        // `.invalid` never resolves (RFC 2606).
        let e = ConnectError::diagnose(
            "postgres://app@db.invalid/orders",
            Some("db.invalid"),
            Box::new(std::io::Error::other("failed to look up address")),
        )
        .await;
        assert_eq!(e.cause, ConnectCause::UnknownHost);
        assert!(
            e.to_string()
                .starts_with("cannot connect to postgres://app@db.invalid/orders: unknown host")
        );
    }
}
