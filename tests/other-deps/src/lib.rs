//! Compile-fail cases of `#[idempotent]` that need other dependencies than `idempotent-tests`
//! (see `tests/ui.rs`): the runtime built without its `postgres` feature while the application
//! passes a `sqlx::PgPool`, and a pool of sqlx 0.8 while the runtime is built on sqlx 0.9.
//! Each must be one error naming the cause (the feature, the sqlx version).
