//! `idempotent-admin`: inspect, evict and purge `dedup_table` idempotency records in a SQL
//! database or in Redis (`idempotent_runtime::admin`), printing a table or, with `--json`, one
//! JSON object.
//!
//! ```text
//! idempotent-admin --database-url sqlite:orders.db inspect --operation orders::place --scope t1 --key o-1
//! idempotent-admin --database-url postgres://… evict --operation orders::place --key o-1 [--force]
//! idempotent-admin --database-url mysql://… purge [--batch 1000]
//! idempotent-admin --redis-url redis://127.0.0.1:6379 inspect --operation orders::place --key o-1
//! ```
//!
//! Exit codes: 0 done, 1 an error (printed on stderr), 2 bad arguments, 3 `evict` refused
//! because a call holds a live claim on the key (pass `--force`).
//!
//! `--redis-url` takes one URL, or a comma-separated list of Redis Cluster nodes. On Redis a
//! purge deletes nothing (Redis expires records itself) and reports 0.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use idempotent_runtime::admin::{self, AdminStore};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "idempotent-admin",
    about = "Inspect, evict and purge idempotency records"
)]
struct Args {
    /// The database holding `idempotency_records`: `sqlite:PATH`, `postgres://…` or `mysql://…`.
    #[arg(
        long,
        required_unless_present = "redis_url",
        conflicts_with = "redis_url"
    )]
    database_url: Option<String>,
    /// The Redis holding the records instead: `redis://…`, or Cluster nodes comma-separated.
    #[arg(long)]
    redis_url: Option<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a key's record: absent, in progress (owner, lease left) or completed (TTL left).
    Inspect(KeyArgs),
    /// Remove a key's record (a live in-progress claim only with --force).
    Evict {
        #[command(flatten)]
        key: KeyArgs,
        /// Evict even a live in-progress claim (a duplicate may then run beside its body).
        #[arg(long)]
        force: bool,
    },
    /// Delete every expired record, in batches.
    Purge {
        /// Rows per DELETE statement.
        #[arg(long, default_value_t = 1000)]
        batch: u32,
    },
}

#[derive(clap::Args)]
struct KeyArgs {
    /// The operation name (`name = "..."`, by default `module_path!()::fn_name`).
    #[arg(long)]
    operation: String,
    /// The scope, when the function has one.
    #[arg(long)]
    scope: Option<String>,
    /// The key parts, in order (repeat for a compound key).
    #[arg(long = "key", required = true)]
    key: Vec<String>,
}

async fn run_on<S: AdminStore>(
    store: &S,
    command: &Command,
) -> Result<serde_json::Value, idempotent_runtime::Error> {
    Ok(match command {
        Command::Inspect(k) => {
            let parts: Vec<&str> = k.key.iter().map(String::as_str).collect();
            let state = admin::inspect(store, &k.operation, k.scope.as_deref(), &parts).await?;
            json!({ "operation": k.operation, "record": state })
        }
        Command::Evict { key: k, force } => {
            let parts: Vec<&str> = k.key.iter().map(String::as_str).collect();
            let done =
                admin::evict(store, &k.operation, k.scope.as_deref(), &parts, *force).await?;
            json!({ "operation": k.operation, "result": done })
        }
        Command::Purge { batch } => {
            json!({ "purged": admin::purge_expired(store, *batch).await? })
        }
    })
}

/// `value`'s fields as `name  value` lines (nested objects flattened with dots).
fn table(value: &serde_json::Value, prefix: &str, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                table(v, &name, out);
            }
        }
        other => out.push_str(&format!("{prefix:<24} {other}\n")),
    }
}

async fn run(args: &Args) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    if let Some(urls) = &args.redis_url {
        let store = if urls.contains(',') {
            let nodes: Vec<&str> = urls.split(',').map(str::trim).collect();
            idempotent_runtime::RedisStore::connect_cluster(&nodes).await?
        } else {
            idempotent_runtime::RedisStore::connect(urls).await?
        };
        return Ok(run_on(&store, &args.command).await?);
    }
    let url = args.database_url.as_deref().unwrap_or_default();
    idempotent_examples::connect::probe(url).await?;
    Ok(if url.starts_with("postgres") {
        run_on(&sqlx::PgPool::connect(url).await?, &args.command).await?
    } else if url.starts_with("mysql") || url.starts_with("mariadb") {
        run_on(&sqlx::MySqlPool::connect(url).await?, &args.command).await?
    } else if url.starts_with("sqlite") {
        run_on(&sqlx::SqlitePool::connect(url).await?, &args.command).await?
    } else {
        return Err(format!(
            "unsupported --database-url {url:?}: use sqlite:, postgres:// or mysql://"
        )
        .into());
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(value) => {
            let text = if args.json {
                value.to_string() + "\n"
            } else {
                let mut out = String::new();
                table(&value, "", &mut out);
                out
            };
            print!("{text}");
            if value["result"]["evicted"] == "live_claim" {
                eprintln!(
                    "idempotent-admin: not evicted: a call holds a live claim on this key (its body may be running); pass --force to evict it anyway"
                );
                return ExitCode::from(3);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("idempotent-admin: {e}");
            ExitCode::FAILURE
        }
    }
}
