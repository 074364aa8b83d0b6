//! The error policy of the replaying strategies (`terminal = "path::to::fn"`): a terminal
//! error from the body is stored and replayed to duplicates without running the body again; a
//! retryable one releases the claim (lock, token) so a retry runs again — on every claim store
//! (`dedup_table` claim mode), in transactional mode on SQLite, PostgreSQL and MariaDB (where
//! the stored error commits without the body's writes), and for `distributed_lock` and
//! `token` on the memory store and Redis. Every body run is counted in a ledger.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use idempotent_runtime::{
    ClaimStore, Disposition, LockStore, TokenStore, idempotent, issue_token, observe,
};
use idempotent_tests::{Receipt, Req, req, unique};

/// The services' error type: serializable, as `terminal` requires. Runtime and database errors
/// are never terminal, so they need not be stored (`#[serde(skip)]`).
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum PayError {
    /// From the idempotency runtime.
    #[error(transparent)]
    #[serde(skip)]
    Idempotency(#[from] idempotent_runtime::Error),
    /// From the database.
    #[error(transparent)]
    #[serde(skip)]
    Db(#[from] sqlx::Error),
    /// Terminal: the same request would be declined again.
    #[error("card declined: {0}")]
    Declined(String),
    /// Retryable: the gateway may answer next time.
    #[error("gateway unavailable")]
    Unavailable,
}

/// The policy under test: a declined card is terminal, anything else is retryable.
fn is_terminal(e: &PayError) -> bool {
    matches!(e, PayError::Declined(_))
}

/// What every service body does: count the run in the ledger, then decline a negative amount
/// (terminal), fail once with `Unavailable` when `unavailable` is set (retryable), or succeed
/// with a receipt numbered by run.
#[derive(Default)]
struct Body {
    runs: Mutex<Vec<String>>,
    unavailable: AtomicBool,
    serial: AtomicU64,
}

impl Body {
    fn run(&self, req: &Req) -> Result<Receipt, PayError> {
        self.runs.lock().unwrap().push(req.id.clone());
        if req.amount < 0 {
            return Err(PayError::Declined(format!(
                "{} exceeds the limit",
                req.amount
            )));
        }
        if self.unavailable.swap(false, SeqCst) {
            return Err(PayError::Unavailable);
        }
        Ok(Receipt {
            tenant: req.tenant.clone(),
            id: req.id.clone(),
            amount: req.amount,
            serial: self.serial.fetch_add(1, SeqCst) + 1,
        })
    }

    /// How many times the body ran for key `id`.
    fn runs(&self, id: &str) -> usize {
        self.runs
            .lock()
            .unwrap()
            .iter()
            .filter(|k| *k == id)
            .count()
    }
}

fn declined(got: &Result<Receipt, PayError>, amount: i64) -> bool {
    matches!(got, Err(PayError::Declined(m)) if *m == format!("{amount} exceeds the limit"))
}

pub struct Svc<S> {
    store: S,
    body: Body,
}

impl<S> Svc<S> {
    fn new(store: S) -> Self {
        Svc {
            store,
            body: Body::default(),
        }
    }
}

impl<S: ClaimStore> Svc<S> {
    #[idempotent(
        strategy = "dedup_table",
        key = "req.id",
        scope = "req.tenant",
        store = "self.store",
        terminal = "is_terminal"
    )]
    async fn pay(&self, req: &Req) -> Result<Receipt, PayError> {
        self.body.run(req)
    }

    /// The default policy: every error releases the claim.
    #[idempotent(
        strategy = "dedup_table",
        key = "req.id",
        scope = "req.tenant",
        store = "self.store"
    )]
    async fn pay_default(&self, req: &Req) -> Result<Receipt, PayError> {
        self.body.run(req)
    }
}

impl<S: LockStore> Svc<S> {
    #[idempotent(
        strategy = "distributed_lock",
        key = "req.id",
        scope = "req.tenant",
        store = "self.store",
        terminal = "is_terminal"
    )]
    async fn settle(&self, req: &Req) -> Result<Receipt, PayError> {
        self.body.run(req)
    }
}

impl<S: TokenStore> Svc<S> {
    /// `req.id` carries the one-time token.
    #[idempotent(
        strategy = "token",
        key = "req.id",
        scope = "req.tenant",
        store = "self.store",
        terminal = "is_terminal"
    )]
    async fn checkout(&self, req: &Req) -> Result<Receipt, PayError> {
        self.body.run(req)
    }
}

/// `dedup_table` claim mode on every claim store: a terminal error is stored (the body ran
/// once; duplicates get the same error, replayed); a retryable one releases the claim (the
/// retry runs and succeeds, then replays); without `terminal`, a declined card runs again.
async fn claim_mode<S: ClaimStore>(store: S) {
    let svc = Svc::new(store);
    let tenant = unique("t");

    let declined_req = req(&tenant, &unique("k"), -5);
    let (first, how) = observe(svc.pay(&declined_req)).await;
    assert!(declined(&first, -5), "{first:?}");
    assert_eq!(how, Some(Disposition::Executed));
    for _ in 0..2 {
        let (again, how) = observe(svc.pay(&declined_req)).await;
        assert!(declined(&again, -5), "{again:?}");
        assert_eq!(how, Some(Disposition::Replayed));
    }
    assert_eq!(svc.body.runs(&declined_req.id), 1);

    let retried = req(&tenant, &unique("k"), 7);
    svc.body.unavailable.store(true, SeqCst);
    let first = svc.pay(&retried).await;
    assert!(matches!(first, Err(PayError::Unavailable)), "{first:?}");
    let second = svc.pay(&retried).await.unwrap();
    let (third, how) = observe(svc.pay(&retried)).await;
    assert_eq!(third.unwrap(), second);
    assert_eq!(how, Some(Disposition::Replayed));
    assert_eq!(svc.body.runs(&retried.id), 2);

    // The default policy: a terminal-looking error is not stored.
    let default_req = req(&tenant, &unique("k"), -1);
    for _ in 0..2 {
        let got = svc.pay_default(&default_req).await;
        assert!(declined(&got, -1), "{got:?}");
    }
    assert_eq!(svc.body.runs(&default_req.id), 2);
}

/// `distributed_lock`: a terminal error is recorded under the key as the lock is released;
/// a retryable one releases the lock and the retry runs.
async fn lock_policy<S: LockStore>(store: S) {
    let svc = Svc::new(store);
    let tenant = unique("t");
    let declined_req = req(&tenant, &unique("k"), -3);
    for round in 0..3 {
        let (got, how) = observe(svc.settle(&declined_req)).await;
        assert!(declined(&got, -3), "{got:?}");
        let expected = if round == 0 {
            Disposition::Executed
        } else {
            Disposition::Replayed
        };
        assert_eq!(how, Some(expected));
    }
    assert_eq!(svc.body.runs(&declined_req.id), 1);

    let retried = req(&tenant, &unique("k"), 4);
    svc.body.unavailable.store(true, SeqCst);
    assert!(matches!(
        svc.settle(&retried).await,
        Err(PayError::Unavailable)
    ));
    let second = svc.settle(&retried).await.unwrap();
    assert_eq!(svc.settle(&retried).await.unwrap(), second);
    assert_eq!(svc.body.runs(&retried.id), 2);
}

/// `token`: a terminal error consumes the token for good and replays the error to a retry
/// with it; a retryable one restores the token, so the retry with the same token runs.
async fn token_policy<S: TokenStore>(store: S) {
    let svc = Svc::new(store);
    let tenant = unique("t");
    let hour = Duration::from_secs(3600);

    let token = issue_token(&svc.store, hour).await.unwrap();
    let declined_req = req(&tenant, &token, -9);
    for round in 0..3 {
        let (got, how) = observe(svc.checkout(&declined_req)).await;
        assert!(declined(&got, -9), "{got:?}");
        let expected = if round == 0 {
            Disposition::Executed
        } else {
            Disposition::Replayed
        };
        assert_eq!(how, Some(expected));
    }
    assert_eq!(svc.body.runs(&token), 1);

    let token = issue_token(&svc.store, hour).await.unwrap();
    let retried = req(&tenant, &token, 2);
    svc.body.unavailable.store(true, SeqCst);
    assert!(matches!(
        svc.checkout(&retried).await,
        Err(PayError::Unavailable)
    ));
    // The token was restored: the retry with it runs, and its response is then replayed.
    let second = svc.checkout(&retried).await.unwrap();
    let (third, how) = observe(svc.checkout(&retried)).await;
    assert_eq!(third.unwrap(), second);
    assert_eq!(how, Some(Disposition::Replayed));
    assert_eq!(svc.body.runs(&token), 2);
}

idempotent_tests::on_claim_backends!(claim_mode);

mod locks {
    use super::*;
    idempotent_tests::on_kv_backends!(lock_policy);
}

mod tokens {
    use super::*;
    idempotent_tests::on_kv_backends!(token_policy);
}

/// Transactional mode (`#[tx]`) on one SQL backend: the body writes a ledger row in the
/// claim's transaction, then fails or succeeds. A terminal error is stored and replayed while
/// the body's row is rolled back (it ran in a savepoint); a retryable error rolls everything
/// back and the retry runs, its row committed with the record.
macro_rules! tx_suite {
    (mod $m:ident; pool = $pool:ty; conn = $conn:ty; ledger = $ledger:ident; setup = $setup:expr; $(skip = $skip:meta;)?) => {
        mod $m {
            use super::*;
            use idempotent_tests::$ledger;

            pub struct TxSvc {
                db: $pool,
                ledger: $ledger,
                body: Body,
            }

            impl TxSvc {
                #[idempotent(
                    strategy = "dedup_table",
                    key = "req.id",
                    scope = "req.tenant",
                    store = "self.db",
                    terminal = "is_terminal"
                )]
                async fn pay(&self, req: &Req, #[tx] tx: &mut $conn) -> Result<Receipt, PayError> {
                    self.ledger.record_in(tx, req).await?;
                    self.body.run(req)
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            $(#[$skip])?
            async fn terminal_error_commits_without_the_bodys_writes() {
                let Some((db, _guard)) = $setup else { return };
                let ledger = $ledger::create(&db).await;
                let svc = TxSvc {
                    db,
                    ledger,
                    body: Body::default(),
                };
                let tenant = unique("t");

                let declined_req = req(&tenant, &unique("k"), -5);
                for round in 0..3 {
                    let (got, how) = observe(svc.pay(&declined_req)).await;
                    assert!(declined(&got, -5), "{got:?}");
                    let expected = if round == 0 {
                        Disposition::Executed
                    } else {
                        Disposition::Replayed
                    };
                    assert_eq!(how, Some(expected));
                }
                assert_eq!(svc.body.runs(&declined_req.id), 1);
                assert_eq!(
                    svc.ledger.count(&declined_req).await,
                    0,
                    "the body's row was rolled back"
                );

                let retried = req(&tenant, &unique("k"), 7);
                svc.body.unavailable.store(true, SeqCst);
                let first = svc.pay(&retried).await;
                assert!(matches!(first, Err(PayError::Unavailable)), "{first:?}");
                assert_eq!(svc.ledger.count(&retried).await, 0);
                let second = svc.pay(&retried).await.unwrap();
                let (third, how) = observe(svc.pay(&retried)).await;
                assert_eq!(third.unwrap(), second);
                assert_eq!(how, Some(Disposition::Replayed));
                assert_eq!(svc.body.runs(&retried.id), 2);
                assert_eq!(
                    svc.ledger.count(&retried).await,
                    1,
                    "the successful run's row committed"
                );
            }
        }
    };
}

tx_suite! {
    mod tx_sqlite;
    pool = sqlx::SqlitePool;
    conn = sqlx::SqliteConnection;
    ledger = LiteLedger;
    setup = idempotent_tests::sqlite().await.map(|(p, d)| (p, Some(d)));
}

tx_suite! {
    mod tx_postgres;
    pool = sqlx::PgPool;
    conn = sqlx::PgConnection;
    ledger = PgLedger;
    setup = idempotent_tests::postgres().await.map(|p| (p, None::<()>));
    skip = cfg_attr(not(has_postgres), ignore = "IDEMPOTENT_POSTGRES_URL is not set");
}

tx_suite! {
    mod tx_mysql;
    pool = sqlx::MySqlPool;
    conn = sqlx::MySqlConnection;
    ledger = MyLedger;
    setup = idempotent_tests::mysql().await.map(|p| (p, None::<()>));
    skip = cfg_attr(not(has_mysql), ignore = "IDEMPOTENT_MYSQL_URL is not set");
}
