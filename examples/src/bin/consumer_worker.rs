//! A RabbitMQ payment consumer process for the kill -9 tests (`examples/tests/consumers.rs`): the
//! examples' consumer ([`idempotent_examples::consumers`]) around one of its idempotent
//! handlers, with a crash point between the handler's return and the ack.
//!
//! Usage: `consumer_worker amqp=URL queue=NAME store=sqlite-tx|postgres-tx|redis-claim
//! ledger=TABLE [sqlite=PATH] [postgres=URL] [redis=URL] [crash_after=N]`. `sqlite` is the
//! database file of `sqlite-tx` (records and ledger) and the ledger's of `redis-claim`.
//!
//! Prints one line per event on stdout: `READY` once consuming; `ACK <message id> <Executed|
//! Replayed|Duplicate>`, `RETRY <id> <error>`, `DEAD <id> <error>` after settling a delivery;
//! `CRASHPOINT <id>` when the `crash_after`-th call that executed the body (not a replay) has
//! returned: the worker then waits forever without acking, for the test to `kill -9` it. When
//! stdin closes it stops consuming, closes its connection cleanly and exits 0.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use futures_util::StreamExt;
use idempotent_examples::consumers::{ClaimPayments, Handled, Ledger, TxPayments, amqp, process};
use idempotent_runtime::Disposition;
use idempotent_runtime::consumer::Settle;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

/// How long an `InProgress` or failed delivery waits before it is requeued.
const RETRY_AFTER: Duration = Duration::from_millis(50);

enum Svc {
    Sqlite(TxPayments<sqlx::SqlitePool>),
    Postgres(TxPayments<sqlx::PgPool>),
    Redis(ClaimPayments<idempotent_runtime::RedisStore>),
}

impl Svc {
    async fn handle(&self, body: &[u8]) -> Handled {
        match self {
            Svc::Sqlite(s) => process(body, async |p| s.apply(p).await, RETRY_AFTER).await,
            Svc::Postgres(s) => process(body, async |p| s.apply(p).await, RETRY_AFTER).await,
            Svc::Redis(s) => process(body, async |p| s.apply(p).await, RETRY_AFTER).await,
        }
    }
}

async fn sqlite(path: &str) -> sqlx::SqlitePool {
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(30));
    SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(opts)
        .await
        .unwrap_or_else(|e| panic!("open sqlite {path}: {e}"))
}

fn line(text: String) {
    let mut out = std::io::stdout().lock();
    // The test reads these lines; a closed stdout means the test is gone.
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

fn main() {
    let args: HashMap<String, String> = std::env::args()
        .skip(1)
        .filter_map(|a| a.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect();
    let arg = |k: &str| {
        args.get(k)
            .cloned()
            .unwrap_or_else(|| panic!("consumer_worker: missing {k}=…"))
    };
    let crash_after: u64 = args
        .get("crash_after")
        .map_or(0, |n| n.parse().expect("crash_after=N"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let ledger = Ledger::new(&arg("ledger")).expect("ledger=<identifier>");
        let svc = match arg("store").as_str() {
            "sqlite-tx" => Svc::Sqlite(TxPayments {
                db: sqlite(&arg("sqlite")).await,
                ledger,
            }),
            "postgres-tx" => Svc::Postgres(TxPayments {
                db: sqlx::postgres::PgPoolOptions::new()
                    .max_connections(2)
                    .connect(&arg("postgres"))
                    .await
                    .expect("connect postgres"),
                ledger,
            }),
            "redis-claim" => Svc::Redis(ClaimPayments {
                kv: idempotent_runtime::RedisStore::connect(&arg("redis"))
                    .await
                    .expect("connect redis"),
                db: sqlite(&arg("sqlite")).await,
                ledger,
                hold: Default::default(),
            }),
            other => panic!("consumer_worker: unknown store={other}"),
        };
        let conn = lapin::Connection::connect(&arg("amqp"), lapin::ConnectionProperties::default())
            .await
            .expect("connect to RabbitMQ");
        let channel = conn.create_channel().await.expect("channel");
        channel
            .basic_qos(1, BasicQosOptions::default())
            .await
            .expect("basic.qos");
        let mut deliveries = channel
            .basic_consume(
                arg("queue").as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("basic.consume");
        let (closed, mut stdin_closed) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            let _ = closed.send(());
        });
        line("READY".into());
        let mut executed = 0u64;
        loop {
            let delivery = tokio::select! {
                _ = &mut stdin_closed => break,
                d = deliveries.next() => match d {
                    Some(d) => d.expect("delivery"),
                    None => break,
                },
            };
            let id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default();
            let handled = svc.handle(&delivery.data).await;
            if handled.how == Some(Disposition::Executed) {
                executed += 1;
                if executed == crash_after {
                    // The effect (and, here, its record) is committed; the ack is not sent.
                    line(format!("CRASHPOINT {id}"));
                    std::future::pending::<()>().await;
                }
            }
            amqp::settle(&delivery, handled.settle)
                .await
                .expect("settle the delivery");
            let text = match (&handled.settle, &handled.result) {
                (Settle::Ack, Ok(_)) => match handled.how {
                    Some(Disposition::Executed) => format!("ACK {id} Executed"),
                    Some(Disposition::Replayed) => format!("ACK {id} Replayed"),
                    other => format!("ACK {id} {other:?}"),
                },
                (Settle::Ack, Err(e)) => format!("ACK {id} {e}"),
                (Settle::Retry { .. }, r) => format!("RETRY {id} {:?}", r.as_ref().err()),
                (Settle::DeadLetter, r) => format!("DEAD {id} {:?}", r.as_ref().err()),
            };
            line(text);
        }
        let _ = channel.close(200, "stdin closed".into()).await;
        let _ = conn.close(200, "stdin closed".into()).await;
    });
}
