//! Operating the stores: look at one idempotency key's entry, remove it, and delete expired
//! records in batches. The `idempotent-admin` command of the examples crate calls these.
//!
//! | entry | strategy | look | remove | stores |
//! |---|---|---|---|---|
//! | record | `dedup_table` (claim mode) | [`inspect`] | [`evict`], [`purge_expired`] | SQL pools, memory, Redis ([`AdminStore`]) |
//! | lock | `distributed_lock` | [`inspect_lock`] | [`evict_lock`] | memory, Redis ([`LockAdminStore`]) |
//! | token | `token` | [`inspect_token`] | [`evict_token`] | memory, Redis ([`TokenAdminStore`]) |
//!
//! A record or lock is named as the wrapper names it: the operation name (`name = "..."`, by
//! default `module_path!()::fn_name`), the scope when the function has one, and the key parts
//! as text ([`storage_key`]); only the SHA-256 storage key reaches the store. A token is named
//! by itself: tokens live in a namespace of their own ([`token_storage_key`]), and a consumed
//! or completed token reports the *binding* of the call that used it (the storage key of its
//! operation, scope and token, which [`storage_key`] computes for comparison).
//!
//! Every removal leaves a live claim alone unless forced: a call holding an in-progress record,
//! a held lock or a consumed token may be running its body, and removing its entry would let a
//! duplicate run beside it. A forced removal makes that call's completion fail with
//! [`Error::LockLost`] (its effect may have happened).
//!
//! Records are kept by the SQL pools (`PgPool`, `MySqlPool`, `SqlitePool`: the
//! `idempotency_records` table), [`MemoryStore`](crate::MemoryStore) (its records) and, with
//! the feature `redis`, `RedisStore` (its `dedup_table` record hashes; Redis expires them
//! itself, so a purge there deletes nothing and returns 0). Locks and tokens are kept only by
//! the memory store and Redis (a SQL pool holds neither); Redis expires them itself and the
//! memory store sweeps them as its tables grow, so they have no purge. Times are judged by the
//! store's clock, as the strategies judge them.

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

/// What [`evict`], [`evict_lock`] or [`evict_token`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "evicted", rename_all = "snake_case")]
pub enum Evicted {
    /// The record was removed: the next call with the key runs the body.
    Removed,
    /// There was no record.
    Absent,
    /// Refused: a call holds a live claim on the key — an in-progress record, a held lock or
    /// a consumed token — and its body may be running. Evicting it would let a duplicate run
    /// the body beside it; pass `force` to do it anyway (that call's completion then fails
    /// with [`Error::LockLost`]).
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

/// A response a completed lock or token keeps for replay, read back from its stored bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StoredResponse {
    /// The body's response, as the JSON it was stored as (duplicates get it back).
    Response {
        /// The JSON text.
        json: String,
    },
    /// A terminal error the body returned, stored by the function's error policy (duplicates
    /// get it back as an error), as JSON.
    Error {
        /// The JSON text of the error.
        json: String,
    },
    /// The body succeeded but its response could not be kept (it did not serialize, did not
    /// read back, or was over the size limit): duplicates get [`Error::Serialization`].
    Unstorable {
        /// Why it was not kept.
        reason: String,
    },
}

impl StoredResponse {
    /// The stored bytes as the strategies wrote them (see `replaying::response_bytes`).
    #[cfg(any(feature = "memory", feature = "redis"))]
    pub(crate) fn from_bytes(bytes: &[u8]) -> StoredResponse {
        use crate::strategy::replaying::{STORED_ERROR, UNSTORABLE};
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        if let Some(error) = bytes.strip_prefix(STORED_ERROR) {
            StoredResponse::Error { json: text(error) }
        } else if let Some(reason) = bytes.strip_prefix(UNSTORABLE) {
            StoredResponse::Unstorable {
                reason: text(reason),
            }
        } else {
            StoredResponse::Response { json: text(bytes) }
        }
    }
}

/// The state of one `distributed_lock` key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LockState {
    /// No lock and no stored response (or only ones past their lease or TTL).
    Absent,
    /// A call holds the lock and is running its body.
    Held {
        /// The holder's owner token (random, 32 hex characters).
        owner: String,
        /// The holder's fencing token; `None` where the store no longer has the key's fencing
        /// counter (on Redis, `idem:{H}:fence` deleted by hand).
        fence: Option<u64>,
        /// How much of its lease is left, by the store's clock.
        lease_left: Duration,
    },
    /// A call completed; its response is replayed to duplicates until it expires.
    Completed {
        /// How long until the stored response expires (its TTL left).
        expires_in: Duration,
        /// The stored response.
        response: StoredResponse,
    },
}

/// The state of one one-time token (`token`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TokenState {
    /// No such token: never issued, expired, evicted, or its replay record expired.
    Absent,
    /// Issued and unused — or consumed by a call whose lease ended without completion, which
    /// the next call with the token consumes in its turn.
    Issued {
        /// How long until the token expires unused (`issue_token`'s `ttl` left).
        expires_in: Duration,
    },
    /// A call consumed the token and is running its body.
    Consumed {
        /// The consumer's owner token (random, 32 hex characters).
        owner: String,
        /// The binding of the consuming call: the storage key (64 hex characters) of its
        /// operation, scope and token; compare with
        /// `storage_key(operation, scope, &[token])?.hex()`.
        binding: String,
        /// How much of the consumer's lease is left, by the store's clock.
        lease_left: Duration,
        /// How long until the store drops the token if the consumer neither completes nor
        /// gives it back (its TTL, pushed out to the end of the lease when that is later).
        expires_in: Duration,
    },
    /// A call completed with the token; its response is replayed to retries until it expires.
    Completed {
        /// The binding of the call that completed (see [`TokenState::Consumed::binding`]).
        binding: String,
        /// How long until the stored response expires (the call's `ttl` left).
        expires_in: Duration,
        /// The stored response.
        response: StoredResponse,
    },
}

/// A store whose `distributed_lock` entries can be inspected and evicted (memory, Redis).
pub trait LockAdminStore: crate::LockStore {
    /// The lock entry of `key`. Errors: [`Error::Backend`], [`Error::Serialization`] (a
    /// malformed stored value).
    fn inspect_lock_key(
        &self,
        key: &StorageKey,
    ) -> impl Future<Output = Result<LockState, Error>> + Send;

    /// Removes the lock or stored response of `key` in one step, unless a call holds the lock
    /// and `force` is `false`. The key's fencing counter is kept, so later fencing tokens
    /// still grow. Errors: [`Error::Backend`].
    fn evict_lock_key(
        &self,
        key: &StorageKey,
        force: bool,
    ) -> impl Future<Output = Result<Evicted, Error>> + Send;
}

/// A store whose one-time tokens can be inspected and evicted (memory, Redis).
pub trait TokenAdminStore: crate::TokenStore {
    /// The token stored under `token_key` ([`token_storage_key`]). Errors:
    /// [`Error::Backend`], [`Error::Serialization`] (a malformed stored value).
    fn inspect_token_key(
        &self,
        token_key: &StorageKey,
    ) -> impl Future<Output = Result<TokenState, Error>> + Send;

    /// Removes the token stored under `token_key` in one step, unless a call has consumed it
    /// within its lease and `force` is `false`. Errors: [`Error::Backend`].
    fn evict_token_key(
        &self,
        token_key: &StorageKey,
        force: bool,
    ) -> impl Future<Output = Result<Evicted, Error>> + Send;
}

/// The storage key under which `token` is stored (tokens have a namespace of their own,
/// whatever operation consumes them). Errors: [`Error::InvalidKey`] (an empty or oversized
/// token).
pub fn token_storage_key(token: &str) -> Result<StorageKey, Error> {
    crate::strategy::token::token_key(token)
}

/// The state of the `distributed_lock` entry of (`operation`, `scope`, `key_parts`) in
/// `store`: held with its owner, fencing token and lease left, completed with its stored
/// response and TTL left, or absent. Errors: [`Error::InvalidKey`], [`Error::Backend`],
/// [`Error::Serialization`].
pub async fn inspect_lock<S: LockAdminStore>(
    store: &S,
    operation: &str,
    scope: Option<&str>,
    key_parts: &[&str],
) -> Result<LockState, Error> {
    store
        .inspect_lock_key(&storage_key(operation, scope, key_parts)?)
        .await
}

/// Removes the `distributed_lock` entry of (`operation`, `scope`, `key_parts`) from `store`:
/// a stored response (the next call runs the body again) or, with `force`, a held lock
/// ([`Evicted::LiveClaim`] without it; its holder's completion then fails with
/// [`Error::LockLost`], and the next caller acquires the lock with a higher fencing token).
/// Errors: [`Error::InvalidKey`], [`Error::Backend`].
pub async fn evict_lock<S: LockAdminStore>(
    store: &S,
    operation: &str,
    scope: Option<&str>,
    key_parts: &[&str],
    force: bool,
) -> Result<Evicted, Error> {
    store
        .evict_lock_key(&storage_key(operation, scope, key_parts)?, force)
        .await
}

/// The state of the one-time `token` in `store`: issued with its expiry, consumed by a running
/// call (owner, binding, lease left), completed with its stored response, or absent. Errors:
/// [`Error::InvalidKey`], [`Error::Backend`], [`Error::Serialization`].
pub async fn inspect_token<S: TokenAdminStore>(
    store: &S,
    token: &str,
) -> Result<TokenState, Error> {
    store.inspect_token_key(&token_storage_key(token)?).await
}

/// Removes the one-time `token` from `store`: an issued token can no longer be used, a
/// completed one no longer replays — either way a call with it then gets
/// [`Error::TokenInvalid`] (the client needs a fresh token; a token cannot be made to run
/// again). A token consumed by a running call is left alone ([`Evicted::LiveClaim`]) unless
/// `force`; that call's completion then fails with [`Error::LockLost`]. Errors:
/// [`Error::InvalidKey`], [`Error::Backend`].
pub async fn evict_token<S: TokenAdminStore>(
    store: &S,
    token: &str,
    force: bool,
) -> Result<Evicted, Error> {
    store
        .evict_token_key(&token_storage_key(token)?, force)
        .await
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

#[cfg(all(test, any(feature = "memory", feature = "redis")))]
mod tests {
    use super::StoredResponse;

    /// The three kinds of stored answer are told apart by the replay codec's prefixes.
    #[test]
    fn stored_responses_are_read_back_by_kind() {
        assert_eq!(
            StoredResponse::from_bytes(br#"{"id":1}"#),
            StoredResponse::Response {
                json: r#"{"id":1}"#.into()
            }
        );
        assert_eq!(
            StoredResponse::from_bytes(b"\0error:{\"code\":7}"),
            StoredResponse::Error {
                json: r#"{"code":7}"#.into()
            }
        );
        assert_eq!(
            StoredResponse::from_bytes(b"\0unstorable:over 10 bytes"),
            StoredResponse::Unstorable {
                reason: "over 10 bytes".into()
            }
        );
    }
}
