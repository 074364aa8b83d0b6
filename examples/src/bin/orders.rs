//! The orders demo: a storm of concurrent duplicate and retried requests through every
//! idempotent operation, then a per-operation summary whose `effects` come from the
//! database's ledger rows.
//!
//! ```text
//! cargo run -p idempotent-examples --bin orders                       # SQLite file, memory store
//! cargo run -p idempotent-examples --bin orders -- --database-url postgres://postgres@127.0.0.1/test
//! cargo run -p idempotent-examples --bin orders -- --database-url mysql://root@127.0.0.1/test --json
//! cargo run -p idempotent-examples --bin orders -- --redis-url redis://127.0.0.1:6379
//! ```
//! Exits 1 when any operation's effects differ from its keys or it saw an error.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use idempotent_examples::report::{OperationReport, Outcome, Report, quantile_ms};
use idempotent_examples::service::{self, Demo, Kv, OPERATIONS};
use idempotent_examples::storm;
use idempotent_runtime::MemoryStore;
use sqlx::Connection as _;

/// Order-service demo for #[idempotent]: drives concurrent duplicates through every strategy.
// The doc above is also clap's `--help` text, so `#[idempotent]` stays as written there.
#[allow(rustdoc::broken_intra_doc_links)]
#[derive(Debug, Parser)]
#[command(name = "orders")]
struct Args {
    /// Database URL (postgres://…, mysql://…, sqlite://path). Default: a fresh SQLite file in
    /// the system temp directory.
    #[arg(long)]
    database_url: Option<String>,
    /// Redis for the lock- and token-guarded operations (`redis://127.0.0.1:6379`; several
    /// comma-separated node URLs select a Redis Cluster). Default: the in-process memory store.
    #[arg(long)]
    redis_url: Option<String>,
    /// Requests per operation, at least 7 (rounded down to whole keys of 7 requests each).
    #[arg(long, default_value_t = 1400, value_parser = at_least::<7>)]
    requests: usize,
    /// Requests in flight at once, at least 1.
    #[arg(long, default_value_t = 32, value_parser = at_least::<1>)]
    concurrency: usize,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Parses a count of at least `MIN`.
fn at_least<const MIN: usize>(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|e| format!("`{s}` is not a count: {e}"))?;
    if n < MIN {
        return Err(format!("must be at least {MIN}"));
    }
    Ok(n)
}

fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("run{:x}{:x}", nanos, std::process::id())
}

/// Hides a password in a URL for printing.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

async fn drive<D: Demo>(demo: &D, args: &Args, database: String) -> Result<Report, sqlx::Error> {
    let mut operations = Vec::new();
    demo.prepare((args.requests / storm::REQUESTS_PER_KEY).max(1))
        .await?;
    for (i, op) in OPERATIONS.iter().enumerate() {
        let result = if op.name == "settle_period" {
            storm::workers(
                args.requests,
                service::WORKERS_PER_PERIOD,
                args.concurrency,
                |c| demo.call(i, c),
            )
            .await
        } else {
            storm::run(args.requests, args.concurrency, |c| demo.call(i, c)).await
        };
        let count = |o: Outcome| result.requests.iter().filter(|(x, _)| *x == o).count() as u64;
        let mut lat: Vec<f64> = result
            .requests
            .iter()
            .map(|(_, d)| d.as_secs_f64() * 1000.0)
            .collect();
        operations.push(OperationReport {
            operation: op.name.into(),
            strategy: op.strategy.into(),
            backend: if op.memory && op.name != "reserve_stock" {
                demo.kv_backend().into()
            } else if op.memory {
                "memory".into()
            } else {
                demo.backend().into()
            },
            requests: result.requests.len() as u64,
            keys: result.keys as u64,
            effects: demo.effects(op.name).await?,
            replays: count(Outcome::Replayed),
            duplicates: count(Outcome::Duplicate),
            in_progress: result.in_progress,
            mismatches: count(Outcome::Mismatch),
            errors: count(Outcome::Error),
            p50_ms: quantile_ms(&mut lat, 0.50),
            p99_ms: quantile_ms(&mut lat, 0.99),
        });
    }
    let ok = operations
        .iter()
        .all(|o| o.effects == o.keys && o.errors == 0);
    Ok(Report {
        database,
        kv: demo.kv_backend().to_owned(),
        concurrency: args.concurrency,
        ok,
        operations,
    })
}

async fn main_inner(args: Args) -> Result<Report, Box<dyn std::error::Error>> {
    // Two operations sharing a name would share records: fail before the first request.
    idempotent_runtime::check_operation_names()?;
    let run = run_id();
    let pool_size = u32::try_from(args.concurrency.clamp(2, 64)).unwrap_or(32);
    let store = MemoryStore::new();
    let kv = match &args.redis_url {
        None => Kv::Memory(MemoryStore::new()),
        Some(urls) if urls.contains(',') => {
            let nodes: Vec<&str> = urls.split(',').map(str::trim).collect();
            Kv::Redis(
                idempotent_runtime::RedisStore::connect_cluster(&nodes)
                    .await
                    .map_err(|e| {
                        format!(
                            "cannot connect to the Redis Cluster --redis-url {}: {e}",
                            redact(urls)
                        )
                    })?,
            )
        }
        Some(url) => Kv::Redis(idempotent_runtime::RedisStore::connect(url).await.map_err(
            |e| {
                // The expected form only helps when the URL is not a Redis URL at all.
                let hint = if url.starts_with("redis://") || url.starts_with("rediss://") {
                    ""
                } else {
                    " (expected redis://host:port)"
                };
                format!("cannot connect to --redis-url {}{hint}: {e}", redact(url))
            },
        )?),
    };
    let tokens = std::sync::Mutex::default();
    let (url, _tmp) = match &args.database_url {
        Some(u) => (u.clone(), None),
        None => {
            let dir = tempfile::tempdir()?;
            let path = dir.path().join("orders-demo.db");
            (format!("sqlite://{}", path.display()), Some(dir))
        }
    };
    let shown = redact(&url);
    // Creates the demo's tables in `db`, then drives the storm through the service on it.
    macro_rules! run_on {
        ($db:expr, $backend:ident) => {{
            let db = $db;
            idempotent_runtime::migrate(&db)
                .await
                .map_err(|e| format!("creating the idempotency-record table on {shown}: {e}"))?;
            service::$backend::create_tables(&db)
                .await
                .map_err(|e| format!("creating the demo's tables on {shown}: {e}"))?;
            let demo = service::$backend::Orders {
                db,
                store,
                run,
                kv,
                tokens,
            };
            Ok(drive(&demo, &args, shown).await?)
        }};
    }
    // One plain connection first: a refused port or a bad password is reported at once, as
    // the server said it, instead of as a pool timeout after 10 s.
    let probe = |e: sqlx::Error| format!("cannot connect to {shown}: {e}");
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        sqlx::PgConnection::connect(&url)
            .await
            .map_err(probe)?
            .close()
            .await?;
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(pool_size)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await
            .map_err(|e| format!("cannot connect to {shown}: {e}"))?;
        run_on!(db, postgres)
    } else if url.starts_with("mysql:") || url.starts_with("mariadb:") {
        let url = url.replacen("mariadb:", "mysql:", 1);
        sqlx::MySqlConnection::connect(&url)
            .await
            .map_err(probe)?
            .close()
            .await?;
        let db = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(pool_size)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await
            .map_err(|e| format!("cannot connect to {shown}: {e}"))?;
        run_on!(db, mysql)
    } else if url.starts_with("sqlite:") {
        let opts: sqlx::sqlite::SqliteConnectOptions = url.parse()?;
        let opts = opts
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(30));
        let db = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await
            .map_err(|e| format!("cannot open the SQLite database {shown}: {e}"))?;
        run_on!(db, sqlite)
    } else {
        Err(
            format!("unsupported --database-url `{shown}`: use postgres://, mysql:// or sqlite://")
                .into(),
        )
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // The framework's spans and decision events on stderr when asked: RUST_LOG=idempotent=info.
    let log =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into());
    tracing_subscriber::fmt()
        .with_env_filter(log)
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let json = args.json;
    match main_inner(args).await {
        Ok(report) => {
            let out = if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => s + "\n",
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                format!(
                    "{}{}\n",
                    report.table(),
                    if report.ok() {
                        "OK: every operation applied exactly one effect per key, with no errors."
                    } else {
                        "FAILED: some operation's effects differ from its keys, or it saw errors."
                    }
                )
            };
            // A reader that went away (`orders | head`) is no failure of the run: its exit code
            // still says whether every key had one effect. `println!` would panic instead.
            let mut stdout = std::io::stdout().lock();
            if let Err(e) = stdout
                .write_all(out.as_bytes())
                .and_then(|()| stdout.flush())
                && e.kind() != std::io::ErrorKind::BrokenPipe
            {
                eprintln!("error: cannot write the report: {e}");
                return ExitCode::FAILURE;
            }
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
