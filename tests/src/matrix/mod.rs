//! The fault matrix (issue 15): every strategy × backend pair under the same faults, with the
//! outcome of each cell measured and written to `GUARANTEES.md`.
//!
//! | module | holds |
//! |---|---|
//! | this file | [`Strategy`], [`Backend`], the pause points [`Point`] and [`Pause`] |
//! | [`svc`] | [`Svc`](svc::Svc): one strategy's operation on one backend, its effects ledger and setup |
//! | [`worker`] | the `fault_worker` protocol: [`WorkerCmd`](worker::WorkerCmd), its reports |
//! | [`table`] | [`Fault`](table::Fault), [`Cell`](table::Cell) and the rendering of `GUARANTEES.md` |
//!
//! The `fault_worker` binary (`tests/src/bin/fault_worker.rs`) runs one strategy on one backend
//! in a process of its own, so the test (`tests/tests/fault_matrix.rs`) can SIGKILL it at a
//! pause point it announced on stdout.

pub mod svc;
pub mod table;
pub mod worker;

use std::io::Write;
use std::sync::Mutex;

use crate::outcome::Got;

/// The strategies of the matrix; `dedup_table` counts twice (claim mode and `#[tx]` mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Strategy {
    /// `dedup_table` without `#[tx]`: the claim commits first, with a 1 s lease.
    DedupClaim,
    /// `dedup_table` with `#[tx]`: claim, body and record in one transaction.
    DedupTx,
    /// `select_before_insert`.
    SelectBeforeInsert,
    /// `pessimistic`.
    Pessimistic,
    /// `optimistic`.
    Optimistic,
    /// `unique_index`.
    UniqueIndex,
    /// `state_machine`.
    StateMachine,
    /// `distributed_lock`, 1 s lease.
    DistributedLock,
    /// `token`, 1 s lease.
    Token,
}

/// Which guarantees a strategy's family gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// A claim (lock, consumed token) committed before the body runs, held by a lease.
    Claim,
    /// Claim and body in one database transaction.
    Transactional,
}

impl Strategy {
    /// Every strategy, in the table's row order.
    pub const ALL: [Strategy; 9] = [
        Strategy::DedupClaim,
        Strategy::DedupTx,
        Strategy::SelectBeforeInsert,
        Strategy::Pessimistic,
        Strategy::Optimistic,
        Strategy::UniqueIndex,
        Strategy::StateMachine,
        Strategy::DistributedLock,
        Strategy::Token,
    ];

    /// The command-line and ledger name (`dedup_claim`, `pessimistic`, …).
    pub fn id(self) -> &'static str {
        match self {
            Strategy::DedupClaim => "dedup_claim",
            Strategy::DedupTx => "dedup_tx",
            Strategy::SelectBeforeInsert => "select_before_insert",
            Strategy::Pessimistic => "pessimistic",
            Strategy::Optimistic => "optimistic",
            Strategy::UniqueIndex => "unique_index",
            Strategy::StateMachine => "state_machine",
            Strategy::DistributedLock => "distributed_lock",
            Strategy::Token => "token",
        }
    }

    /// The name in the table (`dedup_table` (claim), …).
    pub fn title(self) -> &'static str {
        match self {
            Strategy::DedupClaim => "`dedup_table` claim mode",
            Strategy::DedupTx => "`dedup_table` `#[tx]`",
            Strategy::SelectBeforeInsert => "`select_before_insert`",
            Strategy::Pessimistic => "`pessimistic`",
            Strategy::Optimistic => "`optimistic`",
            Strategy::UniqueIndex => "`unique_index`",
            Strategy::StateMachine => "`state_machine`",
            Strategy::DistributedLock => "`distributed_lock`",
            Strategy::Token => "`token`",
        }
    }

    /// The strategy named `id` (see [`id`](Self::id)).
    pub fn parse(id: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|s| s.id() == id)
    }

    /// Its family.
    pub fn family(self) -> Family {
        match self {
            Strategy::DedupClaim | Strategy::DistributedLock | Strategy::Token => Family::Claim,
            _ => Family::Transactional,
        }
    }

    /// Whether it returns the body's response (replaying) rather than `Ok(())`/`Duplicate`.
    pub fn replays(self) -> bool {
        matches!(
            self,
            Strategy::DedupClaim | Strategy::DedupTx | Strategy::DistributedLock | Strategy::Token
        )
    }

    /// What a duplicate gets while another call holds the key: `InProgress`, `Duplicate` for
    /// `token`; `None` for the transactional strategies (a duplicate waits on the database's
    /// lock instead).
    pub fn busy(self) -> Option<Got> {
        match self {
            Strategy::DedupClaim | Strategy::DistributedLock => Some(Got::InProgress),
            Strategy::Token => Some(Got::Duplicate),
            _ => None,
        }
    }

    /// Whether `backend` runs this strategy.
    pub fn runs_on(self, backend: Backend) -> bool {
        match self {
            Strategy::DedupClaim => true,
            Strategy::DistributedLock | Strategy::Token => matches!(
                backend,
                Backend::Memory | Backend::Redis | Backend::RedisCluster
            ),
            _ => backend.is_sql(),
        }
    }
}

/// The backends of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Backend {
    /// The in-process memory store.
    Memory,
    /// SQLite (a file the processes share). (Variant names differ from sqlx's types, whose
    /// names the compiler would otherwise qualify in the ui tests' messages.)
    SqliteFile,
    /// PostgreSQL.
    PostgreSql,
    /// MySQL/MariaDB.
    MariaDb,
    /// Standalone Redis.
    Redis,
    /// A Redis Cluster (3 masters).
    RedisCluster,
}

impl Backend {
    /// Every backend, in the table's row order.
    pub const ALL: [Backend; 6] = [
        Backend::Memory,
        Backend::SqliteFile,
        Backend::PostgreSql,
        Backend::MariaDb,
        Backend::Redis,
        Backend::RedisCluster,
    ];

    /// Its short name (`memory`, `sqlite`, `postgres`, `mysql`, `redis`, `redis_cluster`).
    pub fn id(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::SqliteFile => "sqlite",
            Backend::PostgreSql => "postgres",
            Backend::MariaDb => "mysql",
            Backend::Redis => "redis",
            Backend::RedisCluster => "redis_cluster",
        }
    }

    /// Its name in the table.
    pub fn title(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::SqliteFile => "SQLite",
            Backend::PostgreSql => "PostgreSQL",
            Backend::MariaDb => "MariaDB",
            Backend::Redis => "Redis",
            Backend::RedisCluster => "Redis Cluster",
        }
    }

    /// PostgreSQL, MySQL/MariaDB or SQLite.
    pub fn is_sql(self) -> bool {
        matches!(
            self,
            Backend::SqliteFile | Backend::PostgreSql | Backend::MariaDb
        )
    }

    /// The backend of a URL (`postgres://…`, `mysql://…`, `sqlite://<path>`, `redis://…`,
    /// `redis-cluster://<host:port>,<host:port>,…`, `memory`).
    pub fn of_url(url: &str) -> Option<Backend> {
        let scheme = url.split(':').next()?;
        Some(match scheme {
            "postgres" | "postgresql" => Backend::PostgreSql,
            "mysql" | "mariadb" => Backend::MariaDb,
            "sqlite" => Backend::SqliteFile,
            "redis" => Backend::Redis,
            "redis-cluster" => Backend::RedisCluster,
            "memory" => Backend::Memory,
            _ => return None,
        })
    }
}

/// A pause point of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Point {
    /// The body started: the claim, lock or consumed token is held, or the transaction (with
    /// the strategy's claim statement) is open.
    Claimed,
    /// The body wrote its effect and has not returned: the completion (claim mode) or the
    /// commit (transactional) has not happened.
    Effect,
    /// The call returned: completed and committed.
    Completed,
}

impl Point {
    /// Every point, in order.
    pub const ALL: [Point; 3] = [Point::Claimed, Point::Effect, Point::Completed];

    /// Its name on the worker's stdout (`claimed`, `effect`, `completed`).
    pub fn id(self) -> &'static str {
        match self {
            Point::Claimed => "claimed",
            Point::Effect => "effect",
            Point::Completed => "completed",
        }
    }

    /// The point named `id`.
    pub fn parse(id: &str) -> Option<Point> {
        Point::ALL.into_iter().find(|p| p.id() == id)
    }
}

/// Holds an operation at one armed [`Point`], once: in a worker process it prints
/// `paused <point>` on stdout and waits for a line on stdin; in the test process it notifies
/// [`entered`](Pause::entered) and waits for [`release`](Pause::release).
#[derive(Debug, Default)]
pub struct Pause {
    armed: Mutex<Option<Point>>,
    stdio: bool,
    /// Notified when the armed point is reached (in-process mode).
    pub entered: tokio::sync::Notify,
    /// Lets the held operation go on (in-process mode).
    pub release: tokio::sync::Notify,
}

impl Pause {
    /// An in-process pause, nothing armed.
    pub fn local() -> Pause {
        Pause::default()
    }

    /// A pause that talks over stdin/stdout (the worker's), nothing armed.
    pub fn stdio() -> Pause {
        Pause {
            stdio: true,
            ..Pause::default()
        }
    }

    /// Holds the next operation that reaches `point`.
    pub fn arm(&self, point: Point) {
        *self
            .armed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(point);
    }

    /// Called by operations at `point`: holds them there when it is the armed point (once).
    pub async fn at(&self, point: Point) {
        let hit = {
            let mut armed = self
                .armed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *armed == Some(point) {
                *armed = None;
                true
            } else {
                false
            }
        };
        if !hit {
            return;
        }
        if self.stdio {
            {
                let mut out = std::io::stdout().lock();
                // The test reads this line; a closed stdout means the test is gone.
                let _ = writeln!(out, "paused {}", point.id());
                let _ = out.flush();
            }
            let _ = tokio::task::spawn_blocking(|| {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)
            })
            .await;
        } else {
            self.entered.notify_one();
            self.release.notified().await;
        }
    }
}
