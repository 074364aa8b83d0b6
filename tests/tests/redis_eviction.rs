//! `maxmemory-policy` (issue 13): a Redis that may evict keys can silently drop locks, claims,
//! tokens and stored responses, so `RedisStore::connect` and `connect_cluster` refuse every
//! policy but `noeviction` with `Error::EvictionPolicy` naming the policy, unless the caller
//! opts in with `RedisStore::options().allow_eviction(true)`. Runs on the suite's own
//! `redis-server` processes (skipped loudly without them, a failure under `CI=true`).

use std::sync::Arc;

use idempotent_runtime::{Disposition, Error, RedisStore, idempotent, observe};
use idempotent_tests::{
    AppError, Effects, Receipt, RedisCluster, RedisServer, Req, redis_server_on_path, req, unique,
};

/// Every policy Redis has that may evict keys.
const EVICTING: [&str; 7] = [
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
];

pub struct Svc {
    store: RedisStore,
    fx: Effects,
}

impl Svc {
    #[idempotent(
        strategy = "dedup_table",
        key = "req.id",
        scope = "req.tenant",
        name = "eviction.place",
        store = "self.store"
    )]
    async fn place(&self, req: &Req) -> Result<Receipt, AppError> {
        self.fx.apply(req).await
    }
}

/// A call executes, its retry replays: the store works.
async fn a_call_works(store: RedisStore) {
    let svc = Arc::new(Svc {
        store,
        fx: Effects::default(),
    });
    let r = req(&unique("t"), "order-1", 1);
    let (_, how) = observe(svc.place(&r)).await;
    assert_eq!(how, Some(Disposition::Executed));
    let (_, how) = observe(svc.place(&r)).await;
    assert_eq!(how, Some(Disposition::Replayed));
    assert_eq!(svc.fx.count(&r), 1);
}

fn set_policy(server: &RedisServer, policy: &str) {
    let out = server.cli(&["CONFIG", "SET", "maxmemory-policy", policy]);
    assert_eq!(
        out.trim(),
        "OK",
        "CONFIG SET maxmemory-policy {policy}: {out:?}"
    );
}

/// Standalone: each evicting policy is refused by `connect`, naming the policy and
/// `noeviction`; `allow_eviction(true)` accepts it and a call works; `noeviction` connects by
/// default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(has_redis_server),
    ignore = "needs redis-server on PATH (starts servers of its own)"
)]
async fn standalone_refuses_evicting_policies_unless_allowed() {
    if !redis_server_on_path() {
        return;
    }
    let server = RedisServer::start(&[]);
    let url = server.url();
    for policy in EVICTING {
        set_policy(&server, policy);
        match RedisStore::connect(&url).await {
            Err(e @ Error::EvictionPolicy { .. }) => {
                let Error::EvictionPolicy {
                    policy: named,
                    node,
                } = &e
                else {
                    unreachable!()
                };
                assert_eq!(named, policy);
                assert_eq!(
                    node,
                    &format!("127.0.0.1:{}", server.port),
                    "the node is named"
                );
                let message = e.to_string();
                assert!(message.contains(policy), "{message}");
                assert!(message.contains("noeviction"), "{message}");
                assert!(message.contains("allow_eviction"), "{message}");
            }
            other => panic!("{policy}: connect must refuse: {other:?}"),
        }
        let store = RedisStore::options()
            .allow_eviction(true)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{policy} with allow_eviction(true): {e}"));
        a_call_works(store).await;
    }
    set_policy(&server, "noeviction");
    let store = RedisStore::connect(&url)
        .await
        .expect("noeviction connects by default");
    a_call_works(store).await;
}

/// Cluster: one primary with `allkeys-lru` (the others `noeviction`) makes `connect_cluster`
/// refuse, naming that node; `allow_eviction(true)` connects and a call works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(has_redis_server),
    ignore = "needs redis-server on PATH (starts servers of its own)"
)]
async fn cluster_refuses_when_one_primary_evicts() {
    if !redis_server_on_path() {
        return;
    }
    let cluster = RedisCluster::start_with(3, &["--cluster-node-timeout", "2000"]);
    RedisStore::connect_cluster(&cluster.urls())
        .await
        .expect("all noeviction: connects");
    let evicting = 1;
    set_policy(&cluster.nodes[evicting], "allkeys-lru");
    match RedisStore::connect_cluster(&cluster.urls()).await {
        Err(e @ Error::EvictionPolicy { .. }) => {
            let Error::EvictionPolicy { node, policy } = &e else {
                unreachable!()
            };
            assert_eq!(policy, "allkeys-lru");
            let port = cluster.nodes[evicting].port.to_string();
            assert!(
                node.contains(&port),
                "the error names node {node:?}, not the one on port {port}"
            );
            let message = e.to_string();
            assert!(
                message.contains("allkeys-lru") && message.contains("noeviction"),
                "{message}"
            );
        }
        other => panic!("connect_cluster must refuse: {other:?}"),
    }
    let store = RedisStore::options()
        .allow_eviction(true)
        .connect_cluster(&cluster.urls())
        .await
        .expect("allow_eviction(true) connects");
    a_call_works(store).await;
}
