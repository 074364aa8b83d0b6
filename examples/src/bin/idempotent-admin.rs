//! `idempotent-admin`: inspect and evict idempotency entries — `dedup_table` records,
//! `distributed_lock` locks and one-time tokens — and purge expired records, in a SQL database
//! or in Redis (`idempotent_runtime::admin`), printing a table or, with `--json`, one JSON
//! object.
//!
//! ```text
//! idempotent-admin --database-url sqlite:orders.db inspect --operation orders::place --scope t1 --key o-1
//! idempotent-admin --database-url postgres://… evict --operation orders::place --key o-1 [--force]
//! idempotent-admin --database-url mysql://… purge [--batch 1000]
//! idempotent-admin --redis-url redis://127.0.0.1:6379 inspect --kind lock --operation orders::settle --key o-1
//! idempotent-admin --redis-url redis://127.0.0.1:6379 evict --kind token --key 8e03978e… [--force]
//! ```
//!
//! `--kind` picks the entry: `record` (the default: `dedup_table`), `lock` (`distributed_lock`)
//! or `token` (`token`; `--key` is the token itself, and `--operation`/`--scope`, optional
//! there, check which call it is bound to). Locks and tokens live only in Redis (or a process's
//! memory store), never in a SQL database. `purge` deletes expired records only (Redis expires
//! everything itself, so there it reports 0).
//!
//! The table shows durations rounded (`29s`, `23h 59m`) and times as RFC 3339 UTC. `--json`
//! keeps machine values: every duration is a whole number of milliseconds in a field named
//! `…_ms` (`lease_left_ms`, `expires_in_ms`), every time is Unix milliseconds in a field named
//! `…_at_ms` (`created_at_ms`).
//!
//! Exit codes: 0 done, 1 an error (printed on stderr), 2 bad arguments, 3 `evict` refused
//! because a call holds a live claim on the key (pass `--force`).
//!
//! `--redis-url` takes one URL, or a comma-separated list of Redis Cluster nodes. The tool
//! reads no environment variables.

use std::process::ExitCode;
use std::str::FromStr as _;
use std::time::{Duration, UNIX_EPOCH};

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use idempotent_runtime::admin::{
    self, AdminStore, Evicted, KeyState, LockAdminStore, LockState, StoredResponse,
    TokenAdminStore, TokenState,
};

#[derive(Parser)]
#[command(
    name = "idempotent-admin",
    about = "Inspect and evict idempotency records, locks and tokens; purge expired records"
)]
struct Args {
    /// The database holding `idempotency_records`: `sqlite:PATH`, `postgres://…` or `mysql://…`.
    #[arg(long, conflicts_with = "redis_url", value_parser = idempotent_examples::connect::lowercase_scheme)]
    database_url: Option<String>,
    /// The Redis holding the records, locks and tokens instead: `redis://…`, or Cluster nodes
    /// comma-separated.
    #[arg(long, value_parser = idempotent_examples::connect::lowercase_scheme)]
    redis_url: Option<String>,
    /// Print one JSON object (durations in `…_ms` fields, times in Unix ms) instead of a table.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show a key's entry: a record (absent, in progress with owner and lease left, completed
    /// with TTL left), a lock (held with owner, fencing token and lease left, or completed with
    /// its stored response) or a token (issued, consumed, completed).
    Inspect(KeyArgs),
    /// Remove a key's entry (a live claim — an in-progress record, a held lock, a consumed
    /// token — only with --force).
    Evict {
        #[command(flatten)]
        key: KeyArgs,
        /// Evict even a live claim: its call's completion then fails with LockLost, and a
        /// duplicate may run beside its body.
        #[arg(long)]
        force: bool,
    },
    /// Delete every expired `dedup_table` record, in batches (records only: locks and tokens
    /// live in Redis, which expires them itself).
    Purge {
        /// Rows per DELETE statement, 1 to 100000.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        batch: u32,
    },
}

/// Which entry a key names.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    /// A `dedup_table` record.
    Record,
    /// A `distributed_lock` lock and its stored response.
    Lock,
    /// A one-time `token`.
    Token,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Record => "record",
            Kind::Lock => "lock",
            Kind::Token => "token",
        }
    }
}

#[derive(clap::Args)]
struct KeyArgs {
    /// The entry: `record` (dedup_table), `lock` (distributed_lock) or `token`.
    #[arg(long, value_enum, default_value_t = Kind::Record)]
    kind: Kind,
    /// The operation name (`name = "..."`, by default `module_path!()::fn_name`). Optional
    /// with `--kind token`, where it checks the token's binding.
    #[arg(long)]
    operation: Option<String>,
    /// The scope, when the function has one.
    #[arg(long)]
    scope: Option<String>,
    /// The key parts, in order (repeat for a compound key); with `--kind token`, the token.
    #[arg(long = "key", required = true)]
    key: Vec<String>,
}

impl KeyArgs {
    fn parts(&self) -> Vec<&str> {
        self.key.iter().map(String::as_str).collect()
    }

    fn operation(&self) -> &str {
        self.operation.as_deref().unwrap_or_default()
    }
}

/// One value of the output: JSON keeps machine values, the table shows them for people.
enum V {
    Text(String),
    Num(u64),
    Bool(bool),
    /// A duration: `<name>_ms` (whole ms) in JSON, rounded in the table.
    Dur(Duration),
    /// A time in Unix ms: `<name>_ms` in JSON, RFC 3339 UTC in the table.
    Time(i64),
}

/// The output: top-level fields and one section (`record`, `lock`, `token`, `result`).
#[derive(Default)]
struct Report {
    top: Vec<(&'static str, V)>,
    section: Option<(&'static str, Vec<(&'static str, V)>)>,
    /// `evict` was refused for a live claim.
    refused: bool,
}

impl Report {
    fn json(&self) -> serde_json::Value {
        fn fields(fs: &[(&'static str, V)]) -> serde_json::Map<String, serde_json::Value> {
            fs.iter()
                .map(|(name, v)| match v {
                    V::Text(t) => (name.to_string(), t.clone().into()),
                    V::Num(n) => (name.to_string(), (*n).into()),
                    V::Bool(b) => (name.to_string(), (*b).into()),
                    V::Dur(d) => (
                        format!("{name}_ms"),
                        u64::try_from(d.as_millis()).unwrap_or(u64::MAX).into(),
                    ),
                    V::Time(ms) => (format!("{name}_ms"), (*ms).into()),
                })
                .collect()
        }
        let mut out = fields(&self.top);
        if let Some((name, fs)) = &self.section {
            out.insert(name.to_string(), fields(fs).into());
        }
        out.into()
    }

    fn table(&self) -> String {
        let mut out = String::new();
        let mut line = |name: String, v: &V| {
            let shown = match v {
                V::Text(t) => t.clone(),
                V::Num(n) => n.to_string(),
                V::Bool(b) => b.to_string(),
                V::Dur(d) => human_duration(*d),
                V::Time(ms) => human_time(*ms),
            };
            out.push_str(&format!("{name:<24} {shown}\n"));
        };
        for (name, v) in &self.top {
            line(name.to_string(), v);
        }
        if let Some((section, fs)) = &self.section {
            for (name, v) in fs {
                line(format!("{section}.{name}"), v);
            }
        }
        out
    }
}

/// `d` for people: rounded to the minute from an hour up, to the second from 10 s, to 100 ms
/// from 1 s, to the millisecond below (`23h 59m`, `29s`, `1s 500ms`, `250ms`).
fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    let unit = match ms {
        3_600_000.. => 60_000,
        10_000.. => 1_000,
        1_000.. => 100,
        _ => 1,
    };
    let rounded = (ms + unit / 2) / unit * unit;
    let rounded = Duration::from_millis(u64::try_from(rounded).unwrap_or(u64::MAX));
    humantime::format_duration(rounded).to_string()
}

/// A Unix-ms time as RFC 3339 UTC to the second (`2023-11-14T22:13:20Z`).
fn human_time(ms: i64) -> String {
    match u64::try_from(ms) {
        Ok(ms) => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
        }
        Err(_) => format!("{} ms before 1970-01-01T00:00:00Z", ms.unsigned_abs()),
    }
}

fn response_fields(fields: &mut Vec<(&'static str, V)>, response: StoredResponse) {
    let (kind, text) = match response {
        StoredResponse::Response { json } => ("response", json),
        StoredResponse::Error { json } => ("error", json),
        StoredResponse::Unstorable { reason } => ("unstorable", reason),
    };
    fields.push(("response_kind", V::Text(kind.into())));
    fields.push(("response", V::Text(text)));
}

fn record_fields(state: KeyState) -> Vec<(&'static str, V)> {
    let text = |s: &str| V::Text(s.into());
    match state {
        KeyState::Absent => vec![("state", text("absent"))],
        KeyState::InProgress { owner, lease_left } => vec![
            ("state", text("in_progress")),
            ("owner", V::Text(owner)),
            ("lease_left", V::Dur(lease_left)),
        ],
        KeyState::Completed {
            created_at_ms,
            expires_in,
        } => {
            let mut f = vec![("state", text("completed"))];
            if let Some(ms) = created_at_ms {
                f.push(("created_at", V::Time(ms)));
            }
            f.push(("expires_in", V::Dur(expires_in)));
            f
        }
    }
}

fn lock_fields(state: LockState) -> Vec<(&'static str, V)> {
    let text = |s: &str| V::Text(s.into());
    match state {
        LockState::Absent => vec![("state", text("absent"))],
        LockState::Held {
            owner,
            fence,
            lease_left,
        } => {
            let mut f = vec![("state", text("held")), ("owner", V::Text(owner))];
            if let Some(fence) = fence {
                f.push(("fence", V::Num(fence)));
            }
            f.push(("lease_left", V::Dur(lease_left)));
            f
        }
        LockState::Completed {
            expires_in,
            response,
        } => {
            let mut f = vec![
                ("state", text("completed")),
                ("expires_in", V::Dur(expires_in)),
            ];
            response_fields(&mut f, response);
            f
        }
    }
}

/// `bound` is the binding of `--operation`, `--scope` and the token, when `--operation` is
/// given: the output then says whether the token's binding is that one.
fn token_fields(state: TokenState, bound: Option<&str>) -> Vec<(&'static str, V)> {
    let text = |s: &str| V::Text(s.into());
    let matches = |f: &mut Vec<(&'static str, V)>, binding: &str| {
        if let Some(bound) = bound {
            f.push(("binding_matches", V::Bool(binding == bound)));
        }
    };
    match state {
        TokenState::Absent => vec![("state", text("absent"))],
        TokenState::Issued { expires_in } => vec![
            ("state", text("issued")),
            ("expires_in", V::Dur(expires_in)),
        ],
        TokenState::Consumed {
            owner,
            binding,
            lease_left,
            expires_in,
        } => {
            let mut f = vec![("state", text("consumed")), ("owner", V::Text(owner))];
            matches(&mut f, &binding);
            f.push(("binding", V::Text(binding)));
            f.push(("lease_left", V::Dur(lease_left)));
            f.push(("expires_in", V::Dur(expires_in)));
            f
        }
        TokenState::Completed {
            binding,
            expires_in,
            response,
        } => {
            let mut f = vec![("state", text("completed"))];
            matches(&mut f, &binding);
            f.push(("binding", V::Text(binding)));
            f.push(("expires_in", V::Dur(expires_in)));
            response_fields(&mut f, response);
            f
        }
    }
}

fn evicted_fields(done: Evicted) -> (Vec<(&'static str, V)>, bool) {
    let text = |s: &str| V::Text(s.into());
    match done {
        Evicted::Removed => (vec![("evicted", text("removed"))], false),
        Evicted::Absent => (vec![("evicted", text("absent"))], false),
        Evicted::LiveClaim { lease_left } => (
            vec![
                ("evicted", text("live_claim")),
                ("lease_left", V::Dur(lease_left)),
            ],
            true,
        ),
    }
}

/// The top-level fields naming the entry: kind, operation, scope, its storage key and, on
/// Redis, the Redis key holding it.
fn header(k: &KeyArgs, redis: bool) -> Result<Report, idempotent_runtime::Error> {
    let storage = match k.kind {
        Kind::Token => admin::token_storage_key(&k.key[0])?,
        _ => admin::storage_key(k.operation(), k.scope.as_deref(), &k.parts())?,
    };
    let mut top = vec![("kind", V::Text(k.kind.name().into()))];
    if let Some(op) = &k.operation {
        top.push(("operation", V::Text(op.clone())));
    }
    if let Some(scope) = &k.scope {
        top.push(("scope", V::Text(scope.clone())));
    }
    let hex = storage.hex();
    if redis {
        let suffix = match k.kind {
            Kind::Record => "rec",
            Kind::Lock => "lock",
            Kind::Token => "tok",
        };
        top.push(("redis_key", V::Text(format!("idem:{{{hex}}}:{suffix}"))));
    }
    top.push(("storage_key", V::Text(hex)));
    Ok(Report {
        top,
        ..Report::default()
    })
}

/// A command on the `dedup_table` records of `store`.
async fn records<S: AdminStore>(
    store: &S,
    command: &Command,
    redis: bool,
) -> Result<Report, idempotent_runtime::Error> {
    Ok(match command {
        Command::Inspect(k) => {
            let state =
                admin::inspect(store, k.operation(), k.scope.as_deref(), &k.parts()).await?;
            Report {
                section: Some(("record", record_fields(state))),
                ..header(k, redis)?
            }
        }
        Command::Evict { key: k, force } => {
            let done =
                admin::evict(store, k.operation(), k.scope.as_deref(), &k.parts(), *force).await?;
            let (fields, refused) = evicted_fields(done);
            Report {
                section: Some(("result", fields)),
                refused,
                ..header(k, redis)?
            }
        }
        Command::Purge { batch } => Report {
            top: vec![("purged", V::Num(admin::purge_expired(store, *batch).await?))],
            ..Report::default()
        },
    })
}

/// An `inspect` or `evict` of a `distributed_lock` entry in `store`.
async fn locks<S: LockAdminStore>(
    store: &S,
    k: &KeyArgs,
    force: Option<bool>,
) -> Result<Report, idempotent_runtime::Error> {
    let (op, scope, parts) = (k.operation(), k.scope.as_deref(), k.parts());
    Ok(match force {
        None => Report {
            section: Some((
                "lock",
                lock_fields(admin::inspect_lock(store, op, scope, &parts).await?),
            )),
            ..header(k, true)?
        },
        Some(force) => {
            let (fields, refused) =
                evicted_fields(admin::evict_lock(store, op, scope, &parts, force).await?);
            Report {
                section: Some(("result", fields)),
                refused,
                ..header(k, true)?
            }
        }
    })
}

/// An `inspect` or `evict` of a one-time token in `store`.
async fn tokens<S: TokenAdminStore>(
    store: &S,
    k: &KeyArgs,
    force: Option<bool>,
) -> Result<Report, idempotent_runtime::Error> {
    let token = k.key[0].as_str();
    Ok(match force {
        None => {
            let bound = match &k.operation {
                Some(op) => Some(admin::storage_key(op, k.scope.as_deref(), &[token])?.hex()),
                None => None,
            };
            let state = admin::inspect_token(store, token).await?;
            Report {
                section: Some(("token", token_fields(state, bound.as_deref()))),
                ..header(k, true)?
            }
        }
        Some(force) => {
            let (fields, refused) = evicted_fields(admin::evict_token(store, token, force).await?);
            Report {
                section: Some(("result", fields)),
                refused,
                ..header(k, true)?
            }
        }
    })
}

/// The key arguments of `command` and its `--force` (`None` for `inspect`), when it names a key.
fn key_of(command: &Command) -> Option<(&KeyArgs, Option<bool>)> {
    match command {
        Command::Inspect(k) => Some((k, None)),
        Command::Evict { key, force } => Some((key, Some(*force))),
        Command::Purge { .. } => None,
    }
}

/// The argument errors clap cannot see: exits with code 2 and clap's usage, like clap's own.
fn check(args: &Args) {
    let fail = |kind: clap::error::ErrorKind, message: String| -> ! {
        Args::command().error(kind, message).exit()
    };
    if args.database_url.is_none() && args.redis_url.is_none() {
        fail(
            clap::error::ErrorKind::MissingRequiredArgument,
            "no store given: pass --database-url (sqlite:PATH, postgres://…, mysql://…) for the \
             records in a SQL database, or --redis-url (redis://…, or Redis Cluster nodes \
             comma-separated) for the records, locks and tokens in Redis"
                .into(),
        );
    }
    if let Err(problem) = idempotent_examples::connect::check_urls(
        args.database_url.as_deref(),
        args.redis_url.as_deref(),
    ) {
        fail(clap::error::ErrorKind::ValueValidation, problem);
    }
    let Some((k, _)) = key_of(&args.command) else {
        return;
    };
    match k.kind {
        Kind::Record | Kind::Lock if k.operation.is_none() => fail(
            clap::error::ErrorKind::MissingRequiredArgument,
            format!(
                "--kind {} needs --operation (the function's `name`, by default \
                 `module_path!()::fn_name`)",
                k.kind.name()
            ),
        ),
        Kind::Lock | Kind::Token if args.database_url.is_some() => fail(
            clap::error::ErrorKind::ArgumentConflict,
            format!(
                "--kind {}: a SQL database holds no {} entries (they live in Redis or a \
                 process's memory store); pass --redis-url",
                k.kind.name(),
                if k.kind == Kind::Lock {
                    "distributed_lock"
                } else {
                    "token"
                }
            ),
        ),
        Kind::Token if k.key.len() != 1 => fail(
            clap::error::ErrorKind::WrongNumberOfValues,
            format!(
                "--kind token takes one --key (the token), not {}",
                k.key.len()
            ),
        ),
        Kind::Token if k.scope.is_some() && k.operation.is_none() => fail(
            clap::error::ErrorKind::MissingRequiredArgument,
            "--kind token with --scope needs --operation too (together they check the token's \
             binding)"
                .into(),
        ),
        _ => {}
    }
    // A key the runtime refuses (empty, over 1,024 bytes) is refused before any connection,
    // so it is the error a user sees whatever the store's state.
    if let Err(e) = header(k, false) {
        fail(clap::error::ErrorKind::ValueValidation, e.to_string());
    }
}

async fn run(args: &Args) -> Result<Report, Box<dyn std::error::Error>> {
    if let Some(urls) = &args.redis_url {
        let store = idempotent_examples::connect::redis(urls).await?;
        return Ok(match key_of(&args.command) {
            Some((k, force)) if k.kind == Kind::Lock => locks(&store, k, force).await?,
            Some((k, force)) if k.kind == Kind::Token => tokens(&store, k, force).await?,
            _ => records(&store, &args.command, true).await?,
        });
    }
    let url = args.database_url.as_deref().unwrap_or_default();
    idempotent_examples::connect::probe(url).await?;
    Ok(if url.starts_with("postgres") {
        records(&sqlx::PgPool::connect(url).await?, &args.command, false).await?
    } else if url.starts_with("mysql") || url.starts_with("mariadb") {
        records(&sqlx::MySqlPool::connect(url).await?, &args.command, false).await?
    } else if url.starts_with("sqlite") {
        // The tool never creates a database file: a path that does not exist is an error.
        let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
            .map_err(|e| idempotent_examples::connect::not_a_url(url, &e))?;
        let path = options.get_filename();
        if !url.contains(":memory:") && !url.contains("mode=memory") && !path.exists() {
            return Err(format!(
                "no SQLite database at {} (the tool never creates one; check --database-url)",
                path.display()
            )
            .into());
        }
        let pool = sqlx::SqlitePool::connect_with(options)
            .await
            .map_err(|e| format!("cannot open the SQLite database {url}: {e}"))?;
        records(&pool, &args.command, false).await?
    } else {
        return Err(format!(
            "unsupported --database-url {url:?}: use sqlite:, postgres:// or mysql://"
        )
        .into());
    })
}

/// Whether `e` or one of its sources is a database's "no such table" (PostgreSQL SQLSTATE
/// 42P01, MySQL/MariaDB 1146, SQLite's "no such table"): a URL naming a database the service
/// does not use.
fn missing_table(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(sqlx::Error::Database(db)) = err.downcast_ref::<sqlx::Error>()
            && (matches!(db.code().as_deref(), Some("42P01" | "1146"))
                || db.message().starts_with("no such table"))
        {
            return true;
        }
        cur = err.source();
    }
    false
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    check(&args);
    match run(&args).await {
        Ok(report) => {
            let text = if args.json {
                report.json().to_string() + "\n"
            } else {
                report.table()
            };
            print!("{text}");
            if report.refused {
                eprintln!(
                    "idempotent-admin: not evicted: a call holds a live claim on this key (its body may be running); pass --force to evict it anyway"
                );
                return ExitCode::from(3);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("idempotent-admin: {e}");
            if missing_table(e.as_ref()) {
                eprintln!(
                    "idempotent-admin: this database has no idempotency_records table: is it the \
                     service's database? (the service's `idempotent_runtime::migrate` creates it)"
                );
            }
            // A key the runtime refuses (empty, over 1,024 bytes) is a bad argument, as clap's.
            match e.downcast_ref::<idempotent_runtime::Error>() {
                Some(idempotent_runtime::Error::InvalidKey(_)) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Durations are rounded to what a person reads: minutes from an hour, seconds from 10 s,
    /// 100 ms from 1 s, ms below.
    #[test]
    fn durations_are_rounded_for_people() {
        let ms = Duration::from_millis;
        let cases = [
            (ms(0), "0s"),
            (ms(250), "250ms"),
            (ms(1_549), "1s 500ms"),
            (ms(9_960), "10s"),
            (ms(29_998), "30s"),
            (ms(14 * 60_000 + 59_400), "14m 59s"),
            (ms(3_599_600), "1h"),
            (ms(86_399_000), "1day"),
            (ms(86_369_000), "23h 59m"),
            (ms(3 * 86_400_000 + 3_600_000 + 29_000), "3days 1h"),
        ];
        for (d, shown) in cases {
            assert_eq!(human_duration(d), shown, "{d:?}");
        }
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(human_time(1_700_000_000_123), "2023-11-14T22:13:20Z");
        assert_eq!(human_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(human_time(-5), "5 ms before 1970-01-01T00:00:00Z");
    }
}
