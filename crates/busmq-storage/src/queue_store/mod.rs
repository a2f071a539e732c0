//! The queue semantics of the stores that keep their live state in this
//! process: [`crate::memory::MemoryStorage`] and
//! [`crate::embedded::EmbeddedStorage`] are both a [`QueueStore`], differing
//! only in their [`Journal`]. The memory store's journal forgets; the
//! embedded store's makes every change durable before the call returns.
//!
//! Every mutation runs under one lock on the queue map; while holding it, the
//! store hands the journal a [`Change`] list describing the effect (not the
//! request), so the journal sees changes in exactly the order they were
//! applied. Replaying the changes onto an empty state rebuilds the state.

mod change;
mod lease;
mod queue;

pub(crate) use change::Recorder;
pub use change::{Change, Journal, QueueMeta, Volatile};
use lease::LeaseAsk;
pub use lease::{Delivery, Lease};
pub use queue::Queue;
use queue::dead_letter;
pub(crate) use queue::deadline;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_stream::wrappers::BroadcastStream;

use busmq_core::{DEFAULT_TTL_SECS, NameMap};

use crate::object_state::Objects;
use crate::pubsub::Hub;
use crate::{
    Attached, ChannelFilter, ChannelName, ChannelPage, Error, IdRange, LeaseToken, Leases, Message,
    Notification, Notifications, ObjectFields, ObjectName, QueueFilter, QueueInfo, QueueName,
    QueuePage, ReliableLock, Result, Settled, Settlement, Storage, Subscription, TakeMode,
    TakeRequest, Taken,
};

/// Notifications buffered per watcher before it is told it lagged. A lag
/// wakes every consumer of the watching broker (each then asks the store
/// once), so this must cover the pushes made while the watcher waits its
/// turn on a busy runtime: at 10,000 queues, 4,096 lagged several times a
/// second and woke 10,000 consumers each time. One slot is a few dozen
/// bytes.
const NOTIFY_CAPACITY: usize = 65_536;

/// When an operation that adds messages tells consumers about them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Announce {
    /// Once its changes are durable.
    AfterDurable,
    /// As soon as they are applied in memory.
    BeforeDurable,
}

/// A [`Storage`] whose live state is in this process, recording every change
/// in a [`Journal`]. Queues expire on tokio's clock, so tests can drive
/// expiry with `tokio::time::pause()` and `advance()`.
pub struct QueueStore<J: Journal> {
    pub(crate) shared: Arc<Shared<J>>,
}

impl<J: Journal> Clone for QueueStore<J> {
    fn clone(&self) -> Self {
        QueueStore {
            shared: Arc::clone(&self.shared),
        }
    }
}

pub(crate) struct Shared<J> {
    queues: Mutex<NameMap<Queue>>,
    /// Persistable objects: a lock of their own, since they never change
    /// together with a queue.
    objects: Mutex<Objects>,
    notify: broadcast::Sender<Notification>,
    /// Pub/sub subscribers: nothing of pub/sub is journaled.
    hub: Hub,
    pub(crate) journal: J,
}

impl<J: Journal> QueueStore<J> {
    /// A store holding `queues`, recording into `journal`. Queues waiting
    /// to expire get their timers, so this must run inside a Tokio runtime
    /// when any has a deadline.
    pub(crate) fn with_journal(
        journal: J,
        queues: HashMap<QueueName, Queue>,
        mut objects: Objects,
    ) -> Self {
        let (notify, _) = broadcast::channel(NOTIFY_CAPACITY);
        let timers: Vec<(QueueName, Instant)> = queues
            .iter()
            .filter_map(|(name, q)| q.expires_at.map(|at| (name.clone(), at)))
            .collect();
        let object_timers: Vec<(ObjectName, Instant)> = objects
            .iter_mut()
            .filter_map(|(name, o)| {
                o.timer = o.expires_at.is_some();
                o.expires_at.map(|at| (name.clone(), at))
            })
            .collect();
        let store = QueueStore {
            shared: Arc::new(Shared {
                queues: Mutex::new(queues.into_iter().collect()),
                objects: Mutex::new(objects),
                notify,
                hub: Hub::default(),
                journal,
            }),
        };
        for (name, at) in timers {
            store.schedule_expiry(name, at);
        }
        for (name, at) in object_timers {
            store.schedule_object_expiry(name, at);
        }
        store
    }

    pub(crate) fn journal(&self) -> &J {
        &self.shared.journal
    }

    fn queues(&self) -> MutexGuard<'_, NameMap<Queue>> {
        // A panic while holding the lock cannot leave a queue half-written
        // (every mutation is a few infallible steps), so poisoning is moot.
        self.shared
            .queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn objects(&self) -> MutexGuard<'_, Objects> {
        // As for queues: every mutation is a few infallible steps.
        self.shared
            .objects
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn notify(&self, n: Notification) {
        // No receivers is fine: nobody is waiting.
        let _ = self.shared.notify.send(n);
    }

    /// Hands what `rec` recorded to the journal; the ticket to wait for.
    /// Called under the queue lock, so the journal's order is the order in
    /// which changes were applied. With nothing recorded, the ticket is the
    /// latest one: whatever the caller saw is then durable when it returns.
    pub(crate) fn submit(&self, rec: Recorder) -> u64 {
        let journal = &self.shared.journal;
        if rec.changes.is_empty() {
            journal.last_ticket()
        } else if rec.lazy {
            let seen = journal.last_ticket();
            journal.submit(rec.changes);
            seen
        } else {
            journal.submit(rec.changes)
        }
    }

    /// Runs `f` on a live queue; a missing or expired queue is not found.
    /// Returns once the changes `f` recorded are in the journal for good.
    async fn with_queue<T>(
        &self,
        name: &QueueName,
        f: impl FnOnce(&mut Queue, &mut Recorder) -> T,
    ) -> Result<T> {
        self.with_queue_dl(name, |q, rec, _| f(q, rec)).await
    }

    /// [`Self::with_queue`] for operations that may dead-letter: the
    /// messages `f` leaves in its third argument (removed from the queue,
    /// in id order) are appended to the queue's dead-letter queue in the
    /// same atomic step, so a crash never loses nor doubles them.
    pub(crate) async fn with_queue_dl<T>(
        &self,
        name: &QueueName,
        f: impl FnOnce(&mut Queue, &mut Recorder, &mut Vec<Message>) -> T,
    ) -> Result<T> {
        self.change_queue(name, Announce::AfterDurable, f).await
    }

    /// The body of [`Self::with_queue_dl`]; with [`Announce::BeforeDurable`]
    /// consumers hear of new data while its commit is still on its way.
    async fn change_queue<T>(
        &self,
        name: &QueueName,
        announce: Announce,
        f: impl FnOnce(&mut Queue, &mut Recorder, &mut Vec<Message>) -> T,
    ) -> Result<T> {
        let now = Instant::now();
        let mut rec = Recorder::new(J::RECORDS);
        let (out, ticket, expired, dlq) = {
            let mut queues = self.queues();
            match lookup(&mut queues, name, now, &mut rec) {
                Lookup::Live(q) => {
                    let mut dead = Vec::new();
                    let out = f(q, &mut rec, &mut dead);
                    if !dead.is_empty() {
                        busmq_server::metrics::queue(name)
                            .dead_lettered()
                            .increment(dead.len() as u64);
                    }
                    let dlq = (!dead.is_empty())
                        .then(|| dead_letter(&mut queues, name, dead, now, &mut rec));
                    (Some(out), self.submit(rec), false, dlq)
                }
                Lookup::Expired => (None, self.submit(rec), true, None),
                Lookup::Missing => (None, self.submit(rec), false, None),
            }
        };
        if announce == Announce::BeforeDurable && out.is_some() {
            self.notify(Notification::Data(name.clone()));
        }
        self.shared.journal.wait(ticket).await?;
        if expired {
            self.notify(Notification::Expired(name.clone()));
        }
        if let Some(dlq) = dlq {
            if dlq.replaced_expired {
                self.notify(Notification::Expired(dlq.name.clone()));
            }
            if let Some(at) = dlq.expires_at {
                self.schedule_expiry(dlq.name.clone(), at);
            }
            self.notify(Notification::Data(dlq.name));
        }
        out.ok_or_else(|| Error::QueueNotFound(name.to_string()))
    }

    /// Tells waiting consumers that `queue` has messages to take.
    pub(crate) fn notify_data(&self, queue: &QueueName) {
        self.notify(Notification::Data(queue.clone()));
    }

    /// Removes the queue when its ttl has run out with no attachments. The
    /// timer does not keep the store alive.
    fn schedule_expiry(&self, name: QueueName, at: Instant) {
        let weak: Weak<Shared<J>> = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let Some(shared) = weak.upgrade() else {
                return;
            };
            let this = QueueStore { shared };
            let ticket = {
                let mut queues = this.queues();
                let due = queues
                    .get(&name)
                    .is_some_and(|q| q.expires_at == Some(at) && q.expired(Instant::now()));
                if !due || queues.remove(&name).is_none() {
                    return;
                }
                let mut rec = Recorder::new(J::RECORDS);
                rec.record(|| Change::Drop(name.clone()));
                this.submit(rec)
            };
            if let Err(e) = this.shared.journal.wait(ticket).await {
                tracing::warn!(queue = %name, "recording the expiry failed: {e}");
            }
            tracing::debug!(queue = %name, "queue expired");
            this.notify(Notification::Expired(name));
        });
    }

    /// Absorbs "queue not found" into `default` for operations documented
    /// to tolerate a missing queue.
    fn or_missing<T>(result: Result<T>, default: T) -> Result<T> {
        match result {
            Err(Error::QueueNotFound(_)) => Ok(default),
            other => other,
        }
    }
}

/// What a queue's name finds in the store, under its lock.
enum Lookup<'a> {
    Live(&'a mut Queue),
    /// Its ttl had run out: removed here and its drop recorded; the caller
    /// announces the expiry once that is durable.
    Expired,
    Missing,
}

/// Finds the live queue `name`, dropping it first if its ttl ran out.
///
/// Every push and take comes through here. The entry API would need an
/// owned key, a clone of the caller's name: two atomic writes to a count
/// other threads share, per call. A live queue is probed twice instead;
/// the second probe reads what the first just loaded (`perf` put the two
/// forms level at 10,000 queues, where the cost is the first probe's
/// cache misses), and nothing shared is written.
fn lookup<'a>(
    queues: &'a mut NameMap<Queue>,
    name: &QueueName,
    now: Instant,
    rec: &mut Recorder,
) -> Lookup<'a> {
    if queues.get(name).is_some_and(|q| q.expired(now)) {
        queues.remove(name);
        rec.record(|| Change::Drop(name.clone()));
        return Lookup::Expired;
    }
    match queues.get_mut(name) {
        Some(q) => Lookup::Live(q),
        None => Lookup::Missing,
    }
}

#[async_trait]
impl<J: Journal> Storage for QueueStore<J> {
    async fn attach(&self, queue: &QueueName, ttl: Option<Duration>) -> Result<Attached> {
        let now = Instant::now();
        let mut rec = Recorder::new(J::RECORDS);
        let (stale, existed, attachments, ticket) = {
            let mut queues = self.queues();
            let stale = queues.get(queue).is_some_and(|q| q.expired(now));
            if stale {
                queues.remove(queue);
                rec.record(|| Change::Drop(queue.clone()));
            }
            let existed = queues.contains_key(queue);
            let q = queues
                .entry(queue.clone())
                .or_insert_with(|| Queue::new(Duration::from_secs(DEFAULT_TTL_SECS)));
            if let Some(ttl) = ttl {
                q.ttl = ttl;
            }
            q.attachments += 1;
            q.expires_at = None;
            rec.meta(queue, q);
            (stale, existed, q.attachments, self.submit(rec))
        };
        self.shared.journal.wait(ticket).await?;
        if stale {
            self.notify(Notification::Expired(queue.clone()));
        }
        Ok(Attached {
            existed,
            attachments,
        })
    }

    async fn detach(&self, queue: &QueueName) -> Result<u64> {
        let now = Instant::now();
        let (left, expiry) = self
            .with_queue(queue, |q, rec| {
                q.attachments = q.attachments.saturating_sub(1);
                if q.attachments == 0 && q.expires_at.is_none() {
                    q.expires_at = Some(deadline(now, q.ttl));
                }
                rec.meta(queue, q);
                (q.attachments, q.expires_at)
            })
            .await?;
        if let Some(at) = expiry.filter(|_| left == 0) {
            self.schedule_expiry(queue.clone(), at);
        }
        Ok(left)
    }

    async fn push(&self, queue: &QueueName, messages: Vec<Bytes>) -> Result<IdRange> {
        if messages.is_empty() {
            return Err(Error::EmptyBatch);
        }
        // A consumer's take can then join the push's commit (see the
        // embedded journal's linger): it still returns only once the push is
        // durable, since it waits for every change it may have seen.
        self.change_queue(queue, Announce::BeforeDurable, |q, rec, _| {
            let first = q.next_id;
            if rec.on {
                rec.changes.push(Change::Append {
                    queue: queue.clone(),
                    first,
                    payloads: messages.clone(),
                });
            }
            for payload in messages {
                q.ready.push_back(Message {
                    id: q.next_id,
                    payload,
                });
                q.next_id += 1;
            }
            let last = q.next_id - 1;
            q.pushed += last - first + 1;
            rec.meta(queue, q);
            IdRange { first, last }
        })
        .await
    }

    async fn take(&self, queue: &QueueName, max: u32, mode: TakeMode) -> Result<Vec<Message>> {
        self.with_queue(queue, |q, rec| q.take(queue, max, mode, rec))
            .await?
    }

    async fn take_many(&self, requests: &[TakeRequest], budget: u32) -> Vec<Taken> {
        let now = Instant::now();
        let mut rec = Recorder::new(J::RECORDS);
        let mut taken = Vec::with_capacity(requests.len());
        let mut expired = Vec::new();
        let ticket = {
            let mut queues = self.queues();
            let mut left = budget;
            for r in requests {
                if left == 0 {
                    break;
                }
                let asked = r.max.min(left);
                let messages = match lookup(&mut queues, &r.queue, now, &mut rec) {
                    Lookup::Live(q) => {
                        let batch = q.take(&r.queue, asked, r.mode, &mut rec);
                        if let Ok(batch) = &batch {
                            left -= batch.len() as u32;
                        }
                        batch
                    }
                    Lookup::Expired => {
                        expired.push(r.queue.clone());
                        Err(Error::QueueNotFound(r.queue.to_string()))
                    }
                    Lookup::Missing => Err(Error::QueueNotFound(r.queue.to_string())),
                };
                taken.push(Taken { asked, messages });
            }
            // Pending takes alone may return before their own changes are
            // durable (see `Queue::take`); a removal or a drop may not.
            rec.lazy = expired.is_empty()
                && requests[..taken.len()]
                    .iter()
                    .all(|r| r.mode == TakeMode::Pending);
            self.submit(rec)
        };
        if let Err(e) = self.shared.journal.wait(ticket).await {
            for t in &mut taken {
                t.messages = Err(e.clone());
            }
        }
        for name in expired {
            self.notify(Notification::Expired(name));
        }
        taken
    }

    async fn read(&self, queue: &QueueName, from: u64, max: u32) -> Result<Vec<Message>> {
        self.with_queue(queue, |q, _| {
            let max = max as usize;
            let p = q.pending.partition_point(|m| m.id < from);
            let r = q.ready.partition_point(|m| m.id < from);
            let stored = q.pending.range(p..).chain(q.ready.range(r..)).take(max);
            if q.leases.is_empty() {
                return stored.cloned().collect();
            }
            // Leased messages lie between ready ones: merge the first
            // `max` of each.
            let leased = q.leases.range(from..).take(max).map(|(_, l)| &l.message);
            let mut out: Vec<Message> = stored.chain(leased).cloned().collect();
            out.sort_unstable_by_key(|m| m.id);
            out.truncate(max);
            out
        })
        .await
    }

    async fn ack(&self, queue: &QueueName, id: u64) -> Result<u64> {
        if id == 0 {
            return Err(Error::InvalidArgument("message ids start at 1".into()));
        }
        self.with_queue(queue, |q, rec| {
            if id > q.delivered_hi {
                return Err(Error::UnknownAck {
                    queue: queue.to_string(),
                    id,
                });
            }
            let n = q.pending.partition_point(|m| m.id <= id);
            if let Some(last) = n.checked_sub(1).map(|i| q.pending[i].id) {
                q.pending.drain(..n);
                if !q.returns.is_empty() {
                    // Pending ids are below every other stored id.
                    q.returns.retain(|&id, _| id > last);
                }
                // Every stored id up to a pending one is pending.
                rec.remove(queue, 0, last);
                rec.meta(queue, q);
            }
            Ok(n as u64)
        })
        .await?
    }

    async fn begin_reliable(
        &self,
        queue: &QueueName,
        lock: &ReliableLock,
        last: u64,
    ) -> Result<u64> {
        let now = Instant::now();
        let requeued = self
            .with_queue_dl(queue, |q, rec, dead| {
                if q.lock_holder(now).is_some_and(|o| o != lock.owner) {
                    return Err(Error::ReliableConsumerActive(queue.to_string()));
                }
                q.reclaim_expired(queue, now, rec, dead);
                if !q.leases.is_empty() {
                    return Err(Error::LeaseConsumersActive(queue.to_string()));
                }
                q.reliable = Some((lock.owner.clone(), deadline(now, lock.lease)));
                if last > 0 {
                    let p = q.pending.partition_point(|m| m.id <= last);
                    q.pending.drain(..p);
                    let r = q.ready.partition_point(|m| m.id <= last);
                    q.ready.drain(..r);
                    if !q.returns.is_empty() {
                        q.returns.retain(|&id, _| id > last);
                    }
                    q.delivered_hi = q.delivered_hi.max(last.min(q.next_id - 1));
                    rec.remove(queue, 0, last);
                }
                let requeued = q.requeue_pending(queue, rec, dead);
                rec.meta(queue, q);
                Ok(requeued)
            })
            .await??;
        if requeued > 0 {
            self.notify(Notification::Data(queue.clone()));
        }
        Ok(requeued)
    }

    async fn renew_reliable(&self, queue: &QueueName, lock: &ReliableLock) -> Result<bool> {
        let now = Instant::now();
        let renewed = self
            .with_queue(queue, |q, rec| match &mut q.reliable {
                Some((owner, until)) if *owner == lock.owner && *until > now => {
                    *until = deadline(now, lock.lease);
                    rec.meta(queue, q);
                    true
                }
                _ => false,
            })
            .await;
        Self::or_missing(renewed, false)
    }

    async fn end_reliable(&self, queue: &QueueName, lock: &ReliableLock) -> Result<bool> {
        let now = Instant::now();
        let ended = self
            .with_queue(queue, |q, rec| {
                // A lapsed lock is no longer held: nothing to release.
                let holds = q.lock_holder(now) == Some(lock.owner.as_str());
                if holds {
                    q.reliable = None;
                    rec.meta(queue, q);
                }
                holds
            })
            .await;
        Self::or_missing(ended, false)
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
        let now = Instant::now();
        let (leases, requeued) = self
            .with_queue_dl(queue, |q, rec, dead| {
                let ask = LeaseAsk {
                    owner,
                    max,
                    visibility,
                };
                q.lease(queue, ask, now, rec, dead)
            })
            .await??;
        // Expired leases this call put back and did not take itself are
        // for the other waiting consumers.
        if requeued > leases.messages.len() as u64 {
            self.notify_data(queue);
        }
        Ok(leases)
    }

    async fn settle(
        &self,
        queue: &QueueName,
        token: LeaseToken,
        settlement: Settlement,
    ) -> Result<Settled> {
        token.check()?;
        let now = Instant::now();
        let (settled, requeued) = self
            .with_queue_dl(queue, |q, rec, dead| {
                q.settle(queue, token, settlement, now, rec, dead)
            })
            .await?;
        if requeued > 0 {
            self.notify_data(queue);
        }
        settled
    }

    async fn release_leases(&self, queue: &QueueName, owner: &str) -> Result<u64> {
        let now = Instant::now();
        let released = self
            .with_queue_dl(queue, |q, rec, dead| {
                q.release(queue, owner, now, rec, dead)
            })
            .await
            .map(|(released, requeued)| {
                if requeued > 0 {
                    self.notify_data(queue);
                }
                released
            });
        Self::or_missing(released, 0)
    }

    async fn set_max_deliveries(&self, queue: &QueueName, max: u32) -> Result<()> {
        busmq_core::check_max_deliveries(max)?;
        self.with_queue(queue, |q, rec| {
            q.max_deliveries = max;
            rec.meta(queue, q);
        })
        .await
    }

    async fn close(&self, queue: &QueueName) -> Result<bool> {
        let now = Instant::now();
        let mut rec = Recorder::new(J::RECORDS);
        let (existed, ticket) = {
            let mut queues = self.queues();
            let removed = queues.remove(queue);
            if removed.is_some() {
                rec.record(|| Change::Drop(queue.clone()));
            }
            let existed = removed.is_some_and(|q| !q.expired(now));
            (existed, self.submit(rec))
        };
        self.shared.journal.wait(ticket).await?;
        if existed {
            self.notify(Notification::Closed(queue.clone()));
        }
        Ok(existed)
    }

    async fn flush(&self, queue: &QueueName) -> Result<u64> {
        self.with_queue(queue, |q, rec| {
            let n = (q.ready.len() + q.pending.len() + q.leases.len()) as u64;
            if n > 0 {
                q.ready.clear();
                q.pending.clear();
                q.leases.clear();
                q.returns.clear();
                rec.remove(queue, 0, u64::MAX);
                rec.meta(queue, q);
            }
            n
        })
        .await
    }

    async fn info(&self, queue: &QueueName) -> Result<Option<QueueInfo>> {
        let now = Instant::now();
        let info = self.with_queue(queue, |q, _| q.info(now)).await;
        Self::or_missing(info.map(Some), None)
    }

    async fn list_queues(&self, filter: &QueueFilter) -> Result<QueuePage> {
        let now = Instant::now();
        let queues = self.queues();
        let live = queues
            .iter()
            .filter(|(_, q)| !q.expired(now))
            .map(|(name, _)| (name.clone(), ()));
        Ok(filter
            .page(live)
            .filter_map(|name, ()| queues.get(name).map(|q| q.info(now))))
    }

    async fn get_metadata(&self, queue: &QueueName, key: &str) -> Result<Option<String>> {
        self.with_queue(queue, |q, _| q.metadata.get(key).cloned())
            .await
    }

    async fn set_metadata(&self, queue: &QueueName, key: &str, value: &str) -> Result<()> {
        self.with_queue(queue, |q, rec| {
            q.metadata.insert(key.to_owned(), value.to_owned());
            rec.record(|| Change::Metadata {
                queue: queue.clone(),
                key: key.to_owned(),
                value: value.to_owned(),
            });
        })
        .await
    }

    fn watch(&self) -> Notifications {
        BroadcastStream::new(self.shared.notify.subscribe())
            .map(|n| n.unwrap_or(Notification::Lagged))
            .boxed()
    }

    async fn publish(&self, channel: &ChannelName, message: Bytes) -> Result<u64> {
        Ok(self.shared.hub.publish(channel, message))
    }

    async fn subscribe(&self, channel: &ChannelName) -> Result<Subscription> {
        Ok(self.shared.hub.subscribe(channel))
    }

    async fn list_channels(&self, filter: &ChannelFilter) -> Result<ChannelPage> {
        Ok(self.shared.hub.list(filter))
    }

    async fn object_save(
        &self,
        object: &ObjectName,
        fields: Vec<(String, String)>,
        ttl: Option<Duration>,
    ) -> Result<()> {
        self.save_object(object, fields, ttl).await
    }

    async fn object_load(&self, object: &ObjectName) -> Result<Option<ObjectFields>> {
        self.load_object(object).await
    }

    async fn object_touch(&self, object: &ObjectName, ttl: Duration) -> Result<bool> {
        self.touch_object(object, ttl).await
    }
}
