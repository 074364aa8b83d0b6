//! Tracing: every call runs in one `idempotent.call` span and reports exactly its decisions as
//! events (`decision` field), in order; no field of any span or event holds the raw
//! idempotency key, the scope or the payload. A capturing `tracing-subscriber` layer records
//! every span and event of the test's thread.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idempotent_runtime::strategy::{dedup_table, distributed_lock, not_compared, token};
use idempotent_runtime::{
    Disposition, Fingerprinter, KeyBuilder, MemoryStore, OnBusy, StorageKey, idempotent,
    issue_token, observe,
};
use idempotent_tests::{AppError, unique};
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
        calls.into_values().collect()
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
