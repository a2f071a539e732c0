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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_stream::wrappers::BroadcastStream;

use busmq_core::{DEAD_LETTER_TTL_SECS, DEFAULT_TTL_SECS, NameMap};

use crate::leases::{Delivery, Lease};

use crate::object_state::Objects;
use crate::pubsub::Hub;
use crate::{
    Attached, ChannelName, Error, IdRange, LeaseToken, Leases, Message, Notification,
    Notifications, ObjectFields, ObjectName, QueueInfo, QueueName, ReliableLock, Result, Settled,
    Settlement, Storage, Subscription, TakeMode, TakeRequest, Taken,
};

/// Notifications buffered per watcher before it is told it lagged. A lag
/// wakes every consumer of the watching broker (each then asks the store
/// once), so this must cover the pushes made while the watcher waits its
/// turn on a busy runtime: at 10,000 queues, 4,096 lagged several times a
/// second and woke 10,000 consumers each time. One slot is a few dozen
/// bytes.
const NOTIFY_CAPACITY: usize = 65_536;

/// One queue. Invariant: `pending` and `ready` are each sorted by id, and
/// every pending id is below every ready id (pending messages came from the
/// front of `ready`, and go back to its front as a whole). So the pending
/// messages are exactly the stored messages with id <= [`Queue::pending_hi`],
/// which is how a journal can record them. Leased messages are in neither:
/// a lease taken from the front of `ready` goes back into `ready` at its
/// id's place, which keeps `ready` sorted (see [`crate::leases`]); leases
/// and a reliable consumer never coexist, so pending messages stay below.
#[derive(Debug)]
pub struct Queue {
    pub(crate) ready: VecDeque<Message>,
    pub(crate) pending: VecDeque<Message>,
    pub(crate) next_id: u64,
    /// Highest id ever taken as pending: acks above it are unknown.
    pub(crate) delivered_hi: u64,
    pub(crate) attachments: u64,
    pub(crate) ttl: Duration,
    /// Set while the queue has no attachments.
    pub(crate) expires_at: Option<Instant>,
    pub(crate) reliable: Option<(String, Instant)>,
    pub(crate) pushed: u64,
    pub(crate) consumed: u64,
    pub(crate) metadata: HashMap<String, String>,
    /// Messages leased in lease mode, by id.
    pub(crate) leases: BTreeMap<u64, Lease>,
    /// Deliveries so far of stored messages that were delivered and put
    /// back (nack, expiry, reliable requeue); absent means none.
    pub(crate) returns: HashMap<u64, u32>,
    /// Deliveries before a message is dead-lettered; 0 is unlimited.
    pub(crate) max_deliveries: u32,
}

impl Queue {
    pub(crate) fn new(ttl: Duration) -> Self {
        Queue {
            ready: VecDeque::new(),
            pending: VecDeque::new(),
            next_id: 1,
            delivered_hi: 0,
            attachments: 0,
            ttl,
            expires_at: None,
            reliable: None,
            pushed: 0,
            consumed: 0,
            metadata: HashMap::new(),
            leases: BTreeMap::new(),
            returns: HashMap::new(),
            max_deliveries: 0,
        }
    }

    pub(crate) fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Takes up to `max` messages from the front (see [`Storage::take`]),
    /// recording the change to `name`.
    fn take(
        &mut self,
        name: &QueueName,
        max: u32,
        mode: TakeMode,
        rec: &mut Recorder,
    ) -> Vec<Message> {
        let n = self.ready.len().min(max as usize);
        let taken: Vec<Message> = self.ready.drain(..n).collect();
        let (Some(first), Some(last)) = (taken.first(), taken.last()) else {
            return taken;
        };
        self.consumed += taken.len() as u64;
        match mode {
            // A crash that loses this change leaves the messages ready
            // instead of pending: delivered again, as reliable mode allows
            // for anything not acked. So delivery waits only for the pushes
            // it takes to be durable, not for a commit of its own.
            TakeMode::Pending => {
                self.delivered_hi = self.delivered_hi.max(last.id);
                self.pending.extend(taken.iter().cloned());
                rec.lazy = true;
            }
            // Ready ids are above every pending id, so the range holds no
            // pending message; it may hold leased ones, which `remove_ids`
            // leaves out.
            TakeMode::Remove if self.leases.is_empty() => {
                rec.remove(name, first.id, last.id);
                self.forget_returns(taken.iter().map(|m| m.id));
            }
            TakeMode::Remove => {
                rec.remove_ids(name, taken.iter().map(|m| m.id));
                self.forget_returns(taken.iter().map(|m| m.id));
            }
        }
        rec.meta(name, self);
        taken
    }

    pub(crate) fn lock_holder(&self, now: Instant) -> Option<&str> {
        match &self.reliable {
            Some((owner, until)) if *until > now => Some(owner),
            _ => None,
        }
    }

    /// The highest pending id, 0 when nothing is pending.
    pub fn pending_hi(&self) -> u64 {
        self.pending.back().map_or(0, |m| m.id)
    }

    /// Moves every pending message back to the front of `ready`, or to
    /// `dead` when it used up its deliveries; returns how many went back.
    fn requeue_pending(
        &mut self,
        name: &QueueName,
        rec: &mut Recorder,
        dead: &mut Vec<Message>,
    ) -> u64 {
        let mut n = 0;
        let mut dead_here = Vec::new();
        while let Some(m) = self.pending.pop_back() {
            let delivered = self.returns.get(&m.id).copied().unwrap_or(0) + 1;
            if self.max_deliveries > 0 && delivered >= self.max_deliveries {
                self.returns.remove(&m.id);
                rec.remove(name, m.id, m.id);
                dead_here.push(m);
                continue;
            }
            self.returns.insert(m.id, delivered);
            rec.delivery(name, m.id, Some(Delivery::returned(delivered)));
            self.ready.push_front(m);
            n += 1;
        }
        dead.extend(dead_here.into_iter().rev());
        n
    }

    /// Everything about the queue except its messages and metadata.
    pub(crate) fn meta(&self) -> QueueMeta {
        QueueMeta {
            ttl: self.ttl,
            attachments: self.attachments,
            expires_at: self.expires_at,
            reliable: self.reliable.clone(),
            next_id: self.next_id,
            delivered_hi: self.delivered_hi,
            pending_hi: self.pending_hi(),
            pushed: self.pushed,
            consumed: self.consumed,
            max_deliveries: self.max_deliveries,
        }
    }

    /// Rebuilds a queue from what a journal recorded: its meta, its stored
    /// messages in id order, the delivery records of its messages, and its
    /// metadata. Delivery records of messages not stored are ignored.
    pub(crate) fn restore(
        meta: QueueMeta,
        messages: impl IntoIterator<Item = Message>,
        mut deliveries: HashMap<u64, Delivery>,
        metadata: HashMap<String, String>,
    ) -> Self {
        let mut q = Queue::new(meta.ttl);
        for m in messages {
            let delivery = deliveries.remove(&m.id);
            if m.id <= meta.pending_hi {
                if let Some(d) = delivery {
                    q.returns.insert(m.id, d.attempts);
                }
                q.pending.push_back(m);
                continue;
            }
            match delivery {
                Some(Delivery {
                    attempts,
                    lease: Some((owner, until)),
                }) => {
                    q.leases.insert(
                        m.id,
                        Lease {
                            message: m,
                            attempt: attempts,
                            owner,
                            until,
                        },
                    );
                }
                Some(d) => {
                    q.returns.insert(m.id, d.attempts);
                    q.ready.push_back(m);
                }
                None => q.ready.push_back(m),
            }
        }
        q.max_deliveries = meta.max_deliveries;
        q.next_id = meta.next_id;
        q.delivered_hi = meta.delivered_hi;
        q.attachments = meta.attachments;
        q.expires_at = meta.expires_at;
        q.reliable = meta.reliable;
        q.pushed = meta.pushed;
        q.consumed = meta.consumed;
        q.metadata = metadata;
        q
    }
}

/// `now + d`, saturating far in the future instead of overflowing: a
/// direct caller of the trait may pass any duration.
pub(crate) fn deadline(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// Everything about a queue except its messages and metadata, as a journal
/// records it after a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueMeta {
    pub ttl: Duration,
    pub attachments: u64,
    pub expires_at: Option<Instant>,
    /// Owner and lease end of the reliable lock.
    pub reliable: Option<(String, Instant)>,
    pub next_id: u64,
    pub delivered_hi: u64,
    /// Stored messages with an id up to this one are pending (0: none).
    pub pending_hi: u64,
    pub pushed: u64,
    pub consumed: u64,
    pub max_deliveries: u32,
}

/// The effect of one mutation on one queue, as a journal records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The queue's meta is now this (creating the queue if it was not
    /// recorded).
    Meta(QueueName, QueueMeta),
    /// Messages appended with consecutive ids from `first`.
    Append {
        queue: QueueName,
        first: u64,
        payloads: Vec<Bytes>,
    },
    /// Every stored message with an id in `from..=to` is gone.
    Remove {
        queue: QueueName,
        from: u64,
        to: u64,
    },
    /// The delivery record of one stored message is now this (`None`:
    /// it has none). Removing a message removes its record too.
    Delivery {
        queue: QueueName,
        id: u64,
        delivery: Option<Delivery>,
    },
    /// One metadata value was written.
    Metadata {
        queue: QueueName,
        key: String,
        value: String,
    },
    /// The queue is gone, with its messages and metadata.
    Drop(QueueName),
    /// Fields of a persistable object were written (creating it).
    ObjectFields {
        object: ObjectName,
        fields: Vec<(String, String)>,
    },
    /// The expiry deadline of an object is now this.
    ObjectExpiry {
        object: ObjectName,
        expires_at: Option<Instant>,
    },
    /// The object is gone, with its fields.
    ObjectDrop(ObjectName),
}

/// Where a [`QueueStore`] records its changes.
pub trait Journal: Send + Sync + 'static {
    /// Whether changes are recorded at all; when false, none are built.
    const RECORDS: bool;

    /// Records `changes` (applied in this order, after every change
    /// submitted before) and returns a ticket for [`Journal::wait`]. Called
    /// under the store's lock, so it must not block on I/O.
    fn submit(&self, changes: Vec<Change>) -> u64;

    /// The ticket of the latest submission.
    fn last_ticket(&self) -> u64;

    /// Resolves once every change up to `ticket` is recorded for good.
    fn wait(&self, ticket: u64) -> impl Future<Output = Result<()>> + Send;
}

/// When an operation that adds messages tells consumers about them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Announce {
    /// Once its changes are durable.
    AfterDurable,
    /// As soon as they are applied in memory.
    BeforeDurable,
}

/// The journal of a store that forgets everything when the process ends.
#[derive(Debug, Default)]
pub struct Volatile;

impl Journal for Volatile {
    const RECORDS: bool = false;

    fn submit(&self, _changes: Vec<Change>) -> u64 {
        0
    }

    fn last_ticket(&self) -> u64 {
        0
    }

    fn wait(&self, _ticket: u64) -> impl Future<Output = Result<()>> + Send {
        std::future::ready(Ok(()))
    }
}

/// The changes one operation makes, built only when the journal records.
pub(crate) struct Recorder {
    pub(crate) on: bool,
    pub(crate) changes: Vec<Change>,
    /// The operation may return before its own changes are durable (only
    /// what it saw must be): losing them in a crash must be harmless.
    pub(crate) lazy: bool,
}

impl Recorder {
    pub(crate) fn new(on: bool) -> Self {
        Recorder {
            on,
            changes: Vec::new(),
            lazy: false,
        }
    }

    pub(crate) fn record(&mut self, change: impl FnOnce() -> Change) {
        if self.on {
            self.changes.push(change());
        }
    }

    pub(crate) fn meta(&mut self, name: &QueueName, q: &Queue) {
        self.record(|| Change::Meta(name.clone(), q.meta()));
    }

    pub(crate) fn delivery(&mut self, name: &QueueName, id: u64, delivery: Option<Delivery>) {
        self.record(|| Change::Delivery {
            queue: name.clone(),
            id,
            delivery,
        });
    }

    /// Removes exactly the given ids (sorted), as few ranges as possible:
    /// a range must not cover a leased message lying between them.
    pub(crate) fn remove_ids(&mut self, name: &QueueName, ids: impl IntoIterator<Item = u64>) {
        if !self.on {
            return;
        }
        let mut run: Option<(u64, u64)> = None;
        for id in ids {
            run = match run {
                Some((from, to)) if to + 1 == id => Some((from, id)),
                Some((from, to)) => {
                    self.remove(name, from, to);
                    Some((id, id))
                }
                None => Some((id, id)),
            };
        }
        if let Some((from, to)) = run {
            self.remove(name, from, to);
        }
    }

    pub(crate) fn remove(&mut self, name: &QueueName, from: u64, to: u64) {
        if from <= to {
            self.record(|| Change::Remove {
                queue: name.clone(),
                from,
                to,
            });
        }
    }
}

/// Where [`dead_letter`] put the dead letters.
struct DeadLetterQueue {
    name: QueueName,
    /// Its new expiry deadline, when it has no attachments.
    expires_at: Option<Instant>,
    /// An expired queue of that name was replaced.
    replaced_expired: bool,
}

/// Appends `dead` (in id order) to the dead-letter queue of `source`,
/// creating it unattached with [`DEAD_LETTER_TTL_SECS`] if needed. An
/// unattached one lives its ttl from now: from its latest dead letter.
fn dead_letter(
    queues: &mut NameMap<Queue>,
    source: &QueueName,
    dead: Vec<Message>,
    now: Instant,
    rec: &mut Recorder,
) -> DeadLetterQueue {
    let name = source.dead_letters();
    let replaced_expired = queues.get(&name).is_some_and(|q| q.expired(now));
    if replaced_expired {
        queues.remove(&name);
        rec.record(|| Change::Drop(name.clone()));
    }
    let q = queues.entry(name.clone()).or_insert_with(|| {
        let q = Queue::new(Duration::from_secs(DEAD_LETTER_TTL_SECS));
        // A journal records a queue's meta before anything else about it.
        rec.meta(&name, &q);
        q
    });
    let first = q.next_id;
    let n = dead.len() as u64;
    rec.record(|| Change::Append {
        queue: name.clone(),
        first,
        payloads: dead.iter().map(|m| m.payload.clone()).collect(),
    });
    for (id, m) in (first..).zip(dead) {
        q.ready.push_back(Message {
            id,
            payload: m.payload,
        });
    }
    q.next_id += n;
    q.pushed += n;
    if q.attachments == 0 {
        q.expires_at = Some(deadline(now, q.ttl));
    }
    rec.meta(&name, q);
    DeadLetterQueue {
        expires_at: q.expires_at,
        name,
        replaced_expired,
    }
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
            .await
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
                        left -= batch.len() as u32;
                        Ok(batch)
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
        self.lease_messages(queue, owner, max, visibility).await
    }

    async fn settle(
        &self,
        queue: &QueueName,
        token: LeaseToken,
        settlement: Settlement,
    ) -> Result<Settled> {
        self.settle_lease(queue, token, settlement).await
    }

    async fn release_leases(&self, queue: &QueueName, owner: &str) -> Result<u64> {
        Self::or_missing(self.release_owner(queue, owner).await, 0)
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
        let info = self
            .with_queue(queue, |q, _| QueueInfo {
                count: (q.ready.len() + q.pending.len() + q.leases.len()) as u64,
                ttl: q.ttl,
                attachments: q.attachments,
                pending: q.pending.len() as u64,
                next_id: q.next_id,
                pushed: q.pushed,
                consumed: q.consumed,
                reliable_consumer: q.lock_holder(now).is_some(),
                leased: q.leases.len() as u64,
                max_deliveries: q.max_deliveries,
            })
            .await;
        Self::or_missing(info.map(Some), None)
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
