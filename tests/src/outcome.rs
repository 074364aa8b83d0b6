//! Outcomes: [`Got`], what one caller of a test service got, with [`classify`] for the
//! replaying strategies (`observe(call)`: executed or replayed), [`got`] for the business-table
//! strategies (a plain `Result`) and [`tally`] to count a storm's callers.

use idempotent_runtime::{Disposition, Error};

use crate::fixtures::{AppError, Receipt};

/// What one caller of a test service got: the outcome a test asserts per caller.
#[derive(Debug, Clone, PartialEq)]
pub enum Got {
    /// The body ran for this call.
    Executed(Receipt),
    /// An earlier call's stored response was replayed.
    Replayed(Receipt),
    /// The call returned `Ok` (business-table strategies, which report no disposition; see
    /// [`got`]).
    Ok,
    /// `Error::InProgress`.
    InProgress,
    /// `Error::Duplicate`.
    Duplicate,
    /// `Error::Conflict` (see [`got`]).
    Conflict,
    /// `Error::NotFound` (see [`got`]).
    NotFound,
    /// Anything else, described.
    Other(String),
}

/// Classifies the result of `observe(call)` into a [`Got`]: `Executed`, `Replayed`,
/// `InProgress`, `Duplicate` or `Other`.
pub fn classify(r: (Result<Receipt, AppError>, Option<Disposition>)) -> Got {
    match r {
        (Ok(v), Some(Disposition::Executed)) => Got::Executed(v),
        (Ok(v), Some(Disposition::Replayed)) => Got::Replayed(v),
        (Err(AppError::Idempotency(Error::InProgress)), _) => Got::InProgress,
        (Err(AppError::Idempotency(Error::Duplicate)), _) => Got::Duplicate,
        (other, how) => Got::Other(format!("{other:?} / {how:?}")),
    }
}

/// Classifies the result of a business-table strategy's call into a [`Got`]: `Ok`,
/// `Duplicate`, `Conflict`, `NotFound` or `Other`.
pub fn got<T: std::fmt::Debug>(r: Result<T, AppError>) -> Got {
    match r {
        Ok(_) => Got::Ok,
        Err(AppError::Idempotency(Error::Duplicate)) => Got::Duplicate,
        Err(AppError::Idempotency(Error::Conflict(_))) => Got::Conflict,
        Err(AppError::Idempotency(Error::NotFound(_))) => Got::NotFound,
        Err(e) => Got::Other(format!("{e:?}")),
    }
}

/// Counts `(ok, duplicate)` among the callers of a storm; panics when any caller got
/// something else.
pub fn tally(all: &[Got]) -> (usize, usize) {
    let ok = all.iter().filter(|g| **g == Got::Ok).count();
    let dup = all.iter().filter(|g| **g == Got::Duplicate).count();
    assert_eq!(
        ok + dup,
        all.len(),
        "only Ok and Duplicate expected: {all:?}"
    );
    (ok, dup)
}

/// Calls `call` until it gets something other than `busy` (`Got::InProgress`, or
/// `Got::Duplicate` for `token`), 20 ms apart, and returns that outcome; panics when `within`
/// passes first. Waits out a lease or a background release by polling, never by a fixed sleep.
pub async fn poll_while<F, Fut>(busy: &Got, within: std::time::Duration, mut call: F) -> Got
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Got>,
{
    let started = tokio::time::Instant::now();
    loop {
        let got = call().await;
        if got != *busy {
            return got;
        }
        assert!(
            started.elapsed() < within,
            "still {busy:?} after {within:?}: the key was never freed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
