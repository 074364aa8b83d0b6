//! The hand-written side: the same protocol as each store of the runtime, written directly on
//! the store (a sharded `Mutex<HashMap>`, the runtime's own Lua scripts through redis-rs, the
//! runtime's SQL statements through sqlx), with `serde_json` for the response.
//!
//! Deliberately minimal where the framework does more (see the crate's docs): plain-text keys,
//! a counter as owner token, the amount as fingerprint, no JSON round-trip check, no completion
//! task, no renewal, no retries. A busy key, a lost claim or a mismatch is an error here, never
//! hit in the benchmark (every key is fresh or completed).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::{AppError, Req};

pub mod memory;
pub mod redis;
pub mod sql;

/// Lease and TTL of the hand-written records: the runtime's defaults (30 s, 24 h).
pub const LEASE_MS: i64 = 30_000;
pub const TTL_MS: i64 = 24 * 60 * 60 * 1000;

/// The record's key: `op:tenant:id` as text (at most 64 bytes for the SQL column).
pub fn key(op: &str, req: &Req) -> String {
    format!("{op}:{}:{}", req.tenant, req.id)
}

/// The request's fingerprint: its amount, the only field that varies per payload here.
pub fn fingerprint(req: &Req) -> String {
    req.amount.to_string()
}

/// A fresh owner token: 32 hex characters from a process counter (the runtime's are as long).
pub fn owner() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{:032x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

pub(crate) fn busy() -> AppError {
    AppError::Hand("the key is in progress".into())
}

pub(crate) fn lost() -> AppError {
    AppError::Hand("the claim was lost before completion".into())
}

pub(crate) fn mismatch() -> AppError {
    AppError::Hand("fingerprint mismatch".into())
}
