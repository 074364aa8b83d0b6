//! The Cluster connection, replaced by a fresh one after a command times out.
//!
//! redis-rs 1.8.1's `ClusterConnection` can stop answering for good: under concurrent `ASK`
//! redirects (a slot being migrated) it sends `ASKING` as a request of its own on the
//! multiplexed connection every caller shares, so another request can consume the node's
//! one-shot flag; the redirected command then gets `MOVED`, and the slot refreshes those
//! trigger can deadlock its internal lock (every later command, to any node, times out; a
//! fresh connection from the same client answers at once). So a command that times out makes
//! the store open a new connection for the calls after it (the call itself still fails with
//! `Error::Backend`: it may or may not have run).

use std::sync::Mutex;

use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::RoutingInfo;
use redis::{Cmd, RedisError, Value};

pub(super) struct ClusterConn {
    client: ClusterClient,
    /// The connection in use and its generation (bumped by every replacement).
    current: Mutex<(u64, ClusterConnection)>,
    /// Held while a replacement connects, so concurrent time-outs open one connection.
    replacing: tokio::sync::Mutex<()>,
}

impl ClusterConn {
    pub(super) async fn new(client: ClusterClient) -> Result<ClusterConn, RedisError> {
        let conn = client.get_async_connection().await?;
        Ok(ClusterConn {
            client,
            current: Mutex::new((0, conn)),
            replacing: tokio::sync::Mutex::new(()),
        })
    }

    fn get(&self) -> (u64, ClusterConnection) {
        let guard = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (guard.0, guard.1.clone())
    }

    /// Replaces connection generation `generation` after one of its commands timed out, unless
    /// another caller already did. A failed connect leaves the old connection in place.
    async fn replace(&self, generation: u64) {
        let _one_at_a_time = self.replacing.lock().await;
        if self.get().0 != generation {
            return;
        }
        if let Ok(fresh) = self.client.get_async_connection().await {
            let mut guard = self
                .current
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *guard = (generation + 1, fresh);
        }
    }

    async fn after<T>(
        &self,
        generation: u64,
        result: Result<T, RedisError>,
    ) -> Result<T, RedisError> {
        if let Err(e) = &result
            && e.is_timeout()
        {
            self.replace(generation).await;
        }
        result
    }

    /// Runs `cmd`, routed by its key.
    pub(super) async fn query(&self, cmd: &Cmd) -> Result<Value, RedisError> {
        let (generation, mut conn) = self.get();
        let result = cmd.query_async(&mut conn).await;
        self.after(generation, result).await
    }

    /// Runs `cmd` where `routing` says.
    pub(super) async fn route_command(
        &self,
        cmd: Cmd,
        routing: RoutingInfo,
    ) -> Result<Value, RedisError> {
        let (generation, mut conn) = self.get();
        let result = conn.route_command(cmd, routing).await;
        self.after(generation, result).await
    }
}
