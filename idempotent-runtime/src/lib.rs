#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod admin;
pub mod connect;
pub mod consumer;
pub mod error;
pub mod fingerprint;
#[cfg(feature = "tower")]
pub mod http;
pub mod key;
pub mod operation;
pub mod store;
pub mod strategy;
pub mod telemetry;

#[doc(hidden)]
pub mod __private;

// The check traits of `__private` again at the root, hidden: rustc's "the trait `X` is not
// implemented for `T`" line (which `#[diagnostic::on_unimplemented]` cannot word) then names
// the trait alone (`ResponseType`), not its private path — rustc shortens a path to the bare
// name only for an item re-exported at a crate's root. Not an API: the generated code names
// them through `__private`.
#[doc(hidden)]
pub use __private::{ErrorType, KeyPartArg, ResponseType, TerminalErrorType};
#[cfg(feature = "sqlx")]
#[doc(hidden)]
pub use __private::{KeyValueArg, SqlErrorType, TxParam, VersionValueArg};

pub use connect::{ConnectCause, ConnectError};
pub use error::{Disposition, Error, FunctionError, SqlFunctionError, observe};
pub use fingerprint::{Fingerprint, Fingerprinter};
pub use key::{KeyBuilder, KeyPart, MAX_KEY_BYTES, StorageKey};
pub use operation::{Operation, check_operation_names, operations};
pub use strategy::distributed_lock::FencingToken;
pub use strategy::token::issue_token;
pub use strategy::{OnBusy, OnCancel};

#[cfg(feature = "memory")]
pub use store::memory::MemoryStore;
#[cfg(feature = "redis")]
pub use store::redis::{RedisOptions, RedisStore};
/// Internal plumbing of the SQL stores, hidden from the documentation; nameable as bounds in
/// generic code (`DB: SqlBackend` for a `&sqlx::Pool<DB>`).
#[cfg(feature = "sqlx")]
#[doc(hidden)]
pub use store::sql::{SqlBackend, TxStore};
#[cfg(feature = "sqlx")]
pub use store::sql::{check_connection, migrate};
pub use store::{ClaimOrRecord, ClaimStore};
pub use store::{LockStore, Store, TokenStore};

/// The `#[idempotent]` attribute (re-exported from `idempotent-macros`).
#[cfg(feature = "macros")]
pub use idempotent_macros::idempotent;
