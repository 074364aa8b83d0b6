//! The five business-table strategies' entry points without bounds on the user's `E`: they
//! take an [`ErrorKit`] (built where `E` is written, so an unmet bound is reported there
//! once) and call the strategies with [`SqlError`], which meets their bounds for any `E`.

use std::error::Error as StdError;
use std::fmt;

use sqlx::{Database, Encode, Type};

use crate::Error;
use crate::store::business::{BusinessBackend, KeyValues, Target};
use crate::store::sql::TxStore;

/// How the wrapper handles the function's error type `E`: convert a runtime error into it,
/// and see it as a `std::error::Error` (the strategies look for database errors in its
/// source chain).
pub struct ErrorKit<E> {
    into_error: fn(Error) -> E,
    as_std: fn(&E) -> &(dyn StdError + 'static),
}

impl<E> Clone for ErrorKit<E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E> Copy for ErrorKit<E> {}

/// The [`ErrorKit`] of `E`; checks `E`'s bounds where the wrapper spans it (at `E`).
#[inline(always)]
pub fn error_kit<E: crate::SqlFunctionError>() -> ErrorKit<E> {
    ErrorKit {
        into_error: E::from,
        as_std: |e| e,
    }
}

impl<E> ErrorKit<E> {
    /// The user's error back out of a strategy's result.
    #[inline(always)]
    fn split<T>(self, result: Result<T, SqlError<E>>) -> Result<T, E> {
        match result {
            Ok(value) => Ok(value),
            Err(SqlError::Body(e, _)) => Err(e),
            Err(SqlError::Runtime(e)) => Err((self.into_error)(e)),
        }
    }

    /// Wraps the body's error, keeping it visible as a `std::error::Error`.
    #[inline(always)]
    fn wrap<T>(self, result: Result<T, E>) -> Result<T, SqlError<E>> {
        result.map_err(|e| SqlError::Body(e, self.as_std))
    }
}

/// The body's error (with its [`StdError`] view) or a runtime error: what the strategies see.
pub enum SqlError<E> {
    /// A runtime error, converted into `E` afterwards.
    Runtime(Error),
    /// The body's error, returned as it is.
    Body(E, fn(&E) -> &(dyn StdError + 'static)),
}

impl<E> From<Error> for SqlError<E> {
    fn from(e: Error) -> Self {
        SqlError::Runtime(e)
    }
}

impl<E> fmt::Debug for SqlError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SqlError::Runtime(e) => fmt::Debug::fmt(e, f),
            SqlError::Body(e, as_std) => fmt::Debug::fmt(as_std(e), f),
        }
    }
}

impl<E> fmt::Display for SqlError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SqlError::Runtime(e) => fmt::Display::fmt(e, f),
            SqlError::Body(e, as_std) => fmt::Display::fmt(as_std(e), f),
        }
    }
}

/// The source is the wrapped error itself, so a database error anywhere in the body's chain
/// is still found.
impl<E: 'static> StdError for SqlError<E> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            SqlError::Runtime(e) => Some(e),
            SqlError::Body(e, as_std) => Some(as_std(e)),
        }
    }
}

/// The body's connection type for store `S`.
type Conn<S> = <<S as TxStore>::Database as Database>::Connection;

/// The body factory, with the body's error wrapped.
macro_rules! wrapped_body {
    ($kit:ident, $body:ident, $S:ty) => {
        move || {
            let body = $body();
            async move |conn: &mut Conn<$S>| $kit.wrap(body(conn).await)
        }
    };
}

/// `select_before_insert`'s entry point, see [`crate::strategy::select_before_insert::run`].
pub mod select_before_insert {
    use super::*;

    /// [`crate::strategy::select_before_insert::run`] with `kit` for the bounds on `E`.
    #[allow(clippy::too_many_arguments)]
    pub async fn run<S, K, T, E, F, B, D>(
        store: S,
        target: Target,
        key: K,
        kit: ErrorKit<E>,
        mut body: F,
        on_duplicate: D,
    ) -> Result<T, E>
    where
        S: TxStore,
        S::Database: BusinessBackend,
        K: KeyValues<S::Database>,
        E: 'static,
        F: FnMut() -> B,
        B: AsyncFnOnce(&mut Conn<S>) -> Result<T, E>,
        D: AsyncFnOnce() -> Result<T, E>,
    {
        let body = wrapped_body!(kit, body, S);
        let on_duplicate = async move || kit.wrap(on_duplicate().await);
        let result =
            crate::strategy::select_before_insert::run(store, target, key, body, on_duplicate)
                .await;
        kit.split(result)
    }
}

/// `pessimistic`'s entry point, see [`crate::strategy::pessimistic::run`].
pub mod pessimistic {
    use super::*;

    /// [`crate::strategy::pessimistic::run`] with `kit` for the bounds on `E`.
    pub async fn run<S, K, T, E, F, B>(
        store: S,
        target: Target,
        key: K,
        kit: ErrorKit<E>,
        mut body: F,
    ) -> Result<T, E>
    where
        S: TxStore,
        S::Database: BusinessBackend,
        K: KeyValues<S::Database>,
        E: 'static,
        F: FnMut() -> B,
        B: AsyncFnOnce(&mut Conn<S>) -> Result<T, E>,
    {
        let body = wrapped_body!(kit, body, S);
        let result = crate::strategy::pessimistic::run(store, target, key, body).await;
        kit.split(result)
    }
}

/// `optimistic`'s entry point, see [`crate::strategy::optimistic::run`].
pub mod optimistic {
    use super::*;

    /// [`crate::strategy::optimistic::run`] with `kit` for the bounds on `E`.
    #[allow(clippy::too_many_arguments)]
    pub async fn run<S, K, V, T, E, F, B, D>(
        store: S,
        target: Target,
        key: K,
        expected_version: V,
        kit: ErrorKit<E>,
        mut body: F,
        on_duplicate: D,
    ) -> Result<T, E>
    where
        S: TxStore,
        S::Database: BusinessBackend,
        K: KeyValues<S::Database>,
        V: for<'t> Encode<'t, S::Database> + Type<S::Database> + Send + Sync,
        E: 'static,
        F: FnMut() -> B,
        B: AsyncFnOnce(&mut Conn<S>) -> Result<T, E>,
        D: AsyncFnOnce() -> Result<T, E>,
    {
        let body = wrapped_body!(kit, body, S);
        let on_duplicate = async move || kit.wrap(on_duplicate().await);
        let result = crate::strategy::optimistic::run(
            store,
            target,
            key,
            expected_version,
            body,
            on_duplicate,
        )
        .await;
        kit.split(result)
    }
}

/// `unique_index`'s entry point, see [`crate::strategy::unique_index::run`].
pub mod unique_index {
    pub use crate::strategy::unique_index::Options;

    use super::*;

    /// [`crate::strategy::unique_index::run`] with `kit` for the bounds on `E`.
    pub async fn run<S, K, T, E, F, B, D>(
        store: S,
        options: Options,
        key: K,
        kit: ErrorKit<E>,
        mut body: F,
        on_duplicate: D,
    ) -> Result<T, E>
    where
        S: TxStore,
        S::Database: BusinessBackend,
        K: KeyValues<S::Database>,
        E: 'static,
        F: FnMut() -> B,
        B: AsyncFnOnce(&mut Conn<S>) -> Result<T, E>,
        D: AsyncFnOnce() -> Result<T, E>,
    {
        let body = wrapped_body!(kit, body, S);
        let on_duplicate = async move || kit.wrap(on_duplicate().await);
        let result =
            crate::strategy::unique_index::run(store, options, key, body, on_duplicate).await;
        kit.split(result)
    }
}

/// `state_machine`'s entry point, see [`crate::strategy::state_machine::run`].
pub mod state_machine {
    pub use crate::strategy::state_machine::Transition;

    use super::*;

    /// [`crate::strategy::state_machine::run`] with `kit` for the bounds on `E`.
    pub async fn run<S, K, T, E, F, B, D>(
        store: S,
        transition: Transition,
        key: K,
        kit: ErrorKit<E>,
        mut body: F,
        on_duplicate: D,
    ) -> Result<T, E>
    where
        S: TxStore,
        S::Database: BusinessBackend,
        K: KeyValues<S::Database>,
        E: 'static,
        F: FnMut() -> B,
        B: AsyncFnOnce(&mut Conn<S>) -> Result<T, E>,
        D: AsyncFnOnce() -> Result<T, E>,
    {
        let body = wrapped_body!(kit, body, S);
        let on_duplicate = async move || kit.wrap(on_duplicate().await);
        let result =
            crate::strategy::state_machine::run(store, transition, key, body, on_duplicate).await;
        kit.split(result)
    }
}
