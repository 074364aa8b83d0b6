//! Business-table access for the SQL strategies that guard the application's own rows
//! (`select_before_insert`, `pessimistic`, `optimistic`, `unique_index`, `state_machine`).
//!
//! SQL text is assembled only from [`SqlIdent`]s — identifiers checked when the program is
//! compiled (the macro emits them in `const` blocks, so a bad one is a compile error) — and each
//! backend's placeholders. Every user value (key parts, versions, states) is a bound parameter.
//!
//! Each database implements [`BusinessBackend`] in its own file (`postgres.rs`, `mysql.rs`,
//! `sqlite.rs`, through `business_backend!`).

use std::future::Future;

use sqlx::Database;
use sqlx::encode::Encode;
use sqlx::types::Type;

use super::SqlBackend;

/// A query with its arguments, as the business-table helpers pass it around.
pub type Query<DB> = sqlx::query::Query<'static, DB, <DB as Database>::Arguments>;

/// A SQL identifier (table, column, constraint): `[A-Za-z_][A-Za-z0-9_]*`, at most 63 bytes.
///
/// Built with [`SqlIdent::new`] in a `const` context, so a name that is not a plain identifier
/// fails compilation; it is then safe to splice into SQL unquoted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlIdent(&'static str);

impl SqlIdent {
    /// Checks `name` and wraps it. Panics (a compile error in `const` context) when `name` is not
    /// a plain SQL identifier.
    pub const fn new(name: &'static str) -> SqlIdent {
        let b = name.as_bytes();
        assert!(
            !b.is_empty() && b.len() <= 63,
            "SQL identifier must be 1 to 63 bytes"
        );
        assert!(
            b[0].is_ascii_alphabetic() || b[0] == b'_',
            "SQL identifier must start with a letter or `_`"
        );
        let mut i = 1;
        while i < b.len() {
            assert!(
                b[i].is_ascii_alphanumeric() || b[i] == b'_',
                "SQL identifier takes letters, digits and `_` only"
            );
            i += 1;
        }
        SqlIdent(name)
    }

    /// The identifier's text.
    pub const fn as_str(self) -> &'static str {
        self.0
    }
}

/// The business table a strategy guards and the key column(s) its idempotency key lives in
/// (one column per key part, in the same order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// The table.
    pub table: SqlIdent,
    /// The key columns, one per key part.
    pub columns: &'static [SqlIdent],
}

impl Target {
    /// `c1 = p(first) AND c2 = p(first + 1) …` with the backend's placeholders.
    pub(crate) fn key_predicate<DB: BusinessBackend>(&self, first: usize) -> String {
        self.columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{} = {}", c.as_str(), DB::placeholder(first + i)))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// `SELECT 1 FROM table WHERE <key> <suffix>`.
    pub(crate) fn exists_sql<DB: BusinessBackend>(&self, suffix: &str) -> String {
        format!(
            "SELECT 1 FROM {} WHERE {}{}",
            self.table.as_str(),
            self.key_predicate::<DB>(1),
            suffix
        )
    }
}

/// The values of an idempotency key's parts, bound in order to [`Target::columns`].
///
/// Implemented for tuples of one to four values, each a [`KeyValue`] of the database.
pub trait KeyValues<DB: Database>: Send + Sync {
    /// How many parts.
    const COUNT: usize;
    /// Binds every part to `q`, in order.
    fn bind_to(&self, q: Query<DB>) -> Query<DB>;
}

/// One key part's value, as the database binds it: sqlx's `Encode + Type` (strings,
/// integers, uuids, … and references to them), shareable across threads.
#[diagnostic::on_unimplemented(
    message = "the key part `{Self}` cannot be bound to a column by sqlx for `{DB}`",
    label = "this key part is a `{Self}`",
    note = "a business-table strategy compares each key part with its column: give a key part of a column type (`String`, `&str`, an integer, `Uuid`, …), or a field of one"
)]
pub trait KeyValue<DB: Database>: for<'t> Encode<'t, DB> + Type<DB> + Send + Sync {}

#[diagnostic::do_not_recommend]
impl<DB: Database, T> KeyValue<DB> for T where T: for<'t> Encode<'t, DB> + Type<DB> + Send + Sync {}

/// The version an `optimistic` caller read, as the database binds it: sqlx's `Encode + Type`
/// (an integer, or a reference to one), shareable across threads. One trait instead of two
/// bounds, so that a version sqlx cannot bind is one compile error naming `version`.
#[diagnostic::on_unimplemented(
    message = "the `version` value `{Self}` cannot be bound by sqlx for `{DB}`",
    label = "the `version` of this key's row is a `{Self}`",
    note = "`optimistic` compares the version column with the version the caller read: write `version = \"...\"` naming an integer field (`i32`, `i64`) of the column's type"
)]
pub trait VersionValue<DB: Database>: for<'t> Encode<'t, DB> + Type<DB> + Send + Sync {}

#[diagnostic::do_not_recommend]
impl<DB: Database, T> VersionValue<DB> for T where T: for<'t> Encode<'t, DB> + Type<DB> + Send + Sync
{}

/// A value bound by reference to a query: every [`KeyValue`] (a [`VersionValue`] has the same
/// bounds). The generated code hands key parts and versions to the strategies as
/// `&dyn BindValue<DB>`, each checked where it is written (`__private::KeyValueArg`), so a
/// value sqlx cannot bind is one error at that value and nothing downstream depends on its type.
pub trait BindValue<DB: Database>: Send + Sync {
    /// Binds the value to `q` as its next parameter.
    fn bind_into(&self, q: Query<DB>) -> Query<DB>;
}

impl<DB: Database, T: KeyValue<DB>> BindValue<DB> for T {
    fn bind_into(&self, q: Query<DB>) -> Query<DB> {
        q.bind(self)
    }
}

/// The key parts as the generated code passes them: one checked `&dyn BindValue` per part.
impl<DB: Database, const N: usize> KeyValues<DB> for [&(dyn BindValue<DB> + '_); N] {
    const COUNT: usize = N;
    fn bind_to(&self, q: Query<DB>) -> Query<DB> {
        self.iter().fold(q, |q, value| value.bind_into(q))
    }
}

macro_rules! key_values {
    ($n:literal; $($t:ident . $i:tt),+) => {
        impl<DB: Database, $($t),+> KeyValues<DB> for ($($t,)+)
        where
            $($t: KeyValue<DB>,)+
        {
            const COUNT: usize = $n;
            fn bind_to(&self, q: Query<DB>) -> Query<DB> {
                q $(.bind(&self.$i))+
            }
        }
    };
}
key_values!(1; A.0);
key_values!(2; A.0, B.1);
key_values!(3; A.0, B.1, C.2);
key_values!(4; A.0, B.1, C.2, D.3);

/// What the business-table strategies need from a database beyond [`SqlBackend`]: its
/// placeholders, its row-lock clauses and three ways to run a statement on a connection.
///
/// Implemented for `sqlx::Postgres`, `sqlx::MySql` and `sqlx::Sqlite`, each in its own file.
/// Errors are sqlx's.
pub trait BusinessBackend: SqlBackend {
    /// The `i`-th (1-based) bind placeholder: `$i` (PostgreSQL), `?` (MySQL), `?i` (SQLite).
    fn placeholder(i: usize) -> String;
    /// Whether a unique violation names the violated constraint (`DatabaseError::constraint`):
    /// PostgreSQL does; MySQL/MariaDB and SQLite do not (their messages name a key or the
    /// columns, and message text is never parsed).
    const NAMES_CONSTRAINTS: bool;
    /// Appended to a SELECT to lock the rows it reads for update: `" FOR UPDATE"`; empty on
    /// SQLite, whose `BEGIN IMMEDIATE` already holds the database's write lock.
    const LOCK_FOR_UPDATE: &'static str;
    /// Appended to a SELECT that must read the latest committed row rather than the
    /// transaction's snapshot: `" LOCK IN SHARE MODE"` on MySQL/MariaDB (REPEATABLE READ),
    /// empty elsewhere.
    const READ_LATEST: &'static str;
    /// The statement that takes a transaction-scoped lock on one key of `table` (`parts` key
    /// values bound in order), whether or not its row exists — so that `pessimistic` excludes
    /// concurrent first calls for a missing row, where a row lock locks nothing. PostgreSQL:
    /// `pg_advisory_xact_lock` on a hash of (table, key) in the two-`int4` key space; `None` on
    /// MySQL/MariaDB (the locking read of a missing key locks the gap, or the whole scan
    /// without an index) and SQLite (`BEGIN IMMEDIATE` holds the database's write lock).
    fn key_lock_sql(table: SqlIdent, parts: usize) -> Option<String>;
    /// Binds a text value (a state of `state_machine`) to `q`.
    fn bind_text(q: Query<Self>, value: &'static str) -> Query<Self>;
    /// Runs `q`, returning the affected rows (MySQL: matched rows).
    fn execute(
        conn: &mut Self::Connection,
        q: Query<Self>,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;
    /// Runs `q`, returning whether it produced a row.
    fn fetch_exists(
        conn: &mut Self::Connection,
        q: Query<Self>,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send;
    /// Runs `q`, returning the first row's first column as text (`None`: no row).
    fn fetch_text(
        conn: &mut Self::Connection,
        q: Query<Self>,
    ) -> impl Future<Output = Result<Option<Option<String>>, sqlx::Error>> + Send;
}

/// A statement built from checked identifiers, ready to bind.
pub(crate) fn query<DB: Database>(sql: &str) -> Query<DB> {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
}
