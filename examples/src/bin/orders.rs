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
//! Exits 1 when any operation's effects differ from its keys or it saw an error, 130 when
//! interrupted by Ctrl-C and 143 by SIGTERM (the storm stops, the temporary SQLite file is
//! deleted and, with `--cleanup`, the tables dropped, and a line says so). Progress, the
//! tables it created and errors go to stderr, the summary to stdout.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use idempotent_examples::connect::{PROBE_TIMEOUT, connect_message, not_a_url};
use idempotent_examples::report::{OperationReport, Outcome, Report, quantile_ms};
use idempotent_examples::service::{self, DEMO_TABLES, Demo, Kv, OPERATIONS, RECORDS_TABLE};
use idempotent_examples::storm;
use idempotent_runtime::Error as IdemError;
use idempotent_runtime::MemoryStore;
use idempotent_runtime::connect::redact_url;

/// Order-service demo for #[idempotent]: drives concurrent duplicates through every strategy.
// The doc above is also clap's `--help` text, so `#[idempotent]` stays as written there.
#[allow(rustdoc::broken_intra_doc_links)]
#[derive(Debug, Parser)]
#[command(name = "orders")]
struct Args {
    /// Database URL (postgres://…, mysql://…, sqlite://path). Default: a fresh SQLite file in
    /// the system temp directory.
    #[arg(long, value_parser = idempotent_examples::connect::lowercase_scheme)]
    database_url: Option<String>,
    /// Redis for every operation that does not need the database: `reserve_stock`
    /// (dedup_table, claim mode), `settle_period` (distributed_lock) and `checkout` (token)
    /// (`redis://127.0.0.1:6379`; several comma-separated node URLs select a Redis Cluster).
    /// Default: the in-process memory store.
    #[arg(long, value_parser = idempotent_examples::connect::lowercase_scheme)]
    redis_url: Option<String>,
    /// Requests per operation, 7 to 100000 (rounded down to whole keys of 7 requests each;
    /// `settle_period` sends 8 per key).
    #[arg(long, default_value_t = 1400, value_parser = count_in::<7, MAX_REQUESTS>)]
    requests: usize,
    /// Requests in flight at once, 1 to 1024.
    #[arg(long, default_value_t = 32, value_parser = count_in::<1, 1024>)]
    concurrency: usize,
    /// Print the summary as one JSON object (progress still goes to stderr).
    #[arg(long)]
    json: bool,
    /// Drop the tables the demo created (`demo_*`, and `idempotency_records` when it did not
    /// exist before) at the end. Without it they stay, and the demo says so.
    #[arg(long)]
    cleanup: bool,
}

/// The most requests per operation: the storm keeps every request's latency in memory and
/// runs the ten operations in turn, so 100,000 each already takes minutes.
const MAX_REQUESTS: usize = 100_000;

/// Parses a count from `MIN` to `MAX`.
fn count_in<const MIN: usize, const MAX: usize>(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|e| format!("`{s}` is not a count: {e}"))?;
    if n < MIN {
        return Err(format!("must be at least {MIN}"));
    }
    if n > MAX {
        return Err(format!("must be at most {MAX}"));
    }
    Ok(n)
}

/// `Err` with a message when `url` names an in-memory SQLite database: each connection of a
/// pool would get a database of its own (tables created on one are missing on the others).
fn refuse_sqlite_memory(url: &str) -> Result<(), String> {
    let lower = url.to_ascii_lowercase();
    let Some(rest) = lower.strip_prefix("sqlite:") else {
        return Ok(());
    };
    // `sqlite:` and `sqlite://` name no file: SQLite gives each connection a private temporary
    // database, as it gives an in-memory one.
    let path = rest.trim_start_matches("//");
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() {
        return Err(format!(
            "--database-url `{url}` names no SQLite file: each connection of the demo's pool would get a private temporary database of its own; leave --database-url out (a fresh SQLite file in the temp directory, deleted at exit) or give a file, e.g. sqlite://orders.db"
        ));
    }
    if lower.contains(":memory:") || lower.contains("mode=memory") {
        return Err(format!(
            "--database-url `{url}`: an in-memory SQLite database belongs to one connection, and the demo runs a pool of them (each would see a database of its own); leave --database-url out (a fresh SQLite file in the temp directory, deleted at exit) or give a file, e.g. sqlite://orders.db"
        ));
    }
    Ok(())
}

fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("run{:x}{:x}", nanos, std::process::id())
}

/// `url` without its password, for printing.
fn redact(url: &str) -> String {
    redact_url(url)
}

/// The one line saying why `--database-url` failed (the runtime's `ConnectError`: the URL
/// without its password and the cause).
fn database_failed(e: &IdemError) -> String {
    format!("--database-url: {}", connect_message(e))
}

/// `n` and `noun`, plural unless `n` is 1: "1 key", "7 keys".
fn counted(n: impl Into<u128>, noun: &str) -> String {
    let n = n.into();
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// What the storm sends, said once before it starts: the requests per operation, and how
/// `--requests` was rounded to whole keys.
fn storm_plan(requests: usize) -> String {
    let per_key = storm::REQUESTS_PER_KEY;
    let keys = (requests / per_key).max(1);
    let workers = service::WORKERS_PER_PERIOD;
    let periods = (requests / workers).max(1);
    let mut line = format!(
        "storm: {} requests per operation = {} x {per_key} (a first call, 3 concurrent duplicates, 1 with another payload, 2 retries); settle_period: {} = {} x {workers} workers",
        keys * per_key,
        counted(keys as u64, "key"),
        periods * workers,
        counted(periods as u64, "period"),
    );
    if keys * per_key != requests {
        line.push_str(&format!(
            "; --requests {requests} rounded down to whole keys"
        ));
    }
    line
}

/// At most this many distinct error texts are printed per operation (each with its count).
const ERROR_LINES: usize = 5;

async fn drive<D: Demo>(demo: &D, args: &Args, database: String) -> Result<Report, sqlx::Error> {
    let mut operations = Vec::new();
    demo.prepare((args.requests / storm::REQUESTS_PER_KEY).max(1))
        .await?;
    eprintln!("{}", storm_plan(args.requests));
    for (i, op) in OPERATIONS.iter().enumerate() {
        let started = std::time::Instant::now();
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
        let backend = if op.memory {
            demo.kv_backend()
        } else {
            demo.backend()
        };
        let line = OperationReport {
            operation: op.name.into(),
            strategy: op.strategy.into(),
            backend: backend.into(),
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
        };
        eprintln!(
            "[{:>2}/{}] {:<20} {:<20} on {:<13} {}, {}: {}, {} ({:.1} s){}",
            i + 1,
            OPERATIONS.len(),
            op.name,
            op.strategy,
            backend,
            counted(line.requests, "request"),
            counted(line.keys, "key"),
            counted(line.effects, "effect"),
            counted(line.errors, "error"),
            started.elapsed().as_secs_f64(),
            if line.effects == line.keys && line.errors == 0 {
                ""
            } else {
                "  <- FAILED"
            }
        );
        let mut errors: Vec<(&String, &u64)> = result.errors.iter().collect();
        errors.sort_by(|a, b| b.1.cmp(a.1));
        for (text, n) in errors.iter().take(ERROR_LINES) {
            eprintln!("        {} on {backend}: {n} x {text}", op.name);
        }
        if errors.len() > ERROR_LINES {
            eprintln!(
                "        {}: {} more distinct errors",
                op.name,
                errors.len() - ERROR_LINES
            );
        }
        operations.push(line);
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

/// Connects to the Redis of `--redis-url` ([`idempotent_examples::connect::redis`]).
async fn connect_kv(urls: &str) -> Result<Kv, String> {
    idempotent_examples::connect::redis(urls)
        .await
        .map(Kv::Redis)
}

/// Says which tables the run uses and whether they stay.
fn tables_note(shown: &str, records_existed: bool, temporary: bool, cleanup: bool) -> String {
    let records = if records_existed {
        format!("{RECORDS_TABLE} (existed already, kept)")
    } else {
        format!("{RECORDS_TABLE} (created now)")
    };
    let fate = if temporary {
        "in a temporary SQLite file, deleted at exit"
    } else if cleanup {
        "dropped at the end (--cleanup)"
    } else {
        "they stay after the run (each run's rows carry its own run id); --cleanup drops them"
    };
    format!(
        "tables on {shown}: {records}, {}: {fate}",
        DEMO_TABLES.join(", ")
    )
}

/// How a run ended (its errors aside).
enum Ended {
    /// The storm ran to the end: its report.
    Report(Report),
    /// Ctrl-C: what was cleaned up (one line).
    Interrupted(String),
}

/// `work`, unless `interrupted` (Ctrl-C or SIGTERM) comes first: then `None` and `work` is dropped
/// (its in-flight calls cancelled).
async fn unless_interrupted<T>(
    interrupted: &mut std::pin::Pin<&mut impl Future<Output = std::io::Result<()>>>,
    work: impl Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        done = work => Some(done),
        _ = interrupted.as_mut() => None,
    }
}

async fn main_inner(args: Args) -> Result<Ended, Box<dyn std::error::Error>> {
    // Ctrl-C, listened for from here on: polled once now so that the handler is installed
    // before the first line is printed; each step below is raced against it.
    let interrupted = idempotent_examples::signal::interruption();
    tokio::pin!(interrupted);
    match futures_util::poll!(interrupted.as_mut()) {
        std::task::Poll::Pending => {}
        std::task::Poll::Ready(Ok(())) => {
            return Ok(Ended::Interrupted("nothing was created yet".into()));
        }
        std::task::Poll::Ready(Err(e)) => {
            return Err(format!("cannot listen for Ctrl-C: {e}").into());
        }
    }
    // Two operations sharing a name would share records: fail before the first request.
    idempotent_runtime::check_operation_names()?;
    let run = run_id();
    let pool_size = u32::try_from(args.concurrency.clamp(2, 64)).unwrap_or(32);
    let kv = match &args.redis_url {
        None => Kv::Memory(MemoryStore::new()),
        Some(urls) => match unless_interrupted(&mut interrupted, connect_kv(urls)).await {
            Some(kv) => kv?,
            None => return Ok(Ended::Interrupted("nothing was created yet".into())),
        },
    };
    let tokens = std::sync::Mutex::default();
    let (url, tmp) = match &args.database_url {
        Some(u) => (u.clone(), None),
        None => {
            let dir = tempfile::tempdir()?;
            let path = dir.path().join("orders-demo.db");
            (format!("sqlite://{}", path.display()), Some(dir))
        }
    };
    let temporary = tmp.is_some();
    let shown = redact(&url);
    // Checks the connection, creates the demo's tables in `db`, says which, drives the storm
    // through the service on it, and with --cleanup drops what it created; on Ctrl-C stops
    // where it is and cleans up as at the end. The pool is closed before the temporary file
    // is deleted.
    macro_rules! run_on {
        ($db:expr, $backend:ident) => {{
            let db = $db;
            let reachable =
                unless_interrupted(&mut interrupted, idempotent_runtime::check_connection(&db))
                    .await;
            let records_existed = match reachable {
                Some(Ok(())) => Some(service::$backend::records_table_exists(&db).await),
                Some(Err(e)) => {
                    db.close().await;
                    return Err(database_failed(&e).into());
                }
                None => None,
            };
            let work = async {
                let records_existed = records_existed.unwrap_or(true);
                idempotent_runtime::migrate(&db).await.map_err(|e| {
                    format!("creating the idempotency-record table on {shown}: {e}")
                })?;
                service::$backend::create_tables(&db)
                    .await
                    .map_err(|e| format!("creating the demo's tables on {shown}: {e}"))?;
                eprintln!(
                    "{}",
                    tables_note(&shown, records_existed, temporary, args.cleanup)
                );
                let demo = service::$backend::Orders {
                    db: db.clone(),
                    run,
                    kv,
                    tokens,
                };
                drive(&demo, &args, shown.clone())
                    .await
                    .map_err(|e| e.to_string())
            };
            let ended = match records_existed {
                Some(_) => unless_interrupted(&mut interrupted, work).await,
                None => None,
            };
            let mut cleaned = Vec::new();
            if let Some(records_existed) = records_existed
                && args.cleanup
                && !temporary
            {
                service::$backend::drop_tables(&db, !records_existed)
                    .await
                    .map_err(|e| format!("dropping the demo's tables on {shown}: {e}"))?;
                cleaned.push(format!("dropped the demo's tables on {shown} (--cleanup)"));
            }
            db.close().await;
            (ended, cleaned, records_existed.is_some())
        }};
    }
    let (ended, mut cleaned, connected) =
        if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let db = sqlx::postgres::PgPoolOptions::new()
                .max_connections(pool_size)
                // How long a call may wait for a pooled connection before failing (sqlx's
                // default is 30 s), and the bound of the first connection: 10 s.
                .acquire_timeout(PROBE_TIMEOUT)
                .connect_lazy(&url)
                .map_err(|e| not_a_url(&url, &e))?;
            run_on!(db, postgres)
        } else if url.starts_with("mysql:") || url.starts_with("mariadb:") {
            let url = url.replacen("mariadb:", "mysql:", 1);
            let db = sqlx::mysql::MySqlPoolOptions::new()
                .max_connections(pool_size)
                .acquire_timeout(PROBE_TIMEOUT)
                .connect_lazy(&url)
                .map_err(|e| not_a_url(&url, &e))?;
            run_on!(db, mysql)
        } else if url.starts_with("sqlite:") {
            let opts: sqlx::sqlite::SqliteConnectOptions = url
                .parse()
                .map_err(|e| format!("--database-url {shown} is not a SQLite URL: {e}"))?;
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
            // Not reached: `usage_of_urls` refused every other scheme before the run.
            return Err(format!("unsupported --database-url `{shown}`").into());
        };
    if let Some(dir) = tmp {
        let file = dir.path().join("orders-demo.db");
        dir.close()
            .map_err(|e| format!("deleting the temporary SQLite file {}: {e}", file.display()))?;
        cleaned.push(format!(
            "deleted the temporary SQLite file {}",
            file.display()
        ));
    }
    match ended {
        Some(report) => Ok(Ended::Report(report?)),
        None if cleaned.is_empty() && !connected => Ok(Ended::Interrupted(format!(
            "while connecting to {shown}: nothing was created there"
        ))),
        None if cleaned.is_empty() => Ok(Ended::Interrupted(format!(
            "the tables on {shown} stay (without --cleanup they always do)"
        ))),
        None => Ok(Ended::Interrupted(cleaned.join("; "))),
    }
}

/// Checks `--database-url` and `--redis-url` before anything connects: the database's
/// scheme and syntax, no in-memory or file-less SQLite, Redis node URLs non-empty and
/// `redis://`. Errors: the first problem, in one line.
fn usage_of_urls(args: &Args) -> Result<(), String> {
    idempotent_examples::connect::check_urls(
        args.database_url.as_deref(),
        args.redis_url.as_deref(),
    )?;
    match &args.database_url {
        Some(url) => refuse_sqlite_memory(&redact(url)),
        None => Ok(()),
    }
}

/// The last line of the text summary: OK, or FAILED naming each failed operation and why.
fn verdict(report: &Report) -> String {
    if report.ok() {
        return "OK: every operation applied exactly one effect per key, with no errors.".into();
    }
    let failed: Vec<String> = report
        .operations
        .iter()
        .filter(|o| o.effects != o.keys || o.errors != 0)
        .map(|o| {
            format!(
                "{} ({} on {}: {} for {}, {})",
                o.operation,
                o.strategy,
                o.backend,
                counted(o.effects, "effect"),
                counted(o.keys, "key"),
                counted(o.errors, "error")
            )
        })
        .collect();
    format!("FAILED: {}", failed.join("; "))
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
    // A malformed URL is a usage error, as clap's own: exit 2 before anything is created.
    if let Err(e) = usage_of_urls(&args) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let json = args.json;
    match main_inner(args).await {
        Ok(Ended::Interrupted(cleaned)) => {
            let (signal, code) =
                idempotent_examples::signal::interrupted_by().unwrap_or(("Ctrl-C", 130));
            eprintln!("interrupted ({signal}): {cleaned}");
            ExitCode::from(code)
        }
        Ok(Ended::Report(report)) => {
            let out = if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => s + "\n",
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                format!("{}{}\n", report.table(), verdict(&report))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// One key is "1 key", not "1 keys" (a new user's `--requests 7`); whole numbers stay
    /// plural, and the rounding is said.
    #[test]
    fn the_plan_counts_in_words() {
        assert_eq!(counted(1_u64, "key"), "1 key");
        assert_eq!(counted(0_u64, "error"), "0 errors");
        assert_eq!(counted(7_u64, "request"), "7 requests");
        let one = storm_plan(7);
        assert!(one.contains("= 1 key x 7 "), "{one}");
        assert!(one.contains("= 1 period x 8 workers"), "{one}");
        assert!(!one.contains("rounded"), "{one}");
        let many = storm_plan(75);
        assert!(
            many.contains("70 requests per operation = 10 keys x 7"),
            "{many}"
        );
        assert!(
            many.contains("; --requests 75 rounded down to whole keys"),
            "{many}"
        );
    }
}
