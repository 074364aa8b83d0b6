//! Tells the test binaries which backends this run can reach, as cfgs read when compiling, so a
//! test of a backend that is not configured is marked `#[ignore = "…"]` and libtest counts it
//! as `ignored` (printed on its line and in each binary's closing `test result:` line) rather
//! than as `passed`.
//!
//! - `has_postgres`, `has_mysql`: `IDEMPOTENT_POSTGRES_URL` / `IDEMPOTENT_MYSQL_URL` is set.
//! - `has_redis`: `IDEMPOTENT_REDIS_URL` is set, or `redis-server` is on PATH (the suite
//!   starts a throwaway one).
//! - `has_redis_cluster`: `IDEMPOTENT_REDIS_CLUSTER_URLS` is set, or `redis-server` is on PATH.
//! - `has_redis_server`: `redis-server` is on PATH (the failover, Cluster-fault and eviction
//!   tests start servers of their own).
//! - `has_faketime`: `faketime` is on PATH (the SQLite clock-skew tests).
//! - `has_amqp`, `has_nats`: `IDEMPOTENT_AMQP_URL` / `IDEMPOTENT_NATS_URL` is set (the consumer
//!   tests of the examples crate, whose `build.rs` is this file).
//!
//! Under `CI=true` every cfg is set, whatever is configured: a missing backend then fails its
//! tests (the harness panics), it is never skipped. Cargo reruns this script, and rebuilds the
//! tests, when one of these variables or PATH changes.

use std::path::Path;

const CFGS: [&str; 8] = [
    "has_postgres",
    "has_mysql",
    "has_redis",
    "has_redis_cluster",
    "has_redis_server",
    "has_faketime",
    "has_amqp",
    "has_nats",
];

fn set(var: &str) -> bool {
    println!("cargo::rerun-if-env-changed={var}");
    std::env::var(var).is_ok_and(|v| !v.trim().is_empty())
}

/// `true` when an executable file `name` is in one of PATH's folders.
fn on_path(name: &str) -> bool {
    println!("cargo::rerun-if-env-changed=PATH");
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| is_executable(&dir.join(name)))
}

#[cfg(unix)]
fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(p: &Path) -> bool {
    p.is_file() || p.with_extension("exe").is_file()
}

fn main() {
    // This file's own path. `file!()` is relative to the workspace root (the parent of both
    // packages that build with it: `tests/build.rs`, `examples/../tests/build.rs`); Cargo reads
    // a relative path from the package's folder, and a path that does not exist there makes it
    // run the script, and rebuild the package, every time. So the path is made absolute.
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default();
    let root = Path::new(&manifest).parent().unwrap_or(Path::new(".."));
    println!("cargo::rerun-if-changed={}", root.join(file!()).display());
    for cfg in CFGS {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    println!("cargo::rerun-if-env-changed=CI");
    let redis_server = on_path("redis-server");
    let have = [
        set("IDEMPOTENT_POSTGRES_URL"),
        set("IDEMPOTENT_MYSQL_URL"),
        set("IDEMPOTENT_REDIS_URL") || redis_server,
        set("IDEMPOTENT_REDIS_CLUSTER_URLS") || redis_server,
        redis_server,
        on_path("faketime"),
        set("IDEMPOTENT_AMQP_URL"),
        set("IDEMPOTENT_NATS_URL"),
    ];
    for (cfg, have) in CFGS.into_iter().zip(have) {
        if ci || have {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
