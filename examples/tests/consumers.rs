//! Idempotent message consumers on real brokers (issue 19): RabbitMQ (`IDEMPOTENT_AMQP_URL`)
//! and NATS JetStream (`IDEMPOTENT_NATS_URL`), with the examples' payment handler
//! ([`idempotent_examples::consumers`]).
//!
//! - `rabbitmq_kill_9::{sqlite_tx, postgres_tx, redis_claim}`: 490 payments over 100 business
//!   keys (each key 4 or 5 times, shuffled) consumed by two `consumer_worker` processes,
//!   each killed with SIGKILL after its handler returned and before its ack, at least 20
//!   times in all (every second execution of a worker's life, while fewer than 30 kills were
//!   made), respawned each time; then 10
//!   payments reusing a key with another amount. Every message is acked or dead-lettered;
//!   exactly the 10 mismatched ones are in the dead-letter queue; the ledger has exactly one
//!   row per key with its amount (effects == keys); every killed message was replayed on
//!   redelivery.
//! - `rabbitmq_redelivery_after_ttl_runs_again`: a message redelivered after its record's
//!   `ttl` has expired runs the body a second time (two ledger rows).
//! - `jetstream_ack_wait::{sqlite_claim, redis_claim}`: AckWait (1 s) shorter than the held
//!   handler: the redelivery gets `InProgress` and is NAKed with a delay; once the handler has
//!   returned (its ack held back), a later delivery is replayed and acked; one effect. Then the
//!   same key with another amount is published to the dead-letter subject and terminated.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use idempotent_examples::consumers::{
    Applied, ClaimPayments, Hold, Ledger, PayError, Payment, amqp, jetstream, process,
};
use idempotent_runtime::consumer::Settle;
use idempotent_runtime::{Disposition, idempotent};
use idempotent_tests::{amqp_url, nats_url, unique};
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use sqlx::SqliteConnection;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{Notify, mpsc};

const WORKER: &str = env!("CARGO_BIN_EXE_consumer_worker");
/// Business keys of the kill test.
const KEYS: usize = 100;
/// Payments published first (every key at least once, the rest duplicates).
const NORMAL: usize = 490;
/// Payments published after all others were acked, reusing a key with another amount.
const MISMATCHED: usize = 10;
/// A worker's life ends at its `CRASH_AFTER`-th execution while fewer than `MAX_KILLS` kills
/// happened.
const CRASH_AFTER: u32 = 2;
const MAX_KILLS: usize = 30;
const MIN_KILLS: usize = 20;
/// How long the kill test may take before it fails (each variant needs a few seconds).
const DEADLINE: Duration = Duration::from_secs(90);

fn key(i: usize) -> String {
    format!("k{i:03}")
}

fn amount(i: usize) -> i64 {
    1000 + i as i64
}

async fn amqp_channel(url: &str) -> (Connection, Channel) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("cannot connect to RabbitMQ at {url}: {e}"));
    let channel = conn.create_channel().await.expect("channel");
    (conn, channel)
}

/// Publishes `payment` with message id `id` and waits for the broker's confirm.
async fn publish(channel: &Channel, queue: &str, id: &str, payment: &Payment) {
    let body = serde_json::to_vec(payment).expect("json");
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default().with_message_id(id.into()),
        )
        .await
        .expect("basic.publish")
        .await
        .expect("publisher confirm");
}

/// Where a worker keeps its records and ledger.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Store {
    SqliteTx,
    PostgresTx,
    RedisClaim,
}

struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
}

/// Spawns worker `slot` (generation `generation`): its stdout lines go to `events`.
fn spawn(
    args: &[String],
    crash: bool,
    slot: usize,
    generation: u32,
    events: &mpsc::UnboundedSender<(usize, u32, String)>,
) -> Worker {
    let mut cmd = Command::new(WORKER);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if crash {
        cmd.arg(format!("crash_after={CRASH_AFTER}"));
    }
    let mut child = cmd.spawn().expect("spawn consumer_worker");
    let stdout = child.stdout.take().expect("stdout");
    let stdin = child.stdin.take();
    let events = events.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = events.send((slot, generation, line));
        }
        let _ = events.send((slot, generation, "EXIT".into()));
    });
    Worker { child, stdin }
}

async fn kill_9_run(store: Store) {
    let Some(url) = amqp_url() else { return };
    let merchant = unique("m");
    let ledger = Ledger::new(&unique("pay_ledger")).expect("identifier");
    let queue = unique("payments");
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("consumers.db");
    let file = file.to_str().expect("utf-8 path").to_owned();
    let mut args = vec![
        format!("amqp={url}"),
        format!("queue={queue}"),
        format!("ledger={}", ledger.name()),
        format!("sqlite={file}"),
    ];
    // The ledger's database, seen from the test; the records' table migrated for the workers.
    let sqlite = {
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&file)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(30));
        let pool = sqlx::SqlitePool::connect_with(opts)
            .await
            .expect("open sqlite");
        idempotent_runtime::migrate(&pool).await.expect("migrate");
        sqlx::query(ledger.ddl())
            .execute(&pool)
            .await
            .expect("ledger");
        pool
    };
    let mut pg = None;
    match store {
        Store::SqliteTx => args.push("store=sqlite-tx".into()),
        Store::PostgresTx => {
            let Some(pool) = idempotent_tests::postgres().await else {
                eprintln!(
                    "!!! SKIPPED: rabbitmq_kill_9::postgres_tx needs IDEMPOTENT_POSTGRES_URL !!!"
                );
                return;
            };
            sqlx::query(ledger.ddl())
                .execute(&pool)
                .await
                .expect("ledger");
            let pg_url = std::env::var(idempotent_tests::POSTGRES_ENV).expect("set");
            args.push("store=postgres-tx".into());
            args.push(format!("postgres={pg_url}"));
            pg = Some(pool);
        }
        Store::RedisClaim => {
            let redis_url = match std::env::var(idempotent_tests::REDIS_ENV) {
                Ok(u) if !u.is_empty() => u,
                _ => match idempotent_tests::throwaway_redis_url() {
                    Some(u) => u,
                    None => {
                        assert!(
                            !idempotent_tests::ci(),
                            "CI=true: Redis is required for rabbitmq_kill_9::redis_claim"
                        );
                        eprintln!(
                            "!!! SKIPPED: rabbitmq_kill_9::redis_claim needs IDEMPOTENT_REDIS_URL or redis-server on PATH !!!"
                        );
                        return;
                    }
                },
            };
            args.push("store=redis-claim".into());
            args.push(format!("redis={redis_url}"));
        }
    }

    let (conn, channel) = amqp_channel(&url).await;
    amqp::declare(&channel, &queue).await.expect("declare");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");

    let (tx, mut events) = mpsc::unbounded_channel();
    let mut workers: Vec<Worker> = (0..2)
        .map(|slot| spawn(&args, true, slot, 0, &tx))
        .collect();
    let mut generation = [0u32; 2];
    let mut ready = 0;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let next = async |events: &mut mpsc::UnboundedReceiver<(usize, u32, String)>, what: &str| {
        tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("{store:?}: timed out waiting for {what}"))
            .expect("event channel open")
    };
    while ready < 2 {
        let (_, _, line) = next(&mut events, "READY").await;
        assert_eq!(line, "READY", "{store:?}: worker start");
        ready += 1;
    }

    // 490 payments: each key 4 or 5 times, shuffled.
    let mut order: Vec<usize> = (0..NORMAL).map(|i| i % KEYS).collect();
    let mut seed = [0u8; 8];
    getrandom::fill(&mut seed).expect("OS randomness");
    let mut state = u64::from_le_bytes(seed) | 1;
    for i in (1..order.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        order.swap(i, (state % (i as u64 + 1)) as usize);
    }
    let mut normal_ids = BTreeSet::new();
    for (n, k) in order.iter().enumerate() {
        let id = format!("n{n:03}");
        let p = Payment {
            merchant: merchant.clone(),
            key: key(*k),
            amount_cents: amount(*k),
        };
        publish(&channel, &queue, &id, &p).await;
        normal_ids.insert(id);
    }

    let mut acked = BTreeSet::new();
    let mut dead = BTreeSet::new();
    let mut crashed: BTreeSet<String> = BTreeSet::new();
    let mut replayed_after_crash = BTreeSet::new();
    let mut kills = 0usize;
    let mut mismatch_ids = BTreeSet::new();
    let mut phase_two = false;
    loop {
        if !phase_two && normal_ids.is_subset(&acked) {
            // Every key has its record: the same keys with another amount must be refused.
            phase_two = true;
            for i in 0..MISMATCHED {
                let id = format!("x{i:02}");
                let p = Payment {
                    merchant: merchant.clone(),
                    key: key(i * 7),
                    amount_cents: amount(i * 7) + 1,
                };
                publish(&channel, &queue, &id, &p).await;
                mismatch_ids.insert(id);
            }
        }
        if phase_two && mismatch_ids.is_subset(&dead) {
            break;
        }
        let Ok(event) = tokio::time::timeout_at(deadline, events.recv()).await else {
            let unacked: Vec<_> = normal_ids.difference(&acked).collect();
            let lost: Vec<_> = unacked.iter().filter(|id| crashed.contains(**id)).collect();
            panic!(
                "{store:?}: after {DEADLINE:?}, {} payments never acked ({} of them were at a killed worker's crash point: {lost:?}; first unacked: {:?}), {} of {} mismatches dead-lettered",
                unacked.len(),
                lost.len(),
                unacked.first(),
                dead.intersection(&mismatch_ids).count(),
                mismatch_ids.len()
            );
        };
        let (slot, generation_of, line) = event.expect("event channel open");
        if generation_of != generation[slot] {
            continue; // a killed worker's last lines
        }
        let mut words = line.split_whitespace();
        let (Some(kind), id) = (words.next(), words.next().unwrap_or("").to_owned()) else {
            continue;
        };
        match kind {
            "ACK" => {
                if crashed.contains(&id) && line.ends_with("Replayed") {
                    replayed_after_crash.insert(id.clone());
                }
                acked.insert(id);
            }
            "DEAD" => {
                dead.insert(id);
            }
            "RETRY" => {}
            "CRASHPOINT" => {
                // After the effect and its record, before the ack: kill -9.
                let w = &mut workers[slot];
                w.child.start_kill().expect("SIGKILL");
                let status = w.child.wait().await.expect("wait");
                assert!(!status.success(), "{store:?}: a killed worker exited 0");
                kills += 1;
                crashed.insert(id);
                generation[slot] += 1;
                workers[slot] = spawn(&args, kills < MAX_KILLS, slot, generation[slot], &tx);
            }
            "READY" => {}
            "EXIT" => panic!("{store:?}: worker {slot} exited on its own"),
            other => panic!("{store:?}: worker {slot} printed {other:?}: {line}"),
        }
    }

    // Stop the workers cleanly (stdin closed), so nothing they hold is requeued unseen.
    for w in &mut workers {
        w.stdin.take();
        let status = tokio::time::timeout(Duration::from_secs(20), w.child.wait())
            .await
            .expect("worker stops when stdin closes")
            .expect("wait");
        assert!(status.success(), "{store:?}: worker exit {status}");
    }

    let left = channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("passive declare");
    let dlq = amqp::dead_letter_queue(&queue);
    let mut in_dlq = Vec::new();
    while let Some(m) = channel
        .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        in_dlq.push(
            m.delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default(),
        );
    }
    for q in [queue.as_str(), dlq.as_str()] {
        channel
            .queue_delete(q.into(), QueueDeleteOptions::default())
            .await
            .expect("queue.delete");
    }
    let _ = conn.close(200, "done".into()).await;

    let rows: Vec<(String, i64, i64)> = match &pg {
        Some(pool) => sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT k, COUNT(*), MIN(amount) FROM {} WHERE merchant = $1 GROUP BY k ORDER BY k",
            ledger.name()
        )))
        .bind(&merchant)
        .fetch_all(pool)
        .await
        .expect("ledger"),
        None => sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT k, COUNT(*), MIN(amount) FROM {} WHERE merchant = ? GROUP BY k ORDER BY k",
            ledger.name()
        )))
        .bind(&merchant)
        .fetch_all(&sqlite)
        .await
        .expect("ledger"),
    };
    if let Some(pool) = &pg {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE {}", ledger.name())))
            .execute(pool)
            .await;
    }

    eprintln!(
        "rabbitmq_kill_9 {store:?}: {} payments, {} keys, {kills} workers killed between effect and ack, {} dead-lettered",
        NORMAL + MISMATCHED,
        rows.len(),
        in_dlq.len()
    );
    let expected: Vec<(String, i64, i64)> = (0..KEYS).map(|i| (key(i), 1, amount(i))).collect();
    assert_eq!(
        rows, expected,
        "{store:?}: one ledger row per key (effects == keys)"
    );
    assert!(
        kills >= MIN_KILLS,
        "{store:?}: only {kills} workers were killed between effect and ack"
    );
    assert_eq!(
        crashed, replayed_after_crash,
        "{store:?}: every message whose worker was killed before the ack was replayed on redelivery"
    );
    assert_eq!(acked, normal_ids, "{store:?}: every payment acked");
    assert_eq!(
        dead, mismatch_ids,
        "{store:?}: exactly the mismatches dead-lettered"
    );
    in_dlq.sort();
    assert_eq!(
        in_dlq,
        mismatch_ids.iter().cloned().collect::<Vec<_>>(),
        "{store:?}: the dead-letter queue holds exactly the mismatched payments, once each"
    );
    assert_eq!(
        left.message_count(),
        0,
        "{store:?}: nothing left in the queue"
    );
    drop(dir);
}

mod rabbitmq_kill_9 {
    use super::*;

    #[cfg_attr(not(has_amqp), ignore = "IDEMPOTENT_AMQP_URL is not set")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_tx() {
        kill_9_run(Store::SqliteTx).await
    }

    #[cfg_attr(
        any(not(has_amqp), not(has_postgres)),
        ignore = "IDEMPOTENT_AMQP_URL is not set or IDEMPOTENT_POSTGRES_URL is not set"
    )]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_tx() {
        kill_9_run(Store::PostgresTx).await
    }

    #[cfg_attr(
        any(not(has_amqp), not(has_redis)),
        ignore = "IDEMPOTENT_AMQP_URL is not set or IDEMPOTENT_REDIS_URL is not set and redis-server is not on PATH"
    )]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_claim() {
        kill_9_run(Store::RedisClaim).await
    }
}

// ------------------------------------------------------------------------ ttl expiry

/// The payment handler with a 1 s `ttl` (and lease, its floor): a record older than that is
/// gone for replay purposes.
struct ShortTtl {
    db: sqlx::SqlitePool,
    ledger: Ledger,
}

impl ShortTtl {
    #[idempotent(
        strategy = "dedup_table",
        key = "msg.key",
        scope = "msg.merchant",
        store = "self.db",
        lease = "1s",
        ttl = "1s"
    )]
    async fn apply(
        &self,
        msg: &Payment,
        #[tx] tx: &mut SqliteConnection,
    ) -> Result<Applied, PayError> {
        sqlx::query(self.ledger.insert(false))
            .bind(&msg.merchant)
            .bind(&msg.key)
            .bind(msg.amount_cents)
            .execute(&mut *tx)
            .await?;
        Ok(Applied {
            key: msg.key.clone(),
            amount_cents: msg.amount_cents,
        })
    }
}

/// A consumer gets the payment, runs it and does not ack (it stalls); the record's `ttl`
/// passes; the consumer's channel closes, RabbitMQ redelivers: the redelivery runs the body
/// again — a second ledger row. `ttl` must outlast every redelivery.
#[cfg_attr(not(has_amqp), ignore = "IDEMPOTENT_AMQP_URL is not set")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_redelivery_after_ttl_runs_again() {
    let Some(url) = amqp_url() else { return };
    let Some((pool, _dir)) = idempotent_tests::sqlite().await else {
        return;
    };
    let ledger = Ledger::new(&unique("ttl_ledger")).expect("identifier");
    sqlx::query(ledger.ddl())
        .execute(&pool)
        .await
        .expect("ledger");
    let svc = ShortTtl {
        db: pool.clone(),
        ledger: ledger.clone(),
    };
    let queue = unique("ttl_payments");
    let (conn, setup) = amqp_channel(&url).await;
    amqp::declare(&setup, &queue).await.expect("declare");
    setup
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let payment = Payment {
        merchant: unique("m"),
        key: "late".into(),
        amount_cents: 700,
    };
    publish(&setup, &queue, "late-1", &payment).await;

    let consume = async |channel: &Channel| {
        channel
            .basic_qos(1, BasicQosOptions::default())
            .await
            .expect("qos");
        let mut c = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        tokio::time::timeout(Duration::from_secs(20), c.next())
            .await
            .expect("a delivery")
            .expect("consumer open")
            .expect("delivery")
    };

    let first_channel = conn.create_channel().await.expect("channel");
    let first = consume(&first_channel).await;
    assert!(!first.redelivered);
    let handled = process(&first.data, async |p| svc.apply(p).await, Duration::ZERO).await;
    assert_eq!(handled.how, Some(Disposition::Executed));
    assert_eq!(handled.settle, Settle::Ack);
    // The consumer stalls before its ack until the record's ttl has passed (SQLite: by this
    // process's clock, the one the store judges expiry by).
    let expires_at_ms: i64 =
        sqlx::query_scalar("SELECT MAX(expires_at_ms) FROM idempotency_records")
            .fetch_one(&pool)
            .await
            .expect("record");
    loop {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis() as i64;
        if now_ms > expires_at_ms {
            break;
        }
        tokio::time::sleep(Duration::from_millis((expires_at_ms - now_ms + 5) as u64)).await;
    }
    // The stalled consumer's channel closes without the ack: RabbitMQ requeues the message.
    first_channel
        .close(200, "stalled".into())
        .await
        .expect("close");

    let second_channel = conn.create_channel().await.expect("channel");
    let second = consume(&second_channel).await;
    assert!(second.redelivered, "the same message, redelivered");
    let handled = process(&second.data, async |p| svc.apply(p).await, Duration::ZERO).await;
    assert_eq!(
        handled.how,
        Some(Disposition::Executed),
        "after its ttl, the record no longer answers: the body runs again"
    );
    amqp::settle(&second, handled.settle).await.expect("ack");
    let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM {} WHERE k = 'late'",
        ledger.name()
    )))
    .fetch_one(&pool)
    .await
    .expect("ledger");
    assert_eq!(
        rows, 2,
        "two effects for one message: ttl shorter than redelivery"
    );
    setup
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete");
    setup
        .queue_delete(
            amqp::dead_letter_queue(&queue).as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .expect("delete");
    let _ = conn.close(200, "done".into()).await;
}

// ------------------------------------------------------------------- JetStream AckWait

/// What a JetStream consumer task saw: its id, the delivery count, the outcome.
type Seen = (usize, i64, String);

async fn ack_wait_run<K>(svc: Arc<ClaimPayments<K>>)
where
    K: Send + Sync + 'static,
    ClaimPayments<K>: Apply,
{
    let Some(url) = nats_url() else { return };
    let client = async_nats::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to NATS at {url}: {e}"));
    let js = async_nats::jetstream::new(client);
    let name = unique("PAY").to_uppercase();
    let subject = format!("{name}.in");
    let dead_subject = format!("{name}.dead");
    let stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.>")],
            ..Default::default()
        })
        .await
        .expect("create stream (is JetStream enabled?)");
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("workers".into()),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(1),
            filter_subject: subject.clone(),
            ..Default::default()
        })
        .await
        .expect("create consumer");

    svc.hold.arm();
    let ack_gate = Arc::new(Notify::new());
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<Seen>();
    let mut tasks = Vec::new();
    for task in 0..2 {
        let consumer = consumer.clone();
        let svc = svc.clone();
        let seen_tx = seen_tx.clone();
        let ack_gate = ack_gate.clone();
        let dead_subject = dead_subject.clone();
        tasks.push(tokio::spawn(async move {
            let mut messages = consumer
                .stream()
                .max_messages_per_batch(1)
                .messages()
                .await
                .expect("messages");
            while let Some(msg) = messages.next().await {
                let msg = msg.expect("message");
                let delivered = msg.info().expect("info").delivered;
                let handled = process(
                    &msg.payload,
                    async |p| svc.apply(p).await,
                    Duration::from_millis(200),
                )
                .await;
                let what = match (&handled.result, handled.how) {
                    (Ok(_), Some(Disposition::Executed)) => "Executed".to_owned(),
                    (Ok(_), Some(Disposition::Replayed)) => "Replayed".to_owned(),
                    (Err(PayError::Idempotency(idempotent_runtime::Error::InProgress)), _) => {
                        "InProgress".to_owned()
                    }
                    (r, how) => format!("{r:?} {how:?}"),
                };
                let executed = what == "Executed";
                let _ = seen_tx.send((task, delivered, what));
                if executed {
                    // This consumer's ack is late (held until the replay was seen).
                    ack_gate.notified().await;
                }
                jetstream::settle(&msg, handled.settle, &dead_subject)
                    .await
                    .expect("settle");
            }
        }));
    }

    let payment = Payment {
        merchant: unique("m"),
        key: "slow".into(),
        amount_cents: 900,
    };
    js.publish(
        subject.clone(),
        serde_json::to_vec(&payment).expect("json").into(),
    )
    .await
    .expect("publish")
    .await
    .expect("publish ack");
    let wait = Duration::from_secs(20);
    tokio::time::timeout(wait, svc.hold.entered.notified())
        .await
        .expect("the first delivery's handler started");
    let mut log = Vec::new();
    let mut next = async |log: &mut Vec<Seen>, want: &str| loop {
        let s = tokio::time::timeout(wait, seen.recv())
            .await
            .unwrap_or_else(|_| panic!("no {want} within {wait:?}: saw {log:?}"))
            .expect("tasks alive");
        log.push(s.clone());
        if s.2 == want {
            return s;
        }
    };
    // AckWait passes while the handler is held: JetStream redelivers, the claim is held.
    let busy = next(&mut log, "InProgress").await;
    assert!(
        busy.1 >= 2,
        "the InProgress answer went to a redelivery: {log:?}"
    );
    svc.hold.release.notify_one();
    let executed = next(&mut log, "Executed").await;
    assert_eq!(executed.1, 1, "the first delivery ran the body: {log:?}");
    // Its ack is held back: the NAKed message comes again and is answered from the record.
    let replayed = next(&mut log, "Replayed").await;
    assert!(replayed.1 > busy.1, "a later delivery replayed: {log:?}");
    ack_gate.notify_one();
    // Every delivery settled: nothing pending, nothing awaiting an ack.
    let started = tokio::time::Instant::now();
    loop {
        let info = consumer.info().await.expect("consumer info");
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        assert!(
            started.elapsed() < wait,
            "still pending: {} / awaiting ack {}",
            info.num_pending,
            info.num_ack_pending
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while let Ok(s) = seen.try_recv() {
        log.push(s);
    }
    let executions = log.iter().filter(|s| s.2 == "Executed").count();
    assert_eq!(executions, 1, "one execution: {log:?}");
    assert!(
        log.iter()
            .all(|s| ["Executed", "Replayed", "InProgress"].contains(&s.2.as_str())),
        "only these outcomes: {log:?}"
    );
    let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM {} WHERE merchant = ?",
        svc.ledger.name()
    )))
    .bind(&payment.merchant)
    .fetch_one(&svc.db)
    .await
    .expect("ledger");
    assert_eq!(rows, 1, "one effect: {log:?}");

    // The same key with another amount: FingerprintMismatch → published to the dead-letter
    // subject, then +TERM (no redelivery).
    let mismatch = Payment {
        amount_cents: payment.amount_cents + 1,
        ..payment.clone()
    };
    let body = serde_json::to_vec(&mismatch).expect("json");
    js.publish(subject.clone(), body.clone().into())
        .await
        .expect("publish")
        .await
        .expect("publish ack");
    let s = loop {
        let s = tokio::time::timeout(wait, seen.recv())
            .await
            .expect("the mismatch was handled")
            .expect("tasks alive");
        // A delivery of the first message a task had already pulled is replayed late.
        if s.2 != "Replayed" {
            break s;
        }
    };
    assert!(s.2.contains("FingerprintMismatch"), "{s:?}");
    let started = tokio::time::Instant::now();
    loop {
        let info = consumer.info().await.expect("consumer info");
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        assert!(started.elapsed() < wait, "the mismatch was not terminated");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dead = stream
        .get_last_raw_message_by_subject(&dead_subject)
        .await
        .expect("the mismatch is on the dead-letter subject");
    assert_eq!(dead.payload.as_ref(), body.as_slice());
    let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM {} WHERE merchant = ?",
        svc.ledger.name()
    )))
    .bind(&payment.merchant)
    .fetch_one(&svc.db)
    .await
    .expect("ledger");
    assert_eq!(rows, 1, "the mismatch had no effect");
    for t in tasks {
        t.abort();
    }
    js.delete_stream(&name).await.expect("delete stream");
}

/// The claim-mode handler, whatever its store.
trait Apply {
    fn apply(&self, p: &Payment) -> impl Future<Output = Result<Applied, PayError>> + Send;
}

impl Apply for ClaimPayments<idempotent_runtime::RedisStore> {
    fn apply(&self, p: &Payment) -> impl Future<Output = Result<Applied, PayError>> + Send {
        ClaimPayments::<idempotent_runtime::RedisStore>::apply(self, p)
    }
}

impl Apply for ClaimPayments<sqlx::SqlitePool> {
    fn apply(&self, p: &Payment) -> impl Future<Output = Result<Applied, PayError>> + Send {
        ClaimPayments::<sqlx::SqlitePool>::apply(self, p)
    }
}

async fn claim_svc<K>(kv: K, db: sqlx::SqlitePool) -> Arc<ClaimPayments<K>> {
    let ledger = Ledger::new(&unique("js_ledger")).expect("identifier");
    sqlx::query(ledger.ddl())
        .execute(&db)
        .await
        .expect("ledger");
    Arc::new(ClaimPayments {
        kv,
        db,
        ledger,
        hold: Hold::default(),
    })
}

mod jetstream_ack_wait {
    use super::*;

    #[cfg_attr(not(has_nats), ignore = "IDEMPOTENT_NATS_URL is not set")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_claim() {
        let Some((pool, _dir)) = idempotent_tests::sqlite().await else {
            return;
        };
        ack_wait_run(claim_svc(pool.clone(), pool).await).await
    }

    #[cfg_attr(
        any(not(has_nats), not(has_redis)),
        ignore = "IDEMPOTENT_NATS_URL is not set or IDEMPOTENT_REDIS_URL is not set and redis-server is not on PATH"
    )]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_claim() {
        let Some(kv) = idempotent_tests::redis().await else {
            return;
        };
        let Some((pool, _dir)) = idempotent_tests::sqlite().await else {
            return;
        };
        ack_wait_run(claim_svc(kv, pool).await).await
    }
}
