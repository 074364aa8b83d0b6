//! The business-table family's adapter: [`business`] runs `select_before_insert`,
//! `pessimistic`, `optimistic`, `unique_index` or `state_machine`, picked by the type of
//! [`Business::strategy`], without a bound on the user's `E`: it takes an [`ErrorKit`]
//! (built where `E` is written, so an unmet bound is reported there once) and hands the
//! strategy [`Failure`], which meets its bounds for any `E`.

use std::error::Error as StdError;

use sqlx::Database;

use super::{AsStdError, Error, Failure};
use crate::store::business::{BindValue, BusinessBackend, KeyValues, Target};
use crate::store::sql::TxStore;

pub use crate::strategy::state_machine::Transition as StateMachine;
pub use crate::strategy::unique_index::Options as UniqueIndex;

/// How the wrapper handles the function's error type `E`: convert a runtime error into it,
/// and see it as a `std::error::Error` (the strategies look for database errors in its
/// source chain).
pub struct ErrorKit<E> {
    into_error: fn(Error) -> E,
    as_std: AsStdError<E>,
}

impl<E> Clone for ErrorKit<E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E> Copy for ErrorKit<E> {}

/// The function's error type `E` of a business-table strategy: a `std::error::Error + 'static`
/// that can hold a runtime [`Error`]. Checked at `E` (`SqlErrorType::error_kit()`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` must be a `std::error::Error + 'static` that implements `From<idempotent_runtime::Error>`",
    label = "the strategy looks for the database's error in this type's source chain",
    note = "return an error type of your own that implements `std::error::Error` and `From<idempotent_runtime::Error>`, e.g. an enum deriving `thiserror::Error` with `#[error(transparent)] Db(#[from] sqlx::Error)` and `#[error(transparent)] Idempotency(#[from] idempotent_runtime::Error)` variants",
    note = "those impls can be written only in the crate that defines the type: a type of another crate (`sqlx::Error`, `std::io::Error`, `String`, `Box<dyn Error>`, …) cannot be the function's error type"
)]
pub trait SqlErrorType: Sized {
    /// The [`ErrorKit`] of `Self`.
    fn error_kit() -> ErrorKit<Self>;
}

#[diagnostic::do_not_recommend]
impl<E: crate::SqlFunctionError> SqlErrorType for E {
    #[inline(always)]
    fn error_kit() -> ErrorKit<E> {
        ErrorKit {
            into_error: E::from,
            as_std: |e| e,
        }
    }
}

impl<E> ErrorKit<E> {
    /// The user's error back out of a strategy's result.
    #[inline(always)]
    fn split<T>(self, result: Result<T, Failure<E>>) -> Result<T, E> {
        Failure::split(result, self.into_error)
    }

    /// Wraps the body's error, keeping it visible as a `std::error::Error`.
    #[inline(always)]
    fn wrap<T>(self, result: Result<T, E>) -> Result<T, Failure<E>> {
        result.map_err(|e| Failure::Body(e, Some(self.as_std)))
    }
}

/// The body's connection type for store `S`.
pub(super) type Conn<S> = <<S as TxStore>::Database as Database>::Connection;

/// The type of "no `on_duplicate` handler" (see [`no_handler`]).
pub type NoHandler<T, E> = fn() -> core::future::Ready<Result<T, E>>;

/// No `on_duplicate` handler: a duplicate is `Error::Duplicate`.
#[inline(always)]
pub fn no_handler<T, E>() -> Option<NoHandler<T, E>> {
    None
}

/// One call of a business-table strategy, as the generated code fills it.
pub struct Business<S, K, E, P, D> {
    /// The transactional store (through `IntoTxStore` and `TxParam`).
    pub store: S,
    /// The key parts, each through `KeyValueArg`.
    pub key: K,
    /// `SqlErrorType::error_kit()`, spanned at the user's `E`.
    pub kit: ErrorKit<E>,
    /// The strategy with its table and options ([`SelectBeforeInsert`], [`Optimistic`], …).
    pub strategy: P,
    /// `on_duplicate`, called for a duplicate instead of returning `Error::Duplicate`
    /// ([`no_handler`] when not given).
    pub on_duplicate: Option<D>,
}

/// A business-table strategy with its table and options: what the adapter dispatches on.
pub trait BusinessStrategy<DB: BusinessBackend> {
    /// Runs the strategy's entry point.
    fn run<S, K, T, E, F, B, D>(
        self,
        store: S,
        key: K,
        body: F,
        on_duplicate: D,
    ) -> impl Future<Output = Result<T, E>>
    where
        S: TxStore<Database = DB>,
        K: KeyValues<DB>,
        E: From<Error> + StdError + 'static,
        F: FnMut() -> B,
        B: AsyncFnOnce(&mut <DB as Database>::Connection) -> Result<T, E>,
        D: AsyncFnOnce() -> Result<T, E>;
}

/// The business family's adapter: runs `call.strategy` with the body's (and the handler's)
/// error passed through and a runtime error converted by `call.kit`.
pub async fn business<S, K, E, P, D, T, F, B>(
    call: Business<S, K, E, P, D>,
    mut body: F,
) -> Result<T, E>
where
    S: TxStore,
    S::Database: BusinessBackend,
    K: KeyValues<S::Database>,
    P: BusinessStrategy<S::Database>,
    D: AsyncFnOnce() -> Result<T, E>,
    E: 'static,
    F: FnMut() -> B,
    B: AsyncFnOnce(&mut Conn<S>) -> Result<T, E>,
{
    let Business {
        store,
        key,
        kit,
        strategy,
        on_duplicate,
    } = call;
    let body = move || {
        let body = body();
        async move |conn: &mut Conn<S>| kit.wrap(body(conn).await)
    };
    let on_duplicate = async move || {
        crate::telemetry::event(crate::telemetry::Decision::Duplicate);
        match on_duplicate {
            Some(handler) => kit.wrap(handler().await),
            None => Err(Failure::Runtime(Error::Duplicate)),
        }
    };
    kit.split(strategy.run(store, key, body, on_duplicate).await)
}

/// Implements [`BusinessStrategy`] for `$ty` by calling `$run`, whose arguments are listed
/// by name (`strategy` is `self`).
macro_rules! business_strategy {
    ($(#[$meta:meta])* [$($generics:tt)*] $ty:ty, $name:literal, |$this:ident| $table:expr, |$store:ident, $key:ident, $body:ident, $dup:ident| $call:expr) => {
        $(#[$meta])*
        impl<DB: BusinessBackend, $($generics)*> BusinessStrategy<DB> for $ty {
            #[allow(unused_variables)]
            async fn run<S, K, T, E, F, B, D>(
                self,
                $store: S,
                $key: K,
                $body: F,
                $dup: D,
            ) -> Result<T, E>
            where
                S: TxStore<Database = DB>,
                K: KeyValues<DB>,
                E: From<Error> + StdError + 'static,
                F: FnMut() -> B,
                B: AsyncFnOnce(&mut <DB as Database>::Connection) -> Result<T, E>,
                D: AsyncFnOnce() -> Result<T, E>,
            {
                let $this = self;
                let table: &str = $table;
                let traced = crate::telemetry::traced_business($name, <DB as Database>::NAME, table);
                traced.run($call).await
            }
        }
    };
}

/// `select_before_insert`: [`crate::strategy::select_before_insert::run`].
pub struct SelectBeforeInsert {
    /// The business table and key column(s).
    pub target: Target,
}

business_strategy!([] SelectBeforeInsert, "select_before_insert", |this| this.target.table.as_str(), |store, key, body, on_duplicate| {
    crate::strategy::select_before_insert::run(store, this.target, key, body, on_duplicate)
});

/// `pessimistic`: [`crate::strategy::pessimistic::run`] (the body decides about duplicates).
pub struct Pessimistic {
    /// The business table and key column(s).
    pub target: Target,
}

business_strategy!([] Pessimistic, "pessimistic", |this| this.target.table.as_str(), |store, key, body, on_duplicate| {
    crate::strategy::pessimistic::run(store, this.target, key, body)
});

/// `optimistic`: [`crate::strategy::optimistic::run`] with the version the caller read.
pub struct Optimistic<V> {
    /// The business table and key column(s).
    pub target: Target,
    /// The expected version, through `VersionValueArg`.
    pub version: V,
}

business_strategy!(
    []
    Optimistic<&(dyn BindValue<DB> + '_)>,
    "optimistic",
    |this| this.target.table.as_str(),
    |store, key, body, on_duplicate| {
        crate::strategy::optimistic::run_bound(
            store,
            this.target,
            key,
            this.version,
            body,
            on_duplicate,
        )
    }
);

business_strategy!([] UniqueIndex, "unique_index", |this| this.target.map_or("", |t| t.table.as_str()), |store, key, body, on_duplicate| {
    crate::strategy::unique_index::run(store, this, key, body, on_duplicate)
});

business_strategy!([] StateMachine, "state_machine", |this| this.target.table.as_str(), |store, key, body, on_duplicate| {
    crate::strategy::state_machine::run(store, this, key, body, on_duplicate)
});
