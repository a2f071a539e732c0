//! Wakes consumers when their queue changes.
//!
//! One task per broker reads the store's notification stream and pokes the
//! consumers waiting on the named queue. No consumer polls: an idle consumer
//! costs one watch receiver and nothing else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use busmq_core::QueueName;
use busmq_storage::{Notification, Notifications};
use futures::StreamExt;
use tokio::sync::watch;
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

/// The consumers waiting on each queue.
#[derive(Default)]
pub struct Wakeups {
    queues: Mutex<HashMap<QueueName, watch::Sender<QueueSignal>>>,
}

impl Wakeups {
    fn map(&self) -> MutexGuard<'_, HashMap<QueueName, watch::Sender<QueueSignal>>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers interest in `queue`. Subscribe before the first look at the
    /// queue so that no change between the look and the wait is missed.
    pub fn subscribe(self: &Arc<Self>, queue: &QueueName) -> Subscription {
        let rx = self
            .map()
            .entry(queue.clone())
            .or_insert_with(|| watch::channel(QueueSignal::Open).0)
            .subscribe();
        Subscription {
            rx: Some(rx),
            wakeups: Arc::clone(self),
            queue: queue.clone(),
        }
    }

    /// Applies one store notification.
    pub fn apply(&self, notification: Notification) {
        match notification {
            Notification::Data(queue) => {
                if let Some(tx) = self.map().get(&queue) {
                    tx.send_modify(|_| {});
                }
            }
            Notification::Closed(queue) => self.end(&queue, QueueSignal::Closed),
            Notification::Expired(queue) => self.end(&queue, QueueSignal::Expired),
            Notification::Lagged => {
                for tx in self.map().values() {
                    tx.send_modify(|_| {});
                }
            }
        }
    }

    fn end(&self, queue: &QueueName, signal: QueueSignal) {
        // Dropping the sender after the final value leaves waiting receivers
        // with it; a queue re-created later gets a fresh sender.
        if let Some(tx) = self.map().remove(queue) {
            tx.send_replace(signal);
        }
    }

    /// Feeds `notifications` into the registry until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        mut notifications: Notifications,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                next = notifications.next() => match next {
                    Some(n) => self.apply(n),
                    None => {
                        tracing::error!("storage notification stream ended; consumers will not be woken");
                        return;
                    }
                },
            }
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
        if map
            .get(&self.queue)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            map.remove(&self.queue);
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
