//! Operating the `dedup_table` record store: look at one idempotency key's record
//! ([`inspect`]), remove it ([`evict`]), and delete expired records in batches
//! ([`purge_expired`]). The `idempotent-admin` command of the examples crate calls these.
//!
//! A key is named as the wrapper names it: the operation name (`name = "..."`, by default
//! `module_path!()::fn_name`), the scope when the function has one, and the key parts as text
//! ([`storage_key`]); only the SHA-256 storage key reaches the store.
//!
//! Implemented ([`AdminStore`]) for the SQL pools (`PgPool`, `MySqlPool`, `SqlitePool`: the
//! `idempotency_records` table), [`MemoryStore`](crate::MemoryStore) (its records) and, with
//! the feature `redis`, `RedisStore` (its `dedup_table` record hashes; Redis expires them
//! itself, so a purge there deletes nothing and returns 0). Times are judged by the store's
//! clock, as the strategies judge them.

use std::future::Future;
use std::time::Duration;

use crate::store::Store;
use crate::{Error, KeyBuilder, StorageKey};

/// The state of one idempotency key's record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum KeyState {
    /// No record, or only one past its lease or TTL (it no longer counts).
    Absent,
    /// A call holds an unexpired claim on the key and is running.
    InProgress {
        /// The claim's owner token (random, 32 hex characters).
        owner: String,
        /// How much of its lease is left, by the store's clock.
        lease_left: Duration,
    },
    /// A call completed; its response is replayed to duplicates until the record expires.
    Completed {
        /// When the record was created (its first claim), Unix ms by the store's clock; `None`
        /// where the store does not keep it (memory).
        created_at_ms: Option<i64>,
        /// How long until the record expires (its TTL left).
        expires_in: Duration,
    },
}

/// What [`evict`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "evicted", rename_all = "snake_case")]
pub enum Evicted {
    /// The record was removed: the next call with the key runs the body.
    Removed,
    /// There was no record.
    Absent,
    /// Refused: a call holds a live claim on the key (its body may be running). Evicting it
    /// would let a duplicate run the body beside it; pass `force` to do it anyway.
    LiveClaim {
        /// How much of the claim's lease is left.
        lease_left: Duration,
    },
}

/// A store whose `dedup_table` records can be inspected, evicted and purged.
pub trait AdminStore: Store {
    /// `false` when [`purge_expired_batch`](AdminStore::purge_expired_batch) removes every
    /// expired record at once (the memory store), so [`purge_expired`] calls it once.
    const BATCHED: bool = true;

    /// The record of `key`. Errors: [`Error::Backend`], [`Error::Serialization`] (a malformed
    /// row).
    fn inspect_key(&self, key: &StorageKey)
    -> impl Future<Output = Result<KeyState, Error>> + Send;

    /// Removes the record of `key` in one step, unless it is a live in-progress claim and
    /// `force` is `false`. Errors: [`Error::Backend`].
    fn evict_key(
        &self,
        key: &StorageKey,
        force: bool,
    ) -> impl Future<Output = Result<Evicted, Error>> + Send;

    /// Deletes at most `batch` records past their lease or TTL, in one short statement (on
    /// SQL, one autocommit `DELETE` found through the `expires_at_ms` index where the backend
    /// has one); returns how many. Errors: [`Error::Backend`].
    fn purge_expired_batch(&self, batch: u32) -> impl Future<Output = Result<u64, Error>> + Send;
}

/// The storage key of `key_parts` under `operation` and `scope`, as `#[idempotent]` builds it
/// for string key parts. Errors: [`Error::InvalidKey`] (see [`KeyBuilder::finish`]).
pub fn storage_key(
    operation: &str,
    scope: Option<&str>,
    key_parts: &[&str],
) -> Result<StorageKey, Error> {
    let mut b = KeyBuilder::new(operation);
    if let Some(scope) = scope {
        b = b.scope(scope);
    }
    for part in key_parts {
        b = b.part(*part);
    }
    b.finish()
}

/// The state of the record of (`operation`, `scope`, `key_parts`) in `store`: in progress
/// with its owner and lease left, completed with its creation time and TTL left, or absent.
/// Errors: [`Error::InvalidKey`], [`Error::Backend`].
pub async fn inspect<S: AdminStore>(
    store: &S,
    operation: &str,
    scope: Option<&str>,
    key_parts: &[&str],
) -> Result<KeyState, Error> {
    store
        .inspect_key(&storage_key(operation, scope, key_parts)?)
        .await
}

/// Removes the record of (`operation`, `scope`, `key_parts`) from `store`, so the next call
/// runs the body again; a live in-progress claim is left alone ([`Evicted::LiveClaim`])
/// unless `force`. Errors: [`Error::InvalidKey`], [`Error::Backend`].
pub async fn evict<S: AdminStore>(
    store: &S,
    operation: &str,
    scope: Option<&str>,
    key_parts: &[&str],
    force: bool,
) -> Result<Evicted, Error> {
    store
        .evict_key(&storage_key(operation, scope, key_parts)?, force)
        .await
}

/// Deletes every record of `store` past its lease or TTL, `batch` rows per statement (each
/// its own short transaction, so concurrent calls wait at most one batch for a lock), until
/// a batch finds fewer than `batch`; returns how many were deleted. Errors:
/// [`Error::Unsupported`] when `batch` is 0, [`Error::Backend`] (the records deleted
/// before it stay deleted).
pub async fn purge_expired<S: AdminStore>(store: &S, batch: u32) -> Result<u64, Error> {
    if batch == 0 {
        return Err(Error::Unsupported("a purge batch of 0 rows".into()));
    }
    let mut total = 0;
    loop {
        let n = store.purge_expired_batch(batch).await?;
        total += n;
        if !S::BATCHED || n < u64::from(batch) {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}

/// A record's state from its row: status, owner, expires_at_ms, created_at_ms, now_ms.
#[cfg(feature = "sqlx")]
fn state_from_row(row: Option<(String, String, i64, i64, i64)>) -> KeyState {
    let ms = |d: i64| Duration::from_millis(u64::try_from(d).unwrap_or(0));
    match row {
        Some((_, _, expires, _, now)) if expires <= now => KeyState::Absent,
        Some((status, owner, expires, _, now)) if status == "in_progress" => KeyState::InProgress {
            owner,
            lease_left: ms(expires - now),
        },
        Some((_, _, expires, created, now)) => KeyState::Completed {
            created_at_ms: Some(created),
            expires_in: ms(expires - now),
        },
        None => KeyState::Absent,
    }
}

/// Implements [`AdminStore`] for `sqlx::Pool<$db>`: `$now` is the backend's "now in Unix ms",
/// `$p1`/`$p2` its first placeholders, `$purge` its batched delete (one placeholder: the batch).
#[cfg(feature = "sqlx")]
macro_rules! sql_admin {
    ($db:ty, now = $now:literal, p1 = $p1:literal, p2 = $p2:literal, purge = $purge:expr) => {
        impl AdminStore for sqlx::Pool<$db> {
            async fn inspect_key(&self, key: &StorageKey) -> Result<KeyState, Error> {
                const SQL: &str = concat!(
                    "SELECT status, owner, expires_at_ms, created_at_ms, ",
                    $now,
                    " AS now_ms FROM idempotency_records WHERE idempotency_key = ",
                    $p1
                );
                let row = sqlx::query_as(SQL)
                    .bind(key.hex())
                    .fetch_optional(self)
                    .await?;
                Ok(state_from_row(row))
            }

            async fn evict_key(&self, key: &StorageKey, force: bool) -> Result<Evicted, Error> {
                const SQL: &str = concat!(
                    "DELETE FROM idempotency_records WHERE idempotency_key = ",
                    $p1,
                    " AND (status = 'completed' OR expires_at_ms <= ",
                    $now,
                    " OR ",
                    $p2,
                    " = 1)"
                );
                // A connection first, then the writers' turn (SQLite), as the claims take them.
                let mut conn = self.acquire().await?;
                let turn = <$db as crate::store::sql::SqlBackend>::write_turn(self).await;
                let done = sqlx::query(SQL)
                    .bind(key.hex())
                    .bind(i32::from(force))
                    .execute(&mut *conn)
                    .await?;
                drop(turn);
                drop(conn);
                if done.rows_affected() > 0 {
                    return Ok(Evicted::Removed);
                }
                Ok(match self.inspect_key(key).await? {
                    KeyState::InProgress { lease_left, .. } => Evicted::LiveClaim { lease_left },
                    _ => Evicted::Absent,
                })
            }

            async fn purge_expired_batch(&self, batch: u32) -> Result<u64, Error> {
                const SQL: &str = $purge;
                let mut conn = self.acquire().await?;
                let _turn = <$db as crate::store::sql::SqlBackend>::write_turn(self).await;
                let done = sqlx::query(SQL)
                    .bind(i64::from(batch))
                    .execute(&mut *conn)
                    .await?;
                Ok(done.rows_affected())
            }
        }
    };
}

// PostgreSQL keeps no index on `expires_at_ms` (the completion UPDATE stays a HOT update; see
// `migrations/postgres.sql`): each batch finds its rows by a scan and locks only them, skipping
// rows a call holds (`SKIP LOCKED`), deleting by `ctid`.
#[cfg(feature = "postgres")]
sql_admin!(
    sqlx::Postgres,
    now = "(extract(epoch from clock_timestamp()) * 1000)::bigint",
    p1 = "$1",
    p2 = "$2",
    purge = "DELETE FROM idempotency_records WHERE ctid = ANY(ARRAY(SELECT ctid FROM idempotency_records WHERE expires_at_ms <= (extract(epoch from clock_timestamp()) * 1000)::bigint LIMIT $1 FOR UPDATE SKIP LOCKED))"
);

#[cfg(feature = "mysql")]
sql_admin!(
    sqlx::MySql,
    now = "CAST(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(3)) DIV 1000 AS SIGNED)",
    p1 = "?",
    p2 = "?",
    purge = "DELETE FROM idempotency_records WHERE expires_at_ms <= CAST(TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', UTC_TIMESTAMP(3)) DIV 1000 AS SIGNED) ORDER BY expires_at_ms LIMIT ?"
);

#[cfg(feature = "sqlite")]
sql_admin!(
    sqlx::Sqlite,
    now = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
    p1 = "?1",
    p2 = "?2",
    purge = "DELETE FROM idempotency_records WHERE rowid IN (SELECT rowid FROM idempotency_records WHERE expires_at_ms <= CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) LIMIT ?1)"
);
