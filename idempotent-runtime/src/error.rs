//! The error every strategy returns, and how a caller tells a replay from a fresh execution.

use std::time::Duration;

/// Errors returned by `#[idempotent]` wrappers and the runtime.
///
/// The wrapper keeps the function's own `Result<T, E>`; it needs `E: From<Error>` and converts
/// these into the caller's error type. The variants follow the usual idempotency vocabulary
/// (Stripe's idempotency keys, the IETF `Idempotency-Key` HTTP header draft,
/// <https://datatracker.ietf.org/doc/draft-ietf-httpapi-idempotency-key-header/>).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The operation already ran (or, for `token`, is running) for this idempotency key and
    /// there is no response to replay: select-before-insert, pessimistic (the body's re-check),
    /// optimistic, unique-index and state-machine store none; `token` answers a concurrent use
    /// of a token whose first call has not completed yet this way ("one wins, the others get
    /// Duplicate") and replays once it has.
    #[error("duplicate request: the operation already ran for this idempotency key")]
    Duplicate,

    /// Another caller holds an unexpired claim (or lock) on this key and the operation is still
    /// in progress. Retry later; HTTP services usually answer `409 Conflict`.
    #[error("a request with this idempotency key is still in progress")]
    InProgress,

    /// The key was used before with a different request payload (different fingerprint).
    /// HTTP services usually answer `422 Unprocessable Content`.
    #[error("idempotency key reused with a different request payload")]
    FingerprintMismatch,

    /// The row is in a state from which the requested transition is not allowed.
    #[error("conflict: {0}")]
    Conflict(String),

    /// The row the strategy guards does not exist.
    #[error("not found: {0}")]
    NotFound(String),

    /// The caller's claim, lock or consumed token is no longer its own — its lease expired and
    /// another caller may have taken it over, an operator removed it (`admin::evict`,
    /// `evict_lock` or `evict_token` with `force`; `idempotent-admin evict --force`), or the
    /// store forgot it (a Redis restart without persistence) — so this caller's completion (or
    /// renewal) was refused by compare-and-set on the owner token. The body may have run: its
    /// effect may have happened. (In `distributed_lock` and `token`, a completion that landed
    /// but whose reply was lost, and whose resend is refused, is reported this way too.) When
    /// the acquisition itself took the whole lease, the error is
    /// [`Error::LeaseShorterThanAcquisition`] instead.
    #[error(
        "the claim on this idempotency key was lost before this call could confirm its completion (the operation may have run): its lease expired and another caller may have taken it over, an operator evicted it (idempotent-admin evict --force), or the store forgot it (a Redis restart without persistence)"
    )]
    LockLost,

    /// The body ran and returned `Ok` — **its effect happened** — but its response could not
    /// be recorded: completing the claim, lock or token (claim-mode `dedup_table`,
    /// `distributed_lock`, `token`) kept failing with backend errors, retried with backoff
    /// while the lease was renewed, for `retried_for` (from the first failure, up to the lease; zero when the error was not worth retrying). The record is
    /// not written and the key stays in progress until its lease ends: a retry meanwhile gets
    /// [`Error::InProgress`] (or [`Error::Duplicate`] for `token`), and a retry after the lease
    /// may run the body a second time. Treat the call as succeeded-but-unconfirmed: reconcile
    /// before retrying, or retry only an effect that is safe to repeat.
    #[error(
        "the operation ran, but its result could not be recorded for this idempotency key (retried for {retried_for:?}; last error: {last}); a retry after the lease may run it again"
    )]
    Unrecorded {
        /// How long completion was retried before giving up.
        retried_for: Duration,
        /// The last store error completion met (usually [`Error::Backend`]).
        #[source]
        last: Box<Error>,
    },

    /// The claim, lock or consumed token was lost because acquiring it took `took`, not less
    /// than its `lease` (less 1 % + 2 ms for clock drift): it may have expired before the body
    /// could start, with no other caller to blame. Every claim-mode strategy checks this after
    /// acquiring and then does not run the body; it releases its claim by owner. Use a lease
    /// well above the store's slowest round trip (see
    /// [`MIN_LEASE`](crate::strategy::durations::MIN_LEASE)).
    #[error(
        "the claim on this idempotency key was lost: acquiring it took {took:?}, not less than its lease of {lease:?}, so it may have expired: the body was not run; use a lease well above the store's round trip"
    )]
    LeaseShorterThanAcquisition {
        /// The lease asked for.
        lease: Duration,
        /// How long the acquisition (claim, lock, consume) took, from before the request to its
        /// reply.
        took: Duration,
    },

    /// The key, scope or operation name is empty, too long, or otherwise unusable.
    #[error("invalid idempotency key: {0}")]
    InvalidKey(String),

    /// The one-time token is unknown, expired or already consumed.
    #[error("invalid or expired idempotency token")]
    TokenInvalid,

    /// A waiting duplicate (`on_busy = "wait(..)"`) gave up after this long.
    #[error("gave up waiting {0:?} for the in-progress request with this idempotency key")]
    WaitTimeout(Duration),

    /// The transaction kept failing with deadlocks or serialization failures (the errors
    /// `store::sql::is_retryable` accepts: MySQL 1213, MariaDB 1020, SQLSTATE 40001/40P01,
    /// SQLite busy) and was retried `attempts` times, the whole transaction each time; `last`
    /// describes the last failure. Retry later. Never inside the caller's transaction, where
    /// the first such failure is returned as it is.
    #[error(
        "gave up after {attempts} attempts, each ended by a deadlock or serialization failure (last: {last})"
    )]
    Contention {
        /// How many times the transaction ran.
        attempts: u32,
        /// The last failure, as text.
        last: String,
    },

    /// A duration option is outside what its protocol can keep: `option` (`"lease"`, `"ttl"`,
    /// `"on_busy"`) is `value`, below `minimum` — a lease shorter than
    /// [`MIN_LEASE`](crate::strategy::durations::MIN_LEASE), a `ttl` shorter than the lease, a
    /// `wait` shorter than [`MIN_WAIT`](crate::strategy::durations::MIN_WAIT). `reason` says
    /// why. Checked by each strategy's entry point before any store call, so nothing ran;
    /// `#[idempotent]` refuses such literal values at compile time.
    #[error("invalid option `{option}` = {value:?}: {reason}; use at least {minimum:?}")]
    InvalidOption {
        /// The option's name as written in the attribute.
        option: &'static str,
        /// The value given.
        value: Duration,
        /// The least value the protocol can keep.
        minimum: Duration,
        /// Why the floor is there.
        reason: &'static str,
    },

    /// The strategy's configuration cannot work on this backend, so nothing ran: checked before
    /// any statement. `unique_index` with `constraint` but no `table` on MySQL/MariaDB or SQLite,
    /// which do not report the violated constraint's name: any unique violation would count as
    /// a duplicate, and a request violating another unique column would be lost. Also a Redis
    /// store whose `wait_for_replicas` timeout is not below its response time-out. The text
    /// says what to configure instead.
    #[error("configuration not supported by this backend: {0}")]
    Unsupported(String),
    /// Two or more `#[idempotent]` functions of this process have the operation name `name`, so
    /// they would share stored records (one replaying the other's responses). Every call of
    /// each of them returns this before any store access: nothing ran, nothing was written.
    /// `sites` lists them, in file and line order (functions one `macro_rules!` call writes have
    /// that call's position, and the message lists them as that call). Give each a distinct
    /// `name = "..."` (the default name, `module_path!()::fn_name`, is the same for same-named
    /// methods of two types, or two impls, in one module). See
    /// [`check_operation_names`](crate::check_operation_names) to find this at startup.
    #[error(
        "operation name {name:?} is used by {count} #[idempotent] functions: {list}; they would share stored records: write name = \"...\" on each to give them distinct names",
        count = .sites.len(),
        list = crate::operation::list_sites(.sites)
    )]
    OperationNameCollision {
        /// The shared operation name.
        name: &'static str,
        /// The functions that have it (at least two).
        sites: Vec<crate::operation::Operation>,
    },

    /// The Redis server at `node` runs with `maxmemory-policy` `policy`, under which Redis may
    /// silently evict keys when it reaches `maxmemory`: locks, claims, one-time tokens and
    /// stored responses would vanish, and a retry would run the body a second time. Returned by
    /// [`RedisStore::connect`](crate::RedisStore::connect) and its siblings, which read the
    /// policy of every primary (`INFO memory`, field `maxmemory_policy`; see
    /// <https://redis.io/docs/latest/develop/reference/eviction/>). Set
    /// `maxmemory-policy noeviction`, or accept the risk with
    /// [`RedisOptions::allow_eviction`](crate::RedisOptions::allow_eviction).
    #[error(
        "Redis at {node} has maxmemory-policy {policy}, which can evict idempotency keys (locks, claims, tokens, stored responses) and let a retry run twice; set maxmemory-policy noeviction, or opt in with RedisOptions::allow_eviction(true)"
    )]
    EvictionPolicy {
        /// The node (`host:port`) that reported the policy.
        node: String,
        /// The policy it reported (`allkeys-lru`, `volatile-ttl`, …).
        policy: String,
    },

    /// An acquisition (a `distributed_lock` lock, a `dedup_table` claim, a `token` issue or
    /// consumption) was written on the Redis primary, but `WAIT` reported only `acknowledged`
    /// of the `required` replicas within `timeout` (see
    /// [`RedisOptions::wait_for_replicas`](crate::RedisOptions::wait_for_replicas) and
    /// <https://redis.io/docs/latest/commands/wait/>). The acquisition was released again (a
    /// consumed token restored; an issued token stays issued on the primary) and the body did
    /// not run: a failover now could have promoted a replica that never saw it. Retry later.
    #[error(
        "the acquisition reached {acknowledged} of {required} required Redis replicas within {timeout:?}; it was released and the body did not run"
    )]
    NotReplicated {
        /// How many replicas acknowledged the write (`WAIT`'s reply).
        acknowledged: u32,
        /// How many were required.
        required: u32,
        /// How long `WAIT` waited.
        timeout: Duration,
    },

    /// The backend (database or Redis) failed.
    #[error("idempotency backend error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),

    /// A stored record is unreadable: a response failed to (de)serialize, or the record is
    /// malformed.
    #[error("idempotency serialization error: {0}")]
    Serialization(String),
}

impl Error {
    /// Wraps any backend error (sqlx, redis) as [`Error::Backend`].
    pub fn backend<E: std::error::Error + Send + Sync + 'static>(e: E) -> Self {
        Error::Backend(Box::new(e))
    }
}

#[cfg(feature = "sqlx")]
impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::backend(e)
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Serialization(e.to_string())
    }
}

/// An error type an `#[idempotent]` function may return: one that can hold this crate's
/// [`Error`] (duplicates, in-progress calls, backend failures come back as it).
///
/// Implemented for every `E: From<Error>`; with thiserror, a variant
/// `#[error(transparent)] Idempotency(#[from] idempotent_runtime::Error)` gives it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot hold an `idempotent_runtime::Error`: the function's error type must implement `From<idempotent_runtime::Error>`",
    label = "duplicates, in-progress calls and backend failures are returned as this type",
    note = "for an error type of your own, add `impl From<idempotent_runtime::Error> for {Self}` (with thiserror, a variant `#[error(transparent)] Idempotency(#[from] idempotent_runtime::Error)`); for another crate's type (`std::io::Error`, `String`, …), which cannot get that impl, return an error enum of your own that wraps both"
)]
pub trait FunctionError: From<Error> {}

#[diagnostic::do_not_recommend]
impl<E: From<Error>> FunctionError for E {}

/// An error type a business-table strategy's function (`select_before_insert`, `pessimistic`,
/// `optimistic`, `unique_index`, `state_machine`) may return: a [`FunctionError`] that is
/// also a `std::error::Error + 'static`, because the strategy looks for the database's error
/// (a unique violation, a deadlock) in its source chain.
#[diagnostic::on_unimplemented(
    message = "`{Self}` must be a `std::error::Error + 'static` that implements `From<idempotent_runtime::Error>`",
    label = "the strategy looks for the database's error in this type's source chain",
    note = "implement `std::error::Error` and `From<idempotent_runtime::Error>` for `{Self}`, e.g. an enum deriving `thiserror::Error` with `#[from] sqlx::Error` and `#[from] idempotent_runtime::Error` variants (a `Box<dyn Error>` is not itself a `std::error::Error`)"
)]
pub trait SqlFunctionError: FunctionError + std::error::Error + 'static {}

#[diagnostic::do_not_recommend]
impl<E: From<Error> + std::error::Error + 'static> SqlFunctionError for E {}

/// How a wrapped call produced its result.
///
/// Read it with [`observe`]; HTTP services use it to set the `Idempotent-Replayed: true`
/// response header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Disposition {
    /// The body ran in this call.
    Executed,
    /// The body did not run: the stored response of an earlier call was returned.
    Replayed,
}

tokio::task_local! {
    static DISPOSITION: std::cell::Cell<Option<Disposition>>;
}

/// Runs `fut` and reports how the last `#[idempotent]` call awaited inside it produced its
/// result (`None` when no wrapped call completed, or it failed before deciding).
///
/// ```
/// use idempotent_runtime::{Disposition, MemoryStore, idempotent, observe};
///
/// #[derive(Debug, thiserror::Error)]
/// #[error(transparent)]
/// struct AppError(#[from] idempotent_runtime::Error);
///
/// #[idempotent(strategy = "dedup_table", key = "order_id")]
/// async fn place_order(store: &MemoryStore, order_id: &str) -> Result<u32, AppError> {
///     Ok(7)
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), AppError> {
/// let store = MemoryStore::new();
/// let (receipt, how) = observe(place_order(&store, "o-1")).await;
/// assert_eq!((receipt?, how), (7, Some(Disposition::Executed)));
/// let (receipt, how) = observe(place_order(&store, "o-1")).await;
/// assert_eq!((receipt?, how), (7, Some(Disposition::Replayed))); // set `Idempotent-Replayed: true`
/// # Ok(())
/// # }
/// ```
pub async fn observe<F: Future>(fut: F) -> (F::Output, Option<Disposition>) {
    DISPOSITION
        .scope(std::cell::Cell::new(None), async move {
            let out = fut.await;
            let how = DISPOSITION.with(|d| d.get());
            (out, how)
        })
        .await
}

/// Records the disposition of the current call for [`observe`] without reporting a decision
/// (the caller reports its own, e.g. `stored_error`).
pub(crate) fn note(d: Disposition) {
    let _ = DISPOSITION.try_with(|cell| cell.set(Some(d)));
}

/// Records the disposition of the current call for [`observe`] (a no-op outside it), and
/// reports it as the call's `executed` or `replayed` decision ([`crate::telemetry`]).
pub(crate) fn record(d: Disposition) {
    crate::telemetry::event(match d {
        Disposition::Executed => crate::telemetry::Decision::Executed,
        Disposition::Replayed => crate::telemetry::Decision::Replayed,
    });
    let _ = DISPOSITION.try_with(|cell| cell.set(Some(d)));
}
