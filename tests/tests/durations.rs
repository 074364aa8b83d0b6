//! The duration floors (`idempotent_runtime::strategy::durations`) and the error of a claim that
//! took its whole lease.
//!
//! - The runtime's floors are the numbers the macro repeats (300 ms lease, ttl at least the
//!   lease, 10 ms wait): attributes exactly at the floor run, and the ui cases
//!   `tests/ui/{pass,fail}/duration_floor*.rs` pin the macro to the same numbers.
//! - Options built in code below a floor are refused by each entry point before any store call
//!   (`Error::InvalidOption`): nothing runs, the key stays free. Memory store and SQLite (claim
//!   and transactional modes); the check is pure, so one SQL store stands for the others.
//! - A claim (consumed token) whose acquisition took at least the lease, taken over meanwhile,
//!   does not run its body: it ends in `Error::LeaseShorterThanAcquisition`,
//!   and the ledger holds exactly the one effect of the caller that took it over: `dedup_table`
//!   on PostgreSQL, MariaDB, SQLite, memory, Redis and Redis Cluster; `token` on memory, Redis
//!   and Redis Cluster (`distributed_lock`: tests/tests/distributed_lock.rs,
//!   `slow_acquisition_never_runs_the_body`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::Duration;

use idempotent_runtime::store::Record;
use idempotent_runtime::strategy::durations::{DEFAULT_LEASE, DEFAULT_TTL, MIN_LEASE, MIN_WAIT};
use idempotent_runtime::strategy::{dedup_table, distributed_lock, not_compared, token};
use idempotent_runtime::{
    ClaimStore, Disposition, Error, KeyBuilder, MemoryStore, OnBusy, StorageKey, TokenStore,
    idempotent, issue_token, observe,
};
use idempotent_tests::{AppError, Faulty, unique};
use tokio::time::Instant;

/// `(value, disposition)` of an `observe`d call, or its error as text (`AppError` has no
/// `PartialEq`).
fn seen(
    r: (Result<u32, AppError>, Option<Disposition>),
) -> Result<(u32, Option<Disposition>), String> {
    match r {
        (Ok(v), how) => Ok((v, how)),
        (Err(e), _) => Err(format!("{e:?}")),
    }
}

fn key() -> StorageKey {
    KeyBuilder::new(&unique("tests.durations"))
        .part("k")
        .finish()
        .unwrap()
}

/// The floors are the numbers README, the macro and the ui cases state; the defaults are the
/// options' defaults.
#[test]
fn floors_and_defaults_are_the_documented_numbers() {
    assert_eq!(MIN_LEASE, Duration::from_millis(300));
    assert_eq!(MIN_WAIT, Duration::from_millis(10));
    assert_eq!(DEFAULT_LEASE, Duration::from_secs(30));
    assert_eq!(DEFAULT_TTL, Duration::from_secs(24 * 60 * 60));
    let d = dedup_table::Options::default();
    assert_eq!((d.lease, d.ttl), (DEFAULT_LEASE, DEFAULT_TTL));
    let l = distributed_lock::Options::default();
    assert_eq!((l.lease, l.ttl), (DEFAULT_LEASE, DEFAULT_TTL));
    let t = token::Options::default();
    assert_eq!((t.lease, t.ttl), (DEFAULT_LEASE, DEFAULT_TTL));
    assert!(d.check().is_ok() && l.check().is_ok() && t.check().is_ok());
}

// ------------------------------------------------------------ attributes exactly at the floor

struct Svc {
    store: MemoryStore,
    effects: AtomicU32,
}

impl Svc {
    #[idempotent(
        strategy = "dedup_table",
        key = "id",
        store = "self.store",
        lease = "300ms",
        ttl = "300ms",
        on_busy = "wait(10ms)"
    )]
    async fn place(&self, id: &str) -> Result<u32, AppError> {
        Ok(self.effects.fetch_add(1, SeqCst) + 1)
    }

    #[idempotent(
        strategy = "distributed_lock",
        key = "id",
        store = "self.store",
        lease = "300ms",
        ttl = "300ms",
        on_busy = "wait(10ms)"
    )]
    async fn settle(&self, id: &str) -> Result<u32, AppError> {
        Ok(self.effects.fetch_add(1, SeqCst) + 1)
    }

    #[idempotent(
        strategy = "token",
        key = "token",
        store = "self.store",
        lease = "300ms",
        ttl = "300ms"
    )]
    async fn redeem(&self, token: &str) -> Result<u32, AppError> {
        Ok(self.effects.fetch_add(1, SeqCst) + 1)
    }
}

/// The macro accepts these values (the ui pass case), so the runtime must run them: one effect
/// each, and the duplicate replays it.
#[tokio::test]
async fn attributes_at_the_floor_run() {
    let svc = Svc {
        store: MemoryStore::new(),
        effects: AtomicU32::new(0),
    };
    let id = unique("id");
    assert_eq!(
        seen(observe(svc.place(&id)).await),
        Ok((1, Some(Disposition::Executed)))
    );
    assert_eq!(
        seen(observe(svc.place(&id)).await),
        Ok((1, Some(Disposition::Replayed)))
    );
    assert_eq!(
        seen(observe(svc.settle(&id)).await),
        Ok((2, Some(Disposition::Executed)))
    );
    assert_eq!(
        seen(observe(svc.settle(&id)).await),
        Ok((2, Some(Disposition::Replayed)))
    );
    let t = issue_token(&svc.store, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        seen(observe(svc.redeem(&t)).await),
        Ok((3, Some(Disposition::Executed)))
    );
    assert_eq!(
        seen(observe(svc.redeem(&t)).await),
        Ok((3, Some(Disposition::Replayed)))
    );
    assert_eq!(svc.effects.load(SeqCst), 3);
}

// ------------------------------------------------------- options built in code, below a floor

/// `Error::InvalidOption` for `option`, with the given value and minimum.
fn invalid(got: &Result<u32, AppError>, option: &str, value: Duration, minimum: Duration) -> bool {
    matches!(
        got,
        Err(AppError::Idempotency(Error::InvalidOption { option: o, value: v, minimum: m, .. }))
            if *o == option && *v == value && *m == minimum
    )
}

/// The bad option sets of `dedup_table` and `distributed_lock`, each with the error it gets:
/// a lease 1 ms below the floor, a ttl 1 ms below the lease, a wait 1 ms below the floor.
fn bad_cases() -> Vec<(Duration, Duration, OnBusy, &'static str, Duration, Duration)> {
    let ms = Duration::from_millis;
    vec![
        (
            ms(299),
            DEFAULT_TTL,
            OnBusy::Reject,
            "lease",
            ms(299),
            MIN_LEASE,
        ),
        (
            ms(1),
            DEFAULT_TTL,
            OnBusy::Reject,
            "lease",
            ms(1),
            MIN_LEASE,
        ),
        (
            ms(2000),
            ms(1999),
            OnBusy::Reject,
            "ttl",
            ms(1999),
            ms(2000),
        ),
        (
            DEFAULT_LEASE,
            ms(29_999),
            OnBusy::Reject,
            "ttl",
            ms(29_999),
            DEFAULT_LEASE,
        ),
        (
            MIN_LEASE,
            MIN_LEASE,
            OnBusy::Wait(ms(9)),
            "on_busy",
            ms(9),
            MIN_WAIT,
        ),
    ]
}

/// `dedup_table` claim mode on `store`: each bad option set is refused before any store call
/// (the body does not run, no record is written), and the options at the floor run.
async fn dedup_table_refuses_options_below_the_floors<S: ClaimStore>(store: &S) {
    let effects = AtomicU32::new(0);
    let body = async || -> Result<u32, AppError> { Ok(effects.fetch_add(1, SeqCst) + 1) };
    for (lease, ttl, on_busy, option, value, minimum) in bad_cases() {
        let k = key();
        let options = dedup_table::Options {
            lease,
            ttl,
            on_busy,
            ..Default::default()
        };
        assert!(options.check().is_err());
        let got = dedup_table::run(store, k.clone(), None, options, not_compared, body).await;
        assert!(invalid(&got, option, value, minimum), "{option}: {got:?}");
        assert_eq!(effects.load(SeqCst), 0, "the body did not run");
        assert_eq!(store.read_record(&k).await.unwrap(), None::<Record>);
    }
    let at_floor = dedup_table::Options {
        lease: MIN_LEASE,
        ttl: MIN_LEASE,
        on_busy: OnBusy::Wait(MIN_WAIT),
        ..Default::default()
    };
    let got = observe(dedup_table::run(
        store,
        key(),
        None,
        at_floor,
        not_compared,
        body,
    ))
    .await;
    assert_eq!(seen(got), Ok((1, Some(Disposition::Executed))));
}

/// No upper bound is needed: `Duration::MAX` as lease and TTL (built in code) means "for good"
/// on the memory store — the call runs once and replays — instead of overflowing an `Instant`.
#[tokio::test]
async fn duration_max_lease_and_ttl_run_on_memory() {
    let store = MemoryStore::new();
    let options = dedup_table::Options {
        lease: Duration::MAX,
        ttl: Duration::MAX,
        ..Default::default()
    };
    let effects = AtomicU32::new(0);
    let k = key();
    for expected in [Disposition::Executed, Disposition::Replayed] {
        let body = async || -> Result<u32, AppError> { Ok(effects.fetch_add(1, SeqCst) + 1) };
        let got = observe(dedup_table::run(
            &store,
            k.clone(),
            None,
            options,
            not_compared,
            body,
        ))
        .await;
        assert_eq!(seen(got), Ok((1, Some(expected))));
    }
    assert_eq!(effects.load(SeqCst), 1);
}

/// The same for `token` on the memory store: issued, consumed and completed with
/// `Duration::MAX` durations, then replayed.
#[tokio::test]
async fn duration_max_token_runs_on_memory() {
    let store = MemoryStore::new();
    let t = issue_token(&store, Duration::MAX).await.unwrap();
    let options = token::Options {
        lease: Duration::MAX,
        ttl: Duration::MAX,
        ..Default::default()
    };
    let effects = AtomicU32::new(0);
    let binding = key();
    for expected in [Disposition::Executed, Disposition::Replayed] {
        let body = async || -> Result<u32, AppError> { Ok(effects.fetch_add(1, SeqCst) + 1) };
        let got = observe(token::run(
            &store,
            t.as_str(),
            binding.clone(),
            None,
            options,
            not_compared,
            body,
        ))
        .await;
        assert_eq!(seen(got), Ok((1, Some(expected))));
    }
    assert_eq!(effects.load(SeqCst), 1);
}

#[tokio::test]
async fn dedup_table_options_below_the_floors_memory() {
    dedup_table_refuses_options_below_the_floors(&MemoryStore::new()).await;
}

#[tokio::test]
async fn dedup_table_options_below_the_floors_sqlite() {
    let Some((pool, _dir)) = idempotent_tests::sqlite().await else {
        return;
    };
    dedup_table_refuses_options_below_the_floors(&pool).await;
}

/// `dedup_table` with `#[tx]` (SQLite): the same options, the same check, nothing written.
#[tokio::test]
async fn dedup_table_in_tx_options_below_the_floors_sqlite() {
    let Some((pool, _dir)) = idempotent_tests::sqlite().await else {
        return;
    };
    let effects = AtomicU32::new(0);
    let body = async |_: &mut sqlx::SqliteConnection| -> Result<u32, AppError> {
        Ok(effects.fetch_add(1, SeqCst) + 1)
    };
    for (lease, ttl, on_busy, option, value, minimum) in bad_cases() {
        let k = key();
        let options = dedup_table::Options {
            lease,
            ttl,
            on_busy,
            ..Default::default()
        };
        let got = dedup_table::run_in_tx(&pool, k.clone(), None, options, not_compared, body).await;
        assert!(invalid(&got, option, value, minimum), "{option}: {got:?}");
        assert_eq!(effects.load(SeqCst), 0, "the body did not run");
        assert_eq!(pool.read_record(&k).await.unwrap(), None::<Record>);
    }
    let at_floor = dedup_table::Options {
        lease: MIN_LEASE,
        ttl: MIN_LEASE,
        on_busy: OnBusy::Wait(MIN_WAIT),
        ..Default::default()
    };
    let got = observe(dedup_table::run_in_tx(
        &pool,
        key(),
        None,
        at_floor,
        not_compared,
        body,
    ))
    .await;
    assert_eq!(seen(got), Ok((1, Some(Disposition::Executed))));
}

/// `distributed_lock` (memory store): refused before acquiring, so the lock stays free.
#[tokio::test]
async fn distributed_lock_options_below_the_floors() {
    use idempotent_runtime::LockStore;
    use idempotent_runtime::store::Acquired;
    let store = MemoryStore::new();
    let effects = AtomicU32::new(0);
    let body = async |_| -> Result<u32, AppError> { Ok(effects.fetch_add(1, SeqCst) + 1) };
    for (lease, ttl, on_busy, option, value, minimum) in bad_cases() {
        let k = key();
        let options = distributed_lock::Options {
            lease,
            ttl,
            on_busy,
            ..Default::default()
        };
        assert!(options.check().is_err());
        let got = distributed_lock::run(&store, k.clone(), None, options, not_compared, body).await;
        assert!(invalid(&got, option, value, minimum), "{option}: {got:?}");
        assert_eq!(effects.load(SeqCst), 0, "the body did not run");
        let free = store
            .acquire_lock(&k, &"f".repeat(32), None, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(
            matches!(free, Acquired::Acquired { .. }),
            "the refused call never acquired the lock: {free:?}"
        );
    }
    let at_floor = distributed_lock::Options {
        lease: MIN_LEASE,
        ttl: MIN_LEASE,
        on_busy: OnBusy::Wait(MIN_WAIT),
        ..Default::default()
    };
    let got = observe(distributed_lock::run(
        &store,
        key(),
        None,
        at_floor,
        not_compared,
        body,
    ))
    .await;
    assert_eq!(seen(got), Ok((1, Some(Disposition::Executed))));
}

/// `token` (memory store): refused before consuming, so the token still runs the body once.
#[tokio::test]
async fn token_options_below_the_floors() {
    let store = MemoryStore::new();
    let effects = AtomicU32::new(0);
    let body = async || -> Result<u32, AppError> { Ok(effects.fetch_add(1, SeqCst) + 1) };
    let t = issue_token(&store, Duration::from_secs(60)).await.unwrap();
    let ms = Duration::from_millis;
    for (lease, ttl, option, value, minimum) in [
        (ms(299), DEFAULT_TTL, "lease", ms(299), MIN_LEASE),
        (ms(2000), ms(1999), "ttl", ms(1999), ms(2000)),
    ] {
        let options = token::Options {
            lease,
            ttl,
            ..Default::default()
        };
        assert!(options.check().is_err());
        let got = token::run(&store, t.as_str(), key(), None, options, not_compared, body).await;
        assert!(invalid(&got, option, value, minimum), "{option}: {got:?}");
        assert_eq!(effects.load(SeqCst), 0, "the body did not run");
    }
    let at_floor = token::Options {
        lease: MIN_LEASE,
        ttl: MIN_LEASE,
        ..Default::default()
    };
    let got = observe(token::run(
        &store,
        t.as_str(),
        key(),
        None,
        at_floor,
        not_compared,
        body,
    ))
    .await;
    assert_eq!(
        seen(got),
        Ok((1, Some(Disposition::Executed))),
        "the token was not consumed by the refused calls"
    );
}

// ------------------------------------------------------- an acquisition slower than the lease

/// A [`Faulty`] store (the harness's fault-injecting wrapper) whose next successful claim or
/// consumption, once armed, is held after the server has answered: the claim is then older than
/// the caller knows — the acquisition is as slow as the test makes it.
fn slow<S>(store: S) -> Arc<Faulty<S>> {
    Arc::new(Faulty::new(store))
}

fn arm<S>(store: &Faulty<S>) {
    store.faults.hold_next_acquisition.store(true, SeqCst);
}

/// What the late caller got: `LeaseShorterThanAcquisition` with the body not run, its lease, and
/// an acquisition at least that long; the message says so.
fn assert_lease_shorter_than_acquisition(got: &Result<u32, AppError>, lease: Duration) {
    assert!(
        matches!(
            got,
            Err(AppError::Idempotency(Error::LeaseShorterThanAcquisition {
                lease: l,
                took,
            })) if *l == lease && *took >= lease
        ),
        "{got:?}"
    );
    let message = got.as_ref().unwrap_err().to_string();
    assert!(
        message.contains("not less than its lease of 300ms")
            && message.contains("the body was not run"),
        "{message}"
    );
}

/// `dedup_table`: caller A's claim is answered but reaches A only after its 300 ms lease (the
/// store holds the reply). Meanwhile B takes the expired claim over, runs the body and
/// completes. A learns that its acquisition outlasted its lease and does not run the body (it
/// would be the second effect): exactly one effect, B's, whose response is replayed.
async fn dedup_table_slow_claim_says_so<S: ClaimStore + 'static>(store: S) {
    let store = slow(store);
    let effects = Arc::new(AtomicU32::new(0));
    let k = key();
    let options = dedup_table::Options {
        lease: MIN_LEASE,
        ..Default::default()
    };
    arm(&store);
    let a = tokio::spawn({
        let (store, effects, k) = (store.clone(), effects.clone(), k.clone());
        async move {
            let body = async || -> Result<u32, AppError> { Ok(effects.fetch_add(1, SeqCst) + 1) };
            dedup_table::run(&*store, k, None, options, not_compared, body).await
        }
    });
    store.faults.acquired.notified().await;
    let held_since = Instant::now();
    // B polls (20 ms apart, bounded) until A's claim has expired and B has taken it over.
    let b = loop {
        let body = async || -> Result<u32, AppError> { Ok(effects.fetch_add(1, SeqCst) + 1) };
        match observe(dedup_table::run(
            &*store,
            k.clone(),
            None,
            options,
            not_compared,
            body,
        ))
        .await
        {
            (Err(AppError::Idempotency(Error::InProgress)), _) => {
                assert!(
                    held_since.elapsed() < Duration::from_secs(10),
                    "never expired"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => break other,
        }
    };
    assert_eq!(seen(b), Ok((1, Some(Disposition::Executed))));
    // A's acquisition lasts at least its lease, whatever the store's timestamp resolution.
    tokio::time::sleep_until(held_since + MIN_LEASE).await;
    store.faults.go.notify_one();
    let a = a.await.unwrap();
    assert_lease_shorter_than_acquisition(&a, MIN_LEASE);
    assert_eq!(
        effects.load(SeqCst),
        1,
        "only B's body ran: A's claim had expired before its body could start"
    );
    let body = async || -> Result<u32, AppError> { Ok(effects.fetch_add(1, SeqCst) + 1) };
    let replay = observe(dedup_table::run(
        &*store,
        k,
        None,
        options,
        not_compared,
        body,
    ))
    .await;
    assert_eq!(
        seen(replay),
        Ok((1, Some(Disposition::Replayed))),
        "B's record"
    );
}

/// `token`: the same with a consumption whose reply reaches A after its lease; B, retrying
/// with the same token, gets `Duplicate` until the lease ends, then consumes it and completes.
async fn token_slow_consume_says_so<S: TokenStore + 'static>(store: S) {
    let store = slow(store);
    let effects = Arc::new(AtomicU32::new(0));
    let t = issue_token(&*store, Duration::from_secs(60)).await.unwrap();
    let binding = key();
    let options = token::Options {
        lease: MIN_LEASE,
        ..Default::default()
    };
    arm(&store);
    let a = tokio::spawn({
        let (store, effects, t, binding) =
            (store.clone(), effects.clone(), t.clone(), binding.clone());
        async move {
            let body = async || -> Result<u32, AppError> { Ok(effects.fetch_add(1, SeqCst) + 1) };
            token::run(
                &*store,
                t.as_str(),
                binding,
                None,
                options,
                not_compared,
                body,
            )
            .await
        }
    });
    store.faults.acquired.notified().await;
    let held_since = Instant::now();
    let b = loop {
        let body = async || -> Result<u32, AppError> { Ok(effects.fetch_add(1, SeqCst) + 1) };
        match observe(token::run(
            &*store,
            t.as_str(),
            binding.clone(),
            None,
            options,
            not_compared,
            body,
        ))
        .await
        {
            (Err(AppError::Idempotency(Error::Duplicate)), _) => {
                assert!(
                    held_since.elapsed() < Duration::from_secs(10),
                    "never expired"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => break other,
        }
    };
    assert_eq!(seen(b), Ok((1, Some(Disposition::Executed))));
    tokio::time::sleep_until(held_since + MIN_LEASE).await;
    store.faults.go.notify_one();
    let a = a.await.unwrap();
    assert_lease_shorter_than_acquisition(&a, MIN_LEASE);
    assert_eq!(
        effects.load(SeqCst),
        1,
        "only B's body ran: A's consumption had expired before its body could start"
    );
    let body = async || -> Result<u32, AppError> { Ok(effects.fetch_add(1, SeqCst) + 1) };
    let replay = observe(token::run(
        &*store,
        t.as_str(),
        binding,
        None,
        options,
        not_compared,
        body,
    ))
    .await;
    assert_eq!(
        seen(replay),
        Ok((1, Some(Disposition::Replayed))),
        "B's record"
    );
}

mod slow_claim {
    use super::dedup_table_slow_claim_says_so;
    idempotent_tests::on_claim_backends!(dedup_table_slow_claim_says_so);
}

mod slow_consume {
    use super::token_slow_consume_says_so;
    idempotent_tests::on_kv_backends!(token_slow_consume_says_so);
}
