//! The [`Storage`] trait on Redis: each operation one script where the
//! queue lives, its answer decoded, expiry timers armed as it says.

use std::time::Duration;

use ::redis::{ScriptInvocation, Value};
use async_trait::async_trait;
use busmq_core::{DEAD_LETTER_TTL_SECS, DEFAULT_TTL_SECS};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{BroadcastStream, ReceiverStream};

use super::keys::{object_key, pubsub_channel};
use super::reply::{Outcome, info_reply, int, leased_members, members, uint, unexpected};
use super::subscriptions::{open_channel, pump_channel};
use super::{CHANNEL, PUBSUB_SHARD, RedisStorage, ms, scripts};
use crate::pubsub::{Outbox, SUBSCRIPTION_BUFFER};
use crate::{
    Attached, ChannelFilter, ChannelName, ChannelPage, Error, IdRange, LeaseToken, Leases, Message,
    Notification, Notifications, ObjectFields, ObjectName, QueueFilter, QueueInfo, QueueName,
    QueuePage, ReliableLock, Result, Settled, Settlement, Storage, Subscription, TakeMode,
};

/// The default ttl of a dead-letter queue, in ms, as scripts take it.
fn dead_letter_ttl_ms() -> u64 {
    DEAD_LETTER_TTL_SECS * 1000
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
            TakeMode::Remove => scripts::TAKE_REMOVE,
            TakeMode::Pending => scripts::TAKE_PENDING,
        };
        let args = |inv: &mut ScriptInvocation<'_>| {
            inv.arg(max).arg(mode);
        };
        match inner.exec(queue, &inner.scripts.take, &args, false).await? {
            (_, Outcome::Ok(v)) => members(v.into_iter().next(), "take"),
            (_, Outcome::Missing) => Err(queue_not_found(queue)),
            (_, Outcome::LeasesActive) => Err(Error::LeaseConsumersActive(queue.to_string())),
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
        let (_, outcome) = inner.exec(queue, &inner.scripts.info, &args, false).await?;
        info_reply(outcome)
    }

    async fn list_queues(&self, filter: &QueueFilter) -> Result<QueuePage> {
        self.inner.list_queues(filter).await
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
        let receivers: i64 = self.inner.pubsub_query(&cmd).await?;
        u64::try_from(receivers).map_err(|_| unexpected("PUBLISH", &receivers))
    }

    async fn list_channels(&self, filter: &ChannelFilter) -> Result<ChannelPage> {
        self.inner.list_channels(filter).await
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
