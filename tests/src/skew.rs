//! Processes that share one SQLite file with wall clocks apart (issue 12 item 9): the service
//! both sides run ([`SkewSvc`], a claim-mode `dedup_table` operation with a 1 s lease whose
//! effects are rows in the shared file), and the protocol of the `skew_worker` binary that the
//! test runs under `faketime` ([`worker_command`], [`WorkerReport`]).

use std::path::Path;
use std::time::Duration;

use idempotent_runtime::idempotent;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

use crate::fixtures::{AppError, Gate, Receipt, Req};

/// The lease of [`SkewSvc::place`].
pub const LEASE: Duration = Duration::from_secs(1);

/// SQLite's "now" in Unix ms, as the claim statements compute it (in this process's clock).
pub const SQLITE_NOW_MS: &str =
    "SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

/// The service of both processes: a claim-mode operation on the shared SQLite file.
pub struct SkewSvc {
    /// The pool on the shared file.
    pub db: SqlitePool,
    /// Holds the next body when armed (the test process's holder).
    pub gate: Gate,
}

impl SkewSvc {
    /// [`place`](Self::place)'s operation name: the default, `module_path!()::place`.
    pub const PLACE: &str = concat!(module_path!(), "::place");

    /// Opens (creating if needed) the SQLite file at `path` (WAL, 30 s busy timeout), migrates
    /// it and creates the effects table if missing.
    pub async fn open(path: &Path) -> SkewSvc {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(30));
        let db = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .expect("open sqlite");
        idempotent_runtime::migrate(&db)
            .await
            .expect("migrate sqlite");
        sqlx::query("CREATE TABLE IF NOT EXISTS skew_effects (k TEXT NOT NULL, tenant TEXT NOT NULL, amount BIGINT NOT NULL)")
            .execute(&db)
            .await
            .expect("create effects table");
        SkewSvc {
            db,
            gate: Gate::default(),
        }
    }

    /// The operation: passes the gate, writes one effect row, answers a receipt numbered by
    /// the effects of this request so far.
    #[idempotent(
        strategy = "dedup_table",
        key = "req.id",
        store = "self.db",
        scope = "req.tenant",
        lease = "1s"
    )]
    pub async fn place(&self, req: &Req) -> Result<Receipt, AppError> {
        self.gate.pass().await;
        sqlx::query("INSERT INTO skew_effects (k, tenant, amount) VALUES (?1, ?2, ?3)")
            .bind(&req.id)
            .bind(&req.tenant)
            .bind(req.amount)
            .execute(&self.db)
            .await?;
        Ok(Receipt {
            tenant: req.tenant.clone(),
            id: req.id.clone(),
            amount: req.amount,
            serial: u64::try_from(self.effects(req).await).unwrap_or(0),
        })
    }

    /// Effect rows written for exactly this request, by any process.
    pub async fn effects(&self, req: &Req) -> i64 {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM skew_effects WHERE k = ?1 AND tenant = ?2 AND amount = ?3",
        )
        .bind(&req.id)
        .bind(&req.tenant)
        .bind(req.amount)
        .fetch_one(&self.db)
        .await
        .expect("count effects")
    }

    /// SQLite's "now" in this process (Unix ms).
    pub async fn sqlite_now_ms(&self) -> i64 {
        sqlx::query_scalar(SQLITE_NOW_MS)
            .fetch_one(&self.db)
            .await
            .expect("sqlite now")
    }
}

/// What the worker does with its request.
#[derive(Debug, Clone, Copy)]
pub enum WorkerMode {
    /// Calls the operation every 50 ms for the given time and reports every outcome.
    CallFor(Duration),
    /// Calls it every 20 ms until the answer is not `InProgress` (or the given time has passed)
    /// and reports the calls' outcomes.
    UntilFree(Duration),
}

/// The `skew_worker` command line: `faketime -m -f <offset> <worker> <db> <tenant> <id>
/// <amount> <call-for|until-free> <ms>` with the monotonic clock left alone
/// (`FAKETIME_DONT_FAKE_MONOTONIC=1`), so only the wall clock (and SQLite's `julianday('now')`)
/// is skewed by `offset` (`"+60s"`, `"-60s"`).
pub fn worker_command(
    worker: &str,
    offset: &str,
    db: &Path,
    req: &Req,
    mode: WorkerMode,
) -> std::process::Command {
    let (name, d) = match mode {
        WorkerMode::CallFor(d) => ("call-for", d),
        WorkerMode::UntilFree(d) => ("until-free", d),
    };
    let mut cmd = std::process::Command::new("faketime");
    cmd.env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .args(["-m", "-f", offset, worker])
        .arg(db)
        .args([&req.tenant, &req.id])
        .arg(req.amount.to_string())
        .arg(name)
        .arg(d.as_millis().to_string());
    cmd
}

/// What the worker printed: its wall clock and SQLite's "now" when it started (Unix ms), the
/// outcome of each call in order (`InProgress`, `Executed`, `Replayed` or `Other: …`) and how
/// long (its monotonic ms) from its first call to its last.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkerReport {
    /// `SystemTime::now()` in the worker, Unix ms.
    pub wall_ms: i64,
    /// SQLite's `julianday('now')` in the worker, Unix ms.
    pub sqlite_ms: i64,
    /// Each call's outcome.
    pub outcomes: Vec<String>,
    /// Monotonic ms from the first call's start to the last call's end.
    pub elapsed_ms: u64,
}

impl WorkerReport {
    /// Parses the worker's stdout (`wall <ms>`, `sqlite <ms>`, `call <outcome>`…,
    /// `elapsed <ms>`).
    pub fn parse(stdout: &str) -> WorkerReport {
        let mut r = WorkerReport::default();
        for line in stdout.lines() {
            let (tag, rest) = line.split_once(' ').unwrap_or((line, ""));
            match tag {
                "wall" => r.wall_ms = rest.parse().expect("wall ms"),
                "sqlite" => r.sqlite_ms = rest.parse().expect("sqlite ms"),
                "call" => r.outcomes.push(rest.to_owned()),
                "elapsed" => r.elapsed_ms = rest.parse().expect("elapsed ms"),
                _ => panic!("unexpected worker line {line:?}"),
            }
        }
        r
    }
}
