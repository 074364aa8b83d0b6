//! CPU per call of the memory path, for `valgrind --tool=callgrind`: runs `n` calls of the
//! memory-store `dedup_table` function (`annotated`) or of its hand-written equivalent
//! (`hand`), fresh keys (`fresh`) or replays of 1,000 completed keys (`replay`, after filling
//! them), on a current-thread tokio runtime. `bench` runs it twice with different `n` and
//! divides the difference in instructions by the difference in calls, which cancels start-up.
//!
//! Usage: `memcpu annotated|hand fresh|replay N`

use idempotent_benches::annotated::Claim;
use idempotent_benches::hand::memory;
use idempotent_benches::{AppError, Receipt, Req};
use idempotent_runtime::MemoryStore;

const FILLED: usize = 1_000;

fn req(i: usize) -> Req {
    Req {
        tenant: "cpu".to_owned(),
        id: format!("k{i}"),
        amount: i as u64,
    }
}

fn main() -> Result<(), AppError> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(side), Some(phase), Some(n)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("usage: memcpu annotated|hand fresh|replay N");
        std::process::exit(2);
    };
    let n: usize = n.parse().expect("N is a number");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let annotated = Claim {
        store: MemoryStore::new(),
    };
    let hand = memory::Claim::default();
    let call = async |r: &Req| -> Result<Receipt, AppError> {
        match side.as_str() {
            "annotated" => annotated.place(r).await,
            "hand" => hand.place(r).await,
            other => panic!("unknown side {other}"),
        }
    };
    rt.block_on(async {
        match phase.as_str() {
            "fresh" => {
                for i in 0..n {
                    std::hint::black_box(call(&req(i)).await?);
                }
            }
            "replay" => {
                let reqs: Vec<Req> = (0..FILLED).map(req).collect();
                for r in &reqs {
                    call(r).await?;
                }
                for i in 0..n {
                    std::hint::black_box(call(&reqs[i % FILLED]).await?);
                }
            }
            other => panic!("unknown phase {other}"),
        }
        Ok(())
    })
}
