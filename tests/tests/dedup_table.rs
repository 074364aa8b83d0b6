//! `strategy = "dedup_table"` on PostgreSQL, MySQL/MariaDB, SQLite (transactional and claim
//! modes) and the memory store (claim mode). Every test counts effects in a ledger and asserts
//! the outcome each caller got. Concurrency is lined up with barriers and gates, never sleeps.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};

use idempotent_runtime::{Disposition, Error, KeyBuilder, idempotent, observe};
use idempotent_tests::{AppError, Gate, Got, Receipt, Req, classify, poll_while, req, unique};
use tokio::sync::{Barrier, mpsc};

/// A response whose `Sent { carrier: None }` reads back as `Pending` (`#[serde(untagged)]`
/// takes the first variant that fits): replaying it would change the value.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Shipment {
    /// Not sent yet.
    Pending {
        /// The shipment.
        id: u32,
    },
    /// Sent, with the carrier if known.
    Sent {
        /// The shipment.
        id: u32,
        /// The carrier.
        carrier: Option<String>,
    },
}

/// Variants serde writes alike (`A(1)` and `B(1)` are both `1`): `B(1)` reads back as `A(1)`
/// with the same JSON; only `PartialEq` tells them apart.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Alike {
    /// Read back first.
    A(u8),
    /// Written like `A`.
    B(u8),
}

/// A field serde leaves out: `Skipped { a: 1, b: 9 }` reads back as `{ a: 1, b: 0 }` with the
/// same JSON; only `PartialEq` tells them apart.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Skipped {
    /// Written.
    pub a: u8,
    /// Not written; read back as 0.
    #[serde(skip)]
    pub b: u8,
}

/// Generates the service and the tests shared by every backend in claim mode, plus the
/// transactional-mode tests for SQL backends.
macro_rules! suite {
    (
        mod $m:ident;
        store = $store:ty;
        setup = $setup:expr;
        ledger = $ledger:ty;
        skip = $skip:meta;
        $( tx_conn = $conn:ty; )?
    ) => {
        mod $m {
            use super::*;

            pub struct Svc {
                pub db: $store,
                pub ledger: $ledger,
                pub gate: Gate,
                pub fail_next: AtomicBool,
                pub serial: AtomicU64,
            }

            impl Svc {
                fn receipt(&self, req: &Req) -> Receipt {
                    Receipt {
                        tenant: req.tenant.clone(),
                        id: req.id.clone(),
                        amount: req.amount,
                        serial: self.serial.fetch_add(1, SeqCst) + 1,
                    }
                }

                #[idempotent(strategy = "dedup_table", key = "req.id", store = "self.db", scope = "req.tenant", lease = "2s")]
                pub async fn place_claim(&self, req: &Req) -> Result<Receipt, AppError> {
                    self.gate.pass().await;
                    if self.fail_next.swap(false, SeqCst) {
                        return Err(AppError::Rejected);
                    }
                    self.ledger.record(req).await?;
                    Ok(self.receipt(req))
                }

                /// The default `on_cancel = "keep"` with a 1 s lease.
                #[idempotent(strategy = "dedup_table", key = "req.id", store = "self.db", scope = "req.tenant", lease = "1s")]
                pub async fn cancel_keep(&self, req: &Req) -> Result<Receipt, AppError> {
                    self.gate.pass().await;
                    self.ledger.record(req).await?;
                    Ok(self.receipt(req))
                }

                /// `on_cancel = "release"` with the default 30 s lease: only the release frees
                /// the key within a test's patience.
                #[idempotent(strategy = "dedup_table", key = "req.id", store = "self.db", scope = "req.tenant", on_cancel = "release")]
                pub async fn cancel_release(&self, req: &Req) -> Result<Receipt, AppError> {
                    self.gate.pass().await;
                    self.ledger.record(req).await?;
                    Ok(self.receipt(req))
                }

                /// Returns a response that does not survive a JSON round trip (NaN → null).
                #[idempotent(strategy = "dedup_table", key = "req.id", store = "self.db", scope = "req.tenant")]
                pub async fn nan_claim(&self, req: &Req) -> Result<f64, AppError> {
                    self.ledger.record(req).await?;
                    Ok(f64::NAN)
                }

                /// Returns a response that reads back as another value (an untagged enum's
                /// other variant).
                #[idempotent(strategy = "dedup_table", key = "req.id", store = "self.db", scope = "req.tenant")]
                pub async fn untagged_claim(&self, req: &Req) -> Result<Shipment, AppError> {
                    self.ledger.record(req).await?;
                    Ok(Shipment::Sent { id: 7, carrier: None })
                }

                /// Returns `Alike::B(1)` (or `A(1)` when `req.amount` is 0), which reads back
                /// as `A(1)`.
                #[idempotent(strategy = "dedup_table", key = "req.id", store = "self.db", scope = "req.tenant")]
                pub async fn alike_claim(&self, req: &Req) -> Result<Alike, AppError> {
                    self.ledger.record(req).await?;
                    Ok(if req.amount == 0 { Alike::A(1) } else { Alike::B(1) })
                }

                /// Returns `Skipped { a: 1, b: 9 }`, which reads back as `{ a: 1, b: 0 }`.
                #[idempotent(strategy = "dedup_table", key = "req.id", store = "self.db", scope = "req.tenant")]
                pub async fn skipped_claim(&self, req: &Req) -> Result<Skipped, AppError> {
                    self.ledger.record(req).await?;
                    Ok(Skipped { a: 1, b: 9 })
                }

                /// Fingerprints `req` and `amount` (issue 11 item 4: `None`, NaN, +inf and -inf
                /// all fingerprinted as `null`).
                #[idempotent(strategy = "dedup_table", key = "req.id", store = "self.db", scope = "req.tenant")]
                pub async fn charge_claim(&self, req: &Req, amount: Option<f64>) -> Result<Receipt, AppError> {
                    let _ = amount;
                    self.ledger.record(req).await?;
                    Ok(self.receipt(req))
                }

                /// A 300 ms lease, renewed while the body runs.
                #[idempotent(strategy = "dedup_table", key = "req.id", store = "self.db", scope = "req.tenant", lease = "300ms")]
                pub async fn short_lease(&self, req: &Req) -> Result<Receipt, AppError> {
                    self.gate.pass().await;
                    self.ledger.record(req).await?;
                    Ok(self.receipt(req))
                }

                #[idempotent(strategy = "dedup_table", key = "req.id", store = "self.db", scope = "req.tenant")]
                pub async fn refund_claim(&self, req: &Req) -> Result<Receipt, AppError> {
                    self.ledger.record(req).await?;
                    Ok(self.receipt(req))
                }

                $(
                /// `place_tx`'s operation name: the default, `module_path!()::place_tx`.
                pub const PLACE_TX: &str = concat!(module_path!(), "::place_tx");

                /// Transactional, with a response that does not survive a JSON round trip.
                #[idempotent(strategy = "dedup_table", key = "req.id", store = "self.db", scope = "req.tenant")]
                pub async fn nan_tx(&self, req: &Req, #[tx] tx: &mut $conn) -> Result<f64, AppError> {
                    self.ledger.record_in(&mut *tx, req).await?;
                    Ok(f64::NAN)
                }

                /// Transactional, returning `Alike::B(1)`, which reads back as `A(1)`.
                #[idempotent(strategy = "dedup_table", key = "req.id", store = "self.db", scope = "req.tenant")]
                pub async fn alike_tx(&self, req: &Req, #[tx] tx: &mut $conn) -> Result<Alike, AppError> {
                    self.ledger.record_in(&mut *tx, req).await?;
                    Ok(Alike::B(1))
                }

                /// Transactional, returning `Skipped { a: 1, b: 9 }`, which reads back as
                /// `{ a: 1, b: 0 }`.
                #[idempotent(strategy = "dedup_table", key = "req.id", store = "self.db", scope = "req.tenant")]
                pub async fn skipped_tx(&self, req: &Req, #[tx] tx: &mut $conn) -> Result<Skipped, AppError> {
                    self.ledger.record_in(&mut *tx, req).await?;
                    Ok(Skipped { a: 1, b: 9 })
                }

                #[idempotent(strategy = "dedup_table", key = "req.id", store = "self.db", scope = "req.tenant")]
                pub async fn place_tx(&self, req: &Req, #[tx] tx: &mut $conn) -> Result<Receipt, AppError> {
                    self.ledger.record_in(&mut *tx, req).await?;
                    self.gate.pass().await;
                    if self.fail_next.swap(false, SeqCst) {
                        return Err(AppError::Rejected);
                    }
                    Ok(self.receipt(req))
                }
                )?
            }

            pub async fn svc() -> Option<(Arc<Svc>, Box<dyn std::any::Any + Send>)> {
                let (db, guard) = $setup.await?;
                let ledger = <$ledger>::create(&db).await;
                Some((
                    Arc::new(Svc {
                        db,
                        ledger,
                        gate: Gate::default(),
                        fail_next: AtomicBool::new(false),
                        serial: AtomicU64::new(0),
                    }),
                    Box::new(guard),
                ))
            }

            claim_tests!(place_claim, $skip);
            $( tx_tests!($conn, $skip); )?
        }
    };
}

/// 64 callers on one key, lined up with a barrier. The first to claim is held at the gate;
/// `hold_for_others` keeps it there until every other caller has answered (claim mode, where
/// duplicates answer `InProgress` at once).
async fn storm<F, Fut>(svc_gate: &Gate, call: F, hold_for_others: bool) -> Vec<Got>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Got> + Send + 'static,
{
    const N: usize = 64;
    let barrier = Arc::new(Barrier::new(N));
    let (tx, mut rx) = mpsc::unbounded_channel();
    svc_gate.arm();
    for _ in 0..N {
        let barrier = barrier.clone();
        let tx = tx.clone();
        let fut = call();
        tokio::spawn(async move {
            barrier.wait().await;
            let _ = tx.send(fut.await);
        });
    }
    drop(tx);
    svc_gate.entered.notified().await;
    let mut got = Vec::new();
    if hold_for_others {
        for _ in 0..N - 1 {
            got.push(rx.recv().await.expect("a caller vanished"));
        }
    }
    svc_gate.release.notify_one();
    while let Some(g) = rx.recv().await {
        got.push(g);
    }
    assert_eq!(got.len(), N);
    got
}

fn assert_one_executed(got: &[Got]) -> Receipt {
    let executed: Vec<_> = got
        .iter()
        .filter_map(|g| match g {
            Got::Executed(r) => Some(r.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(executed.len(), 1, "exactly one caller executes: {got:?}");
    let first = executed[0].clone();
    for g in got {
        match g {
            Got::Executed(_) | Got::InProgress => {}
            Got::Replayed(r) => assert_eq!(r, &first, "a replay returns the stored response"),
            other => panic!("unexpected outcome: {other:?}"),
        }
    }
    first
}

macro_rules! claim_tests {
    ($call:ident, $skip:meta) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        #[$skip]
        async fn concurrent_64_one_key_one_effect() {
            let Some((svc, _g)) = svc().await else { return };
            let r = req(&unique("t"), "order-1", 100);
            let got = storm(
                &svc.gate,
                || {
                    let (svc, r) = (svc.clone(), r.clone());
                    async move { classify(observe(svc.$call(&r)).await) }
                },
                true,
            )
            .await;
            assert_one_executed(&got);
            assert_eq!(
                got.iter().filter(|g| **g == Got::InProgress).count(),
                63,
                "claim mode rejects concurrent duplicates: {got:?}"
            );
            assert_eq!(svc.ledger.count(&r).await, 1);
            // After completion every duplicate replays.
            let again = classify(observe(svc.$call(&r)).await);
            assert!(matches!(again, Got::Replayed(_)), "{again:?}");
            assert_eq!(svc.ledger.count(&r).await, 1);
        }

        #[tokio::test]
        #[$skip]
        async fn retry_after_completion_replays_the_same_response() {
            let Some((svc, _g)) = svc().await else { return };
            let r = req(&unique("t"), "order-1", 100);
            let first = classify(observe(svc.$call(&r)).await);
            let second = classify(observe(svc.$call(&r)).await);
            let Got::Executed(a) = first else {
                panic!("{first:?}")
            };
            assert_eq!(second, Got::Replayed(a));
            assert_eq!(svc.ledger.count(&r).await, 1);
        }

        #[tokio::test]
        #[$skip]
        async fn same_key_different_payload_is_a_fingerprint_mismatch() {
            let Some((svc, _g)) = svc().await else { return };
            let t = unique("t");
            svc.$call(&req(&t, "order-1", 100)).await.unwrap();
            let e = svc.$call(&req(&t, "order-1", 999)).await;
            assert!(
                matches!(e, Err(AppError::Idempotency(Error::FingerprintMismatch))),
                "{e:?}"
            );
            assert_eq!(svc.ledger.count(&req(&t, "order-1", 100)).await, 1);
            assert_eq!(svc.ledger.count(&req(&t, "order-1", 999)).await, 0);
        }

        /// Issue 11 item 4: a call with `amount = None`, then the same key with `+inf`, was
        /// replayed; every other amount — non-finite ones included — is another payload.
        #[tokio::test]
        #[$skip]
        async fn none_and_non_finite_amounts_are_different_payloads() {
            let Some((svc, _g)) = svc().await else { return };
            let t = unique("t");
            let amounts = [
                None,
                Some(f64::INFINITY),
                Some(f64::NEG_INFINITY),
                Some(f64::NAN),
                Some(0.0),
            ];
            for (i, first) in amounts.iter().enumerate() {
                let r = req(&t, &format!("charge-{i}"), 100);
                let done = classify(observe(svc.charge_claim(&r, *first)).await);
                let Got::Executed(receipt) = done else {
                    panic!("{first:?}: {done:?}")
                };
                for other in amounts.iter().filter(|a| format!("{a:?}") != format!("{first:?}")) {
                    let (e, how) = observe(svc.charge_claim(&r, *other)).await;
                    assert!(
                        matches!(e, Err(AppError::Idempotency(Error::FingerprintMismatch))),
                        "{first:?} then {other:?}: {e:?}"
                    );
                    assert_eq!(how, None, "{first:?} then {other:?}");
                }
                // The same amount again (NaN included: every NaN is one value) replays.
                let again = classify(observe(svc.charge_claim(&r, *first)).await);
                assert_eq!(again, Got::Replayed(receipt), "{first:?}");
                assert_eq!(svc.ledger.count(&r).await, 1, "{first:?}: the body ran once");
            }
        }

        #[tokio::test]
        #[$skip]
        async fn scopes_and_operations_are_isolated() {
            let Some((svc, _g)) = svc().await else { return };
            let (a, b) = (req(&unique("ta"), "same", 1), req(&unique("tb"), "same", 1));
            let ra = svc.$call(&a).await.unwrap();
            let rb = svc.$call(&b).await.unwrap();
            assert_ne!(ra, rb, "tenant B must not replay tenant A's response");
            assert_eq!(
                (ra.tenant.as_str(), rb.tenant.as_str()),
                (a.tenant.as_str(), b.tenant.as_str())
            );
            assert_eq!(svc.ledger.count(&a).await, 1);
            assert_eq!(svc.ledger.count(&b).await, 1);
            // Another operation with the same key and scope runs on its own.
            let (refund, how) = observe(svc.refund_claim(&a)).await;
            assert_eq!(how, Some(Disposition::Executed));
            assert_ne!(refund.unwrap(), ra);
            assert_eq!(svc.ledger.count(&a).await, 2);
        }

        #[tokio::test]
        #[$skip]
        async fn body_error_leaves_no_record_and_the_retry_executes() {
            let Some((svc, _g)) = svc().await else { return };
            let r = req(&unique("t"), "order-1", 100);
            svc.fail_next.store(true, SeqCst);
            let e = svc.$call(&r).await;
            assert!(matches!(e, Err(AppError::Rejected)), "{e:?}");
            assert_eq!(svc.ledger.count(&r).await, 0);
            let (retry, how) = observe(svc.$call(&r)).await;
            assert_eq!(how, Some(Disposition::Executed), "{retry:?}");
            assert_eq!(svc.ledger.count(&r).await, 1);
        }

        /// `on_cancel = "keep"` (the default): a future dropped mid-body keeps its claim, so the
        /// immediate retry gets `InProgress` and writes nothing; once the 1 s lease has ended
        /// (nobody renews it) a retry executes exactly once, and later ones replay.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[$skip]
        async fn dropped_mid_body_keeps_the_claim_until_the_lease_ends() {
            let Some((svc, _g)) = svc().await else { return };
            let r = req(&unique("t"), "order-1", 100);
            let before_claim = std::time::Instant::now();
            svc.gate.arm();
            let task = tokio::spawn({
                let (svc, r) = (svc.clone(), r.clone());
                async move { svc.cancel_keep(&r).await }
            });
            svc.gate.entered.notified().await;
            task.abort();
            assert!(task.await.unwrap_err().is_cancelled());
            assert_eq!(
                classify(observe(svc.cancel_keep(&r)).await),
                Got::InProgress
            );
            assert_eq!(
                svc.ledger.count(&r).await,
                0,
                "the retry did not run the body"
            );
            let got = poll_while(
                &Got::InProgress,
                std::time::Duration::from_secs(10),
                || async { classify(observe(svc.cancel_keep(&r)).await) },
            )
            .await;
            let Got::Executed(receipt) = got else {
                panic!("after the lease a retry executes: {got:?}")
            };
            // The claim was kept, not released: it lasted its lease (less 100 ms for the store's
            // timestamp resolution), counted from before it was taken.
            assert!(before_claim.elapsed() >= std::time::Duration::from_millis(900));
            assert_eq!(svc.ledger.count(&r).await, 1);
            assert_eq!(
                classify(observe(svc.cancel_keep(&r)).await),
                Got::Replayed(receipt)
            );
            assert_eq!(svc.ledger.count(&r).await, 1);
        }

        /// `on_cancel = "release"`: a future dropped mid-body frees the key at once (its lease
        /// is 30 s), so a retry executes as soon as the background release has landed.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[$skip]
        async fn dropped_mid_body_with_release_frees_the_key_at_once() {
            let Some((svc, _g)) = svc().await else { return };
            let r = req(&unique("t"), "order-1", 100);
            svc.gate.arm();
            let task = tokio::spawn({
                let (svc, r) = (svc.clone(), r.clone());
                async move { svc.cancel_release(&r).await }
            });
            svc.gate.entered.notified().await;
            task.abort();
            assert!(task.await.unwrap_err().is_cancelled());
            assert_eq!(svc.ledger.count(&r).await, 0);
            let got = poll_while(
                &Got::InProgress,
                std::time::Duration::from_secs(5),
                || async { classify(observe(svc.cancel_release(&r)).await) },
            )
            .await;
            assert!(matches!(got, Got::Executed(_)), "{got:?}");
            assert_eq!(svc.ledger.count(&r).await, 1);
        }

        /// A holder that crashed (stopped renewing) leaves an in-progress claim with a short
        /// lease. Until it lapses callers get `InProgress`; then exactly one of 16 concurrent
        /// retries takes over, and the crashed holder can neither complete nor renew.
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        #[$skip]
        async fn expired_claim_is_taken_over_by_exactly_one_caller() {
            use idempotent_runtime::ClaimStore;
            let Some((svc, _g)) = svc().await else { return };
            let r = req(&unique("t"), "order-1", 100);
            let key = KeyBuilder::new(concat!(module_path!(), "::", stringify!($call)))
                .scope(&r.tenant)
                .part(&r.id)
                .finish()
                .unwrap();
            let crashed = idempotent_runtime::store::Claim {
                key: &key,
                fingerprint: None,
                owner: "crashed-holder",
                lease: std::time::Duration::from_millis(300),
            };
            assert!(svc.db.try_claim(&crashed).await.unwrap());
            let early = classify(observe(svc.$call(&r)).await);
            assert_eq!(early, Got::InProgress);
            // Let the crashed holder's lease lapse (waiting for time, not ordering callers).
            // Without a clock shared by the store's clients (SQLite) a claim is judged dead by
            // watching: the early call started the watch, so the callers take over one of their
            // own leases (2 s) after it.
            fn shared_clock<S: ClaimStore>(_: &S) -> bool {
                S::SHARED_CLOCK
            }
            let lapse = if shared_clock(&svc.db) { 400 } else { 2_100 };
            tokio::time::sleep(std::time::Duration::from_millis(lapse)).await;
            let barrier = Arc::new(Barrier::new(16));
            let tasks: Vec<_> = (0..16)
                .map(|_| {
                    let (svc, r, barrier) = (svc.clone(), r.clone(), barrier.clone());
                    tokio::spawn(async move {
                        barrier.wait().await;
                        classify(observe(svc.$call(&r)).await)
                    })
                })
                .collect();
            let mut got = Vec::new();
            for t in tasks {
                got.push(t.await.unwrap());
            }
            let first = assert_one_executed(&got);
            assert_eq!(svc.ledger.count(&r).await, 1);
            let late = svc
                .db
                .complete_claim(
                    &key,
                    "crashed-holder",
                    b"{}",
                    std::time::Duration::from_secs(60),
                )
                .await
                .unwrap();
            assert!(!late, "the crashed holder's late completion is refused");
            let renewed = svc
                .db
                .renew_claim(&key, "crashed-holder", std::time::Duration::from_secs(60))
                .await
                .unwrap();
            assert!(!renewed, "the crashed holder cannot renew the new claim");
            assert_eq!(classify(observe(svc.$call(&r)).await), Got::Replayed(first));
        }

        #[tokio::test]
        #[$skip]
        async fn unstorable_response_still_runs_the_body_once() {
            let Some((svc, _g)) = svc().await else { return };
            let r = req(&unique("t"), "nan-1", 1);
            let (first, how) = observe(svc.nan_claim(&r)).await;
            assert!(first.unwrap().is_nan());
            assert_eq!(how, Some(Disposition::Executed));
            let again = svc.nan_claim(&r).await;
            assert!(
                matches!(again, Err(AppError::Idempotency(Error::Serialization(_)))),
                "{again:?}"
            );
            assert_eq!(svc.ledger.count(&r).await, 1, "the body ran exactly once");
        }

        #[tokio::test]
        #[$skip]
        async fn response_that_reads_back_as_another_is_not_replayed() {
            let Some((svc, _g)) = svc().await else { return };
            let r = req(&unique("t"), "untagged-1", 1);
            let (first, how) = observe(svc.untagged_claim(&r)).await;
            assert_eq!(first.unwrap(), Shipment::Sent { id: 7, carrier: None });
            assert_eq!(how, Some(Disposition::Executed));
            let again = svc.untagged_claim(&r).await;
            assert!(
                matches!(&again, Err(AppError::Idempotency(Error::Serialization(m))) if m.contains("reads back as a different value")),
                "{again:?}"
            );
            assert_eq!(svc.ledger.count(&r).await, 1, "the body ran exactly once");
        }

        /// Issue 11 item 5's siblings: values whose JSON is the same as another value's
        /// (an untagged enum's variants with the same content, a skipped field) are told apart
        /// by `T: PartialEq`: the first caller gets its value, the duplicate
        /// `Error::Serialization`, the body ran once.
        #[tokio::test]
        #[$skip]
        async fn response_serde_writes_like_another_is_not_replayed_when_comparable() {
            let Some((svc, _g)) = svc().await else { return };
            fn not_replayed<T>(again: &Result<T, AppError>) -> bool {
                matches!(again, Err(AppError::Idempotency(Error::Serialization(m)))
                    if m.contains("reads back as a different value") && m.contains("`==`"))
            }

            let r = req(&unique("t"), "alike-1", 1);
            let (first, how) = observe(svc.alike_claim(&r)).await;
            assert_eq!(first.unwrap(), Alike::B(1));
            assert_eq!(how, Some(Disposition::Executed));
            let again = svc.alike_claim(&r).await;
            assert!(not_replayed(&again), "{again:?}");
            assert_eq!(svc.ledger.count(&r).await, 1, "the body ran exactly once");

            let r = req(&unique("t"), "skipped-1", 1);
            let (first, how) = observe(svc.skipped_claim(&r)).await;
            assert_eq!(first.unwrap(), Skipped { a: 1, b: 9 });
            assert_eq!(how, Some(Disposition::Executed));
            let again = svc.skipped_claim(&r).await;
            assert!(not_replayed(&again), "{again:?}");
            assert_eq!(svc.ledger.count(&r).await, 1, "the body ran exactly once");

            // The variant that reads back as itself is stored and replayed.
            let r = req(&unique("t"), "alike-2", 0);
            let (first, how) = observe(svc.alike_claim(&r)).await;
            assert_eq!((first.unwrap(), how), (Alike::A(1), Some(Disposition::Executed)));
            let (again, how) = observe(svc.alike_claim(&r)).await;
            assert_eq!((again.unwrap(), how), (Alike::A(1), Some(Disposition::Replayed)));
            assert_eq!(svc.ledger.count(&r).await, 1, "the body ran exactly once");
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[$skip]
        async fn lease_is_renewed_while_the_body_runs() {
            let Some((svc, _g)) = svc().await else { return };
            let r = req(&unique("t"), "slow-1", 1);
            svc.gate.arm();
            let first = tokio::spawn({
                let (svc, r) = (svc.clone(), r.clone());
                async move { observe(svc.short_lease(&r)).await }
            });
            svc.gate.entered.notified().await;
            // Let wall-clock time pass well beyond the 300 ms lease (this waits for the
            // lease to lapse; it does not order the callers).
            tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
            let dup = svc.short_lease(&r).await;
            assert!(
                matches!(dup, Err(AppError::Idempotency(Error::InProgress))),
                "renewed claim holds: {dup:?}"
            );
            svc.gate.release.notify_one();
            let (res, how) = first.await.unwrap();
            assert_eq!(how, Some(Disposition::Executed), "{res:?}");
            assert_eq!(svc.ledger.count(&r).await, 1);
        }

        #[tokio::test]
        #[$skip]
        async fn bad_keys_are_rejected_or_stored_safely() {
            let Some((svc, _g)) = svc().await else { return };
            let t = unique("t");
            let e = svc.$call(&req(&t, "", 1)).await;
            assert!(
                matches!(e, Err(AppError::Idempotency(Error::InvalidKey(_)))),
                "{e:?}"
            );
            let e = svc
                .$call(&req(
                    &t,
                    &"k".repeat(idempotent_runtime::MAX_KEY_BYTES + 1),
                    1,
                ))
                .await;
            assert!(
                matches!(e, Err(AppError::Idempotency(Error::InvalidKey(_)))),
                "{e:?}"
            );
            let e = svc.$call(&req("", "x", 1)).await;
            assert!(
                matches!(e, Err(AppError::Idempotency(Error::InvalidKey(_)))),
                "empty scope: {e:?}"
            );
            for nasty in [
                "'; DROP TABLE idempotency_records; --",
                "\" OR 1=1 --\\",
                "*\r\n$3\r\nDEL\r\n{slot}",
                "ключ 🔑 \u{7f}\u{1}\t",
                &"k".repeat(idempotent_runtime::MAX_KEY_BYTES),
            ] {
                let r = req(&t, nasty, 7);
                let (first, how) = observe(svc.$call(&r)).await;
                assert_eq!(how, Some(Disposition::Executed), "{nasty:?}: {first:?}");
                let (again, how) = observe(svc.$call(&r)).await;
                assert_eq!(how, Some(Disposition::Replayed), "{nasty:?}");
                assert_eq!(first.unwrap(), again.unwrap());
                assert_eq!(svc.ledger.count(&r).await, 1, "{nasty:?}");
            }
        }
    };
}

macro_rules! tx_tests {
    ($conn:ty, $skip:meta) => {
        mod tx {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            #[$skip]
            async fn concurrent_64_one_key_one_effect() {
                let Some((svc, _g)) = svc().await else { return };
                let r = req(&unique("t"), "order-1", 100);
                let got = storm(
                    &svc.gate,
                    || {
                        let (svc, r) = (svc.clone(), r.clone());
                        async move { classify(observe(svc.place_tx(&r)).await) }
                    },
                    false,
                )
                .await;
                assert_one_executed(&got);
                assert_eq!(svc.ledger.count(&r).await, 1);
            }

            #[tokio::test]
            #[$skip]
            async fn retry_after_completion_replays_the_same_response() {
                let Some((svc, _g)) = svc().await else { return };
                let r = req(&unique("t"), "order-1", 100);
                let first = classify(observe(svc.place_tx(&r)).await);
                let second = classify(observe(svc.place_tx(&r)).await);
                let Got::Executed(a) = first else {
                    panic!("{first:?}")
                };
                assert_eq!(second, Got::Replayed(a));
                assert_eq!(svc.ledger.count(&r).await, 1);
            }

            #[tokio::test]
            #[$skip]
            async fn same_key_different_payload_is_a_fingerprint_mismatch() {
                let Some((svc, _g)) = svc().await else { return };
                let t = unique("t");
                svc.place_tx(&req(&t, "order-1", 100)).await.unwrap();
                let e = svc.place_tx(&req(&t, "order-1", 999)).await;
                assert!(
                    matches!(e, Err(AppError::Idempotency(Error::FingerprintMismatch))),
                    "{e:?}"
                );
                assert_eq!(svc.ledger.count(&req(&t, "order-1", 100)).await, 1);
                assert_eq!(svc.ledger.count(&req(&t, "order-1", 999)).await, 0);
            }

            #[tokio::test]
            #[$skip]
            async fn scopes_are_isolated() {
                let Some((svc, _g)) = svc().await else { return };
                let (a, b) = (req(&unique("ta"), "same", 1), req(&unique("tb"), "same", 1));
                let ra = svc.place_tx(&a).await.unwrap();
                let rb = svc.place_tx(&b).await.unwrap();
                assert_ne!(ra, rb);
                assert_eq!(svc.ledger.count(&a).await, 1);
                assert_eq!(svc.ledger.count(&b).await, 1);
            }

            #[tokio::test]
            #[$skip]
            async fn body_error_rolls_back_the_record_and_the_writes() {
                let Some((svc, _g)) = svc().await else { return };
                let r = req(&unique("t"), "order-1", 100);
                svc.fail_next.store(true, SeqCst);
                let e = svc.place_tx(&r).await;
                assert!(matches!(e, Err(AppError::Rejected)), "{e:?}");
                // The body wrote its ledger row before failing: rolled back with the record.
                assert_eq!(svc.ledger.count(&r).await, 0);
                let key = KeyBuilder::new(Svc::PLACE_TX)
                    .scope(&r.tenant)
                    .part(&r.id)
                    .finish()
                    .unwrap();
                assert_eq!(svc.ledger.records_with_key(&key.hex()).await, 0);
                let (retry, how) = observe(svc.place_tx(&r)).await;
                assert_eq!(how, Some(Disposition::Executed), "{retry:?}");
                assert_eq!(svc.ledger.count(&r).await, 1);
                assert_eq!(svc.ledger.records_with_key(&key.hex()).await, 1);
            }

            /// A completed record past its TTL (by the database's clock) is not replayed by the
            /// read before the transaction: the call runs again, in a transaction that takes
            /// the record over.
            #[tokio::test]
            #[$skip]
            async fn expired_record_runs_the_body_again() {
                let Some((svc, _g)) = svc().await else { return };
                let r = req(&unique("t"), "order-1", 100);
                let (first, how) = observe(svc.place_tx(&r)).await;
                assert_eq!(how, Some(Disposition::Executed), "{first:?}");
                let key = KeyBuilder::new(Svc::PLACE_TX)
                    .scope(&r.tenant)
                    .part(&r.id)
                    .finish()
                    .unwrap();
                svc.ledger.expire_record(&key.hex()).await;
                let (again, how) = observe(svc.place_tx(&r)).await;
                assert_eq!(how, Some(Disposition::Executed), "{again:?}");
                assert_ne!(again.unwrap(), first.unwrap());
                assert_eq!(svc.ledger.count(&r).await, 2);
                let (third, how) = observe(svc.place_tx(&r)).await;
                assert_eq!(how, Some(Disposition::Replayed), "{third:?}");
                assert_eq!(svc.ledger.count(&r).await, 2);
            }

            #[tokio::test]
            #[$skip]
            async fn unstorable_response_rolls_the_call_back() {
                let Some((svc, _g)) = svc().await else { return };
                let r = req(&unique("t"), "nan-1", 1);
                let e = svc.nan_tx(&r).await;
                assert!(
                    matches!(e, Err(AppError::Idempotency(Error::Serialization(_)))),
                    "{e:?}"
                );
                assert_eq!(svc.ledger.count(&r).await, 0, "rolled back with the record");
            }

            /// Issue 11 item 5's siblings in `#[tx]` mode: a response that reads back as a
            /// value not `==` to it rolls the whole call back, every time.
            #[tokio::test]
            #[$skip]
            async fn response_serde_writes_like_another_rolls_the_call_back() {
                let Some((svc, _g)) = svc().await else { return };
                fn rolled_back<T>(e: &Result<T, AppError>) -> bool {
                    matches!(e, Err(AppError::Idempotency(Error::Serialization(m)))
                        if m.contains("rolled back") && m.contains("reads back as a different value"))
                }
                let r = req(&unique("t"), "alike-1", 1);
                for _ in 0..2 {
                    let e = svc.alike_tx(&r).await;
                    assert!(rolled_back(&e), "{e:?}");
                }
                assert_eq!(svc.ledger.count(&r).await, 0, "rolled back with the record");
                let r = req(&unique("t"), "skipped-1", 1);
                for _ in 0..2 {
                    let e = svc.skipped_tx(&r).await;
                    assert!(rolled_back(&e), "{e:?}");
                }
                assert_eq!(svc.ledger.count(&r).await, 0, "rolled back with the record");
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[$skip]
            async fn dropped_future_mid_body_rolls_back_and_the_retry_executes() {
                let Some((svc, _g)) = svc().await else { return };
                let r = req(&unique("t"), "order-1", 100);
                svc.gate.arm();
                let task = tokio::spawn({
                    let (svc, r) = (svc.clone(), r.clone());
                    async move { svc.place_tx(&r).await }
                });
                svc.gate.entered.notified().await;
                task.abort();
                assert!(task.await.unwrap_err().is_cancelled());
                let (retry, how) = observe(svc.place_tx(&r)).await;
                assert_eq!(how, Some(Disposition::Executed), "{retry:?}");
                assert_eq!(svc.ledger.count(&r).await, 1);
            }
        }
    };
}

use idempotent_tests::{LiteLedger, MemLedger, MyLedger, PgLedger};

async fn pg() -> Option<(sqlx::PgPool, ())> {
    idempotent_tests::postgres().await.map(|p| (p, ()))
}
async fn my() -> Option<(sqlx::MySqlPool, ())> {
    idempotent_tests::mysql().await.map(|p| (p, ()))
}
async fn mem() -> Option<(idempotent_runtime::MemoryStore, ())> {
    Some((idempotent_runtime::MemoryStore::new(), ()))
}

suite! {
    mod postgres;
    store = sqlx::PgPool;
    setup = pg();
    ledger = PgLedger;
    skip = cfg_attr(not(has_postgres), ignore = "IDEMPOTENT_POSTGRES_URL is not set");
    tx_conn = sqlx::PgConnection;
}

suite! {
    mod mysql;
    store = sqlx::MySqlPool;
    setup = my();
    ledger = MyLedger;
    skip = cfg_attr(not(has_mysql), ignore = "IDEMPOTENT_MYSQL_URL is not set");
    tx_conn = sqlx::MySqlConnection;
}

suite! {
    mod sqlite;
    store = sqlx::SqlitePool;
    setup = idempotent_tests::sqlite();
    ledger = LiteLedger;
    skip = cfg_attr(any(), ignore);
    tx_conn = sqlx::SqliteConnection;
}

suite! {
    mod memory;
    store = idempotent_runtime::MemoryStore;
    setup = mem();
    ledger = MemLedger;
    skip = cfg_attr(any(), ignore);
}

/// A generic response type `T`: the expansion compares the value read back with `==` only when
/// the function's own bounds say `T: PartialEq`; otherwise only what serde writes is checked
/// (the documented limit), whatever `T` a caller picks.
mod generic_response {
    use idempotent_runtime::MemoryStore;

    use super::*;

    /// `T` without a `PartialEq` bound: the comparison falls back to none.
    #[idempotent(
        strategy = "dedup_table",
        key = "key",
        store = "store",
        fingerprint = false
    )]
    async fn unbounded<T>(
        store: &MemoryStore,
        key: &str,
        runs: &AtomicU64,
        value: &T,
    ) -> Result<T, AppError>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Clone,
    {
        runs.fetch_add(1, SeqCst);
        Ok(value.clone())
    }

    /// `T: PartialEq` in the bounds: compared.
    #[idempotent(
        strategy = "dedup_table",
        key = "key",
        store = "store",
        fingerprint = false
    )]
    async fn bounded<T>(
        store: &MemoryStore,
        key: &str,
        runs: &AtomicU64,
        value: &T,
    ) -> Result<T, AppError>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Clone + PartialEq,
    {
        runs.fetch_add(1, SeqCst);
        Ok(value.clone())
    }

    #[tokio::test]
    async fn compared_only_when_the_bounds_say_partial_eq() {
        let store = MemoryStore::new();

        let runs = AtomicU64::new(0);
        let (first, how) = observe(bounded(&store, "bounded", &runs, &Alike::B(1))).await;
        assert_eq!(
            (first.unwrap(), how),
            (Alike::B(1), Some(Disposition::Executed))
        );
        let again = bounded(&store, "bounded", &runs, &Alike::B(1)).await;
        assert!(
            matches!(&again, Err(AppError::Idempotency(Error::Serialization(m))) if m.contains("`==`")),
            "{again:?}"
        );
        assert_eq!(runs.load(SeqCst), 1, "the body ran exactly once");

        // The limit, pinned: without the bound, `B(1)` is stored and replays as `A(1)`.
        let runs = AtomicU64::new(0);
        let (first, how) = observe(unbounded(&store, "unbounded", &runs, &Alike::B(1))).await;
        assert_eq!(
            (first.unwrap(), how),
            (Alike::B(1), Some(Disposition::Executed))
        );
        let (again, how) = observe(unbounded(&store, "unbounded", &runs, &Alike::B(1))).await;
        assert_eq!(
            (again.unwrap(), how),
            (Alike::A(1), Some(Disposition::Replayed))
        );
        assert_eq!(runs.load(SeqCst), 1, "the body ran exactly once");
    }
}

/// PostgreSQL: a duplicate inside the caller's own open transaction (the store is the caller's
/// connection, so the claim is a SAVEPOINT) leaves that transaction usable.
mod postgres_caller_transaction {
    use super::*;
    use sqlx::PgConnection;

    #[idempotent(
        strategy = "dedup_table",
        key = "req.id",
        scope = "req.tenant",
        store = "conn",
        fingerprint = "req"
    )]
    async fn place_in(
        conn: &mut PgConnection,
        ledger: &PgLedger,
        req: &Req,
        #[tx] tx: &mut PgConnection,
    ) -> Result<Receipt, AppError> {
        ledger.record_in(&mut *tx, req).await?;
        Ok(Receipt {
            tenant: req.tenant.clone(),
            id: req.id.clone(),
            amount: req.amount,
            serial: 1,
        })
    }

    #[tokio::test]
    #[cfg_attr(not(has_postgres), ignore = "IDEMPOTENT_POSTGRES_URL is not set")]
    async fn duplicate_inside_callers_transaction_keeps_it_usable() {
        let Some((svc, _g)) = postgres::svc().await else {
            return;
        };
        let r = req(&unique("t"), "order-1", 100);
        // The first call in a transaction of its own, committed.
        let mut first_tx = svc.db.begin().await.unwrap();
        let first = place_in(&mut first_tx, &svc.ledger, &r).await.unwrap();
        first_tx.commit().await.unwrap();

        let mut tx = svc.db.begin().await.unwrap();
        let before = req(&r.tenant, "written-before", 1);
        svc.ledger.record_in(&mut tx, &before).await.unwrap();
        let (dup, how) = observe(place_in(&mut tx, &svc.ledger, &r)).await;
        assert_eq!(how, Some(Disposition::Replayed));
        assert_eq!(dup.unwrap(), first);
        let mismatch = place_in(&mut tx, &svc.ledger, &req(&r.tenant, "order-1", 5)).await;
        assert!(
            matches!(
                mismatch,
                Err(AppError::Idempotency(Error::FingerprintMismatch))
            ),
            "{mismatch:?}"
        );
        let fresh = req(&r.tenant, "order-2", 100);
        let (_, how) = observe(place_in(&mut tx, &svc.ledger, &fresh)).await;
        assert_eq!(how, Some(Disposition::Executed));
        let after = req(&r.tenant, "written-after", 1);
        svc.ledger.record_in(&mut tx, &after).await.unwrap();
        tx.commit().await.unwrap();

        assert_eq!(svc.ledger.count(&before).await, 1);
        assert_eq!(svc.ledger.count(&after).await, 1);
        assert_eq!(svc.ledger.count(&r).await, 1);
        assert_eq!(svc.ledger.count(&fresh).await, 1);
    }
}

/// Issue 11 item 11: `Uuid` key parts and scopes (feature `uuid`) on every claim store; the
/// record is stored under the key of the `Uuid` (tag `u`, its lowercase hyphenated text), not
/// under the key of the same text as a string.
mod uuid_keys {
    use idempotent_runtime::ClaimStore;
    use idempotent_tests::Effects;
    use uuid::Uuid;

    use super::*;

    pub struct Svc<S> {
        store: S,
        fx: Effects,
    }

    impl<S: ClaimStore> Svc<S> {
        #[idempotent(
            strategy = "dedup_table",
            key = "order",
            scope = "tenant",
            name = "tests.uuid_keys",
            store = "self.store"
        )]
        async fn ship(&self, tenant: Uuid, order: Uuid) -> Result<Receipt, AppError> {
            self.fx
                .apply(&req(&tenant.to_string(), &order.to_string(), 1))
                .await
        }
    }

    fn random_uuid() -> Uuid {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b).expect("OS randomness");
        Uuid::from_bytes(b)
    }

    async fn uuid_keys_replay_and_are_stored_under_their_own_key<S: ClaimStore>(store: S) {
        let svc = Svc {
            store,
            fx: Effects::default(),
        };
        let (tenant, order) = (random_uuid(), random_uuid());
        let first = classify(observe(svc.ship(tenant, order)).await);
        let Got::Executed(receipt) = first else {
            panic!("{first:?}")
        };
        assert_eq!(
            classify(observe(svc.ship(tenant, order)).await),
            Got::Replayed(receipt)
        );
        let other = random_uuid();
        assert!(matches!(
            classify(observe(svc.ship(tenant, other)).await),
            Got::Executed(_)
        ));
        assert!(matches!(
            classify(observe(svc.ship(random_uuid(), order)).await),
            Got::Executed(_)
        ));
        assert_eq!(
            svc.fx
                .count(&req(&tenant.to_string(), &order.to_string(), 1)),
            1
        );
        let key = |part: &dyn Fn(KeyBuilder) -> KeyBuilder| {
            part(KeyBuilder::new("tests.uuid_keys").scope(&tenant))
                .finish()
                .unwrap()
        };
        let as_uuid = key(&|b| b.part(&order));
        let as_text = key(&|b| b.part(order.hyphenated().to_string().as_str()));
        assert!(svc.store.read_record(&as_uuid).await.unwrap().is_some());
        assert!(svc.store.read_record(&as_text).await.unwrap().is_none());
    }

    idempotent_tests::on_claim_backends!(uuid_keys_replay_and_are_stored_under_their_own_key);
}

/// MySQL/MariaDB: inside the caller's REPEATABLE READ transaction whose snapshot predates the
/// first call's commit, a duplicate still replays (the record is read with a locking read).
mod mysql_caller_transaction {
    use super::*;
    use sqlx::MySqlConnection;

    #[idempotent(
        strategy = "dedup_table",
        key = "req.id",
        scope = "req.tenant",
        store = "conn",
        fingerprint = "req"
    )]
    async fn place_in(
        conn: &mut MySqlConnection,
        ledger: &MyLedger,
        req: &Req,
        #[tx] tx: &mut MySqlConnection,
    ) -> Result<Receipt, AppError> {
        ledger.record_in(&mut *tx, req).await?;
        Ok(Receipt {
            tenant: req.tenant.clone(),
            id: req.id.clone(),
            amount: req.amount,
            serial: 1,
        })
    }

    #[tokio::test]
    #[cfg_attr(not(has_mysql), ignore = "IDEMPOTENT_MYSQL_URL is not set")]
    async fn duplicate_after_an_old_snapshot_replays() {
        let Some((svc, _g)) = mysql::svc().await else {
            return;
        };
        let r = req(&unique("t"), "order-1", 100);
        let mut tx = svc.db.begin().await.unwrap();
        // Take the snapshot before the first call commits.
        let _: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM idempotency_records")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        // The first call commits in a transaction of its own, on another connection.
        let mut first_tx = svc.db.begin().await.unwrap();
        let first = place_in(&mut first_tx, &svc.ledger, &r).await.unwrap();
        first_tx.commit().await.unwrap();
        let (dup, how) = observe(place_in(&mut tx, &svc.ledger, &r)).await;
        assert_eq!(how, Some(Disposition::Replayed), "{dup:?}");
        assert_eq!(dup.unwrap(), first);
        tx.commit().await.unwrap();
        assert_eq!(svc.ledger.count(&r).await, 1);
    }
}

/// Issue 10 items 1–3 in claim mode on every claim store (PostgreSQL, MySQL/MariaDB, SQLite,
/// memory, Redis, Redis Cluster), with faults injected by a wrapping store
/// ([`Faulty`](idempotent_tests::Faulty)): a completion held while the caller is aborted,
/// completions failing with backend errors, a claim whose reply is lost; and a claim sent twice
/// by one owner, directly against the store.
mod faults {
    use std::pin::Pin;
    use std::time::Duration;

    use idempotent_runtime::ClaimStore;
    use idempotent_runtime::store::{Claim, RecordState};
    use idempotent_tests::{Effects, FaultSvc, Faults, Faulty, Lease, Observed};

    use super::*;

    pub struct Svc<S> {
        store: Faulty<S>,
        fx: Effects,
    }

    impl<S: ClaimStore> Svc<S> {
        fn new(store: S) -> Arc<Self> {
            Arc::new(Svc {
                store: Faulty::new(store),
                fx: Effects::default(),
            })
        }

        #[idempotent(
            strategy = "dedup_table",
            key = "req.id",
            scope = "req.tenant",
            store = "self.store",
            lease = "300ms"
        )]
        async fn place_300ms(&self, req: &Req) -> Result<Receipt, AppError> {
            self.fx.apply(req).await
        }

        #[idempotent(
            strategy = "dedup_table",
            key = "req.id",
            scope = "req.tenant",
            store = "self.store",
            lease = "1s"
        )]
        async fn place_1s(&self, req: &Req) -> Result<Receipt, AppError> {
            self.fx.apply(req).await
        }

        #[idempotent(
            strategy = "dedup_table",
            key = "req.id",
            scope = "req.tenant",
            store = "self.store",
            lease = "5s"
        )]
        async fn place_5s(&self, req: &Req) -> Result<Receipt, AppError> {
            self.fx.apply(req).await
        }

        #[idempotent(
            strategy = "dedup_table",
            key = "req.id",
            scope = "req.tenant",
            store = "self.store",
            lease = "30s"
        )]
        async fn place_30s(&self, req: &Req) -> Result<Receipt, AppError> {
            self.fx.apply(req).await
        }
    }

    impl<S: ClaimStore> FaultSvc for Svc<S> {
        fn busy(&self) -> Got {
            Got::InProgress
        }
        fn faults(&self) -> &Faults {
            &self.store.faults
        }
        fn effects(&self) -> &Effects {
            &self.fx
        }
        async fn fresh(&self) -> Req {
            req(&unique("t"), "order-1", 100)
        }
        fn call(
            self: Arc<Self>,
            lease: Lease,
            r: Req,
        ) -> Pin<Box<dyn Future<Output = Observed> + Send>> {
            Box::pin(async move {
                match lease {
                    Lease::Ms300 => observe(self.place_300ms(&r)).await,
                    Lease::S1 => observe(self.place_1s(&r)).await,
                    Lease::S5 => observe(self.place_5s(&r)).await,
                    Lease::S30 => observe(self.place_30s(&r)).await,
                }
            })
        }
    }

    idempotent_tests::fault_scenarios!(Svc, ClaimStore);

    /// Whether `claim`'s owner holds the key after sending `claim`, as `dedup_table` judges it:
    /// the store answers `true`, or its record is the owner's unexpired in-progress claim.
    async fn holds<S: ClaimStore>(store: &S, claim: &Claim<'_>) -> bool {
        store.try_claim(claim).await.unwrap()
            || store
                .read_record(claim.key)
                .await
                .unwrap()
                .is_some_and(|r| {
                    *r.owner == *claim.owner && r.state == RecordState::InProgress && !r.expired
                })
    }

    /// The same owner's claim sent twice is held both times; another owner's is not; once
    /// completed, the owner's claim is no longer held (the record replays).
    async fn claim_sent_twice_by_one_owner_is_claimed_both_times<S: ClaimStore>(store: S) {
        let key = KeyBuilder::new(&unique("op")).part("k").finish().unwrap();
        let (a, b) = ("a".repeat(32), "b".repeat(32));
        let claim = Claim {
            key: &key,
            fingerprint: None,
            owner: &a,
            lease: Duration::from_secs(30),
        };
        assert!(holds(&store, &claim).await, "claimed");
        assert!(holds(&store, &claim).await, "the same owner again: claimed");
        let other = Claim {
            owner: &b,
            ..claim.clone()
        };
        assert!(!holds(&store, &other).await, "another owner: not claimed");
        assert!(
            store
                .complete_claim(&key, &a, b"1", Duration::from_secs(60))
                .await
                .unwrap()
        );
        assert!(!holds(&store, &claim).await, "completed: not claimed again");
    }

    idempotent_tests::on_claim_backends!(
        cancelled_while_completing_still_records,
        transient_completion_errors_are_retried,
        completion_that_never_lands_is_unrecorded,
        lost_acquisition_reply_frees_the_key,
        slow_acquisition_reply_keeps_the_claim,
        cancelled_during_acquisition_frees_the_key,
        claim_sent_twice_by_one_owner_is_claimed_both_times,
    );
}

/// Issue 12 item 2: MySQL/MariaDB's "now" does not depend on the session's time zone. With the
/// session in Europe/Berlin and its clock (`SET timestamp`) inside the repeated autumn hour
/// (2026-10-25 02:30 CET, the second pass: 01:30 UTC), the store's now is that instant in Unix
/// ms, and a claim written there is live for a UTC session at the same instant (the old
/// `UNIX_TIMESTAMP(NOW(3))` was 3,600,000 ms behind, so that claim looked expired and was
/// taken over). Needs MariaDB's time-zone tables (`.ci/run` loads them with
/// `mariadb-tzinfo-to-sql`).
mod mysql_session_time_zone {
    use std::time::Duration;

    use idempotent_runtime::store::{Claim, RecordState};
    use idempotent_runtime::{KeyBuilder, SqlBackend};
    use idempotent_tests::{MYSQL_ENV, ci, server_url, unique};
    use sqlx::{Connection, MySql, MySqlConnection};

    /// 2026-10-25 01:30:00.123 UTC, 02:30:00.123 in Berlin for the second time (CET).
    const SECOND_PASS_MS: i64 = 1_792_891_800_123;

    async fn session(url: &str, zone: &str, at_ms: i64) -> MySqlConnection {
        let mut conn = MySqlConnection::connect(url).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("SET time_zone = '{zone}'")))
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SET timestamp = {}.{:03}",
            at_ms / 1000,
            at_ms % 1000
        )))
        .execute(&mut conn)
        .await
        .unwrap();
        conn
    }

    #[tokio::test]
    #[cfg_attr(not(has_mysql), ignore = "IDEMPOTENT_MYSQL_URL is not set")]
    async fn now_is_the_instant_in_the_repeated_dst_hour() {
        let Some(url) = server_url(MYSQL_ENV, "MySQL/MariaDB") else {
            return;
        };
        idempotent_tests::mysql().await.unwrap();
        let mut berlin = session(&url, "Europe/Berlin", SECOND_PASS_MS).await;
        let zones: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mysql.time_zone_name")
            .fetch_one(&mut berlin)
            .await
            .unwrap();
        if zones == 0 {
            let why = "MariaDB has no time-zone tables: load them with `mariadb-tzinfo-to-sql /usr/share/zoneinfo | mariadb -uroot mysql` (.ci/run does)";
            assert!(!ci(), "{why}");
            eprintln!("SKIPPED: {why}");
            return;
        }
        // The session really is in the repeated hour: local 02:30, UTC 01:30.
        let (local, utc): (String, String) =
            sqlx::query_as("SELECT CAST(NOW(3) AS CHAR), CAST(UTC_TIMESTAMP(3) AS CHAR)")
                .fetch_one(&mut berlin)
                .await
                .unwrap();
        assert_eq!(
            (local.as_str(), utc.as_str()),
            ("2026-10-25 02:30:00.123", "2026-10-25 01:30:00.123")
        );

        let key = KeyBuilder::new("tests.tz")
            .part(&unique("k"))
            .finish()
            .unwrap();
        let owner = unique("owner");
        let lease = Duration::from_secs(30);
        let claim = Claim {
            key: &key,
            fingerprint: None,
            owner: &owner,
            lease,
        };
        assert!(MySql::try_claim(&mut berlin, &claim).await.unwrap());
        let (created, expires): (i64, i64) = sqlx::query_as(
            "SELECT created_at_ms, expires_at_ms FROM idempotency_records WHERE idempotency_key = ?",
        )
        .bind(key.hex())
        .fetch_one(&mut berlin)
        .await
        .unwrap();
        assert_eq!(created, SECOND_PASS_MS, "now, in Unix ms with its fraction");
        assert_eq!(expires, SECOND_PASS_MS + 30_000);

        // A UTC session 1 s later sees the claim live and cannot take it over.
        let mut utc = session(&url, "+00:00", SECOND_PASS_MS + 1000).await;
        let record = MySql::read_record(&mut utc, &key).await.unwrap().unwrap();
        assert_eq!(record.state, RecordState::InProgress);
        assert!(!record.expired, "a 30 s claim written 1 s ago is live");
        let thief = unique("thief");
        let take = Claim {
            owner: &thief,
            ..claim.clone()
        };
        assert!(
            !MySql::take_over_claim(&mut utc, &take, &owner)
                .await
                .unwrap()
        );
        // Both sessions agree on the instant the lease ends: expired 30 s later in each zone.
        let mut later = session(&url, "Europe/Berlin", SECOND_PASS_MS + 30_000).await;
        assert!(
            MySql::read_record(&mut later, &key)
                .await
                .unwrap()
                .unwrap()
                .expired
        );
        let mut before = session(&url, "Europe/Berlin", SECOND_PASS_MS + 29_999).await;
        assert!(
            !MySql::read_record(&mut before, &key)
                .await
                .unwrap()
                .unwrap()
                .expired
        );
    }
}

/// PostgreSQL's record table lets the completion UPDATE be HOT (heap-only: no index entry
/// written): no index on a column the completion changes (`status`, `response`,
/// `expires_at_ms`), and `fillfactor = 90` leaves room in each page for the new version.
/// Measured: 614 WAL bytes per claim + completion instead of 1109 with the former
/// `expires_at_ms` index (issue 14). Also checks that `migrate` removes that index from a table
/// an earlier version created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(has_postgres), ignore = "IDEMPOTENT_POSTGRES_URL is not set")]
async fn postgres_record_table_allows_hot_completions() {
    let Some(pool) = idempotent_tests::postgres().await else {
        return;
    };
    // The index an earlier version's migration created; `migrate` drops it.
    sqlx::query(
        "CREATE INDEX IF NOT EXISTS idempotency_records_expires_at ON idempotency_records (expires_at_ms)",
    )
    .execute(&pool)
    .await
    .unwrap();
    idempotent_runtime::migrate(&pool).await.unwrap();
    let indexed: Vec<(String,)> = sqlx::query_as(
        "SELECT indexdef FROM pg_indexes WHERE tablename = 'idempotency_records' AND schemaname = current_schema() ORDER BY indexname",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(indexed.len(), 1, "only the primary key: {indexed:?}");
    assert!(indexed[0].0.contains("(idempotency_key)"), "{indexed:?}");
    let options: (Option<Vec<String>>,) = sqlx::query_as(
        "SELECT reloptions FROM pg_class WHERE oid = 'idempotency_records'::regclass",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(options.0, Some(vec!["fillfactor=90".to_owned()]));
}

/// Issue 14: a duplicate of a completed `#[tx]` call is one statement outside any transaction
/// (the record read on a pooled connection; no `BEGIN`, so on SQLite no write lock), judged as
/// inside a transaction (replay, or `FingerprintMismatch`); a fresh call still runs in one
/// transaction with one effect. Counted by the database itself on a pool of one connection
/// (see [`idempotent_tests::statements`]). A fresh claim-mode call on SQLite is two write
/// transactions, the claim and the completion, and nothing else.
mod statements_per_call {
    use std::time::Duration;

    use idempotent_tests::{MySqlSession, PgLog, PgWire, SqliteTrace};
    use sqlx::Connection;

    use super::*;

    fn mismatch<T: std::fmt::Debug>(got: &Result<T, AppError>) -> bool {
        matches!(got, Err(AppError::Idempotency(Error::FingerprintMismatch)))
    }

    #[tokio::test]
    #[cfg_attr(not(has_postgres), ignore = "IDEMPOTENT_POSTGRES_URL is not set")]
    async fn postgres_tx_replay_is_one_statement_and_no_transaction() {
        let Some(wire) = PgWire::start().await else {
            return;
        };
        let db = wire.pool().await;
        let svc = postgres::Svc {
            ledger: PgLedger::create(&db).await,
            db,
            gate: Gate::default(),
            fail_next: AtomicBool::new(false),
            serial: AtomicU64::new(0),
        };
        let r = req(&unique("t"), "order-1", 100);

        let mark = wire.snapshot();
        let (first, how) = observe(svc.place_tx(&r)).await;
        let fresh = wire.snapshot().since(&mark);
        assert_eq!(how, Some(Disposition::Executed), "{first:?}");
        assert_eq!(fresh.transactions, 1, "{fresh:?}");
        assert_eq!(
            fresh.commands.first().map(String::as_str),
            Some("SELECT 0"),
            "{fresh:?}"
        );
        assert_eq!(
            fresh.commands.last().map(String::as_str),
            Some("COMMIT"),
            "{fresh:?}"
        );
        // The record was read first and found missing, so the claim is the plain `INSERT … ON
        // CONFLICT DO NOTHING` (`INSERT 0 1`), not the claim-or-read statement, whose read
        // joins the table again on every fresh call (its tag: `SELECT 1`).
        assert_eq!(
            fresh.commands.get(..3),
            Some(&["SELECT 0", "BEGIN", "INSERT 0 1"].map(String::from)[..]),
            "{fresh:?}"
        );
        assert_eq!(svc.ledger.count(&r).await, 1);

        let one_read = PgLog {
            commands: vec!["SELECT 1".to_owned()],
            round_trips: 1,
            transactions: 0,
        };
        let mark = wire.snapshot();
        let (again, how) = observe(svc.place_tx(&r)).await;
        assert_eq!(wire.snapshot().since(&mark), one_read);
        assert_eq!(how, Some(Disposition::Replayed));
        assert_eq!(again.unwrap(), first.unwrap());

        let mark = wire.snapshot();
        let other = svc.place_tx(&req(&r.tenant, "order-1", 999)).await;
        assert_eq!(wire.snapshot().since(&mark), one_read);
        assert!(mismatch(&other), "{other:?}");
        assert_eq!(svc.ledger.count(&r).await, 1);
        assert_eq!(svc.ledger.count(&req(&r.tenant, "order-1", 999)).await, 0);
    }

    #[tokio::test]
    #[cfg_attr(not(has_mysql), ignore = "IDEMPOTENT_MYSQL_URL is not set")]
    async fn mysql_tx_replay_is_one_statement_and_no_transaction() {
        let Some(session) = MySqlSession::connect().await else {
            return;
        };
        let db = session.pool.clone();
        let svc = mysql::Svc {
            ledger: MyLedger::create(&db).await,
            db,
            gate: Gate::default(),
            fail_next: AtomicBool::new(false),
            serial: AtomicU64::new(0),
        };
        let r = req(&unique("t"), "order-1", 100);
        // What reading the counters adds to them, measured once the reading is prepared.
        let overhead = session.overhead().await;
        let ran = async |call: &dyn Fn() -> _| {
            let before = session.counters().await;
            let got = observe(call()).await;
            let after = session.counters().await;
            (got, MySqlSession::between(&before, &after, &overhead))
        };

        let ((first, how), fresh) = ran(&|| svc.place_tx(&r)).await;
        assert_eq!(how, Some(Disposition::Executed), "{first:?}");
        assert_eq!(
            (fresh["Com_begin"], fresh["Com_commit"]),
            (1, 1),
            "{fresh:?}"
        );
        assert_eq!(svc.ledger.count(&r).await, 1);

        let ((again, how), replay) = ran(&|| svc.place_tx(&r)).await;
        assert_eq!(how, Some(Disposition::Replayed));
        assert_eq!(again.unwrap(), first.unwrap());
        for (counter, expected) in [
            ("Questions", 1),
            ("Com_begin", 0),
            ("Com_commit", 0),
            ("Com_rollback", 0),
        ] {
            assert_eq!(replay[counter], expected, "{counter}: {replay:?}");
        }

        let other = req(&r.tenant, "order-1", 999);
        let ((got, _), mismatched) = ran(&|| svc.place_tx(&other)).await;
        assert!(mismatch(&got), "{got:?}");
        for (counter, expected) in [
            ("Questions", 1),
            ("Com_begin", 0),
            ("Com_commit", 0),
            ("Com_rollback", 0),
        ] {
            assert_eq!(mismatched[counter], expected, "{counter}: {mismatched:?}");
        }
        assert_eq!(svc.ledger.count(&r).await, 1);
        assert_eq!(svc.ledger.count(&other).await, 0);
    }

    /// Also with another connection holding the database's write lock all along: the replay
    /// and the mismatch need no lock, so they answer at once (a `BEGIN IMMEDIATE` would wait
    /// for the busy timeout, then fail).
    #[tokio::test]
    async fn sqlite_tx_replay_is_one_statement_and_no_transaction() {
        let trace = SqliteTrace::open(Duration::from_millis(200)).await;
        let db = trace.pool.clone();
        let svc = sqlite::Svc {
            ledger: LiteLedger::create(&db).await,
            db,
            gate: Gate::default(),
            fail_next: AtomicBool::new(false),
            serial: AtomicU64::new(0),
        };
        let r = req(&unique("t"), "order-1", 100);

        let mark = trace.snapshot();
        let (first, how) = observe(svc.place_tx(&r)).await;
        let fresh = trace.snapshot().since(&mark);
        assert_eq!(how, Some(Disposition::Executed), "{first:?}");
        assert_eq!((fresh.commits, fresh.rollbacks), (1, 0), "{fresh:?}");
        assert!(
            fresh.statements.iter().any(|s| s == "BEGIN IMMEDIATE"),
            "{fresh:?}"
        );
        assert_eq!(svc.ledger.count(&r).await, 1);

        let mut writer =
            sqlx::SqliteConnection::connect_with(&trace.options(Duration::from_millis(200)))
                .await
                .unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut writer)
            .await
            .unwrap();

        let one_read = |log: &idempotent_tests::SqliteLog| {
            log.statements.len() == 1
                && log.statements[0].starts_with("SELECT owner, fingerprint, status, response")
                && (log.commits, log.rollbacks) == (0, 0)
        };
        let mark = trace.snapshot();
        let (again, how) = observe(svc.place_tx(&r)).await;
        let replay = trace.snapshot().since(&mark);
        assert_eq!(how, Some(Disposition::Replayed), "{again:?}");
        assert_eq!(again.unwrap(), first.unwrap());
        assert!(one_read(&replay), "{replay:?}");

        let mark = trace.snapshot();
        let other = req(&r.tenant, "order-1", 999);
        let got = svc.place_tx(&other).await;
        let mismatched = trace.snapshot().since(&mark);
        assert!(mismatch(&got), "{got:?}");
        assert!(one_read(&mismatched), "{mismatched:?}");

        sqlx::query("ROLLBACK").execute(&mut writer).await.unwrap();
        assert_eq!(svc.ledger.count(&r).await, 1);
        assert_eq!(svc.ledger.count(&other).await, 0);
    }

    /// Claim mode needs the claim durable before the body runs (a crash mid-body must leave
    /// it), so a fresh call is two write transactions: the claim `INSERT` and the completion
    /// `UPDATE`, each its own autocommit — no third. Before them, the read that answers a
    /// duplicate alone (it finds nothing here). A replay is that read only: no write.
    #[tokio::test]
    async fn sqlite_fresh_claim_call_is_two_write_transactions() {
        let trace = SqliteTrace::open(Duration::from_secs(30)).await;
        let db = trace.pool.clone();
        let svc = sqlite::Svc {
            ledger: LiteLedger::create(&db).await,
            db,
            gate: Gate::default(),
            fail_next: AtomicBool::new(false),
            serial: AtomicU64::new(0),
        };
        let r = req(&unique("t"), "order-1", 100);
        // The ledger's own write in the body is an effect, not the protocol's: counted apart.
        let mark = trace.snapshot();
        let (first, how) = observe(svc.place_claim(&r)).await;
        let fresh = trace.snapshot().since(&mark);
        assert_eq!(how, Some(Disposition::Executed), "{first:?}");
        let protocol: Vec<_> = fresh
            .statements
            .iter()
            .filter(|s| s.contains("idempotency_records"))
            .map(|s| s.split_whitespace().next().unwrap_or_default())
            .collect();
        assert_eq!(protocol, ["SELECT", "INSERT", "UPDATE"], "{fresh:?}");
        assert_eq!(
            fresh.statements.len(),
            4,
            "read, claim, the ledger's insert, completion: {fresh:?}"
        );
        assert_eq!((fresh.commits, fresh.rollbacks), (3, 0), "{fresh:?}");

        // The replay is the read alone: no claim attempt, no write transaction.
        let mark = trace.snapshot();
        let (again, how) = observe(svc.place_claim(&r)).await;
        let replay = trace.snapshot().since(&mark);
        assert_eq!(how, Some(Disposition::Replayed), "{again:?}");
        assert_eq!(again.unwrap(), first.unwrap());
        assert_eq!(replay.statements.len(), 1, "{replay:?}");
        assert!(replay.statements[0].starts_with("SELECT"), "{replay:?}");
        assert_eq!((replay.commits, replay.rollbacks), (0, 0), "{replay:?}");
        assert_eq!(svc.ledger.count(&r).await, 1);
    }
}
