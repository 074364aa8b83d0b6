//! Prints which backends this run covers, and fails under `CI=true` when one is missing.
//! Runs without the libtest harness so its banner is never captured.

fn main() {
    let ci = idempotent_tests::ci();
    let mut missing = Vec::new();
    println!("idempotent test backends:");
    println!("  sqlite   : ran (temporary file)");
    println!("  memory   : ran (in-process)");
    for (var, what) in [
        (idempotent_tests::POSTGRES_ENV, "postgres"),
        (idempotent_tests::MYSQL_ENV, "mysql"),
        (idempotent_tests::REDIS_ENV, "redis"),
        (idempotent_tests::AMQP_ENV, "rabbitmq"),
        (idempotent_tests::NATS_ENV, "nats"),
    ] {
        match std::env::var(var) {
            Ok(url) if !url.is_empty() => println!("  {what:<9}: ran against {url}"),
            _ if what == "redis" && !ci && idempotent_tests::redis_server_on_path() => {
                println!("  {what:<9}: ran on the suite's own redis-server (loopback, free port)")
            }
            _ => {
                println!("  {what:<9}: SKIPPED — set {var} to a server URL to run its tests");
                missing.push(what);
            }
        }
    }
    match std::env::var(idempotent_tests::REDIS_CLUSTER_ENV) {
        Ok(urls) if !urls.trim().is_empty() => println!("  cluster  : ran against {urls}"),
        _ if idempotent_tests::redis_server_on_path() => println!(
            "  cluster  : ran on the suite's own 3-master cluster (redis-server --cluster-enabled yes, loopback)"
        ),
        _ => {
            println!(
                "  cluster  : SKIPPED — put redis-server on PATH or set {} to the nodes' URLs",
                idempotent_tests::REDIS_CLUSTER_ENV
            );
            missing.push("redis-cluster");
        }
    }
    // The SQLite clock-skew tests (`sqlite_clock.rs`) run a second process under `faketime`.
    let faketime = std::process::Command::new("faketime")
        .args(["-f", "+0s", "true"])
        .output()
        .is_ok_and(|out| out.status.success());
    if faketime {
        println!("  faketime : ran (SQLite clock-skew tests, a second process at ±60 s)");
    } else {
        println!(
            "  faketime : SKIPPED — the SQLite clock-skew tests need faketime on PATH (Debian package `faketime`)"
        );
        missing.push("faketime (sqlite clock skew)");
    }
    if !missing.is_empty() {
        println!("!!! SKIPPED BACKENDS: {} !!!", missing.join(", "));
        if ci {
            eprintln!(
                "CI=true: every backend is required; missing: {}",
                missing.join(", ")
            );
            std::process::exit(1);
        }
    }
}
