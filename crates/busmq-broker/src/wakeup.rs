//! Wakes consumers when their queue changes.
//!
//! One task per broker reads the store's notification stream and pokes the
//! consumers waiting on the named queue. No consumer polls: an idle consumer
//! costs one watch receiver and nothing else. A consumer of many queues
//! (ConsumeMany) registers one [`ReadySet`] for all of them instead: a
//! change marks the queue's slot in it and wakes the consumer once, however
//! many of its queues changed, so it never looks at queues that did not.

use std::sync::{Arc, Mutex, MutexGuard};

use busmq_core::{NameMap, QueueName};
use busmq_storage::{Notification, Notifications};
use futures::{FutureExt, StreamExt};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// What a waiting consumer learns about its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueSignal {
    /// The queue lives; a change means "look again".
    Open,
    /// The queue was closed by a client.
    Closed,
    /// The queue expired.
    Expired,
}

/// Who waits on one queue.
struct Waiters {
    /// Consumers of this queue alone.
    watch: watch::Sender<QueueSignal>,
    /// Consumers of many queues: their ready set and this queue's slot in it.
    sets: Vec<(Arc<ReadySet>, u32)>,
}

impl Waiters {
    fn new() -> Self {
        Waiters {
            watch: watch::channel(QueueSignal::Open).0,
            sets: Vec::new(),
        }
    }

    /// "Look again."
    fn poke(&self) {
        // Waking no receiver still costs a pass over the watch's wait
        // lists, per push; with thousands of queues consumed through
        // ready sets that was the broker's largest single cost. The
        // registry lock is held, so no receiver can subscribe meanwhile.
        if self.watch.receiver_count() > 0 {
            self.watch.send_modify(|_| {});
        }
        for (set, slot) in &self.sets {
            set.mark(*slot, QueueSignal::Open);
        }
    }

    fn is_unused(&self) -> bool {
        self.watch.receiver_count() == 0 && self.sets.is_empty()
    }
}

type Registry = NameMap<Waiters>;

/// The consumers waiting on each queue.
#[derive(Default)]
pub struct Wakeups {
    queues: Mutex<Registry>,
}

impl Wakeups {
    fn map(&self) -> MutexGuard<'_, Registry> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers interest in `queue`. Subscribe before the first look at the
    /// queue so that no change between the look and the wait is missed.
    pub fn subscribe(self: &Arc<Self>, queue: &QueueName) -> Subscription {
        let rx = self
            .map()
            .entry(queue.clone())
            .or_insert_with(Waiters::new)
            .watch
            .subscribe();
        Subscription {
            rx: Some(rx),
            wakeups: Arc::clone(self),
            queue: queue.clone(),
        }
    }

    /// Registers one consumer's interest in each of `queues` (distinct),
    /// slot `i` being `queues[i]`. Every slot starts marked, so the first
    /// look at each queue happens without waiting for a change.
    pub fn subscribe_many(self: &Arc<Self>, queues: Vec<QueueName>) -> ManySubscription {
        let set = Arc::new(ReadySet::all_marked(queues.len()));
        let mut map = self.map();
        for (slot, queue) in queues.iter().enumerate() {
            map.entry(queue.clone())
                .or_insert_with(Waiters::new)
                .sets
                .push((Arc::clone(&set), slot as u32));
        }
        drop(map);
        ManySubscription {
            set,
            wakeups: Arc::clone(self),
            queues,
        }
    }

    /// Applies one store notification ([`Self::run`] applies them in
    /// batches; tests drive one at a time).
    #[cfg(test)]
    fn apply(&self, notification: Notification) {
        self.apply_all(&mut vec![notification]);
    }

    /// Applies `batch` (emptying it) under one lock of the registry. A
    /// lost notification anywhere in it wakes every consumer once, which
    /// covers the batch's data notifications too.
    fn apply_all(&self, batch: &mut Vec<Notification>) {
        let lagged = batch.contains(&Notification::Lagged);
        let mut map = self.map();
        for n in batch.drain(..) {
            match n {
                Notification::Data(queue) if !lagged => {
                    if let Some(waiters) = map.get(&queue) {
                        waiters.poke();
                    }
                }
                Notification::Data(_) | Notification::Lagged => {}
                Notification::Closed(queue) => end(&mut map, &queue, QueueSignal::Closed),
                Notification::Expired(queue) => end(&mut map, &queue, QueueSignal::Expired),
            }
        }
        if lagged {
            for waiters in map.values() {
                waiters.poke();
            }
        }
    }

    /// Feeds `notifications` into the registry until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        mut notifications: Notifications,
        shutdown: CancellationToken,
    ) {
        let mut batch = Vec::with_capacity(COALESCE_MAX);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                next = notifications.next() => match next {
                    Some(n) => batch.push(n),
                    None => {
                        tracing::error!("storage notification stream ended; consumers will not be woken");
                        return;
                    }
                },
            }
            // Whatever else is already waiting shares the lock; under load
            // the store outpaces a task that waits its turn on a busy
            // runtime, and one pass per batch keeps up where one per
            // notification does not. The draining is outside tokio's
            // per-poll budget: within it a broadcast receiver gives up
            // after 128 items, and a runtime busy with 10,000 queues' worth
            // of tasks polled this one too rarely to keep up at that rate.
            // It fell behind by the channel's whole capacity and stayed
            // there, so consumers heard of pushes a second late and mostly
            // from the lag, which wakes every one of them.
            while batch.len() < COALESCE_MAX {
                match tokio::task::unconstrained(notifications.next()).now_or_never() {
                    Some(Some(n)) => batch.push(n),
                    _ => break,
                }
            }
            let full = batch.len() == COALESCE_MAX;
            self.apply_all(&mut batch);
            if full {
                // More may be waiting: let the runtime's other tasks run
                // before the next pass.
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Notifications applied under one lock of the registry, at most.
const COALESCE_MAX: usize = 4096;

/// Ends `queue`'s waits with `signal`. Dropping the sender after the final
/// value leaves waiting receivers with it; a queue re-created later gets a
/// fresh sender.
fn end(map: &mut Registry, queue: &QueueName, signal: QueueSignal) {
    if let Some(waiters) = map.remove(queue) {
        waiters.watch.send_replace(signal);
        for (set, slot) in &waiters.sets {
            set.mark(*slot, signal);
        }
    }
}

/// One consumer's interest in one queue; unregisters on drop.
pub struct Subscription {
    rx: Option<watch::Receiver<QueueSignal>>,
    wakeups: Arc<Wakeups>,
    queue: QueueName,
}

impl Subscription {
    fn rx(&mut self) -> &mut watch::Receiver<QueueSignal> {
        self.rx.as_mut().expect("receiver lives until drop")
    }

    /// Marks the current state as seen and returns it. Call right before
    /// looking at the queue.
    pub fn mark_seen(&mut self) -> QueueSignal {
        *self.rx().borrow_and_update()
    }

    /// Waits for the next change and returns the state after it.
    pub async fn changed(&mut self) -> QueueSignal {
        let rx = self.rx();
        match rx.changed().await {
            Ok(()) => *rx.borrow_and_update(),
            // The sender goes away only after publishing the end state.
            Err(_) => match *rx.borrow() {
                QueueSignal::Open => QueueSignal::Closed,
                ended => ended,
            },
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        drop(self.rx.take());
        let mut map = self.wakeups.map();
        if map.get(&self.queue).is_some_and(Waiters::is_unused) {
            map.remove(&self.queue);
        }
    }
}

/// The queues of one many-queue consumer that changed since it last
/// looked, by slot; wakes the consumer on the first mark after a look.
pub struct ReadySet {
    marks: Mutex<Marks>,
    notify: Notify,
}

struct Marks {
    /// Marked slots in the order they were marked, each once.
    order: Vec<u32>,
    /// Per slot: marked, and with which signal (an end wins over `Open`).
    signal: Vec<Option<QueueSignal>>,
}

impl ReadySet {
    fn all_marked(slots: usize) -> Self {
        ReadySet {
            marks: Mutex::new(Marks {
                order: (0..slots as u32).collect(),
                signal: vec![Some(QueueSignal::Open); slots],
            }),
            notify: Notify::new(),
        }
    }

    fn marks(&self) -> MutexGuard<'_, Marks> {
        self.marks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mark(&self, slot: u32, signal: QueueSignal) {
        let mut marks = self.marks();
        let Some(current) = marks.signal.get_mut(slot as usize) else {
            return;
        };
        let first = current.is_none();
        if !matches!(current, Some(QueueSignal::Closed | QueueSignal::Expired)) {
            *current = Some(signal);
        }
        if first {
            marks.order.push(slot);
            drop(marks);
            // A permit is kept when nobody waits, so a mark between a
            // consumer's `take` and its wait is not missed.
            self.notify.notify_one();
        }
    }

    /// Moves every marked slot, with its signal, into `into` and unmarks
    /// it. Call right before looking at those queues: a change after this
    /// marks the slot again.
    pub fn take(&self, into: &mut Vec<(u32, QueueSignal)>) {
        let mut marks = self.marks();
        let Marks { order, signal } = &mut *marks;
        into.extend(
            order
                .drain(..)
                .filter_map(|slot| signal[slot as usize].take().map(|s| (slot, s))),
        );
    }

    /// Waits until a slot is marked (at once if one was marked since the
    /// last wait returned).
    pub async fn marked(&self) {
        self.notify.notified().await;
    }
}

/// One many-queue consumer's interest in its queues; unregisters on drop.
pub struct ManySubscription {
    set: Arc<ReadySet>,
    wakeups: Arc<Wakeups>,
    queues: Vec<QueueName>,
}

impl ManySubscription {
    /// The slots that changed, and the wake-up.
    pub fn ready(&self) -> &ReadySet {
        &self.set
    }
}

impl Drop for ManySubscription {
    fn drop(&mut self) {
        let mut map = self.wakeups.map();
        for queue in &self.queues {
            if let Some(waiters) = map.get_mut(queue) {
                waiters.sets.retain(|(set, _)| !Arc::ptr_eq(set, &self.set));
                if waiters.is_unused() {
                    map.remove(queue);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use busmq_core::Limits;
    use std::time::Duration;

    fn name(s: &str) -> QueueName {
        QueueName::parse(s, &Limits::default()).unwrap()
    }

    #[tokio::test]
    async fn data_wakes_only_its_queue() {
        let w = Arc::new(Wakeups::default());
        let mut a = w.subscribe(&name("a"));
        let mut b = w.subscribe(&name("b"));
        a.mark_seen();
        b.mark_seen();
        w.apply(Notification::Data(name("a")));
        assert_eq!(a.changed().await, QueueSignal::Open);
        let waited = tokio::time::timeout(Duration::from_millis(50), b.changed()).await;
        assert!(waited.is_err(), "b must not wake for a's data");
    }

    #[tokio::test]
    async fn close_ends_and_unregisters() {
        let w = Arc::new(Wakeups::default());
        let mut a = w.subscribe(&name("a"));
        a.mark_seen();
        w.apply(Notification::Expired(name("a")));
        assert_eq!(a.changed().await, QueueSignal::Expired);
        drop(a);
        assert!(w.map().is_empty());
        // A queue re-created after the close starts open again.
        let mut again = w.subscribe(&name("a"));
        assert_eq!(again.mark_seen(), QueueSignal::Open);
    }

    /// What [`Wakeups::run`] gathers into one batch: every queue named in
    /// it wakes, and an end in it still ends its queue.
    #[tokio::test]
    async fn a_coalesced_batch_wakes_every_queue_it_names() {
        let w = Arc::new(Wakeups::default());
        let mut subs: Vec<Subscription> = (0..5)
            .map(|i| w.subscribe(&name(&format!("q{i}"))))
            .collect();
        for s in &mut subs {
            s.mark_seen();
        }
        let mut batch: Vec<Notification> = (0..4)
            .flat_map(|i| vec![Notification::Data(name(&format!("q{i}"))); 2])
            .collect();
        batch.push(Notification::Closed(name("q4")));
        w.apply_all(&mut batch);
        assert!(batch.is_empty());
        for s in &mut subs[..4] {
            assert_eq!(s.changed().await, QueueSignal::Open);
        }
        assert_eq!(subs[4].changed().await, QueueSignal::Closed);
    }

    #[tokio::test]
    async fn a_lost_notification_in_a_batch_wakes_everyone_once() {
        let w = Arc::new(Wakeups::default());
        let mut a = w.subscribe(&name("a"));
        let mut b = w.subscribe(&name("b"));
        let mut c = w.subscribe(&name("c"));
        for s in [&mut a, &mut b, &mut c] {
            s.mark_seen();
        }
        w.apply_all(&mut vec![
            Notification::Data(name("a")),
            Notification::Lagged,
            Notification::Expired(name("c")),
        ]);
        assert_eq!(a.changed().await, QueueSignal::Open);
        assert_eq!(b.changed().await, QueueSignal::Open);
        assert_eq!(c.changed().await, QueueSignal::Expired);
    }

    fn taken(set: &ReadySet) -> Vec<(u32, QueueSignal)> {
        let mut into = Vec::new();
        set.take(&mut into);
        into
    }

    #[tokio::test]
    async fn a_ready_set_lists_each_changed_slot_once_in_order_and_wakes_once() {
        let w = Arc::new(Wakeups::default());
        let many = w.subscribe_many(vec![name("a"), name("b"), name("c")]);
        let set = many.ready();
        let open = QueueSignal::Open;
        assert_eq!(
            taken(set),
            [(0, open), (1, open), (2, open)],
            "all start marked"
        );
        assert!(taken(set).is_empty());

        w.apply_all(&mut vec![
            Notification::Data(name("c")),
            Notification::Data(name("a")),
            Notification::Data(name("c")),
            Notification::Data(name("elsewhere")),
        ]);
        tokio::time::timeout(Duration::from_secs(1), set.marked())
            .await
            .expect("a mark wakes the consumer");
        assert_eq!(taken(set), [(2, open), (0, open)]);
        let again = tokio::time::timeout(Duration::from_millis(50), set.marked()).await;
        assert!(again.is_err(), "three marks, one wake-up");

        // An end wins over data marked before it, and unregisters the queue.
        w.apply_all(&mut vec![
            Notification::Data(name("b")),
            Notification::Closed(name("b")),
            Notification::Data(name("b")),
        ]);
        assert_eq!(taken(set), [(1, QueueSignal::Closed)]);
        w.apply(Notification::Data(name("b")));
        assert!(taken(set).is_empty(), "a closed queue marks nothing more");
    }

    #[tokio::test]
    async fn a_queue_watched_alone_and_in_a_ready_set_wakes_both_and_unregisters_last() {
        let w = Arc::new(Wakeups::default());
        let many = w.subscribe_many(vec![name("a")]);
        taken(many.ready());
        let mut alone = w.subscribe(&name("a"));
        alone.mark_seen();
        w.apply(Notification::Data(name("a")));
        assert_eq!(alone.changed().await, QueueSignal::Open);
        assert_eq!(taken(many.ready()), [(0, QueueSignal::Open)]);
        drop(many);
        assert_eq!(w.map().len(), 1, "the single consumer still waits");
        drop(alone);
        assert!(w.map().is_empty());
    }

    /// Pushes made while the wake-up task waited its turn all reach their
    /// consumer in the task's next turn. Within tokio's per-poll budget a
    /// turn drained 128 notifications; under load the task then fell
    /// behind by the store's whole notification buffer and stayed there.
    #[tokio::test(flavor = "current_thread")]
    async fn one_turn_of_the_wakeup_task_hears_every_waiting_push() {
        use busmq_storage::{Storage, memory::MemoryStorage};
        let store = MemoryStorage::new();
        let queues: Vec<QueueName> = (0..1000).map(|i| name(&format!("q{i}"))).collect();
        for q in &queues {
            store.attach(q, None).await.unwrap();
        }
        let w = Arc::new(Wakeups::default());
        let many = w.subscribe_many(queues.clone());
        taken(many.ready());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(Arc::clone(&w).run(store.watch(), shutdown.clone()));
        for q in &queues {
            store
                .push(q, vec![bytes::Bytes::from_static(b"m")])
                .await
                .unwrap();
        }
        // On this one thread the task now gets exactly one turn.
        tokio::task::yield_now().await;
        assert_eq!(taken(many.ready()).len(), queues.len());
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn lagged_wakes_everyone_and_drop_cleans_up() {
        let w = Arc::new(Wakeups::default());
        let mut a = w.subscribe(&name("a"));
        let mut b = w.subscribe(&name("b"));
        a.mark_seen();
        b.mark_seen();
        w.apply(Notification::Lagged);
        assert_eq!(a.changed().await, QueueSignal::Open);
        assert_eq!(b.changed().await, QueueSignal::Open);
        drop(a);
        drop(b);
        assert!(w.map().is_empty());
    }
}
