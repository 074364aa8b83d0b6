//! The annotated side: one `#[idempotent]` method per strategy (and per database for `#[tx]`),
//! each with its own operation name.

use idempotent_runtime::{ClaimStore, FencingToken, LockStore, TokenStore, idempotent};
use sqlx::{MySqlConnection, MySqlPool, PgConnection, PgPool, SqliteConnection, SqlitePool};

use crate::{AppError, Receipt, Req, receipt};

/// `dedup_table` in claim mode on any [`ClaimStore`] (memory, Redis, a sqlx pool).
pub struct Claim<S> {
    pub store: S,
}

impl<S: ClaimStore> Claim<S> {
    #[idempotent(
        strategy = "dedup_table",
        key = "req.id",
        scope = "req.tenant",
        name = "bench.dedup_table.claim",
        store = "self.store"
    )]
    pub async fn place(&self, req: &Req) -> Result<Receipt, AppError> {
        Ok(receipt(req, 0))
    }
}

/// `distributed_lock` on any [`LockStore`] (memory, Redis).
pub struct Lock<S> {
    pub store: S,
}

impl<S: LockStore> Lock<S> {
    #[idempotent(
        strategy = "distributed_lock",
        key = "req.id",
        scope = "req.tenant",
        name = "bench.distributed_lock",
        store = "self.store"
    )]
    pub async fn settle(
        &self,
        req: &Req,
        #[fence] fence: FencingToken,
    ) -> Result<Receipt, AppError> {
        Ok(receipt(req, fence.get()))
    }
}

/// `token` on any [`TokenStore`] (memory, Redis); `req.id` is the issued token.
pub struct Token<S> {
    pub store: S,
}

impl<S: TokenStore> Token<S> {
    #[idempotent(
        strategy = "token",
        key = "req.id",
        scope = "req.tenant",
        name = "bench.token",
        store = "self.store"
    )]
    pub async fn checkout(&self, req: &Req) -> Result<Receipt, AppError> {
        Ok(receipt(req, 0))
    }
}

/// `dedup_table` in transactional mode (`#[tx]`) on PostgreSQL. The body touches the
/// transaction without a statement, so only the protocol is measured.
pub struct PgTx {
    pub db: PgPool,
}

impl PgTx {
    #[idempotent(
        strategy = "dedup_table",
        key = "req.id",
        scope = "req.tenant",
        name = "bench.dedup_table.tx.postgres",
        store = "self.db"
    )]
    pub async fn place(&self, req: &Req, #[tx] tx: &mut PgConnection) -> Result<Receipt, AppError> {
        let _: &mut PgConnection = tx;
        Ok(receipt(req, 0))
    }
}

/// `dedup_table` in transactional mode (`#[tx]`) on MySQL/MariaDB.
pub struct MySqlTx {
    pub db: MySqlPool,
}

impl MySqlTx {
    #[idempotent(
        strategy = "dedup_table",
        key = "req.id",
        scope = "req.tenant",
        name = "bench.dedup_table.tx.mysql",
        store = "self.db"
    )]
    pub async fn place(
        &self,
        req: &Req,
        #[tx] tx: &mut MySqlConnection,
    ) -> Result<Receipt, AppError> {
        let _: &mut MySqlConnection = tx;
        Ok(receipt(req, 0))
    }
}

/// `dedup_table` in transactional mode (`#[tx]`) on SQLite.
pub struct SqliteTx {
    pub db: SqlitePool,
}

impl SqliteTx {
    #[idempotent(
        strategy = "dedup_table",
        key = "req.id",
        scope = "req.tenant",
        name = "bench.dedup_table.tx.sqlite",
        store = "self.db"
    )]
    pub async fn place(
        &self,
        req: &Req,
        #[tx] tx: &mut SqliteConnection,
    ) -> Result<Receipt, AppError> {
        let _: &mut SqliteConnection = tx;
        Ok(receipt(req, 0))
    }
}
