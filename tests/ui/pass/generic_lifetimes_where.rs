//! A generic function with lifetimes, a `where` clause and a borrowed key.

use idempotent_runtime::idempotent;
use idempotent_tests::{AppError, Receipt};

use std::fmt::Debug;

use serde::Serialize;

#[idempotent(strategy = "dedup_table", key = ["tenant", "payload.id()"], fingerprint = "payload")]
pub async fn place<'a, 'b, S, P>(
    store: &'a S,
    tenant: &'b str,
    payload: &'b P,
) -> Result<Receipt, AppError>
where
    S: idempotent_runtime::ClaimStore + ?Sized,
    P: HasId + Serialize + Debug + Sync,
{
    let _ = store;
    Ok(Receipt {
        tenant: tenant.to_owned(),
        id: format!("{payload:?}"),
        amount: 0,
        serial: 1,
    })
}

pub trait HasId {
    fn id(&self) -> &str;
}

#[derive(Debug, Serialize)]
pub struct Payload {
    pub id: String,
}

impl HasId for Payload {
    fn id(&self) -> &str {
        &self.id
    }
}

pub fn main() {}
