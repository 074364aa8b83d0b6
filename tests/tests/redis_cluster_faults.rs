//! Redis Cluster faults (issue 13): one node killed, slots migrated during a storm, scripts
//! flushed. Every test starts its own 3-master cluster (it breaks it) when `redis-server` is on
//! PATH; skipped loudly otherwise, a failure under `CI=true`. Effects are counted in a ledger,
//! every caller's outcome is asserted, concurrency is lined up with barriers and gates; only
//! the cluster's own failure detection is waited for (by polling its state).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::{Duration, Instant};

use idempotent_runtime::strategy::token::token_key;
use idempotent_runtime::{
    Error, FencingToken, KeyBuilder, RedisStore, StorageKey, idempotent, issue_token, observe,
};
use idempotent_tests::{
    AppError, Effects, Got, RedisCluster, Req, classify, redis_server_on_path, req, unique,
};
use tokio::sync::{Barrier, Notify, watch};

/// Operation names, given explicitly so a test can compute a call's storage key (and slot).
const LOCK_OP: &str = "cluster_faults.lock";
const DEDUP_OP: &str = "cluster_faults.dedup";

/// How long `RedisCluster` nodes wait before flagging a silent peer as failed, in ms.
const NODE_TIMEOUT_MS: &str = "1000";

/// The strategies a test drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Strategy {
    Lock,
    Dedup,
    Token,
}

/// A body held until the test lets it go: `entered` counts bodies that arrived, `open` is
/// the phase they wait for (a body waits while `*open.borrow() < hold_until`).
struct Hold {
    entered: AtomicUsize,
    arrived: Notify,
    open: watch::Sender<u8>,
}

/// The test service: the three strategies with the default 30 s lease (longer than a stall of
/// the store's 5 s response timeout, which a claim survives for about 2/3 of its lease).
pub struct Svc {
    store: RedisStore,
    fx: Effects,
    /// Keys (`req.id`) whose bodies wait at `hold` until its phase reaches 1.
    held_keys: std::collections::HashSet<String>,
    hold: Hold,
}

impl std::ops::Deref for Svc {
    type Target = Effects;
    fn deref(&self) -> &Effects {
        &self.fx
    }
}

impl Svc {
    fn new(store: RedisStore) -> Arc<Self> {
        Self::holding(store, std::collections::HashSet::new())
    }

    fn holding(store: RedisStore, held_keys: std::collections::HashSet<String>) -> Arc<Self> {
        Arc::new(Svc {
            store,
            fx: Effects::default(),
            held_keys,
            hold: Hold {
                entered: AtomicUsize::new(0),
                arrived: Notify::new(),
                open: watch::channel(0).0,
            },
        })
    }

    async fn body(&self, req: &Req) -> Result<idempotent_tests::Receipt, AppError> {
        if self.held_keys.contains(&req.id) {
            self.hold.entered.fetch_add(1, SeqCst);
            self.hold.arrived.notify_one();
            let mut open = self.hold.open.subscribe();
            open.wait_for(|phase| *phase >= 1).await.expect("hold open");
        }
        self.fx.apply(req).await
    }

    #[idempotent(
        strategy = "distributed_lock",
        key = "req.id",
        scope = "req.tenant",
        name = "cluster_faults.lock",
        store = "self.store"
    )]
    async fn lock(
        &self,
        req: &Req,
        #[fence] fence: FencingToken,
    ) -> Result<idempotent_tests::Receipt, AppError> {
        let _ = fence;
        self.body(req).await
    }

    #[idempotent(
        strategy = "dedup_table",
        key = "req.id",
        scope = "req.tenant",
        name = "cluster_faults.dedup",
        store = "self.store"
    )]
    async fn dedup(&self, req: &Req) -> Result<idempotent_tests::Receipt, AppError> {
        self.body(req).await
    }

    /// `req.id` carries the token.
    #[idempotent(
        strategy = "token",
        key = "req.id",
        scope = "req.tenant",
        name = "cluster_faults.token",
        store = "self.store"
    )]
    async fn checkout(&self, req: &Req) -> Result<idempotent_tests::Receipt, AppError> {
        self.body(req).await
    }

    async fn call(&self, s: Strategy, r: &Req) -> Got {
        match s {
            Strategy::Lock => classify(observe(self.lock(r)).await),
            Strategy::Dedup => classify(observe(self.dedup(r)).await),
            Strategy::Token => classify(observe(self.checkout(r)).await),
        }
    }

    /// Calls until the outcome is not `InProgress`/`Duplicate` (a concurrent duplicate),
    /// 10 ms apart; returns it with the number of other errors seen (retried likewise).
    async fn call_until_done(&self, s: Strategy, r: &Req, errors: &mut Vec<String>) -> Got {
        let started = Instant::now();
        loop {
            let got = self.call(s, r).await;
            match &got {
                Got::InProgress | Got::Duplicate => {}
                Got::Other(e) => errors.push(e.clone()),
                _ => return got,
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{s:?} {r:?} never completed: last {got:?}; errors {errors:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The Redis keys of one call live in the slot of its storage key: for `lock` and `dedup` the
/// call's key, for `token` the token's.
fn storage_key(s: Strategy, r: &Req) -> StorageKey {
    match s {
        Strategy::Lock | Strategy::Dedup => {
            let op = if s == Strategy::Lock {
                LOCK_OP
            } else {
                DEDUP_OP
            };
            KeyBuilder::new(op)
                .scope(&r.tenant)
                .part(&r.id)
                .finish()
                .unwrap()
        }
        Strategy::Token => token_key(r.id.as_str()).unwrap(),
    }
}

/// `n` requests of tenant `t` for strategy `s` (not `Token`) whose keys are served by a node
/// `pick` accepts.
fn requests_on(
    cluster: &RedisCluster,
    owners: &[Option<usize>],
    s: Strategy,
    t: &str,
    n: usize,
    pick: impl Fn(usize) -> bool,
) -> Vec<Req> {
    (0..)
        .map(|i| req(t, &format!("{s:?}-{i}"), 100 + i))
        .filter(|r| pick(owners[usize::from(cluster.slot_of(&storage_key(s, r)))].unwrap()))
        .take(n)
        .collect()
}

/// Issues tokens until one is served by a node `pick` accepts; returns it as a request of
/// tenant `t`.
async fn token_on(
    svc: &Svc,
    cluster: &RedisCluster,
    owners: &[Option<usize>],
    t: &str,
    pick: impl Fn(usize) -> bool,
) -> Req {
    for i in 0..200 {
        let token = issue_token(&svc.store, Duration::from_secs(600))
            .await
            .expect("issue a token");
        let r = req(t, &token, 500 + i);
        if pick(owners[usize::from(cluster.slot_of(&storage_key(Strategy::Token, &r)))].unwrap()) {
            return r;
        }
    }
    panic!("no token landed on the wanted nodes in 200 tries");
}

/// Errors callers saw, counted by kind (`timed out`, `Ask`, `Moved`, `TryAgain`,
/// `Unrecorded`, or the text).
fn error_kinds(errors: &[String]) -> BTreeMap<String, usize> {
    let mut kinds = BTreeMap::new();
    for e in errors {
        let kind = [
            "Unrecorded",
            "timed out",
            "Ask",
            "Moved",
            "TryAgain",
            "ClusterDown",
        ]
        .iter()
        .find(|k| e.contains(*k))
        .map_or_else(|| e.clone(), |k| (*k).to_owned());
        *kinds.entry(kind).or_insert(0) += 1;
    }
    kinds
}

fn is_backend(g: &Got) -> bool {
    matches!(g, Got::Other(e) if e.contains("Backend"))
}

/// A fresh call executes, the same call again replays, one effect: the strategy works on the
/// key's shard.
async fn works(svc: &Svc, s: Strategy, r: &Req) {
    let first = svc.call(s, r).await;
    let Got::Executed(receipt) = first else {
        panic!("{s:?} on a healthy shard: {first:?}")
    };
    assert_eq!(svc.call(s, r).await, Got::Replayed(receipt), "{s:?}");
    assert_eq!(svc.count(r), 1, "{s:?}: one effect");
}

fn cluster_args(full_coverage: bool) -> Vec<&'static str> {
    let mut args = vec!["--cluster-node-timeout", NODE_TIMEOUT_MS];
    if !full_coverage {
        args.extend(["--cluster-require-full-coverage", "no"]);
    }
    args
}

// ------------------------------------------------------------------------- one node killed

/// `cluster-require-full-coverage no`, one master killed: calls of all three strategies whose
/// keys live on the two other masters keep working — right after the kill and once the
/// cluster has flagged the node `fail` — with scripts never run before on those masters (so
/// loading them must not need the dead node). A call whose key lives on the dead node gets
/// `Error::Backend` within a bounded time, and its body never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(has_redis_server),
    ignore = "needs redis-server on PATH (starts servers of its own)"
)]
async fn one_node_killed_other_shards_keep_working() {
    if !redis_server_on_path() {
        return;
    }
    let mut cluster = RedisCluster::start_with(3, &cluster_args(false));
    let store = RedisStore::connect_cluster(&cluster.urls()).await.unwrap();
    let svc = Svc::new(store);
    let owners = cluster.slot_owners();
    let dead = 2;
    let t = unique("t");
    let live = |n: usize| n != dead;
    let on_dead = |n: usize| n == dead;

    // Keys for each strategy: 1 per phase on the live masters, 1 on the dead one; tokens
    // are issued before the kill.
    let mut live_reqs = BTreeMap::new();
    let mut dead_reqs = BTreeMap::new();
    for s in [Strategy::Lock, Strategy::Dedup] {
        live_reqs.insert(s, requests_on(&cluster, &owners, s, &t, 2, live));
        dead_reqs.insert(
            s,
            requests_on(&cluster, &owners, s, &t, 1, on_dead).remove(0),
        );
    }
    let mut tokens = Vec::new();
    for _ in 0..2 {
        tokens.push(token_on(&svc, &cluster, &owners, &t, live).await);
    }
    live_reqs.insert(Strategy::Token, tokens);
    dead_reqs.insert(
        Strategy::Token,
        token_on(&svc, &cluster, &owners, &t, on_dead).await,
    );

    let noscript = |cluster: &RedisCluster| -> u64 {
        (0..3)
            .filter(|&i| i != dead)
            .map(|i| {
                cluster.nodes[i]
                    .error_stats()
                    .get("NOSCRIPT")
                    .copied()
                    .unwrap_or(0)
            })
            .sum()
    };
    let noscript_before = noscript(&cluster);
    cluster.kill(dead);

    // Right after the kill (the others have not noticed yet).
    for (s, reqs) in &live_reqs {
        works(&svc, *s, &reqs[0]).await;
    }
    let took = dead_node_calls(&svc, &dead_reqs).await;
    eprintln!("time to Error::Backend for a key on the dead node, before it is flagged: {took:?}");

    // Once the others flag it `fail`: the cluster stays up (no full coverage needed).
    let started = Instant::now();
    while !cluster.node_flags(0, dead).contains("fail")
        || cluster.node_flags(0, dead).contains("fail?")
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "node {dead} never flagged fail"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "node flagged fail {:?} after the first checks",
        started.elapsed()
    );
    assert!(
        cluster.wait_state("ok", Duration::ZERO),
        "full coverage is not required"
    );
    // Calls on the live shards while calls on the dead node's keys hang: they do not wait.
    let dead_calls = tokio::spawn({
        let (svc, dead_reqs) = (svc.clone(), dead_reqs.clone());
        async move { dead_node_calls(&svc, &dead_reqs).await }
    });
    let started = Instant::now();
    for (s, reqs) in &live_reqs {
        works(&svc, *s, &reqs[1]).await;
    }
    let live_took = started.elapsed();
    let took = dead_calls.await.unwrap();
    eprintln!(
        "once flagged fail: time to Error::Backend for a key on the dead node {took:?}; \
         meanwhile 3 x (call + replay) on live shards took {live_took:?}"
    );
    assert!(
        live_took < Duration::from_secs(2),
        "live shards waited for the dead one: {live_took:?}"
    );
    for (s, elapsed) in &took {
        assert!(
            *elapsed < Duration::from_secs(15),
            "{s:?}: a dead node's key took {elapsed:?} to fail"
        );
    }

    // The live masters had not run these scripts before the kill: they loaded them after it.
    assert!(
        noscript(&cluster) > noscript_before,
        "the live masters never answered NOSCRIPT: {:?}",
        cluster.error_stats()
    );

    // A store connecting while the node is down: its support check runs a script on the
    // slot of `idem:{check}`, and the eviction check asks every primary it can reach.
    let check_on_dead = cluster.node_serving(cluster.keyslot("idem:{check}")) == dead;
    let started = Instant::now();
    let connected = RedisStore::connect_cluster(&cluster.urls()).await;
    eprintln!(
        "connect_cluster with node {dead} down (idem:{{check}} on it: {check_on_dead}) took {:?}: {:?}",
        started.elapsed(),
        connected.as_ref().map(|_| "connected")
    );
    if check_on_dead {
        assert!(matches!(connected, Err(Error::Backend(_))), "{connected:?}");
    } else {
        let store = connected.expect("connects through the live masters");
        let svc2 = Svc::new(store);
        let r = requests_on(&cluster, &owners, Strategy::Dedup, &t, 3, live).remove(2);
        assert!(matches!(
            svc2.call(Strategy::Dedup, &r).await,
            Got::Executed(_)
        ));
    }
}

/// Calls each strategy on its key on the dead node, concurrently; each gets `Error::Backend`
/// and runs no body. Returns how long each took.
async fn dead_node_calls(
    svc: &Arc<Svc>,
    dead_reqs: &BTreeMap<Strategy, Req>,
) -> BTreeMap<Strategy, Duration> {
    let calls = dead_reqs.iter().map(|(s, r)| async move {
        let started = Instant::now();
        let got = svc.call(*s, r).await;
        (*s, r, got, started.elapsed())
    });
    let mut took = BTreeMap::new();
    for (s, r, got, elapsed) in futures_util::future::join_all(calls).await {
        assert!(is_backend(&got), "{s:?} on the dead node: {got:?}");
        assert_eq!(svc.count(r), 0, "{s:?}: the body did not run");
        took.insert(s, elapsed);
    }
    took
}

/// The default `cluster-require-full-coverage yes`: once the others flag a killed master
/// `fail` (about `cluster-node-timeout` after the kill), every node answers `CLUSTERDOWN`, so
/// calls on healthy shards fail too — with `Error::Backend` after redis-rs has retried — and
/// nothing runs. When the node comes back the cluster heals and calls work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(has_redis_server),
    ignore = "needs redis-server on PATH (starts servers of its own)"
)]
async fn full_coverage_default_one_node_killed_stops_the_whole_cluster() {
    if !redis_server_on_path() {
        return;
    }
    let mut cluster = RedisCluster::start_with(3, &cluster_args(true));
    let store = RedisStore::connect_cluster(&cluster.urls()).await.unwrap();
    let svc = Svc::new(store);
    let owners = cluster.slot_owners();
    let dead = 2;
    let t = unique("t");
    let live = requests_on(&cluster, &owners, Strategy::Dedup, &t, 3, |n| n != dead);
    works(&svc, Strategy::Dedup, &live[0]).await;

    let killed = Instant::now();
    cluster.kill(dead);
    let before = cluster.error_stats();
    assert!(
        cluster.wait_state("fail", Duration::from_secs(10)),
        "the cluster never went down"
    );
    let down_after = killed.elapsed();
    eprintln!("full coverage: cluster_state:fail {down_after:?} after the kill");

    let started = Instant::now();
    let got = svc.call(Strategy::Dedup, &live[1]).await;
    let took = started.elapsed();
    eprintln!("full coverage: a healthy shard's call failed after {took:?}: {got:?}");
    assert!(is_backend(&got), "{got:?}");
    // redis-rs retries CLUSTERDOWN (waiting ≥ 1.28 s between tries) until its 5 s response
    // timeout, so the caller sees a timeout; the nodes did answer CLUSTERDOWN.
    let clusterdown =
        |stats: &BTreeMap<String, u64>| stats.get("CLUSTERDOWN").copied().unwrap_or(0);
    assert!(
        clusterdown(&cluster.error_stats()) > clusterdown(&before),
        "the nodes never answered CLUSTERDOWN: {:?}",
        cluster.error_stats()
    );
    assert_eq!(svc.count(&live[1]), 0);

    cluster.nodes[dead].restart();
    assert!(
        cluster.wait_state("ok", Duration::from_secs(10)),
        "the cluster never came back"
    );
    let mut errors = Vec::new();
    let got = svc
        .call_until_done(Strategy::Dedup, &live[2], &mut errors)
        .await;
    assert!(matches!(got, Got::Executed(_)), "{got:?}");
    eprintln!("full coverage: errors after the node came back: {errors:?}");
}

// ----------------------------------------------------------- slot migration during a storm

/// 400 requests over 40 keys (`callers` concurrent callers per key sharing its 10
/// requests, each retrying `InProgress` and any error) while the slots of 16 of the keys move to another master:
/// - 8 keys ("held") have their bodies running when the migration opens: their completion
///   and their duplicates' acquisitions meet a half-migrated slot (`TRYAGAIN`, `ASK`);
/// - 8 keys ("late") are first called only after the migration opened (`ASK` to the target
///   for a key that does not exist yet; `TRYAGAIN` for multi-key scripts);
/// - 24 keys stay where they are.
///
/// Exactly one effect per key; every caller ends with `Executed` or `Replayed` (the same
/// receipt; the caller whose body ran may end `Replayed` when its completion timed out and
/// its retry found the response). Errors callers saw (and retried) are counted and printed:
/// issue 13 wants none (redis-rs retries MOVED/ASK/TRYAGAIN itself), which redis-rs 1.8.1
/// does not deliver (see [`redis_rs_concurrent_ask_redirects_wedge_the_cluster_connection`]).
/// Afterwards each migrated key lives on its target.
async fn storm_during_slot_migration(s: Strategy, callers: usize) {
    if !redis_server_on_path() {
        return;
    }
    const KEYS: usize = 40;
    const REQUESTS: usize = 10;
    let per_caller = REQUESTS / callers;
    let cluster = Arc::new(RedisCluster::start_with(
        3,
        &["--cluster-node-timeout", "2000"],
    ));
    let store = RedisStore::connect_cluster(&cluster.urls()).await.unwrap();
    let owners = cluster.slot_owners();
    let t = unique("t");
    let reqs: Vec<Req> = (0..KEYS)
        .map(|i| req(&t, &format!("storm-{i}"), 1 + i as i64))
        .collect();
    let slots: Vec<u16> = reqs
        .iter()
        .map(|r| cluster.slot_of(&storage_key(s, r)))
        .collect();
    // Distinct slots for the 16 migrated keys: the first 16 keys whose slots no other key
    // shares.
    let mut migrated: Vec<usize> = Vec::new();
    for i in 0..KEYS {
        if migrated.len() < 16 && slots.iter().filter(|&&x| x == slots[i]).count() == 1 {
            migrated.push(i);
        }
    }
    assert_eq!(migrated.len(), 16, "40 keys in distinct slots");
    let (held, late) = migrated.split_at(8);
    let held: Vec<usize> = held.to_vec();
    let late: Vec<usize> = late.to_vec();
    let moves: Vec<(u16, usize, usize)> = migrated
        .iter()
        .map(|&i| {
            let from = owners[usize::from(slots[i])].unwrap();
            (slots[i], from, (from + 1) % 3)
        })
        .collect();

    let svc = Svc::holding(store, held.iter().map(|&i| reqs[i].id.clone()).collect());
    let before = cluster.error_stats();

    let barrier = Arc::new(Barrier::new(KEYS * callers));
    let mut tasks = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        for _ in 0..callers {
            let (svc, barrier, r) = (svc.clone(), barrier.clone(), r.clone());
            let late = late.contains(&i);
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                if late {
                    let mut open = svc.hold.open.subscribe();
                    open.wait_for(|p| *p >= 1).await.expect("phase");
                }
                let mut errors = Vec::new();
                let mut got = Vec::new();
                for _ in 0..per_caller {
                    got.push(svc.call_until_done(s, &r, &mut errors).await);
                }
                (r, got, errors)
            }));
        }
    }

    // The 8 held bodies run (their locks/claims exist on the source); open the migrations.
    while svc.hold.entered.load(SeqCst) < held.len() {
        svc.hold.arrived.notified().await;
    }
    let opened = Instant::now();
    {
        let (cluster, moves) = (cluster.clone(), moves.clone());
        tokio::task::spawn_blocking(move || {
            for &(slot, from, to) in &moves {
                cluster.begin_migration(slot, from, to);
            }
        })
        .await
        .unwrap();
    }
    svc.hold.open.send_replace(1);
    // Let the storm meet the half-migrated slots: wait until the nodes have answered with
    // redirections (ASK or TRYAGAIN), then move the keys and close the migrations.
    let redirected = |now: &BTreeMap<String, u64>| {
        ["ASK", "TRYAGAIN"]
            .iter()
            .map(|c| now.get(*c).unwrap_or(&0) - before.get(*c).unwrap_or(&0))
            .sum::<u64>()
    };
    let started = Instant::now();
    while redirected(&cluster.error_stats()) < 8 && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let moved = {
        let (cluster, moves) = (cluster.clone(), moves.clone());
        tokio::task::spawn_blocking(move || {
            let mut moved = 0;
            for &(slot, from, to) in &moves {
                moved += cluster.move_keys(slot, from, to);
                cluster.finish_migration(slot, from, to);
            }
            moved
        })
        .await
        .unwrap()
    };
    let migration_took = opened.elapsed();

    let mut outcomes: BTreeMap<String, Vec<Got>> = BTreeMap::new();
    let mut errors_seen = Vec::new();
    for task in tasks {
        let (r, got, errors) = task.await.unwrap();
        outcomes.entry(r.id.clone()).or_default().extend(got);
        errors_seen.extend(errors);
    }
    let after = cluster.error_stats();
    let delta: BTreeMap<&str, u64> = after
        .iter()
        .map(|(c, n)| (c.as_str(), n - before.get(c).unwrap_or(&0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    eprintln!(
        "{s:?} storm: {} requests over {KEYS} keys ({callers} concurrent callers per key, \
         {per_caller} requests each), {} slots migrated ({moved} Redis keys moved, \
         migration open {migration_took:?}); server replies {delta:?}; errors callers saw: {} {:?}",
        KEYS * REQUESTS,
        moves.len(),
        errors_seen.len(),
        error_kinds(&errors_seen)
    );

    for r in &reqs {
        let got = &outcomes[&r.id];
        assert_eq!(svc.count(r), 1, "{}: exactly one effect", r.id);
        // The caller whose body ran may have seen its completion fail (a time-out) and, on
        // retrying, the replay: then no caller reports `Executed`, but all share one receipt.
        let receipts: Vec<&idempotent_tests::Receipt> = got
            .iter()
            .map(|g| match g {
                Got::Executed(x) | Got::Replayed(x) => x,
                other => panic!("{}: {other:?}", r.id),
            })
            .collect();
        assert!(
            receipts.iter().all(|x| *x == receipts[0]),
            "{}: one receipt: {got:?}",
            r.id
        );
        let executed = got.iter().filter(|g| matches!(g, Got::Executed(_))).count();
        assert!(executed <= 1, "{}: {got:?}", r.id);
    }
    assert_eq!(svc.total(), KEYS);
    assert!(
        redirected(&after) > 0,
        "the storm never met a migrating slot: {delta:?}"
    );
    // Each migrated key's Redis keys now live on the target, none on the source.
    let owners_after = cluster.slot_owners();
    for (&i, &(slot, from, to)) in migrated.iter().zip(&moves) {
        assert_eq!(owners_after[usize::from(slot)], Some(to), "slot {slot}");
        let hex = storage_key(s, &reqs[i]).hex();
        let on = |n: usize| {
            cluster.nodes[n]
                .cli(&["CLUSTER", "GETKEYSINSLOT", &slot.to_string(), "100"])
                .contains(&hex)
        };
        assert!(on(to), "{}: keys not on the target node {to}", reqs[i].id);
        assert!(
            !on(from),
            "{}: keys left on the source node {from}",
            reqs[i].id
        );
    }
    // Every key replays after the storm.
    for r in &reqs {
        let got = svc.call(s, r).await;
        assert!(matches!(got, Got::Replayed(_)), "{}: {got:?}", r.id);
    }
    assert_eq!(svc.total(), KEYS);
}

/// The storm on `dedup_table`, 10 concurrent callers per key. Fails with redis-rs 1.8.1 (see
/// [`redis_rs_concurrent_ask_redirects_wedge_the_cluster_connection`]): `Ask` errors reach
/// callers once redis-rs's 16 redirections run out, then the store's connection stops
/// answering and callers never finish. Passes with the store replacing a connection that
/// timed out (branch `cluster-reconnect`, notes/cluster.md), callers retrying the errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(has_redis_server),
    ignore = "needs redis-server on PATH (starts servers of its own)"
)]
async fn storm_dedup_table_during_slot_migration() {
    storm_during_slot_migration(Strategy::Dedup, 10).await
}

/// As [`storm_dedup_table_during_slot_migration`], for
/// `distributed_lock`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(has_redis_server),
    ignore = "needs redis-server on PATH (starts servers of its own)"
)]
async fn storm_distributed_lock_during_slot_migration() {
    storm_during_slot_migration(Strategy::Lock, 10).await
}

/// One call in flight at a time (so redis-rs's `ASKING` cannot be consumed by another
/// request, see [`redis_rs_concurrent_ask_redirects_wedge_the_cluster_connection`]), each
/// while its key's slot is half migrated, for every strategy:
/// - a replay of a key completed before the migration opened (`distributed_lock`'s script
///   touches three keys, some missing: `TRYAGAIN` until the keys have moved);
/// - a fresh call (a missing key: `ASK` to the target, where single-key scripts run with
///   `ASKING` and multi-key ones get `TRYAGAIN` until the migration ends);
///
/// each call returns the right outcome with no error once the migration completes (redis-rs
/// retries `ASK`/`TRYAGAIN` and follows the `MOVED` that comes after); one effect per key;
/// both replay afterwards from the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(has_redis_server),
    ignore = "needs redis-server on PATH (starts servers of its own)"
)]
async fn slot_migration_one_call_at_a_time_each_strategy() {
    if !redis_server_on_path() {
        return;
    }
    let cluster = Arc::new(RedisCluster::start_with(
        3,
        &["--cluster-node-timeout", "2000"],
    ));
    let store = RedisStore::connect_cluster(&cluster.urls()).await.unwrap();
    let svc = Svc::new(store);
    let owners = cluster.slot_owners();
    let t = unique("t");
    for s in [Strategy::Lock, Strategy::Dedup, Strategy::Token] {
        let (done, fresh) = match s {
            Strategy::Token => (
                token_on(&svc, &cluster, &owners, &t, |_| true).await,
                token_on(&svc, &cluster, &owners, &t, |_| true).await,
            ),
            _ => {
                let mut v = requests_on(&cluster, &owners, s, &t, 2, |_| true);
                (v.remove(0), v.remove(0))
            }
        };
        let Got::Executed(receipt) = svc.call(s, &done).await else {
            panic!("{s:?}: first call")
        };
        for (r, expect_replay) in [(&done, true), (&fresh, false)] {
            let slot = cluster.slot_of(&storage_key(s, r));
            let from = cluster.node_serving(slot);
            let to = (from + 1) % 3;
            let before = cluster.error_stats();
            cluster.begin_migration(slot, from, to);
            let call = tokio::spawn({
                let (svc, r) = (svc.clone(), r.clone());
                async move { svc.call(s, &r).await }
            });
            // Let the call meet the half-migrated slot (a redirection), unless it is served
            // without one (a key the source still has, for a single-key script).
            let started = Instant::now();
            let redirected = loop {
                let now = cluster.error_stats();
                let n: u64 = ["ASK", "TRYAGAIN"]
                    .iter()
                    .map(|c| now.get(*c).unwrap_or(&0) - before.get(*c).unwrap_or(&0))
                    .sum();
                if n > 0 || call.is_finished() || started.elapsed() > Duration::from_secs(3) {
                    break n;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            {
                let cluster = cluster.clone();
                tokio::task::spawn_blocking(move || {
                    cluster.move_keys(slot, from, to);
                    cluster.finish_migration(slot, from, to);
                })
                .await
                .unwrap();
            }
            let got = call.await.unwrap();
            let after = cluster.error_stats();
            let delta: BTreeMap<&str, u64> = after
                .iter()
                .map(|(c, n)| (c.as_str(), n - before.get(c).unwrap_or(&0)))
                .filter(|(c, n)| *n > 0 && *c != "NOSCRIPT")
                .collect();
            eprintln!(
                "{s:?} {} during the migration of slot {slot}: {got:?}; replies {delta:?} \
                 (redirections before the keys moved: {redirected})",
                if expect_replay {
                    "replay"
                } else {
                    "fresh call"
                }
            );
            if expect_replay {
                assert_eq!(got, Got::Replayed(receipt.clone()), "{s:?}");
            } else {
                assert!(matches!(got, Got::Executed(_)), "{s:?} fresh: {got:?}");
            }
            assert_eq!(svc.count(r), 1, "{s:?}: one effect");
            let again = svc.call(s, r).await;
            assert!(matches!(again, Got::Replayed(_)), "{s:?} after: {again:?}");
            assert_eq!(cluster.node_serving(slot), to);
        }
    }
}

// ------------------------------------------------------------------------------ NOSCRIPT

/// After `SCRIPT FLUSH` on the node serving a key (then on every node), the next call of
/// each strategy — a fresh key on that node, and a replay of the first — reloads the script
/// and succeeds; the node did answer `NOSCRIPT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[cfg_attr(
    not(has_redis_server),
    ignore = "needs redis-server on PATH (starts servers of its own)"
)]
async fn noscript_after_script_flush_reloads_and_succeeds() {
    if !redis_server_on_path() {
        return;
    }
    let cluster = RedisCluster::start_with(3, &cluster_args(true));
    let store = RedisStore::connect_cluster(&cluster.urls()).await.unwrap();
    let svc = Svc::new(store);
    let owners = cluster.slot_owners();
    let t = unique("t");
    let node = 1;
    let on_node = |n: usize| n == node;
    for s in [Strategy::Lock, Strategy::Dedup, Strategy::Token] {
        let reqs = match s {
            Strategy::Token => {
                let mut v = Vec::new();
                for _ in 0..3 {
                    v.push(token_on(&svc, &cluster, &owners, &t, on_node).await);
                }
                v
            }
            _ => requests_on(&cluster, &owners, s, &t, 3, on_node),
        };
        let first = svc.call(s, &reqs[0]).await;
        let Got::Executed(receipt) = first else {
            panic!("{s:?}: {first:?}")
        };
        for (flush_all, fresh) in [(false, &reqs[1]), (true, &reqs[2])] {
            let before = cluster.nodes[node]
                .error_stats()
                .get("NOSCRIPT")
                .copied()
                .unwrap_or(0);
            if flush_all {
                (0..3).for_each(|i| cluster.script_flush(i));
            } else {
                cluster.script_flush(node);
            }
            let got = svc.call(s, fresh).await;
            assert!(
                matches!(got, Got::Executed(_)),
                "{s:?} fresh key after SCRIPT FLUSH (all nodes: {flush_all}): {got:?}"
            );
            let noscript = cluster.nodes[node]
                .error_stats()
                .get("NOSCRIPT")
                .copied()
                .unwrap_or(0)
                - before;
            assert!(noscript > 0, "{s:?}: the node never answered NOSCRIPT");
            if flush_all {
                (0..3).for_each(|i| cluster.script_flush(i));
            } else {
                cluster.script_flush(node);
            }
            assert_eq!(
                svc.call(s, &reqs[0]).await,
                Got::Replayed(receipt.clone()),
                "{s:?} replay after SCRIPT FLUSH (all nodes: {flush_all})"
            );
            assert_eq!(svc.count(fresh), 1);
        }
        assert_eq!(svc.count(&reqs[0]), 1);
    }
}

// --------------------------------------------------------------- redis-rs, without the runtime

/// redis-rs 1.8.1 `cluster-async` alone (plain `GET`s, no idempotency runtime): 100 concurrent
/// commands on a key whose slot is migrating (the source answers `ASK`). redis-rs sends
/// `ASKING` as a request of its own on the multiplexed connection it shares with every other
/// caller, so another request can consume the node's one-shot ASKING flag: the redirected
/// command gets `MOVED` back to the source, which answers `ASK` again, until the 16 retries run
/// out (`Ask` errors reach callers; seen from ~10 concurrent commands). At this concurrency
/// the `ClusterConnection` then stops answering altogether: every later command, to any node,
/// times out (5 s), still after 90 s; a fresh connection from the same client answers at
/// once. Ignored: it pins a third-party bug (run it with `--ignored`; when it fails, redis-rs
/// is fixed and the `storm_*_during_slot_migration` tests should pass).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "pins a redis-rs 1.8.1 bug (notes/cluster.md); takes ~20 s"]
async fn redis_rs_concurrent_ask_redirects_wedge_the_cluster_connection() {
    if !redis_server_on_path() {
        return;
    }
    let cluster = RedisCluster::start_with(3, &["--cluster-node-timeout", "2000"]);
    let client = redis::cluster::ClusterClient::builder(cluster.urls())
        .response_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let conn = client.get_async_connection().await.unwrap();
    let key = "{mig}:a";
    let slot = cluster.keyslot(key);
    let from = cluster.node_serving(slot);
    let to = (from + 1) % 3;
    cluster.begin_migration(slot, from, to);
    let gets = (0..100).map(|_| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("GET")
                .arg(key)
                .query_async::<redis::Value>(&mut conn)
                .await
                .map_err(|e| e.to_string())
        }
    });
    let during = futures_util::future::join_all(gets).await;
    let failed = during.iter().filter(|r| r.is_err()).count();
    cluster.move_keys(slot, from, to);
    cluster.finish_migration(slot, from, to);
    let mut conn = conn.clone();
    let after = redis::cmd("GET")
        .arg("{elsewhere}:x")
        .query_async::<redis::Value>(&mut conn)
        .await;
    let mut fresh = client.get_async_connection().await.unwrap();
    let fresh_get = redis::cmd("GET")
        .arg("{elsewhere}:x")
        .query_async::<redis::Value>(&mut fresh)
        .await;
    eprintln!(
        "during the migration {failed}/100 GETs failed ({:?}); after it, the same connection: \
         {after:?}; a fresh one: {fresh_get:?}",
        during.iter().find(|r| r.is_err())
    );
    assert!(fresh_get.is_ok(), "{fresh_get:?}");
    assert!(
        failed > 0 && after.is_err(),
        "redis-rs answered every GET and still answers: the bug is fixed, un-ignore the \
         storm_*_during_slot_migration tests"
    );
}
