//! Issue 14: a duplicate of a completed claim-mode call is answered by one SQL statement
//! outside any transaction, with no write. MariaDB/MySQL counts the statements on the one
//! connection of its pool (`SHOW SESSION STATUS`); SQLite proves "no write" by replaying while
//! another connection holds the database's write lock (an `INSERT` would wait for it and fail
//! after the busy timeout).

use std::time::Duration;

use idempotent_runtime::{ClaimStore, idempotent, observe};
use idempotent_tests::backends;
use idempotent_tests::fixtures::{AppError, Receipt, Req, req};
use idempotent_tests::ledger::Effects;
use idempotent_tests::outcome::{Got, classify};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Connection, Row};

/// A claim-mode `dedup_table` service on any claim store.
struct Svc<S> {
    store: S,
    effects: Effects,
}

impl<S: ClaimStore> Svc<S> {
    #[idempotent(
        strategy = "dedup_table",
        key = "req.id",
        scope = "req.tenant",
        name = "replay_statements.place",
        store = "self.store"
    )]
    async fn place(&self, req: &Req) -> Result<Receipt, AppError> {
        self.effects.apply(req).await
    }
}

/// `Com_insert`, `Com_select` and `Com_begin` of the connection `conn`'s session.
async fn mysql_counters(conn: &mut sqlx::MySqlConnection) -> [i64; 3] {
    let mut out = [0; 3];
    for (i, statement) in [
        "SHOW SESSION STATUS LIKE 'Com_insert'",
        "SHOW SESSION STATUS LIKE 'Com_select'",
        "SHOW SESSION STATUS LIKE 'Com_begin'",
    ]
    .into_iter()
    .enumerate()
    {
        let row = sqlx::query(statement)
            .fetch_one(&mut *conn)
            .await
            .expect("session status");
        let value: String = row.try_get(1).expect("value");
        out[i] = value.parse().expect("a number");
    }
    out
}

#[tokio::test]
#[cfg_attr(not(has_mysql), ignore = "IDEMPOTENT_MYSQL_URL is not set")]
async fn mysql_claim_replay_is_one_select_without_a_transaction() {
    let Some(url) = backends::server_url("IDEMPOTENT_MYSQL_URL", "MySQL/MariaDB") else {
        return;
    };
    // One connection: the calls and the counters share its session.
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("connect");
    idempotent_runtime::migrate(&pool).await.expect("migrate");
    let svc = Svc {
        store: pool.clone(),
        effects: Effects::default(),
    };
    let r = req(&backends::unique("t"), "order-1", 100);

    let before = mysql_counters(&mut pool.acquire().await.expect("conn")).await;
    let first = classify(observe(svc.place(&r)).await);
    let fresh = mysql_counters(&mut pool.acquire().await.expect("conn")).await;
    let Got::Executed(receipt) = first else {
        panic!("first call: {first:?}")
    };
    // Fresh: the read that finds nothing, then the claim's INSERT.
    assert_eq!(fresh[0] - before[0], 1, "INSERTs of a fresh call");
    assert_eq!(fresh[1] - before[1], 1, "SELECTs of a fresh call");

    let again = classify(observe(svc.place(&r)).await);
    let replay = mysql_counters(&mut pool.acquire().await.expect("conn")).await;
    assert_eq!(again, Got::Replayed(receipt));
    assert_eq!(replay[0] - fresh[0], 0, "a replay INSERTs nothing");
    assert_eq!(replay[1] - fresh[1], 1, "a replay is one SELECT");
    assert_eq!(replay[2] - fresh[2], 0, "a replay opens no transaction");
    assert_eq!(svc.effects.count(&r), 1);

    // The same key with another payload: still refused, from that one read.
    let other = req(&r.tenant, &r.id, 999);
    let refused = observe(svc.place(&other)).await.0;
    assert!(
        matches!(
            refused,
            Err(AppError::Idempotency(
                idempotent_runtime::Error::FingerprintMismatch
            ))
        ),
        "{refused:?}"
    );
    assert_eq!(svc.effects.total(), 1);
}

#[tokio::test]
async fn sqlite_claim_replay_needs_no_write_lock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("replay.db");
    let opts = SqliteConnectOptions::new()
        .filename(&file)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_millis(200));
    let pool = SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(opts.clone())
        .await
        .expect("connect");
    idempotent_runtime::migrate(&pool).await.expect("migrate");
    let svc = Svc {
        store: pool.clone(),
        effects: Effects::default(),
    };
    let r = req("t", "order-1", 100);
    let Got::Executed(receipt) = classify(observe(svc.place(&r)).await) else {
        panic!("first call did not execute")
    };

    // Another connection takes the write lock and keeps it.
    let mut writer = sqlx::SqliteConnection::connect_with(&opts)
        .await
        .expect("writer");
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut writer)
        .await
        .expect("write lock");

    let again = classify(observe(svc.place(&r)).await);
    assert_eq!(
        again,
        Got::Replayed(receipt),
        "the replay ran beside the writer"
    );

    // The lock is real: a new key needs it and cannot claim while it is held.
    let fresh = observe(svc.place(&req("t", "order-2", 100))).await.0;
    assert!(
        fresh.is_err(),
        "a claim while the write lock is held: {fresh:?}"
    );

    sqlx::query("ROLLBACK")
        .execute(&mut writer)
        .await
        .expect("release");
    assert_eq!(svc.effects.count(&r), 1);
    assert_eq!(svc.effects.total(), 1);
}
