//! Runs one phase: `n` calls spread over `c` tokio tasks, each call timed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use futures_util::future::BoxFuture;

use crate::{AppError, Receipt, Req};

/// One side of a path: a call of the benchmarked function on a request.
pub type Call = Arc<dyn Fn(Req) -> BoxFuture<'static, Result<Receipt, AppError>> + Send + Sync>;

/// Builds the `n` requests of a phase for a tenant (for `token`: issues `n` tokens first).
pub type Prepare =
    Arc<dyn Fn(String, usize) -> BoxFuture<'static, Result<Vec<Req>, AppError>> + Send + Sync>;

/// `n` requests `k0..k{n-1}` of `tenant`, amounts `0..n`.
pub fn plain_requests(tenant: &str, n: usize) -> Vec<Req> {
    (0..n)
        .map(|i| Req {
            tenant: tenant.to_owned(),
            id: format!("k{i}"),
            amount: i as u64,
        })
        .collect()
}

/// A phase's figures.
#[derive(Clone, Debug)]
pub struct Stats {
    pub calls: usize,
    pub seconds: f64,
    /// Latencies in µs, sorted.
    pub latencies: Vec<f64>,
}

impl Stats {
    /// Adds `other`'s calls, time and latencies (the chunks of one side's phase, run
    /// interleaved with the other sides' chunks) to these.
    pub fn merge(&mut self, other: Stats) {
        self.calls += other.calls;
        self.seconds += other.seconds;
        self.latencies.extend(other.latencies);
        self.latencies.sort_by(f64::total_cmp);
    }

    pub fn per_second(&self) -> f64 {
        self.calls as f64 / self.seconds
    }

    /// The `q` quantile of the latencies in µs (nearest rank).
    pub fn quantile(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let rank =
            ((q * self.latencies.len() as f64).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[rank - 1]
    }
}

/// Calls `call` once per request in `reqs`, from `c` concurrent tasks taking the next request
/// in turn. Fails with the first error any call returned.
pub async fn phase(call: &Call, reqs: Arc<Vec<Req>>, c: usize) -> Result<Stats, String> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..c)
        .map(|_| {
            let (call, reqs, next) = (call.clone(), reqs.clone(), next.clone());
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(reqs.len() / c + 1);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(req) = reqs.get(i) else { break };
                    let t = Instant::now();
                    let r = call(req.clone()).await;
                    lat.push(t.elapsed().as_secs_f64() * 1e6);
                    if let Err(e) = r {
                        return Err(format!("request {i} ({}/{}): {e}", req.tenant, req.id));
                    }
                }
                Ok(lat)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(reqs.len());
    for t in tasks {
        latencies.extend(t.await.map_err(|e| e.to_string())??);
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    Ok(Stats {
        calls: reqs.len(),
        seconds,
        latencies,
    })
}
