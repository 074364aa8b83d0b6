//! Durations exactly at the floors (`idempotent_runtime::strategy::durations`): a 300 ms lease,
//! a `ttl` equal to the lease, a 10 ms wait; a `ttl` equal to the default lease (30 s) and a
//! lease equal to the default `ttl` (24 h). The runtime accepts the same values
//! (tests/tests/durations.rs runs them).

use idempotent_runtime::{MemoryStore, idempotent};
use idempotent_tests::{AppError, Req};
use sqlx::SqlitePool;

#[idempotent(
    strategy = "dedup_table",
    key = "req.id",
    lease = "300ms",
    ttl = "300ms",
    on_busy = "wait(10ms)"
)]
pub async fn place(pool: &SqlitePool, req: &Req) -> Result<i64, AppError> {
    Ok(req.amount)
}

#[idempotent(strategy = "dedup_table", key = "req.id", ttl = "30s")]
pub async fn place_default_lease(pool: &SqlitePool, req: &Req) -> Result<i64, AppError> {
    Ok(req.amount)
}

#[idempotent(
    strategy = "distributed_lock",
    key = "req.id",
    lease = "300ms",
    ttl = "300ms",
    on_busy = "wait(10ms)"
)]
pub async fn settle(store: &MemoryStore, req: &Req) -> Result<i64, AppError> {
    Ok(req.amount)
}

#[idempotent(strategy = "distributed_lock", key = "req.id", lease = "24h")]
pub async fn settle_default_ttl(store: &MemoryStore, req: &Req) -> Result<i64, AppError> {
    Ok(req.amount)
}

#[idempotent(strategy = "token", key = "req.id", lease = "300ms", ttl = "300ms")]
pub async fn redeem(store: &MemoryStore, req: &Req) -> Result<i64, AppError> {
    Ok(req.amount)
}

pub fn main() {}
