//! Benchmarks of `#[idempotent]`: every annotated path next to a hand-written function that runs
//! the same protocol (the same store round trips, statements or Lua scripts, the same
//! `serde_json` response encoding) on the same store handle, pool or connection, in the same
//! run. The ratio annotated ÷ hand-written is the framework's overhead.
//!
//! What the hand-written side does *not* do, by design (that is the overhead being measured):
//! hash the key (its key is the plain text `op:tenant:id`), fingerprint the arguments through
//! the canonical serializer (its fingerprint is the request's amount as text), draw an owner
//! token from the runtime (a process counter instead), check the response's JSON round trip,
//! spawn the completion into a task, renew leases, or retry. See `BENCHMARKS.md`.
//!
//! The binaries: `bench` (the whole table, `--write BENCHMARKS.md`) and `memcpu` (the memory
//! path under `valgrind --tool=callgrind`, run by `bench`). `scripts/bench.sh` builds and runs
//! both.

pub mod annotated;
pub mod hand;
pub mod harness;
pub mod parts;
pub mod redis_server;
pub mod store_alone;

use serde::{Deserialize, Serialize};

/// The request of every benchmarked call. `id` is the idempotency key (for `token`: the token).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Req {
    pub tenant: String,
    pub id: String,
    pub amount: u64,
}

/// The response of every benchmarked call, stored and replayed as JSON.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Receipt {
    pub tenant: String,
    pub id: String,
    pub amount: u64,
    pub total: u64,
    pub fence: u64,
}

/// The body: pure CPU, no I/O, so the figures are the protocol's cost alone.
pub fn receipt(req: &Req, fence: u64) -> Receipt {
    Receipt {
        tenant: req.tenant.clone(),
        id: req.id.clone(),
        amount: req.amount,
        total: req.amount * 3 + 1,
        fence,
    }
}

/// The error of every benchmarked function.
#[derive(Debug)]
pub enum AppError {
    Idempotency(idempotent_runtime::Error),
    /// A hand-written path's failure (busy key, lost claim, store error), as text.
    Hand(String),
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::Idempotency(e) => write!(f, "{e}"),
            AppError::Hand(e) => write!(f, "hand-written: {e}"),
        }
    }
}

impl std::error::Error for AppError {}

impl From<idempotent_runtime::Error> for AppError {
    fn from(e: idempotent_runtime::Error) -> Self {
        AppError::Idempotency(e)
    }
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> Self {
        AppError::Hand(e.to_string())
    }
}

impl From<redis::RedisError> for AppError {
    fn from(e: redis::RedisError) -> Self {
        AppError::Hand(e.to_string())
    }
}

impl From<serde_json::Error> for AppError {
    fn from(e: serde_json::Error) -> Self {
        AppError::Hand(e.to_string())
    }
}
