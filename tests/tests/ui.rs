//! Compile-time checks of `#[idempotent]` (DESIGN.md §6): every file in `tests/ui/fail` is one
//! mistake whose compiler output must match its committed `.stderr` (one precise error, at the
//! user's token, saying what to write instead); every file in `tests/ui/pass` is a valid shape
//! that must compile and run.
//!
//! Regenerate the expected output after an intended message change with
//! `TRYBUILD=overwrite cargo test -p idempotent-tests --test ui`, then read every changed
//! `.stderr` as a user would. `UI_CASES=<glob>` (for example `UI_CASES='fence_*'`) runs only the
//! matching cases of both folders, for a quick loop while working on one message.

#[test]
fn ui() {
    let only = std::env::var("UI_CASES").unwrap_or_else(|_| "*".to_owned());
    let cases = trybuild::TestCases::new();
    cases.pass(format!("ui/pass/{only}.rs"));
    cases.compile_fail(format!("ui/fail/{only}.rs"));
}
