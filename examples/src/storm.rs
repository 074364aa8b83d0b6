//! The storm: per idempotency key, a first call, concurrent duplicates and a same-key request
//! with a different payload all in flight together, then retries after completion — with a
//! fixed number of requests in flight.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use crate::report::Outcome;

/// Requests per key: a first call, 3 concurrent duplicates, 1 different payload (phase 1) and
/// 2 retries after completion (phase 2).
pub const REQUESTS_PER_KEY: usize = 7;

/// One request of the storm: which key, and whether it carries a different payload.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    /// Index of the idempotency key (0..keys).
    pub key: usize,
    /// `true` for the same-key-different-payload request.
    pub different_payload: bool,
}

/// What one attempt of a request got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Final answer.
    Done(Outcome),
    /// `InProgress`: the client pauses and retries.
    Busy,
    /// Any other error, with its text: counted as [`Outcome::Error`] and tallied by text in
    /// [`StormResult::errors`].
    Failed(String),
}

/// Results of a storm: per request its final outcome and latency, and the `InProgress`
/// answers seen on the way.
#[derive(Debug, Default)]
pub struct StormResult {
    /// Number of keys.
    pub keys: usize,
    /// Final outcome and latency of each request.
    pub requests: Vec<(Outcome, Duration)>,
    /// `InProgress` answers (each was retried).
    pub in_progress: u64,
    /// The requests that ended in an error, counted per error text (one line each in the
    /// demo's output instead of one line per request).
    pub errors: BTreeMap<String, u64>,
}

/// The error text of a request still answered `InProgress` after every retry.
pub const STILL_BUSY: &str = "still in progress after 200 retries";

/// The two phases of calls for `keys` keys.
pub fn plan(keys: usize) -> (Vec<Call>, Vec<Call>) {
    let mut first = Vec::with_capacity(keys * 5);
    let mut retries = Vec::with_capacity(keys * 2);
    for key in 0..keys {
        for i in 0..5 {
            first.push(Call {
                key,
                different_payload: i == 2,
            });
        }
        for _ in 0..2 {
            retries.push(Call {
                key,
                different_payload: false,
            });
        }
    }
    (first, retries)
}

/// Runs `requests` requests (rounded down to whole keys, at least one key) with `concurrency`
/// in flight. `call` performs one attempt; `Busy` attempts are retried after a pause
/// (2 ms doubling to 50 ms), at most 200 times, after which the request counts as an error.
pub async fn run<F, Fut>(requests: usize, concurrency: usize, call: F) -> StormResult
where
    F: Fn(Call) -> Fut,
    Fut: Future<Output = Attempt>,
{
    let keys = (requests / REQUESTS_PER_KEY).max(1);
    let (first, retries) = plan(keys);
    let mut result = StormResult {
        keys,
        ..Default::default()
    };
    for phase in [first, retries] {
        run_phase(phase, concurrency, &call, &mut result).await;
    }
    result
}

/// Sends `calls` with `concurrency` in flight; each `Busy` attempt is retried after a pause
/// (2 ms doubling to 50 ms), at most 200 times, after which the request counts as an error.
/// Appends each request's outcome and latency to `result`.
async fn run_phase<F, Fut>(calls: Vec<Call>, concurrency: usize, call: &F, result: &mut StormResult)
where
    F: Fn(Call) -> Fut,
    Fut: Future<Output = Attempt>,
{
    let done: Vec<(Outcome, Duration, u64, Option<String>)> = futures_util::stream::iter(calls)
        .map(|c| async move {
            let start = Instant::now();
            let mut busy = 0u64;
            let mut pause = Duration::from_millis(2);
            loop {
                match call(c).await {
                    Attempt::Done(o) => return (o, start.elapsed(), busy, None),
                    Attempt::Failed(e) => return (Outcome::Error, start.elapsed(), busy, Some(e)),
                    Attempt::Busy if busy < 200 => {
                        busy += 1;
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_millis(50));
                    }
                    Attempt::Busy => {
                        return (
                            Outcome::Error,
                            start.elapsed(),
                            busy,
                            Some(STILL_BUSY.to_owned()),
                        );
                    }
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    for (o, d, busy, error) in done {
        result.requests.push((o, d));
        result.in_progress += busy;
        if let Some(e) = error {
            *result.errors.entry(e).or_default() += 1;
        }
    }
}

/// The worker pattern: for each of `keys` keys, `workers` identical calls in flight together
/// (all workers of a job wake up for the same period); `Busy` answers are retried as in
/// [`run`]. Requests = keys × workers.
pub async fn workers<F, Fut>(
    requests: usize,
    workers: usize,
    concurrency: usize,
    call: F,
) -> StormResult
where
    F: Fn(Call) -> Fut,
    Fut: Future<Output = Attempt>,
{
    let workers = workers.max(1);
    let keys = (requests / workers).max(1);
    let calls: Vec<Call> = (0..keys)
        .flat_map(|key| {
            std::iter::repeat_n(
                Call {
                    key,
                    different_payload: false,
                },
                workers,
            )
        })
        .collect();
    let mut result = StormResult {
        keys,
        ..Default::default()
    };
    run_phase(calls, concurrency, &call, &mut result).await;
    result
}
