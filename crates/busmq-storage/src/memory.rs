//! An in-memory store: fast, ephemeral, for tests and `--backend memory`.
//! Its queue semantics live in [`crate::queue_store`], shared with the
//! embedded durable store.

use std::collections::HashMap;

use crate::queue_store::{QueueStore, Volatile};

/// An in-memory [`Storage`](crate::Storage): a [`QueueStore`] whose journal
/// forgets. Queues expire on tokio's clock, so tests can drive expiry with
/// `tokio::time::pause()` and `advance()`.
pub type MemoryStorage = QueueStore<Volatile>;

impl Default for QueueStore<Volatile> {
    fn default() -> Self {
        Self::new()
    }
}

impl QueueStore<Volatile> {
    /// An empty store.
    pub fn new() -> Self {
        QueueStore::with_journal(Volatile, HashMap::new(), HashMap::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use bytes::Bytes;
    use futures::StreamExt;

    use crate::{Error, Notification, QueueName, ReliableLock, Storage};
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
