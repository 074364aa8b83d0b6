//! The examples' first connection to a `--database-url` or `--redis-url`, through the
//! runtime: [`idempotent_runtime::check_connection`] on a lazily connected pool (one bounded
//! wait; the cause named: refused, unknown host, credentials, unknown database, no handshake
//! from another kind of server), and [`connect_message`] to say a connect error in one line.

use std::time::Duration;

use idempotent_runtime::connect::redact_url;
use idempotent_runtime::{ConnectError, Error};

/// How long the first connection may take before the examples give up on the server (the
/// pools' `acquire_timeout`).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The one line of a connect error: the runtime's [`ConnectError`] as it displays (`cannot
/// connect to <URL without password>: <cause>: <driver's error>`) when `e` holds one, else `e`
/// as it displays.
pub fn connect_message(e: &Error) -> String {
    if let Error::Backend(source) = e
        && let Some(c) = source.downcast_ref::<ConnectError>()
    {
        return c.to_string();
    }
    e.to_string()
}

/// Checks that the PostgreSQL or MySQL/MariaDB server of `url` (`mariadb:` is read as
/// `mysql:`) takes a connection within [`PROBE_TIMEOUT`] (for a binary that then opens its
/// pool its own way, as `idempotent-admin` does), through
/// [`idempotent_runtime::check_connection`] on a one-connection lazy pool; other schemes are
/// left to their caller. Errors: one line, [`connect_message`]'s, or that `url` does not parse.
pub async fn probe(url: &str) -> Result<(), String> {
    let url = url.replacen("mariadb:", "mysql:", 1);
    let result = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(PROBE_TIMEOUT)
            .connect_lazy(&url)
            .map_err(|e| not_a_url(&url, &e))?;
        idempotent_runtime::check_connection(&pool).await
    } else if url.starts_with("mysql:") {
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(PROBE_TIMEOUT)
            .connect_lazy(&url)
            .map_err(|e| not_a_url(&url, &e))?;
        idempotent_runtime::check_connection(&pool).await
    } else {
        return Ok(());
    };
    result.map_err(|e| connect_message(&e))
}

/// `url` (without its password) does not parse as its scheme's URL.
pub fn not_a_url(url: &str, e: &sqlx::Error) -> String {
    // sqlx 0.9 wraps some option errors twice ("error with configuration: error with
    // configuration: unknown value …"): said once.
    const WRAPPER: &str = "error with configuration: ";
    let mut text = e.to_string();
    while text.starts_with(WRAPPER) && text[WRAPPER.len()..].starts_with(WRAPPER) {
        text.drain(..WRAPPER.len());
    }
    format!("--database-url {} does not parse: {text}", redact_url(url))
}

/// Connects to the Redis of a `--redis-url` (several comma-separated URLs: a Redis Cluster's
/// nodes), as every example binary does. Errors: one line in the shape of a `--database-url`
/// error — a URL of another scheme refused by name; `--redis-url: cannot connect to <URL
/// without password>: <cause>` (the runtime's [`ConnectError`]); or `--redis-url <URL>:
/// <error>` for a server that answered but cannot be used (too old, an evicting policy).
pub async fn redis(urls: &str) -> Result<idempotent_runtime::RedisStore, String> {
    let nodes = redis_nodes(urls)?;
    let store = if nodes.len() > 1 {
        idempotent_runtime::RedisStore::connect_cluster(&nodes).await
    } else {
        idempotent_runtime::RedisStore::connect(nodes[0]).await
    };
    store.map_err(|e| {
        let line = connect_message(&e);
        let line = if line.starts_with("cannot connect to ") {
            format!("--redis-url: {line}")
        } else {
            format!("--redis-url {}: {line}", redact_nodes(&nodes))
        };
        // redis-rs's answer from a standalone server asked for its cluster slots.
        if nodes.len() > 1 && line.contains("cluster support disabled") {
            format!(
                "{line} (several comma-separated --redis-url nodes select Redis Cluster mode; for one standalone server give one URL)"
            )
        } else {
            line
        }
    })
}

/// The node URLs of a `--redis-url` (comma-separated; one for a standalone server), checked
/// before any connection: each non-empty and `redis://` (`rediss://` is refused: the
/// runtime's Redis client is built without TLS). Errors: one line naming the problem — an
/// empty value, an empty node (an extra comma) by its position, `rediss://`, or a node of
/// another scheme (its URL without password).
pub fn redis_nodes(urls: &str) -> Result<Vec<&str>, String> {
    let nodes: Vec<&str> = urls.split(',').map(str::trim).collect();
    if nodes.iter().all(|n| n.is_empty()) {
        return Err("--redis-url is empty: give redis://host:port (or several comma-separated node URLs for a Redis Cluster)".into());
    }
    if let Some(i) = nodes.iter().position(|n| n.is_empty()) {
        return Err(format!(
            "--redis-url `{}` has an empty node URL (node {} of {}): remove the extra comma",
            redact_nodes(&nodes),
            i + 1,
            nodes.len()
        ));
    }
    if let Some(tls) = nodes.iter().find(|u| u.starts_with("rediss://")) {
        return Err(format!(
            "unsupported --redis-url `{}`: rediss:// (TLS) is not built in (the runtime's Redis client is compiled without TLS); use redis://host:port",
            redact_url(tls)
        ));
    }
    if let Some(bad) = nodes.iter().find(|u| !u.starts_with("redis://")) {
        return Err(format!(
            "unsupported --redis-url `{}`: use redis://host:port (comma-separated node URLs select a Redis Cluster)",
            redact_url(bad)
        ));
    }
    // What redis-rs itself refuses (a port out of range, a database that is not a number), as a
    // bad `--database-url` is: before anything connects.
    for node in &nodes {
        if let Err(e) = ::redis::Client::open(*node) {
            return Err(format!(
                "--redis-url {} does not parse: {}",
                redact_url(node),
                // redis-rs appends its error kind (" - InvalidClientConfig"): the reason alone.
                e.to_string().split(" - ").next().unwrap_or_default()
            ));
        }
    }
    Ok(nodes)
}

/// A list of node URLs, each without its password (one `redact_url` over the whole list
/// would miss a password after the first node's path), joined by commas.
fn redact_nodes(nodes: &[&str]) -> String {
    nodes
        .iter()
        .map(|n| redact_url(n))
        .collect::<Vec<_>>()
        .join(",")
}

/// The usage check every binary runs on its URL flags before anything connects:
/// `--database-url` through [`database_scheme`], `--redis-url` through [`redis_nodes`].
/// Errors: the first problem, in one line (the binaries print it and exit 2).
pub fn check_urls(database_url: Option<&str>, redis_url: Option<&str>) -> Result<(), String> {
    if let Some(url) = database_url {
        database_scheme(url)?;
    }
    if let Some(urls) = redis_url {
        redis_nodes(urls)?;
    }
    Ok(())
}

/// `url` with its scheme in lower case (`POSTGRES://app@db/orders` → `postgres://app@db/orders`):
/// URL schemes are case-insensitive (RFC 3986, section 3.1), while the binaries pick a backend
/// by comparing schemes. A `--redis-url` list has each comma-separated node's scheme lowered.
/// Text without a scheme is returned as it is. The binaries' `--database-url` and
/// `--redis-url` take their value through it (a clap `value_parser`, which never fails here).
pub fn lowercase_scheme(url: &str) -> Result<String, std::convert::Infallible> {
    fn one(url: &str) -> String {
        let scheme_len = url
            .find(':')
            .filter(|&n| {
                n > 0
                    && url[..n].starts_with(|c: char| c.is_ascii_alphabetic())
                    && url[..n]
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
            })
            .unwrap_or(0);
        format!(
            "{}{}",
            url[..scheme_len].to_ascii_lowercase(),
            &url[scheme_len..]
        )
    }
    // Only a list of Redis nodes is split: a database URL may hold commas in its query.
    if url.contains(',') && one(url).starts_with("redis") {
        return Ok(url.split(',').map(one).collect::<Vec<_>>().join(","));
    }
    Ok(one(url))
}

/// Checks a `--database-url` before any connection: its scheme (`postgres:`/`postgresql:`,
/// `mysql:`/`mariadb:` or `sqlite:`), that sqlx parses it as that database's options (a
/// port out of range, an unknown `sslmode`), and on MySQL/MariaDB that it names a database.
/// Errors: one line naming the URL (without password) and the problem — an empty URL, the schemes taken,
/// the missing database — or [`not_a_url`]'s.
pub fn database_scheme(url: &str) -> Result<(), String> {
    if url.trim().is_empty() {
        return Err(
            "--database-url is empty: give a postgres://, mysql:// (or mariadb://) or sqlite:// URL"
                .into(),
        );
    }
    let parsed = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        url.parse::<sqlx::postgres::PgConnectOptions>().map(drop)
    } else if url.starts_with("mysql:") || url.starts_with("mariadb:") {
        let options = url
            .replacen("mariadb:", "mysql:", 1)
            .parse::<sqlx::mysql::MySqlConnectOptions>()
            .map_err(|e| not_a_url(url, &e))?;
        // MySQL/MariaDB has no default database: every statement would fail with error 1046.
        if options.get_database().is_none() {
            return Err(format!(
                "--database-url `{}` names no database: add one, e.g. mysql://user@host:3306/orders",
                redact_url(url)
            ));
        }
        Ok(())
    } else if url.starts_with("sqlite:") {
        url.parse::<sqlx::sqlite::SqliteConnectOptions>().map(drop)
    } else {
        return Err(format!(
            "unsupported --database-url `{}`: use postgres://, mysql:// (or mariadb://) or sqlite://",
            redact_url(url)
        ));
    };
    parsed.map_err(|e| not_a_url(url, &e))
}

#[cfg(test)]
mod tests {
    use super::{database_scheme, lowercase_scheme};

    /// An empty `--database-url` is named empty, not "unsupported `` " (found by a new user).
    #[test]
    fn an_empty_database_url_is_named_empty() {
        for url in ["", "  "] {
            let e = database_scheme(url).expect_err("empty");
            assert!(e.starts_with("--database-url is empty"), "{e}");
        }
    }

    #[test]
    fn a_scheme_is_lowered_and_nothing_else() {
        let lowered = |u: &str| lowercase_scheme(u).unwrap_or_else(|e| match e {});
        assert_eq!(
            lowered("POSTGRES://App:PW@DB:5432/Orders?sslmode=require"),
            "postgres://App:PW@DB:5432/Orders?sslmode=require"
        );
        assert_eq!(lowered("MariaDB://root@h/Test"), "mariadb://root@h/Test");
        assert_eq!(lowered("SQLite:/Tmp/Demo.db"), "sqlite:/Tmp/Demo.db");
        assert_eq!(
            lowered("REDIS://A:6379,Redis://B:6379"),
            "redis://A:6379,redis://B:6379"
        );
        // A database URL's commas are not a node list.
        assert_eq!(
            lowered("POSTGRES://db/x?options=A,B"),
            "postgres://db/x?options=A,B"
        );
        // No scheme: as it is.
        assert_eq!(lowered("/Tmp/Demo.db"), "/Tmp/Demo.db");
        assert_eq!(lowered(""), "");
        assert_eq!(lowered(":Memory:"), ":Memory:");
    }
}
