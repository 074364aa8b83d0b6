//! `token` stores the response under the token for replay, so `T` must be
//! `Serialize + DeserializeOwned`; `Ticket` is neither.

use idempotent_runtime::{MemoryStore, idempotent};
use idempotent_tests::{AppError, Req};

pub struct Ticket {
    pub seat: u32,
}

#[idempotent(strategy = "token", key = "req.id")]
pub async fn book(store: &MemoryStore, req: &Req) -> Result<Ticket, AppError> {
    let _ = req;
    Ok(Ticket { seat: 1 })
}

fn main() {}
