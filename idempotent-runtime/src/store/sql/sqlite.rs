//! SQLite: its dialect (`?n` placeholders, `julianday('now')` as now, `ON CONFLICT DO
//! NOTHING`, no row locks, `BEGIN IMMEDIATE` so the write lock is taken up front), its claim
//! SQL, its migration (`migrations/sqlite.sql`), its business-table and `#[tx]` impls
//! (`&mut SqliteConnection`), [`FencingToken`](crate::FencingToken) as an `INTEGER`, and its database errors: their type and which are retryable.

use std::error::Error as StdError;

use sqlx::error::DatabaseError;
use sqlx::{Pool, Sqlite};

use super::SqlText;
use super::errors::Class;
use crate::Error;

/// The claim statements: time is `julianday('now')` in Unix ms (the process's clock: SQLite
/// has no server, hence `shared_clock = false` and claims judged dead by watching them, see
/// [`ClaimStore::SHARED_CLOCK`](crate::store::ClaimStore::SHARED_CLOCK)).
const SQL: SqlText = sql_text!(
    now = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
    p = ["?1", "?2", "?3", "?4", "?5", "?6", "?7"],
    on_conflict = " ON CONFLICT (idempotency_key) DO NOTHING",
    read_lock = ""
);

sql_backend!(
    database = Sqlite,
    connection = sqlx::SqliteConnection,
    begin = Some("BEGIN IMMEDIATE"),
    shared_clock = false,
    sql = SQL,
    migrate = migrate,
    write_turn = write_turn,
);

/// This process's turn to write claim-mode statements to `pool`'s database file: one
/// first-in-first-out gate per file name ([`SqlBackend::write_turn`](super::SqlBackend::write_turn)).
///
/// Keyed by the pool's file name (`SqliteConnectOptions::get_filename`), so pools opened on the
/// same name share one gate. `sqlite::memory:` pools are named `file:sqlx-in-memory-<n>`, one
/// `n` per options value: each in-memory database (shared by the connections of its pool and
/// its clones) has a gate of its own, and distinct in-memory pools never share one. `:memory:`
/// and `""` (each connection its own private database) need none. One file named two ways
/// (a relative and an absolute path) gets two gates: correct, only less smooth, as SQLite's
/// own lock still decides between them.
async fn write_turn(pool: &Pool<Sqlite>) -> Option<super::WriteTurn> {
    let gate = gates::of(pool.connect_options().get_filename())?;
    Some(super::WriteTurn::wait(gate).await)
}

/// The write gates by database file name.
mod gates {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, LazyLock, Mutex, PoisonError};

    /// One gate per database file name.
    type Gates = HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>;

    /// Past this many names, gates nobody holds or waits for are forgotten (a new one is made
    /// when the name comes back), so a process opening many short-lived in-memory databases
    /// does not keep a gate for each.
    pub(super) const PRUNE_ABOVE: usize = 256;

    static GATES: LazyLock<Mutex<Gates>> = LazyLock::new(Mutex::default);

    /// The gate of the database named `name`; `None` when each connection opens a private
    /// database of its own (`:memory:`, `""`).
    pub(super) fn of(name: &Path) -> Option<Arc<tokio::sync::Mutex<()>>> {
        if name.as_os_str().is_empty() || name == Path::new(":memory:") {
            return None;
        }
        // Never held across an await; a panic while held cannot leave the map inconsistent.
        let mut gates = GATES.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(gate) = gates.get(name) {
            return Some(gate.clone());
        }
        if gates.len() >= PRUNE_ABOVE {
            // A gate is cloned only under this lock, and every holder and waiter keeps a
            // clone: one referenced by the map alone is idle, and forgetting it is safe.
            gates.retain(|_, gate| Arc::strong_count(gate) > 1);
        }
        Some(gates.entry(name.to_owned()).or_default().clone())
    }
}

tx_store!(database = Sqlite, connection = sqlx::SqliteConnection);

business_backend!(
    database = Sqlite,
    connection = sqlx::SqliteConnection,
    lock_for_update = "",
    read_latest = "",
    names_constraints = false,
    placeholder = |i: usize| format!("?{i}"),
    // `BEGIN IMMEDIATE` already holds the database's write lock.
    key_lock = |_, _| None,
);


// `FencingToken` binds as a INTEGER.
fencing_token_type!(database = Sqlite);

/// Runs `migrations/sqlite.sql`.
async fn migrate(pool: &Pool<Sqlite>) -> Result<(), Error> {
    let mut tx = super::begin_on_pool(pool, Some("BEGIN IMMEDIATE")).await?;
    for stmt in super::statements(include_str!("../../../migrations/sqlite.sql")) {
        sqlx::query(sqlx::AssertSqlSafe(stmt))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// `e` as SQLite's own database error, as a body may expose it unboxed.
pub(super) fn database_error<'a>(
    e: &'a (dyn StdError + 'static),
) -> Option<&'a (dyn DatabaseError + 'static)> {
    e.downcast_ref::<sqlx::sqlite::SqliteError>()
        .map(|d| d as &(dyn DatabaseError + 'static))
}

/// `SQLITE_BUSY`: another connection holds a lock this one needs (after the busy timeout).
const SQLITE_BUSY: i32 = 5;
/// `SQLITE_LOCKED`: a lock conflict within this process's shared cache.
const SQLITE_LOCKED: i32 = 6;

/// `true` for a busy or locked result, extended code included: sqlx reports SQLite's extended
/// result code, whose low byte is the primary code — `SQLITE_BUSY_RECOVERY` (261),
/// `SQLITE_BUSY_SNAPSHOT` (517: a deferred transaction's snapshot is stale, only a new
/// transaction can write), `SQLITE_BUSY_TIMEOUT` (773), `SQLITE_LOCKED_SHAREDCACHE` (262),
/// `SQLITE_LOCKED_VTAB` (518).
fn retryable(extended_code: i32) -> bool {
    matches!(extended_code & 0xff, SQLITE_BUSY | SQLITE_LOCKED)
}

/// SQLite's classification of its own errors (`None`: not a SQLite error): busy and locked
/// codes are retryable; unique violations by sqlx's kind (2067, 1555; SQLite names no
/// constraint).
pub(super) fn classify<'a>(d: &'a (dyn DatabaseError + 'static)) -> Option<Class<'a>> {
    d.try_downcast_ref::<sqlx::sqlite::SqliteError>()?;
    let code = d.code().and_then(|c| c.parse::<i32>().ok());
    Some(if code.is_some_and(retryable) {
        Class::Retryable
    } else if d.kind() == sqlx::error::ErrorKind::UniqueViolation {
        Class::Unique {
            constraint: d.constraint(),
        }
    } else {
        Class::Other
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::str::FromStr;
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

    use super::gates;
    use crate::store::sql::SqlBackend;

    /// `f`'s output if it is ready at its first poll.
    fn ready_now<F: Future>(f: F) -> Option<F::Output> {
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        }
    }

    /// One gate per database name; none where each connection has a private database.
    #[test]
    fn gates_are_per_database_name() {
        assert!(gates::of(Path::new(":memory:")).is_none());
        assert!(gates::of(Path::new("")).is_none());
        let a = gates::of(Path::new("/tmp/gates-test-a.db")).unwrap();
        let again = gates::of(Path::new("/tmp/gates-test-a.db")).unwrap();
        let b = gates::of(Path::new("/tmp/gates-test-b.db")).unwrap();
        assert!(Arc::ptr_eq(&a, &again));
        assert!(!Arc::ptr_eq(&a, &b));
    }

    /// Past the limit, gates nobody holds are forgotten; one held is kept.
    #[test]
    fn only_idle_gates_are_forgotten() {
        let held = gates::of(Path::new("/tmp/gates-test-held.db")).unwrap();
        let idle = Arc::downgrade(&gates::of(Path::new("/tmp/gates-test-idle.db")).unwrap());
        for i in 0..=gates::PRUNE_ABOVE {
            gates::of(Path::new(&format!("/tmp/gates-test-{i}.db")));
        }
        assert!(idle.upgrade().is_none(), "the idle gate was forgotten");
        let same = gates::of(Path::new("/tmp/gates-test-held.db")).unwrap();
        assert!(Arc::ptr_eq(&held, &same), "the held gate was kept");
    }

    /// A turn makes the next writer of its database wait, not a writer of another database:
    /// two `sqlite::memory:` pools are two databases; a pool's clone is the same one; a pool
    /// whose every connection opens a private database (`:memory:` by file name) needs none.
    #[tokio::test]
    async fn a_turn_excludes_writers_of_its_database_only() {
        let pool = |options: SqliteConnectOptions| {
            SqlitePoolOptions::new()
                .max_connections(2)
                .connect_lazy_with(options)
        };
        let memory = || SqliteConnectOptions::from_str("sqlite::memory:").unwrap();
        let (one, other) = (pool(memory()), pool(memory()));
        let clone = one.clone();
        let held = sqlx::Sqlite::write_turn(&one).await.unwrap();
        assert!(ready_now(sqlx::Sqlite::write_turn(&clone)).is_none());
        assert!(ready_now(sqlx::Sqlite::write_turn(&other)).unwrap().is_some());
        let waiting = tokio::spawn(async move { sqlx::Sqlite::write_turn(&clone).await.is_some() });
        drop(held);
        assert!(waiting.await.unwrap());
        let private = pool(SqliteConnectOptions::new());
        assert!(sqlx::Sqlite::write_turn(&private).await.is_none());
    }

    #[test]
    fn busy_and_locked_codes_are_retryable() {
        for code in [5, 261, 517, 773, 6, 262, 518] {
            assert!(super::retryable(code), "{code}");
        }
        // SQLITE_ERROR, SQLITE_CONSTRAINT_UNIQUE, _PRIMARYKEY, _FOREIGNKEY, SQLITE_READONLY.
        for code in [1, 2067, 1555, 787, 8] {
            assert!(!super::retryable(code), "{code}");
        }
    }
}
