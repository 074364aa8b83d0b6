//! The examples' first connection to a `--database-url`: one plain connection, bounded in
//! time, so a refused port, an unknown host, a bad password or a port where another kind of
//! server listens is reported at once with its cause, instead of as a pool time-out (or, for a
//! server that never answers the handshake, not at all).

use std::time::Duration;

use idempotent_runtime::ConnectError;
use idempotent_runtime::connect::redact_url;
use sqlx::Connection;

/// How long the first connection may take before the examples give up on the server.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The host of a database URL (`postgres://user:pw@host:5432/db` → `host`), for telling an
/// unknown host from other failures; `None` when there is none.
pub fn host_of(url: &str) -> Option<String> {
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let host_port = &authority[authority.rfind('@').map_or(0, |at| at + 1)..];
    let host = match host_port.strip_prefix('[') {
        Some(v6) => &v6[..v6.find(']')?],
        None => host_port.split(':').next()?,
    };
    (!host.is_empty()).then(|| host.to_owned())
}

/// The one line saying why connecting to the database at `url` failed: its URL without the
/// password and the cause (refused, unknown host, authentication, unknown database).
pub async fn connect_failed(url: &str, e: sqlx::Error) -> String {
    ConnectError::diagnose(redact_url(url), host_of(url).as_deref(), Box::new(e))
        .await
        .to_string()
}

/// Opens and closes one connection to the PostgreSQL or MySQL/MariaDB server of `url`
/// (`mariadb:` is read as `mysql:`) within [`PROBE_TIMEOUT`]; other schemes are left to their
/// caller. Errors: one line naming the URL without its password and the cause; for a server
/// that does not answer in time, that it may be another kind of server.
pub async fn probe(url: &str) -> Result<(), String> {
    let url = url.replacen("mariadb:", "mysql:", 1);
    let (what, attempt) = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let u = url.clone();
        let f: futures_util::future::BoxFuture<'_, Result<(), sqlx::Error>> =
            Box::pin(async move { sqlx::PgConnection::connect(&u).await?.close().await });
        ("PostgreSQL", f)
    } else if url.starts_with("mysql:") {
        let u = url.clone();
        let f: futures_util::future::BoxFuture<'_, Result<(), sqlx::Error>> =
            Box::pin(async move { sqlx::MySqlConnection::connect(&u).await?.close().await });
        ("MySQL/MariaDB", f)
    } else {
        return Ok(());
    };
    match tokio::time::timeout(PROBE_TIMEOUT, attempt).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(connect_failed(&url, e).await),
        Err(_) => Err(format!(
            "{}: no {what} handshake within {} s (is a {what} server listening on that port, not another kind of server?)",
            redact_url(&url),
            PROBE_TIMEOUT.as_secs()
        )),
    }
}
