//! Fault injection for the claim-mode strategies: [`Faulty`], a store that wraps any store and
//! implements the store traits it implements ([`ClaimStore`], [`LockStore`], [`TokenStore`]) by
//! delegating, with the switches of [`Faults`] — hold a completion at a gate, fail completions
//! or renewals with a backend error, lose the reply of an acquisition — and the scenarios every claim store
//! must pass under those faults ([`FaultSvc`] and the `async fn`s below, which each strategy's
//! test file runs on every store it applies to).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use std::time::Duration;

use idempotent_runtime::store::{
    Acquired, AsClaimStore, AsLockStore, AsTokenStore, Claim, Consumed, Record,
};
use idempotent_runtime::{
    ClaimStore, Disposition, Error, LockStore, StorageKey, Store, TokenStore,
};

use crate::fixtures::{AppError, Gate, Receipt, Req};
use crate::ledger::Effects;
use crate::outcome::{Got, classify, poll_while};

/// The switches of a [`Faulty`] store, shared by its clones. All start off.
#[derive(Debug, Default)]
pub struct Faults {
    /// When armed, holds the next completion (`complete_claim`, `complete_lock`,
    /// `complete_token`) before it reaches the store, until released.
    pub complete_gate: Gate,
    /// The next this many completions fail with [`Error::Backend`] without reaching the store.
    pub fail_completes: AtomicU32,
    /// Every completion fails with [`Error::Backend`] without reaching the store.
    pub fail_every_complete: AtomicBool,
    /// The next this many acquisitions (`try_claim`, `acquire_lock`, `consume_token`) run on
    /// the store and then fail with [`Error::Backend`]: a reply lost after the step ran.
    pub lose_acquire_replies: AtomicU32,
    /// Completions that reached the store.
    pub completes_delivered: AtomicU32,
    /// Every renewal (`renew_claim`, `renew_lock`, `renew_token`) fails with
    /// [`Error::Backend`] without reaching the store: a holder cut off from the store while
    /// its body runs, whose claim then lapses at the end of its lease.
    pub fail_renewals: AtomicBool,
    /// When set, the next successful acquisition (claim, take-over, lock, consumption) is held after
    /// the store answered: [`acquired`](Faults::acquired) is notified and the reply reaches the
    /// caller only after [`go`](Faults::go) — an acquisition as slow as the test makes it.
    pub hold_next_acquisition: AtomicBool,
    /// Notified when a held acquisition has been answered by the store.
    pub acquired: tokio::sync::Notify,
    /// Lets a held acquisition's reply through.
    pub go: tokio::sync::Notify,
}

/// Decrements `n` if it is above zero; `true` when it did.
fn take_one(n: &AtomicU32) -> bool {
    n.fetch_update(SeqCst, SeqCst, |v| v.checked_sub(1)).is_ok()
}

fn injected(what: &str) -> Error {
    Error::Backend(format!("injected fault: {what}").into())
}

impl Faults {
    async fn before_complete(&self) -> Result<(), Error> {
        self.complete_gate.pass().await;
        if self.fail_every_complete.load(SeqCst) || take_one(&self.fail_completes) {
            return Err(injected("connection reset while completing"));
        }
        self.completes_delivered.fetch_add(1, SeqCst);
        Ok(())
    }

    fn before_renew(&self) -> Result<(), Error> {
        if self.fail_renewals.load(SeqCst) {
            return Err(injected("connection reset while renewing"));
        }
        Ok(())
    }

    /// Holds a successful acquisition's reply when [`hold_next_acquisition`] is set.
    ///
    /// [`hold_next_acquisition`]: Faults::hold_next_acquisition
    async fn hold_if(&self, acquired: bool) {
        if acquired && self.hold_next_acquisition.swap(false, SeqCst) {
            self.acquired.notify_one();
            self.go.notified().await;
        }
    }

    fn after_acquire<R>(&self, result: Result<R, Error>) -> Result<R, Error> {
        if result.is_ok() && take_one(&self.lose_acquire_replies) {
            return Err(injected("the acquisition ran, its reply was lost"));
        }
        result
    }
}

/// A store that delegates every step to `inner`, with the faults of [`Faults`] switched on by
/// the test. Clones share `inner`'s state (the built-in stores are handles) and the switches.
#[derive(Debug, Clone)]
pub struct Faulty<S> {
    /// The real store.
    pub inner: S,
    /// The switches.
    pub faults: Arc<Faults>,
}

impl<S> Faulty<S> {
    /// Wraps `inner`, every fault off.
    pub fn new(inner: S) -> Self {
        Faulty {
            inner,
            faults: Arc::default(),
        }
    }
}

impl<S: Store> Store for Faulty<S> {
    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }
}

#[diagnostic::do_not_recommend]
impl<S: ClaimStore> AsClaimStore for Faulty<S> {
    type Store = Self;
    fn as_claim_store(&self) -> &Self {
        self
    }
}

#[diagnostic::do_not_recommend]
impl<S: LockStore> AsLockStore for Faulty<S> {
    type Store = Self;
    fn as_lock_store(&self) -> &Self {
        self
    }
}

#[diagnostic::do_not_recommend]
impl<S: TokenStore> AsTokenStore for Faulty<S> {
    type Store = Self;
    fn as_token_store(&self) -> &Self {
        self
    }
}

impl<S: ClaimStore> ClaimStore for Faulty<S> {
    const SHARED_CLOCK: bool = S::SHARED_CLOCK;

    async fn try_claim(&self, claim: &Claim<'_>) -> Result<bool, Error> {
        let r = self.inner.try_claim(claim).await;
        self.faults.hold_if(matches!(r, Ok(true))).await;
        self.faults.after_acquire(r)
    }

    async fn read_record(&self, key: &StorageKey) -> Result<Option<Record>, Error> {
        self.inner.read_record(key).await
    }

    async fn take_over_claim(&self, claim: &Claim<'_>, previous: &str) -> Result<bool, Error> {
        let r = self.inner.take_over_claim(claim, previous).await;
        self.faults.hold_if(matches!(r, Ok(true))).await;
        self.faults.after_acquire(r)
    }

    async fn take_over_unrenewed(
        &self,
        claim: &Claim<'_>,
        previous: &str,
        expires_at_ms: i64,
    ) -> Result<bool, Error> {
        let r = self
            .inner
            .take_over_unrenewed(claim, previous, expires_at_ms)
            .await;
        self.faults.hold_if(matches!(r, Ok(true))).await;
        self.faults.after_acquire(r)
    }

    async fn complete_claim(
        &self,
        key: &StorageKey,
        owner: &str,
        response: &[u8],
        ttl: Duration,
    ) -> Result<bool, Error> {
        self.faults.before_complete().await?;
        self.inner.complete_claim(key, owner, response, ttl).await
    }

    async fn renew_claim(
        &self,
        key: &StorageKey,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, Error> {
        self.faults.before_renew()?;
        self.inner.renew_claim(key, owner, lease).await
    }

    async fn release_claim(&self, key: &StorageKey, owner: &str) -> Result<(), Error> {
        self.inner.release_claim(key, owner).await
    }

    fn release_claim_detached(&self, key: StorageKey, owner: String) {
        self.inner.release_claim_detached(key, owner)
    }
}

impl<S: LockStore> LockStore for Faulty<S> {
    async fn acquire_lock(
        &self,
        key: &StorageKey,
        owner: &str,
        fingerprint: Option<&str>,
        lease: Duration,
    ) -> Result<Acquired, Error> {
        let r = self
            .inner
            .acquire_lock(key, owner, fingerprint, lease)
            .await;
        self.faults
            .hold_if(matches!(r, Ok(Acquired::Acquired { .. })))
            .await;
        self.faults.after_acquire(r)
    }

    async fn renew_lock(
        &self,
        key: &StorageKey,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, Error> {
        self.faults.before_renew()?;
        self.inner.renew_lock(key, owner, lease).await
    }

    async fn complete_lock(
        &self,
        key: &StorageKey,
        owner: &str,
        response: &[u8],
        ttl: Duration,
    ) -> Result<bool, Error> {
        self.faults.before_complete().await?;
        self.inner.complete_lock(key, owner, response, ttl).await
    }

    async fn release_lock(&self, key: &StorageKey, owner: &str) -> Result<bool, Error> {
        self.inner.release_lock(key, owner).await
    }

    fn release_lock_detached(&self, key: StorageKey, owner: String) {
        self.inner.release_lock_detached(key, owner)
    }
}

impl<S: TokenStore> TokenStore for Faulty<S> {
    async fn issue_token(&self, token_key: &StorageKey, ttl: Duration) -> Result<(), Error> {
        self.inner.issue_token(token_key, ttl).await
    }

    async fn consume_token(
        &self,
        token_key: &StorageKey,
        owner: &str,
        binding: &str,
        fingerprint: Option<&str>,
        lease: Duration,
    ) -> Result<Consumed, Error> {
        let r = self
            .inner
            .consume_token(token_key, owner, binding, fingerprint, lease)
            .await;
        self.faults
            .hold_if(matches!(r, Ok(Consumed::Claimed)))
            .await;
        self.faults.after_acquire(r)
    }

    async fn complete_token(
        &self,
        token_key: &StorageKey,
        owner: &str,
        response: &[u8],
        ttl: Duration,
    ) -> Result<bool, Error> {
        self.faults.before_complete().await?;
        self.inner
            .complete_token(token_key, owner, response, ttl)
            .await
    }

    async fn renew_token(
        &self,
        token_key: &StorageKey,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, Error> {
        self.faults.before_renew()?;
        self.inner.renew_token(token_key, owner, lease).await
    }

    async fn restore_token(&self, token_key: &StorageKey, owner: &str) -> Result<bool, Error> {
        self.inner.restore_token(token_key, owner).await
    }

    fn restore_token_detached(&self, token_key: StorageKey, owner: String) {
        self.inner.restore_token_detached(token_key, owner)
    }
}

// ------------------------------------------------------------------------------ scenarios

/// The lease of one call in a scenario (each test service has one method per lease).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// 300 ms.
    Ms300,
    /// 1 s.
    S1,
    /// 5 s.
    S5,
    /// 30 s.
    S30,
}

/// What `observe(call)` returns.
pub type Observed = (Result<Receipt, AppError>, Option<Disposition>);

/// A test service of one claim-mode strategy on a [`Faulty`] store: what the scenarios drive.
pub trait FaultSvc: Send + Sync + 'static {
    /// What a duplicate gets while the key is held: [`Got::InProgress`], or [`Got::Duplicate`]
    /// for `token`.
    fn busy(&self) -> Got;
    /// The store's switches.
    fn faults(&self) -> &Faults;
    /// The effects the body wrote.
    fn effects(&self) -> &Effects;
    /// A request no other test uses (for `token`: carrying a freshly issued token).
    fn fresh(&self) -> impl Future<Output = Req> + Send;
    /// Calls the operation with `lease` for `r`, under `observe`.
    fn call(
        self: Arc<Self>,
        lease: Lease,
        r: Req,
    ) -> Pin<Box<dyn Future<Output = Observed> + Send>>;
}

async fn call_got<T: FaultSvc>(svc: &Arc<T>, lease: Lease, r: &Req) -> Got {
    classify(svc.clone().call(lease, r.clone()).await)
}

/// Issue input 1: lease 300 ms, the body returned `Ok`, its completion is held in flight and
/// the caller's future is aborted. Released, the completion still lands: a retry soon gets the
/// replay (bounded poll), so does a retry after the lease; exactly one effect.
pub async fn cancelled_while_completing_still_records<T: FaultSvc>(svc: Arc<T>) {
    let r = svc.fresh().await;
    svc.faults().complete_gate.arm();
    let call = tokio::spawn(svc.clone().call(Lease::Ms300, r.clone()));
    svc.faults().complete_gate.entered.notified().await;
    assert_eq!(svc.effects().count(&r), 1, "the body ran and returned Ok");
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    svc.faults().complete_gate.release.notify_one();
    let got = poll_while(&svc.busy(), Duration::from_secs(5), || {
        call_got(&svc, Lease::Ms300, &r)
    })
    .await;
    let Got::Replayed(receipt) = got else {
        panic!("the completion outlived the caller, so a retry replays: {got:?}")
    };
    assert_eq!(receipt.serial, 1, "the first (only) execution's response");
    // Wait well past the 300 ms lease: the record is completed, not a lapsed claim.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        call_got(&svc, Lease::Ms300, &r).await,
        Got::Replayed(receipt)
    );
    assert_eq!(svc.effects().count(&r), 1);
}

/// Issue input 2: the first three completions fail with a backend error (a connection reset);
/// the caller still gets its value, executed, and a retry replays; one effect.
pub async fn transient_completion_errors_are_retried<T: FaultSvc>(svc: Arc<T>) {
    let r = svc.fresh().await;
    svc.faults().fail_completes.store(3, SeqCst);
    let got1 = call_got(&svc, Lease::S5, &r).await;
    let Got::Executed(receipt) = got1 else {
        panic!("a transient completion error is retried: {got1:?}")
    };
    assert_eq!(
        svc.faults().fail_completes.load(SeqCst),
        0,
        "all three faults met"
    );
    assert_eq!(call_got(&svc, Lease::S5, &r).await, Got::Replayed(receipt));
    assert_eq!(svc.effects().count(&r), 1);
}

/// Issue input 2, the limit: a store whose completion always fails. After retrying for about
/// the lease (1 s) the caller gets `Error::Unrecorded` (not `Backend`): the effect happened,
/// its record is not written. The claim stays in progress until its lease ends (an immediate
/// retry is busy); after it a retry runs the body again — the documented second effect.
pub async fn completion_that_never_lands_is_unrecorded<T: FaultSvc>(svc: Arc<T>) {
    let r = svc.fresh().await;
    svc.faults().fail_every_complete.store(true, SeqCst);
    let (result, how) = svc.clone().call(Lease::S1, r.clone()).await;
    match &result {
        Err(AppError::Idempotency(Error::Unrecorded { retried_for, last })) => {
            assert!(
                *retried_for >= Duration::from_millis(500),
                "retried for about the lease: {retried_for:?}"
            );
            assert!(matches!(**last, Error::Backend(_)), "{last:?}");
        }
        other => panic!("expected Error::Unrecorded: {other:?} / {how:?}"),
    }
    assert_eq!(svc.effects().count(&r), 1, "the effect happened");
    svc.faults().fail_every_complete.store(false, SeqCst);
    assert_eq!(
        call_got(&svc, Lease::S1, &r).await,
        svc.busy(),
        "the claim stays until its lease ends"
    );
    let after = poll_while(&svc.busy(), Duration::from_secs(10), || {
        call_got(&svc, Lease::S1, &r)
    })
    .await;
    assert!(
        matches!(after, Got::Executed(_)),
        "after the lease a retry runs again: {after:?}"
    );
    assert_eq!(svc.effects().count(&r), 2, "the documented second effect");
}

/// A slow acquisition reply — 700 ms of a 1 s lease, under the point where the body is refused
/// — must not let the claim lapse while the body runs: its renewal schedule starts when the
/// acquisition was sent, so the first renewal is already due when the body starts, not a third
/// of a lease later (which would be after the claim's expiry). The body is held at its gate
/// while duplicates keep arriving for 1.5 s — past the claim's original expiry — and every one
/// gets the busy answer; released, the first call executes: exactly one effect. (The 700 ms
/// hold is the fault itself, a reply that slow; nothing is lined up by sleeping.)
pub async fn slow_acquisition_reply_keeps_the_claim<T: FaultSvc>(svc: Arc<T>) {
    let r = svc.fresh().await;
    svc.faults().hold_next_acquisition.store(true, SeqCst);
    svc.effects().gate.arm();
    let call = tokio::spawn(svc.clone().call(Lease::S1, r.clone()));
    svc.faults().acquired.notified().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    svc.faults().go.notify_one();
    svc.effects().gate.entered.notified().await;
    let held_since = tokio::time::Instant::now();
    while held_since.elapsed() < Duration::from_millis(1500) {
        let got = call_got(&svc, Lease::S1, &r).await;
        assert_eq!(got, svc.busy(), "a duplicate while the first body runs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    svc.effects().gate.release.notify_one();
    let (first, how) = call.await.expect("the first call's task");
    assert!(
        first.is_ok() && how == Some(Disposition::Executed),
        "{first:?} / {how:?}"
    );
    assert_eq!(svc.effects().count(&r), 1);
}

/// A client timeout while the acquisition is in flight (the claim, lock or consumption ran on
/// the store; its reply is held until the caller has given up): the caller's future is
/// aborted before the body could run, so the key is released by owner in the background,
/// whatever `on_cancel` says. With a 30 s lease, the next call executes within 1 s (bounded
/// poll), not after the lease; exactly one effect.
pub async fn cancelled_during_acquisition_frees_the_key<T: FaultSvc>(svc: Arc<T>) {
    let r = svc.fresh().await;
    svc.faults().hold_next_acquisition.store(true, SeqCst);
    let call = tokio::spawn(svc.clone().call(Lease::S30, r.clone()));
    svc.faults().acquired.notified().await;
    call.abort();
    assert!(
        call.await.is_err_and(|e| e.is_cancelled()),
        "the call was aborted"
    );
    assert_eq!(svc.effects().count(&r), 0, "the body did not run");
    let next = poll_while(&svc.busy(), Duration::from_secs(1), || {
        call_got(&svc, Lease::S30, &r)
    })
    .await;
    assert!(matches!(next, Got::Executed(_)), "{next:?}");
    assert_eq!(svc.effects().count(&r), 1);
}

/// Issue input 3: the acquisition ran on the store but its reply was lost. The caller gets
/// `Error::Backend` and releases by owner in the background, so the next call (another owner)
/// executes within a second, long before the 30 s lease; one effect.
pub async fn lost_acquisition_reply_frees_the_key<T: FaultSvc>(svc: Arc<T>) {
    let r = svc.fresh().await;
    svc.faults().lose_acquire_replies.store(1, SeqCst);
    let (first, how) = svc.clone().call(Lease::S30, r.clone()).await;
    assert!(
        matches!(first, Err(AppError::Idempotency(Error::Backend(_)))),
        "{first:?} / {how:?}"
    );
    assert_eq!(svc.effects().count(&r), 0, "the body did not run");
    let next = poll_while(&svc.busy(), Duration::from_secs(1), || {
        call_got(&svc, Lease::S30, &r)
    })
    .await;
    assert!(matches!(next, Got::Executed(_)), "{next:?}");
    assert_eq!(svc.effects().count(&r), 1);
}

/// Defines one `async fn <scenario><S: $bound>(store: S)` per fault scenario of this module,
/// each running it on `$svc::new(store)` (a [`FaultSvc`] over a [`Faulty`] store), for a test
/// file to list in `on_claim_backends!` / `on_kv_backends!` under the scenarios' own names:
/// `fault_scenarios!(Svc, ClaimStore);`.
#[macro_export]
macro_rules! fault_scenarios {
    ($svc:ident, $bound:path) => {
        async fn cancelled_while_completing_still_records<S: $bound>(store: S) {
            $crate::faults::cancelled_while_completing_still_records($svc::new(store)).await
        }
        async fn transient_completion_errors_are_retried<S: $bound>(store: S) {
            $crate::faults::transient_completion_errors_are_retried($svc::new(store)).await
        }
        async fn completion_that_never_lands_is_unrecorded<S: $bound>(store: S) {
            $crate::faults::completion_that_never_lands_is_unrecorded($svc::new(store)).await
        }
        async fn cancelled_during_acquisition_frees_the_key<S: $bound>(store: S) {
            $crate::faults::cancelled_during_acquisition_frees_the_key($svc::new(store)).await
        }
        async fn slow_acquisition_reply_keeps_the_claim<S: $bound>(store: S) {
            $crate::faults::slow_acquisition_reply_keeps_the_claim($svc::new(store)).await
        }
        async fn lost_acquisition_reply_frees_the_key<S: $bound>(store: S) {
            $crate::faults::lost_acquisition_reply_frees_the_key($svc::new(store)).await
        }
    };
}
