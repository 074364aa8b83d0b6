//! The checks the generated code makes of the user's types and values.
//!
//! Each is a trait whose only bound a user can break is `Self: Trait`, called through the
//! trait's path (`Trait::f(&(value))`), so that a value of the wrong type is one error at the
//! user's token, worded by the trait's `on_unimplemented`, with no "required by a bound in"
//! note pointing into this crate. Each impl is a blanket one marked
//! `#[diagnostic::do_not_recommend]`, so that rustc reports the check itself (with its message)
//! rather than the bound behind it, and lists no impls.
//!
//! Nothing after a check may be reported again for the same mistake, so a check either does
//! the work itself and returns a type that does not depend on the checked one
//! ([`KeyPartArg`], `KeyValueArg`), or returns a projection that has no
//! value when the check fails (`TxParam`), which rustc does not check any further.

use super::KeyBuilder;
use crate::key::KeyPart;

/// A key or scope part: a [`KeyPart`], added to the key by the check itself.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be part of an idempotency key or scope: it does not implement `KeyPart`",
    label = "this key part is a `{Self}`",
    note = "key parts are strings, byte strings, integers and `uuid::Uuid` (feature `uuid`), and references to them: point `key`/`scope` at such a field (e.g. \"req.id.0\" for a newtype around one), or convert the value in the expression (e.g. `key = \"req.ip.to_string()\"`)",
    note = "an `Option` is not a key part, and a default for `None` (`unwrap_or_default()`) would give every request without a key one shared key, or an empty one, rejected at run time: key on a field that is always set, or take the key as a parameter of its own (`key: &str` with `key = \"key\"`) that the caller passes only when it has one",
    note = "`idempotent_runtime::KeyPart` can be implemented only in the crate that defines the type: for a type of another crate, convert it as above or wrap it in a newtype of your own"
)]
pub trait KeyPartArg {
    /// Adds `self` to `key` as its next part.
    fn add_part(&self, key: KeyBuilder) -> KeyBuilder;
    /// Sets `self` as `key`'s scope.
    fn add_scope(&self, key: KeyBuilder) -> KeyBuilder;
    /// `self` as a key part of a type that does not depend on `Self` (the `token` strategy's
    /// token), copied out: it is `Send + Sync` whatever `Self` is.
    fn key_part(&self) -> OwnedKeyPart;
}

/// A key part copied out of the value it was read from: its type tag and canonical bytes.
pub struct OwnedKeyPart {
    tag: u8,
    bytes: Vec<u8>,
}

impl KeyPart for OwnedKeyPart {
    fn tag(&self) -> u8 {
        self.tag
    }
    fn write_bytes(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.bytes)
    }
}

#[diagnostic::do_not_recommend]
impl<K: KeyPart + ?Sized> KeyPartArg for K {
    #[inline(always)]
    fn add_part(&self, key: KeyBuilder) -> KeyBuilder {
        key.part(self)
    }
    #[inline(always)]
    fn add_scope(&self, key: KeyBuilder) -> KeyBuilder {
        key.scope(self)
    }
    fn key_part(&self) -> OwnedKeyPart {
        let mut bytes = Vec::new();
        self.write_bytes(&mut bytes);
        OwnedKeyPart {
            tag: self.tag(),
            bytes,
        }
    }
}

#[cfg(feature = "sqlx")]
pub use sql::*;

#[cfg(feature = "sqlx")]
mod sql {
    use std::marker::PhantomData;

    use sqlx::Database;

    use crate::store::sql::TxStore;
    use crate::store::sql::business::{BindValue, KeyValue, VersionValue};

    /// The connection the `#[tx]` parameter is lent, of type `Self`, for the store `S`: the
    /// user's type `W` must be `&mut Self`. Called as `<_ as TxParam<W, _>>::tx_param(store,
    /// connection)` with `connection = connection_of(&store)`, spanned at `W` (the store
    /// first, so that its type is known when the message names it); when `W` is another type
    /// the store comes back as a type that has no value, so nothing downstream (the body's
    /// `let tx: W`) is reported again.
    #[diagnostic::on_unimplemented(
        message = "the store `{S}` opens `{Self}` transactions, so `#[tx]` must be `&mut {Self}`",
        label = "the `#[tx]` parameter must be `&mut {Self}`",
        note = "write `#[tx] tx: &mut {Self}`, or name a store of the database the body works with in `store = \"...\"`"
    )]
    pub trait TxParam<W, S> {
        /// The store, when `W` is `&mut Self`.
        type Store;
        /// The store, when `W` is `&mut Self`.
        fn tx_param(store: S, connection: PhantomData<Self>) -> Self::Store;
    }

    #[diagnostic::do_not_recommend]
    impl<C, S> TxParam<&mut C, S> for C {
        type Store = S;
        #[inline(always)]
        fn tx_param(store: S, _: PhantomData<C>) -> S {
            store
        }
    }

    /// The connection type a transactional store lends the body.
    #[inline(always)]
    pub fn connection_of<S: TxStore>(_: &S) -> PhantomData<super::super::business::Conn<S>> {
        PhantomData
    }

    /// The database of a transactional store, for [`KeyValueArg`] and [`VersionValueArg`].
    #[inline(always)]
    pub fn database_of<S: TxStore>(_: &S) -> PhantomData<S::Database> {
        PhantomData
    }

    /// A business-table key part: a value sqlx binds for the store's database `DB`.
    #[diagnostic::on_unimplemented(
        message = "the key part `{Self}` cannot be bound to a column by sqlx for `{DB}`",
        label = "this key part is a `{Self}`",
        note = "a business-table strategy compares each key part with its column: give a key part of a column type (`String`, `&str`, an integer, …), or a field of one, or convert it in the expression (e.g. `key = \"req.window.as_secs() as i64\"`)"
    )]
    pub trait KeyValueArg<DB: Database> {
        /// `value` as a value to bind for `database` (given first, so that rustc knows the
        /// database before it looks at the value), of a type that does not depend on `Self`.
        fn key_value(database: PhantomData<DB>, value: &Self) -> &(dyn BindValue<DB> + '_);
    }

    #[diagnostic::do_not_recommend]
    impl<DB: Database, T: KeyValue<DB>> KeyValueArg<DB> for T {
        #[inline(always)]
        fn key_value(_: PhantomData<DB>, value: &T) -> &(dyn BindValue<DB> + '_) {
            value
        }
    }

    /// `optimistic`'s expected version: a value sqlx binds for the store's database `DB`.
    #[diagnostic::on_unimplemented(
        message = "the `version` value `{Self}` cannot be bound by sqlx for `{DB}`",
        label = "the `version` of this key's row is a `{Self}`",
        note = "`optimistic` compares the version column with the version the caller read: write `version = \"...\"` naming an integer field (`i32`, `i64`) of the column's type"
    )]
    pub trait VersionValueArg<DB: Database> {
        /// `value` as a value to bind for `database` (given first, see `KeyValueArg`), of a
        /// type that does not depend on `Self`.
        fn version_value(database: PhantomData<DB>, value: &Self) -> &(dyn BindValue<DB> + '_);
    }

    #[diagnostic::do_not_recommend]
    impl<DB: Database, T: VersionValue<DB>> VersionValueArg<DB> for T {
        #[inline(always)]
        fn version_value(_: PhantomData<DB>, value: &T) -> &(dyn BindValue<DB> + '_) {
            value
        }
    }
}
