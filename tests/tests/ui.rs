//! Compile-time checks of `#[idempotent]` (DESIGN.md §6): every file in `tests/ui/fail` is one
//! mistake whose compiler output must match its committed `.stderr` (one precise error, at the
//! user's token, saying what to write instead); every file in `tests/ui/pass` is a valid shape
//! that must compile and run.
//!
//! Regenerate the expected output after an intended message change with
//! `TRYBUILD=overwrite cargo test -p idempotent-tests --test ui`, then read every changed
//! `.stderr` as a user would.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("ui/pass/*.rs");
    cases.compile_fail("ui/fail/*.rs");
}
