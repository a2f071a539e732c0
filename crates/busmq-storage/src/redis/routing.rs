//! Running scripts and commands on the right shard: finding where a queue
//! lives (rendezvous order, a location cache, following a queue that
//! moved), timeouts, and waiting for replicas.

use ::redis::{Cmd, FromRedisValue, Script, ScriptInvocation, Value};

use super::conn::{self, Node};
use super::keys::{keys, placement};
use super::reply::{Outcome, int, settle, unexpected};
use super::{Inner, Layout, PUBSUB_SHARD, config, lock, ms, scripts, shard};
use crate::{Error, ObjectName, QueueName, Result};

/// Queue locations remembered per process before the cache starts over.
const LOCATION_CACHE_MAX: usize = 100_000;

pub(super) type Args<'a> = &'a (dyn Fn(&mut ScriptInvocation<'_>) + Sync);

/// `busmq_store_commit_duration_seconds` of Redis: one script's round trip.
static SCRIPT_DURATION: std::sync::LazyLock<metrics::Histogram> = std::sync::LazyLock::new(
    || metrics::histogram!("busmq_store_commit_duration_seconds", "backend" => "redis"),
);

impl Inner {
    /// Runs `script` over the keys of `queue` on `shard`; when `durable`,
    /// then waits for [`RedisConfig::wait_replicas`] on the same connection.
    pub(super) async fn run(
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
    pub(super) async fn invoke(
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
        let started = busmq_server::metrics::start_timer();
        let reply = tokio::time::timeout(
            conn::CALL_TIMEOUT,
            invocation.invoke_async::<Value>(&mut conn),
        )
        .await;
        busmq_server::metrics::observe_since(&SCRIPT_DURATION, started);
        let value = settle(node, generation, reply)?;
        if durable && self.config.wait_replicas > 0 {
            self.wait_replicas(node, generation, &mut conn).await?;
        }
        Ok(value)
    }

    /// Runs one command on `shard`.
    pub(super) async fn query<T: FromRedisValue>(&self, shard: usize, cmd: &Cmd) -> Result<T> {
        let node = &self.nodes[shard];
        let (generation, mut conn) = node.conn().await?;
        let reply = tokio::time::timeout(conn::CALL_TIMEOUT, cmd.query_async::<T>(&mut conn)).await;
        settle(node, generation, reply)
    }

    /// Runs a pub/sub command (`PUBLISH`, `PUBSUB ...`) where the
    /// subscriptions are: the pub/sub shard, or on a Cluster the node
    /// subscriptions use.
    pub(super) async fn pubsub_query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T> {
        if matches!(self.config.layout, Layout::Cluster(_)) {
            self.cluster_pubsub_query(cmd).await
        } else {
            self.query(PUBSUB_SHARD, cmd).await
        }
    }

    /// Runs a pub/sub command on the Cluster node subscriptions use.
    async fn cluster_pubsub_query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T> {
        let node = &self.nodes[PUBSUB_SHARD];
        let unavailable =
            |e: String| Error::Unavailable(format!("Redis at {}: pub/sub: {e}", node.label()));
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
            match tokio::time::timeout(conn::CALL_TIMEOUT, cmd.query_async::<T>(&mut conn)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => config::describe(&e),
                Err(_) => format!("no answer within {:?}", conn::CALL_TIMEOUT),
            };
        *self.cluster_publisher.lock().await = None;
        Err(unavailable(failed))
    }

    /// The shard of a persistable object: the first of its rendezvous
    /// order.
    pub(super) fn object_shard(&self, object: &ObjectName) -> usize {
        shard::order(&self.shard_ids, object.as_str())
            .first()
            .copied()
            .unwrap_or(0)
    }

    /// `WAIT`s until the configured number of replicas have every write
    /// made so far on `conn` (which must be the one that wrote).
    pub(super) async fn wait_replicas(
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
    pub(super) async fn exists(&self, shard: usize, queue: &QueueName) -> Result<bool> {
        let [meta, ..] = keys(queue);
        let n: i64 = self.query(shard, ::redis::cmd("EXISTS").arg(meta)).await?;
        Ok(n > 0)
    }

    pub(super) fn remember(&self, queue: &QueueName, shard: usize) {
        if self.nodes.len() == 1 {
            return;
        }
        let mut locations = lock(&self.locations);
        if locations.len() >= LOCATION_CACHE_MAX {
            locations.clear();
        }
        locations.insert(queue.clone(), shard);
    }

    pub(super) fn forget(&self, queue: &QueueName) {
        if self.nodes.len() > 1 {
            lock(&self.locations).remove(queue);
        }
    }

    /// Where `queue` lives: `(shard, from_cache)`. `fresh` skips the cache.
    /// A queue found nowhere maps to the first shard of its rendezvous
    /// order, where it would be created.
    pub(super) async fn locate(&self, queue: &QueueName, fresh: bool) -> Result<(usize, bool)> {
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
    pub(super) async fn exec(
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
}
