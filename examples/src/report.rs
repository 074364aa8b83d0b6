//! The per-operation summary the demo prints (a table, or JSON with `--json`).

use serde::Serialize;

/// The outcome of one request as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The body ran for this request.
    Executed,
    /// The stored response of an earlier request was replayed.
    Replayed,
    /// Same key, different payload: refused.
    Mismatch,
    /// `Error::Duplicate`: a strategy that stores no response refused a repeat.
    Duplicate,
    /// Any other error (a bug, or a backend failure).
    Error,
}

/// One operation's line of the summary.
#[derive(Debug, Clone, Serialize)]
pub struct OperationReport {
    /// Operation name (`place_order`, …).
    pub operation: String,
    /// The `#[idempotent]` strategy guarding it.
    pub strategy: String,
    /// Where its idempotency records live (`sqlite`, `postgres`, `mysql`, `memory`).
    pub backend: String,
    /// Requests sent (first calls, duplicates, retries, different payloads).
    pub requests: u64,
    /// Distinct idempotency keys among them.
    pub keys: u64,
    /// Effects applied, counted from the database's ledger rows after the storm.
    pub effects: u64,
    /// Requests answered with a replayed stored response.
    pub replays: u64,
    /// Requests answered `Error::Duplicate` (strategies that store no response).
    pub duplicates: u64,
    /// `InProgress` answers seen (the client retried those after a pause).
    pub in_progress: u64,
    /// Requests refused for reusing a key with a different payload.
    pub mismatches: u64,
    /// Any other error.
    pub errors: u64,
    /// Median request latency in milliseconds, client retries included.
    pub p50_ms: f64,
    /// 99th-percentile request latency in milliseconds, client retries included.
    pub p99_ms: f64,
}

/// The whole summary.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The database the demo ran on (credentials removed).
    pub database: String,
    /// Where the lock- and token-guarded operations kept their records (`memory`, `redis`,
    /// `redis-cluster`).
    pub kv: String,
    /// Concurrent requests in flight.
    pub concurrency: usize,
    /// `true` when every operation applied exactly one effect per key, with no errors.
    pub ok: bool,
    /// Per-operation lines.
    pub operations: Vec<OperationReport>,
}

/// The `q`-quantile (0..=1) of `samples` in milliseconds (nearest rank); 0 when empty.
pub fn quantile_ms(samples: &mut [f64], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    (samples[rank - 1] * 1000.0).round() / 1000.0
}

impl Report {
    /// The summary as an aligned text table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "database: {}   key-value store: {}   concurrency: {}\n{:<20} {:<20} {:<9} {:>8} {:>6} {:>7} {:>7} {:>10} {:>11} {:>10} {:>6} {:>8} {:>8}\n",
            self.database,
            self.kv,
            self.concurrency,
            "operation",
            "strategy",
            "backend",
            "requests",
            "keys",
            "effects",
            "replays",
            "duplicates",
            "in_progress",
            "mismatches",
            "errors",
            "p50_ms",
            "p99_ms"
        );
        for o in &self.operations {
            out.push_str(&format!(
                "{:<20} {:<20} {:<9} {:>8} {:>6} {:>7} {:>7} {:>10} {:>11} {:>10} {:>6} {:>8.2} {:>8.2}\n",
                o.operation,
                o.strategy,
                o.backend,
                o.requests,
                o.keys,
                o.effects,
                o.replays,
                o.duplicates,
                o.in_progress,
                o.mismatches,
                o.errors,
                o.p50_ms,
                o.p99_ms
            ));
        }
        out.push_str(concat!(
            "effects: ledger rows written by the bodies (must equal keys). replays: stored response returned.\n",
            "duplicates: Error::Duplicate (strategies that store no response). in_progress: InProgress answers, retried by the client.\n",
            "mismatches: same key, different payload, refused; one request per key carries another payload, and when it\n",
            "  arrives first the honest client's requests are the refused ones, so mismatches can exceed keys.\n",
        ));
        out
    }

    /// `true` when every operation applied exactly one effect per key and saw no error.
    pub fn ok(&self) -> bool {
        self.operations
            .iter()
            .all(|o| o.effects == o.keys && o.errors == 0)
    }
}
