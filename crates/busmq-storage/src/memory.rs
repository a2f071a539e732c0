//! An in-memory store: fast, ephemeral, for tests and `--storage memory`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_stream::wrappers::BroadcastStream;

use busmq_core::DEFAULT_TTL_SECS;

use crate::{
    Attached, Error, IdRange, Message, Notification, Notifications, QueueInfo, QueueName,
    ReliableLock, Result, Storage, TakeMode,
};

/// Notifications buffered per watcher before it is told it lagged.
const NOTIFY_CAPACITY: usize = 4096;

/// An in-memory [`Storage`]. Queues expire on tokio's clock, so tests can
/// drive expiry with `tokio::time::pause()` and `advance()`.
#[derive(Clone)]
pub struct MemoryStorage {
    shared: Arc<Shared>,
}

struct Shared {
    queues: Mutex<HashMap<QueueName, Queue>>,
    notify: broadcast::Sender<Notification>,
}

/// One queue. Invariant: `pending` and `ready` are each sorted by id, and
/// every pending id is below every ready id (pending messages came from the
/// front of `ready`, and go back to its front as a whole).
struct Queue {
    ready: VecDeque<Message>,
    pending: VecDeque<Message>,
    next_id: u64,
    /// Highest id ever taken as pending: acks above it are unknown.
    delivered_hi: u64,
    attachments: u64,
    ttl: Duration,
    /// Set while the queue has no attachments.
    expires_at: Option<Instant>,
    reliable: Option<(String, Instant)>,
    pushed: u64,
    consumed: u64,
    metadata: HashMap<String, String>,
}

impl Queue {
    fn new(ttl: Duration) -> Self {
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
        }
    }

    fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    fn lock_holder(&self, now: Instant) -> Option<&str> {
        match &self.reliable {
            Some((owner, until)) if *until > now => Some(owner),
            _ => None,
        }
    }

    /// Moves every pending message back to the front of `ready`.
    fn requeue_pending(&mut self) -> u64 {
        let n = self.pending.len() as u64;
        while let Some(m) = self.pending.pop_back() {
            self.ready.push_front(m);
        }
        n
    }
}

/// `now + d`, saturating far in the future instead of overflowing: a
/// direct caller of the trait may pass any duration.
fn deadline(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

impl Default for MemoryStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStorage {
    /// An empty store.
    pub fn new() -> Self {
        let (notify, _) = broadcast::channel(NOTIFY_CAPACITY);
        MemoryStorage {
            shared: Arc::new(Shared {
                queues: Mutex::new(HashMap::new()),
                notify,
            }),
        }
    }

    fn queues(&self) -> MutexGuard<'_, HashMap<QueueName, Queue>> {
        // A panic while holding the lock cannot leave a queue half-written
        // (every mutation is a few infallible steps), so poisoning is moot.
        self.shared
            .queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn notify(&self, n: Notification) {
        // No receivers is fine: nobody is waiting.
        let _ = self.shared.notify.send(n);
    }

    /// Runs `f` on a live queue; a missing or expired queue is not found.
    fn with_queue<T>(&self, name: &QueueName, f: impl FnOnce(&mut Queue) -> T) -> Result<T> {
        let now = Instant::now();
        let mut queues = self.queues();
        match queues.get_mut(name) {
            Some(q) if !q.expired(now) => Ok(f(q)),
            Some(_) => {
                queues.remove(name);
                drop(queues);
                self.notify(Notification::Expired(name.clone()));
                Err(Error::QueueNotFound(name.to_string()))
            }
            None => Err(Error::QueueNotFound(name.to_string())),
        }
    }

    /// Removes the queue when its ttl has run out with no attachments.
    fn schedule_expiry(&self, name: QueueName, at: Instant) {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let removed = {
                let mut queues = this.queues();
                let due = queues
                    .get(&name)
                    .is_some_and(|q| q.expires_at == Some(at) && q.expired(Instant::now()));
                due && queues.remove(&name).is_some()
            };
            if removed {
                tracing::debug!(queue = %name, "queue expired");
                this.notify(Notification::Expired(name));
            }
        });
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn attach(&self, queue: &QueueName, ttl: Option<Duration>) -> Result<Attached> {
        let now = Instant::now();
        let mut queues = self.queues();
        let stale = queues.get(queue).is_some_and(|q| q.expired(now));
        if stale {
            queues.remove(queue);
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
        let attachments = q.attachments;
        drop(queues);
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
        let (left, expiry) = self.with_queue(queue, |q| {
            q.attachments = q.attachments.saturating_sub(1);
            if q.attachments == 0 && q.expires_at.is_none() {
                q.expires_at = Some(deadline(now, q.ttl));
            }
            (q.attachments, q.expires_at)
        })?;
        if let Some(at) = expiry.filter(|_| left == 0) {
            self.schedule_expiry(queue.clone(), at);
        }
        Ok(left)
    }

    async fn push(&self, queue: &QueueName, messages: Vec<Bytes>) -> Result<IdRange> {
        if messages.is_empty() {
            return Err(Error::EmptyBatch);
        }
        let range = self.with_queue(queue, |q| {
            let first = q.next_id;
            for payload in messages {
                q.ready.push_back(Message {
                    id: q.next_id,
                    payload,
                });
                q.next_id += 1;
            }
            let last = q.next_id - 1;
            q.pushed += last - first + 1;
            IdRange { first, last }
        })?;
        self.notify(Notification::Data(queue.clone()));
        Ok(range)
    }

    async fn take(&self, queue: &QueueName, max: u32, mode: TakeMode) -> Result<Vec<Message>> {
        self.with_queue(queue, |q| {
            let n = q.ready.len().min(max as usize);
            let taken: Vec<Message> = q.ready.drain(..n).collect();
            q.consumed += taken.len() as u64;
            if mode == TakeMode::Pending {
                if let Some(last) = taken.last() {
                    q.delivered_hi = q.delivered_hi.max(last.id);
                }
                q.pending.extend(taken.iter().cloned());
            }
            taken
        })
    }

    async fn read(&self, queue: &QueueName, from: u64, max: u32) -> Result<Vec<Message>> {
        self.with_queue(queue, |q| {
            let max = max as usize;
            let p = q.pending.partition_point(|m| m.id < from);
            let r = q.ready.partition_point(|m| m.id < from);
            q.pending
                .range(p..)
                .chain(q.ready.range(r..))
                .take(max)
                .cloned()
                .collect()
        })
    }

    async fn ack(&self, queue: &QueueName, id: u64) -> Result<u64> {
        if id == 0 {
            return Err(Error::InvalidArgument("message ids start at 1".into()));
        }
        self.with_queue(queue, |q| {
            if id > q.delivered_hi {
                return Err(Error::UnknownAck {
                    queue: queue.to_string(),
                    id,
                });
            }
            let n = q.pending.partition_point(|m| m.id <= id);
            q.pending.drain(..n);
            Ok(n as u64)
        })?
    }

    async fn begin_reliable(
        &self,
        queue: &QueueName,
        lock: &ReliableLock,
        last: u64,
    ) -> Result<u64> {
        let now = Instant::now();
        let requeued = self.with_queue(queue, |q| {
            if q.lock_holder(now).is_some_and(|o| o != lock.owner) {
                return Err(Error::ReliableConsumerActive(queue.to_string()));
            }
            q.reliable = Some((lock.owner.clone(), deadline(now, lock.lease)));
            if last > 0 {
                let p = q.pending.partition_point(|m| m.id <= last);
                q.pending.drain(..p);
                let r = q.ready.partition_point(|m| m.id <= last);
                q.ready.drain(..r);
                q.delivered_hi = q.delivered_hi.max(last.min(q.next_id - 1));
            }
            Ok(q.requeue_pending())
        })??;
        if requeued > 0 {
            self.notify(Notification::Data(queue.clone()));
        }
        Ok(requeued)
    }

    async fn renew_reliable(&self, queue: &QueueName, lock: &ReliableLock) -> Result<bool> {
        let now = Instant::now();
        match self.with_queue(queue, |q| match &mut q.reliable {
            Some((owner, until)) if *owner == lock.owner && *until > now => {
                *until = deadline(now, lock.lease);
                true
            }
            _ => false,
        }) {
            Err(Error::QueueNotFound(_)) => Ok(false),
            other => other,
        }
    }

    async fn end_reliable(&self, queue: &QueueName, lock: &ReliableLock) -> Result<bool> {
        match self.with_queue(queue, |q| {
            let holds = q.reliable.as_ref().is_some_and(|(o, _)| *o == lock.owner);
            if holds {
                q.reliable = None;
            }
            holds
        }) {
            Err(Error::QueueNotFound(_)) => Ok(false),
            other => other,
        }
    }

    async fn close(&self, queue: &QueueName) -> Result<bool> {
        let now = Instant::now();
        let removed = self.queues().remove(queue);
        let existed = removed.is_some_and(|q| !q.expired(now));
        if existed {
            self.notify(Notification::Closed(queue.clone()));
        }
        Ok(existed)
    }

    async fn flush(&self, queue: &QueueName) -> Result<u64> {
        self.with_queue(queue, |q| {
            let n = (q.ready.len() + q.pending.len()) as u64;
            q.ready.clear();
            q.pending.clear();
            n
        })
    }

    async fn info(&self, queue: &QueueName) -> Result<Option<QueueInfo>> {
        let now = Instant::now();
        match self.with_queue(queue, |q| QueueInfo {
            count: (q.ready.len() + q.pending.len()) as u64,
            ttl: q.ttl,
            attachments: q.attachments,
            pending: q.pending.len() as u64,
            next_id: q.next_id,
            pushed: q.pushed,
            consumed: q.consumed,
            reliable_consumer: q.lock_holder(now).is_some(),
        }) {
            Ok(info) => Ok(Some(info)),
            Err(Error::QueueNotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn get_metadata(&self, queue: &QueueName, key: &str) -> Result<Option<String>> {
        self.with_queue(queue, |q| q.metadata.get(key).cloned())
    }

    async fn set_metadata(&self, queue: &QueueName, key: &str, value: &str) -> Result<()> {
        self.with_queue(queue, |q| {
            q.metadata.insert(key.to_owned(), value.to_owned());
        })
    }

    fn watch(&self) -> Notifications {
        BroadcastStream::new(self.shared.notify.subscribe())
            .map(|n| n.unwrap_or(Notification::Lagged))
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use busmq_core::Limits;

    fn queue(name: &str) -> QueueName {
        QueueName::parse(name, &Limits::default()).unwrap()
    }

    /// Lets spawned expiry timers run after the clock moved.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn expires_after_ttl_with_no_attachments() {
        let s = MemoryStorage::new();
        let mut watch = s.watch();
        let q = queue("expiring");
        s.attach(&q, Some(Duration::from_secs(30))).await.unwrap();
        s.push(&q, vec![Bytes::from_static(b"x")]).await.unwrap();
        assert_eq!(watch.next().await, Some(Notification::Data(q.clone())));
        assert_eq!(s.detach(&q).await.unwrap(), 0);

        tokio::time::advance(Duration::from_secs(29)).await;
        settle().await;
        assert_eq!(s.info(&q).await.unwrap().unwrap().count, 1, "not yet");

        tokio::time::advance(Duration::from_secs(2)).await;
        settle().await;
        // The timer removed it and said so, without anyone asking.
        assert_eq!(watch.next().await, Some(Notification::Expired(q.clone())));
        assert_eq!(s.info(&q).await.unwrap(), None);
        let again = s.attach(&q, Some(Duration::from_secs(30))).await.unwrap();
        assert!(!again.existed, "messages expired with the queue");
        assert_eq!(s.info(&q).await.unwrap().unwrap().next_id, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn attached_queues_never_expire() {
        let s = MemoryStorage::new();
        let q = queue("attached");
        s.attach(&q, Some(Duration::from_secs(1))).await.unwrap();
        tokio::time::advance(Duration::from_secs(3600)).await;
        settle().await;
        assert!(s.info(&q).await.unwrap().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn reattach_cancels_expiry_and_detach_restarts_it() {
        let s = MemoryStorage::new();
        let q = queue("reattached");
        s.attach(&q, Some(Duration::from_secs(30))).await.unwrap();
        s.detach(&q).await.unwrap();
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(
            s.attach(&q, Some(Duration::from_secs(30)))
                .await
                .unwrap()
                .existed
        );
        // Past the first deadline: the stale timer must not remove it.
        tokio::time::advance(Duration::from_secs(20)).await;
        settle().await;
        assert!(s.info(&q).await.unwrap().is_some());
        // Detaching again starts a fresh full ttl.
        s.detach(&q).await.unwrap();
        tokio::time::advance(Duration::from_secs(29)).await;
        settle().await;
        assert!(s.info(&q).await.unwrap().is_some());
        tokio::time::advance(Duration::from_secs(2)).await;
        settle().await;
        assert_eq!(s.info(&q).await.unwrap(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_is_enforced_even_before_the_timer_runs() {
        let s = MemoryStorage::new();
        let mut watch = s.watch();
        let q = queue("lazy");
        s.attach(&q, Some(Duration::from_secs(5))).await.unwrap();
        s.detach(&q).await.unwrap();
        // Move the clock without letting the timer task run.
        tokio::time::advance(Duration::from_secs(6)).await;
        let err = s
            .push(&q, vec![Bytes::from_static(b"x")])
            .await
            .unwrap_err();
        assert_eq!(err, Error::QueueNotFound(q.to_string()));
        assert_eq!(watch.next().await, Some(Notification::Expired(q.clone())));
    }

    #[tokio::test(start_paused = true)]
    async fn reliable_lock_lapses_on_the_clock() {
        let s = MemoryStorage::new();
        let q = queue("lease");
        s.attach(&q, Some(Duration::from_secs(30))).await.unwrap();
        let a = ReliableLock {
            owner: "a".into(),
            lease: Duration::from_secs(10),
        };
        let b = ReliableLock {
            owner: "b".into(),
            lease: Duration::from_secs(10),
        };
        s.begin_reliable(&q, &a, 0).await.unwrap();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(s.renew_reliable(&q, &a).await.unwrap());
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(matches!(
            s.begin_reliable(&q, &b, 0).await,
            Err(Error::ReliableConsumerActive(_))
        ));
        tokio::time::advance(Duration::from_secs(2)).await;
        s.begin_reliable(&q, &b, 0).await.unwrap();
        assert!(!s.renew_reliable(&q, &a).await.unwrap());
    }
}
