//! The framework's own work per call, piece by piece, for the accounting in BENCHMARKS.md:
//! the storage key (SHA-256 of operation, scope and key parts, as the macro builds it), the
//! request's fingerprint (canonical serialization, SHA-256, hex), and the response's JSON read
//! back and compared with `==` (the round-trip check a `PartialEq` response gets). The
//! hand-written side does none of these. `memcpu` counts their instructions; `bench` times
//! them natively.

use idempotent_runtime::{Fingerprinter, KeyBuilder, StorageKey};

use crate::{AppError, Receipt, Req, receipt};

/// The storage key the annotated `dedup_table` function builds for `r`.
pub fn key(r: &Req) -> Result<StorageKey, AppError> {
    Ok(KeyBuilder::new("bench.dedup_table.claim")
        .scope(&r.tenant)
        .part(&r.id)
        .finish()?)
}

/// The fingerprint of `r` as the annotated function stores it (64 hex characters).
pub fn fingerprint(r: &Req) -> Result<Option<String>, AppError> {
    Ok(Fingerprinter::new()
        .arg("req", r)
        .finish()?
        .map(|f| f.hex()))
}

/// The body's response built and serialized: what the hand-written call does too, so it is
/// subtracted from [`roundtrip`] to leave the read-back alone.
pub fn response(r: &Req) -> Result<(Receipt, Vec<u8>), AppError> {
    let value = receipt(r, 0);
    let bytes = serde_json::to_vec(&value)?;
    Ok((value, bytes))
}

/// The body's response built, serialized, read back and compared, as the round-trip check
/// does; less [`response`], the read-back and comparison alone.
pub fn roundtrip(r: &Req) -> Result<bool, AppError> {
    let (value, bytes) = response(r)?;
    let back: Receipt = serde_json::from_slice(&bytes)?;
    Ok(back == value)
}

/// Native time of each part, in µs per call: the median of 5 runs of `n` calls each, on
/// requests built beforehand. Returns `[key, fingerprint, read-back]`, the last being
/// [`roundtrip`] less [`response`] (building and serializing the response is not the
/// framework's extra work: the hand-written call does it too).
pub fn timed(n: usize) -> Result<[f64; 3], AppError> {
    let reqs: Vec<Req> = crate::harness::plain_requests("parts", n);
    let mut out = [0.0; 4];
    for (part, slot) in out.iter_mut().enumerate() {
        let mut runs = Vec::new();
        for _ in 0..5 {
            let start = std::time::Instant::now();
            for r in &reqs {
                match part {
                    0 => drop(std::hint::black_box(key(r)?)),
                    1 => drop(std::hint::black_box(fingerprint(r)?)),
                    2 => drop(std::hint::black_box(response(r)?)),
                    _ => drop(std::hint::black_box(roundtrip(r)?)),
                }
            }
            runs.push(start.elapsed().as_secs_f64() * 1e6 / n as f64);
        }
        runs.sort_by(f64::total_cmp);
        *slot = runs[2];
    }
    Ok([out[0], out[1], (out[3] - out[2]).max(0.0)])
}
