//! The attribute on something that is not a function.

use idempotent_runtime::idempotent;
use idempotent_tests::Req;

#[idempotent(strategy = "dedup_table", key = "req.id")]
pub struct Place {
    pub req: Req,
}

fn main() {}
