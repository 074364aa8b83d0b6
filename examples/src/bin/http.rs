//! The HTTP orders API (`idempotent_examples::http`): axum with the `Idempotency-Key` layer on
//! some routes and an `#[idempotent]` function behind another.
//!
//! ```text
//! cargo run -p idempotent-examples --bin http                         # SQLite file, claims in it
//! cargo run -p idempotent-examples --bin http -- --database-url postgres://postgres@127.0.0.1/test
//! cargo run -p idempotent-examples --bin http -- --redis-url redis://127.0.0.1:6379   # claims in Redis
//! cargo run -p idempotent-examples --bin http -- --memory-store --listen 127.0.0.1:8080
//! curl -i -X POST localhost:8080/orders -H 'x-customer: c1' -H 'Idempotency-Key: "k1"' \
//!      -H 'content-type: application/json' -d '{"amount_cents":500}'
//! ```

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use idempotent_examples::http::{App, Db, router};
use idempotent_runtime::{ClaimStore, MemoryStore};

/// HTTP orders API made idempotent with the Idempotency-Key header.
#[derive(Debug, Parser)]
#[command(name = "http")]
struct Args {
    /// Database of the ledger (postgres://…, mysql://…, sqlite://path). Default: a fresh
    /// SQLite file in the system temp directory. It also keeps the idempotency records unless
    /// `--redis-url` or `--memory-store` is given.
    #[arg(long, value_parser = idempotent_examples::connect::lowercase_scheme)]
    database_url: Option<String>,
    /// Keep the idempotency records in Redis (`redis://127.0.0.1:6379`; several comma-separated
    /// node URLs select a Redis Cluster).
    #[arg(long, conflicts_with = "memory_store", value_parser = idempotent_examples::connect::lowercase_scheme)]
    redis_url: Option<String>,
    /// Keep the idempotency records in the in-process memory store.
    #[arg(long)]
    memory_store: bool,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
}

async fn serve<K: ClaimStore>(
    db: Db,
    store: K,
    listen: &str,
    temporary: Option<&std::path::Path>,
) -> Result<(), Box<dyn std::error::Error>> {
    db.create_tables().await?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    // Ctrl-C or SIGTERM: stop taking requests, finish those in flight, return (so that the
    // temporary SQLite directory is deleted). Listened for from here, before the lines below
    // tell a supervisor the server is up: a signal right after them was the default action
    // (death, the directory left) while the handler was not installed yet.
    let mut interrupted = Box::pin(idempotent_examples::signal::interruption());
    if let std::task::Poll::Ready(r) = futures_util::poll!(interrupted.as_mut()) {
        r?;
        return Ok(());
    }
    eprintln!(
        "listening on http://{} (ledger: {}, idempotency records: {})",
        listener.local_addr()?,
        db_name(&db),
        store.backend_name()
    );
    if let Some(dir) = temporary {
        eprintln!(
            "temporary SQLite file {} (deleted when the server stops on Ctrl-C or SIGTERM)",
            dir.join("http-demo.db").display()
        );
    }
    axum::serve(
        listener,
        router(App {
            db,
            store,
            hook: None,
        }),
    )
    .with_graceful_shutdown(async move {
        let _ = interrupted.await;
    })
    .await?;
    if let Some((signal, _)) = idempotent_examples::signal::interrupted_by() {
        eprintln!("stopped ({signal})");
    }
    Ok(())
}

fn db_name(db: &Db) -> &'static str {
    match db {
        Db::Postgres(_) => "postgres",
        Db::MySql(_) => "mysql",
        Db::Sqlite(_) => "sqlite",
    }
}

async fn main_inner(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let (url, tmp) = match &args.database_url {
        // Scheme, syntax and (MySQL) database checked in `main`, before any connection.
        Some(u) => (u.clone(), None),
        None => {
            let dir = tempfile::tempdir()?;
            let path = dir.path().join("http-demo.db");
            (format!("sqlite://{}", path.display()), Some(dir))
        }
    };
    let temporary = tmp.as_ref().map(|d| d.path());
    use idempotent_examples::connect::{PROBE_TIMEOUT, connect_message, not_a_url};
    // The first connection through the runtime (`check_connection`): an unreachable server
    // is named with its cause within the pool's acquire_timeout.
    let db = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(PROBE_TIMEOUT)
            .connect_lazy(&url)
            .map_err(|e| not_a_url(&url, &e))?;
        idempotent_runtime::check_connection(&pool)
            .await
            .map_err(|e| format!("--database-url: {}", connect_message(&e)))?;
        Db::Postgres(pool)
    } else if url.starts_with("mysql:") || url.starts_with("mariadb:") {
        let url = url.replacen("mariadb:", "mysql:", 1);
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .acquire_timeout(PROBE_TIMEOUT)
            .connect_lazy(&url)
            .map_err(|e| not_a_url(&url, &e))?;
        idempotent_runtime::check_connection(&pool)
            .await
            .map_err(|e| format!("--database-url: {}", connect_message(&e)))?;
        Db::MySql(pool)
    } else if url.starts_with("sqlite:") {
        let opts: sqlx::sqlite::SqliteConnectOptions = url.parse()?;
        let opts = opts
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(30));
        Db::Sqlite(
            sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(8)
                .connect_with(opts)
                .await?,
        )
    } else {
        // Not reached: `database_scheme` refused every other scheme.
        return Err("unsupported --database-url".into());
    };
    if args.memory_store {
        return serve(db, MemoryStore::new(), &args.listen, temporary).await;
    }
    if let Some(urls) = &args.redis_url {
        let store = idempotent_examples::connect::redis(urls).await?;
        return serve(db, store, &args.listen, temporary).await;
    }
    match db.clone() {
        Db::Postgres(pool) => {
            idempotent_runtime::migrate(&pool).await?;
            serve(db, pool, &args.listen, temporary).await
        }
        Db::MySql(pool) => {
            idempotent_runtime::migrate(&pool).await?;
            serve(db, pool, &args.listen, temporary).await
        }
        Db::Sqlite(pool) => {
            idempotent_runtime::migrate(&pool).await?;
            serve(db, pool, &args.listen, temporary).await
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // A malformed URL is a usage error, as clap's own (and as in the `orders` demo): one line,
    // exit 2, before anything is created or connects.
    if let Err(e) = idempotent_examples::connect::check_urls(
        args.database_url.as_deref(),
        args.redis_url.as_deref(),
    ) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    match main_inner(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
