//! CPU per call of the memory path, for `valgrind --tool=callgrind`: runs `n` calls of the
//! memory-store `dedup_table` function (`annotated`) or of its hand-written equivalent
//! (`hand`), fresh keys (`fresh`) or replays of 1,000 completed keys (`replay`, after filling
//! them), on a current-thread tokio runtime. `bench` runs it twice with different `n` and
//! divides the difference in instructions by the difference in calls, which cancels start-up.
//!
//! The other sides split the annotated call into its parts, so BENCHMARKS.md can say where
//! the instructions go: `store` (the `MemoryStore`'s own steps alone — `claim_or_read`, then
//! `complete_claim` — on storage keys built beforehand) against `hand-store` (the hand-written
//! sharded map's steps on keys built beforehand); `key` (the storage key: SHA-256 of operation,
//! scope and key parts, as the macro builds it), `fingerprint` (the canonical form of the
//! request, SHA-256, hex), `roundtrip` (the response built, serialized, read back and compared with
//! `==`, the check a `PartialEq` response gets) less `response` (the response built and
//! serialized, which the hand-written side does too): the read-back alone. For those
//! four `fresh` and `replay` are the same work; `requests` only builds the requests those
//! four build, and its count is subtracted from theirs. `store-setup` builds the keys `store` and
//! `hand-store` use and stops: its count is subtracted from theirs.
//!
//! With `MEMCPU_SIZES` set it first prints the size in bytes of one call's future, annotated
//! and hand-written: each `async` layer copies the future below it when first polled, so
//! this size is copied several times a call.
//!
//! The sides `annotated`, `hand` and `hand-work` take a strategy after `N`: `dedup` (the
//! default), `lock` (`distributed_lock`) or `token`. A fresh `token` call needs a token issued
//! before it; `issue-only` after the strategy issues the tokens and stops, so `bench` can
//! subtract the issuance.
//!
//! `MEMCPU_FILLED=N` replays `N` keys instead of 1,000 (see [`filled`]): with 100,000 the
//! records outgrow the CPU's caches as in `bench`, and `valgrind --tool=cachegrind
//! --cache-sim=yes` counts the cache misses of a replay.
//!
//! Usage: `memcpu annotated|hand|hand-work|store|hand-store|store-setup|requests|key|fingerprint|response|roundtrip fresh|replay N [dedup|lock|token] [issue-only]`

use idempotent_benches::annotated::{Claim, Lock, Token};
use idempotent_benches::hand::memory;
use idempotent_benches::parts;
use idempotent_benches::{AppError, Receipt, Req};
use idempotent_runtime::store::{Claim as ClaimStep, ClaimOrRecord};
use idempotent_runtime::{ClaimStore, MemoryStore, StorageKey};
use std::time::Duration;

/// Completed keys a `replay` run fills and replays round-robin: 1,000 by default (all in
/// cache, for callgrind); `MEMCPU_FILLED=100000` replays as many keys as `bench` does, for
/// timing the cache-cold working set natively.
fn filled() -> usize {
    std::env::var("MEMCPU_FILLED")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1_000)
}

fn req(i: usize) -> Req {
    Req {
        tenant: "cpu".to_owned(),
        id: format!("k{i}"),
        amount: i as u64,
    }
}

/// The parts of the annotated call, alone (see the crate docs above).
fn part(side: &str, phase: &str, n: usize) -> Result<bool, AppError> {
    match side {
        "requests" => {
            for i in 0..n {
                std::hint::black_box(req(i));
            }
        }
        "key" => {
            for i in 0..n {
                std::hint::black_box(parts::key(&req(i))?);
            }
        }
        "fingerprint" => {
            for i in 0..n {
                std::hint::black_box(parts::fingerprint(&req(i))?);
            }
        }
        "response" => {
            for i in 0..n {
                std::hint::black_box(parts::response(&req(i))?);
            }
        }
        "roundtrip" => {
            for i in 0..n {
                std::hint::black_box(parts::roundtrip(&req(i))?);
            }
        }
        "store" | "hand-store" | "store-setup" => {
            let filled = filled();
            let keys: Vec<(StorageKey, String)> = (0..n.max(filled))
                .map(|i| {
                    let r = req(i);
                    Ok((parts::key(&r)?, format!("hand.claim:{}:{}", r.tenant, r.id)))
                })
                .collect::<Result<_, AppError>>()?;
            if side == "store-setup" {
                // The keys alone: subtracted from `store` and `hand-store`.
                std::hint::black_box(keys);
                return Ok(true);
            }
            let store = MemoryStore::new();
            let hand = memory::ClaimMap::default();
            let response = serde_json::to_vec(&idempotent_benches::receipt(&req(0), 0))?;
            let owner = "0123456789abcdef0123456789abcdef";
            let fp = "f".repeat(64);
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            let step = async |i: usize| -> bool {
                let (key, text) = &keys[i];
                if side == "hand-store" {
                    return hand.claim_and_complete(text, &fp, owner, &response);
                }
                let claim = ClaimStep {
                    key,
                    fingerprint: Some(&fp),
                    owner,
                    lease: Duration::from_secs(30),
                };
                match store.claim_or_read(&claim).await {
                    Ok(ClaimOrRecord::Claimed) => store
                        .complete_claim(key, owner, &response, Duration::from_secs(86_400))
                        .await
                        .unwrap_or(false),
                    Ok(ClaimOrRecord::Replay(_)) => true,
                    Ok(ClaimOrRecord::Existing(Some(r))) => r.fingerprint.as_deref() == Some(&fp),
                    _ => false,
                }
            };
            rt.block_on(async {
                if phase == "fresh" {
                    for i in 0..n {
                        assert!(step(i).await);
                    }
                } else {
                    for i in 0..filled {
                        assert!(step(i).await);
                    }
                    for i in 0..n {
                        assert!(step(i % filled).await);
                    }
                }
            });
        }
        _ => return Ok(false),
    }
    Ok(true)
}

/// How long the tokens `memcpu ... token` issues live.
const TOKEN_TTL: Duration = Duration::from_secs(3600);

fn main() -> Result<(), AppError> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(side), Some(phase), Some(n)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!(
            "usage: memcpu annotated|hand|hand-work|<part> fresh|replay N [dedup|lock|token] [issue-only]"
        );
        std::process::exit(2);
    };
    let n: usize = n.parse().expect("N is a number");
    let strategy = args.get(4).map_or("dedup", String::as_str);
    // `issue-only`: a `token` run that issues its tokens and stops, subtracted from the whole
    // run so that the token's issuance (before the call, not part of it) is not counted.
    let issue_only = args.get(5).is_some_and(|a| a == "issue-only");
    if strategy == "dedup" && part(side, phase, n)? {
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = MemoryStore::new();
    let annotated = Claim {
        store: store.clone(),
    };
    let annotated_lock = Lock {
        store: store.clone(),
    };
    let annotated_token = Token {
        store: store.clone(),
    };
    let hand = memory::Claim::default();
    let hand_lock = memory::Lock::default();
    let hand_token = memory::Token::default();
    // `hand-work`: the hand-written call doing the framework's own work too (storage key,
    // fingerprint, owner with a random prefix, response read back), see `hand::set_framework_work`.
    idempotent_benches::hand::set_framework_work(side == "hand-work");
    let annotated_side = match side.as_str() {
        "annotated" => true,
        "hand" | "hand-work" => false,
        other => panic!("unknown side {other}"),
    };
    let call = async |r: &Req| -> Result<Receipt, AppError> {
        match (annotated_side, strategy) {
            (true, "dedup") => annotated.place(r).await,
            (true, "lock") => annotated_lock.settle(r).await,
            (true, "token") => annotated_token.checkout(r).await,
            (false, "dedup") => hand.place(r).await,
            (false, "lock") => hand_lock.settle(r).await,
            (false, "token") => hand_token.checkout(r).await,
            (_, other) => panic!("unknown strategy {other}"),
        }
    };
    // The requests of `count` calls: a `token` call carries a token issued for it.
    let requests = async |count: usize| -> Result<Vec<Req>, AppError> {
        let mut reqs: Vec<Req> = (0..count).map(req).collect();
        if strategy == "token" {
            for r in &mut reqs {
                r.id = if annotated_side {
                    idempotent_runtime::issue_token(&store, TOKEN_TTL).await?
                } else {
                    hand_token.issue(TOKEN_TTL)
                };
            }
        }
        Ok(reqs)
    };
    if std::env::var_os("MEMCPU_SIZES").is_some() {
        let r = req(0);
        eprintln!(
            "annotated future {} bytes, hand {} bytes",
            std::mem::size_of_val(&annotated.place(&r)),
            std::mem::size_of_val(&hand.place(&r))
        );
    }
    rt.block_on(async {
        match phase.as_str() {
            "fresh" => {
                let reqs = requests(n).await?;
                if issue_only {
                    return Ok(());
                }
                for r in &reqs {
                    std::hint::black_box(call(r).await?);
                }
            }
            "replay" => {
                let filled = filled();
                let reqs = requests(filled).await?;
                for r in &reqs {
                    call(r).await?;
                }
                for i in 0..n {
                    std::hint::black_box(call(&reqs[i % filled]).await?);
                }
            }
            other => panic!("unknown phase {other}"),
        }
        Ok(())
    })
}
