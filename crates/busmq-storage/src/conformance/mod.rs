//! The conformance suite every [`Storage`] implementation must pass,
//! written once.
//!
//! Each check is a public async function taking an `Arc<dyn Storage>`;
//! [`conformance_tests!`](crate::conformance_tests) turns them into one
//! `#[tokio::test]` each, so failures are named:
//!
//! ```ignore
//! busmq_storage::conformance_tests!(async {
//!     std::sync::Arc::new(MemoryStorage::new()) as std::sync::Arc<dyn busmq_storage::Storage>
//! });
//! ```
//!
//! The factory expression is evaluated once per test. Checks use queue names
//! unique to the test process and the call, so they may share one store, and
//! other processes may use that store at the same time. The crate using the
//! macro needs `tokio` (with the `macros` and `rt-multi-thread` features)
//! among its dependencies. Errors are compared by [`ErrorCode`], since a
//! remote store returns [`Error::Remote`] carrying the code.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use busmq_core::{ErrorCode, Limits};
use bytes::Bytes;
use futures::StreamExt;

use crate::{
    ChannelEvent, ChannelName, Error, IdRange, Message, Notification, Notifications, ObjectFields,
    ObjectName, QueueName, ReliableLock, Storage, Subscription, TakeMode, TakeRequest,
};

mod leases;
mod listing;
pub use leases::*;
pub use listing::*;

/// Expands to one `#[tokio::test]` per conformance check, each running the
/// check on the `Arc<dyn Storage>` that `$factory.await` yields. See the
/// [module docs](crate::conformance).
#[macro_export]
macro_rules! conformance_tests {
    // A store whose clock is tokio's and that does no I/O (the memory
    // store) runs every check on paused time: ttls, leases and lock lapses
    // pass in virtual time, with no real sleep. A store doing real I/O
    // cannot: while it waits on its disk or socket the paused clock jumps
    // to the next timer and expires what the check just attached.
    (paused; $factory:expr) => {
        $crate::conformance_tests!(@list (flavor = "current_thread", start_paused = true) $factory);
    };
    // Listed after the arms that start with a keyword: an identifier can
    // begin an expression, and a failed `expr` match is a hard error.
    ($factory:expr) => {
        $crate::conformance_tests!(@list (flavor = "multi_thread", worker_threads = 4) $factory);
    };
    (@list $runtime:tt $factory:expr) => {
        $crate::conformance_tests!(@each $runtime $factory;
            attach_counts_and_reports_existed,
            push_assigns_dense_ids_from_one,
            take_remove_in_order,
            take_pending_keeps_until_ack,
            take_many_visits_queues_in_order_within_the_budget,
            ack_is_cumulative,
            ack_rejects_unknown_and_zero_ids,
            read_removes_nothing,
            read_spans_pending_and_ready,
            begin_reliable_refuses_second_owner,
            begin_reliable_discards_and_requeues,
            renew_and_end_reliable,
            reliable_lock_lapses_after_lease,
            close_destroys_and_notifies,
            flush_keeps_ids_counting,
            info_counters,
            attach_without_ttl_keeps_ttl,
            metadata_get_set,
            missing_queue_ops_fail,
            empty_push_is_rejected,
            watch_sees_data_for_the_right_queue,
            expiry_after_detach,
            reattach_cancels_expiry,
            concurrent_takers_each_message_once,
            lease_delivers_and_ack_removes,
            nack_returns_to_front_in_id_order,
            expired_lease_returns_and_late_ack_is_rejected,
            release_returns_only_the_owners_leases,
            competing_leases_get_distinct_messages,
            max_deliveries_dead_letters_leases,
            max_deliveries_dead_letters_reliable,
            lease_and_reliable_exclude_each_other,
            take_read_and_flush_with_leases,
            lease_rejects_bad_input,
            publish_counts_and_reaches_every_subscriber,
            publish_stores_nothing,
            unsubscribe_stops_counting,
            objects_save_merge_and_load,
            object_bad_saves_are_refused,
            object_touch_keeps_alive_then_expires,
            list_queues_pages_once_in_name_order,
            list_queues_includes_dead_letter_queues,
            list_channels_with_subscriber_counts,
        );
    };
    (@each $runtime:tt $factory:expr; $($check:ident),+ $(,)?) => {
        $(
            #[tokio::test $runtime]
            async fn $check() {
                let storage: ::std::sync::Arc<dyn $crate::Storage> = $factory.await;
                $crate::conformance::$check(storage).await;
            }
        )+
    };
}

/// A long ttl: queues of a check never expire during it.
const TTL: Duration = Duration::from_secs(600);

/// Bound on every wait for something asynchronous (a notification, expiry).
const WAIT: Duration = Duration::from_secs(10);

/// A queue name unique to this process and call.
pub fn unique_queue(prefix: &str) -> QueueName {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("conformance.{prefix}.{}.{nanos}.{n}", std::process::id());
    QueueName::parse(&name, &Limits::default()).expect("generated names are valid")
}

/// A fresh attached queue.
async fn attached(s: &Arc<dyn Storage>, prefix: &str) -> QueueName {
    let q = unique_queue(prefix);
    s.attach(&q, Some(TTL)).await.expect("attach");
    q
}

fn payloads(range: std::ops::RangeInclusive<u64>) -> Vec<Bytes> {
    range.map(|i| Bytes::from(format!("m{i}"))).collect()
}

fn ids(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.id).collect()
}

fn lock(owner: &str, lease: Duration) -> ReliableLock {
    ReliableLock {
        owner: owner.to_owned(),
        lease,
    }
}

#[track_caller]
fn assert_code<T: std::fmt::Debug>(result: Result<T, Error>, code: ErrorCode) {
    match result {
        Ok(v) => panic!("expected an error with code {code:?}, got Ok({v:?})"),
        Err(e) => assert_eq!(e.code(), code, "unexpected error: {e}"),
    }
}

/// Reads `watch` until `want` matches, skipping everything else (other
/// queues, LAGGED). Panics after [`WAIT`].
async fn expect_notification(
    watch: &mut Notifications,
    what: &str,
    want: impl Fn(&Notification) -> bool,
) {
    let found = tokio::time::timeout(WAIT, async {
        while let Some(n) = watch.next().await {
            if want(&n) {
                return true;
            }
        }
        false
    })
    .await;
    match found {
        Ok(true) => {}
        Ok(false) => panic!("watch stream ended before {what}"),
        Err(_) => panic!("no {what} within {WAIT:?}"),
    }
}

/// A watch stream that is known to be live: a push to a probe queue made
/// after opening it has been seen. (A remote store opens its stream
/// asynchronously.)
async fn live_watch(s: &Arc<dyn Storage>) -> Notifications {
    let mut watch = s.watch();
    let probe = attached(s, "probe").await;
    let seen = tokio::time::timeout(WAIT, async {
        loop {
            s.push(&probe, vec![Bytes::from_static(b"probe")])
                .await
                .expect("push to probe queue");
            let wait = tokio::time::timeout(Duration::from_millis(200), async {
                while let Some(n) = watch.next().await {
                    if n == Notification::Data(probe.clone()) {
                        return true;
                    }
                }
                false
            });
            match wait.await {
                Ok(true) => return,
                Ok(false) => panic!("watch stream ended while opening"),
                Err(_) => continue,
            }
        }
    })
    .await;
    assert!(
        seen.is_ok(),
        "watch stream did not come alive within {WAIT:?}"
    );
    s.close(&probe).await.expect("close probe queue");
    watch
}

/// Attach creates the queue, counts attachments and reports `existed`;
/// detach counts down, never below zero.
pub async fn attach_counts_and_reports_existed(s: Arc<dyn Storage>) {
    let q = unique_queue("attach");
    let a = s.attach(&q, Some(TTL)).await.unwrap();
    assert!(!a.existed, "first attach creates the queue");
    assert_eq!(a.attachments, 1);
    let a = s.attach(&q, Some(TTL)).await.unwrap();
    assert!(a.existed);
    assert_eq!(a.attachments, 2);
    assert_eq!(s.info(&q).await.unwrap().unwrap().attachments, 2);
    assert_eq!(s.detach(&q).await.unwrap(), 1);
    assert_eq!(s.detach(&q).await.unwrap(), 0);
    assert_eq!(s.detach(&q).await.unwrap(), 0, "never below zero");
    let info = s
        .info(&q)
        .await
        .unwrap()
        .expect("still there until its ttl");
    assert_eq!(info.attachments, 0);
    assert_eq!(info.ttl, TTL);
    let a = s.attach(&q, Some(TTL)).await.unwrap();
    assert!(a.existed);
    assert_eq!(a.attachments, 1);
}

/// Ids are dense, start at 1, and a batch gets consecutive ids in order.
pub async fn push_assigns_dense_ids_from_one(s: Arc<dyn Storage>) {
    let q = attached(&s, "push").await;
    let r = s.push(&q, payloads(1..=1)).await.unwrap();
    assert_eq!(r, IdRange { first: 1, last: 1 });
    let r = s.push(&q, payloads(2..=4)).await.unwrap();
    assert_eq!(r, IdRange { first: 2, last: 4 });
    let r = s.push(&q, payloads(5..=5)).await.unwrap();
    assert_eq!(r, IdRange { first: 5, last: 5 });
    let taken = s.take(&q, 100, TakeMode::Remove).await.unwrap();
    assert_eq!(ids(&taken), vec![1, 2, 3, 4, 5]);
    for m in &taken {
        assert_eq!(
            m.payload,
            Bytes::from(format!("m{}", m.id)),
            "payload of {}",
            m.id
        );
    }
}

/// Unreliable take returns messages in push order and removes them.
pub async fn take_remove_in_order(s: Arc<dyn Storage>) {
    let q = attached(&s, "take").await;
    s.push(&q, payloads(1..=10)).await.unwrap();
    assert_eq!(
        ids(&s.take(&q, 3, TakeMode::Remove).await.unwrap()),
        vec![1, 2, 3]
    );
    let info = s.info(&q).await.unwrap().unwrap();
    assert_eq!((info.count, info.pending), (7, 0));
    assert_eq!(
        ids(&s.take(&q, 100, TakeMode::Remove).await.unwrap()),
        (4..=10).collect::<Vec<_>>()
    );
    assert!(s.take(&q, 100, TakeMode::Remove).await.unwrap().is_empty());
    assert!(s.take(&q, 0, TakeMode::Remove).await.unwrap().is_empty());
    let info = s.info(&q).await.unwrap().unwrap();
    assert_eq!((info.count, info.consumed), (0, 10));
}

/// Reliable take moves messages to pending; they stay stored until acked.
pub async fn take_pending_keeps_until_ack(s: Arc<dyn Storage>) {
    let q = attached(&s, "pending").await;
    s.push(&q, payloads(1..=10)).await.unwrap();
    let taken = s.take(&q, 3, TakeMode::Pending).await.unwrap();
    assert_eq!(ids(&taken), vec![1, 2, 3]);
    let info = s.info(&q).await.unwrap().unwrap();
    assert_eq!((info.count, info.pending), (10, 3));
    assert_eq!(
        ids(&s.take(&q, 2, TakeMode::Pending).await.unwrap()),
        vec![4, 5],
        "pending messages are not taken again"
    );
    assert_eq!(s.ack(&q, 5).await.unwrap(), 5);
    let info = s.info(&q).await.unwrap().unwrap();
    assert_eq!((info.count, info.pending), (5, 0));
}

/// A fetch over several queues: each gives at most what it was asked, from
/// its front, fewer only when it holds no more; a missing queue fails
/// alone; the budget bounds the whole; queues not visited are untouched.
pub async fn take_many_visits_queues_in_order_within_the_budget(s: Arc<dyn Storage>) {
    let queues = [
        attached(&s, "many.a").await,
        unique_queue("many.missing"),
        attached(&s, "many.b").await,
        attached(&s, "many.c").await,
    ];
    let held = [5, 0, 10, 3];
    for (q, &n) in queues.iter().zip(&held) {
        if n > 0 {
            s.push(q, payloads(1..=n)).await.unwrap();
        }
    }
    let requests: Vec<TakeRequest> = queues
        .iter()
        .zip([4, 4, 100, 100])
        .zip([
            TakeMode::Remove,
            TakeMode::Remove,
            TakeMode::Pending,
            TakeMode::Remove,
        ])
        .map(|((queue, max), mode)| TakeRequest {
            queue: queue.clone(),
            max,
            mode,
        })
        .collect();
    for budget in [0, 12, 1_000] {
        let before: Vec<u64> =
            futures::future::join_all(queues.iter().map(|q| ready_count(&s, q))).await;
        let taken = s.take_many(&requests, budget).await;
        assert!(taken.len() <= requests.len());
        let mut total = 0;
        for (i, t) in taken.iter().enumerate() {
            assert!(t.asked <= requests[i].max, "asked over max: {t:?}");
            let Ok(batch) = &t.messages else {
                assert_code(
                    t.messages.as_ref().map(|m| m.len()).map_err(Clone::clone),
                    ErrorCode::NotFound,
                );
                assert_eq!(i, 1, "only the missing queue fails");
                continue;
            };
            assert!(batch.len() <= t.asked as usize, "more than asked: {t:?}");
            let first = held[i] - before[i] + 1;
            assert_eq!(
                ids(batch),
                (first..first + batch.len() as u64).collect::<Vec<_>>(),
                "queue {i} from its front"
            );
            if batch.len() < t.asked as usize {
                assert_eq!(
                    ready_count(&s, &queues[i]).await,
                    0,
                    "queue {i} gave fewer than asked while holding more"
                );
            }
            total += batch.len();
        }
        assert!(
            total <= budget as usize,
            "{total} messages over a budget of {budget}"
        );
        for i in taken.len()..queues.len() {
            assert_eq!(
                ready_count(&s, &queues[i]).await,
                before[i],
                "queue {i} was not visited"
            );
        }
    }
    let b = s.info(&queues[2]).await.unwrap().unwrap();
    assert_eq!(
        b.pending,
        10 - ready_count(&s, &queues[2]).await,
        "b's takes are pending"
    );
    assert_eq!(
        ready_count(&s, &queues[0]).await + ready_count(&s, &queues[3]).await,
        0,
        "the large budget took a and c"
    );
}

/// Messages ready to take: stored, not pending (0 for a missing queue).
async fn ready_count(s: &Arc<dyn Storage>, q: &QueueName) -> u64 {
    match s.info(q).await.unwrap() {
        Some(info) => info.count - info.pending,
        None => 0,
    }
}

/// Ack removes every pending message up to the id, and only those.
pub async fn ack_is_cumulative(s: Arc<dyn Storage>) {
    let q = attached(&s, "ack").await;
    s.push(&q, payloads(1..=6)).await.unwrap();
    s.take(&q, 4, TakeMode::Pending).await.unwrap();
    assert_eq!(s.ack(&q, 2).await.unwrap(), 2);
    assert_eq!(s.info(&q).await.unwrap().unwrap().pending, 2);
    assert_eq!(
        s.ack(&q, 2).await.unwrap(),
        0,
        "acking again removes nothing"
    );
    assert_eq!(s.ack(&q, 1).await.unwrap(), 0, "acking below is a no-op");
    assert_eq!(s.ack(&q, 4).await.unwrap(), 2);
    let info = s.info(&q).await.unwrap().unwrap();
    assert_eq!((info.count, info.pending), (2, 0));
    assert_eq!(
        ids(&s.read(&q, 0, 100).await.unwrap()),
        vec![5, 6],
        "ready messages are untouched by ack"
    );
}

/// Acking an id never delivered is NOT_FOUND; id 0 is INVALID_ARGUMENT.
pub async fn ack_rejects_unknown_and_zero_ids(s: Arc<dyn Storage>) {
    let q = attached(&s, "badack").await;
    s.push(&q, payloads(1..=3)).await.unwrap();
    assert_code(s.ack(&q, 1).await, ErrorCode::NotFound);
    s.take(&q, 1, TakeMode::Pending).await.unwrap();
    assert_code(s.ack(&q, 2).await, ErrorCode::NotFound);
    assert_code(s.ack(&q, 1000).await, ErrorCode::NotFound);
    assert_code(s.ack(&q, 0).await, ErrorCode::InvalidArgument);
    assert_eq!(s.ack(&q, 1).await.unwrap(), 1);
    assert_eq!(s.info(&q).await.unwrap().unwrap().count, 2);
}

/// Read returns messages from an index and removes nothing.
pub async fn read_removes_nothing(s: Arc<dyn Storage>) {
    let q = attached(&s, "read").await;
    s.push(&q, payloads(1..=5)).await.unwrap();
    let read = s.read(&q, 2, 2).await.unwrap();
    assert_eq!(ids(&read), vec![2, 3]);
    assert_eq!(read[0].payload, Bytes::from_static(b"m2"));
    assert_eq!(ids(&s.read(&q, 0, 100).await.unwrap()), vec![1, 2, 3, 4, 5]);
    assert_eq!(ids(&s.read(&q, 5, 100).await.unwrap()), vec![5]);
    assert!(s.read(&q, 6, 100).await.unwrap().is_empty());
    assert!(s.read(&q, 1, 0).await.unwrap().is_empty());
    let info = s.info(&q).await.unwrap().unwrap();
    assert_eq!(
        (info.count, info.consumed),
        (5, 0),
        "reads are not consumption"
    );
    assert_eq!(
        ids(&s.take(&q, 100, TakeMode::Remove).await.unwrap()),
        vec![1, 2, 3, 4, 5]
    );
}

/// Read sees pending and ready messages alike, in id order.
pub async fn read_spans_pending_and_ready(s: Arc<dyn Storage>) {
    let q = attached(&s, "readpend").await;
    s.push(&q, payloads(1..=5)).await.unwrap();
    s.take(&q, 2, TakeMode::Pending).await.unwrap();
    assert_eq!(ids(&s.read(&q, 1, 100).await.unwrap()), vec![1, 2, 3, 4, 5]);
    assert_eq!(ids(&s.read(&q, 2, 2).await.unwrap()), vec![2, 3]);
    s.take(&q, 1, TakeMode::Remove).await.unwrap();
    assert_eq!(ids(&s.read(&q, 0, 100).await.unwrap()), vec![1, 2, 4, 5]);
}

/// Only one owner holds the reliable lock; the holder may begin again.
pub async fn begin_reliable_refuses_second_owner(s: Arc<dyn Storage>) {
    let q = attached(&s, "lock").await;
    let a = lock("owner-a", Duration::from_secs(30));
    let b = lock("owner-b", Duration::from_secs(30));
    assert_eq!(s.begin_reliable(&q, &a, 0).await.unwrap(), 0);
    assert!(s.info(&q).await.unwrap().unwrap().reliable_consumer);
    assert_code(
        s.begin_reliable(&q, &b, 0).await,
        ErrorCode::FailedPrecondition,
    );
    assert_eq!(
        s.begin_reliable(&q, &a, 0).await.unwrap(),
        0,
        "holder again"
    );
    assert!(s.end_reliable(&q, &a).await.unwrap());
    assert!(!s.info(&q).await.unwrap().unwrap().reliable_consumer);
    s.begin_reliable(&q, &b, 0).await.unwrap();
}

/// Beginning discards messages up to `last` and puts pending messages back
/// at the front, in id order.
pub async fn begin_reliable_discards_and_requeues(s: Arc<dyn Storage>) {
    let q = attached(&s, "requeue").await;
    let a = lock("owner-a", Duration::from_secs(30));
    s.push(&q, payloads(1..=8)).await.unwrap();
    s.begin_reliable(&q, &a, 0).await.unwrap();
    assert_eq!(
        ids(&s.take(&q, 5, TakeMode::Pending).await.unwrap()),
        vec![1, 2, 3, 4, 5]
    );
    // The consumer comes back having handled up to 2.
    assert_eq!(s.begin_reliable(&q, &a, 2).await.unwrap(), 3);
    let info = s.info(&q).await.unwrap().unwrap();
    assert_eq!((info.count, info.pending), (6, 0));
    let again = s.take(&q, 100, TakeMode::Pending).await.unwrap();
    assert_eq!(
        ids(&again),
        vec![3, 4, 5, 6, 7, 8],
        "requeued at the front, in order"
    );
    assert_eq!(again[0].payload, Bytes::from_static(b"m3"));
    // `last` beyond the pending set also discards ready messages.
    s.push(&q, payloads(9..=10)).await.unwrap();
    assert_eq!(s.begin_reliable(&q, &a, 9).await.unwrap(), 0);
    assert_eq!(ids(&s.read(&q, 0, 100).await.unwrap()), vec![10]);
    assert_eq!(
        s.ack(&q, 9).await.unwrap(),
        0,
        "acks up to `last` are known"
    );
}

/// Renew extends only the holder's lock; end releases only the holder's,
/// leaving pending messages pending until the next begin.
pub async fn renew_and_end_reliable(s: Arc<dyn Storage>) {
    let q = attached(&s, "renew").await;
    let a = lock("owner-a", Duration::from_secs(30));
    let b = lock("owner-b", Duration::from_secs(30));
    s.push(&q, payloads(1..=4)).await.unwrap();
    s.begin_reliable(&q, &a, 0).await.unwrap();
    assert!(s.renew_reliable(&q, &a).await.unwrap());
    assert!(!s.renew_reliable(&q, &b).await.unwrap());
    assert!(!s.end_reliable(&q, &b).await.unwrap(), "b does not hold it");
    assert_code(
        s.begin_reliable(&q, &b, 0).await,
        ErrorCode::FailedPrecondition,
    );
    s.take(&q, 2, TakeMode::Pending).await.unwrap();
    assert!(s.end_reliable(&q, &a).await.unwrap());
    assert!(!s.renew_reliable(&q, &a).await.unwrap(), "released");
    assert!(!s.end_reliable(&q, &a).await.unwrap(), "already released");
    let info = s.info(&q).await.unwrap().unwrap();
    assert!(!info.reliable_consumer);
    assert_eq!(info.pending, 2, "pending stays pending after end");
    assert_eq!(s.ack(&q, 1).await.unwrap(), 1, "late acks still land");
    assert_eq!(s.begin_reliable(&q, &b, 0).await.unwrap(), 1);
    assert_eq!(
        ids(&s.take(&q, 100, TakeMode::Pending).await.unwrap()),
        vec![2, 3, 4]
    );
    let missing = unique_queue("renew-missing");
    assert!(!s.renew_reliable(&missing, &a).await.unwrap());
    assert!(!s.end_reliable(&missing, &a).await.unwrap());
}

/// A lock not renewed within its lease lapses and another owner may begin.
pub async fn reliable_lock_lapses_after_lease(s: Arc<dyn Storage>) {
    let q = attached(&s, "lapse").await;
    let a = lock("owner-a", Duration::from_millis(300));
    let b = lock("owner-b", Duration::from_secs(30));
    s.begin_reliable(&q, &a, 0).await.unwrap();
    assert_code(
        s.begin_reliable(&q, &b, 0).await,
        ErrorCode::FailedPrecondition,
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        match s.begin_reliable(&q, &b, 0).await {
            Ok(_) => break,
            Err(e) if e.code() == ErrorCode::FailedPrecondition => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "lock of a 300 ms lease still held after {WAIT:?}"
                );
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert!(!s.renew_reliable(&q, &a).await.unwrap(), "a lost the lock");
    assert!(
        !s.end_reliable(&q, &a).await.unwrap(),
        "a lapsed lock is not held, so ending it releases nothing"
    );
    assert!(s.renew_reliable(&q, &b).await.unwrap());
    assert!(s.end_reliable(&q, &b).await.unwrap(), "b held it");
}

/// Close destroys the queue and its messages and notifies watchers.
pub async fn close_destroys_and_notifies(s: Arc<dyn Storage>) {
    let mut watch = live_watch(&s).await;
    let q = attached(&s, "close").await;
    s.push(&q, payloads(1..=3)).await.unwrap();
    s.set_metadata(&q, "k", "v").await.unwrap();
    assert!(s.close(&q).await.unwrap());
    assert_eq!(s.info(&q).await.unwrap(), None);
    assert_code(s.push(&q, payloads(1..=1)).await, ErrorCode::NotFound);
    assert!(!s.close(&q).await.unwrap(), "already closed");
    expect_notification(&mut watch, "Closed notification", |n| {
        *n == Notification::Closed(q.clone())
    })
    .await;
    let a = s.attach(&q, Some(TTL)).await.unwrap();
    assert!(!a.existed, "a closed queue is gone");
    assert_eq!(s.push(&q, payloads(1..=1)).await.unwrap().first, 1);
    assert_eq!(s.get_metadata(&q, "k").await.unwrap(), None);
}

/// Flush removes stored messages, pending included; ids keep counting.
pub async fn flush_keeps_ids_counting(s: Arc<dyn Storage>) {
    let q = attached(&s, "flush").await;
    s.push(&q, payloads(1..=3)).await.unwrap();
    s.take(&q, 1, TakeMode::Pending).await.unwrap();
    assert_eq!(s.flush(&q).await.unwrap(), 3);
    let info = s.info(&q).await.unwrap().unwrap();
    assert_eq!((info.count, info.pending, info.next_id), (0, 0, 4));
    assert_eq!(s.push(&q, payloads(4..=4)).await.unwrap().first, 4);
    assert_eq!(
        ids(&s.take(&q, 10, TakeMode::Remove).await.unwrap()),
        vec![4]
    );
    assert_eq!(s.flush(&q).await.unwrap(), 0);
}

/// A new queue attached without a ttl gets the default; a later attach
/// without one keeps the ttl someone chose, and one with a ttl changes it.
pub async fn attach_without_ttl_keeps_ttl(s: Arc<dyn Storage>) {
    let q = unique_queue("ttl-keep");
    s.attach(&q, None).await.unwrap();
    let default = Duration::from_secs(busmq_core::DEFAULT_TTL_SECS);
    assert_eq!(s.info(&q).await.unwrap().unwrap().ttl, default);
    s.attach(&q, Some(Duration::from_secs(120))).await.unwrap();
    s.attach(&q, None).await.unwrap();
    assert_eq!(
        s.info(&q).await.unwrap().unwrap().ttl,
        Duration::from_secs(120),
        "a plain attach keeps the ttl"
    );
    s.attach(&q, Some(Duration::from_secs(7))).await.unwrap();
    assert_eq!(
        s.info(&q).await.unwrap().unwrap().ttl,
        Duration::from_secs(7)
    );
}

/// Info reports count, pending, next id, pushed, consumed, ttl.
pub async fn info_counters(s: Arc<dyn Storage>) {
    let q = unique_queue("info");
    s.attach(&q, Some(Duration::from_secs(45))).await.unwrap();
    let info = s.info(&q).await.unwrap().unwrap();
    assert_eq!(
        (
            info.count,
            info.pending,
            info.next_id,
            info.pushed,
            info.consumed
        ),
        (0, 0, 1, 0, 0)
    );
    assert_eq!(info.ttl, Duration::from_secs(45));
    assert_eq!(info.attachments, 1);
    assert!(!info.reliable_consumer);
    s.push(&q, payloads(1..=7)).await.unwrap();
    s.take(&q, 2, TakeMode::Remove).await.unwrap();
    s.take(&q, 3, TakeMode::Pending).await.unwrap();
    let info = s.info(&q).await.unwrap().unwrap();
    assert_eq!(
        (
            info.count,
            info.pending,
            info.next_id,
            info.pushed,
            info.consumed
        ),
        (5, 3, 8, 7, 5)
    );
    s.ack(&q, 5).await.unwrap();
    s.read(&q, 0, 100).await.unwrap();
    let info = s.info(&q).await.unwrap().unwrap();
    assert_eq!(
        (
            info.count,
            info.pending,
            info.next_id,
            info.pushed,
            info.consumed
        ),
        (2, 0, 8, 7, 5)
    );
    assert_eq!(s.info(&unique_queue("info-missing")).await.unwrap(), None);
}

/// Metadata values are stored per queue and key, and overwritten.
pub async fn metadata_get_set(s: Arc<dyn Storage>) {
    let q = attached(&s, "meta").await;
    let other = attached(&s, "meta-other").await;
    assert_eq!(s.get_metadata(&q, "role").await.unwrap(), None);
    s.set_metadata(&q, "role", "server").await.unwrap();
    assert_eq!(
        s.get_metadata(&q, "role").await.unwrap().as_deref(),
        Some("server")
    );
    s.set_metadata(&q, "role", "client").await.unwrap();
    assert_eq!(
        s.get_metadata(&q, "role").await.unwrap().as_deref(),
        Some("client")
    );
    s.set_metadata(&q, "", "").await.unwrap();
    assert_eq!(s.get_metadata(&q, "").await.unwrap().as_deref(), Some(""));
    assert_eq!(s.get_metadata(&other, "role").await.unwrap(), None);
}

/// Every operation on a queue that does not exist fails with NOT_FOUND,
/// except those documented otherwise.
pub async fn missing_queue_ops_fail(s: Arc<dyn Storage>) {
    let q = unique_queue("missing");
    let a = lock("owner-a", Duration::from_secs(30));
    let nf = ErrorCode::NotFound;
    assert_code(s.detach(&q).await, nf);
    assert_code(s.push(&q, payloads(1..=1)).await, nf);
    assert_code(s.take(&q, 1, TakeMode::Remove).await, nf);
    assert_code(s.take(&q, 1, TakeMode::Pending).await, nf);
    assert_code(s.read(&q, 0, 1).await, nf);
    assert_code(s.ack(&q, 1).await, nf);
    assert_code(s.begin_reliable(&q, &a, 0).await, nf);
    assert_code(s.flush(&q).await, nf);
    assert_code(s.get_metadata(&q, "k").await, nf);
    assert_code(s.set_metadata(&q, "k", "v").await, nf);
    assert!(!s.renew_reliable(&q, &a).await.unwrap());
    assert!(!s.end_reliable(&q, &a).await.unwrap());
    assert!(!s.close(&q).await.unwrap());
    assert_eq!(s.info(&q).await.unwrap(), None);
}

/// A push of no messages is INVALID_ARGUMENT and changes nothing.
pub async fn empty_push_is_rejected(s: Arc<dyn Storage>) {
    let q = attached(&s, "empty").await;
    assert_code(s.push(&q, Vec::new()).await, ErrorCode::InvalidArgument);
    let info = s.info(&q).await.unwrap().unwrap();
    assert_eq!((info.next_id, info.pushed), (1, 0));
}

/// A push notifies watchers with Data for that queue, under its own name.
/// (Two queues may live on different shards, whose notifications arrive
/// over different connections: their order is not checked.)
pub async fn watch_sees_data_for_the_right_queue(s: Arc<dyn Storage>) {
    let mut watch = live_watch(&s).await;
    let q = attached(&s, "watch").await;
    let other = attached(&s, "watch-other").await;
    s.push(&other, payloads(1..=1)).await.unwrap();
    s.push(&q, payloads(1..=2)).await.unwrap();
    let (mut seen_q, mut seen_other) = (false, false);
    let found = tokio::time::timeout(WAIT, async {
        while let Some(n) = watch.next().await {
            match n {
                Notification::Data(name) if name == q => seen_q = true,
                Notification::Data(name) if name == other => seen_other = true,
                _ => {}
            }
            if seen_q && seen_other {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        found,
        Ok(true),
        "Data notifications for {q} ({seen_q}) and {other} ({seen_other})"
    );
}

/// With no attachments a queue expires after its ttl, messages included,
/// and watchers get Expired.
pub async fn expiry_after_detach(s: Arc<dyn Storage>) {
    let mut watch = live_watch(&s).await;
    let q = unique_queue("expire");
    s.attach(&q, Some(Duration::from_secs(1))).await.unwrap();
    s.push(&q, payloads(1..=3)).await.unwrap();
    assert_eq!(s.detach(&q).await.unwrap(), 0);
    let deadline = tokio::time::Instant::now() + WAIT;
    while s.info(&q).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue with a 1 s ttl still exists after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    expect_notification(&mut watch, "Expired notification", |n| {
        *n == Notification::Expired(q.clone())
    })
    .await;
    assert_code(s.push(&q, payloads(1..=1)).await, ErrorCode::NotFound);
    let a = s.attach(&q, Some(TTL)).await.unwrap();
    assert!(!a.existed, "an expired queue is gone");
    let info = s.info(&q).await.unwrap().unwrap();
    assert_eq!(
        (info.count, info.next_id),
        (0, 1),
        "messages expired with it"
    );
}

/// Attaching again before the ttl runs out cancels the expiry.
pub async fn reattach_cancels_expiry(s: Arc<dyn Storage>) {
    let q = unique_queue("reattach");
    s.attach(&q, Some(Duration::from_secs(1))).await.unwrap();
    s.push(&q, payloads(1..=1)).await.unwrap();
    s.detach(&q).await.unwrap();
    let a = s.attach(&q, Some(Duration::from_secs(1))).await.unwrap();
    assert!(a.existed);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let info = s
        .info(&q)
        .await
        .unwrap()
        .expect("re-attached queue must not expire");
    assert_eq!(info.count, 1);
}

/// Four concurrent unreliable takers over 2,000 messages get each message
/// exactly once in total.
pub async fn concurrent_takers_each_message_once(s: Arc<dyn Storage>) {
    const TOTAL: u64 = 2_000;
    let q = attached(&s, "concurrent").await;
    for start in (1..=TOTAL).step_by(100) {
        s.push(&q, payloads(start..=start + 99)).await.unwrap();
    }
    let takers: Vec<_> = (0..4)
        .map(|_| {
            let s = s.clone();
            let q = q.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let batch = s.take(&q, 7, TakeMode::Remove).await.unwrap();
                    if batch.is_empty() {
                        return got;
                    }
                    for m in &batch {
                        assert_eq!(m.payload, Bytes::from(format!("m{}", m.id)));
                    }
                    got.extend(ids(&batch));
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for taker in takers {
        let got = taker.await.expect("taker task");
        assert!(got.windows(2).all(|w| w[0] < w[1]), "each taker sees order");
        all.extend(got);
    }
    let unique: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(all.len() as u64, TOTAL, "no message twice");
    assert_eq!(
        unique,
        (1..=TOTAL).collect::<HashSet<_>>(),
        "no message lost"
    );
    assert_eq!(s.info(&q).await.unwrap().unwrap().consumed, TOTAL);
}

/// A channel name unique to this process and call.
pub fn unique_channel(prefix: &str) -> ChannelName {
    ChannelName::parse(unique_queue(prefix).as_str(), &Limits::default())
        .expect("generated names are valid")
}

/// An object name unique to this process and call.
pub fn unique_object(prefix: &str) -> ObjectName {
    ObjectName::parse(unique_queue(prefix).as_str(), &Limits::default())
        .expect("generated names are valid")
}

/// The next message of a subscription, within [`WAIT`].
async fn next_message(sub: &mut Subscription) -> Bytes {
    match tokio::time::timeout(WAIT, sub.next()).await {
        Ok(Some(Ok(ChannelEvent::Message(m)))) => m,
        Ok(other) => panic!("expected a message, got {other:?}"),
        Err(_) => panic!("no message within {WAIT:?}"),
    }
}

/// Publishes `message` until it reaches `want` subscribers (unsubscribing
/// is asynchronous in a remote store), within [`WAIT`].
async fn publish_until(s: &Arc<dyn Storage>, c: &ChannelName, message: &'static [u8], want: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = s.publish(c, Bytes::from_static(message)).await.unwrap();
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "publish still reaches {got} subscribers, not {want}, after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publish returns how many subscribers received the message, and each of
/// them gets it, in publish order; other channels are not affected.
pub async fn publish_counts_and_reaches_every_subscriber(s: Arc<dyn Storage>) {
    let c = unique_channel("pubsub");
    let other = unique_channel("pubsub.other");
    let mut a = s.subscribe(&c).await.unwrap();
    let mut b = s.subscribe(&c).await.unwrap();
    let mut o = s.subscribe(&other).await.unwrap();
    assert_eq!(s.publish(&c, Bytes::from_static(b"one")).await.unwrap(), 2);
    assert_eq!(s.publish(&c, Bytes::from_static(b"two")).await.unwrap(), 2);
    for sub in [&mut a, &mut b] {
        assert_eq!(next_message(sub).await, Bytes::from_static(b"one"));
        assert_eq!(next_message(sub).await, Bytes::from_static(b"two"));
    }
    assert_eq!(
        s.publish(&other, Bytes::from_static(b"x")).await.unwrap(),
        1
    );
    assert_eq!(next_message(&mut o).await, Bytes::from_static(b"x"));
}

/// A message published with no subscriber is gone: a later subscriber
/// gets only what is published after it subscribed.
pub async fn publish_stores_nothing(s: Arc<dyn Storage>) {
    let c = unique_channel("pubsub.nostore");
    assert_eq!(s.publish(&c, Bytes::from_static(b"lost")).await.unwrap(), 0);
    let mut sub = s.subscribe(&c).await.unwrap();
    assert_eq!(s.publish(&c, Bytes::from_static(b"kept")).await.unwrap(), 1);
    assert_eq!(next_message(&mut sub).await, Bytes::from_static(b"kept"));
}

/// Dropping a subscription unsubscribes: it stops counting.
pub async fn unsubscribe_stops_counting(s: Arc<dyn Storage>) {
    let c = unique_channel("pubsub.unsub");
    let mut stays = s.subscribe(&c).await.unwrap();
    let leaves = s.subscribe(&c).await.unwrap();
    assert_eq!(s.publish(&c, Bytes::from_static(b"both")).await.unwrap(), 2);
    drop(leaves);
    publish_until(&s, &c, b"one", 1).await;
    assert_eq!(next_message(&mut stays).await, Bytes::from_static(b"both"));
    drop(stays);
    publish_until(&s, &c, b"none", 0).await;
}

fn fields(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn object_fields(list: &[(&str, &str)]) -> ObjectFields {
    fields(list).into_iter().collect()
}

/// A save writes only the fields it names; load returns every field; a
/// missing object loads as `None` and cannot be touched.
pub async fn objects_save_merge_and_load(s: Arc<dyn Storage>) {
    let o = unique_object("object");
    assert_eq!(s.object_load(&o).await.unwrap(), None);
    assert!(!s.object_touch(&o, TTL).await.unwrap());
    s.object_save(&o, fields(&[("foo", "\"hello\""), ("bar", "1")]), None)
        .await
        .unwrap();
    s.object_save(&o, fields(&[("foo", "\"world\""), ("zoo", "true")]), None)
        .await
        .unwrap();
    assert_eq!(
        s.object_load(&o).await.unwrap(),
        Some(object_fields(&[
            ("bar", "1"),
            ("foo", "\"world\""),
            ("zoo", "true")
        ]))
    );
    assert!(s.object_touch(&o, TTL).await.unwrap());
    let other = unique_object("object.other");
    assert_eq!(s.object_load(&other).await.unwrap(), None);
}

/// A save with no field is an invalid argument and creates nothing.
pub async fn object_bad_saves_are_refused(s: Arc<dyn Storage>) {
    let o = unique_object("object.bad");
    assert_code(
        s.object_save(&o, Vec::new(), None).await,
        ErrorCode::InvalidArgument,
    );
    assert_eq!(s.object_load(&o).await.unwrap(), None);
}

/// Touching keeps an object alive past its ttl; once the touching stops, it
/// expires after the ttl, fields and all.
pub async fn object_touch_keeps_alive_then_expires(s: Arc<dyn Storage>) {
    let o = unique_object("object.ttl");
    let ttl = Duration::from_secs(1);
    s.object_save(&o, fields(&[("n", "1")]), Some(ttl))
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        assert!(
            s.object_touch(&o, ttl).await.unwrap(),
            "alive while touched"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        s.object_load(&o).await.unwrap(),
        Some(object_fields(&[("n", "1")]))
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while s.object_load(&o).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "object with a 1 s ttl still exists after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!s.object_touch(&o, ttl).await.unwrap(), "expired for good");
}
