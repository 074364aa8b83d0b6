//! The fault matrix (issue 15): every strategy × backend pair under the same faults — the
//! worker process SIGKILLed at each pause point, the caller's future dropped there, the
//! backend's connections killed mid-body, a pool of one connection, a storm of 4 processes,
//! clocks ±60 s apart — each cell measured, then `GUARANTEES.md` rendered from the cells and
//! compared with the committed file (rewritten instead under `IDEMPOTENT_WRITE_GUARANTEES=1`).
//!
//! One binary (no test harness), so the table is assembled after every cell ran, with no
//! ordering between test binaries. Cells run concurrently (at most `IDEMPOTENT_FM_PARALLEL`,
//! default 6, storms counting 4). Each cell asserts the guarantee of its strategy's family and
//! describes what it measured; a broken guarantee fails the cell, and any failed cell fails the
//! run. Ordering uses the workers' pause-point handshakes (stdout/stdin) and in-process
//! notifications, never sleeps; only waiting out a lease polls.
//!
//! A backend that is not configured (`IDEMPOTENT_POSTGRES_URL`, `IDEMPOTENT_MYSQL_URL`;
//! Redis: `IDEMPOTENT_REDIS_URL` or `redis-server` on PATH) or a missing `faketime` makes its
//! cells **skipped**, printed loudly and left out of the comparison; under `CI=true` a skipped
//! cell fails the run.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use idempotent_tests::matrix::svc::{Open, Svc, cluster_url};
use idempotent_tests::matrix::table::{Cell, Fault, Verdict, compare, render, rows};
use idempotent_tests::matrix::worker::{Worker, WorkerCmd, kind, storm_tally, until_free};
use idempotent_tests::matrix::{Backend, Family, Pause, Point, Strategy};
use idempotent_tests::{
    MYSQL_ENV, MariaDbServer, POSTGRES_ENV, REDIS_CLUSTER_ENV, REDIS_ENV, RedisCluster,
    RedisServer, ci, cluster_urls, mariadb_server_available, redis_server_on_path,
    throwaway_redis_url,
};
use tokio::sync::{Barrier, Semaphore};

const WORKER: &str = env!("CARGO_BIN_EXE_fault_worker");
const LEASE: Duration = Duration::from_secs(1);
const GUARANTEES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../GUARANTEES.md");
const WRITE_ENV: &str = "IDEMPOTENT_WRITE_GUARANTEES";

/// Prints a cell's details under `IDEMPOTENT_FM_VERBOSE=1`.
macro_rules! detail {
    ($($t:tt)*) => {
        if std::env::var("IDEMPOTENT_FM_VERBOSE").is_ok_and(|v| v == "1") {
            eprintln!($($t)*);
        }
    };
}

fn worker() -> &'static Path {
    Path::new(WORKER)
}

fn env_num(var: &str, default: u32) -> u32 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Where each backend is, or why it is skipped.
struct Env {
    urls: HashMap<Backend, Result<String, String>>,
    svcs: HashMap<Backend, Arc<Svc>>,
    faketime: Result<(), String>,
    _sqlite_dir: tempfile::TempDir,
}

impl Env {
    async fn new() -> Env {
        let dir = tempfile::tempdir().expect("temp dir for the SQLite file");
        let mut urls = HashMap::new();
        urls.insert(Backend::Memory, Ok("memory".to_owned()));
        urls.insert(
            Backend::SqliteFile,
            Ok(format!("sqlite://{}", dir.path().join("fm.db").display())),
        );
        let from_env = |var: &str| match std::env::var(var) {
            Ok(u) if !u.is_empty() => Ok(u),
            _ => Err(format!("{var} is unset")),
        };
        urls.insert(Backend::PostgreSql, from_env(POSTGRES_ENV));
        urls.insert(Backend::MariaDb, from_env(MYSQL_ENV));
        urls.insert(
            Backend::Redis,
            from_env(REDIS_ENV).or_else(|e| {
                throwaway_redis_url().ok_or(format!("{e} and redis-server is not on PATH"))
            }),
        );
        urls.insert(
            Backend::RedisCluster,
            cluster_urls().map(|u| cluster_url(&u)).ok_or_else(|| {
                format!("{REDIS_CLUSTER_ENV} is unset and redis-server is not on PATH")
            }),
        );
        let mut svcs = HashMap::new();
        for b in Backend::ALL {
            let Some(Ok(url)) = urls.get(&b) else {
                continue;
            };
            let how = Open {
                max_connections: 8,
                ..Open::default()
            };
            let svc = Svc::open(url, Pause::local(), how)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", b.id()));
            svc.setup()
                .await
                .unwrap_or_else(|e| panic!("set up {}: {e}", b.id()));
            svcs.insert(b, Arc::new(svc));
        }
        let faketime = std::process::Command::new("faketime")
            .args(["-f", "+0s", "true"])
            .status()
            .ok()
            .filter(|s| s.success())
            .map(|_| ())
            .ok_or_else(|| "faketime is not on PATH".to_owned());
        Env {
            urls,
            svcs,
            faketime,
            _sqlite_dir: dir,
        }
    }

    fn url(&self, b: Backend) -> &str {
        match self.urls.get(&b) {
            Some(Ok(u)) => u,
            _ => panic!("{} is not available", b.id()),
        }
    }

    fn svc(&self, b: Backend) -> &Svc {
        self.svcs.get(&b).expect("set up backend")
    }

    /// Why the cell cannot run here, if it cannot.
    fn skip_reason(&self, fault: Fault, b: Backend) -> Option<String> {
        if let Some(Err(why)) = self.urls.get(&b) {
            return Some(why.clone());
        }
        if fault == Fault::Skew
            && let Err(why) = &self.faketime
        {
            return Some(why.clone());
        }
        if fault == Fault::Restarted && b == Backend::MariaDb && !mariadb_server_available() {
            return Some(
                "mariadbd, mariadb-install-db or the mariadb client is not installed".into(),
            );
        }
        if matches!(fault, Fault::ConnKilled | Fault::Restarted)
            && matches!(b, Backend::Redis | Backend::RedisCluster)
            && !redis_server_on_path()
        {
            return Some(
                "redis-server is not on PATH (the test kills its own server's clients)".into(),
            );
        }
        None
    }
}

/// Why `fault` does not apply to `s` on `b`, if it does not.
fn not_applicable(fault: Fault, s: Strategy, b: Backend) -> Option<&'static str> {
    match fault {
        Fault::KillClaimed | Fault::KillEffect | Fault::KillCompleted if b == Backend::Memory => {
            Some("in-process store, gone with its process")
        }
        Fault::Storm if b == Backend::Memory => Some("in-process store: one process"),
        Fault::ConnKilled | Fault::Restarted if b == Backend::Memory => Some("no server"),
        Fault::ConnKilled | Fault::Restarted if b == Backend::SqliteFile => {
            Some("a file, no server")
        }
        Fault::Restarted if b == Backend::RedisCluster => {
            Some("not run on a Cluster (a node lost: `redis_cluster_faults.rs`)")
        }
        Fault::Restarted if b == Backend::PostgreSql => Some(
            "the suite starts no PostgreSQL of its own (it runs as root, which `postgres` refuses)",
        ),
        Fault::PoolOfOne if !b.is_sql() => Some("no connection pool"),
        Fault::CancelRelease if s.family() == Family::Transactional => {
            Some("a dropped transaction rolls back; no `on_cancel`")
        }
        Fault::Skew if s.family() == Family::Transactional => {
            Some("no lease: claim and body in one transaction")
        }
        Fault::Skew if b == Backend::Memory => Some("one process, one clock"),
        _ => None,
    }
}

// ------------------------------------------------------------------------------ wording

fn effects_text(n: i64) -> String {
    match n {
        1 => "1 effect".into(),
        0 => "0 effects".into(),
        n => format!("**{n} effects**"),
    }
}

/// What a final answer means, in words.
fn verb(k: &str) -> String {
    match k {
        "Executed" | "Ok" => "runs".into(),
        "Replayed" => "replays".into(),
        "Duplicate" => "gets `Duplicate`".into(),
        other => format!("gets {}", short(other)),
    }
}

/// A short name for an `Other:` outcome.
fn short(k: &str) -> String {
    for (needle, name) in [
        ("PoolTimedOut", "a pool time-out"),
        ("Unrecorded", "`Unrecorded`"),
        ("LockLost", "`LockLost`"),
        ("Contention", "`Contention`"),
        ("TokenInvalid", "`TokenInvalid`"),
        ("Backend", "`Error::Backend`"),
        ("Db(", "the database error"),
    ] {
        if k.contains(needle) {
            return name.into();
        }
    }
    k.to_owned()
}

fn is_busy(s: Strategy, k: &str) -> bool {
    s.busy().is_some_and(|b| kind(&b) == k)
}

fn fresh_ok(s: Strategy) -> &'static str {
    if s.replays() { "Executed" } else { "Ok" }
}

// ------------------------------------------------------------------------------ scenarios

/// SIGKILL the worker at `point`, then retry from a fresh worker.
async fn kill_at(env: &Env, s: Strategy, b: Backend, point: Point) -> Verdict {
    let svc = env.svc(b);
    let url = env.url(b);
    let r = svc.fresh(s).await.expect("fresh key");
    let mut w = Worker::start(
        worker(),
        s,
        url,
        &WorkerCmd::Once(r.id.clone(), Some(point)),
        None,
    )
    .await;
    if point == Point::Completed {
        let mut first = String::new();
        while !first.starts_with("result ") {
            first = w.line().await;
        }
        assert_eq!(
            first,
            format!("result {}", fresh_ok(s)),
            "the first call completes"
        );
    }
    w.expect(&format!("paused {}", point.id())).await;
    let before = svc.effects(s, &r).await.expect("effects");
    let committed = match (point, s.family()) {
        (Point::Claimed, _) => 0,
        (Point::Effect, Family::Transactional) => 0,
        _ => 1,
    };
    assert_eq!(before, committed, "effects visible when killed");
    w.kill().await;
    let killed = Instant::now();
    let retry = until_free(worker(), s, url, &r.id, Duration::from_secs(15), None).await;
    let blocked = killed.elapsed();
    let after = svc.effects(s, &r).await.expect("effects");
    let last = retry.calls.last().cloned().unwrap_or_default();
    let busy = retry.calls.iter().filter(|c| is_busy(s, c)).count();
    let context = format!(
        "retry {:?} (ms per call {:?}) in {blocked:?}, effects {after}",
        retry.calls, retry.call_ms
    );
    // The guarantees.
    match (s.family(), point) {
        (Family::Claim, Point::Claimed | Point::Effect) => {
            assert!(
                busy > 0,
                "the live lease turns the retry away first: {context}"
            );
            assert_eq!(
                last, "Executed",
                "after the lease the retry runs: {context}"
            );
            let bound = if b == Backend::SqliteFile {
                2 * LEASE
            } else {
                LEASE
            };
            assert!(
                blocked <= bound + Duration::from_secs(2),
                "blocked at most {bound:?} (+2 s for starting a process): {context}"
            );
            let want = if point == Point::Claimed { 1 } else { 2 };
            assert_eq!(after, want, "{context}");
        }
        (Family::Transactional, Point::Claimed | Point::Effect) => {
            assert_eq!(busy, 0, "{context}");
            assert_eq!(retry.calls.len(), 1, "{context}");
            assert_eq!(
                last,
                fresh_ok(s),
                "nothing committed: the retry runs: {context}"
            );
            assert!(blocked < Duration::from_secs(10), "at once: {context}");
            assert_eq!(after, 1, "{context}");
        }
        (_, Point::Completed) => {
            let want = if s.replays() { "Replayed" } else { "Duplicate" };
            assert_eq!(retry.calls, [want], "{context}");
            assert_eq!(after, 1, "{context}");
        }
    }
    let text = if busy == 0 {
        format!("{}; retry {} at once", effects_text(after), verb(&last))
    } else {
        let wait = if b == Backend::SqliteFile {
            " (watched)"
        } else {
            ""
        };
        let why = if after > 1 {
            " (effect not recorded)"
        } else {
            ""
        };
        format!(
            "{}{why}; retry busy until the lease ends{wait}, then {}",
            effects_text(after),
            verb(&last)
        )
    };
    Verdict::Measured {
        text,
        effects: after,
    }
}

/// Drops the caller's future at `point` (in process), then retries.
async fn cancel_at(env: &Env, s: Strategy, b: Backend, point: Point) -> Verdict {
    let svc = Svc::open(env.url(b), Pause::local(), Open::default())
        .await
        .expect("open");
    let r = svc.fresh(s).await.expect("fresh key");
    svc.pause.arm(point);
    {
        let call = svc.call(s, &r);
        tokio::pin!(call);
        tokio::select! {
            g = &mut call => panic!("the call ended before its pause point: {g:?}"),
            _ = svc.pause.entered.notified() => {}
        }
    }
    let started = Instant::now();
    let first = kind(&svc.call(s, &r).await);
    let mut calls = vec![first.clone()];
    let mut ms = vec![started.elapsed().as_millis()];
    while is_busy(s, calls.last().expect("a call")) {
        assert!(
            started.elapsed() < LEASE * 2 + Duration::from_secs(3),
            "still busy: {calls:?} (ms per call {ms:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        let t = Instant::now();
        calls.push(kind(&svc.call(s, &r).await));
        ms.push(t.elapsed().as_millis());
    }
    let blocked = started.elapsed();
    let after = svc.effects(s, &r).await.expect("effects");
    let last = calls.last().cloned().unwrap_or_default();
    let context = format!("retries {calls:?} (ms per call {ms:?}) in {blocked:?}, effects {after}");
    match s.family() {
        Family::Claim => {
            assert!(
                is_busy(s, &first),
                "on_cancel = keep holds the key: {context}"
            );
            assert_eq!(last, "Executed", "{context}");
            let bound = if b == Backend::SqliteFile {
                2 * LEASE
            } else {
                LEASE
            };
            assert!(blocked <= bound + Duration::from_secs(1), "{context}");
            let want = if point == Point::Claimed { 1 } else { 2 };
            assert_eq!(after, want, "{context}");
        }
        Family::Transactional => {
            assert_eq!(
                calls,
                [fresh_ok(s)],
                "rolled back, the retry runs: {context}"
            );
            assert_eq!(after, 1, "{context}");
        }
    }
    let text = if is_busy(s, &first) {
        let why = if after > 1 {
            " (effect not recorded)"
        } else {
            ""
        };
        format!(
            "{}{why}; retry busy until the lease ends, then {}",
            effects_text(after),
            verb(&last)
        )
    } else {
        format!(
            "{}; rolled back, retry {} at once",
            effects_text(after),
            verb(&last)
        )
    };
    Verdict::Measured {
        text,
        effects: after,
    }
}

/// Drops the caller's future after the body's effect, with `on_cancel = "release"` (30 s
/// lease), then retries.
async fn cancel_release(env: &Env, s: Strategy, b: Backend) -> Verdict {
    let svc = Svc::open(env.url(b), Pause::local(), Open::default())
        .await
        .expect("open");
    let r = svc.fresh(s).await.expect("fresh key");
    svc.pause.arm(Point::Effect);
    {
        let call = svc.call_releasing(s, &r);
        tokio::pin!(call);
        tokio::select! {
            g = &mut call => panic!("the call ended before its pause point: {g:?}"),
            _ = svc.pause.entered.notified() => {}
        }
    }
    let started = Instant::now();
    let mut calls = vec![kind(&svc.call_releasing(s, &r).await)];
    // A retry racing the background release may still see the key busy.
    while is_busy(s, calls.last().expect("a call")) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the release frees the key at once, not after the 30 s lease: {calls:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        calls.push(kind(&svc.call_releasing(s, &r).await));
    }
    let after = svc.effects(s, &r).await.expect("effects");
    let last = calls.last().cloned().unwrap_or_default();
    assert_eq!(last, "Executed", "{calls:?}");
    assert_eq!(after, 2, "the released key runs again: {calls:?}");
    Verdict::Measured {
        text: format!(
            "{} (released on drop); retry runs within 5 s, not after the 30 s lease",
            effects_text(after)
        ),
        effects: after,
    }
}

/// Kills the pool's server connections while the body is held after its effect.
async fn conn_killed(env: &Env, s: Strategy, b: Backend) -> Verdict {
    // Redis: servers of the test's own, whose every client it kills.
    // Starting servers blocks (processes, waits): off the runtime's worker, or the other
    // cells' timers starve.
    let servers: Vec<RedisServer> = tokio::task::block_in_place(|| match b {
        Backend::Redis => vec![RedisServer::start(&[])],
        Backend::RedisCluster => RedisCluster::start(3).nodes,
        _ => Vec::new(),
    });
    let url = match b {
        Backend::Redis => servers[0].url(),
        Backend::RedisCluster => {
            cluster_url(&servers.iter().map(RedisServer::url).collect::<Vec<_>>())
        }
        _ => env.url(b).to_owned(),
    };
    let svc = Arc::new(
        Svc::open(&url, Pause::local(), Open::default())
            .await
            .expect("open"),
    );
    svc.setup().await.expect("setup");
    let r = svc.fresh(s).await.expect("fresh key");
    svc.pause.arm(Point::Effect);
    let call = {
        let (svc, r) = (svc.clone(), r.clone());
        tokio::spawn(async move { svc.call(s, &r).await })
    };
    svc.pause.entered.notified().await;
    if servers.is_empty() {
        let n = svc.kill_sessions().await.expect("kill sessions");
        assert!(n > 0, "no session killed");
    } else {
        let mut killed = 0;
        for server in &servers {
            let out =
                tokio::task::block_in_place(|| server.cli(&["CLIENT", "KILL", "TYPE", "normal"]));
            killed += out.trim().parse::<u32>().unwrap_or(0);
        }
        assert!(killed > 0, "CLIENT KILL killed nobody");
    }
    svc.pause.release.notify_one();
    let first = kind(
        &tokio::time::timeout(Duration::from_secs(30), call)
            .await
            .expect("the call ends within 30 s")
            .expect("call task"),
    );
    let mid = svc.effects(s, &r).await.expect("effects");
    assert!(mid <= 1, "at most one effect: {first} {mid}");
    let ok = first == fresh_ok(s);
    if !ok {
        assert!(first.starts_with("Other:"), "a typed error: {first}");
    }
    // A retry: replays, gets Duplicate, or runs when nothing was committed.
    let mut calls = vec![kind(&svc.call(s, &r).await)];
    let started = Instant::now();
    while is_busy(s, calls.last().expect("a call")) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still busy: {calls:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        calls.push(kind(&svc.call(s, &r).await));
    }
    let after = svc.effects(s, &r).await.expect("effects");
    let last = calls.last().cloned().unwrap_or_default();
    // Stopping servers blocks too.
    tokio::task::block_in_place(|| drop(servers));
    assert_eq!(after, 1, "first {first}, retries {calls:?}");
    let text = if ok {
        format!(
            "{}; call completes, retry {}",
            effects_text(after),
            verb(&last)
        )
    } else {
        let state = if mid == 0 {
            "nothing committed"
        } else {
            "effect kept"
        };
        format!(
            "{}; caller {}, {state}; retry {}",
            effects_text(after),
            verb(&first),
            verb(&last)
        )
    };
    Verdict::Measured {
        text,
        effects: after,
    }
}

/// 10 concurrent calls on a pool of one connection: first of one key, then of 10 keys.
async fn pool_of_one(env: &Env, s: Strategy, b: Backend) -> Verdict {
    const N: usize = 10;
    let how = Open {
        max_connections: 1,
        acquire_timeout: Duration::from_secs(10),
    };
    let svc = Arc::new(
        Svc::open(env.url(b), Pause::local(), how)
            .await
            .expect("open"),
    );
    let mut parts = Vec::new();
    for distinct in [false, true] {
        let mut reqs = Vec::new();
        let one = svc.fresh(s).await.expect("fresh key");
        for _ in 0..N {
            reqs.push(if distinct {
                svc.fresh(s).await.expect("fresh key")
            } else {
                one.clone()
            });
        }
        let barrier = Arc::new(Barrier::new(N));
        let tasks: Vec<_> = reqs
            .iter()
            .map(|r| {
                let (svc, r, barrier) = (svc.clone(), r.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    kind(&svc.call(s, &r).await)
                })
            })
            .collect();
        let all = tokio::time::timeout(Duration::from_secs(60), async {
            let mut all = Vec::new();
            for t in tasks {
                all.push(t.await.expect("call task"));
            }
            all
        })
        .await
        .unwrap_or_else(|_| {
            panic!("deadlock: {N} calls on a pool of one did not finish within 60 s")
        });
        detail!(
            "pool_of_one {} {} distinct={distinct}: {all:?}",
            s.id(),
            b.id()
        );
        let timeouts = all.iter().filter(|k| k.contains("PoolTimedOut")).count();
        let others: Vec<&String> = all
            .iter()
            .filter(|k| k.starts_with("Other:") && !k.contains("PoolTimedOut"))
            .collect();
        assert!(others.is_empty(), "unexpected errors: {all:?}");
        let fresh = all.iter().filter(|k| *k == fresh_ok(s)).count();
        let mut effects = Vec::new();
        if distinct {
            for r in &reqs {
                effects.push(svc.effects(s, r).await.expect("effects"));
            }
            assert_eq!(fresh + timeouts, N, "every key runs once: {all:?}");
            assert!(effects.iter().all(|e| *e <= 1), "{effects:?} {all:?}");
            assert_eq!(effects.iter().sum::<i64>(), fresh as i64, "{all:?}");
        } else {
            effects.push(svc.effects(s, &one).await.expect("effects"));
            assert_eq!(effects, [1], "{all:?}");
            assert_eq!(fresh, 1, "one call runs the body: {all:?}");
            let turned_away = if s.replays() {
                ["Replayed", "InProgress"]
            } else {
                ["Duplicate", "Duplicate"]
            };
            assert!(
                all.iter().all(|k| k == fresh_ok(s)
                    || turned_away.contains(&k.as_str())
                    || k.contains("PoolTimedOut")),
                "the others replay, are busy or get Duplicate: {all:?}"
            );
        }
        let total: i64 = effects.iter().sum();
        let finish = if timeouts == 0 {
            format!("{N} of {N} finish")
        } else {
            format!("{} finish, {timeouts} pool time-outs", N - timeouts)
        };
        parts.push(if distinct {
            format!("{N} keys: {total} effects, {finish}")
        } else {
            format!("1 key: {}, {finish}", effects_text(total))
        });
    }
    Verdict::Measured {
        text: parts.join("; "),
        effects: 1,
    }
}

/// 4 worker processes over the same keys.
async fn storm(env: &Env, s: Strategy, b: Backend) -> Verdict {
    let keys_n = env_num("IDEMPOTENT_FM_STORM_KEYS", 100);
    let rounds = env_num("IDEMPOTENT_FM_STORM_ROUNDS", 5);
    let svc = env.svc(b);
    let mut keys = Vec::new();
    for _ in 0..keys_n {
        keys.push(svc.fresh(s).await.expect("fresh key"));
    }
    let file = tempfile::NamedTempFile::new().expect("keys file");
    let text: Vec<&str> = keys.iter().map(|r| r.id.as_str()).collect();
    std::fs::write(file.path(), text.join("\n")).expect("write keys");
    let cmd = WorkerCmd::Storm(file.path().to_owned(), rounds, 4);
    let mut workers = Vec::new();
    for _ in 0..4 {
        workers.push(Worker::start(worker(), s, env.url(b), &cmd, None).await);
    }
    let mut tally: BTreeMap<String, u64> = BTreeMap::new();
    for w in workers {
        for (k, n) in storm_tally(&w.finish().await) {
            *tally.entry(k).or_default() += n;
        }
    }
    let mut per_key = BTreeMap::new();
    for r in &keys {
        *per_key
            .entry(svc.effects(s, r).await.expect("effects"))
            .or_insert(0u32) += 1;
    }
    detail!(
        "storm {} {}: {tally:?}, effects per key {per_key:?}",
        s.id(),
        b.id()
    );
    let errors: Vec<_> = tally.keys().filter(|k| k.starts_with("Other:")).collect();
    assert!(errors.is_empty(), "errors by kind: {tally:?}");
    assert_eq!(
        per_key,
        BTreeMap::from([(1, keys_n)]),
        "one effect per key: {tally:?}"
    );
    let fresh = tally.get(fresh_ok(s)).copied().unwrap_or(0);
    assert_eq!(
        fresh,
        u64::from(keys_n),
        "one fresh answer per key: {tally:?}"
    );
    let total: u64 = tally.values().sum();
    Verdict::Measured {
        text: format!("{keys_n} keys, {keys_n} effects, 0 errors ({total} calls)"),
        effects: 1,
    }
}

/// A skewed worker against a live claim, at +60 s and −60 s; then the holder completes.
async fn skew(env: &Env, s: Strategy, b: Backend) -> Verdict {
    let svc = env.svc(b);
    let url = env.url(b);
    let r = svc.fresh(s).await.expect("fresh key");
    let mut holder = Worker::start(
        worker(),
        s,
        url,
        &WorkerCmd::Once(r.id.clone(), Some(Point::Claimed)),
        None,
    )
    .await;
    holder.expect("paused claimed").await;
    let busy = kind(&s.busy().expect("claim mode"));
    for offset in ["+60s", "-60s"] {
        let skewed = until_free(worker(), s, url, &r.id, LEASE * 5 / 2, Some(offset)).await;
        check_skewed(offset, &skewed);
        assert!(
            skewed.calls.iter().all(|c| *c == busy),
            "at {offset} the live claim is never taken over: {:?}",
            skewed.calls
        );
        assert!(skewed.elapsed_ms >= 2_500, "{skewed:?}");
    }
    holder.release().await;
    holder.expect(&format!("result {}", fresh_ok(s))).await;
    holder.finish().await;
    let after = until_free(worker(), s, url, &r.id, LEASE, Some("+60s")).await;
    check_skewed("+60s", &after);
    assert_eq!(after.calls, ["Replayed"], "{after:?}");
    let effects = svc.effects(s, &r).await.expect("effects");
    assert_eq!(effects, 1);
    // A dead claim: the holder is killed after claiming; the skewed worker runs the body
    // within about one lease, whichever way its clock is off.
    for offset in ["+60s", "-60s"] {
        let dead = svc.fresh(s).await.expect("fresh key");
        let mut holder = Worker::start(
            worker(),
            s,
            url,
            &WorkerCmd::Once(dead.id.clone(), Some(Point::Claimed)),
            None,
        )
        .await;
        holder.expect("paused claimed").await;
        holder.kill().await;
        let killed = Instant::now();
        let retry = until_free(worker(), s, url, &dead.id, LEASE * 10, Some(offset)).await;
        let took = killed.elapsed();
        check_skewed(offset, &retry);
        assert_eq!(
            retry.calls.last().map(String::as_str),
            Some("Executed"),
            "{retry:?}"
        );
        let bound = if b == Backend::SqliteFile {
            2 * LEASE
        } else {
            LEASE
        };
        assert!(
            took <= bound + Duration::from_secs(2),
            "a dead claim is free within its lease at {offset}: {took:?} {retry:?}"
        );
        assert_eq!(svc.effects(s, &dead).await.expect("effects"), 1);
    }
    Verdict::Measured {
        text: format!(
            "{}; live claim never taken over, dead one free within its lease",
            effects_text(effects)
        ),
        effects,
    }
}

/// Checks that a worker run under `faketime offset` had its clock off by about `offset`.
fn check_skewed(offset: &str, r: &idempotent_tests::matrix::worker::UntilFree) {
    let want: i64 = if offset.starts_with('-') {
        -60_000
    } else {
        60_000
    };
    assert!(
        (r.clock_offset_ms - want).abs() < 5_000,
        "faketime {offset} did not skew the worker's clock: {} ms off",
        r.clock_offset_ms
    );
}

/// Restarts (SIGKILL, start again) the test's own MariaDB while the body is held after its
/// effect. Claim mode runs its 30 s-lease operation: the completion retries across the restart
/// for up to the lease.
async fn restarted_mariadb(s: Strategy) -> Verdict {
    let mut server = tokio::task::block_in_place(MariaDbServer::start);
    let svc = Arc::new(
        Svc::open(&server.url(), Pause::local(), Open::default())
            .await
            .expect("open"),
    );
    svc.setup().await.expect("setup");
    let r = svc.fresh(s).await.expect("fresh key");
    let claim = s.family() == Family::Claim;
    svc.pause.arm(Point::Effect);
    let call = {
        let (svc, r) = (svc.clone(), r.clone());
        tokio::spawn(async move {
            if claim {
                svc.call_releasing(s, &r).await
            } else {
                svc.call(s, &r).await
            }
        })
    };
    svc.pause.entered.notified().await;
    tokio::task::block_in_place(|| server.restart());
    svc.pause.release.notify_one();
    let first = kind(
        &tokio::time::timeout(Duration::from_secs(60), call)
            .await
            .expect("the call ends within 60 s")
            .expect("call task"),
    );
    let mid = svc.effects(s, &r).await.expect("effects");
    let again = async || {
        if claim {
            kind(&svc.call_releasing(s, &r).await)
        } else {
            kind(&svc.call(s, &r).await)
        }
    };
    let mut calls = vec![again().await];
    let started = Instant::now();
    while is_busy(s, calls.last().expect("a call")) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still busy: {calls:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        calls.push(again().await);
    }
    let after = svc.effects(s, &r).await.expect("effects");
    let last = calls.last().cloned().unwrap_or_default();
    tokio::task::block_in_place(|| drop(server));
    detail!(
        "restarted {} mariadb: first {first}, effects then {mid}, retries {calls:?}, effects {after}",
        s.id()
    );
    assert_eq!(after, 1, "first {first}, retries {calls:?}");
    let text = if first == fresh_ok(s) {
        assert!(
            claim,
            "a transaction cannot commit across the crash: {first}"
        );
        format!(
            "{}; call completes (its completion retried across the restart; 30 s lease), retry {}",
            effects_text(after),
            verb(&last)
        )
    } else {
        assert!(first.starts_with("Other:"), "a typed error: {first}");
        assert_eq!(mid, 0, "nothing committed: {first}");
        format!(
            "{}; caller {}, nothing committed; retry {}",
            effects_text(after),
            verb(&first),
            verb(&last)
        )
    };
    Verdict::Measured {
        text,
        effects: after,
    }
}

/// Restarts the test's own Redis while the body is held after its effect: without persistence,
/// then with AOF `appendfsync always`.
async fn restarted(s: Strategy) -> Verdict {
    let mut parts = Vec::new();
    let mut most = 0;
    for (name, args) in [
        ("no persistence", &[][..]),
        (
            "AOF always",
            &["--appendonly", "yes", "--appendfsync", "always"][..],
        ),
    ] {
        let mut server = tokio::task::block_in_place(|| RedisServer::start(args));
        let mut svc = Svc::open(&server.url(), Pause::local(), Open::default())
            .await
            .expect("open");
        // The restart may forget what the server held: effects are counted here.
        svc.count_in_memory();
        let svc = Arc::new(svc);
        let r = svc.fresh(s).await.expect("fresh key");
        svc.pause.arm(Point::Effect);
        let call = {
            let (svc, r) = (svc.clone(), r.clone());
            tokio::spawn(async move { svc.call(s, &r).await })
        };
        svc.pause.entered.notified().await;
        tokio::task::block_in_place(|| server.restart());
        svc.pause.release.notify_one();
        let first = kind(
            &tokio::time::timeout(Duration::from_secs(30), call)
                .await
                .expect("the call ends within 30 s")
                .expect("call task"),
        );
        let mut calls = vec![kind(&svc.call(s, &r).await)];
        let started = Instant::now();
        while is_busy(s, calls.last().expect("a call"))
            || calls.last().is_some_and(|c| c.contains("Backend"))
        {
            assert!(
                started.elapsed() < LEASE * 2 + Duration::from_secs(3),
                "{name}: still busy: {first} {calls:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
            calls.push(kind(&svc.call(s, &r).await));
        }
        let after = svc.effects(s, &r).await.expect("effects");
        let last = calls.last().cloned().unwrap_or_default();
        tokio::task::block_in_place(|| drop(server));
        detail!(
            "restarted {} {name}: first {first}, retries {calls:?}, effects {after}",
            s.id()
        );
        if name == "AOF always" {
            assert_eq!(
                first, "Executed",
                "the claim survived the restart: {calls:?}"
            );
            assert_eq!(after, 1, "{calls:?}");
        } else {
            assert!(
                first.contains("LockLost"),
                "the restart forgot the claim: the completion finds none: {first}"
            );
            assert!(after <= 2, "{first} {calls:?} {after}");
        }
        most = most.max(after);
        let how = if first == "Executed" {
            "call completes".to_owned()
        } else {
            format!("caller {}", verb(&first))
        };
        let limit = if after > 1 { " (claim forgotten)" } else { "" };
        parts.push(format!(
            "{name}: {}{limit}, {how}, retry {}",
            effects_text(after),
            verb(&last)
        ));
    }
    Verdict::Measured {
        text: parts.join("; "),
        effects: most,
    }
}

async fn run_cell(env: Arc<Env>, fault: Fault, s: Strategy, b: Backend) -> Verdict {
    match fault {
        Fault::KillClaimed => kill_at(&env, s, b, Point::Claimed).await,
        Fault::KillEffect => kill_at(&env, s, b, Point::Effect).await,
        Fault::KillCompleted => kill_at(&env, s, b, Point::Completed).await,
        Fault::CancelClaimed => cancel_at(&env, s, b, Point::Claimed).await,
        Fault::CancelEffect => cancel_at(&env, s, b, Point::Effect).await,
        Fault::CancelRelease => cancel_release(&env, s, b).await,
        Fault::ConnKilled => conn_killed(&env, s, b).await,
        Fault::Restarted if b == Backend::MariaDb => restarted_mariadb(s).await,
        Fault::Restarted => restarted(s).await,
        Fault::PoolOfOne => pool_of_one(&env, s, b).await,
        Fault::Storm => storm(&env, s, b).await,
        Fault::Skew => skew(&env, s, b).await,
    }
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "panicked".into()),
        Err(e) => e.to_string(),
    }
}

async fn run() -> bool {
    let started = Instant::now();
    let env = Arc::new(Env::new().await);
    // A filter: `IDEMPOTENT_FM_ONLY=<part of a cell id>`, or a positional argument
    // (`cargo test -p idempotent-tests --test fault_matrix -- kill_effect::dedup_claim`).
    let positional = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_default();
    let only = std::env::var("IDEMPOTENT_FM_ONLY").unwrap_or(positional);
    let parallel = env_num("IDEMPOTENT_FM_PARALLEL", 6);
    let permits = Arc::new(Semaphore::new(parallel as usize));
    let mut cells = Vec::new();
    let mut tasks = Vec::new();
    for (s, b) in rows() {
        for fault in Fault::ALL {
            let id = idempotent_tests::matrix::table::cell_id(fault, s, b);
            if !only.is_empty() && !id.contains(&only) {
                continue;
            }
            let verdict = if let Some(why) = not_applicable(fault, s, b) {
                Some(Verdict::NotApplicable(why.into()))
            } else {
                env.skip_reason(fault, b).map(Verdict::Skipped)
            };
            if let Some(verdict) = verdict {
                cells.push(Cell {
                    fault,
                    strategy: s,
                    backend: b,
                    verdict,
                });
                continue;
            }
            // A storm loads the machine; a skew cell's paused holder must renew its 1 s lease
            // every 333 ms from another process, so it never shares the machine with a storm
            // (4 + 3 > 6): starved past its lease, the holder would rightly lose its claim and
            // the cell would fail for the load, not the clocks (seen once in CI on 2 cores).
            let weight = match fault {
                Fault::Storm => 4.min(parallel),
                Fault::Skew => 3.min(parallel),
                _ => 1,
            };
            let (env, permits) = (env.clone(), permits.clone());
            tasks.push((
                fault,
                s,
                b,
                tokio::spawn(async move {
                    let _permit = permits.acquire_many(weight).await.expect("semaphore");
                    let t = Instant::now();
                    let v =
                        tokio::time::timeout(Duration::from_secs(150), run_cell(env, fault, s, b))
                            .await
                            .unwrap_or_else(|_| Verdict::Failed("timed out after 150 s".into()));
                    detail!("cell {id}: {:?} ({:?})", v, t.elapsed());
                    v
                }),
            ));
        }
    }
    for (fault, s, b, t) in tasks {
        let verdict = t
            .await
            .unwrap_or_else(|e| Verdict::Failed(panic_message(e)));
        cells.push(Cell {
            fault,
            strategy: s,
            backend: b,
            verdict,
        });
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fault-matrix");
    let _ = std::fs::create_dir_all(&dir);
    for c in &cells {
        let _ = std::fs::write(
            dir.join(format!("{}.json", c.id().replace("::", "."))),
            c.json().to_string(),
        );
    }
    let elapsed = started.elapsed();
    let failed: Vec<&Cell> = cells
        .iter()
        .filter(|c| matches!(c.verdict, Verdict::Failed(_)))
        .collect();
    let skipped: Vec<&Cell> = cells
        .iter()
        .filter(|c| matches!(c.verdict, Verdict::Skipped(_)))
        .collect();
    let ran = cells
        .iter()
        .filter(|c| matches!(c.verdict, Verdict::Measured { .. }))
        .count();
    eprintln!(
        "fault matrix: {} cells, {ran} measured, {} n/a, {} skipped, {} failed, in {:.1} s",
        cells.len(),
        cells
            .iter()
            .filter(|c| matches!(c.verdict, Verdict::NotApplicable(_)))
            .count(),
        skipped.len(),
        failed.len(),
        elapsed.as_secs_f64()
    );
    let _ = TALLY.set((ran, failed.len(), skipped.len()));
    let mut ok = true;
    for c in &failed {
        if let Verdict::Failed(msg) = &c.verdict {
            eprintln!("FAILED {}: {msg}", c.id());
        }
        ok = false;
    }
    if !skipped.is_empty() {
        let mut why: BTreeMap<String, usize> = BTreeMap::new();
        for c in &skipped {
            if let Verdict::Skipped(w) = &c.verdict {
                *why.entry(format!("{}: {w}", c.backend.id())).or_default() += 1;
            }
        }
        eprintln!("!!! SKIPPED FAULT-MATRIX CELLS: {why:?} !!!");
        if ci() {
            eprintln!("CI=true: a skipped cell is a failure");
            ok = false;
        }
    }
    if !only.is_empty() {
        eprintln!("IDEMPOTENT_FM_ONLY={only}: GUARANTEES.md neither compared nor written");
        return ok;
    }
    if !ok {
        return false;
    }
    let fresh = render(&cells);
    if std::env::var(WRITE_ENV).is_ok_and(|v| v == "1") {
        if !skipped.is_empty() {
            eprintln!("{WRITE_ENV}=1 with skipped cells: refusing to write GUARANTEES.md");
            return false;
        }
        std::fs::write(GUARANTEES, &fresh).expect("write GUARANTEES.md");
        eprintln!("wrote {GUARANTEES}");
        return true;
    }
    let committed = std::fs::read_to_string(GUARANTEES).unwrap_or_default();
    let skipped_ids: Vec<String> = skipped.iter().map(|c| c.id()).collect();
    match compare(&fresh, &committed, &skipped_ids) {
        Ok(()) => true,
        Err(diff) => {
            eprintln!(
                "GUARANTEES.md differs from what the matrix measured (rewrite it with {WRITE_ENV}=1 after checking why):\n{diff}"
            );
            false
        }
    }
}

/// (passed, failed, skipped) cells of this run, for the closing line.
static TALLY: std::sync::OnceLock<(usize, usize, usize)> = std::sync::OnceLock::new();

fn main() {
    if std::env::args().any(|a| a == "--list") {
        // `cargo test -- --list`: this binary is one test.
        println!("fault_matrix: test");
        return;
    }
    // A failed cell is reported with its message at the end; one line per panic here, no
    // backtraces from the many tasks.
    std::panic::set_hook(Box::new(|info| {
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("panic at {at}");
    }));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let ok = runtime.block_on(run());
    // The closing line, in the form test runners count: cells measured and within their
    // strategy's guarantee, cells that broke it, cells skipped for a missing backend.
    if let Some((passed, failed, skipped)) = TALLY.get() {
        println!("fault_matrix: {passed} passed, {failed} failed, {skipped} skipped");
    }
    if !ok {
        std::process::exit(1);
    }
}
