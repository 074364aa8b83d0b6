//! The connection of [`RedisOptions::connect_sentinel`](super::RedisOptions::connect_sentinel):
//! the primary of one service as Redis Sentinel reports it, followed across failovers.
//!
//! One multiplexed connection to the current primary is kept. A reply that shows the node is
//! not (or no longer) reachable or primary — an I/O error, a dropped connection, a time-out,
//! `READONLY` (a demoted primary) — drops it; the next call asks the sentinels for the primary
//! again (`SENTINEL GET-MASTER-ADDR-BY-NAME`, then `ROLE` on the node, by redis-rs
//! [`SentinelClient`]). The call that saw the failure returns it as
//! [`Error::Backend`](crate::Error::Backend).

use std::sync::Mutex;

use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{AsyncConnectionConfig, Cmd, ErrorKind, Pipeline, RedisError, ServerErrorKind, Value};

use super::{CONNECT_TIMEOUT, RESPONSE_TIMEOUT};
use crate::Error;

pub(crate) struct SentinelConn {
    client: tokio::sync::Mutex<SentinelClient>,
    /// The connection to the current primary, with a number that tells connections apart.
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    /// The current primary's `host:port`, for error messages.
    address: Mutex<String>,
    /// [`RedisOptions::allow_eviction`](super::RedisOptions::allow_eviction): without it, a
    /// new primary whose `maxmemory-policy` can evict keys is refused.
    allow_eviction: bool,
}

impl SentinelConn {
    pub(crate) fn new<U: AsRef<str>>(
        sentinels: &[U],
        service_name: &str,
        allow_eviction: bool,
    ) -> Result<SentinelConn, Error> {
        let urls: Vec<&str> = sentinels.iter().map(AsRef::as_ref).collect();
        let client = SentinelClient::build(
            urls,
            service_name.to_owned(),
            None,
            SentinelServerType::Master,
        )
        .map_err(Error::backend)?;
        Ok(SentinelConn {
            client: tokio::sync::Mutex::new(client),
            current: Mutex::new(None),
            address: Mutex::new(format!("the primary of {service_name:?}")),
            allow_eviction,
        })
    }

    /// Connects to the primary the sentinels name now (the first time, at connect); errors as
    /// the first call would meet them.
    pub(crate) async fn connect(&self) -> Result<(), RedisError> {
        self.connection().await.map(drop)
    }

    /// The `host:port` of the primary last connected to.
    pub(crate) fn address(&self) -> String {
        self.address
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn cached(&self) -> Option<(u64, MultiplexedConnection)> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The connection to the current primary, asking the sentinels when there is none.
    async fn connection(&self) -> Result<(u64, MultiplexedConnection), RedisError> {
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let mut client = self.client.lock().await;
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let connect = async {
            let primary = client.async_get_client().await?;
            let address = primary.get_connection_info().addr().to_string();
            let mut conn = primary
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            // A primary the sentinels fail over to is checked like the first one.
            if !self.allow_eviction {
                let info: String = redis::cmd("INFO")
                    .arg("memory")
                    .query_async(&mut conn)
                    .await?;
                if let Some(refused) = super::evicting(&address, &info) {
                    return Err(RedisError::from((
                        ErrorKind::Client,
                        EVICTION_REFUSAL,
                        refused.to_string(),
                    )));
                }
            }
            Ok::<_, RedisError>((address, conn))
        };
        let (address, conn) = tokio::time::timeout(CONNECT_TIMEOUT * 2, connect)
            .await
            .map_err(|_| {
                RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the sentinels did not name a reachable primary in time",
                ))
            })??;
        *self
            .address
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = address;
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let generation = current.as_ref().map_or(0, |c| c.0) + 1;
        *current = Some((generation, conn.clone()));
        Ok((generation, conn))
    }

    /// Runs `cmd` on the current primary; drops the connection after a failure that says it
    /// is gone or no longer primary.
    pub(crate) async fn query(&self, cmd: &Cmd) -> Result<Value, RedisError> {
        let (generation, mut conn) = self.connection().await?;
        let result = cmd.query_async(&mut conn).await;
        self.after(generation, result)
    }

    /// [`query`](Self::query) for a pipeline (its errors per command are in the reply when it
    /// ignores errors: a `READONLY` there drops the connection too).
    pub(crate) async fn query_pipe(&self, pipe: &Pipeline) -> Result<Vec<Value>, RedisError> {
        let (generation, mut conn) = self.connection().await?;
        let result: Result<Vec<Value>, RedisError> = pipe.query_async(&mut conn).await;
        if let Ok(values) = &result
            && let Some(Value::ServerError(e)) =
                values.iter().find(|v| matches!(v, Value::ServerError(_)))
        {
            let error = RedisError::from(e.clone());
            let _ = self.after::<()>(generation, Err(error));
        }
        self.after(generation, result)
    }

    /// Drops connection `generation` when `result` says the primary is gone.
    fn after<T>(&self, generation: u64, result: Result<T, RedisError>) -> Result<T, RedisError> {
        if let Err(e) = &result
            && primary_lost(e)
        {
            let mut current = self
                .current
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if current.as_ref().is_some_and(|c| c.0 == generation) {
                *current = None;
            }
        }
        result
    }
}

/// The description of the error for a primary refused for its eviction policy.
const EVICTION_REFUSAL: &str = "refused the new primary";

/// Whether `e` is the refusal of a primary whose eviction policy can evict keys.
pub(crate) fn is_eviction_refusal(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Client && e.to_string().contains(EVICTION_REFUSAL)
}

/// Whether `e` says the connection is gone or the node is no longer the primary.
fn primary_lost(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
        // A write inside a script on a demoted primary fails with READONLY too; NOREPLICAS is
        // a primary cut off from its replicas under `min-replicas-to-write` (a zombie primary
        // a failover left behind): ask the sentinels again.
        || e.to_string().contains("READONLY")
        || e.to_string().contains("NOREPLICAS")
}
