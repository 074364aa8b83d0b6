//! Fixtures of the test services: the request ([`Req`]), response ([`Receipt`]) and error
//! ([`AppError`]) types they share, and the pause points that line concurrency up without
//! sleeps ([`Gate`] holds one body; [`Once`] is a barrier for the first `n` passes).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

use tokio::sync::Barrier;

/// A request of the test service: an idempotency key `id` within tenant `tenant`, and a payload
/// `amount` (which the fingerprint covers).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Req {
    /// Scope of the key.
    pub tenant: String,
    /// The idempotency key.
    pub id: String,
    /// Payload.
    pub amount: i64,
}

/// A [`Req`] for idempotency key `id` in tenant `tenant` with payload `amount` (minor units).
pub fn req(tenant: &str, id: &str, amount: i64) -> Req {
    Req {
        tenant: tenant.into(),
        id: id.into(),
        amount,
    }
}

/// The response the test service returns and the strategies replay. `serial` numbers
/// executions of one service, so a replay is told from a re-execution.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Receipt {
    /// Echo of the request's tenant.
    pub tenant: String,
    /// Echo of the request's key.
    pub id: String,
    /// Echo of the payload.
    pub amount: i64,
    /// Which execution of the service produced this receipt (1, 2, …).
    pub serial: u64,
}

/// The test service's error type.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// From the idempotency runtime.
    #[error(transparent)]
    Idempotency(#[from] idempotent_runtime::Error),
    /// From the database.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// The body refused the request (a business error).
    #[error("rejected by the body")]
    Rejected,
}

/// A pause point in a body: when armed, the next body to pass signals `entered` and waits for
/// `release`. Lines concurrency up without sleeps.
#[derive(Debug, Default)]
pub struct Gate {
    armed: std::sync::atomic::AtomicBool,
    /// Signalled when an armed body reaches the gate.
    pub entered: tokio::sync::Notify,
    /// Lets the held body go on.
    pub release: tokio::sync::Notify,
}

impl Gate {
    /// Holds the next body that passes.
    pub fn arm(&self) {
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Called by bodies: holds only the first body after `arm`.
    pub async fn pass(&self) {
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.entered.notify_one();
            self.release.notified().await;
        }
    }
}

/// Waits at `barrier` the first `n` times it is called (later calls — reruns of a transaction
/// — pass straight through).
pub struct Once {
    barrier: Barrier,
    n: u32,
    /// How many calls have passed so far; set it to `n` to open the barrier for good.
    pub seen: AtomicU32,
}

impl Once {
    /// A barrier for the first `n` callers of [`pass`](Self::pass).
    pub fn new(n: usize) -> Arc<Once> {
        Arc::new(Once {
            barrier: Barrier::new(n),
            n: n as u32,
            seen: AtomicU32::new(0),
        })
    }

    /// Waits until `n` callers arrived, for the first `n` callers; later ones pass at once.
    pub async fn pass(&self) {
        if self.seen.fetch_add(1, SeqCst) < self.n {
            self.barrier.wait().await;
        }
    }
}
