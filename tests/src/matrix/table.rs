//! The matrix's cells and `GUARANTEES.md`: [`Fault`] (the columns), [`Cell`] (one strategy ×
//! backend × fault, with its measured [`Verdict`]), [`render`] (the document) and
//! [`compare`] (the committed document against a fresh run, skipped rows aside).

use std::fmt::Write;

use super::{Backend, Strategy};

/// The faults: the table's columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// The worker process SIGKILLed when the body started; a fresh worker retries.
    KillClaimed,
    /// SIGKILLed after the body's effect, before completion/commit.
    KillEffect,
    /// SIGKILLed after the call returned.
    KillCompleted,
    /// The caller's future dropped when the body started (in process).
    CancelClaimed,
    /// The caller's future dropped after the body's effect (in process).
    CancelEffect,
    /// The same with `on_cancel = "release"` (claim mode, 30 s lease).
    CancelRelease,
    /// The backend connections killed by the server after the body's effect (in process).
    ConnKilled,
    /// The backend server restarted after the body's effect (in process; the test's own Redis,
    /// without persistence and with AOF `appendfsync always`).
    Restarted,
    /// A pool of one connection, 10 concurrent calls of one key (in process).
    PoolOfOne,
    /// 4 worker processes × many requests over many keys.
    Storm,
    /// A worker with its clock 60 s ahead, then 60 s behind, against a live claim (claim mode).
    Skew,
}

impl Fault {
    /// Every fault, in column order.
    pub const ALL: [Fault; 11] = [
        Fault::KillClaimed,
        Fault::KillEffect,
        Fault::KillCompleted,
        Fault::CancelClaimed,
        Fault::CancelEffect,
        Fault::CancelRelease,
        Fault::ConnKilled,
        Fault::Restarted,
        Fault::PoolOfOne,
        Fault::Storm,
        Fault::Skew,
    ];

    /// Its id in test names (`kill_claimed`, …).
    pub fn id(self) -> &'static str {
        match self {
            Fault::KillClaimed => "kill_claimed",
            Fault::KillEffect => "kill_effect",
            Fault::KillCompleted => "kill_completed",
            Fault::CancelClaimed => "cancel_claimed",
            Fault::CancelEffect => "cancel_effect",
            Fault::CancelRelease => "cancel_release",
            Fault::ConnKilled => "conn_killed",
            Fault::Restarted => "restarted",
            Fault::PoolOfOne => "pool_of_one",
            Fault::Storm => "storm",
            Fault::Skew => "skew_60s",
        }
    }

    /// Its column heading.
    pub fn title(self) -> &'static str {
        match self {
            Fault::KillClaimed => "SIGKILL after claim",
            Fault::KillEffect => "SIGKILL after effect",
            Fault::KillCompleted => "SIGKILL after completion",
            Fault::CancelClaimed => "future dropped after claim",
            Fault::CancelEffect => "future dropped after effect",
            Fault::CancelRelease => "dropped after effect, `on_cancel = \"release\"`",
            Fault::ConnKilled => "connection killed after effect",
            Fault::Restarted => "server restarted after effect",
            Fault::PoolOfOne => "pool of 1, 10 calls",
            Fault::Storm => "storm, 4 processes",
            Fault::Skew => "clock ±60 s",
        }
    }
}

/// What a cell measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It ran: the outcome in words, and the most effects one key got.
    Measured {
        /// The outcome (`1 effect; the retry runs at once`).
        text: String,
        /// The most effects any key of the cell got.
        effects: i64,
    },
    /// The fault does not apply to this pair, and why.
    NotApplicable(String),
    /// It could not run here (a server or tool missing, outside CI), and why.
    Skipped(String),
    /// It ran and broke a guarantee, or crashed: the message.
    Failed(String),
}

/// One strategy × backend × fault.
#[derive(Debug, Clone)]
pub struct Cell {
    /// The fault (column).
    pub fault: Fault,
    /// The strategy (row).
    pub strategy: Strategy,
    /// The backend (row).
    pub backend: Backend,
    /// What it measured.
    pub verdict: Verdict,
}

impl Cell {
    /// The cell's test name: `<fault>::<strategy>::<backend>`.
    pub fn id(&self) -> String {
        cell_id(self.fault, self.strategy, self.backend)
    }

    /// The cell as JSON (for `target/tmp/fault-matrix/<id>.json`).
    pub fn json(&self) -> serde_json::Value {
        let (status, text, effects) = match &self.verdict {
            Verdict::Measured { text, effects } => ("measured", text.clone(), Some(*effects)),
            Verdict::NotApplicable(t) => ("n/a", t.clone(), None),
            Verdict::Skipped(t) => ("skipped", t.clone(), None),
            Verdict::Failed(t) => ("failed", t.clone(), None),
        };
        serde_json::json!({
            "cell": self.id(),
            "fault": self.fault.id(),
            "strategy": self.strategy.id(),
            "backend": self.backend.id(),
            "status": status,
            "outcome": text,
            "effects": effects,
        })
    }
}

/// `<fault>::<strategy>::<backend>`.
pub fn cell_id(fault: Fault, strategy: Strategy, backend: Backend) -> String {
    format!("{}::{}::{}", fault.id(), strategy.id(), backend.id())
}

/// The rows of the table: every strategy × backend pair that runs.
pub fn rows() -> Vec<(Strategy, Backend)> {
    let mut v = Vec::new();
    for s in Strategy::ALL {
        for b in Backend::ALL {
            if s.runs_on(b) {
                v.push((s, b));
            }
        }
    }
    v
}

const HEADER: &str = "\
# Guarantees under faults

<!-- Generated by tests/tests/fault_matrix.rs from its measurements: do not edit. -->

Every strategy × backend pair under the same faults, each cell **measured** by the fault
matrix (`cargo test -p idempotent-tests --test fault_matrix`), which fails when this file
differs from what it measured; `IDEMPOTENT_WRITE_GUARANTEES=1` rewrites it. Each cell gives
the measured outcome, then (small) its test, `fault::strategy::backend`. Effects are counted in
a ledger on the same backend (a table, or Redis counters); every claim-mode operation has a
1 s lease.

- Wording: *retry busy until the lease ends*: the retry got `InProgress` (`Duplicate` for
  `token`) until the dead holder's 1 s lease ended (asserted: within the lease plus 2 s to
  start a process; on SQLite, which has no server clock, a lease of watching the claim
  unchanged, asserted within 2 leases plus 2 s); *at once*: the retry's first call answered.
  **Bold**: more than one effect for one key, listed after the table.
- **SIGKILL after claim / effect / completion**: a worker process (`tests/src/bin/fault_worker.rs`)
  announces its pause point on stdout and is killed there with SIGKILL; a fresh worker then
  retries the same key every 20 ms until it is not turned away as busy. *after claim*: the
  body has started (claim, lock or consumed token held; transaction open); *after effect*: the
  body wrote its effect and has not returned (no completion, no commit); *after completion*:
  the call returned.
- **future dropped after claim / effect**: the same pause points in the test's own process,
  where the caller's future is dropped (what a `tokio::time::timeout` firing there does); the
  default `on_cancel = \"keep\"`. With `on_cancel = \"release\"` (and a 30 s lease, so only
  the release can free the key in time) the claim is released on the drop.
- **connection killed after effect**: while the body is held after its effect, the server
  kills every connection of the caller's pool (PostgreSQL `pg_terminate_backend`, MariaDB
  `KILL`; Redis `CLIENT KILL TYPE normal` on a server, or every node of a cluster, of the
  test's own); then the body returns.
- **server restarted after effect**: while the body is held after its effect, a server of the
  test's own is SIGKILLed and started again on the same port and data; then the body returns.
  Redis once without persistence and once with AOF `appendfsync always`; MariaDB
  (`mariadb-install-db` + `mariadbd`, InnoDB recovers), where claim mode runs an operation
  with a 30 s lease (its completion retries for up to the lease, longer than the restart). The
  suite runs no PostgreSQL of its own (`postgres` refuses to run as root), so those cells are
  `n/a`.
- **pool of 1, 10 calls**: a pool of one connection (acquire time-out 10 s), 10 concurrent
  calls lined up on a barrier, first of one key, then of 10 keys; all must finish (or get a
  pool time-out) within 60 s.
- **storm, 4 processes**: 4 worker processes, each calling every key several times in its own
  order, 4 calls at a time; effects must equal keys.
- **clock ±60 s**: a worker under `faketime` (+60 s, then −60 s; its clock checked) calls a
  key another worker holds (alive, renewing) for 2.5 leases, and after the holder completes;
  then, for each offset, a holder is SIGKILLed after claiming and the skewed worker retries:
  it must run the body within one lease (+2 s to start a process), not 60 s early or late.
- `n/a`: the fault does not apply to the pair (the reason is given).
";

/// The document for `cells`: one table row per strategy × backend, one column per fault, then
/// the cells with more than one effect (the limits).
pub fn render(cells: &[Cell]) -> String {
    let mut out = String::from(HEADER);
    out.push_str("\n| strategy | backend |");
    for f in Fault::ALL {
        let _ = write!(out, " {} |", f.title());
    }
    out.push_str("\n|---|---|");
    for _ in Fault::ALL {
        out.push_str("---|");
    }
    out.push('\n');
    for (s, b) in rows() {
        let _ = write!(out, "| {} | {} |", s.title(), b.title());
        for f in Fault::ALL {
            let cell = cells
                .iter()
                .find(|c| c.fault == f && c.strategy == s && c.backend == b);
            let text = match cell.map(|c| &c.verdict) {
                Some(Verdict::Measured { text, .. }) => {
                    format!("{text}<br><sub>{}</sub>", cell_id(f, s, b))
                }
                Some(Verdict::NotApplicable(why)) => format!("n/a: {why}"),
                Some(Verdict::Skipped(why)) => format!("**skipped**: {why}"),
                Some(Verdict::Failed(_)) => "**FAILED**".to_owned(),
                None => "not measured yet".to_owned(),
            };
            let _ = write!(out, " {text} |");
        }
        out.push('\n');
    }
    let limits: Vec<&Cell> = cells
        .iter()
        .filter(|c| matches!(c.verdict, Verdict::Measured { effects, .. } if effects > 1))
        .collect();
    out.push_str("\n## Cells with more than one effect\n\n");
    if limits.is_empty() {
        out.push_str("None.\n");
    } else {
        out.push_str(
            "Each is a documented limit, not a bug (README, *Guarantees and their limits*): in \
             claim mode an effect whose completion never landed (the process died, the future \
             was dropped after the effect) is not recorded, so once the lease ends a retry runs \
             the body again (with `on_cancel = \"release\"` at once: that is its trade-off); a \
             Redis without persistence forgets the claim when it restarts. \
             Use transactional mode when the effect is in the same database, AOF \
             `appendfsync always` on Redis, or make the effect safe to repeat.\n\n",
        );
        for c in limits {
            if let Verdict::Measured { text, .. } = &c.verdict {
                let _ = writeln!(
                    out,
                    "- {} on {}, {}: {} (`{}`)",
                    c.strategy.title(),
                    c.backend.title(),
                    c.fault.title(),
                    text.replace("**", ""),
                    c.id()
                );
            }
        }
    }
    out
}

/// Compares a fresh rendering with the committed document. With `skipped` cells (their ids),
/// their table rows and their lines in the list of limits are left out on both sides (a
/// machine without a server cannot check them); everything else must be identical and in the
/// same order.
pub fn compare(fresh: &str, committed: &str, skipped: &[String]) -> Result<(), String> {
    // A table row's key: its first two columns.
    let row_key = |l: &str| -> Option<String> {
        l.starts_with("| ")
            .then(|| l.splitn(4, " | ").take(2).collect::<Vec<_>>().join(" | "))
    };
    let skipped_rows: Vec<String> = fresh
        .lines()
        .filter(|l| l.contains("**skipped**"))
        .filter_map(row_key)
        .collect();
    let keep = |l: &&str| {
        !row_key(l).is_some_and(|k| skipped_rows.contains(&k))
            && !skipped.iter().any(|id| l.ends_with(&format!("(`{id}`)")))
    };
    let a: Vec<&str> = fresh.lines().filter(keep).collect();
    let b: Vec<&str> = committed.lines().filter(keep).collect();
    let mut diffs = Vec::new();
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (a.get(i).copied(), b.get(i).copied());
        if x != y {
            diffs.push(format!(
                "  measured:  {}\n  committed: {}",
                x.unwrap_or("(nothing)"),
                y.unwrap_or("(nothing)")
            ));
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(diffs.join("\n"))
    }
}
