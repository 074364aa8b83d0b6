//! The other process of the fault matrix (`tests/tests/fault_matrix.rs`): runs one strategy's
//! operation on one backend, announcing its pause points on stdout, so the test can SIGKILL it
//! there. The protocol is documented in `idempotent_tests::matrix::worker`.
//!
//! Usage: `fault_worker <strategy> <url> once <key> <claimed|effect|completed|none>`,
//! `fault_worker <strategy> <url> until-free <key> <ms>`,
//! `fault_worker <strategy> <url> storm <keys-file> <rounds> <concurrency>`.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use idempotent_tests::matrix::svc::{Open, Svc, TENANT};
use idempotent_tests::matrix::worker::kind;
use idempotent_tests::matrix::{Pause, Point, Strategy};
use idempotent_tests::req;

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn fail(msg: &str) -> ! {
    eprintln!("fault_worker: {msg}");
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(strategy), Some(url), Some(mode)) = (args.first(), args.get(1), args.get(2)) else {
        fail("usage: fault_worker <strategy> <url> <once|until-free|storm> …");
    };
    let s = Strategy::parse(strategy).unwrap_or_else(|| fail(&format!("strategy {strategy}?")));
    let rest = &args[3..];
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&format!("runtime: {e}")));
    runtime.block_on(async {
        let svc = Svc::open(url, Pause::stdio(), Open::default())
            .await
            .unwrap_or_else(|e| fail(&e));
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        say(&format!("ready {wall}"));
        match (mode.as_str(), rest) {
            ("once", [key, point]) => {
                let point = match point.as_str() {
                    "none" => None,
                    p => Some(Point::parse(p).unwrap_or_else(|| fail(&format!("point {p}?")))),
                };
                if let Some(p) = point {
                    svc.pause.arm(p);
                }
                let got = svc.call(s, &req(TENANT, key, 0)).await;
                say(&format!("result {}", kind(&got)));
                svc.pause.at(Point::Completed).await;
            }
            ("until-free", [key, ms]) => {
                let within = Duration::from_millis(ms.parse().unwrap_or_else(|_| fail("ms?")));
                let r = req(TENANT, key, 0);
                let started = Instant::now();
                loop {
                    let t = Instant::now();
                    let got = svc.call(s, &r).await;
                    say(&format!("call {} {}", t.elapsed().as_millis(), kind(&got)));
                    if s.busy().as_ref() != Some(&got) || started.elapsed() >= within {
                        break;
                    }
                    // Polling a busy key: time passing, not ordering.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                say(&format!("elapsed {}", started.elapsed().as_millis()));
            }
            ("storm", [file, rounds, conc]) => {
                let keys: Vec<String> = std::fs::read_to_string(file)
                    .unwrap_or_else(|e| fail(&format!("{file}: {e}")))
                    .lines()
                    .map(str::to_owned)
                    .collect();
                let rounds: usize = rounds.parse().unwrap_or_else(|_| fail("rounds?"));
                let conc: usize = conc.parse().unwrap_or_else(|_| fail("concurrency?"));
                let mut order = Vec::with_capacity(keys.len() * rounds);
                let mut seed = u64::from(std::process::id());
                for n in 0..rounds {
                    let mut round: Vec<String> = keys.clone();
                    if n == 0 {
                        // The first round in the file's order in every worker: the first calls
                        // of each key meet (the keys are popped from the end).
                        order.extend(round);
                        continue;
                    }
                    // Fisher-Yates with a small LCG seeded by the pid: each worker its own order.
                    for i in (1..round.len()).rev() {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let j = usize::try_from(seed >> 33).unwrap_or(0) % (i + 1);
                        round.swap(i, j);
                    }
                    order.extend(round);
                }
                // Popped from the end: the first round last in the vector.
                order.reverse();
                let queue = Arc::new(std::sync::Mutex::new(order));
                let svc = Arc::new(svc);
                let mut tasks = Vec::new();
                for _ in 0..conc.max(1) {
                    let (queue, svc) = (queue.clone(), svc.clone());
                    tasks.push(tokio::spawn(async move {
                        let mut tally: BTreeMap<String, u64> = BTreeMap::new();
                        loop {
                            let next = queue
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .pop();
                            let Some(key) = next else { break };
                            let got = svc.call(s, &req(TENANT, &key, 0)).await;
                            *tally.entry(kind(&got)).or_default() += 1;
                        }
                        tally
                    }));
                }
                let mut tally: BTreeMap<String, u64> = BTreeMap::new();
                for t in tasks {
                    let part = t
                        .await
                        .unwrap_or_else(|e| fail(&format!("storm task: {e}")));
                    for (k, n) in part {
                        *tally.entry(k).or_default() += n;
                    }
                }
                for (k, n) in tally {
                    say(&format!("tally {k} {n}"));
                }
            }
            _ => fail(&format!("bad arguments {args:?}")),
        }
    });
}
