//! Compile-time checks of `#[idempotent]` that need this crate's dependencies: every file in
//! `ui/` is one mistake whose compiler output must match its committed `.stderr`.
//!
//! Regenerate the expected output after an intended message change with
//! `TRYBUILD=overwrite cargo test -p idempotent-tests-other-deps --test ui`, then read every
//! changed `.stderr` as a user would.

#[test]
fn ui() {
    trybuild::TestCases::new().compile_fail("ui/*.rs");
}
