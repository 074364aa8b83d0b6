//! The other process of the SQLite clock-skew tests (`tests/tests/sqlite_clock.rs`), run under
//! `faketime`: opens the shared SQLite file and calls [`SkewSvc::place`] for one request, then
//! prints what it saw (see [`idempotent_tests::skew::WorkerReport`]).
//!
//! Usage: `skew_worker <db> <tenant> <id> <amount> <call-for|until-free> <ms>`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use idempotent_runtime::{Disposition, observe};
use idempotent_tests::skew::SkewSvc;
use idempotent_tests::{AppError, req};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [db, tenant, id, amount, mode, ms] = args.as_slice() else {
        eprintln!("usage: skew_worker <db> <tenant> <id> <amount> <call-for|until-free> <ms>");
        std::process::exit(2);
    };
    let r = req(tenant, id, amount.parse().expect("amount"));
    let limit = Duration::from_millis(ms.parse().expect("ms"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let svc = SkewSvc::open(std::path::Path::new(db)).await;
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis();
        println!("wall {wall}");
        println!("sqlite {}", svc.sqlite_now_ms().await);
        let started = Instant::now();
        loop {
            let outcome = match observe(svc.place(&r)).await {
                (Ok(_), Some(Disposition::Executed)) => "Executed".to_owned(),
                (Ok(_), Some(Disposition::Replayed)) => "Replayed".to_owned(),
                (Err(AppError::Idempotency(idempotent_runtime::Error::InProgress)), _) => {
                    "InProgress".to_owned()
                }
                (other, how) => format!("Other: {other:?} / {how:?}"),
            };
            let busy = outcome == "InProgress";
            println!("call {outcome}");
            let done = match mode.as_str() {
                "call-for" => started.elapsed() >= limit,
                "until-free" => !busy || started.elapsed() >= limit,
                other => panic!("unknown mode {other}"),
            };
            if done {
                break;
            }
            let pause = if mode == "call-for" { 50 } else { 20 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        println!("elapsed {}", started.elapsed().as_millis());
    });
}
