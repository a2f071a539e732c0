//! Listing queues and channels on Redis. Queues: `SCAN ... MATCH` over the
//! meta keys on every shard (on a Cluster, on every master), never `KEYS`,
//! merged and ordered by name, then the info script for the page's queues
//! where each was found. Channels: `PUBSUB CHANNELS` and `PUBSUB NUMSUB`
//! where the subscriptions are.
//!
//! Every page scans the whole keyspace of busmq's meta keys (a few round
//! trips of [`SCAN_COUNT`] keys per thousand queues): Redis keeps no order,
//! so the names after the cursor are only known once all are seen.

use std::collections::HashMap;

use ::redis::aio::MultiplexedConnection;
use ::redis::cluster_async::ClusterConnection;
use ::redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use ::redis::{Cmd, RedisResult, ScriptInvocation, Value};
use futures::StreamExt;

use super::conn::{self, Conn, Node};
use super::keys::{meta_pattern, pubsub_channel, pubsub_pattern, queue_of_meta};
use super::reply::{info_reply, settle, uint, unexpected};
use super::{Inner, PUBSUB_PREFIX, shard};
use crate::{
    ChannelFilter, ChannelName, ChannelPage, Error, QueueFilter, QueueName, QueuePage, Result,
};

/// Keys one `SCAN` step looks at.
const SCAN_COUNT: u32 = 1000;

/// Info scripts of one page in flight at once.
const INFO_CONCURRENCY: usize = 64;

/// Where one `SCAN` walk runs: a server, or one master of a Cluster.
enum Scanner {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection, RoutingInfo),
}

impl Scanner {
    async fn send(&mut self, cmd: Cmd) -> RedisResult<Value> {
        match self {
            Scanner::Single(c) => cmd.query_async(c).await,
            Scanner::Cluster(c, routing) => c.route_command(cmd, routing.clone()).await,
        }
    }
}

/// A name Redis holds: only busmq writes its keys, but nothing read from
/// outside is trusted to be a valid name.
fn stored_name<N: busmq_core::ListName>(raw: &[u8]) -> Option<N> {
    let limits = busmq_core::Limits {
        max_name_len: usize::MAX,
        ..busmq_core::Limits::default()
    };
    N::parse_name(std::str::from_utf8(raw).ok()?, &limits).ok()
}

/// The primaries of a Cluster, as `CLUSTER SLOTS` names them.
fn masters(slots: &Value) -> Result<Vec<(String, u16)>> {
    let Value::Array(ranges) = slots else {
        return Err(unexpected("CLUSTER SLOTS", slots));
    };
    let mut found = Vec::new();
    for range in ranges {
        let primary = match range {
            Value::Array(items) => items.get(2),
            _ => None,
        };
        let Some(Value::Array(node)) = primary else {
            return Err(unexpected("CLUSTER SLOTS", range));
        };
        let host = match node.first() {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::SimpleString(s)) => s.clone(),
            other => return Err(unexpected("CLUSTER SLOTS", &other)),
        };
        let port = u16::try_from(uint(node.get(1), "CLUSTER SLOTS")?)
            .map_err(|_| unexpected("CLUSTER SLOTS", node))?;
        if !found.contains(&(host.clone(), port)) {
            found.push((host, port));
        }
    }
    Ok(found)
}

impl Inner {
    /// One call on connection `generation` of `node`, bounded in time.
    async fn call(
        &self,
        node: &Node,
        generation: u64,
        scanner: &mut Scanner,
        cmd: Cmd,
    ) -> Result<Value> {
        let reply = tokio::time::timeout(conn::CALL_TIMEOUT, scanner.send(cmd)).await;
        settle(node, generation, reply)
    }

    /// Every key matching `pattern` where `scanner` runs, by `SCAN`.
    async fn scan(
        &self,
        node: &Node,
        generation: u64,
        scanner: &mut Scanner,
        pattern: &str,
    ) -> Result<Vec<Vec<u8>>> {
        let mut keys = Vec::new();
        let mut cursor = 0u64;
        loop {
            let mut cmd = ::redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT);
            let reply = self.call(node, generation, scanner, cmd).await?;
            let (next, batch): (u64, Vec<Vec<u8>>) =
                ::redis::from_redis_value_ref(&reply).map_err(|_| unexpected("SCAN", &reply))?;
            keys.extend(batch);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    /// The meta keys matching `pattern` on `shard`: on a Cluster, on each
    /// of its masters.
    async fn scan_shard(&self, shard: usize, pattern: &str) -> Result<Vec<Vec<u8>>> {
        let node = &self.nodes[shard];
        let (generation, conn) = node.conn().await?;
        match conn {
            Conn::Single(c) => {
                self.scan(node, generation, &mut Scanner::Single(c), pattern)
                    .await
            }
            Conn::Cluster(c) => {
                let mut any = Scanner::Cluster(
                    c.clone(),
                    RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
                );
                let slots = self
                    .call(
                        node,
                        generation,
                        &mut any,
                        ::redis::cmd("CLUSTER").arg("SLOTS").clone(),
                    )
                    .await?;
                let mut keys = Vec::new();
                for (host, port) in masters(&slots)? {
                    let routing =
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
                    let mut master = Scanner::Cluster(c.clone(), routing);
                    keys.extend(self.scan(node, generation, &mut master, pattern).await?);
                }
                Ok(keys)
            }
        }
    }

    /// See [`crate::Storage::list_queues`].
    pub(super) async fn list_queues(&self, filter: &QueueFilter) -> Result<QueuePage> {
        let pattern = meta_pattern(filter.contains.as_deref());
        let scans = futures::future::join_all(
            (0..self.nodes.len()).map(|shard| self.scan_shard(shard, &pattern)),
        )
        .await;
        // A queue on two shards (a stale copy during a reshard) is where
        // `locate` would find it: first in its rendezvous order.
        let mut found: HashMap<QueueName, usize> = HashMap::new();
        for (shard, keys) in scans.into_iter().enumerate() {
            for key in keys? {
                let Some(name) = std::str::from_utf8(&key).ok().and_then(queue_of_meta) else {
                    continue;
                };
                let Some(queue) = stored_name::<QueueName>(name.as_bytes()) else {
                    continue;
                };
                match found.get(&queue) {
                    Some(&other) if !self.prefers(&queue, shard, other) => {}
                    _ => {
                        found.insert(queue, shard);
                    }
                }
            }
        }
        let page = filter.page(found);
        let wanted: Vec<(QueueName, usize)> = page.items.clone();
        let infos: Vec<Result<_>> = futures::stream::iter(wanted)
            .map(|(queue, shard)| self.info_on(shard, queue))
            .buffered(INFO_CONCURRENCY)
            .collect()
            .await;
        let mut infos = infos.into_iter();
        page.try_filter_map(|_, _| infos.next().transpose().map(Option::flatten))
    }

    /// The state of `queue` on `shard`; `None` when it is gone.
    async fn info_on(&self, shard: usize, queue: QueueName) -> Result<Option<crate::QueueInfo>> {
        let args = |_: &mut ScriptInvocation<'_>| {};
        let outcome = self
            .run(shard, &self.scripts.info, &queue, &args, false)
            .await?;
        info_reply(outcome)
    }

    /// Whether `shard` comes before `other` in `queue`'s rendezvous order.
    fn prefers(&self, queue: &QueueName, shard: usize, other: usize) -> bool {
        let order = shard::order(&self.shard_ids, super::keys::placement(queue));
        let rank = |s: usize| order.iter().position(|&o| o == s);
        rank(shard) < rank(other)
    }

    /// See [`crate::Storage::list_channels`].
    pub(super) async fn list_channels(&self, filter: &ChannelFilter) -> Result<ChannelPage> {
        let mut cmd = ::redis::cmd("PUBSUB");
        cmd.arg("CHANNELS")
            .arg(pubsub_pattern(filter.contains.as_deref()));
        let raw: Vec<Vec<u8>> = self.pubsub_query(&cmd).await?;
        let names = raw.iter().filter_map(|c| {
            let name = c.strip_prefix(PUBSUB_PREFIX.as_bytes())?;
            Some((stored_name::<ChannelName>(name)?, ()))
        });
        let page = filter.page(names);
        if page.items.is_empty() {
            return Ok(page.filter_map(|_, ()| None));
        }
        let mut cmd = ::redis::cmd("PUBSUB");
        cmd.arg("NUMSUB");
        for (channel, ()) in &page.items {
            cmd.arg(pubsub_channel(channel));
        }
        let counts: Vec<Value> = self.pubsub_query(&cmd).await?;
        if counts.len() != page.items.len() * 2 {
            return Err(Error::Internal(format!(
                "PUBSUB NUMSUB answered {} items for {} channels",
                counts.len(),
                page.items.len()
            )));
        }
        let mut counts = counts.chunks(2).map(|pair| uint(pair.get(1), "NUMSUB"));
        // A count of 0: unsubscribed since PUBSUB CHANNELS, no longer a
        // channel.
        page.try_filter_map(|_, ()| Ok(counts.next().transpose()?.filter(|&n| n > 0)))
    }
}
