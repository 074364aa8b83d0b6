//! The benchmark: every `#[idempotent]` path against its hand-written equivalent, fresh and
//! replay, at concurrency 1 and 32, median of rounds; Redis commands per call from
//! `INFO commandstats`; CPU per memory call under callgrind; with `--growth`, PostgreSQL with
//! 10^3, 10^5 and 10^6 records and c = 1, 8, 32, 128. `--write BENCHMARKS.md` writes the report.
//!
//! A bench binary rather than criterion: each measurement is a phase of thousands of calls from
//! up to 128 concurrent tokio tasks against live servers, timed per call for p99; criterion
//! times one closure per iteration on one thread. Run it through `scripts/bench.sh`, which
//! builds `memcpu` next to it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use idempotent_benches::annotated::{Claim, Lock, MySqlTx, PgTx, SqliteTx, Token};
use idempotent_benches::harness::{Call, Prepare, Stats, phase, plain_requests};
use idempotent_benches::redis_server::RedisServer;
use idempotent_benches::{AppError, Req, hand, store_alone};
use idempotent_runtime::{MemoryStore, RedisStore};
use redis::aio::ConnectionManager;
use sqlx::{Executor, MySqlPool, PgPool, SqlitePool};

const TOKEN_TTL: Duration = Duration::from_secs(3600);
const SCHEMA: &str = "idem_bench";
const POOL: u32 = 32;

struct Args {
    calls: usize,
    rounds: usize,
    growth: bool,
    callgrind: bool,
    write: Option<PathBuf>,
    only: Option<String>,
    sqlite_pool: u32,
    redis_url: Option<String>,
    /// Runs only this side (`annotated`, `hand`, `hand-work`): for profiling one side under
    /// `perf record`, with `--write` to a scratch file (the ratios need all three).
    side: Option<String>,
    /// The main table's concurrencies, default 1 and 32.
    concurrency: Vec<usize>,
    postgres_url: String,
    mysql_url: String,
    raw: String,
}

fn args() -> Args {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut a = Args {
        calls: 2_000,
        rounds: 3,
        growth: false,
        callgrind: true,
        write: None,
        only: None,
        sqlite_pool: 8,
        redis_url: None,
        side: None,
        concurrency: vec![1, 32],
        postgres_url: std::env::var("IDEMPOTENT_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
        mysql_url: std::env::var("IDEMPOTENT_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into()),
        raw: raw.join(" "),
    };
    let mut it = raw.into_iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--calls" => a.calls = value().parse().unwrap_or_else(|_| usage("--calls N")),
            "--rounds" => a.rounds = value().parse().unwrap_or_else(|_| usage("--rounds N")),
            "--long" => a.calls = 10_000,
            "--growth" => a.growth = true,
            "--no-callgrind" => a.callgrind = false,
            "--write" => a.write = Some(value().into()),
            "--only" => a.only = Some(value()),
            "--sqlite-pool" => {
                a.sqlite_pool = value().parse().unwrap_or_else(|_| usage("--sqlite-pool N"))
            }
            "--redis-url" => a.redis_url = Some(value()),
            "--side" => {
                let side = value();
                if !SIDES.contains(&side.as_str()) {
                    usage("--side annotated|hand|hand-work")
                }
                a.side = Some(side)
            }
            "--concurrency" => {
                a.concurrency = value()
                    .split(',')
                    .map(|c| c.trim().parse().ok().filter(|&c: &usize| c > 0))
                    .collect::<Option<Vec<usize>>>()
                    .unwrap_or_else(|| usage("--concurrency N[,N…] (positive)"))
            }
            "--postgres-url" => a.postgres_url = value(),
            "--mysql-url" => a.mysql_url = value(),
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    a
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "{problem}\nusage: bench [--calls N (2000)] [--long (10000 calls)] [--rounds N (3)] [--growth] \
         [--no-callgrind] [--only SUBSTRING] [--sqlite-pool N (8)] [--write BENCHMARKS.md] [--redis-url URL (default: a \
         throwaway redis-server)] [--postgres-url URL] [--mysql-url URL] [--side annotated|hand|hand-work] \
         [--concurrency N[,N…] (1,32)]"
    );
    std::process::exit(2)
}

/// One benchmarked path: the annotated function and the hand-written one.
struct PathDef {
    name: String,
    annotated: (Call, Prepare),
    hand: (Call, Prepare),
    redis: bool,
}

fn call<F, Fut>(f: F) -> Call
where
    F: Fn(Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<idempotent_benches::Receipt, AppError>> + Send + 'static,
{
    Arc::new(move |r| f(r).boxed())
}

fn plain() -> Prepare {
    Arc::new(|tenant, n| async move { Ok(plain_requests(&tenant, n)) }.boxed())
}

/// Requests carrying `n` tokens issued by `issue`, issued before the timed phase.
fn tokens<F, Fut>(issue: F) -> Prepare
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<String, AppError>> + Send + 'static,
{
    Arc::new(move |tenant, n| {
        let issue = issue.clone();
        async move {
            let mut reqs = Vec::with_capacity(n);
            for i in 0..n {
                reqs.push(Req {
                    tenant: tenant.clone(),
                    id: issue().await?,
                    amount: i as u64,
                });
            }
            Ok(reqs)
        }
        .boxed()
    })
}

/// `INFO commandstats` as command → calls.
async fn commandstats(conn: &mut ConnectionManager) -> BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO commandstats");
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|f| f.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

/// (scripts sent, commands executed inside them) between two `commandstats`.
fn script_counts(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> (u64, u64) {
    let mut sent = 0;
    let mut inside = 0;
    for (name, calls) in after {
        let d = calls - before.get(name).copied().unwrap_or(0);
        match name.as_str() {
            "evalsha" | "eval" | "evalsha_ro" | "eval_ro" => sent += d,
            "info" | "ping" | "client|setinfo" | "client|setname" | "hello" | "select" => {}
            _ => inside += d,
        }
    }
    (sent, inside)
}

#[derive(Default)]
struct Results {
    /// (path, c, phase, side) → one Stats per round
    stats: BTreeMap<(String, usize, &'static str, &'static str), Vec<Stats>>,
    /// (path, phase, side) → (scripts sent, commands inside, calls)
    redis: BTreeMap<(String, &'static str, &'static str), (u64, u64, u64)>,
}

/// The sides of each path: the annotated function, the hand-written one, and the hand-written
/// one doing the framework's own work too (`hand::set_framework_work`): storage key by SHA-256,
/// canonical fingerprint, owner token with a random per-process prefix, response read back and compared.
const SIDES: [&str; 3] = ["annotated", "hand", "hand-work"];
/// The `memcpu` sides that split the annotated call into parts (see `memcpu`'s docs).
const PARTS: [&str; 8] = [
    "requests",
    "store",
    "hand-store",
    "store-setup",
    "key",
    "fingerprint",
    "response",
    "roundtrip",
];
const PHASES: [&str; 2] = ["fresh", "replay"];
/// How many slices each side's phase is cut into; the sides run their slices in turn.
const CHUNKS: usize = 10;
/// The memory paths `memcpu` counts instructions of: `dedup_table`, `distributed_lock`, `token`.
const CPU_STRATEGIES: [&str; 3] = ["dedup", "lock", "token"];

async fn run_path(
    p: &PathDef,
    concurrency: &[usize],
    a: &Args,
    run_id: &str,
    redis_conn: &mut Option<ConnectionManager>,
    results: &mut Results,
    between_rounds: Option<&(dyn Fn() -> futures_util::future::BoxFuture<'static, ()> + Sync)>,
) {
    let calls = a.calls * calls_scale(&p.name);
    for &c in concurrency {
        for round in 0..a.rounds {
            // Each side goes first, second and third in turn.
            let order: Vec<usize> = [round % 3, (round + 1) % 3, (round + 2) % 3]
                .into_iter()
                .filter(|&i| a.side.as_deref().is_none_or(|only| only == SIDES[i]))
                .collect();
            // Each side's requests, in CHUNKS slices (prepared before anything is timed).
            let mut chunks: [Vec<Arc<Vec<Req>>>; 3] = Default::default();
            for &side_i in &order {
                let prepare = if side_i == 0 {
                    &p.annotated.1
                } else {
                    &p.hand.1
                };
                hand::set_framework_work(side_i == 2);
                let tenant = format!("{run_id}r{round}c{c}s{side_i}");
                let reqs = prepare(tenant, calls)
                    .await
                    .unwrap_or_else(|e| panic!("{}: preparing: {e}", p.name));
                let per = reqs.len().div_ceil(CHUNKS).max(1);
                chunks[side_i] = reqs.chunks(per).map(|r| Arc::new(r.to_vec())).collect();
            }
            for ph in PHASES {
                let mut merged: [Option<Stats>; 3] = Default::default();
                // The sides take turns chunk by chunk, so a disturbance of the machine lasting
                // less than a phase falls on all of them alike.
                for chunk in 0..CHUNKS {
                    for &side_i in &order {
                        let Some(reqs) = chunks[side_i].get(chunk) else {
                            continue;
                        };
                        let side = SIDES[side_i];
                        let call = if side_i == 0 {
                            &p.annotated.0
                        } else {
                            &p.hand.0
                        };
                        hand::set_framework_work(side_i == 2);
                        let before = match (p.redis, redis_conn.as_mut()) {
                            (true, Some(conn)) => Some(commandstats(conn).await),
                            _ => None,
                        };
                        let s = phase(call, reqs.clone(), c)
                            .await
                            .unwrap_or_else(|e| panic!("{} {side} {ph} c={c}: {e}", p.name));
                        if let (Some(before), Some(conn)) = (before, redis_conn.as_mut()) {
                            let (sent, inside) = script_counts(&before, &commandstats(conn).await);
                            let e = results.redis.entry((p.name.clone(), ph, side)).or_default();
                            e.0 += sent;
                            e.1 += inside;
                            e.2 += s.calls as u64;
                        }
                        match &mut merged[side_i] {
                            Some(m) => m.merge(s),
                            slot => *slot = Some(s),
                        }
                    }
                }
                for &side_i in &order {
                    let side = SIDES[side_i];
                    let Some(s) = merged[side_i].take() else {
                        continue;
                    };
                    eprintln!(
                        "  {:<40} c={c:<3} round {round} {side:<9} {ph:<6} {:>9.0} calls/s p99 {:>8.0} µs",
                        p.name,
                        s.per_second(),
                        s.quantile(0.99)
                    );
                    results
                        .stats
                        .entry((p.name.clone(), c, ph, side))
                        .or_default()
                        .push(s);
                }
            }
            if let Some(f) = between_rounds {
                f().await;
            }
        }
    }
}

/// How many times `--calls` a path's phases make: 10 for the memory-store paths, whose
/// calls take microseconds (at 10,000 calls a phase would last ~20 ms, short enough for one
/// preemption or frequency step to move it by 20%), 1 for the others.
fn calls_scale(path: &str) -> usize {
    if path.contains("memory") { 10 } else { 1 }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// (median calls/s, median p99 µs) of a key's rounds.
fn summary(r: &Results, key: (String, usize, &'static str, &'static str)) -> Option<(f64, f64)> {
    let rounds = r.stats.get(&key)?;
    Some((
        median(rounds.iter().map(Stats::per_second).collect()),
        median(rounds.iter().map(|s| s.quantile(0.99)).collect()),
    ))
}

fn fmt_rate(x: f64) -> String {
    if x >= 100_000.0 {
        format!("{:.0}k", x / 1000.0)
    } else if x >= 10_000.0 {
        format!("{:.1}k", x / 1000.0)
    } else {
        format!("{x:.0}")
    }
}

fn fmt_us(x: f64) -> String {
    if x >= 10_000.0 {
        format!("{:.1} ms", x / 1000.0)
    } else if x >= 100.0 {
        format!("{x:.0} µs")
    } else {
        format!("{x:.1} µs")
    }
}

/// Per-round ratios of `side`'s calls/s to `base`'s: the sides of one round run one after
/// the other, so a round's ratio cancels the machine's slower drift; `None` without both.
fn round_ratios(
    r: &Results,
    (p, c, ph): (&str, usize, &'static str),
    side: &'static str,
    base: &'static str,
) -> Option<Vec<f64>> {
    let a = r.stats.get(&(p.to_owned(), c, ph, side))?;
    let b = r.stats.get(&(p.to_owned(), c, ph, base))?;
    Some(
        a.iter()
            .zip(b)
            .map(|(a, b)| a.per_second() / b.per_second())
            .collect(),
    )
}

/// A ratio as the table shows it: the median of the rounds' ratios, bold, and their range.
fn fmt_ratio(ratios: &[f64]) -> String {
    let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("**{:.2}×** ({lo:.2}–{hi:.2})", median(ratios.to_vec()))
}

/// The calls/s table of `paths` at `concurrency`, rows path × c × phase, and the rows below
/// 0.97× of the hand-written side doing the framework's work too (`hand-work`), each with
/// whether its rounds' range reaches 0.97× (noise) or not.
fn table(
    r: &Results,
    paths: &[String],
    concurrency: &[usize],
    label: &str,
) -> (String, Vec<String>) {
    let mut out = format!(
        "| {label} | c | phase | annotated calls/s | hand-written calls/s | annotated ÷ hand (rounds' range) | hand + framework's work calls/s | framework's work per call | annotated ÷ (hand + work) (rounds' range) | p99 annotated | p99 hand |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    let mut below = Vec::new();
    for p in paths {
        for &c in concurrency {
            for ph in PHASES {
                let (Some((ra, pa)), Some((rh, phh)), Some(vs_hand)) = (
                    summary(r, (p.clone(), c, ph, "annotated")),
                    summary(r, (p.clone(), c, ph, "hand")),
                    round_ratios(r, (p, c, ph), "annotated", "hand"),
                ) else {
                    continue;
                };
                let work = summary(r, (p.clone(), c, ph, "hand-work")).zip(round_ratios(
                    r,
                    (p, c, ph),
                    "annotated",
                    "hand-work",
                ));
                // Wall time per call the framework's own work adds to the hand-written side
                // (1 / rate: at c > 1 the calls overlap, so this is the run's cost per call).
                let (rw_text, work_cost, vs_work_text) = match &work {
                    Some(((rw, _), vs_work)) => {
                        let cost = 1e6 / rw - 1e6 / rh;
                        (
                            fmt_rate(*rw),
                            if cost > 0.0 {
                                fmt_us(cost)
                            } else {
                                "—".to_string()
                            },
                            fmt_ratio(vs_work),
                        )
                    }
                    None => ("—".into(), "—".into(), "—".into()),
                };
                if let Some(((rw, _), vs_work)) = &work {
                    let (m_hand, m_work) = (median(vs_hand.clone()), median(vs_work.clone()));
                    if m_hand < 0.97 && m_work < 0.97 {
                        let best = vs_work.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        let why = if best >= 0.97 {
                            format!("noise: its rounds reached {best:.2}×")
                        } else {
                            format!(
                                "every round below: {} per call beyond hand + work",
                                fmt_us(1e6 / ra - 1e6 / rw)
                            )
                        };
                        below.push(format!(
                            "{p}, c = {c}, {ph}: {m_work:.2}× of hand + work ({why})"
                        ));
                    }
                }
                let _ = writeln!(
                    out,
                    "| {p} | {c} | {ph} | {} | {} | {} | {rw_text} | {work_cost} | {vs_work_text} | {} | {} |",
                    fmt_rate(ra),
                    fmt_rate(rh),
                    fmt_ratio(&vs_hand),
                    fmt_us(pa),
                    fmt_us(phh)
                );
            }
        }
    }
    (out, below)
}

/// The 1-minute load average, sampled every second while the benchmark runs.
struct LoadSampler {
    samples: Arc<Mutex<Vec<f64>>>,
    stop: Arc<AtomicBool>,
    /// Other processes' CPU ticks at the start (see [`cpu_ticks`]).
    cpu_before: Option<u64>,
}

/// The process names whose CPU is the benchmark's own: this binary, the `memcpu` runs under
/// valgrind, and the servers it drives.
const OWN_PROCESSES: [&str; 7] = [
    "bench",
    "memcpu",
    "valgrind",
    "postgres",
    "mariadbd",
    "mysqld",
    "redis-server",
];

/// The CPU ticks used so far by the processes not named in [`OWN_PROCESSES`], their exited
/// children included (`utime + stime + cutime + cstime` of every `/proc/<pid>/stat`). Linux
/// only. A child that exits during the run counts in its parent's total with its whole
/// lifetime, so this errs towards "busy".
fn cpu_ticks() -> Option<u64> {
    let mut others = 0;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (text.find('('), text.rfind(')')) else {
            continue;
        };
        if OWN_PROCESSES.contains(&&text[open + 1..close]) {
            continue;
        }
        // After the name: state is field 3; utime, stime, cutime, cstime are fields 14–17.
        let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
        others += rest
            .get(11..15)
            .into_iter()
            .flatten()
            .filter_map(|v| v.parse::<u64>().ok())
            .sum::<u64>();
    }
    Some(others)
}

fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl LoadSampler {
    fn start() -> LoadSampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                if let Some(l) = loadavg() {
                    s.lock().unwrap().push(l);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        LoadSampler {
            samples,
            stop,
            cpu_before: cpu_ticks(),
        }
    }

    /// The share of the machine's CPU (all cores) that other processes than the benchmark and
    /// its servers used since the start, 0.0–1.0; `None` where `/proc` cannot tell.
    fn others_share(&self, elapsed: Duration, cores: usize) -> Option<f64> {
        let before = self.cpu_before?;
        let after = cpu_ticks()?;
        // USER_HZ is 100 on every Linux architecture the benchmark runs on.
        let capacity = elapsed.as_secs_f64() * 100.0 * cores as f64;
        let others = after.saturating_sub(before) as f64;
        Some((others.max(0.0) / capacity).min(1.0))
    }

    /// (min, mean, max)
    fn finish(&self) -> (f64, f64, f64) {
        self.stop.store(true, Ordering::Relaxed);
        let s = self.samples.lock().unwrap();
        let min = s.iter().copied().fold(f64::INFINITY, f64::min);
        let max = s.iter().copied().fold(0.0, f64::max);
        let mean = s.iter().sum::<f64>() / s.len().max(1) as f64;
        (min, mean, max)
    }
}

fn sh(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// The locked version of each of `names` that the workspace's `[workspace.dependencies]`
/// requirement selects (Cargo.lock can hold several: sqlx 0.8 for tests/other-deps).
fn locked_versions(names: &[&str]) -> Vec<(String, String)> {
    let root = workspace_root();
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap_or_default();
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap_or_default();
    let wanted = |name: &str| -> String {
        manifest
            .lines()
            .find_map(|l| {
                let rest = l.strip_prefix(name)?.trim_start().strip_prefix('=')?.trim();
                let rest = rest.strip_prefix("{ version =").unwrap_or(rest).trim();
                Some(rest.trim_start_matches('"').split('"').next()?.to_owned())
            })
            .unwrap_or_default()
    };
    let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut name = None;
    for line in lock.lines() {
        if let Some(n) = line.strip_prefix("name = ") {
            name = Some(n.trim_matches('"').to_owned());
        } else if let (Some(v), Some(n)) = (line.strip_prefix("version = "), name.take())
            && names.contains(&n.as_str())
        {
            found
                .entry(n)
                .or_default()
                .push(v.trim_matches('"').to_owned());
        }
    }
    names
        .iter()
        .map(|n| {
            let want = wanted(n);
            let all = found.get(*n).cloned().unwrap_or_default();
            let v = all
                .iter()
                .find(|v| {
                    !want.is_empty() && (v.as_str() == want || v.starts_with(&format!("{want}.")))
                })
                .or(all.first())
                .cloned()
                .unwrap_or_else(|| "?".into());
            (n.to_string(), v)
        })
        .collect()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "?".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let kb: f64 = m.lines().next()?.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!("{:.0} GiB", kb / 1024.0 / 1024.0))
        })
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem} memory, Linux {kernel}")
}

/// Instructions per call of the memory path: `memcpu` under callgrind with `n1` and `n2` calls,
/// (Ir(n2) − Ir(n1)) ÷ (n2 − n1).
fn callgrind(
    n1: usize,
    n2: usize,
) -> Result<Vec<(&'static str, &'static str, &'static str, f64)>, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let memcpu = exe.with_file_name("memcpu");
    if !memcpu.exists() {
        return Err(format!(
            "{} is missing: run scripts/bench.sh",
            memcpu.display()
        ));
    }
    if sh("valgrind", &["--version"]).is_none() {
        return Err("valgrind is not installed (apt-get install -y valgrind)".into());
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let ir = |side: &str, ph: &str, n: usize, extra: &[&str]| -> Result<f64, String> {
        let out = dir
            .path()
            .join(format!("cg.{side}.{ph}.{n}.{}", extra.join(".")));
        let status = Command::new("valgrind")
            .arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out.display()))
            .arg(&memcpu)
            .args([side, ph, &n.to_string()])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("memcpu {side} {ph} {n} failed under callgrind"));
        }
        let text = std::fs::read_to_string(&out).map_err(|e| e.to_string())?;
        text.lines()
            .find_map(|l| {
                l.strip_prefix("summary: ")
                    .or_else(|| l.strip_prefix("totals: "))
            })
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| "no totals in the callgrind output".to_string())
    };
    let mut out = Vec::new();
    for strategy in CPU_STRATEGIES {
        for ph in PHASES {
            let sides: &[&'static str] = if strategy == "dedup" {
                &[SIDES.as_slice(), PARTS.as_slice()].concat()
            } else {
                &SIDES
            };
            for &side in sides {
                let extra = [strategy];
                let mut per_call =
                    (ir(side, ph, n2, &extra)? - ir(side, ph, n1, &extra)?) / (n2 - n1) as f64;
                if strategy == "token" && ph == "fresh" {
                    // The tokens are issued before the calls: their issuance is not the call's.
                    let issue = [strategy, "issue-only"];
                    per_call -=
                        (ir(side, ph, n2, &issue)? - ir(side, ph, n1, &issue)?) / (n2 - n1) as f64;
                }
                eprintln!(
                    "  callgrind memory {strategy} {side} {ph}: {per_call:.0} instructions/call"
                );
                out.push((strategy, side, ph, per_call));
            }
        }
    }
    Ok(out)
}

async fn pg_pool(url: &str, schema: &str, max: u32) -> PgPool {
    let base: sqlx::postgres::PgConnectOptions = url.parse().expect("PostgreSQL URL");
    let admin = PgPool::connect_with(base.clone())
        .await
        .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL at {url}: {e}"));
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}"
        )))
        .await
        .expect("create schema");
    admin.close().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(60))
        .connect_with(base.options([("search_path", schema)]))
        .await
        .expect("PostgreSQL pool");
    idempotent_runtime::migrate(&pool)
        .await
        .expect("migrate PostgreSQL");
    pool
}

async fn mysql_pool(url: &str) -> MySqlPool {
    let base: sqlx::mysql::MySqlConnectOptions = url.parse().expect("MySQL URL");
    let admin = MySqlPool::connect_with(base.clone())
        .await
        .unwrap_or_else(|e| panic!("cannot connect to MySQL/MariaDB at {url}: {e}"));
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE IF NOT EXISTS {SCHEMA}"
        )))
        .await
        .expect("create database");
    admin.close().await;
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(POOL)
        .acquire_timeout(Duration::from_secs(60))
        .connect_with(base.database(SCHEMA))
        .await
        .expect("MySQL pool");
    idempotent_runtime::migrate(&pool)
        .await
        .expect("migrate MySQL");
    pool
}

async fn sqlite_pool(dir: &Path, connections: u32) -> SqlitePool {
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.join("bench.db"))
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(30));
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(connections)
        .connect_with(opts)
        .await
        .expect("SQLite pool");
    idempotent_runtime::migrate(&pool)
        .await
        .expect("migrate SQLite");
    pool
}

/// The record table of `schema` holding exactly `rows` completed records of its own
/// (`operation = 'bench.prefill'`), filled by one `INSERT … SELECT generate_series`.
async fn prefill(pool: &PgPool, rows: i64) {
    let have: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM idempotency_records WHERE operation = 'bench.prefill'",
    )
    .fetch_one(pool)
    .await
    .expect("count");
    pool.execute("DELETE FROM idempotency_records WHERE operation <> 'bench.prefill'")
        .await
        .expect("delete");
    if have != rows {
        let t = Instant::now();
        pool.execute("TRUNCATE idempotency_records")
            .await
            .expect("truncate");
        sqlx::query(
            "INSERT INTO idempotency_records (idempotency_key, operation, fingerprint, status, owner, response, expires_at_ms, created_at_ms) \
             SELECT encode(sha256(int8send(i)), 'hex'), 'bench.prefill', NULL, 'completed', lpad(to_hex(i), 32, '0'), '{\"prefill\":true}'::bytea, \
             (extract(epoch from clock_timestamp()) * 1000)::bigint + 864000000, (extract(epoch from clock_timestamp()) * 1000)::bigint \
             FROM generate_series(1, $1) AS i",
        )
        .bind(rows)
        .execute(pool)
        .await
        .expect("prefill");
        eprintln!(
            "  prefilled {rows} rows in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    pool.execute("VACUUM ANALYZE idempotency_records")
        .await
        .expect("vacuum");
}

const GROWTH_BEGIN: &str = "<!-- growth:begin -->";
const GROWTH_END: &str = "<!-- growth:end -->";

#[tokio::main]
async fn main() {
    let a = args();
    let load = LoadSampler::start();
    let started = Instant::now();
    let date = sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default();
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    );
    let keep = |name: &str| a.only.as_deref().is_none_or(|o| name.contains(o));

    // ------------------------------------------------------------------ stores
    let server = match &a.redis_url {
        Some(_) => None,
        None => RedisServer::start(),
    };
    let redis_url = a
        .redis_url
        .clone()
        .or_else(|| server.as_ref().map(|s| s.url.clone()))
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let manager =
        ConnectionManager::new(redis::Client::open(redis_url.as_str()).expect("Redis URL"))
            .await
            .unwrap_or_else(|e| panic!("cannot connect to Redis at {redis_url}: {e}"));
    let redis_store = RedisStore::from_manager(manager.clone())
        .await
        .expect("RedisStore");
    let redis_hand = hand::redis::Redis {
        conn: manager.clone(),
    };
    let mut stats_conn = Some(manager.clone());
    let pg = pg_pool(&a.postgres_url, SCHEMA, POOL).await;
    let mysql = mysql_pool(&a.mysql_url).await;
    let sqlite_dir = tempfile::tempdir().expect("temp dir");
    let sqlite = sqlite_pool(sqlite_dir.path(), a.sqlite_pool).await;
    pg.execute("TRUNCATE idempotency_records")
        .await
        .expect("truncate");
    mysql
        .execute("TRUNCATE TABLE idempotency_records")
        .await
        .expect("truncate");

    let mut versions = vec![("".to_string(), sh("rustc", &["-V"]).unwrap_or_default())];
    versions.extend(locked_versions(&[
        "sqlx",
        "redis",
        "tokio",
        "moka",
        "serde_json",
        "sha2",
    ]));
    let pg_version: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(&pg)
        .await
        .unwrap();
    let my_version: String = sqlx::query_scalar("SELECT VERSION()")
        .fetch_one(&mysql)
        .await
        .unwrap();
    let sqlite_version: String = sqlx::query_scalar("SELECT sqlite_version()")
        .fetch_one(&sqlite)
        .await
        .unwrap();
    let redis_info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut manager.clone())
        .await
        .unwrap();
    let redis_version = redis_info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("?")
        .trim()
        .to_owned();
    versions.push((
        "".into(),
        pg_version
            .split(" on ")
            .next()
            .unwrap_or_default()
            .to_owned(),
    ));
    versions.push(("MariaDB/MySQL".into(), my_version));
    versions.push(("SQLite (bundled)".into(), sqlite_version));
    versions.push((
        "Redis".into(),
        format!(
            "{redis_version} ({})",
            if server.is_some() {
                "a throwaway redis-server started by the benchmark, so INFO commandstats counts its commands only"
            } else {
                "the server at --redis-url"
            }
        ),
    ));

    // ------------------------------------------------------------------ paths
    // Every memory path's records, locks and tokens stay for their 24 h TTL: room for all the
    // keys of every round at every concurrency (the default 1,000,000 fills at 5+ long rounds).
    let memory_keys = (a.calls * calls_scale("memory") * a.rounds * a.concurrency.len() * 2)
        .max(1_000_000) as u64;
    let mem = MemoryStore::with_capacity(memory_keys);
    let mut paths: Vec<PathDef> = Vec::new();
    // `obj.method(&r)` for each request, on a clone of the shared `obj`.
    macro_rules! method {
        ($obj:ident, $method:ident) => {
            call(move |r| {
                let $obj = $obj.clone();
                async move { $obj.$method(&r).await }
            })
        };
    }
    macro_rules! path {
        ($name:expr, redis = $redis:expr, annotated = ($a:expr, $ap:expr), hand = ($h:expr, $hp:expr)) => {
            paths.push(PathDef {
                name: $name.to_string(),
                annotated: ($a, $ap),
                hand: ($h, $hp),
                redis: $redis,
            })
        };
    }
    {
        let (s, h) = (
            Arc::new(Claim { store: mem.clone() }),
            Arc::new(hand::memory::Claim::default()),
        );
        path!(
            "dedup_table claim · memory",
            redis = false,
            annotated = (method!(s, place), plain()),
            hand = (method!(h, place), plain())
        );
    }
    {
        let response =
            serde_json::to_vec(&idempotent_benches::receipt(&plain_requests("x", 1)[0], 0))
                .unwrap_or_default();
        let (s, h) = (
            Arc::new(store_alone::Store {
                store: MemoryStore::with_capacity(memory_keys),
                response: response.clone(),
            }),
            Arc::new(store_alone::Hand::new(response)),
        );
        path!(
            "memory store alone (claim, complete) vs sharded map",
            redis = false,
            annotated = (method!(s, place), plain()),
            hand = (method!(h, place), plain())
        );
    }
    {
        let (s, h) = (
            Arc::new(Claim {
                store: redis_store.clone(),
            }),
            redis_hand.clone(),
        );
        path!(
            "dedup_table claim · Redis",
            redis = true,
            annotated = (method!(s, place), plain()),
            hand = (method!(h, place), plain())
        );
    }
    {
        let (s, h) = (
            Arc::new(Claim { store: pg.clone() }),
            Arc::new(hand::sql::postgres_one_statement::Claim { pool: pg.clone() }),
        );
        path!(
            "dedup_table claim · PostgreSQL",
            redis = false,
            annotated = (method!(s, place), plain()),
            hand = (method!(h, place), plain())
        );
    }
    {
        let (s, h) = (
            Arc::new(Claim {
                store: mysql.clone(),
            }),
            Arc::new(hand::sql::mysql::Claim {
                pool: mysql.clone(),
            }),
        );
        path!(
            "dedup_table claim · MariaDB",
            redis = false,
            annotated = (method!(s, place), plain()),
            hand = (method!(h, place), plain())
        );
    }
    {
        let (s, h) = (
            Arc::new(Claim {
                store: sqlite.clone(),
            }),
            Arc::new(hand::sql::sqlite::Claim {
                pool: sqlite.clone(),
            }),
        );
        path!(
            "dedup_table claim · SQLite",
            redis = false,
            annotated = (method!(s, place), plain()),
            hand = (method!(h, place), plain())
        );
    }
    {
        let (s, h) = (
            Arc::new(PgTx { db: pg.clone() }),
            Arc::new(hand::sql::postgres::Tx { pool: pg.clone() }),
        );
        path!(
            "dedup_table #[tx] · PostgreSQL",
            redis = false,
            annotated = (method!(s, place), plain()),
            hand = (method!(h, place), plain())
        );
    }
    {
        let (s, h) = (
            Arc::new(MySqlTx { db: mysql.clone() }),
            Arc::new(hand::sql::mysql::Tx {
                pool: mysql.clone(),
            }),
        );
        path!(
            "dedup_table #[tx] · MariaDB",
            redis = false,
            annotated = (method!(s, place), plain()),
            hand = (method!(h, place), plain())
        );
    }
    {
        let (s, h) = (
            Arc::new(SqliteTx { db: sqlite.clone() }),
            Arc::new(hand::sql::sqlite::Tx {
                pool: sqlite.clone(),
            }),
        );
        path!(
            "dedup_table #[tx] · SQLite",
            redis = false,
            annotated = (method!(s, place), plain()),
            hand = (method!(h, place), plain())
        );
    }
    {
        let (s, h) = (
            Arc::new(Lock { store: mem.clone() }),
            Arc::new(hand::memory::Lock::default()),
        );
        path!(
            "distributed_lock · memory",
            redis = false,
            annotated = (method!(s, settle), plain()),
            hand = (method!(h, settle), plain())
        );
    }
    {
        let (s, h) = (
            Arc::new(Lock {
                store: redis_store.clone(),
            }),
            redis_hand.clone(),
        );
        path!(
            "distributed_lock · Redis",
            redis = true,
            annotated = (method!(s, settle), plain()),
            hand = (method!(h, settle), plain())
        );
    }
    {
        let (s, h) = (
            Arc::new(Token { store: mem.clone() }),
            Arc::new(hand::memory::Token::default()),
        );
        let (m2, h2) = (mem.clone(), h.clone());
        path!(
            "token · memory",
            redis = false,
            annotated = (
                method!(s, checkout),
                tokens(move || {
                    let m = m2.clone();
                    async move { Ok(idempotent_runtime::issue_token(&m, TOKEN_TTL).await?) }
                })
            ),
            hand = (
                method!(h, checkout),
                tokens(move || {
                    let h = h2.clone();
                    async move { Ok(h.issue(TOKEN_TTL)) }
                })
            )
        );
    }
    {
        let (s, h) = (
            Arc::new(Token {
                store: redis_store.clone(),
            }),
            redis_hand.clone(),
        );
        let (r2, h2) = (redis_store.clone(), redis_hand.clone());
        path!(
            "token · Redis",
            redis = true,
            annotated = (
                method!(s, checkout),
                tokens(move || {
                    let r = r2.clone();
                    async move { Ok(idempotent_runtime::issue_token(&r, TOKEN_TTL).await?) }
                })
            ),
            hand = (
                method!(h, checkout),
                tokens(move || {
                    let h = h2.clone();
                    async move { h.issue(TOKEN_TTL).await }
                })
            )
        );
    }
    paths.retain(|p| keep(&p.name));

    // ------------------------------------------------------------------ run
    let mut results = Results::default();
    let concurrency = a.concurrency.clone();
    for p in &paths {
        eprintln!("{}", p.name);
        run_path(
            p,
            &concurrency,
            &a,
            &run_id,
            &mut stats_conn,
            &mut results,
            None,
        )
        .await;
    }

    let callgrind = if a.callgrind && keep("memory") {
        eprintln!("callgrind (memory dedup_table, distributed_lock, token)");
        // Instruction counts repeat within a few percent, so more calls add little but time (valgrind runs
        // ~50x slower): a fixed 2,000 and 12,000 calls, whatever `--calls` says.
        let n = 2_000;
        Some(callgrind(n, n * 6))
    } else {
        None
    };

    let mut growth = None;
    if a.growth {
        let mut gr = Results::default();
        let mut names = Vec::new();
        for (rows, label) in [(1_000i64, "10^3"), (100_000, "10^5"), (1_000_000, "10^6")] {
            let schema = format!("{SCHEMA}_rows{}", rows.ilog10());
            let pool = pg_pool(&a.postgres_url, &schema, POOL).await;
            prefill(&pool, rows).await;
            let name = format!("PostgreSQL claim, {label} rows");
            let (s, h) = (
                Arc::new(Claim {
                    store: pool.clone(),
                }),
                Arc::new(hand::sql::postgres_one_statement::Claim { pool: pool.clone() }),
            );
            let p = PathDef {
                name: name.clone(),
                annotated: (method!(s, place), plain()),
                hand: (method!(h, place), plain()),
                redis: false,
            };
            eprintln!("{name}");
            let cleanup_pool = pool.clone();
            let cleanup = move || {
                let pool = cleanup_pool.clone();
                async move {
                    pool.execute(
                        "DELETE FROM idempotency_records WHERE operation <> 'bench.prefill'",
                    )
                    .await
                    .expect("delete");
                }
                .boxed()
            };
            run_path(
                &p,
                &[1, 8, 32, 128],
                &a,
                &run_id,
                &mut None,
                &mut gr,
                Some(&cleanup),
            )
            .await;
            names.push(name);
        }
        growth = Some((gr, names));
    }
    drop(server);

    // ------------------------------------------------------------------ report
    eprintln!("framework CPU per call (key, fingerprint, round trip)");
    let parts = idempotent_benches::parts::timed(20_000).map_err(|e| e.to_string());
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let others = load.others_share(started.elapsed(), cores);
    let (lmin, lmean, lmax) = load.finish();
    let elapsed = started.elapsed().as_secs_f64();
    let names: Vec<String> = paths.iter().map(|p| p.name.clone()).collect();
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let user_args = a.raw.replace("--write BENCHMARKS.md", "");
    let user_args = user_args.trim();
    let shown = if user_args.is_empty() {
        String::new()
    } else {
        format!(" {user_args}")
    };
    let _ = writeln!(
        md,
        "Generated by `scripts/bench.sh{shown}` (it runs `cargo build --release -p idempotent-benches --bins`, then `target/release/bench --write BENCHMARKS.md{shown}`) on {date}, at commit `{}`, in {:.0} s. \
         Do not edit by hand: run the command again. Method and caveats: [below](#method).\n",
        sh(
            "git",
            &[
                "-C",
                workspace_root().to_str().unwrap_or("."),
                "rev-parse",
                "--short",
                "HEAD"
            ]
        )
        .unwrap_or_default(),
        elapsed
    );
    let _ = writeln!(md, "- Machine: {}.", machine());
    let _ = writeln!(
        md,
        "- Load average (1 min) during the run: min {lmin:.2}, mean {lmean:.2}, max {lmax:.2}, the benchmark's own client tasks and the PostgreSQL, MariaDB and Redis servers it drives included (at c = 32 they alone keep it above the number of cores). {}",
        match others {
            Some(share) if share > 0.05 => format!(
                "Other processes used {:.0}% of the machine's CPU meanwhile (`/proc/<pid>/stat` of every process but the benchmark and its servers): the machine was busy, so absolute figures are low and noisy; the ratios compare sides measured in the same rounds, alternating which goes first.",
                share * 100.0
            ),
            Some(share) => format!(
                "Other processes used {:.1}% of the machine's CPU meanwhile (`/proc/<pid>/stat` of every process but the benchmark and its servers): a quiet machine.",
                share * 100.0
            ),
            None => "Other processes' CPU could not be read (`/proc`).".to_owned(),
        }
    );
    let _ = writeln!(
        md,
        "- {} calls per phase ({} on the memory-store paths, whose calls take microseconds), median of {} rounds; the servers run on the same machine (loopback).",
        a.calls,
        a.calls * calls_scale("memory"),
        a.rounds
    );
    let _ = writeln!(
        md,
        "- Versions: {}.\n",
        versions
            .iter()
            .map(|(n, v)| if n.is_empty() {
                v.clone()
            } else {
                format!("{n} {v}")
            })
            .collect::<Vec<_>>()
            .join("; ")
    );

    let _ = writeln!(md, "## Annotated vs hand-written\n");
    match &parts {
        Ok([key, fp, rt]) => {
            let _ = writeln!(
                md,
                "**Where a gap comes from.** Every path makes the same store round trips, statements and scripts on both sides (Redis: counted below). What the framework adds is CPU in the caller, measured natively in this run (median of 5 × 20,000 calls, `benches/src/parts.rs`): the storage key (SHA-256 of operation, scope and key parts) {}, the request's fingerprint (canonical form, SHA-256, hex) {}, the response's JSON read back and compared (fresh calls only) {} — **{} a fresh call, {} a replay** — plus the owner token, the completion and the macro's glue (see the callgrind split below). Each path therefore runs a third side in the same rounds, *hand + framework's work*: the hand-written function doing that work too (storage key by SHA-256, canonical fingerprint, an owner token with a random per-process prefix as the runtime's, response read back and compared; `hand::set_framework_work`). *Framework's work per call* is 1/(hand + work) rate − 1/hand rate, the measured cost of that work on this path (at c = 1 added latency; at c = 32 the added cost per call of the whole run, calls overlapping on 2 cores); on a loaded machine it carries the run's noise too, and a — is where the side doing more work was faster. *Annotated ÷ (hand + work)* is what is left to the framework's own code: the protocol's steps, the completion, the macro's glue. Rows where both ratios are below 0.97× are listed under the table.\n",
                fmt_us(*key),
                fmt_us(*fp),
                fmt_us(*rt),
                fmt_us(key + fp + rt),
                fmt_us(key + fp),
            );
        }
        Err(e) => {
            let _ = writeln!(
                md,
                "The framework's own CPU per call could not be measured: {e}.\n"
            );
        }
    }
    let _ = writeln!(
        md,
        "Calls per second (higher is better) and p99 latency of each `#[idempotent]` path and of a hand-written function running the same protocol on the same store handle. \
         *fresh*: a new key per call (claim, body, completion); *replay*: the same keys again (the stored response is returned). \
         A ratio below 1 is the framework's overhead. \
         The *memory store alone* row's hand + work side runs exactly the hand-written code (the store's steps involve none of the framework's work), so the gap between its two hand-written columns is this run's noise, measured.\n"
    );
    let (main_table, below) = table(&results, &names, &concurrency, "path");
    md.push_str(&main_table);
    if below.is_empty() {
        let _ = writeln!(
            md,
            "\nEvery row is at 0.97× or more of its hand-written baseline, or of the hand-written baseline doing the framework's necessary work (the key, fingerprint, owner token and read-back above)."
        );
    } else {
        let _ = writeln!(
            md,
            "\nRows whose median ratio is below 0.97× of both the hand-written baseline and the hand-written baseline doing the framework's work. *Noise*: at least one round reached 0.97× of hand + work, so the gap is within this run's round-to-round spread. *Every round below*: no round reached 0.97×; the time per call beyond hand + work is the framework's own code, or noise that lasted the whole row — the *memory store alone* row, whose hand + work side runs the hand-written code itself, shows how large that can be in this run. For the memory paths the callgrind section below counts the framework's own code in instructions, without noise.\n"
        );
        for b in &below {
            let _ = writeln!(md, "- {b}");
        }
    }

    if !results.redis.is_empty() {
        let _ = writeln!(md, "\n## Redis commands per call\n");
        let _ = writeln!(
            md,
            "From `INFO commandstats` deltas around each phase (all rounds, c = 1 and 32): *sent* = scripts sent (`EVALSHA`, and `EVAL` after a `NOSCRIPT`), *inside* = commands those scripts executed. \
             Token issuing happens before the timed phase and is not counted.\n"
        );
        md.push_str("| path | phase | annotated sent | annotated inside | hand sent | hand inside |\n|---|---|---:|---:|---:|---:|\n");
        for p in &names {
            for ph in PHASES {
                let (Some(an), Some(h)) = (
                    results.redis.get(&(p.clone(), ph, "annotated")),
                    results.redis.get(&(p.clone(), ph, "hand")),
                ) else {
                    continue;
                };
                let per = |x: u64, n: u64| x as f64 / n.max(1) as f64;
                let _ = writeln!(
                    md,
                    "| {p} | {ph} | {:.2} | {:.2} | {:.2} | {:.2} |",
                    per(an.0, an.2),
                    per(an.1, an.2),
                    per(h.0, h.2),
                    per(h.1, h.2)
                );
            }
        }
    }

    let _ = writeln!(md, "\n## CPU per call of the memory path (callgrind)\n");
    match &callgrind {
        Some(Ok(rows)) => {
            let _ = writeln!(
                md,
                "Instructions per call (`valgrind --tool=callgrind`, repeatable whatever the load): `memcpu` runs N and 6N calls of each memory-store path's annotated function, of the hand-written one and of the hand-written one doing the framework's work, on a current-thread runtime; per call = difference in instructions ÷ 5N (start-up cancels out). Replay = 1,000 completed keys read again. A fresh `token` call's token is issued before it and its issuance subtracted (`memcpu … token issue-only`). Here a ratio above 1 is the framework's overhead (more instructions). These counts are one call at a time on one thread: they do not weigh cache misses, lock contention or atomics, which the c = 32 wall-clock rows above include. Where a path is at or below 1.00× of hand + work here, its own code executes no more instructions than the hand-written code doing the same work; a wall-clock gap left on that path is time, not work.\n"
            );
            md.push_str("| path | phase | annotated instructions/call | hand-written instructions/call | annotated ÷ hand | hand + framework's work instructions/call | annotated ÷ (hand + work) |\n|---|---|---:|---:|---:|---:|---:|\n");
            for (strategy, path) in CPU_STRATEGIES.into_iter().zip([
                "dedup_table claim · memory",
                "distributed_lock · memory",
                "token · memory",
            ]) {
                for ph in PHASES {
                    let get = |side| {
                        rows.iter()
                            .find(|r| r.0 == strategy && r.1 == side && r.2 == ph)
                            .map_or(f64::NAN, |r| r.3)
                    };
                    let (an, h, hw) = (get("annotated"), get("hand"), get("hand-work"));
                    let _ = writeln!(
                        md,
                        "| {path} | {ph} | {an:.0} | {h:.0} | {:.1}× | {hw:.0} | {:.2}× |",
                        an / h,
                        an / hw
                    );
                }
            }
            let _ = writeln!(
                md,
                "\nWhere the annotated `dedup_table` call's instructions go, measured part by part (`memcpu` sides `store`, `hand-store`, `key`, `fingerprint`, `roundtrip` less `response`, each alone, the same way). The store's steps alone — claim or read, then complete, on keys built beforehand — against the hand-written sharded map's steps: the memory store itself is not the overhead. The rest is work the framework must do and the hand-written side skips: the storage key (SHA-256 of operation, scope and key parts; the hand-written side keys by the plain text), the request's fingerprint (canonical serialization + SHA-256 + hex; the hand-written side uses the amount), and the response's JSON read back and compared with `==` (the hand-written side only serializes). Under valgrind SHA-256 runs in software (valgrind does not emulate the SHA extensions); natively the CPU's SHA instructions make the key and the fingerprint cheaper than shown.\n"
            );
            md.push_str(
                "| part | fresh instructions/call | replay instructions/call |\n|---|---:|---:|\n",
            );
            let get = |side: &str, ph: &str| {
                rows.iter()
                    .find(|r| r.0 == "dedup" && r.1 == side && r.2 == ph)
                    .map_or(f64::NAN, |r| r.3)
            };
            let store = |side: &str, ph: &str| get(side, ph) - get("store-setup", ph);
            let get = |side: &str, ph: &str| match side {
                "key" | "fingerprint" => get(side, ph) - get("requests", ph),
                // The read-back alone: building and serializing the response the
                // hand-written call does too.
                "roundtrip" => get(side, ph) - get("response", ph),
                _ => get(side, ph),
            };
            let rows_out: [(&str, f64, f64); 8] = [
                (
                    "annotated call, whole",
                    get("annotated", "fresh"),
                    get("annotated", "replay"),
                ),
                (
                    "hand-written call, whole",
                    get("hand", "fresh"),
                    get("hand", "replay"),
                ),
                (
                    "memory store's steps alone",
                    store("store", "fresh"),
                    store("store", "replay"),
                ),
                (
                    "hand-written sharded map's steps alone",
                    store("hand-store", "fresh"),
                    store("hand-store", "replay"),
                ),
                (
                    "storage key (SHA-256)",
                    get("key", "fresh"),
                    get("key", "fresh"),
                ),
                (
                    "fingerprint (canonical form, SHA-256, hex)",
                    get("fingerprint", "fresh"),
                    get("fingerprint", "fresh"),
                ),
                (
                    "response's JSON read back and compared (fresh only)",
                    get("roundtrip", "fresh"),
                    0.0,
                ),
                (
                    "rest: the annotated call's own code (owner token, options, completion, tracing, the macro's glue) less what the hand-written call does in place of the parts above (its text key, `format!` owner and amount fingerprint)",
                    get("annotated", "fresh")
                        - get("hand", "fresh")
                        - get("key", "fresh")
                        - get("fingerprint", "fresh")
                        - get("roundtrip", "fresh")
                        - (store("store", "fresh") - store("hand-store", "fresh")),
                    get("annotated", "replay")
                        - get("hand", "replay")
                        - get("key", "fresh")
                        - get("fingerprint", "fresh")
                        - (store("store", "replay") - store("hand-store", "replay")),
                ),
            ];
            for (name, fresh, replay) in rows_out {
                let _ = writeln!(md, "| {name} | {fresh:.0} | {replay:.0} |");
            }
        }
        Some(Err(e)) => {
            let _ = writeln!(md, "Not measured in this run: {e}.");
        }
        None => {
            let _ = writeln!(
                md,
                "Not measured in this run (`--no-callgrind` or `--only`)."
            );
        }
    }

    let _ = writeln!(
        md,
        "\n## Growth: PostgreSQL record table size and concurrency\n"
    );
    let previous = a
        .write
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|old| {
            let start = old.find(GROWTH_BEGIN)?;
            let end = old.find(GROWTH_END)?;
            Some(old[start..end + GROWTH_END.len()].to_owned())
        });
    match (&growth, previous) {
        (Some((gr, gnames)), _) => {
            let _ = writeln!(md, "{GROWTH_BEGIN}");
            let _ = writeln!(
                md,
                "Last run: {date} (`--growth`, {} calls per phase, median of {} rounds, load average mean {lmean:.2}). `dedup_table` claim mode on PostgreSQL with the record table (a schema of its own, `{SCHEMA}_rows3|5|6`) pre-filled with 10^3, 10^5 or 10^6 completed records by one `INSERT … SELECT generate_series`; the rows a round adds are deleted after it. Pool of {POOL} connections, so at c = 128 calls also wait for a connection.\n",
                a.calls, a.rounds
            );
            let (growth_table, growth_below) = table(gr, gnames, &[1, 8, 32, 128], "table");
            md.push_str(&growth_table);
            if growth_below.is_empty() {
                let _ = writeln!(
                    md,
                    "\nEvery row is at 0.97× or more of one of its baselines."
                );
            } else {
                let _ = writeln!(
                    md,
                    "\nRows below 0.97× of both baselines, read as under the first table:\n"
                );
                for b in &growth_below {
                    let _ = writeln!(md, "- {b}");
                }
            }
            let _ = writeln!(md, "{GROWTH_END}");
        }
        (None, Some(prev)) => {
            md.push_str(&prev);
            md.push('\n');
        }
        (None, None) => {
            let _ = writeln!(
                md,
                "{GROWTH_BEGIN}\nNot run yet: `scripts/bench.sh --growth`.\n{GROWTH_END}"
            );
        }
    }

    md.push_str(METHOD);
    match &a.write {
        Some(path) => {
            std::fs::write(path, &md).expect("write the report");
            eprintln!("wrote {} ({elapsed:.0} s)", path.display());
        }
        None => println!("{md}"),
    }
}

const METHOD: &str = r#"
## Method

- One binary, `benches/src/bin/bench.rs` (crate `idempotent-benches`), not criterion: a measurement
  is a phase of thousands of calls from 1 to 128 concurrent tokio tasks (a multi-thread runtime
  with one worker per core) against live servers, each call timed for p99; criterion times one
  closure per iteration on one thread. CPU per call, which needs repeatability more than
  wall-clock figures do, is counted in instructions under callgrind instead.
- Each path has an annotated function (`benches/src/annotated.rs`, distinct operation names
  `bench.*`) and a hand-written one (`benches/src/hand/`) running the same protocol on the same
  store handle: the same `MemoryStore`-like steps on a 64-shard `Mutex<HashMap>`; the runtime's
  own Lua scripts (their sources, from `idempotent_runtime::store::redis::scripts`) on a clone of the `ConnectionManager` the `RedisStore` wraps;
  the runtime's own SQL statements on the same sqlx pool. Both encode the response with
  `serde_json`. The hand-written side deliberately skips what the framework adds: it keys records
  by the plain text `op:tenant:id` (no SHA-256), uses the amount as fingerprint (no canonical
  serializer), a counter as owner token, and does no JSON round-trip check, completion guard,
  lease renewal, busy-wait or retry. So the ratio is the whole cost of the framework's
  guarantees and generality on that path. The third side, *hand + work*, is the same
  hand-written code with `hand::set_framework_work(true)`: SHA-256 storage keys, the canonical
  fingerprint, an owner token with a random per-process prefix and the response read back and compared — the
  work any implementation with the framework's guarantees (fixed-size keys whatever the key's
  length, payload mismatch detection, owners unique across processes, replays equal to the
  original) must do.
- The body is pure CPU (builds the response): the figures are the protocol's cost alone. With a
  real body (a payment call, an INSERT) the ratios move towards 1.
- Lease renewal is framework work the *hand + work* side leaves out: while a fresh claim-mode
  call's completion statement is in flight the claim is kept renewed (a tokio timer, due a
  third of the lease after the claim), so a completion stuck past the lease cannot let a
  retry run the body again. A body or completion that is ready when first polled registers
  no timer (the memory store's); one that waits on a server registers one per fresh call,
  which on a multi-thread runtime wakes a parked worker. Measured once without it (the
  closing note of issue 14): SQLite claim, c = 1, fresh went from 0.91× to 0.97–1.00× of
  hand + work.
- Rounds: each round runs the three sides (which goes first rotates per round), each a
  fresh phase on new keys, then a replay phase on the same keys. A phase is cut into 10
  slices and the sides take turns slice by slice (annotated, hand, hand + work, then the next
  slice), so a disturbance of the machine shorter than a phase — another process, a frequency
  step — falls on all three sides alike instead of on whichever side was running; a side's
  figures are its slices' together. The table shows each side's
  median calls/s over the rounds (they may come from different rounds, so the quotient of two
  shown rates can differ from the shown ratio, even in direction) and the median of the
  rounds' p99. A ratio is the median of the rounds'
  ratios (each round's sides run seconds apart, so a round's ratio cancels the machine's
  slower drift), with the lowest and highest round in brackets: on a shared machine that
  range is the honest error bar of the row.
- Stores: PostgreSQL schema `idem_bench` and MariaDB database `idem_bench` (truncated at the
  start of a run; never the tests' tables), pools of 32 connections; SQLite a temporary file in
  WAL mode with a 30 s busy timeout and a pool of 8 (as the tests; `--sqlite-pool N` for
  another size); the memory store one
  `MemoryStore`; Redis a throwaway `redis-server` (no persistence) unless `--redis-url` is given.
- Flags of `scripts/bench.sh` (passed to `bench`): `--calls N` (default 2,000 per phase),
  `--long` (10,000), `--rounds N` (3), `--growth` (adds the growth section, slow: it pre-fills
  10^6 rows once and runs c up to 128), `--only SUBSTRING` (paths whose name contains it),
  `--side annotated|hand|hand-work` and `--concurrency N[,N…]` (one side at chosen
  concurrencies, to profile it alone: `perf record target/release/bench --only "token · Redis"
  --side annotated --concurrency 32 --no-callgrind --write /tmp/scratch.md`),
  `--sqlite-pool N` (the SQLite pool's connections, default 8), `--no-callgrind`. Without `--growth`, the growth section of the existing BENCHMARKS.md is kept
  as it was, with the date it was last run.
"#;
