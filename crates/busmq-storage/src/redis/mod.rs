//! The Redis store: standalone, sharded over independent servers, behind
//! Sentinel, or on a Redis Cluster. Needs Redis 6.2 or later (`LPOP`
//! with a count, `LMOVE`).
//!
//! # Configuration
//!
//! One `--backend` (`busmq-storage`) or `--storage` (`busmq serve`) value;
//! the scheme picks the layout:
//!
//! | layout | spec |
//! | --- | --- |
//! | standalone | `redis://[user:password@]host[:port][/db]` (`rediss://` for TLS) |
//! | sharded | several full URLs separated by commas: `redis://a:6379,redis://b:6379/2` |
//! | sentinel | `redis+sentinel://[user:password@]s1[:26379],s2[:26379]/<master-name>[/db]` |
//! | cluster | `redis+cluster://[user:password@]n1[:6379],n2[:6379]` |
//!
//! `rediss+sentinel://` and `rediss+cluster://` use TLS to every node
//! (rustls), verifying certificates against the system's roots, or the PEM
//! file `SSL_CERT_FILE` names (for a private CA). The
//! userinfo of a Sentinel spec authenticates to the master; sentinels are
//! asked without credentials. Ports default to 6379 (26379 for sentinels).
//! A password containing `,`, `/` or `@` must be percent-encoded. A
//! malformed spec is an error naming the bad part (`shard #2 of 3 ...`,
//! `sentinel #1 of 2 ...`); passwords never appear in logs or errors.
//!
//! # Data model
//!
//! Every key of a queue shares the hash tag `{<queue>}` (queue names cannot
//! contain braces), so a queue lives in one Cluster slot and every
//! operation is one Lua script over its keys:
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `busmq:{q}:meta` | hash | `next_id`, `attachments`, `ttl_ms`, `pushed`, `consumed`, `delivered_hi`; the queue exists iff this key does |
//! | `busmq:{q}:ready` | list | messages waiting, oldest first |
//! | `busmq:{q}:pending` | list | messages taken in reliable mode, not yet acked |
//! | `busmq:{q}:md` | hash | queue metadata |
//! | `busmq:{q}:lock` | string | the reliable consumer's owner, `SET ... PX lease` |
//!
//! A list member is the message id as 8 big-endian bytes followed by the
//! payload. Ids increase along both lists and every pending id is below
//! every ready id (pending messages come from the front of `ready` and go
//! back to its front as a whole), so: push is `RPUSH`, take is `LPOP
//! count` (plus `RPUSH` to `pending` in reliable mode), a cumulative ack
//! `LTRIM`s a prefix of `pending`, a requeue `LMOVE`s `pending` back to the
//! front, and a read from an id binary-searches each list with `LINDEX`
//! (one probe when ids are dense, the usual case).
//!
//! Lists rather than sorted sets, on measurement (Redis 7.0, 32-byte
//! messages, inside one script so only server work counts): a push and a
//! take cost ~0.5 and ~0.1-0.3 µs per message with lists against ~1.9 and
//! ~1.1 µs with sorted sets, and ~1.0 against ~3.0-4.5 µs for a push plus
//! take on a shallow queue. Sorted sets would make reads by id and
//! requeues one command each, but reads by id are rare next to push and
//! take, and the binary search keeps them logarithmic.
//!
//! Every operation is one script call (`EVALSHA`, reloaded on `NOSCRIPT`),
//! so one push or take is one round trip whatever the batch size. Ids are
//! Lua numbers: exact below 2^53.
//!
//! # Expiry
//!
//! Detaching the last attachment `PEXPIRE`s every key of the queue with its
//! ttl; attaching `PERSIST`s them again. A write while unattached gives a
//! key it creates (Redis drops emptied lists) the remaining ttl of the
//! meta hash, and the lock never outlives an unattached queue. So every
//! key busmq writes either belongs to an attached queue (whose attachers
//! detach) or has a TTL, and nothing lingers once every process is gone.
//!
//! Redis does not say when a key expires (keyspace events are off by
//! default and per node), so the process that started a countdown arms a
//! timer for it; when it fires, a script publishes `Expired` if the queue
//! is gone, or re-arms for the remaining ttl if the queue was written or
//! is still counting down. If that process dies first, no `Expired` is
//! published; consumers then learn it from `QueueNotFound` on their next
//! call.
//!
//! # Notifications
//!
//! Scripts `PUBLISH` on `busmq:notify` (per shard) a kind byte (`d` data,
//! `c` closed, `e` expired) followed by the queue name. [`watch`] opens
//! one subscriber connection per shard (for Sentinel, on the master the
//! sentinels name; for Cluster, any one node, since `PUBLISH` reaches every
//! node), shared by every watcher of this store. It yields `Lagged` after
//! every (re)subscribe, pings every few seconds to notice dead
//! connections, and reconnects with backoff. Nothing polls for data.
//!
//! [`watch`]: crate::Storage::watch
//!
//! # Pub/sub
//!
//! A published message is a `PUBLISH` on `busmq:pubsub:<channel>`; nothing
//! is stored. Every subscription is its own pub/sub connection (the
//! connection is the unit Redis counts), so the number `PUBLISH` answers is
//! the number of subscriptions that received the message, across every
//! process on the bus. The cost is one Redis connection per subscriber
//! (mind `maxclients`). Channels all live on the first configured shard, as
//! in node-busmq: a channel then never moves when shards are added at the
//! end of the list. On a Cluster, classic pub/sub reaches every node, but
//! `PUBLISH` counts only the subscribers connected to the node that took
//! it (node-busmq counted per node): so subscriptions and publishes all go
//! to the first reachable seed node (publishes over a connection of their
//! own), which makes the count cover everyone as long as every process
//! reaches that same seed. A subscription whose connection breaks ends
//! with an UNAVAILABLE error; a subscriber that falls behind has messages
//! dropped with a notice (see [`crate::pubsub`]), so Redis never buffers
//! for it.
//!
//! # Persistable objects
//!
//! An object is the hash `busmq:obj:{<name>}` (field to JSON text) on the
//! first shard of its name's rendezvous order. A save is one script
//! (`HSET`, plus `PEXPIRE` when it sets a ttl); a touch is `PEXPIRE`, so
//! Redis itself expires an object nobody touches. An object saved without
//! a ttl and never touched has no expiry: it lives until deleted by hand,
//! as in node-busmq: objects are the one exception to the rule under
//! Expiry above.
//!
//! # Sharding
//!
//! The shard of a queue is chosen by rendezvous hashing of the queue name
//! over the shard ids (`host:port/db`). Adding a shard moves only the
//! queues whose top-scored shard is the new one, and those are still found
//! where they live:
//!
//! 1. An attach asks every shard at once (`EXISTS` of the meta key) and
//!    uses the first shard in rendezvous order that has the queue; only a
//!    queue found nowhere is created, on the first shard of the order.
//! 2. Other operations use the location cached in this process, or find
//!    it the same way on a miss.
//! 3. A cached location that answers "no such queue" is dropped and the
//!    queue looked up again once, so a queue that expired on an old shard
//!    and was re-created on its new one is followed.
//!
//! Existing queues stay on their old shard until they expire or are
//! closed; re-created, they go to their new shard. The layout converges as
//! queues churn, and no data is moved. While processes with the old and
//! the new list run side by side (a rolling restart), old processes do not
//! see queues created on the new shard: finish the rollout before relying
//! on such queues. Removing a shard hides its queues.
//!
//! # Failure
//!
//! Each shard has one multiplexed connection, kept up by a supervisor task
//! that reconnects with backoff (100 ms doubling to 2 s), re-resolving the
//! master through the sentinels each time. Connecting times out after 2 s
//! and every command after 2 s. While a shard is unreachable, calls to it
//! fail at once with `UNAVAILABLE` (a call made while a connection attempt
//! is under way waits for that attempt); nothing is buffered. A connection
//! error, a timeout, `READONLY` (a demoted master), `MASTERDOWN` or
//! `UNBLOCKED` drops the connection and triggers a reconnect. An
//! unreachable Redis at start-up is logged with its URL and retried
//! forever; [`Storage::ready`](crate::Storage::ready) is false until every
//! shard is connected.

mod config;
mod conn;
mod expiry;
mod keys;
mod listing;
mod notify;
mod reply;
mod routing;
mod scripts;
mod shard;
mod store;
mod subscriptions;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use config::{Endpoint, Layout, RedisConfig, is_redis_spec};
use conn::{Connector, Node};
use keys::placement;
use scripts::Scripts;

use crate::{Error, Notification, QueueName, Result};

/// Prefix of every key busmq writes.
pub const KEY_PREFIX: &str = "busmq";

/// The pub/sub channel of notifications, on every shard.
pub const CHANNEL: &str = "busmq:notify";

/// Notifications buffered per watcher before it is told it lagged.
const NOTIFY_CAPACITY: usize = 4096;

/// Prefix of the Redis channel of a busmq pub/sub channel.
pub const PUBSUB_PREFIX: &str = "busmq:pubsub:";

/// The shard every pub/sub channel lives on: the first configured.
const PUBSUB_SHARD: usize = 0;

/// How often an idle subscriber connection is pinged.
const PING_INTERVAL: Duration = Duration::from_secs(5);

/// Longest ttl or lease sent to Redis (100 years); longer ones are capped.
const MAX_MS: u128 = 100 * 365 * 24 * 3600 * 1000;

/// A [`Storage`](crate::Storage) on Redis. Cheap to clone: clones share connections.
/// Background tasks (connection supervisors, subscribers, expiry timers)
/// stop when the last clone is dropped.
#[derive(Clone)]
pub struct RedisStorage {
    inner: Arc<Inner>,
}

struct Inner {
    config: RedisConfig,
    nodes: Vec<Arc<Node>>,
    shard_ids: Vec<String>,
    scripts: Scripts,
    locations: Mutex<HashMap<QueueName, usize>>,
    /// Armed expiry timers, by shard and queue, with their deadline.
    timers: Mutex<HashMap<(usize, QueueName), Instant>>,
    notify: broadcast::Sender<Notification>,
    watching: AtomicBool,
    /// Cluster only: the connection publishes go over, to the node
    /// subscriptions use (opened on first publish, dropped when it fails).
    cluster_publisher: tokio::sync::Mutex<Option<::redis::aio::MultiplexedConnection>>,
    cancel: CancellationToken,
    runtime: Handle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(MAX_MS) as u64
}

impl RedisStorage {
    /// A store on the deployment `config` describes. Returns at once:
    /// connections are made in the background (and remade whenever they
    /// break); calls fail with UNAVAILABLE until they are up. Must be
    /// called within a tokio runtime.
    pub fn new(config: RedisConfig) -> Result<Self> {
        let runtime = Handle::try_current().map_err(|_| {
            Error::Internal("the Redis store must be created within a tokio runtime".into())
        })?;
        // rustls needs a process-wide crypto provider for rediss://; an
        // error means one is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let connectors: Vec<(Connector, String)> = match &config.layout {
            Layout::Standalone(e) => vec![(Connector::Direct(e.clone()), e.shard_id())],
            Layout::Sharded(shards) => shards
                .iter()
                .map(|e| (Connector::Direct(e.clone()), e.shard_id()))
                .collect(),
            Layout::Sentinel {
                sentinels,
                master,
                node,
            } => vec![(
                Connector::Sentinel {
                    sentinels: sentinels.clone(),
                    master: master.clone(),
                    node: node.clone(),
                },
                master.clone(),
            )],
            Layout::Cluster(nodes) => vec![(Connector::Cluster(nodes.clone()), "cluster".into())],
        };
        let cancel = CancellationToken::new();
        let mut nodes = Vec::with_capacity(connectors.len());
        let mut shard_ids = Vec::with_capacity(connectors.len());
        for (connector, id) in connectors {
            let node = Node::new(connector);
            runtime.spawn(Arc::clone(&node).supervise(cancel.clone()));
            nodes.push(node);
            shard_ids.push(id);
        }
        tracing::info!(layout = config.layout_name(), "Redis store on {config}");
        let (notify, _) = broadcast::channel(NOTIFY_CAPACITY);
        Ok(RedisStorage {
            inner: Arc::new(Inner {
                config,
                nodes,
                shard_ids,
                scripts: Scripts::new(),
                locations: Mutex::new(HashMap::new()),
                timers: Mutex::new(HashMap::new()),
                notify,
                watching: AtomicBool::new(false),
                cluster_publisher: tokio::sync::Mutex::new(None),
                cancel,
                runtime,
            }),
        })
    }

    /// The configuration this store was opened with.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// Waits until every shard is connected, up to `timeout`; whether they
    /// are.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.inner.nodes.iter().all(|n| n.connected()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The index of the shard (in the configured list) where a new queue
    /// named `queue` is created: the first of its rendezvous order.
    pub fn home_shard(&self, queue: &QueueName) -> usize {
        shard::order(&self.inner.shard_ids, placement(queue))
            .first()
            .copied()
            .unwrap_or(0)
    }

    /// The index of the shard (in the configured list) where `queue`
    /// lives now, or would be created; for tests and tools.
    pub async fn shard_of(&self, queue: &QueueName) -> Result<usize> {
        Ok(self.inner.locate(queue, true).await?.0)
    }
}
