//! Tracing: every call runs in one `idempotent.call` span and reports exactly its decisions as
//! events (`decision` field), in order; no field of any span or event holds the raw
//! idempotency key, the scope or the payload. A capturing `tracing-subscriber` layer records
//! every span and event of the test's thread (so every test runs on a current-thread runtime:
//! a completion task spawned by the call runs on that thread too).
//!
//! Besides the everyday paths, each rarer decision is driven by a real scenario, on the memory
//! store where it can happen there and on real backends, lined up with notifications and
//! deterministic faults (never sleeps): `lock_lost` (a claim evicted by force while its body is
//! parked, taken by a second caller; or a claim, lock or consumed token whose renewals all fail, so
//! that its 300 ms lease runs out while the body is parked — a bounded poll waits for that lease,
//! the fault itself — and a duplicate takes it over), `completion_retried` (completions failing
//! with a backend error through the [`Faulty`] store wrapper), `contention_retry` (a business
//! strategy's transaction failing with the backend's retryable error; `dedup_table`'s claim
//! statement and claim transaction meeting SQLSTATE 40001 from a trigger, in a PostgreSQL schema
//! and a MariaDB database of the test's own). `contention_retry` is SQL-only: the memory store's
//! and Redis's steps are atomic (one lock, one Lua script) and never conflict.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idempotent_runtime::admin::{AdminStore, Evicted};
use idempotent_runtime::strategy::{dedup_table, distributed_lock, not_compared, token};
use idempotent_runtime::{
    ClaimStore, Disposition, Error, Fingerprinter, KeyBuilder, LockStore, MemoryStore, OnBusy,
    StorageKey, TokenStore, idempotent, issue_token, observe,
};
use idempotent_tests::{AppError, Faulty, Got, got, unique};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// What the raw key, the scope and the payload contain; no recorded field may.
const SECRET: &str = "SECRET";

/// The fields of one span or event, as text.
type Fields = BTreeMap<String, String>;

struct FieldText<'a>(&'a mut Fields);

impl Visit for FieldText<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

#[derive(Default)]
struct Seen {
    /// Span id → (name, fields).
    spans: BTreeMap<u64, (String, Fields)>,
    /// Span ids in the order the spans were created (an id alone does not tell: the registry
    /// reuses a closed span's slot under a higher generation).
    created: Vec<u64>,
    /// (span id the event is in, fields), in order.
    events: Vec<(Option<u64>, Fields)>,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Seen>>);

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut fields = Fields::new();
        attrs.record(&mut FieldText(&mut fields));
        let mut seen = self.0.lock().unwrap();
        seen.spans
            .insert(id.into_u64(), (attrs.metadata().name().to_owned(), fields));
        seen.created.push(id.into_u64());
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut seen = self.0.lock().unwrap();
        if let Some((_, fields)) = seen.spans.get_mut(&id.into_u64()) {
            values.record(&mut FieldText(fields));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Fields::new();
        event.record(&mut FieldText(&mut fields));
        let span = ctx.event_span(event).map(|s| s.id().into_u64());
        self.0.lock().unwrap().events.push((span, fields));
    }
}

impl Capture {
    /// Installs the layer for this thread; the guard uninstalls it.
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::registry().with(self.clone());
        tracing::subscriber::set_default(subscriber)
    }

    /// The decisions of each `idempotent.call` span, in the order the spans were created, after
    /// checking that no field anywhere holds [`SECRET`] and that every decision event is in a
    /// call span.
    fn calls(&self) -> Vec<(Fields, Vec<String>)> {
        let seen = self.0.lock().unwrap();
        for (name, fields) in seen.spans.values() {
            for (k, v) in fields {
                assert!(!v.contains(SECRET), "span {name} field {k} = {v}");
            }
        }
        let mut calls: BTreeMap<u64, (Fields, Vec<String>)> = seen
            .spans
            .iter()
            .filter(|(_, (name, _))| name == "idempotent.call")
            .map(|(id, (_, fields))| (*id, (fields.clone(), Vec::new())))
            .collect();
        for (span, fields) in &seen.events {
            for (k, v) in fields {
                assert!(!v.contains(SECRET), "event field {k} = {v}");
            }
            if let Some(decision) = fields.get("decision") {
                let call = span
                    .and_then(|s| calls.get_mut(&s))
                    .unwrap_or_else(|| panic!("decision {decision} outside a call span"));
                call.1.push(decision.clone());
            }
        }
        seen.created
            .iter()
            .filter_map(|id| calls.remove(id))
            .collect()
    }

    /// The decisions of each call, span fields left out.
    fn decisions(&self) -> Vec<Vec<String>> {
        self.calls().into_iter().map(|(_, d)| d).collect()
    }
}

fn key(name: &str) -> StorageKey {
    KeyBuilder::new(name)
        .scope(&format!("tenant-{SECRET}"))
        .part(&unique(&format!("key-{SECRET}")))
        .finish()
        .unwrap()
}

fn fp(payload: &str) -> Option<idempotent_runtime::Fingerprint> {
    Fingerprinter::new()
        .arg("payload", &format!("{payload}-{SECRET}"))
        .finish()
        .unwrap()
}

fn strs(v: &[&[&str]]) -> Vec<Vec<String>> {
    v.iter()
        .map(|d| d.iter().map(|s| (*s).to_owned()).collect())
        .collect()
}

#[tokio::test]
async fn dedup_table_claim_mode_reports_each_decision() {
    let capture = Capture::default();
    let _guard = capture.install();
    let store = MemoryStore::new();
    let effects = AtomicU32::new(0);
    let ok = async || -> Result<String, AppError> {
        effects.fetch_add(1, SeqCst);
        Ok(format!("response-{SECRET}"))
    };
    let k = key("telemetry::place");
    let opts = dedup_table::Options::default();
    let first = observe(dedup_table::run(
        &store,
        k.clone(),
        fp("a"),
        opts,
        not_compared,
        ok,
    ))
    .await;
    assert_eq!(first.1, Some(Disposition::Executed));
    let second = observe(dedup_table::run(
        &store,
        k.clone(),
        fp("a"),
        opts,
        not_compared,
        ok,
    ))
    .await;
    assert_eq!(second.1, Some(Disposition::Replayed));
    let other = dedup_table::run(&store, k.clone(), fp("b"), opts, not_compared, ok).await;
    assert!(
        matches!(
            other,
            Err(AppError::Idempotency(
                idempotent_runtime::Error::FingerprintMismatch
            ))
        ),
        "{other:?}"
    );
    let failing = async || -> Result<String, AppError> {
        effects.fetch_add(1, SeqCst);
        Err(AppError::Rejected)
    };
    let failed = dedup_table::run(
        &store,
        key("telemetry::place"),
        fp("a"),
        opts,
        not_compared,
        failing,
    )
    .await;
    assert!(failed.is_err());
    assert_eq!(effects.load(SeqCst), 2);

    let calls = capture.calls();
    assert_eq!(
        calls.iter().map(|c| c.1.clone()).collect::<Vec<_>>(),
        strs(&[
            &["claimed", "executed"],
            &["replayed"],
            &["fingerprint_mismatch"],
            &["claimed", "released"],
        ])
    );
    let (fields, _) = &calls[0];
    assert_eq!(fields["operation"], "telemetry::place");
    assert_eq!(fields["strategy"], "dedup_table");
    assert_eq!(fields["store"], "memory");
    assert_eq!(fields["key"], &k.hex()[..12]);
}

#[tokio::test]
async fn dedup_table_busy_key_reports_in_progress_or_a_wait() {
    let capture = Capture::default();
    let _guard = capture.install();
    let store = MemoryStore::new();
    let k = key("telemetry::busy");
    let release = tokio::sync::Notify::new();
    let holder = async || -> Result<u32, AppError> {
        release.notified().await;
        Ok(7)
    };
    let never = async || -> Result<u32, AppError> { panic!("a duplicate ran the body") };
    let reject = dedup_table::Options::default();
    let wait = dedup_table::Options {
        on_busy: OnBusy::Wait(Duration::from_secs(30)),
        ..Default::default()
    };
    // join! polls in order on this one thread: the holder claims and parks in its body, the
    // rejected duplicate and the waiting one find the claim, then the holder is let go.
    let (held, rejected, waited, ()) = tokio::join!(
        observe(dedup_table::run(
            &store,
            k.clone(),
            None,
            reject,
            not_compared,
            holder
        )),
        dedup_table::run(&store, k.clone(), None, reject, not_compared, never),
        observe(dedup_table::run(
            &store,
            k.clone(),
            None,
            wait,
            not_compared,
            never
        )),
        async { release.notify_one() },
    );
    assert!(
        matches!(held, (Ok(7), Some(Disposition::Executed))),
        "{held:?}"
    );
    assert!(
        matches!(
            rejected,
            Err(AppError::Idempotency(idempotent_runtime::Error::InProgress))
        ),
        "{rejected:?}"
    );
    assert!(
        matches!(waited, (Ok(7), Some(Disposition::Replayed))),
        "{waited:?}"
    );
    assert_eq!(
        capture.decisions(),
        strs(&[
            &["claimed", "executed"],
            &["in_progress"],
            &["waited", "replayed"]
        ])
    );
}

#[tokio::test]
async fn distributed_lock_reports_each_decision() {
    let capture = Capture::default();
    let _guard = capture.install();
    let store = MemoryStore::new();
    let k = key("telemetry::lock");
    let opts = distributed_lock::Options::default();
    for _ in 0..2 {
        let got = distributed_lock::run(
            &store,
            k.clone(),
            fp("a"),
            opts,
            not_compared,
            async |_fence| Ok::<_, AppError>(1u8),
        )
        .await;
        assert_eq!(got.unwrap(), 1);
    }
    let failed = distributed_lock::run(
        &store,
        key("telemetry::lock"),
        None,
        opts,
        not_compared,
        async |_fence| Err::<u8, _>(AppError::Rejected),
    )
    .await;
    assert!(failed.is_err());
    let calls = capture.calls();
    assert_eq!(
        calls.iter().map(|c| c.1.clone()).collect::<Vec<_>>(),
        strs(&[
            &["claimed", "executed"],
            &["replayed"],
            &["claimed", "released"]
        ])
    );
    assert_eq!(calls[0].0["strategy"], "distributed_lock");
}

#[tokio::test]
async fn token_reports_each_decision() {
    let capture = Capture::default();
    let _guard = capture.install();
    let store = MemoryStore::new();
    let opts = token::Options::default();
    let t = issue_token(&store, Duration::from_secs(60)).await.unwrap();
    let binding = key("telemetry::token");
    for _ in 0..2 {
        let got = token::run(
            &store,
            t.as_str(),
            binding.clone(),
            None,
            opts,
            not_compared,
            async || Ok::<_, AppError>(2u8),
        )
        .await;
        assert_eq!(got.unwrap(), 2);
    }
    let t2 = issue_token(&store, Duration::from_secs(60)).await.unwrap();
    let failed = token::run(
        &store,
        t2.as_str(),
        binding.clone(),
        None,
        opts,
        not_compared,
        async || Err::<u8, _>(AppError::Rejected),
    )
    .await;
    assert!(failed.is_err());
    let calls = capture.calls();
    assert_eq!(
        calls.iter().map(|c| c.1.clone()).collect::<Vec<_>>(),
        strs(&[
            &["claimed", "executed"],
            &["replayed"],
            &["claimed", "released"]
        ])
    );
    assert_eq!(calls[0].0["strategy"], "token");
    // The token itself is a secret too: it is in no field.
    let seen = capture.0.lock().unwrap();
    let spans = seen.spans.values().map(|(_, f)| f);
    for fields in spans.chain(seen.events.iter().map(|(_, f)| f)) {
        assert!(
            fields.values().all(|v| !v.contains(t.as_str())),
            "{fields:?}"
        );
    }
}

#[tokio::test]
async fn dedup_table_in_a_transaction_reports_each_decision() {
    let Some((pool, _dir)) = idempotent_tests::backends::sqlite().await else {
        return;
    };
    let capture = Capture::default();
    let _guard = capture.install();
    let k = key("telemetry::tx");
    let opts = dedup_table::Options::default();
    for _ in 0..2 {
        let got = dedup_table::run_in_tx(
            &pool,
            k.clone(),
            fp("a"),
            opts,
            not_compared,
            async |_tx: &mut sqlx::SqliteConnection| Ok::<_, AppError>(3u8),
        )
        .await;
        assert_eq!(got.unwrap(), 3);
    }
    let failed = dedup_table::run_in_tx(
        &pool,
        key("telemetry::tx"),
        None,
        opts,
        not_compared,
        async |_tx: &mut sqlx::SqliteConnection| Err::<u8, _>(AppError::Rejected),
    )
    .await;
    assert!(failed.is_err());
    let calls = capture.calls();
    assert_eq!(
        calls.iter().map(|c| c.1.clone()).collect::<Vec<_>>(),
        strs(&[
            &["claimed", "executed"],
            &["replayed"],
            &["claimed", "released"]
        ])
    );
    assert_eq!(calls[0].0["store"], "SQLite");
}

#[idempotent(
    strategy = "select_before_insert",
    key = "email",
    table = "tm_customers"
)]
async fn register(
    db: &sqlx::SqlitePool,
    email: &str,
    #[tx] tx: &mut sqlx::SqliteConnection,
) -> Result<(), AppError> {
    sqlx::query("INSERT INTO tm_customers (email) VALUES ($1)")
        .bind(email)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

#[tokio::test]
async fn business_strategy_reports_executed_then_duplicate() {
    let Some((pool, _dir)) = idempotent_tests::backends::sqlite().await else {
        return;
    };
    sqlx::query("CREATE TABLE tm_customers (email TEXT PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    let capture = Capture::default();
    let _guard = capture.install();
    let email = format!("a-{SECRET}@example.com");
    register(&pool, &email).await.unwrap();
    let again = register(&pool, &email).await;
    assert!(
        matches!(
            again,
            Err(AppError::Idempotency(idempotent_runtime::Error::Duplicate))
        ),
        "{again:?}"
    );
    let calls = capture.calls();
    assert_eq!(
        calls.iter().map(|c| c.1.clone()).collect::<Vec<_>>(),
        strs(&[&["executed"], &["duplicate"]])
    );
    assert_eq!(calls[0].0["strategy"], "select_before_insert");
    assert_eq!(calls[0].0["table"], "tm_customers");
}

/// A serializable error for the terminal policy: a declined card is terminal.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
enum PayError {
    #[serde(skip)]
    Runtime(String),
    Declined(String),
}

impl From<idempotent_runtime::Error> for PayError {
    fn from(e: idempotent_runtime::Error) -> Self {
        PayError::Runtime(e.to_string())
    }
}

#[tokio::test]
async fn a_stored_terminal_error_reports_stored_error_then_replayed() {
    let capture = Capture::default();
    let _guard = capture.install();
    let store = MemoryStore::new();
    let effects = AtomicU32::new(0);
    let declined = async || -> Result<String, PayError> {
        effects.fetch_add(1, SeqCst);
        Err(PayError::Declined("limit".into()))
    };
    let policy = idempotent_runtime::strategy::Terminal::new(|e: &PayError| {
        matches!(e, PayError::Declined(_))
    });
    let k = key("telemetry::pay");
    let opts = dedup_table::Options::default();
    for expected in [Disposition::Executed, Disposition::Replayed] {
        let (got, how) = observe(dedup_table::run_with_policy(
            &store,
            k.clone(),
            fp("a"),
            opts,
            not_compared,
            policy,
            declined,
        ))
        .await;
        assert_eq!(got, Err(PayError::Declined("limit".into())));
        assert_eq!(how, Some(expected));
    }
    assert_eq!(effects.load(SeqCst), 1);
    assert_eq!(
        capture.decisions(),
        strs(&[&["claimed", "stored_error"], &["replayed"]])
    );
}

// ------------------------------------------------------------------------------ lock_lost

/// `lock_lost`: a claim-mode call parks in its body; its claim is evicted by force (as
/// `idempotent-admin evict --force` does) and a second caller claims the key and executes.
/// Released, the first call's completion is refused by compare-and-set on its owner: it reports
/// `claimed, lock_lost` and fails with `LockLost`; the second reports `claimed, executed`, a
/// third call replays the second's response. Two effects, as documented for a forced eviction.
async fn lock_lost_when_the_claim_is_taken_over<S: ClaimStore + AdminStore>(store: S) {
    let capture = Capture::default();
    let _guard = capture.install();
    let k = key("telemetry::lost");
    let effects = AtomicU32::new(0);
    let (entered, release) = (tokio::sync::Notify::new(), tokio::sync::Notify::new());
    let parked = async || -> Result<u32, AppError> {
        effects.fetch_add(1, SeqCst);
        entered.notify_one();
        release.notified().await;
        Ok(1)
    };
    let second = async || -> Result<u32, AppError> {
        effects.fetch_add(1, SeqCst);
        Ok(2)
    };
    let opts = dedup_table::Options::default();
    let (first, taken) = tokio::join!(
        dedup_table::run(&store, k.clone(), fp("a"), opts, not_compared, parked),
        async {
            entered.notified().await;
            assert_eq!(store.evict_key(&k, true).await.unwrap(), Evicted::Removed);
            let taken = observe(dedup_table::run(
                &store,
                k.clone(),
                fp("a"),
                opts,
                not_compared,
                second,
            ))
            .await;
            release.notify_one();
            taken
        }
    );
    assert!(
        matches!(first, Err(AppError::Idempotency(Error::LockLost))),
        "{first:?}"
    );
    assert!(
        matches!(taken, (Ok(2), Some(Disposition::Executed))),
        "{taken:?}"
    );
    let third = observe(dedup_table::run(
        &store,
        k.clone(),
        fp("a"),
        opts,
        not_compared,
        second,
    ))
    .await;
    assert!(
        matches!(third, (Ok(2), Some(Disposition::Replayed))),
        "{third:?}"
    );
    assert_eq!(effects.load(SeqCst), 2);
    let calls = capture.calls();
    assert_eq!(
        calls.iter().map(|c| c.1.clone()).collect::<Vec<_>>(),
        strs(&[
            &["claimed", "lock_lost"],
            &["claimed", "executed"],
            &["replayed"]
        ])
    );
    assert_eq!(calls[0].0["key"], &k.hex()[..12]);
    assert_eq!(calls[0].0["store"], store.backend_name());
}

/// `lock_lost` when the body's error is a terminal one to store: as
/// [`lock_lost_when_the_claim_is_taken_over`], but the parked body fails with a declined card,
/// whose storing is then refused by compare-and-set on the owner: the first call reports
/// `claimed, lock_lost` and its caller gets the body's own error, unstored; the second caller's
/// record stands (a duplicate replays its response).
async fn terminal_error_lock_lost<S: ClaimStore + AdminStore>(store: S) {
    let capture = Capture::default();
    let _guard = capture.install();
    let k = key("telemetry::lost_terminal");
    let (entered, release) = (tokio::sync::Notify::new(), tokio::sync::Notify::new());
    let parked = async || -> Result<String, PayError> {
        entered.notify_one();
        release.notified().await;
        Err(PayError::Declined("limit".into()))
    };
    let second = async || -> Result<String, PayError> { Ok("paid".into()) };
    let policy = idempotent_runtime::strategy::Terminal::new(|e: &PayError| {
        matches!(e, PayError::Declined(_))
    });
    let opts = dedup_table::Options::default();
    let (first, taken) = tokio::join!(
        dedup_table::run_with_policy(
            &store,
            k.clone(),
            fp("a"),
            opts,
            not_compared,
            policy,
            parked
        ),
        async {
            entered.notified().await;
            assert_eq!(store.evict_key(&k, true).await.unwrap(), Evicted::Removed);
            let taken = observe(dedup_table::run_with_policy(
                &store,
                k.clone(),
                fp("a"),
                opts,
                not_compared,
                policy,
                second,
            ))
            .await;
            release.notify_one();
            taken
        }
    );
    assert_eq!(first, Err(PayError::Declined("limit".into())));
    assert!(
        matches!(&taken, (Ok(r), Some(Disposition::Executed)) if r == "paid"),
        "{taken:?}"
    );
    let third = observe(dedup_table::run_with_policy(
        &store,
        k.clone(),
        fp("a"),
        opts,
        not_compared,
        policy,
        second,
    ))
    .await;
    assert!(
        matches!(&third, (Ok(r), Some(Disposition::Replayed)) if r == "paid"),
        "{third:?}"
    );
    assert_eq!(
        capture.decisions(),
        strs(&[
            &["claimed", "lock_lost"],
            &["claimed", "executed"],
            &["replayed"]
        ])
    );
}

#[tokio::test]
async fn memory_lock_lost() {
    lock_lost_when_the_claim_is_taken_over(MemoryStore::new()).await;
    terminal_error_lock_lost(MemoryStore::new()).await;
}

#[tokio::test]
async fn sqlite_lock_lost() {
    let Some((pool, _dir)) = idempotent_tests::sqlite().await else {
        return;
    };
    lock_lost_when_the_claim_is_taken_over(pool.clone()).await;
    terminal_error_lock_lost(pool).await;
}

#[cfg_attr(not(has_postgres), ignore = "IDEMPOTENT_POSTGRES_URL is not set")]
#[tokio::test]
async fn postgres_lock_lost() {
    let Some(pool) = idempotent_tests::postgres().await else {
        return;
    };
    lock_lost_when_the_claim_is_taken_over(pool.clone()).await;
    terminal_error_lock_lost(pool).await;
}

#[cfg_attr(not(has_mysql), ignore = "IDEMPOTENT_MYSQL_URL is not set")]
#[tokio::test]
async fn mysql_lock_lost() {
    let Some(pool) = idempotent_tests::mysql().await else {
        return;
    };
    lock_lost_when_the_claim_is_taken_over(pool.clone()).await;
    terminal_error_lock_lost(pool).await;
}

#[cfg_attr(
    not(has_redis),
    ignore = "IDEMPOTENT_REDIS_URL is not set and redis-server is not on PATH"
)]
#[tokio::test]
async fn redis_lock_lost() {
    let Some(store) = idempotent_tests::redis().await else {
        return;
    };
    lock_lost_when_the_claim_is_taken_over(store.clone()).await;
    terminal_error_lock_lost(store).await;
}

/// Calls `call` until it no longer finds the key busy (`InProgress`, or `Duplicate` for a
/// token): the holder's lease, its renewals failing, runs out within a few hundred
/// milliseconds. A bounded poll (10 s) for the lease — the fault itself — to run out; nothing
/// is lined up by sleeping.
async fn until_taken_over<T, F, Fut>(mut call: F) -> (Result<T, AppError>, Option<Disposition>)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = (Result<T, AppError>, Option<Disposition>)>,
{
    let started = tokio::time::Instant::now();
    loop {
        let got = call().await;
        if !matches!(
            got.0,
            Err(AppError::Idempotency(Error::InProgress | Error::Duplicate))
        ) {
            return got;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the lapsed claim was never taken over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The decisions of a lapsed-lease path: the holder's `claimed, lock_lost`, then any number of
/// duplicates that found the key busy (`busy`, while the lease ran out), then the taker's
/// `claimed, executed`.
fn assert_lapsed(calls: &[Vec<String>], busy: &str) {
    let (first, rest) = calls.split_first().expect("the holder's call");
    assert_eq!(first, &["claimed", "lock_lost"], "{calls:?}");
    let (last, middle) = rest.split_last().expect("the taker's call");
    assert_eq!(last, &["claimed", "executed"], "{calls:?}");
    assert!(middle.iter().all(|d| d == &[busy]), "{calls:?}");
}

/// The 300 ms lease (the minimum) of the lapsed-lease scenarios.
const SHORT: Duration = Duration::from_millis(300);

/// `lock_lost` when the lease runs out: every renewal fails (a holder cut off from the store,
/// [`Faulty`]), so while the body is parked its 300 ms claim lapses and a duplicate takes the
/// key over and executes. Released, the holder's completion is refused: `claimed, lock_lost`,
/// `LockLost`. Two effects — what a lease lost to an outage costs.
async fn dedup_table_lock_lost_when_renewals_fail<S: ClaimStore>(store: S) {
    let capture = Capture::default();
    let _guard = capture.install();
    let store = Faulty::new(store);
    store.faults.fail_renewals.store(true, SeqCst);
    let k = key("telemetry::lapsed");
    let opts = dedup_table::Options {
        lease: SHORT,
        ..Default::default()
    };
    let effects = AtomicU32::new(0);
    let (entered, release) = (tokio::sync::Notify::new(), tokio::sync::Notify::new());
    let parked = async || -> Result<u32, AppError> {
        effects.fetch_add(1, SeqCst);
        entered.notify_one();
        release.notified().await;
        Ok(1)
    };
    let second = async || -> Result<u32, AppError> {
        effects.fetch_add(1, SeqCst);
        Ok(2)
    };
    let (first, taken) = tokio::join!(
        dedup_table::run(&store, k.clone(), fp("a"), opts, not_compared, parked),
        async {
            entered.notified().await;
            let taken = until_taken_over(|| {
                observe(dedup_table::run(
                    &store,
                    k.clone(),
                    fp("a"),
                    opts,
                    not_compared,
                    second,
                ))
            })
            .await;
            release.notify_one();
            taken
        }
    );
    assert!(
        matches!(first, Err(AppError::Idempotency(Error::LockLost))),
        "{first:?}"
    );
    assert!(
        matches!(taken, (Ok(2), Some(Disposition::Executed))),
        "{taken:?}"
    );
    assert_eq!(effects.load(SeqCst), 2);
    assert_lapsed(&capture.decisions(), "in_progress");
}

/// `lock_lost` in `distributed_lock` when the lease runs out: as
/// [`dedup_table_lock_lost_when_renewals_fail`].
async fn distributed_lock_lock_lost_when_renewals_fail<S: LockStore>(store: S) {
    let capture = Capture::default();
    let _guard = capture.install();
    let store = Faulty::new(store);
    store.faults.fail_renewals.store(true, SeqCst);
    let k = key("telemetry::lapsed_lock");
    let opts = distributed_lock::Options {
        lease: SHORT,
        ..Default::default()
    };
    let effects = AtomicU32::new(0);
    let (entered, release) = (tokio::sync::Notify::new(), tokio::sync::Notify::new());
    let (first, taken) = tokio::join!(
        distributed_lock::run(
            &store,
            k.clone(),
            fp("a"),
            opts,
            not_compared,
            async |_fence| -> Result<u32, AppError> {
                effects.fetch_add(1, SeqCst);
                entered.notify_one();
                release.notified().await;
                Ok(1)
            }
        ),
        async {
            entered.notified().await;
            let taken = until_taken_over(|| {
                observe(distributed_lock::run(
                    &store,
                    k.clone(),
                    fp("a"),
                    opts,
                    not_compared,
                    async |_fence| -> Result<u32, AppError> {
                        effects.fetch_add(1, SeqCst);
                        Ok(2)
                    },
                ))
            })
            .await;
            release.notify_one();
            taken
        }
    );
    assert!(
        matches!(first, Err(AppError::Idempotency(Error::LockLost))),
        "{first:?}"
    );
    assert!(
        matches!(taken, (Ok(2), Some(Disposition::Executed))),
        "{taken:?}"
    );
    assert_eq!(effects.load(SeqCst), 2);
    assert_lapsed(&capture.decisions(), "in_progress");
}

/// `lock_lost` in `token` when the consumption's lease runs out: as
/// [`dedup_table_lock_lost_when_renewals_fail`], a duplicate with the token getting `Duplicate`
/// until the lease ends, then taking the token over.
async fn token_lock_lost_when_renewals_fail<S: TokenStore>(store: S) {
    let capture = Capture::default();
    let _guard = capture.install();
    let store = Faulty::new(store);
    let t = issue_token(&store, Duration::from_secs(60)).await.unwrap();
    store.faults.fail_renewals.store(true, SeqCst);
    let binding = key("telemetry::lapsed_token");
    let opts = token::Options {
        lease: SHORT,
        ..Default::default()
    };
    let effects = AtomicU32::new(0);
    let (entered, release) = (tokio::sync::Notify::new(), tokio::sync::Notify::new());
    let (first, taken) = tokio::join!(
        token::run(
            &store,
            t.as_str(),
            binding.clone(),
            fp("a"),
            opts,
            not_compared,
            async || -> Result<u32, AppError> {
                effects.fetch_add(1, SeqCst);
                entered.notify_one();
                release.notified().await;
                Ok(1)
            }
        ),
        async {
            entered.notified().await;
            let taken = until_taken_over(|| {
                observe(token::run(
                    &store,
                    t.as_str(),
                    binding.clone(),
                    fp("a"),
                    opts,
                    not_compared,
                    async || -> Result<u32, AppError> {
                        effects.fetch_add(1, SeqCst);
                        Ok(2)
                    },
                ))
            })
            .await;
            release.notify_one();
            taken
        }
    );
    assert!(
        matches!(first, Err(AppError::Idempotency(Error::LockLost))),
        "{first:?}"
    );
    assert!(
        matches!(taken, (Ok(2), Some(Disposition::Executed))),
        "{taken:?}"
    );
    assert_eq!(effects.load(SeqCst), 2);
    assert_lapsed(&capture.decisions(), "duplicate");
}

#[tokio::test]
async fn memory_lock_lost_when_renewals_fail() {
    dedup_table_lock_lost_when_renewals_fail(MemoryStore::new()).await;
    distributed_lock_lock_lost_when_renewals_fail(MemoryStore::new()).await;
    token_lock_lost_when_renewals_fail(MemoryStore::new()).await;
}

#[cfg_attr(not(has_postgres), ignore = "IDEMPOTENT_POSTGRES_URL is not set")]
#[tokio::test]
async fn postgres_lock_lost_when_renewals_fail() {
    let Some(pool) = idempotent_tests::postgres().await else {
        return;
    };
    dedup_table_lock_lost_when_renewals_fail(pool).await;
}

#[cfg_attr(
    not(has_redis),
    ignore = "IDEMPOTENT_REDIS_URL is not set and redis-server is not on PATH"
)]
#[tokio::test]
async fn redis_lock_lost_when_renewals_fail() {
    let Some(store) = idempotent_tests::redis().await else {
        return;
    };
    dedup_table_lock_lost_when_renewals_fail(store.clone()).await;
    distributed_lock_lock_lost_when_renewals_fail(store.clone()).await;
    token_lock_lost_when_renewals_fail(store).await;
}

// --------------------------------------------------------------------- completion_retried

/// The decisions of a call whose first two completions failed with a backend error before
/// the third landed, then of a duplicate.
const RETRIED: &[&[&str]] = &[
    &[
        "claimed",
        "completion_retried",
        "completion_retried",
        "executed",
    ],
    &["replayed"],
];

/// Checks a [`Faulty`] store after a call whose two failing completions were met: both
/// faults used, one completion delivered.
fn both_faults_met<S>(store: &Faulty<S>) {
    assert_eq!(
        store.faults.fail_completes.load(SeqCst),
        0,
        "both faults met"
    );
    assert_eq!(store.faults.completes_delivered.load(SeqCst), 1);
}

/// `completion_retried` in `dedup_table` claim mode: the first two completions fail with a
/// backend error (a connection reset, injected by [`Faulty`]); the call still executes, once,
/// and a duplicate replays.
async fn dedup_table_completion_retried<S: ClaimStore>(store: S) {
    let capture = Capture::default();
    let _guard = capture.install();
    let store = Faulty::new(store);
    store.faults.fail_completes.store(2, SeqCst);
    let effects = AtomicU32::new(0);
    let body = async || -> Result<u32, AppError> { Ok(effects.fetch_add(1, SeqCst) + 1) };
    let k = key("telemetry::retried");
    let opts = dedup_table::Options::default();
    for expected in [Disposition::Executed, Disposition::Replayed] {
        let got = observe(dedup_table::run(
            &store,
            k.clone(),
            fp("a"),
            opts,
            not_compared,
            body,
        ))
        .await;
        assert!(matches!(got, (Ok(1), Some(d)) if d == expected), "{got:?}");
    }
    both_faults_met(&store);
    assert_eq!(effects.load(SeqCst), 1);
    let calls = capture.calls();
    assert_eq!(
        calls.iter().map(|c| c.1.clone()).collect::<Vec<_>>(),
        strs(RETRIED)
    );
    assert_eq!(calls[0].0["strategy"], "dedup_table");
}

/// `completion_retried` in `distributed_lock`: as [`dedup_table_completion_retried`].
async fn distributed_lock_completion_retried<S: LockStore>(store: S) {
    let capture = Capture::default();
    let _guard = capture.install();
    let store = Faulty::new(store);
    store.faults.fail_completes.store(2, SeqCst);
    let effects = AtomicU32::new(0);
    let k = key("telemetry::lock_retried");
    let opts = distributed_lock::Options::default();
    for expected in [Disposition::Executed, Disposition::Replayed] {
        let got = observe(distributed_lock::run(
            &store,
            k.clone(),
            fp("a"),
            opts,
            not_compared,
            async |_fence| Ok::<_, AppError>(effects.fetch_add(1, SeqCst) + 1),
        ))
        .await;
        assert!(matches!(got, (Ok(1), Some(d)) if d == expected), "{got:?}");
    }
    both_faults_met(&store);
    assert_eq!(effects.load(SeqCst), 1);
    let calls = capture.calls();
    assert_eq!(
        calls.iter().map(|c| c.1.clone()).collect::<Vec<_>>(),
        strs(RETRIED)
    );
    assert_eq!(calls[0].0["strategy"], "distributed_lock");
}

/// `completion_retried` in `token`: as [`dedup_table_completion_retried`], the token itself in
/// no field either.
async fn token_completion_retried<S: TokenStore>(store: S) {
    let capture = Capture::default();
    let _guard = capture.install();
    let store = Faulty::new(store);
    let t = issue_token(&store, Duration::from_secs(60)).await.unwrap();
    store.faults.fail_completes.store(2, SeqCst);
    let effects = AtomicU32::new(0);
    let binding = key("telemetry::token_retried");
    let opts = token::Options::default();
    for expected in [Disposition::Executed, Disposition::Replayed] {
        let got = observe(token::run(
            &store,
            t.as_str(),
            binding.clone(),
            fp("a"),
            opts,
            not_compared,
            async || Ok::<_, AppError>(effects.fetch_add(1, SeqCst) + 1),
        ))
        .await;
        assert!(matches!(got, (Ok(1), Some(d)) if d == expected), "{got:?}");
    }
    both_faults_met(&store);
    assert_eq!(effects.load(SeqCst), 1);
    let calls = capture.calls();
    assert_eq!(
        calls.iter().map(|c| c.1.clone()).collect::<Vec<_>>(),
        strs(RETRIED)
    );
    assert_eq!(calls[0].0["strategy"], "token");
    let seen = capture.0.lock().unwrap();
    let spans = seen.spans.values().map(|(_, f)| f);
    for fields in spans.chain(seen.events.iter().map(|(_, f)| f)) {
        assert!(
            fields.values().all(|v| !v.contains(t.as_str())),
            "{fields:?}"
        );
    }
}

#[tokio::test]
async fn memory_completion_retried() {
    dedup_table_completion_retried(MemoryStore::new()).await;
    distributed_lock_completion_retried(MemoryStore::new()).await;
    token_completion_retried(MemoryStore::new()).await;
}

#[tokio::test]
async fn sqlite_completion_retried() {
    let Some((pool, _dir)) = idempotent_tests::sqlite().await else {
        return;
    };
    dedup_table_completion_retried(pool).await;
}

#[cfg_attr(not(has_postgres), ignore = "IDEMPOTENT_POSTGRES_URL is not set")]
#[tokio::test]
async fn postgres_completion_retried() {
    let Some(pool) = idempotent_tests::postgres().await else {
        return;
    };
    dedup_table_completion_retried(pool).await;
}

#[cfg_attr(not(has_mysql), ignore = "IDEMPOTENT_MYSQL_URL is not set")]
#[tokio::test]
async fn mysql_completion_retried() {
    let Some(pool) = idempotent_tests::mysql().await else {
        return;
    };
    dedup_table_completion_retried(pool).await;
}

#[cfg_attr(
    not(has_redis),
    ignore = "IDEMPOTENT_REDIS_URL is not set and redis-server is not on PATH"
)]
#[tokio::test]
async fn redis_completion_retried() {
    let Some(store) = idempotent_tests::redis().await else {
        return;
    };
    dedup_table_completion_retried(store.clone()).await;
    distributed_lock_completion_retried(store.clone()).await;
    token_completion_retried(store).await;
}

// ----------------------------------------------------------------------- contention_retry

/// `contention_retry` in a business strategy (`state_machine`), on each SQL backend: the body's
/// transaction fails twice with the backend's retryable error (PostgreSQL and MariaDB SQLSTATE
/// 40001, a genuine SQLite busy) and runs a third time: `contention_retry` twice, then
/// `executed`; a second call finds the row moved on (`duplicate`). One effect.
macro_rules! contention {
    ($m:ident, $pool:ty, $conn:ty, $skip:meta) => {
        mod $m {
            use super::*;
            use idempotent_tests::business::$m::*;

            #[idempotent(
                strategy = "state_machine",
                key = "code",
                table = "s3_shipments",
                status_column = "status",
                from = "PAID",
                to = "SHIPPED"
            )]
            async fn ship(
                db: &$pool,
                code: &str,
                failures: &AtomicU32,
                #[tx] tx: &mut $conn,
            ) -> Result<(), AppError> {
                if failures
                    .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    raise_retryable(&mut *tx, db).await?;
                }
                ledger(tx, "tm_ship", code).await?;
                Ok(())
            }

            #[tokio::test]
            #[$skip]
            async fn state_machine_reports_each_contention_retry() {
                let Some(env) = env(4).await else { return };
                let code = unique(&format!("tm-{SECRET}"));
                exec(
                    &env.db,
                    "INSERT INTO s3_shipments (code, status) VALUES ($1, 'PAID')",
                    &[&code],
                )
                .await;
                let capture = Capture::default();
                let _guard = capture.install();
                let failures = AtomicU32::new(2);
                assert_eq!(got(ship(&env.db, &code, &failures).await), Got::Ok);
                assert_eq!(failures.load(SeqCst), 0, "both failures met");
                assert_eq!(got(ship(&env.db, &code, &failures).await), Got::Duplicate);
                assert_eq!(effects(&env.db, "tm_ship", &code).await, 1);
                let calls = capture.calls();
                assert_eq!(
                    calls.iter().map(|c| c.1.clone()).collect::<Vec<_>>(),
                    strs(&[
                        &["contention_retry", "contention_retry", "executed"],
                        &["duplicate"]
                    ])
                );
                assert_eq!(calls[0].0["strategy"], "state_machine");
                assert_eq!(calls[0].0["table"], "s3_shipments");
            }
        }
    };
}

idempotent_tests::on_business_backends!(contention);

/// `contention_retry` in `dedup_table` on a server of its own namespace (`$pool`: a pool whose
/// `idempotency_records` is this test's alone), after `$ddl` installed a trigger failing the
/// first two inserts with SQLSTATE 40001 (a serialization failure; its counter is a sequence,
/// which a rollback does not undo) and `$restart` rewinds it. Claim mode retries the claim
/// statement, transactional mode the claim transaction: each reports `contention_retry`
/// twice, then `claimed, executed`; a duplicate replays.
macro_rules! dedup_contention {
    ($name:ident, $skip:meta, $pool:expr, $conn:ty, $store:literal, ddl = [$($ddl:literal),* $(,)?], restart = $restart:literal) => {
        #[$skip]
        #[tokio::test]
        async fn $name() {
            let Some(pool) = $pool.await else {
                return;
            };
            for ddl in [$($ddl),*] {
                sqlx::raw_sql(ddl).execute(&pool).await.unwrap();
            }
            let capture = Capture::default();
            let _guard = capture.install();
            let effects = AtomicU32::new(0);
            let opts = dedup_table::Options::default();

            let k = key("telemetry::contended");
            let body = async || -> Result<u32, AppError> { Ok(effects.fetch_add(1, SeqCst) + 1) };
            for expected in [Disposition::Executed, Disposition::Replayed] {
                let got = observe(dedup_table::run(
                    &pool,
                    k.clone(),
                    fp("a"),
                    opts,
                    not_compared,
                    body,
                ))
                .await;
                assert!(matches!(got, (Ok(1), Some(d)) if d == expected), "{got:?}");
            }

            sqlx::raw_sql($restart).execute(&pool).await.unwrap();
            let k = key("telemetry::contended_tx");
            let body = async |_tx: &mut $conn| -> Result<u32, AppError> {
                Ok(effects.fetch_add(1, SeqCst) + 1)
            };
            for expected in [Disposition::Executed, Disposition::Replayed] {
                let got = observe(dedup_table::run_in_tx(
                    &pool,
                    k.clone(),
                    fp("a"),
                    opts,
                    not_compared,
                    body,
                ))
                .await;
                assert!(matches!(got, (Ok(2), Some(d)) if d == expected), "{got:?}");
            }
            assert_eq!(effects.load(SeqCst), 2);
            let retried = &[
                "contention_retry",
                "contention_retry",
                "claimed",
                "executed",
            ];
            let calls = capture.calls();
            assert_eq!(
                calls.iter().map(|c| c.1.clone()).collect::<Vec<_>>(),
                strs(&[retried, &["replayed"], retried, &["replayed"]])
            );
            assert_eq!(calls[0].0["store"], $store);
            assert_eq!(calls[2].0["store"], $store);
        }
    };
}

// PostgreSQL, in the schema `idem_tm_conflict`.
dedup_contention!(
    dedup_table_reports_each_contention_retry_on_postgres,
    cfg_attr(
        not(has_postgres),
        ignore = "IDEMPOTENT_POSTGRES_URL is not set"
    ),
    idempotent_tests::postgres_in_schema("idem_tm_conflict", 4),
    sqlx::PgConnection,
    "PostgreSQL",
    ddl = [
        "CREATE SEQUENCE tm_conflicts",
        "CREATE FUNCTION tm_conflict() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         IF nextval('tm_conflicts') <= 2 THEN \
         RAISE EXCEPTION 'forced serialization failure' USING ERRCODE = '40001'; END IF; \
         RETURN NEW; END $$",
        "CREATE TRIGGER tm_conflict BEFORE INSERT ON idempotency_records \
         FOR EACH ROW EXECUTE FUNCTION tm_conflict()",
    ],
    restart = "ALTER SEQUENCE tm_conflicts RESTART"
);

// MariaDB, in the database `idem_tm_conflict`.
dedup_contention!(
    dedup_table_reports_each_contention_retry_on_mysql,
    cfg_attr(not(has_mysql), ignore = "IDEMPOTENT_MYSQL_URL is not set"),
    idempotent_tests::mysql_in_database("idem_tm_conflict", 4),
    sqlx::MySqlConnection,
    "MySQL",
    ddl = [
        "CREATE SEQUENCE tm_conflicts",
        "CREATE TRIGGER tm_conflict BEFORE INSERT ON idempotency_records FOR EACH ROW \
         BEGIN IF NEXTVAL(tm_conflicts) <= 2 THEN \
         SIGNAL SQLSTATE '40001' SET MESSAGE_TEXT = 'forced serialization failure'; END IF; END",
    ],
    restart = "ALTER SEQUENCE tm_conflicts RESTART"
);
