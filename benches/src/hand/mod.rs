//! The hand-written side: the same protocol as each store of the runtime, written directly on
//! the store (a sharded `Mutex<HashMap>`, the runtime's own Lua scripts through redis-rs, the
//! runtime's SQL statements through sqlx), with `serde_json` for the response.
//!
//! Deliberately minimal where the framework does more (see the crate's docs): plain-text keys,
//! a counter as owner token, the amount as fingerprint, no JSON round-trip check, no completion
//! task, no renewal, no retries. A busy key, a lost claim or a mismatch is an error here, never
//! hit in the benchmark (every key is fresh or completed).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use idempotent_runtime::{Fingerprinter, KeyBuilder};

use crate::{AppError, Receipt, Req};

pub mod memory;
pub mod redis;
pub mod sql;

/// Lease and TTL of the hand-written records: the runtime's defaults (30 s, 24 h).
pub const LEASE_MS: i64 = 30_000;
pub const TTL_MS: i64 = 24 * 60 * 60 * 1000;

/// Whether the hand-written side also does the work the framework must do and the minimal
/// hand-written code skips (the *hand + work* side of BENCHMARKS.md): the storage key as the
/// SHA-256 of operation, scope and key parts, the canonical fingerprint, an owner token with a
/// random per-process prefix and the response's JSON read back and compared. Off: plain-text keys, the
/// amount as fingerprint, a counter as owner, no read-back. The benchmark sets it before each
/// phase (phases run one at a time).
static FRAMEWORK_WORK: AtomicBool = AtomicBool::new(false);

/// Turns the framework's own work on or off for the hand-written side (see `FRAMEWORK_WORK`).
pub fn set_framework_work(on: bool) {
    FRAMEWORK_WORK.store(on, Ordering::Relaxed);
}

fn work() -> bool {
    FRAMEWORK_WORK.load(Ordering::Relaxed)
}

/// The record's key: `op:tenant:id` as text (at most 64 bytes for the SQL column); with the
/// framework's work on, the storage key the runtime builds (SHA-256, 64 hex characters).
pub fn key(op: &str, req: &Req) -> String {
    if work() {
        return match KeyBuilder::new(op)
            .scope(&req.tenant)
            .part(&req.id)
            .finish()
        {
            Ok(k) => k.hex().to_string(),
            Err(e) => format!("invalid key: {e}"),
        };
    }
    format!("{op}:{}:{}", req.tenant, req.id)
}

/// The key an issued token is stored under: the token itself; with the framework's work on,
/// the runtime's token key (SHA-256 of the token in its own namespace).
pub fn token_key(token: &str) -> String {
    if work() {
        return match KeyBuilder::new("idempotent::token").part(token).finish() {
            Ok(k) => k.hex().to_string(),
            Err(e) => format!("invalid token: {e}"),
        };
    }
    token.to_string()
}

/// The request's fingerprint: its amount, the only field that varies per payload here; with
/// the framework's work on, the canonical fingerprint the macro computes (64 hex characters).
pub fn fingerprint(req: &Req) -> String {
    if work() {
        return match Fingerprinter::new().arg("req", req).finish() {
            Ok(Some(f)) => f.hex().to_string(),
            Ok(None) => String::new(),
            Err(e) => format!("unfingerprintable: {e}"),
        };
    }
    req.amount.to_string()
}

/// A fresh owner token: 32 hex characters from a process counter (the runtime's are as long);
/// with the framework's work on, as the runtime's: 8 random bytes drawn once per process
/// from the OS, then the counter (unique across processes, one system call per process).
pub fn owner() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    if work() {
        static PREFIX: OnceLock<u64> = OnceLock::new();
        let prefix = PREFIX.get_or_init(|| {
            let mut b = [0u8; 8];
            let _ = getrandom::fill(&mut b);
            u64::from_be_bytes(b)
        });
        return format!("{prefix:016x}{n:016x}");
    }
    format!("{n:032x}")
}

/// The response's JSON; with the framework's work on, read back and compared with `==` as the
/// runtime's round-trip check does for a `PartialEq` response.
pub fn encode(value: &Receipt) -> Result<Vec<u8>, AppError> {
    let bytes = serde_json::to_vec(value)?;
    if work() {
        let back: Receipt = serde_json::from_slice(&bytes)?;
        if back != *value {
            return Err(AppError::Hand("the response does not read back".into()));
        }
    }
    Ok(bytes)
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
