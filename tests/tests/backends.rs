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
    ] {
        match std::env::var(var) {
            Ok(url) if !url.is_empty() => println!("  {what:<9}: ran against {url}"),
            _ => {
                println!("  {what:<9}: SKIPPED — set {var} to a server URL to run its tests");
                missing.push(what);
            }
        }
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
