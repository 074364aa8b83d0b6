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
#[cfg(feature = "sqlx")]
pub use store::sql::{SqlBackend, TxStore, check_connection, migrate};
pub use store::{ClaimOrRecord, ClaimStore};
pub use store::{LockStore, Store, TokenStore};

/// The `#[idempotent]` attribute (re-exported from `idempotent-macros`).
#[cfg(feature = "macros")]
pub use idempotent_macros::idempotent;
