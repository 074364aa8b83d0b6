//! Compile-time checks of `#[idempotent]`: every file in `tests/ui/fail` is one mistake whose
//! compiler output must match its committed `.stderr` (one precise error, at the user's token,
//! saying what to write instead). The valid shapes in `tests/ui/pass` are compiled and run by
//! `ui_pass.rs` as modules of one test binary, not here: trybuild builds every case as a
//! binary of its own, and with no pass case it only type-checks (`cargo check`), so neither
//! the cases nor their dependencies are code-generated or linked.
//!
//! Regenerate the expected output after an intended message change with
//! `TRYBUILD=overwrite cargo test -p idempotent-tests --test ui`, then read every changed
//! `.stderr` as a user would. `UI_CASES=<glob>` (for example `UI_CASES='fence_*'`) runs only the
//! matching cases, for a quick loop while working on one message.

#[test]
fn ui() {
    let only = std::env::var("UI_CASES").unwrap_or_else(|_| "*".to_owned());
    trybuild::TestCases::new().compile_fail(format!("ui/fail/{only}.rs"));
}
