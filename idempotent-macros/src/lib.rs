//! The `#[idempotent]` attribute macro.
//!
//! Use it through `idempotent-runtime`, which re-exports it and provides
//! everything the generated code calls (`idempotent_runtime::__private`).
//!
//! The macro works in three stages, each in its own module:
//! `parse` (attribute arguments → raw options with spans), `validate`
//! (every check → a validated configuration, `model`) and `expand`
//! (configuration + function → the wrapper; it cannot fail).
//!
//! - `strategy`: one table of rules per strategy (options taken, required,
//!   defaulted; `#[tx]`/`#[fence]`; key parts);
//! - `signature`: the function's parameters, injected `#[tx]`/`#[fence]` and
//!   `Result<T, E>`;
//! - `options`: the checks of the options' values; `syntax`: token helpers;
//! - `fallback`: the unchanged function emitted next to the errors;
//!   `diag`: error collection and "did you mean" hints;
//! - `expand/replaying.rs`, `expand/business.rs`: code per strategy family.
#![warn(missing_docs)]

mod diag;
mod expand;
mod fallback;
mod model;
mod options;
mod parse;
mod signature;
mod strategy;
mod syntax;
mod validate;

#[cfg(test)]
mod tests;

use proc_macro::TokenStream;

/// Makes an `async fn` idempotent: a duplicate call (same key) does not run the
/// body again; depending on the strategy it gets the first call's response
/// replayed, `Error::Duplicate`, or `Error::InProgress` while the first call is
/// still running.
///
/// ```text
/// use idempotent_runtime::idempotent;
///
/// #[idempotent(strategy = "dedup_table", key = "req.request_id", ttl = "24h")]
/// async fn place_order(pool: &SqlitePool, req: &PlaceOrder) -> Result<Receipt, AppError> {
///     // runs once per `req.request_id`; retries get the stored `Receipt` back
/// }
/// ```
///
/// Complete programs, one per strategy, run as doc tests on the runtime's front page
/// (`idempotent_runtime`, "Your first idempotent function" and each strategy's section).
///
/// Callers call the function exactly as written (minus injected parameters,
/// below). The function must be an `async fn` (free function, inherent or
/// trait-impl method) returning `Result<T, E>` with
/// `E: From<idempotent_runtime::Error>`.
///
/// # Options
///
/// Every value is a string literal (a list of them where noted) and is checked
/// at compile time, with errors pointing at the offending token. All problems
/// are reported together.
///
/// | option | meaning |
/// |---|---|
/// | `strategy` | required: `select_before_insert`, `pessimistic`, `optimistic`, `unique_index`, `dedup_table`, `state_machine`, `distributed_lock`, `token` |
/// | `key` | required: an expression rooted at a parameter (or `self`), e.g. `"order.code"`, `"req.items.0"`; a list for a compound key: `["order.user_id", "order.code"]` |
/// | `store` | expression rooted at a parameter or `self` giving the backend, e.g. `"pool"`, `"self.db"`; default: the parameter named `db`, `pool` or `store`. A method without such a parameter names its field (`store = "self.db"`): the macro cannot see the struct's fields, so it has no field default |
/// | `scope` | the caller/tenant part of the storage key, e.g. `"ctx.tenant_id"` |
/// | `name` | operation name, the first part of the storage key, e.g. `"orders.place"` (dedup_table, distributed_lock, token); default `module_path!()::fn_name` for every function, method or trait-impl method alike (`"my_app::orders::place"`: a constant, stable across compiler versions). Renaming the function or moving it to another module changes the default, and its stored records become unreachable (retries run again): pin `name` to keep them. Same-named methods of two types, or of two impls, in one module get the same default; two functions with one name would share records, so each call of either returns `Error::OperationNameCollision` (listing both, before any store access) until each has a distinct `name = "..."`; `idempotent_runtime::check_operation_names()` finds this at startup |
/// | `fingerprint` | which arguments identify the request: `"req"` or `["req", "amount"]`; default every parameter except `self`, the store's and injected ones; `false` turns it off |
/// | `lease` | how long a claim lives without renewal, e.g. `"30s"` (default), at least `"300ms"` (dedup_table, distributed_lock, token) |
/// | `ttl` | how long a completed record (its response, for replay) is kept, e.g. `"24h"` (default), at least the lease (dedup_table, distributed_lock, token) |
/// | `on_busy` | what a concurrent duplicate gets: `"reject"` or `"wait(5s)"`, a wait of at least `10ms` (dedup_table, distributed_lock) |
/// | `on_cancel` | what a future dropped mid-body does with its claim, lock or consumed token: `"keep"` (default: it stays until the lease ends, so an immediate retry gets `InProgress` — `Duplicate` for token — instead of a second run) or `"release"` (freed at once: the retry runs the body again, though the first run's effect may be half done). dedup_table without `#[tx]`, distributed_lock, token; with `#[tx]` a dropped transaction rolls back, so it is an error there |
/// | `crate` | path of the runtime crate when renamed, e.g. `"::my_runtime"` |
/// | `table`, `column` | business table and key column (select_before_insert, pessimistic, optimistic, state_machine, unique_index); `column` defaults to the key's last field |
/// | `version` | expression giving the version the caller read (optimistic); default `<key root>.version` |
/// | `status_column`, `from`, `to` | the guarded transition (state_machine) |
/// | `done` | the states that count as already applied besides `to`, which always does, e.g. `["SHIPPED", "DELIVERED"]`: a row found in one answers `Duplicate` instead of `Conflict`; not empty, never `from` (state_machine) |
/// | `constraint` | the unique index whose violation means duplicate (unique_index); on MySQL/MariaDB and SQLite, which name no constraint, it also needs `table` (otherwise each call fails with `Error::Unsupported`: the macro cannot know the store's database) |
/// | `on_duplicate` | path of an async fn called for a duplicate instead of returning `Error::Duplicate` (select_before_insert, unique_index, optimistic, state_machine) |
/// | `terminal` | path of a `fn(&E) -> bool`: an error from the body it calls terminal is stored and replayed to duplicates for `ttl` instead of releasing the claim; `E` must then be `Serialize + DeserializeOwned` (dedup_table, distributed_lock, token) |
///
/// Durations are [humantime](https://docs.rs/humantime) strings (`"500ms"`,
/// `"30s"`, `"24h"`), parsed at compile time; zero is rejected, and so is a
/// value below what the protocol can keep (`idempotent_runtime::strategy::durations`):
/// a `lease` under 300 ms (the claim is renewed every lease/3 by one round trip
/// to the store), a `ttl` shorter than the lease, given or default (the record
/// must outlive the claim it replaces), a `wait(..)` under 10 ms (it would give
/// up before its second look). Table, column,
/// status column and constraint names must be plain SQL identifiers
/// (`[A-Za-z_][A-Za-z0-9_]*`, at most 63 characters).
///
/// All eight strategies are implemented. `select_before_insert`, `pessimistic`,
/// `optimistic`, `unique_index` and `state_machine` need a `#[tx]` parameter and
/// take no `scope`, `name` or `fingerprint`; `distributed_lock` and `token` take
/// no `#[tx]`.
///
/// # Injected parameters
///
/// Parameters marked with these are removed from the public signature and
/// supplied by the wrapper:
///
/// - `#[tx] tx: &mut <DB>Connection`: the open transaction the claim lives in,
///   so the body's writes commit atomically with it (SQL strategies only). The
///   body must use it (`.execute(&mut *tx)`): a body that never names it is a
///   compile error, since a write through the pool or another connection would
///   not commit with the claim and would wait for the locks that transaction
///   holds (the key's row, or SQLite's write lock) — for ever on PostgreSQL;
/// - `#[fence] fence: FencingToken`: a number that grows with every acquisition
///   of the lock (distributed_lock only); pass it with your writes (in SQL it
///   binds as a `BIGINT`/`INTEGER` as it is, `fence.as_i64()` gives the number).
///
/// # How it expands
///
/// The expansion (what the wrapper calls, how the body is moved into the strategy) is
/// described for contributors in `CONTRIBUTING.md`, "How `#[idempotent]` expands".
///
/// # One error per mistake, at the user's token
///
/// Every bound a user's type or value can break is checked once, by a check
/// trait of `__private` called through its path (`Trait::method(&(value))`),
/// spanned at the token the check is about, so that a mistake is one error
/// there, worded by the trait's `#[diagnostic::on_unimplemented]`, with no
/// "required by a bound in" note pointing into the runtime's source. A check
/// either does the work itself (adding a key part, a fingerprinted argument) or
/// gives a value whose type has none when it fails, which rustc checks no
/// further, so nothing is reported twice:
///
/// - the store's trait (`AsClaimStore`, `IntoTxStore`, `AsLockStore`,
///   `AsTokenStore`) at `store`: a store of the wrong kind, a pool whose
///   database's feature of the runtime is off, or a pool of another sqlx
///   version is one error there, naming what to write, the feature or the
///   version;
/// - `TxParam` at the `#[tx]` parameter's type: a connection of another
///   database than the store's is one error there, naming the store's
///   connection type;
/// - `ErrorType::into_error` (business-table strategies:
///   `SqlErrorType::error_kit`) at `E` in the signature;
/// - `ResponseType::replaying`, the replaying adapter, at `T`;
/// - `KeyPartArg` (business-table strategies: `KeyValueArg`) at each key or
///   scope part, `VersionValueArg` at `version`;
/// - a key path naming a missing field or method is rustc's error at the `key`
///   string. Field and method names there carry a span that resolves at the
///   macro's mixed site (field lookup ignores it), so rustc offers no
///   "similar name" suggestion that would replace the whole string.
/// - a fingerprinted argument that is not `Serialize` is one error at that
///   parameter (or `fingerprint` entry), naming it and the `fingerprint` that
///   leaves it out: it goes in through a trait defined in the expansion whose
///   `on_unimplemented` message names it, implemented (`do_not_recommend`) for
///   every `Serialize` type, so the bound behind it is neither reported instead
///   nor again. A parameter whose type is a sqlx connection (`tx: &mut
///   SqliteConnection`, without `#[tx]`) is reported by the macro first, at the
///   parameter: leave it out with `fingerprint = [...]`, or (`dedup_table`) mark
///   it `#[tx]` to run the body in the record's transaction.
///
/// # Errors
///
/// When the attribute is wrong, the function is emitted unchanged (without its
/// `#[tx]`/`#[fence]` markers) next to the errors, so that only the attribute's
/// errors are reported, not a cascade of "function not found" ones.
#[proc_macro_attribute]
pub fn idempotent(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand::expand(attr.into(), item.into()).into()
}
