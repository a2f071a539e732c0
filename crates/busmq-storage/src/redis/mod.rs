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
//! forever; [`Storage::ready`] is false until every
//! shard is connected.

mod config;
mod conn;
mod scripts;
mod shard;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use ::redis::aio::{PubSubSink, PubSubStream};
use ::redis::{Cmd, FromRedisValue, RedisResult, Script, ScriptInvocation, Value};
use async_trait::async_trait;
use busmq_core::{DEAD_LETTER_SUFFIX, DEAD_LETTER_TTL_SECS, DEFAULT_TTL_SECS, Limits};
use bytes::Bytes;
use futures::StreamExt;
use tokio::runtime::Handle;
use tokio::sync::broadcast;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::{BroadcastStream, ReceiverStream};
use tokio_util::sync::CancellationToken;

pub use config::{Endpoint, Layout, RedisConfig, is_redis_spec};
use conn::{Connector, Node};
use scripts::Scripts;

use crate::pubsub::{Offer, Outbox, SUBSCRIPTION_BUFFER};
use crate::{
    Attached, ChannelName, Error, IdRange, LeaseToken, LeasedMessage, Leases, Message,
    Notification, Notifications, ObjectFields, ObjectName, QueueInfo, QueueName, ReliableLock,
    Result, Settled, Settlement, Storage, Subscription, TakeMode,
};

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

/// Queue locations remembered per process before the cache starts over.
const LOCATION_CACHE_MAX: usize = 100_000;

/// Slack after a ttl before looking whether the queue is gone.
const EXPIRY_GRACE: Duration = Duration::from_millis(50);

/// Longest ttl or lease sent to Redis (100 years); longer ones are capped.
const MAX_MS: u128 = 100 * 365 * 24 * 3600 * 1000;

/// Queue names in notifications are trusted (busmq wrote them), whatever
/// the local name limit.
const TRUSTED_NAMES: Limits = Limits {
    max_message_bytes: usize::MAX,
    max_batch_len: usize::MAX,
    max_name_len: usize::MAX,
};

/// A [`Storage`] on Redis. Cheap to clone: clones share connections.
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

/// A script's answer, by status.
enum Outcome {
    Ok(Vec<Value>),
    Missing,
    UnknownAck,
    Locked,
    LeaseExpired,
    UnknownLease,
    LeasesActive,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(MAX_MS) as u64
}

/// What decides where a queue lives (hash slot and shard): its name
/// without any dead-letter suffix, so a queue and its dead-letter queue
/// (and that one's) share a slot and a shard, and a script moves a message
/// between them atomically.
fn placement(queue: &QueueName) -> &str {
    let mut name = queue.as_str();
    while let Some(base) = name.strip_suffix(DEAD_LETTER_SUFFIX)
        && !base.is_empty()
    {
        name = base;
    }
    name
}

fn keys(queue: &QueueName) -> [String; 8] {
    let place = placement(queue);
    let base = if place == queue.as_str() {
        format!("{KEY_PREFIX}:{{{queue}}}")
    } else {
        format!("{KEY_PREFIX}:{{{place}}}:{queue}")
    };
    [
        format!("{base}:meta"),
        format!("{base}:ready"),
        format!("{base}:pending"),
        format!("{base}:md"),
        format!("{base}:lock"),
        format!("{base}:leases"),
        format!("{base}:deadlines"),
        format!("{base}:counts"),
    ]
}

/// The hash of a persistable object.
fn object_key(object: &ObjectName) -> String {
    format!("{KEY_PREFIX}:obj:{{{object}}}")
}

/// The Redis channel of a pub/sub channel.
fn pubsub_channel(channel: &ChannelName) -> String {
    format!("{PUBSUB_PREFIX}{channel}")
}

/// A reply (or the lack of one in time) from connection `generation` of
/// `node` as a result: a broken connection is reported to the supervisor.
fn settle<T>(
    node: &Node,
    generation: u64,
    reply: std::result::Result<RedisResult<T>, tokio::time::error::Elapsed>,
) -> Result<T> {
    match reply {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            let c = conn::classify(node.label(), &e);
            if c.reconnect {
                node.mark_broken(generation, &config::describe(&e));
            }
            Err(c.error)
        }
        Err(_) => {
            let why = format!("no answer within {:?}", conn::CALL_TIMEOUT);
            node.mark_broken(generation, &why);
            Err(Error::Unavailable(format!(
                "Redis at {}: {why}",
                node.label()
            )))
        }
    }
}

fn unexpected(what: &str, v: &impl std::fmt::Debug) -> Error {
    let shown: String = format!("{v:?}").chars().take(200).collect();
    Error::Internal(format!("unexpected reply from Redis to {what}: {shown}"))
}

fn int(v: Option<&Value>, what: &str) -> Result<i64> {
    match v {
        Some(Value::Int(i)) => Ok(*i),
        Some(Value::BulkString(b)) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| unexpected(what, b)),
        other => Err(unexpected(what, &other)),
    }
}

fn uint(v: Option<&Value>, what: &str) -> Result<u64> {
    let i = int(v, what)?;
    u64::try_from(i).map_err(|_| unexpected(what, &i))
}

/// The default ttl of a dead-letter queue, in ms, as scripts take it.
fn dead_letter_ttl_ms() -> u64 {
    DEAD_LETTER_TTL_SECS * 1000
}

/// Decodes a lease script's flat `{member, attempt, ...}` array.
fn leased_members(v: Option<Value>) -> Result<Vec<LeasedMessage>> {
    let items = match v {
        Some(Value::Array(items)) => items,
        other => return Err(unexpected("lease", &other)),
    };
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut items = items.into_iter();
    while let Some(member) = items.next() {
        let attempt = int(items.next().as_ref(), "a lease attempt")?;
        let message = members(Some(Value::Array(vec![member])), "lease")?
            .pop()
            .ok_or_else(|| unexpected("lease", &"an empty member"))?;
        out.push(LeasedMessage {
            message,
            attempt: u32::try_from(attempt).map_err(|_| unexpected("lease", &attempt))?,
        });
    }
    Ok(out)
}

fn members(v: Option<Value>, what: &str) -> Result<Vec<Message>> {
    let items = match v {
        Some(Value::Array(items)) => items,
        Some(Value::Nil) | None => return Ok(Vec::new()),
        other => return Err(unexpected(what, &other)),
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::BulkString(b) if b.len() >= 8 => {
                let mut id = [0u8; 8];
                id.copy_from_slice(&b[..8]);
                Ok(Message {
                    id: u64::from_be_bytes(id),
                    payload: Bytes::from(b).slice(8..),
                })
            }
            other => Err(unexpected(what, &other)),
        })
        .collect()
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

type Args<'a> = &'a (dyn Fn(&mut ScriptInvocation<'_>) + Sync);

impl Inner {
    /// Runs `script` over the keys of `queue` on `shard`; when `durable`,
    /// then waits for [`RedisConfig::wait_replicas`] on the same connection.
    async fn run(
        &self,
        shard: usize,
        script: &Script,
        queue: &QueueName,
        args: Args<'_>,
        durable: bool,
    ) -> Result<Outcome> {
        let mut all_keys = keys(queue).to_vec();
        if self.scripts.dead_letters(script) {
            all_keys.extend(keys(&queue.dead_letters()));
        }
        let reply = self.invoke(shard, script, &all_keys, args, durable).await?;
        let items = match reply {
            Value::Array(items) => items,
            other => return Err(unexpected("a script", &other)),
        };
        let mut items = items.into_iter();
        let status = int(items.next().as_ref(), "a script status")?;
        match status {
            scripts::OK => Ok(Outcome::Ok(items.collect())),
            scripts::MISSING => Ok(Outcome::Missing),
            scripts::UNKNOWN_ACK => Ok(Outcome::UnknownAck),
            scripts::LOCKED => Ok(Outcome::Locked),
            scripts::LEASE_EXPIRED => Ok(Outcome::LeaseExpired),
            scripts::UNKNOWN_LEASE => Ok(Outcome::UnknownLease),
            scripts::LEASES_ACTIVE => Ok(Outcome::LeasesActive),
            other => Err(unexpected("a script status", &other)),
        }
    }

    /// Runs `script` over `keys` on `shard`; when `durable`, then waits for
    /// [`RedisConfig::wait_replicas`] on the same connection.
    async fn invoke(
        &self,
        shard: usize,
        script: &Script,
        keys: &[String],
        args: Args<'_>,
        durable: bool,
    ) -> Result<Value> {
        let node = &self.nodes[shard];
        let (generation, mut conn) = node.conn().await?;
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        args(&mut invocation);
        let reply = tokio::time::timeout(
            conn::CALL_TIMEOUT,
            invocation.invoke_async::<Value>(&mut conn),
        )
        .await;
        let value = settle(node, generation, reply)?;
        if durable && self.config.wait_replicas > 0 {
            self.wait_replicas(node, generation, &mut conn).await?;
        }
        Ok(value)
    }

    /// Runs one command on `shard`.
    async fn query<T: FromRedisValue>(&self, shard: usize, cmd: &Cmd) -> Result<T> {
        let node = &self.nodes[shard];
        let (generation, mut conn) = node.conn().await?;
        let reply = tokio::time::timeout(conn::CALL_TIMEOUT, cmd.query_async::<T>(&mut conn)).await;
        settle(node, generation, reply)
    }

    /// Runs a `PUBLISH` on the Cluster node subscriptions use.
    async fn cluster_publish(&self, cmd: &Cmd) -> Result<i64> {
        let node = &self.nodes[PUBSUB_SHARD];
        let unavailable =
            |e: String| Error::Unavailable(format!("Redis at {}: publish: {e}", node.label()));
        let mut conn = {
            let mut publisher = self.cluster_publisher.lock().await;
            match publisher.as_ref() {
                Some(conn) => conn.clone(),
                None => {
                    let endpoints = node
                        .connector()
                        .pubsub_endpoints()
                        .await
                        .map_err(unavailable)?;
                    let conn = conn::connect_first(&endpoints).await.map_err(unavailable)?;
                    *publisher = Some(conn.clone());
                    conn
                }
            }
        };
        // The multiplexed connection is shared: no lock while waiting.
        let failed =
            match tokio::time::timeout(conn::CALL_TIMEOUT, cmd.query_async::<i64>(&mut conn)).await
            {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) => config::describe(&e),
                Err(_) => format!("no answer within {:?}", conn::CALL_TIMEOUT),
            };
        *self.cluster_publisher.lock().await = None;
        Err(unavailable(failed))
    }

    /// The shard of a persistable object: the first of its rendezvous
    /// order.
    fn object_shard(&self, object: &ObjectName) -> usize {
        shard::order(&self.shard_ids, object.as_str())
            .first()
            .copied()
            .unwrap_or(0)
    }

    /// `WAIT`s until the configured number of replicas have every write
    /// made so far on `conn` (which must be the one that wrote).
    async fn wait_replicas(
        &self,
        node: &Node,
        generation: u64,
        conn: &mut conn::Conn,
    ) -> Result<()> {
        let want = self.config.wait_replicas;
        let timeout = self.config.wait_timeout;
        let reply = tokio::time::timeout(
            conn::CALL_TIMEOUT,
            ::redis::cmd("WAIT")
                .arg(want)
                .arg(ms(timeout))
                .query_async::<i64>(conn),
        )
        .await;
        let got = settle(node, generation, reply)?;
        if got >= i64::from(want) {
            return Ok(());
        }
        // Behind Sentinel the usual cause is a failover: the replica was
        // promoted and no longer follows this node. Ask the sentinels again
        // rather than keep writing here.
        if matches!(self.config.layout, Layout::Sentinel { .. }) {
            node.mark_broken(
                generation,
                &format!("{got} of {want} replicas confirmed a write"),
            );
        }
        Err(Error::Unavailable(format!(
            "Redis at {}: {got} of {want} replicas confirmed the write within {timeout:?}; \
             it may or may not be stored",
            node.label()
        )))
    }

    /// Whether `queue` exists on `shard`.
    async fn exists(&self, shard: usize, queue: &QueueName) -> Result<bool> {
        let [meta, ..] = keys(queue);
        let n: i64 = self.query(shard, ::redis::cmd("EXISTS").arg(meta)).await?;
        Ok(n > 0)
    }

    fn remember(&self, queue: &QueueName, shard: usize) {
        if self.nodes.len() == 1 {
            return;
        }
        let mut locations = lock(&self.locations);
        if locations.len() >= LOCATION_CACHE_MAX {
            locations.clear();
        }
        locations.insert(queue.clone(), shard);
    }

    fn forget(&self, queue: &QueueName) {
        if self.nodes.len() > 1 {
            lock(&self.locations).remove(queue);
        }
    }

    /// Where `queue` lives: `(shard, from_cache)`. `fresh` skips the cache.
    /// A queue found nowhere maps to the first shard of its rendezvous
    /// order, where it would be created.
    async fn locate(&self, queue: &QueueName, fresh: bool) -> Result<(usize, bool)> {
        if self.nodes.len() == 1 {
            return Ok((0, false));
        }
        if !fresh && let Some(&shard) = lock(&self.locations).get(queue) {
            return Ok((shard, true));
        }
        let order = shard::order(&self.shard_ids, placement(queue));
        let found =
            futures::future::join_all(order.iter().map(|&shard| self.exists(shard, queue))).await;
        for (&shard, found) in order.iter().zip(found) {
            // An unreachable shard earlier in the order may hold the queue:
            // no answer is better than a wrong one.
            if found? {
                self.remember(queue, shard);
                return Ok((shard, false));
            }
        }
        Ok((order[0], false))
    }

    /// Runs `script` where `queue` lives, following it once if a cached
    /// location turns out stale. Returns the shard it ran on.
    async fn exec(
        &self,
        queue: &QueueName,
        script: &Script,
        args: Args<'_>,
        durable: bool,
    ) -> Result<(usize, Outcome)> {
        let (shard, cached) = self.locate(queue, false).await?;
        let outcome = self.run(shard, script, queue, args, durable).await?;
        if matches!(outcome, Outcome::Missing) && cached {
            self.forget(queue);
            let (again, _) = self.locate(queue, true).await?;
            if again != shard {
                let outcome = self.run(again, script, queue, args, durable).await?;
                return Ok((again, outcome));
            }
        }
        Ok((shard, outcome))
    }

    /// Arms the expiry of `queue`'s dead-letter queue when a script just
    /// gave it dead letters while unattached (`pttl` >= 0).
    fn arm_dead_letters(
        self: &Arc<Self>,
        shard: usize,
        queue: &QueueName,
        pttl: Option<&Value>,
    ) -> Result<()> {
        let pttl = int(pttl, "a dead-letter ttl")?;
        if let Ok(pttl) = u64::try_from(pttl) {
            let dlq = queue.dead_letters();
            self.remember(&dlq, shard);
            self.arm_expiry(shard, dlq, Duration::from_millis(pttl));
        }
        Ok(())
    }

    /// Looks again when a countdown started here should be over, and
    /// publishes Expired if the queue is gone.
    fn arm_expiry(self: &Arc<Self>, shard: usize, queue: QueueName, delay: Duration) {
        let deadline = Instant::now() + delay + EXPIRY_GRACE;
        let key = (shard, queue);
        {
            let mut timers = lock(&self.timers);
            if timers.get(&key).is_some_and(|armed| *armed <= deadline) {
                // The armed timer fires first and re-arms if need be.
                return;
            }
            timers.insert(key.clone(), deadline);
        }
        let weak = Arc::downgrade(self);
        let cancel = self.cancel.clone();
        self.runtime.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(deadline) => {}
            }
            let Some(inner) = weak.upgrade() else { return };
            {
                let mut timers = lock(&inner.timers);
                if timers.get(&key) != Some(&deadline) {
                    return; // superseded by an earlier deadline
                }
                timers.remove(&key);
            }
            drop(inner);
            let (shard, queue) = key;
            check_expiry(weak, shard, queue, cancel).await;
        });
    }

    /// Starts the subscribers (once).
    fn start_watching(&self) {
        if self.watching.swap(true, Ordering::SeqCst) {
            return;
        }
        for node in &self.nodes {
            self.runtime.spawn(subscribe(
                Arc::clone(node),
                self.notify.clone(),
                self.cancel.clone(),
            ));
        }
    }
}

/// Runs the expiry check of `queue` on `shard` (retrying while Redis is
/// unavailable): publishes Expired if the queue is gone, re-arms if it is
/// still counting down.
async fn check_expiry(
    weak: Weak<Inner>,
    shard: usize,
    queue: QueueName,
    cancel: CancellationToken,
) {
    for attempt in 0..10u32 {
        if attempt > 0 {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        let Some(inner) = weak.upgrade() else { return };
        let q = queue.as_str();
        let args = |inv: &mut ScriptInvocation<'_>| {
            inv.arg(CHANNEL).arg(q);
        };
        match inner
            .run(shard, &inner.scripts.expire_check, &queue, &args, false)
            .await
        {
            Ok(Outcome::Ok(v)) => {
                match int(v.first(), "an expiry check") {
                    Ok(-2) => {
                        tracing::debug!(queue = %queue, "queue expired");
                        inner.forget(&queue);
                    }
                    Ok(pttl) if pttl >= 0 => {
                        inner.arm_expiry(shard, queue, Duration::from_millis(pttl as u64));
                    }
                    Ok(_) => {} // attached again
                    Err(e) => tracing::warn!(queue = %queue, "expiry check: {e}"),
                }
                return;
            }
            Ok(_) => return,
            Err(e) => tracing::debug!(queue = %queue, "expiry check failed, retrying: {e}"),
        }
    }
}

/// Opens a subscription to [`CHANNEL`] for `node`.
async fn open_subscription(
    node: &Node,
) -> std::result::Result<(PubSubSink, PubSubStream, Endpoint), String> {
    let endpoints = node.connector().pubsub_endpoints().await?;
    let (pubsub, endpoint) = conn::open_pubsub(&endpoints).await?;
    let (mut sink, stream) = pubsub.split();
    match tokio::time::timeout(conn::RESPONSE_TIMEOUT, sink.subscribe(CHANNEL)).await {
        Ok(Ok(())) => Ok((sink, stream, endpoint)),
        Ok(Err(e)) => Err(format!("{}: {}", endpoint.redacted(), config::describe(&e))),
        Err(_) => Err(format!("{}: SUBSCRIBE timed out", endpoint.redacted())),
    }
}

fn parse_notification(payload: &[u8]) -> Option<Notification> {
    let (&kind, name) = payload.split_first()?;
    let name = std::str::from_utf8(name).ok()?;
    let queue = QueueName::parse(name, &TRUSTED_NAMES).ok()?;
    match kind {
        b'd' => Some(Notification::Data(queue)),
        b'c' => Some(Notification::Closed(queue)),
        b'e' => Some(Notification::Expired(queue)),
        _ => None,
    }
}

/// Forwards the notifications of one shard into `tx` until `cancel`,
/// resubscribing with backoff whenever the connection drops.
async fn subscribe(
    node: Arc<Node>,
    tx: broadcast::Sender<Notification>,
    cancel: CancellationToken,
) {
    let mut backoff = conn::MIN_BACKOFF;
    let mut failures: u32 = 0;
    loop {
        let opened = tokio::select! {
            _ = cancel.cancelled() => return,
            r = open_subscription(&node) => r,
        };
        match opened {
            Ok((mut sink, mut stream, endpoint)) => {
                failures = 0;
                backoff = conn::MIN_BACKOFF;
                tracing::debug!(redis = %endpoint, "subscribed to {CHANNEL}");
                // Anything published while not subscribed is lost.
                let _ = tx.send(Notification::Lagged);
                let mut ping = tokio::time::interval(PING_INTERVAL);
                ping.tick().await;
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        msg = stream.next() => match msg {
                            Some(msg) => match parse_notification(msg.get_payload_bytes()) {
                                Some(n) => { let _ = tx.send(n); }
                                None => tracing::debug!("ignoring a malformed notification"),
                            },
                            None => {
                                tracing::warn!(redis = %endpoint, "notification connection closed; resubscribing");
                                break;
                            }
                        },
                        _ = ping.tick() => {
                            let pong = tokio::time::timeout(conn::RESPONSE_TIMEOUT, sink.ping::<Value>()).await;
                            if !matches!(pong, Ok(Ok(_))) {
                                tracing::warn!(redis = %endpoint, "notification connection does not answer; resubscribing");
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(30) {
                    tracing::warn!(redis = %node.label(), "cannot subscribe to notifications: {e}");
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(conn::MAX_BACKOFF);
    }
}

/// Opens a subscription connection to `channel` on the pub/sub shard.
async fn open_channel(
    node: &Node,
    channel: &ChannelName,
) -> std::result::Result<(PubSubSink, PubSubStream), String> {
    let endpoints = node.connector().pubsub_endpoints().await?;
    let (pubsub, endpoint) = conn::open_pubsub(&endpoints).await?;
    let (mut sink, stream) = pubsub.split();
    match tokio::time::timeout(
        conn::RESPONSE_TIMEOUT,
        sink.subscribe(pubsub_channel(channel)),
    )
    .await
    {
        Ok(Ok(())) => Ok((sink, stream)),
        Ok(Err(e)) => Err(format!("{}: {}", endpoint.redacted(), config::describe(&e))),
        Err(_) => Err(format!("{}: SUBSCRIBE timed out", endpoint.redacted())),
    }
}

/// Feeds one subscription from its connection until the subscriber goes
/// away (dropping the connection, which unsubscribes), the connection
/// breaks (the subscription ends with UNAVAILABLE) or the store is dropped.
async fn pump_channel(
    mut sink: PubSubSink,
    mut stream: PubSubStream,
    mut outbox: Outbox<Result<crate::ChannelEvent>>,
    label: String,
    cancel: CancellationToken,
) {
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    let broken = loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = outbox.closed() => return,
            msg = stream.next() => match msg {
                Some(msg) => {
                    let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
                    if outbox.offer(payload, Ok) == Offer::Closed {
                        return;
                    }
                }
                None => break "the connection closed",
            },
            _ = ping.tick() => {
                let pong = tokio::time::timeout(conn::RESPONSE_TIMEOUT, sink.ping::<Value>()).await;
                if !matches!(pong, Ok(Ok(_))) {
                    break "the connection does not answer";
                }
            }
        }
    };
    outbox.finish(Err(Error::Unavailable(format!(
        "Redis at {label}: subscription lost: {broken}"
    ))));
}

fn queue_not_found(queue: &QueueName) -> Error {
    Error::QueueNotFound(queue.to_string())
}

#[async_trait]
impl Storage for RedisStorage {
    async fn attach(&self, queue: &QueueName, ttl: Option<Duration>) -> Result<Attached> {
        let inner = &self.inner;
        // Always look on every shard: never create a second copy of a
        // queue that lives on another shard.
        let (shard, _) = inner.locate(queue, true).await?;
        let ttl = ttl.map(|t| ms(t).to_string()).unwrap_or_default();
        let default = (DEFAULT_TTL_SECS * 1000).to_string();
        let args = |inv: &mut ScriptInvocation<'_>| {
            inv.arg(&ttl).arg(&default);
        };
        match inner
            .run(shard, &inner.scripts.attach, queue, &args, false)
            .await?
        {
            Outcome::Ok(v) => {
                inner.remember(queue, shard);
                Ok(Attached {
                    existed: int(v.first(), "attach")? == 1,
                    attachments: uint(v.get(1), "attach")?,
                })
            }
            _ => Err(unexpected("attach", &"a status")),
        }
    }

    async fn detach(&self, queue: &QueueName) -> Result<u64> {
        let inner = &self.inner;
        let args = |_: &mut ScriptInvocation<'_>| {};
        match inner
            .exec(queue, &inner.scripts.detach, &args, false)
            .await?
        {
            (shard, Outcome::Ok(v)) => {
                let left = uint(v.first(), "detach")?;
                let pttl = int(v.get(1), "detach")?;
                if left == 0 && pttl != -1 {
                    inner.arm_expiry(
                        shard,
                        queue.clone(),
                        Duration::from_millis(pttl.max(0) as u64),
                    );
                }
                Ok(left)
            }
            (_, Outcome::Missing) => Err(queue_not_found(queue)),
            _ => Err(unexpected("detach", &"a status")),
        }
    }

    async fn push(&self, queue: &QueueName, messages: Vec<Bytes>) -> Result<IdRange> {
        if messages.is_empty() {
            return Err(Error::EmptyBatch);
        }
        let inner = &self.inner;
        let q = queue.as_str();
        let args = |inv: &mut ScriptInvocation<'_>| {
            inv.arg(CHANNEL).arg(q);
            for m in &messages {
                inv.arg(m.as_ref());
            }
        };
        match inner.exec(queue, &inner.scripts.push, &args, true).await? {
            (_, Outcome::Ok(v)) => Ok(IdRange {
                first: uint(v.first(), "push")?,
                last: uint(v.get(1), "push")?,
            }),
            (_, Outcome::Missing) => Err(queue_not_found(queue)),
            _ => Err(unexpected("push", &"a status")),
        }
    }

    async fn take(&self, queue: &QueueName, max: u32, mode: TakeMode) -> Result<Vec<Message>> {
        let inner = &self.inner;
        let mode = match mode {
            TakeMode::Remove => "r",
            TakeMode::Pending => "p",
        };
        let args = |inv: &mut ScriptInvocation<'_>| {
            inv.arg(max).arg(mode);
        };
        match inner.exec(queue, &inner.scripts.take, &args, false).await? {
            (_, Outcome::Ok(v)) => members(v.into_iter().next(), "take"),
            (_, Outcome::Missing) => Err(queue_not_found(queue)),
            _ => Err(unexpected("take", &"a status")),
        }
    }

    async fn read(&self, queue: &QueueName, from: u64, max: u32) -> Result<Vec<Message>> {
        let inner = &self.inner;
        let args = |inv: &mut ScriptInvocation<'_>| {
            inv.arg(from).arg(max);
        };
        match inner.exec(queue, &inner.scripts.read, &args, false).await? {
            (_, Outcome::Ok(v)) => members(v.into_iter().next(), "read"),
            (_, Outcome::Missing) => Err(queue_not_found(queue)),
            _ => Err(unexpected("read", &"a status")),
        }
    }

    async fn ack(&self, queue: &QueueName, id: u64) -> Result<u64> {
        if id == 0 {
            return Err(Error::InvalidArgument("message ids start at 1".into()));
        }
        let inner = &self.inner;
        let args = |inv: &mut ScriptInvocation<'_>| {
            inv.arg(id);
        };
        match inner.exec(queue, &inner.scripts.ack, &args, false).await? {
            (_, Outcome::Ok(v)) => uint(v.first(), "ack"),
            (_, Outcome::Missing) => Err(queue_not_found(queue)),
            (_, Outcome::UnknownAck) => Err(Error::UnknownAck {
                queue: queue.to_string(),
                id,
            }),
            _ => Err(unexpected("ack", &"a status")),
        }
    }

    async fn begin_reliable(
        &self,
        queue: &QueueName,
        lock: &ReliableLock,
        last: u64,
    ) -> Result<u64> {
        let inner = &self.inner;
        let q = queue.as_str();
        let lease = ms(lock.lease);
        let dlq = queue.dead_letters();
        let dlq_ttl = dead_letter_ttl_ms();
        let args = |inv: &mut ScriptInvocation<'_>| {
            inv.arg(&lock.owner)
                .arg(lease)
                .arg(last)
                .arg(CHANNEL)
                .arg(q)
                .arg(dlq.as_str())
                .arg(dlq_ttl);
        };
        match inner
            .exec(queue, &inner.scripts.begin_reliable, &args, false)
            .await?
        {
            (shard, Outcome::Ok(v)) => {
                inner.arm_dead_letters(shard, queue, v.get(1))?;
                uint(v.first(), "begin_reliable")
            }
            (_, Outcome::Missing) => Err(queue_not_found(queue)),
            (_, Outcome::Locked) => Err(Error::ReliableConsumerActive(queue.to_string())),
            (_, Outcome::LeasesActive) => Err(Error::LeaseConsumersActive(queue.to_string())),
            _ => Err(unexpected("begin_reliable", &"a status")),
        }
    }

    async fn renew_reliable(&self, queue: &QueueName, lock: &ReliableLock) -> Result<bool> {
        let inner = &self.inner;
        let lease = ms(lock.lease);
        let args = |inv: &mut ScriptInvocation<'_>| {
            inv.arg(&lock.owner).arg(lease);
        };
        match inner
            .exec(queue, &inner.scripts.renew_reliable, &args, false)
            .await?
        {
            (_, Outcome::Ok(v)) => Ok(int(v.first(), "renew_reliable")? == 1),
            (_, Outcome::Missing) => Ok(false),
            _ => Err(unexpected("renew_reliable", &"a status")),
        }
    }

    async fn end_reliable(&self, queue: &QueueName, lock: &ReliableLock) -> Result<bool> {
        let inner = &self.inner;
        let args = |inv: &mut ScriptInvocation<'_>| {
            inv.arg(&lock.owner);
        };
        match inner
            .exec(queue, &inner.scripts.end_reliable, &args, false)
            .await?
        {
            (_, Outcome::Ok(v)) => Ok(int(v.first(), "end_reliable")? == 1),
            (_, Outcome::Missing) => Ok(false),
            _ => Err(unexpected("end_reliable", &"a status")),
        }
    }

    async fn lease(
        &self,
        queue: &QueueName,
        owner: &str,
        max: u32,
        visibility: Duration,
    ) -> Result<Leases> {
        busmq_core::check_visibility(visibility)?;
        crate::check_lease_owner(owner)?;
        let inner = &self.inner;
        let q = queue.as_str();
        let dlq = queue.dead_letters();
        let dlq_ttl = dead_letter_ttl_ms();
        let visibility = ms(visibility).max(1);
        let args = |inv: &mut ScriptInvocation<'_>| {
            inv.arg(owner)
                .arg(max)
                .arg(visibility)
                .arg(CHANNEL)
                .arg(q)
                .arg(dlq.as_str())
                .arg(dlq_ttl);
        };
        match inner
            .exec(queue, &inner.scripts.lease, &args, false)
            .await?
        {
            (shard, Outcome::Ok(v)) => {
                inner.arm_dead_letters(shard, queue, v.get(2))?;
                let next = int(v.get(1), "lease")?;
                let messages = leased_members(v.into_iter().next())?;
                Ok(Leases {
                    messages,
                    next_expiry: u64::try_from(next).ok().map(Duration::from_millis),
                })
            }
            (_, Outcome::Missing) => Err(queue_not_found(queue)),
            (_, Outcome::Locked) => Err(Error::ReliableConsumerActive(queue.to_string())),
            _ => Err(unexpected("lease", &"a status")),
        }
    }

    async fn settle(
        &self,
        queue: &QueueName,
        token: LeaseToken,
        settlement: Settlement,
    ) -> Result<Settled> {
        token.check()?;
        let inner = &self.inner;
        let q = queue.as_str();
        let dlq = queue.dead_letters();
        let dlq_ttl = dead_letter_ttl_ms();
        let kind = match settlement {
            Settlement::Ack => "a",
            Settlement::Nack => "n",
        };
        let args = |inv: &mut ScriptInvocation<'_>| {
            inv.arg(token.id)
                .arg(token.attempt)
                .arg(kind)
                .arg(CHANNEL)
                .arg(q)
                .arg(dlq.as_str())
                .arg(dlq_ttl);
        };
        let (queue_s, id, attempt) = (queue.to_string(), token.id, token.attempt);
        match inner
            .exec(queue, &inner.scripts.settle, &args, false)
            .await?
        {
            (shard, Outcome::Ok(v)) => {
                inner.arm_dead_letters(shard, queue, v.get(1))?;
                match int(v.first(), "settle")? {
                    1 => Ok(Settled::Acked),
                    2 => Ok(Settled::Requeued),
                    3 => Ok(Settled::DeadLettered),
                    other => Err(unexpected("settle", &other)),
                }
            }
            (_, Outcome::Missing) => Err(queue_not_found(queue)),
            (_, Outcome::LeaseExpired) => Err(Error::LeaseExpired {
                queue: queue_s,
                id,
                attempt,
            }),
            (_, Outcome::UnknownLease) => Err(Error::UnknownLease {
                queue: queue_s,
                id,
                attempt,
            }),
            _ => Err(unexpected("settle", &"a status")),
        }
    }

    async fn release_leases(&self, queue: &QueueName, owner: &str) -> Result<u64> {
        let inner = &self.inner;
        let q = queue.as_str();
        let dlq = queue.dead_letters();
        let dlq_ttl = dead_letter_ttl_ms();
        let args = |inv: &mut ScriptInvocation<'_>| {
            inv.arg(owner)
                .arg(CHANNEL)
                .arg(q)
                .arg(dlq.as_str())
                .arg(dlq_ttl);
        };
        match inner
            .exec(queue, &inner.scripts.release_leases, &args, false)
            .await?
        {
            (shard, Outcome::Ok(v)) => {
                inner.arm_dead_letters(shard, queue, v.get(1))?;
                uint(v.first(), "release_leases")
            }
            (_, Outcome::Missing) => Ok(0),
            _ => Err(unexpected("release_leases", &"a status")),
        }
    }

    async fn set_max_deliveries(&self, queue: &QueueName, max: u32) -> Result<()> {
        busmq_core::check_max_deliveries(max)?;
        let inner = &self.inner;
        let args = |inv: &mut ScriptInvocation<'_>| {
            inv.arg(max);
        };
        match inner
            .exec(queue, &inner.scripts.set_max_deliveries, &args, false)
            .await?
        {
            (_, Outcome::Ok(_)) => Ok(()),
            (_, Outcome::Missing) => Err(queue_not_found(queue)),
            _ => Err(unexpected("set_max_deliveries", &"a status")),
        }
    }

    async fn close(&self, queue: &QueueName) -> Result<bool> {
        let inner = &self.inner;
        let q = queue.as_str();
        let args = |inv: &mut ScriptInvocation<'_>| {
            inv.arg(CHANNEL).arg(q);
        };
        let outcome = inner
            .exec(queue, &inner.scripts.close, &args, false)
            .await?;
        inner.forget(queue);
        match outcome {
            (_, Outcome::Ok(_)) => Ok(true),
            (_, Outcome::Missing) => Ok(false),
            _ => Err(unexpected("close", &"a status")),
        }
    }

    async fn flush(&self, queue: &QueueName) -> Result<u64> {
        let inner = &self.inner;
        let args = |_: &mut ScriptInvocation<'_>| {};
        match inner
            .exec(queue, &inner.scripts.flush, &args, false)
            .await?
        {
            (_, Outcome::Ok(v)) => uint(v.first(), "flush"),
            (_, Outcome::Missing) => Err(queue_not_found(queue)),
            _ => Err(unexpected("flush", &"a status")),
        }
    }

    async fn info(&self, queue: &QueueName) -> Result<Option<QueueInfo>> {
        let inner = &self.inner;
        let args = |_: &mut ScriptInvocation<'_>| {};
        match inner.exec(queue, &inner.scripts.info, &args, false).await? {
            (_, Outcome::Ok(v)) => {
                let field = |i: usize| uint(v.get(i), "info");
                Ok(Some(QueueInfo {
                    count: field(0)?,
                    ttl: Duration::from_millis(field(1)?),
                    attachments: field(2)?,
                    pending: field(3)?,
                    next_id: field(4)?,
                    pushed: field(5)?,
                    consumed: field(6)?,
                    reliable_consumer: field(7)? == 1,
                    leased: field(8)?,
                    max_deliveries: u32::try_from(field(9)?).unwrap_or(u32::MAX),
                }))
            }
            (_, Outcome::Missing) => Ok(None),
            _ => Err(unexpected("info", &"a status")),
        }
    }

    async fn get_metadata(&self, queue: &QueueName, key: &str) -> Result<Option<String>> {
        let inner = &self.inner;
        let args = |inv: &mut ScriptInvocation<'_>| {
            inv.arg(key);
        };
        match inner
            .exec(queue, &inner.scripts.get_metadata, &args, false)
            .await?
        {
            (_, Outcome::Ok(v)) => {
                if int(v.first(), "get_metadata")? == 0 {
                    return Ok(None);
                }
                match v.get(1) {
                    Some(Value::BulkString(b)) => Ok(Some(String::from_utf8_lossy(b).into_owned())),
                    other => Err(unexpected("get_metadata", &other)),
                }
            }
            (_, Outcome::Missing) => Err(queue_not_found(queue)),
            _ => Err(unexpected("get_metadata", &"a status")),
        }
    }

    async fn set_metadata(&self, queue: &QueueName, key: &str, value: &str) -> Result<()> {
        let inner = &self.inner;
        let args = |inv: &mut ScriptInvocation<'_>| {
            inv.arg(key).arg(value);
        };
        match inner
            .exec(queue, &inner.scripts.set_metadata, &args, false)
            .await?
        {
            (_, Outcome::Ok(_)) => Ok(()),
            (_, Outcome::Missing) => Err(queue_not_found(queue)),
            _ => Err(unexpected("set_metadata", &"a status")),
        }
    }

    fn watch(&self) -> Notifications {
        let rx = self.inner.notify.subscribe();
        self.inner.start_watching();
        BroadcastStream::new(rx)
            .map(|n| n.unwrap_or(Notification::Lagged))
            .boxed()
    }

    async fn ready(&self) -> bool {
        self.inner.nodes.iter().all(|n| n.connected())
    }

    async fn publish(&self, channel: &ChannelName, message: Bytes) -> Result<u64> {
        let mut cmd = ::redis::cmd("PUBLISH");
        cmd.arg(pubsub_channel(channel)).arg(message.as_ref());
        let receivers: i64 = if matches!(self.inner.config.layout, Layout::Cluster(_)) {
            self.inner.cluster_publish(&cmd).await?
        } else {
            self.inner.query(PUBSUB_SHARD, &cmd).await?
        };
        u64::try_from(receivers).map_err(|_| unexpected("PUBLISH", &receivers))
    }

    async fn subscribe(&self, channel: &ChannelName) -> Result<Subscription> {
        let node = &self.inner.nodes[PUBSUB_SHARD];
        let (sink, stream) = open_channel(node, channel).await.map_err(|e| {
            Error::Unavailable(format!("Redis at {}: cannot subscribe: {e}", node.label()))
        })?;
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
        self.inner.runtime.spawn(pump_channel(
            sink,
            stream,
            Outbox::new(tx),
            node.label().to_owned(),
            self.inner.cancel.clone(),
        ));
        Ok(ReceiverStream::new(rx).boxed())
    }

    async fn object_save(
        &self,
        object: &ObjectName,
        fields: Vec<(String, String)>,
        ttl: Option<Duration>,
    ) -> Result<()> {
        crate::object_state::require_fields(object, &fields)?;
        let inner = &self.inner;
        let ttl = ttl.map(|t| ms(t).max(1).to_string()).unwrap_or_default();
        let args = |inv: &mut ScriptInvocation<'_>| {
            inv.arg(&ttl);
            for (name, value) in &fields {
                inv.arg(name).arg(value);
            }
        };
        inner
            .invoke(
                inner.object_shard(object),
                &inner.scripts.object_save,
                &[object_key(object)],
                &args,
                true,
            )
            .await?;
        Ok(())
    }

    async fn object_load(&self, object: &ObjectName) -> Result<Option<ObjectFields>> {
        let inner = &self.inner;
        let fields: ObjectFields = inner
            .query(
                inner.object_shard(object),
                ::redis::cmd("HGETALL").arg(object_key(object)),
            )
            .await?;
        // Redis has no empty hashes: no fields means no object.
        Ok((!fields.is_empty()).then_some(fields))
    }

    async fn object_touch(&self, object: &ObjectName, ttl: Duration) -> Result<bool> {
        let inner = &self.inner;
        let set: i64 = inner
            .query(
                inner.object_shard(object),
                ::redis::cmd("PEXPIRE")
                    .arg(object_key(object))
                    .arg(ms(ttl).max(1)),
            )
            .await?;
        Ok(set == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_a_hash_tag() {
        let q = QueueName::parse("orders.eu:1", &Limits::default()).unwrap();
        let k = keys(&q);
        assert_eq!(k[0], "busmq:{orders.eu:1}:meta");
        assert!(k.iter().all(|k| k.contains("{orders.eu:1}")));
        let dlq = keys(&q.dead_letters().dead_letters());
        assert_eq!(dlq[0], "busmq:{orders.eu:1}:orders.eu:1.dlq.dlq:meta");
        let odd = QueueName::parse(".dlq", &Limits::default()).unwrap();
        assert_eq!(placement(&odd), ".dlq");
    }

    #[test]
    fn notifications_parse() {
        let q = QueueName::parse("q.1", &Limits::default()).unwrap();
        assert_eq!(
            parse_notification(b"dq.1"),
            Some(Notification::Data(q.clone()))
        );
        assert_eq!(
            parse_notification(b"cq.1"),
            Some(Notification::Closed(q.clone()))
        );
        assert_eq!(parse_notification(b"eq.1"), Some(Notification::Expired(q)));
        assert_eq!(parse_notification(b"x"), None);
        assert_eq!(parse_notification(b""), None);
        assert_eq!(parse_notification(b"dbad name"), None);
    }

    #[test]
    fn members_decode_and_reject_garbage() {
        let mut m = 7u64.to_be_bytes().to_vec();
        m.extend_from_slice(b"hi");
        let got = members(Some(Value::Array(vec![Value::BulkString(m)])), "t").unwrap();
        assert_eq!(got[0].id, 7);
        assert_eq!(got[0].payload, Bytes::from_static(b"hi"));
        assert!(members(Some(Value::Array(vec![Value::BulkString(vec![1])])), "t").is_err());
        assert!(members(Some(Value::Int(3)), "t").is_err());
    }
}
