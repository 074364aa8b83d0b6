//! What a call tells the outside: one `tracing` span per call and one event per decision, and,
//! with the `metrics` feature, metrics through the [`metrics`](https://docs.rs/metrics) facade
//! (so the application picks the exporter: Prometheus, StatsD, …).
//!
//! **Span.** Every strategy's entry point runs inside a span named [`SPAN`]
//! (`idempotent.call`, level INFO, target `idempotent`) with the fields `operation` (the
//! operation name, for the replaying strategies), `strategy` (`"dedup_table"`, …), `store`
//! ([`Store::backend_name`](crate::Store::backend_name): `"postgres"`, `"redis"`, …) and
//! `key` — the first [`KEY_PREFIX_LEN`] hex characters of the storage key's SHA-256 digest
//! ([`StorageKey::hex`]), enough to find the record with [`admin`](crate::admin) and never
//! the raw idempotency key, the scope or any argument. The business-table strategies, which
//! keep no record, have `table` instead of `operation` and `key`.
//!
//! **Events.** Each decision is one INFO event (target `idempotent`) in that span with the
//! field `decision` set to a [`Decision`]'s name ([`Decision::as_str`]).
//!
//! **Metrics** (feature `metrics`; names in [`metric`]):
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `idempotent_calls_total` | counter | `operation`, `strategy`, `store`, `outcome` |
//! | `idempotent_call_duration_seconds` | histogram | `operation`, `strategy`, `outcome` |
//! | `idempotent_wait_duration_seconds` | histogram | `operation`, `strategy` |
//! | `idempotent_in_flight` | gauge | `operation`, `strategy` |
//!
//! **Cost when nothing listens.** Without the `metrics` feature and with no `tracing`
//! subscriber enabling INFO for target `idempotent`, a call creates no span and no per-call
//! state (the check is a load and a compare).
//!
//! `outcome` is one of [`Outcome::as_str`]'s names; `operation` is the table name for the
//! business-table strategies.

use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use tracing::Instrument;

use crate::{Error, StorageKey};

/// The name of the span every call runs in.
pub const SPAN: &str = "idempotent.call";

/// How many hex characters of the storage key's digest the span's `key` field holds (48 bits:
/// enough to tell keys apart in a log, not to recover anything).
pub const KEY_PREFIX_LEN: usize = 12;

/// The metric names (feature `metrics`).
pub mod metric {
    /// Counter: calls finished, by `operation`, `strategy`, `store` and `outcome`.
    pub const CALLS: &str = "idempotent_calls_total";
    /// Histogram: seconds from a call's start to its end (a replay, an execution or an error),
    /// by `operation`, `strategy` and `outcome`.
    pub const CALL_DURATION: &str = "idempotent_call_duration_seconds";
    /// Histogram: seconds a duplicate spent waiting for an in-progress call
    /// (`on_busy = "wait(..)"`), by `operation` and `strategy`.
    pub const WAIT_DURATION: &str = "idempotent_wait_duration_seconds";
    /// Gauge: claims (claims, locks, consumed tokens, business transactions) held right now by
    /// this process, by `operation` and `strategy`.
    pub const IN_FLIGHT: &str = "idempotent_in_flight";
}

/// One decision a call made, reported as the event field `decision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// The call acquired its claim, lock or token (or a business strategy its transaction's
    /// guard): the body runs next.
    Claimed,
    /// The body ran and its result was recorded (committed).
    Executed,
    /// The stored response of an earlier call was returned; the body did not run.
    Replayed,
    /// Another caller holds the key: the call was refused ([`Error::InProgress`],
    /// [`Error::WaitTimeout`]).
    InProgress,
    /// The call waited for another caller's in-progress call (`on_busy = "wait(..)"`); the
    /// event has `waited_ms`. Reported once per call, before the decision the wait ended in.
    Waited,
    /// The key was used before with another request payload ([`Error::FingerprintMismatch`]).
    FingerprintMismatch,
    /// The call's claim expired or was taken over (evicted) before it completed: the call fails
    /// with [`Error::LockLost`] — or, when the body's error was a terminal one to store, with
    /// that error, unstored.
    LockLost,
    /// The body failed (or acquisition took the whole lease) and the claim was given back, so a
    /// retry runs again (a `token` restored).
    Released,
    /// Recording the body's response failed with a backend error and is tried again.
    CompletionRetried,
    /// A SQL statement or transaction hit a deadlock, a serialization failure or SQLite busy
    /// and runs again: a business strategy's whole transaction, or a `dedup_table` claim step
    /// (claim mode: the claim, take-over or release statement; transactional mode: the claim
    /// transaction). Reported once per rerun.
    ContentionRetry,
    /// A strategy that stores no response found the operation done ([`Error::Duplicate`], or
    /// `on_duplicate`).
    Duplicate,
    /// The body failed with an error its policy calls terminal: the error was stored and is
    /// replayed to duplicates for the record's TTL.
    StoredError,
}

impl Decision {
    /// The name in the event's `decision` field: `"claimed"`, `"executed"`, `"replayed"`,
    /// `"in_progress"`, `"waited"`, `"fingerprint_mismatch"`, `"lock_lost"`, `"released"`,
    /// `"completion_retried"`, `"contention_retry"`, `"duplicate"`, `"stored_error"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Claimed => "claimed",
            Decision::Executed => "executed",
            Decision::Replayed => "replayed",
            Decision::InProgress => "in_progress",
            Decision::Waited => "waited",
            Decision::FingerprintMismatch => "fingerprint_mismatch",
            Decision::LockLost => "lock_lost",
            Decision::Released => "released",
            Decision::CompletionRetried => "completion_retried",
            Decision::ContentionRetry => "contention_retry",
            Decision::Duplicate => "duplicate",
            Decision::StoredError => "stored_error",
        }
    }
}

/// How a call ended, the `outcome` label of the call metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The body ran and its result was recorded.
    Executed,
    /// A stored response (or stored terminal error) was returned.
    Replayed,
    /// Refused: another caller holds the key.
    InProgress,
    /// Refused: another payload used this key.
    FingerprintMismatch,
    /// The claim was lost before completion.
    LockLost,
    /// A strategy storing no response found the operation done.
    Duplicate,
    /// The body failed; its claim was released (or, terminal, its error stored).
    BodyError,
    /// Anything else: an invalid option or key, a backend failure, a dropped future.
    Error,
}

impl Outcome {
    /// The label value: `"executed"`, `"replayed"`, `"in_progress"`, `"fingerprint_mismatch"`,
    /// `"lock_lost"`, `"duplicate"`, `"body_error"`, `"error"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Executed => "executed",
            Outcome::Replayed => "replayed",
            Outcome::InProgress => "in_progress",
            Outcome::FingerprintMismatch => "fingerprint_mismatch",
            Outcome::LockLost => "lock_lost",
            Outcome::Duplicate => "duplicate",
            Outcome::BodyError => "body_error",
            Outcome::Error => "error",
        }
    }

    const ALL: [Outcome; 8] = [
        Outcome::Executed,
        Outcome::Replayed,
        Outcome::InProgress,
        Outcome::FingerprintMismatch,
        Outcome::LockLost,
        Outcome::Duplicate,
        Outcome::BodyError,
        Outcome::Error,
    ];

    fn from_decision(d: Decision) -> Option<Outcome> {
        Some(match d {
            Decision::Executed => Outcome::Executed,
            Decision::Replayed => Outcome::Replayed,
            Decision::InProgress => Outcome::InProgress,
            Decision::FingerprintMismatch => Outcome::FingerprintMismatch,
            Decision::LockLost => Outcome::LockLost,
            Decision::Duplicate => Outcome::Duplicate,
            Decision::Released | Decision::StoredError => Outcome::BodyError,
            _ => return None,
        })
    }
}

/// The state of one call, for its metrics: how it ended so far, and since when it waits.
struct Call {
    /// Index into [`Outcome::ALL`] plus one; 0 while undecided.
    outcome: AtomicU8,
    /// When the current wait for another caller began, until reported.
    waiting_since: Mutex<Option<tokio::time::Instant>>,
    #[cfg(feature = "metrics")]
    metrics: metered::Metered,
}

tokio::task_local! {
    static CALL: Call;
}

/// The key field of the span: a prefix of the storage key's digest.
pub(crate) fn key_prefix(key: &StorageKey) -> String {
    // Only the bytes the prefix shows are encoded (a call's span must not hex-encode the
    // whole digest again).
    let mut hex = crate::key::lower_hex(&key.digest()[..KEY_PREFIX_LEN.div_ceil(2)]);
    hex.truncate(KEY_PREFIX_LEN);
    hex
}

/// A call about to run: its span and its metrics state, or nothing when nothing listens.
pub(crate) struct Traced {
    listening: Option<(tracing::Span, Call)>,
}

pin_project_lite::pin_project! {
    /// The future of [`Traced::run`]: the strategy's future on the heap, alone when nothing
    /// listens, else inside the call's task-local state and span.
    #[project = TracedProj]
    pub(crate) enum TracedFuture<F: Future> {
        Quiet { fut: Pin<Box<F>> },
        Listening { #[pin] fut: tracing::instrument::Instrumented<tokio::task::futures::TaskLocalFuture<Call, Pin<Box<F>>>> },
    }
}

impl<F: Future> Future for TracedFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        match self.project() {
            TracedProj::Quiet { fut } => fut.as_mut().poll(cx),
            TracedProj::Listening { fut } => fut.poll(cx),
        }
    }
}

impl Traced {
    /// Runs the call's future in its span, recording its metrics.
    ///
    /// The future is moved to the heap first, once (one allocation per call): the layers
    /// above (the macro's adapter, the caller) then move a pointer, not the strategy's state
    /// (about a kilobyte, copied at each layer's first poll, replays included); and a debug
    /// build no longer copies it on the stack once per wrapper when first polled, which
    /// overflowed tokio's 2 MiB worker stack under a deep caller (the fault matrix's
    /// cancelling `select!`). When nothing listens (see [`listening`]) there is no span and
    /// no task-local state around it.
    pub(crate) fn run<F: Future>(self, fut: F) -> TracedFuture<F> {
        match self.listening {
            None => TracedFuture::Quiet { fut: Box::pin(fut) },
            Some((span, call)) => TracedFuture::Listening {
                fut: CALL.scope(call, Box::pin(fut)).instrument(span),
            },
        }
    }
}

/// `true` when something may want a call's span, events or metrics: the `metrics` feature is
/// on, or a `tracing` subscriber enables INFO for target `idempotent` (the span, or the
/// events alone). Checked once per call; with no subscriber it is a load and a compare.
fn listening(span: impl FnOnce() -> tracing::Span) -> Option<tracing::Span> {
    #[cfg(test)]
    if let Some(listen) = tests::LISTEN.get() {
        return listen.then(span);
    }
    if !cfg!(feature = "metrics") && !tracing::level_enabled!(tracing::Level::INFO) {
        return None;
    }
    let span = span();
    let wanted = cfg!(feature = "metrics")
        || !span.is_disabled()
        || tracing::enabled!(target: "idempotent", tracing::Level::INFO);
    wanted.then_some(span)
}

/// A replaying call on `key`, by `strategy` on a `store` (its backend name).
pub(crate) fn traced(strategy: &'static str, store: &'static str, key: &StorageKey) -> Traced {
    let span = listening(|| {
        tracing::info_span!(
            target: "idempotent",
            "idempotent.call",
            operation = key.operation(),
            strategy,
            store,
            key = tracing::field::Empty,
        )
    });
    Traced {
        listening: span.map(|span| {
            // Filled only when a subscriber wants the span: with none, the prefix is not
            // computed.
            if !span.is_disabled() {
                span.record("key", key_prefix(key));
            }
            (span, Call::new(strategy, store, key.operation()))
        }),
    }
}

/// A business-table call on `table`, by `strategy` on a `store` (its backend name).
#[cfg(feature = "sqlx")]
pub(crate) fn traced_business(strategy: &'static str, store: &'static str, table: &str) -> Traced {
    let span = listening(
        || tracing::info_span!(target: "idempotent", "idempotent.call", table, strategy, store),
    );
    Traced {
        listening: span.map(|span| (span, Call::new(strategy, store, table))),
    }
}

impl Call {
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    fn new(strategy: &'static str, store: &'static str, operation: &str) -> Self {
        Call {
            outcome: AtomicU8::new(0),
            waiting_since: Mutex::new(None),
            #[cfg(feature = "metrics")]
            metrics: metered::Metered::new(strategy, store, operation),
        }
    }

    fn note(&self, d: Decision) {
        if let Some(o) = Outcome::from_decision(d)
            && let Some(i) = Outcome::ALL.iter().position(|x| *x == o)
        {
            self.outcome.store(i as u8 + 1, Ordering::Relaxed);
        }
        #[cfg(feature = "metrics")]
        match d {
            Decision::Claimed => self.metrics.claimed(),
            Decision::Executed
            | Decision::Released
            | Decision::StoredError
            | Decision::LockLost => self.metrics.unclaimed(),
            _ => {}
        }
    }

    #[cfg_attr(not(any(test, feature = "metrics")), allow(dead_code))]
    fn outcome(&self) -> Outcome {
        match self.outcome.load(Ordering::Relaxed) {
            0 => Outcome::Error,
            i => Outcome::ALL[usize::from(i - 1)],
        }
    }

    /// Reports a wait that is over: the `waited` event, and its duration.
    fn end_wait(&self) {
        let since = match self.waiting_since.lock() {
            Ok(mut w) => w.take(),
            Err(_) => None,
        };
        if let Some(since) = since {
            let waited = since.elapsed();
            tracing::info!(
                target: "idempotent",
                decision = Decision::Waited.as_str(),
                waited_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
                "waited for an in-progress call"
            );
            #[cfg(feature = "metrics")]
            self.metrics.waited(waited);
        }
    }
}

#[cfg(feature = "metrics")]
impl Drop for Call {
    fn drop(&mut self) {
        self.metrics.finish(self.outcome());
    }
}

/// Reports decision `d` of the current call: its event and, for the call's metrics, its
/// outcome so far. Outside a traced call (a completion task), only the event.
pub(crate) fn event(d: Decision) {
    let _ = CALL.try_with(|c| {
        if d != Decision::Waited {
            c.end_wait();
        }
        c.note(d);
    });
    tracing::info!(target: "idempotent", decision = d.as_str(), "idempotent decision");
}

/// The current call is about to wait for another caller's in-progress call.
pub(crate) fn waiting() {
    let _ = CALL.try_with(|c| {
        if let Ok(mut w) = c.waiting_since.lock() {
            w.get_or_insert_with(tokio::time::Instant::now);
        }
    });
}

/// Reports the decision an error stands for ([`Error::FingerprintMismatch`],
/// [`Error::InProgress`], [`Error::WaitTimeout`], [`Error::LockLost`]), passing `r` on.
pub(crate) fn check<R>(r: Result<R, Error>) -> Result<R, Error> {
    if let Err(e) = &r {
        match e {
            Error::FingerprintMismatch => event(Decision::FingerprintMismatch),
            Error::InProgress | Error::WaitTimeout(_) => event(Decision::InProgress),
            Error::LockLost => event(Decision::LockLost),
            Error::Duplicate => event(Decision::Duplicate),
            _ => {}
        }
    }
    r
}

/// How the current call has ended so far (for tests of this module).
#[cfg(test)]
fn current_outcome() -> Option<Outcome> {
    CALL.try_with(Call::outcome).ok()
}

#[cfg(feature = "metrics")]
mod metered {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::{Outcome, metric};

    /// The labels of one call's metrics, and whether it holds a claim counted in flight.
    pub(super) struct Metered {
        strategy: &'static str,
        store: &'static str,
        operation: String,
        started: tokio::time::Instant,
        in_flight: AtomicBool,
    }

    impl Metered {
        pub(super) fn new(strategy: &'static str, store: &'static str, operation: &str) -> Self {
            Metered {
                strategy,
                store,
                operation: operation.to_owned(),
                started: tokio::time::Instant::now(),
                in_flight: AtomicBool::new(false),
            }
        }

        fn in_flight(&self) -> metrics::Gauge {
            metrics::gauge!(metric::IN_FLIGHT, "operation" => self.operation.clone(), "strategy" => self.strategy)
        }

        pub(super) fn claimed(&self) {
            if !self.in_flight.swap(true, Ordering::Relaxed) {
                self.in_flight().increment(1.0);
            }
        }

        pub(super) fn unclaimed(&self) {
            if self.in_flight.swap(false, Ordering::Relaxed) {
                self.in_flight().decrement(1.0);
            }
        }

        pub(super) fn waited(&self, waited: Duration) {
            metrics::histogram!(metric::WAIT_DURATION, "operation" => self.operation.clone(), "strategy" => self.strategy)
                .record(waited.as_secs_f64());
        }

        pub(super) fn finish(&self, outcome: Outcome) {
            self.unclaimed();
            metrics::counter!(
                metric::CALLS,
                "operation" => self.operation.clone(),
                "strategy" => self.strategy,
                "store" => self.store,
                "outcome" => outcome.as_str()
            )
            .increment(1);
            metrics::histogram!(
                metric::CALL_DURATION,
                "operation" => self.operation.clone(),
                "strategy" => self.strategy,
                "outcome" => outcome.as_str()
            )
            .record(self.started.elapsed().as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    thread_local! {
        /// Overrides [`listening`]'s answer on this thread: `Some(true)` always listening,
        /// `Some(false)` never.
        pub(super) static LISTEN: Cell<Option<bool>> = const { Cell::new(None) };
    }

    #[tokio::test]
    async fn the_last_deciding_event_is_the_outcome() {
        LISTEN.set(Some(true));
        let key = crate::KeyBuilder::new("op").part("k").finish().unwrap();
        let seen = traced("dedup_table", "memory", &key)
            .run(async {
                assert_eq!(current_outcome(), Some(Outcome::Error));
                event(Decision::Claimed);
                assert_eq!(current_outcome(), Some(Outcome::Error));
                event(Decision::Executed);
                current_outcome()
            })
            .await;
        assert_eq!(seen, Some(Outcome::Executed));
        assert_eq!(current_outcome(), None);
    }

    /// With nothing listening, a call runs its future as it is (no span, no task-local state)
    /// and decides as it would with a subscriber: executed once, then replayed.
    #[tokio::test]
    async fn a_quiet_call_runs_in_place_and_decides_the_same() {
        LISTEN.set(Some(false));
        let key = crate::KeyBuilder::new("op").part("quiet").finish().unwrap();
        assert!(traced("dedup_table", "memory", &key).listening.is_none());
        let store = crate::MemoryStore::new();
        let ran = std::sync::atomic::AtomicUsize::new(0);
        let mut answers = Vec::new();
        for _ in 0..2 {
            let answer: Result<u32, Error> = crate::strategy::dedup_table::run(
                &store,
                key.clone(),
                None,
                crate::strategy::dedup_table::Options::default(),
                crate::strategy::not_compared,
                async || {
                    assert_eq!(current_outcome(), None, "no task-local state when quiet");
                    Ok(40 + ran.fetch_add(1, Ordering::SeqCst) as u32)
                },
            )
            .await;
            answers.push(answer.unwrap());
        }
        assert_eq!(answers, [40, 40]);
        assert_eq!(ran.load(Ordering::SeqCst), 1);
    }
}
