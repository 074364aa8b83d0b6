//! `terminal = "path"` on each replaying strategy, with a serializable error type.

use idempotent_runtime::{MemoryStore, idempotent};
use idempotent_tests::Req;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum PayError {
    #[serde(skip)]
    Idempotency(idempotent_runtime::Error),
    Declined,
}

impl From<idempotent_runtime::Error> for PayError {
    fn from(e: idempotent_runtime::Error) -> Self {
        PayError::Idempotency(e)
    }
}

impl PayError {
    fn is_terminal(&self) -> bool {
        matches!(self, PayError::Declined)
    }
}

#[idempotent(
    strategy = "dedup_table",
    key = "req.id",
    terminal = "PayError::is_terminal"
)]
pub async fn place(store: &MemoryStore, req: &Req) -> Result<u32, PayError> {
    let _ = req;
    Err(PayError::Declined)
}

#[idempotent(
    strategy = "distributed_lock",
    key = "req.id",
    terminal = "PayError::is_terminal"
)]
pub async fn settle(store: &MemoryStore, req: &Req) -> Result<u32, PayError> {
    let _ = req;
    Ok(1)
}

#[idempotent(strategy = "token", key = "req.id", terminal = "PayError::is_terminal")]
pub async fn book(store: &MemoryStore, req: &Req) -> Result<u32, PayError> {
    let _ = req;
    Ok(1)
}

pub fn main() {}
