//! Ledgers that count effects: the DDL of a per-test ledger table ([`ledger_ddl`]) and the
//! in-memory ledger of a test service ([`Effects`]), so a test asserts "exactly one effect per
//! key".

use crate::fixtures::{AppError, Gate, Receipt, Req};

/// The DDL of a ledger table: one row per effect (`k` = key, `tenant`, `amount`). The same text
/// works on PostgreSQL, MySQL and SQLite.
pub fn ledger_ddl(table: &str) -> String {
    format!(
        "CREATE TABLE {table} (k VARCHAR(1100) NOT NULL, tenant VARCHAR(200) NOT NULL, amount BIGINT NOT NULL)"
    )
}

/// The effects of a test service whose ledger lives in memory: a [`Gate`] to hold bodies, a
/// one-shot failure switch, the ledger of `(tenant, key, amount)` rows and an execution
/// counter. Services keep one and deref to it, so tests read `svc.gate`, `svc.count(&r)`.
#[derive(Debug, Default)]
pub struct Effects {
    /// Holds the next body when armed.
    pub gate: Gate,
    /// When set, the next body fails with [`AppError::Rejected`] and writes nothing.
    pub fail_next: std::sync::atomic::AtomicBool,
    ledger: std::sync::Mutex<Vec<(String, String, i64)>>,
    serial: std::sync::atomic::AtomicU64,
}

impl Effects {
    /// The body: passes the gate, fails once if `fail_next` is set, otherwise writes one ledger
    /// row and returns a receipt numbered by execution (1, 2, …).
    pub async fn apply(&self, req: &Req) -> Result<Receipt, AppError> {
        use std::sync::atomic::Ordering::SeqCst;
        self.gate.pass().await;
        if self.fail_next.swap(false, SeqCst) {
            return Err(AppError::Rejected);
        }
        self.ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((req.tenant.clone(), req.id.clone(), req.amount));
        Ok(Receipt {
            tenant: req.tenant.clone(),
            id: req.id.clone(),
            amount: req.amount,
            serial: self.serial.fetch_add(1, SeqCst) + 1,
        })
    }

    /// Ledger rows written for exactly this request (tenant, key and amount).
    pub fn count(&self, r: &Req) -> usize {
        self.rows()
            .iter()
            .filter(|(t, k, a)| *t == r.tenant && *k == r.id && *a == r.amount)
            .count()
    }

    /// All ledger rows written.
    pub fn total(&self) -> usize {
        self.rows().len()
    }

    fn rows(&self) -> std::sync::MutexGuard<'_, Vec<(String, String, i64)>> {
        self.ledger
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
