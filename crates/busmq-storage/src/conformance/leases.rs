//! Conformance checks of lease mode and dead letters.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use busmq_core::{ErrorCode, MAX_DELIVERIES_LIMIT, MAX_VISIBILITY};
use bytes::Bytes;

use super::{assert_code, attached, expect_notification, live_watch, lock, payloads, unique_queue};
use crate::{LeaseToken, LeasedMessage, Notification, Settled, Settlement, Storage, TakeMode};

/// Long enough never to run out during a check.
const LONG: Duration = Duration::from_secs(300);

fn leased_ids(messages: &[LeasedMessage]) -> Vec<(u64, u32)> {
    messages.iter().map(|m| (m.message.id, m.attempt)).collect()
}

fn token(id: u64, attempt: u32) -> LeaseToken {
    LeaseToken { id, attempt }
}

/// A lease delivers from the front with attempt 1; an ack removes exactly
/// that message; acking it again is unknown.
pub async fn lease_delivers_and_ack_removes(s: Arc<dyn Storage>) {
    let q = attached(&s, "lease-ack").await;
    s.push(&q, payloads(1..=3)).await.unwrap();
    let got = s.lease(&q, "a", 2, LONG).await.unwrap();
    assert_eq!(leased_ids(&got.messages), [(1, 1), (2, 1)]);
    assert_eq!(got.messages[0].message.payload, Bytes::from_static(b"m1"));
    assert!(got.next_expiry.is_some_and(|d| d <= LONG));
    let info = s.info(&q).await.unwrap().unwrap();
    assert_eq!((info.count, info.leased, info.pending), (3, 2, 0));

    assert_eq!(
        s.settle(&q, token(2, 1), Settlement::Ack).await.unwrap(),
        Settled::Acked
    );
    assert_code(
        s.settle(&q, token(2, 1), Settlement::Ack).await,
        ErrorCode::NotFound,
    );
    let info = s.info(&q).await.unwrap().unwrap();
    assert_eq!((info.count, info.leased), (2, 1));
    // The next lease skips the leased message 1.
    let next = s.lease(&q, "a", 10, LONG).await.unwrap();
    assert_eq!(leased_ids(&next.messages), [(3, 1)]);
    assert!(
        s.lease(&q, "a", 10, LONG)
            .await
            .unwrap()
            .messages
            .is_empty()
    );
}

/// A nack puts the message back at the front, ahead of newer messages and
/// in id order, and the next delivery counts one more attempt.
pub async fn nack_returns_to_front_in_id_order(s: Arc<dyn Storage>) {
    let q = attached(&s, "lease-nack").await;
    let mut watch = live_watch(&s).await;
    s.push(&q, payloads(1..=4)).await.unwrap();
    let got = s.lease(&q, "a", 3, LONG).await.unwrap();
    assert_eq!(leased_ids(&got.messages), [(1, 1), (2, 1), (3, 1)]);
    assert_eq!(
        s.settle(&q, token(3, 1), Settlement::Nack).await.unwrap(),
        Settled::Requeued
    );
    expect_notification(&mut watch, "data after a nack", |n| {
        *n == Notification::Data(q.clone())
    })
    .await;
    s.settle(&q, token(1, 1), Settlement::Nack).await.unwrap();
    let again = s.lease(&q, "b", 10, LONG).await.unwrap();
    assert_eq!(leased_ids(&again.messages), [(1, 2), (3, 2), (4, 1)]);
    // The nacked delivery's token is stale now.
    assert_code(
        s.settle(&q, token(1, 1), Settlement::Ack).await,
        ErrorCode::FailedPrecondition,
    );
    s.settle(&q, token(1, 2), Settlement::Ack).await.unwrap();
}

/// A lease that runs out goes back to the front at the next call, with no
/// one acking; the late ack of the first delivery is rejected, the
/// redelivery's ack lands.
pub async fn expired_lease_returns_and_late_ack_is_rejected(s: Arc<dyn Storage>) {
    let q = attached(&s, "lease-expiry").await;
    s.push(&q, payloads(1..=1)).await.unwrap();
    let first = s
        .lease(&q, "a", 1, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(leased_ids(&first.messages), [(1, 1)]);
    s.push(&q, payloads(2..=2)).await.unwrap();
    let waiting = s.lease(&q, "b", 0, LONG).await.unwrap();
    let due = waiting.next_expiry.expect("a lease is outstanding");
    assert!(due <= Duration::from_millis(300), "{due:?}");
    tokio::time::sleep(due + Duration::from_millis(100)).await;
    let second = s.lease(&q, "b", 10, LONG).await.unwrap();
    assert_eq!(
        leased_ids(&second.messages),
        [(1, 2), (2, 1)],
        "the expired message comes first, ahead of the newer one"
    );
    assert_code(
        s.settle(&q, token(1, 1), Settlement::Ack).await,
        ErrorCode::FailedPrecondition,
    );
    assert_eq!(
        s.settle(&q, token(1, 2), Settlement::Ack).await.unwrap(),
        Settled::Acked
    );
    // A token for a delivery that never happened is unknown.
    assert_code(
        s.settle(&q, token(2, 2), Settlement::Ack).await,
        ErrorCode::NotFound,
    );
}

/// Releasing an owner's leases puts back exactly those, at once.
pub async fn release_returns_only_the_owners_leases(s: Arc<dyn Storage>) {
    let q = attached(&s, "lease-release").await;
    s.push(&q, payloads(1..=4)).await.unwrap();
    s.lease(&q, "a", 2, LONG).await.unwrap();
    s.lease(&q, "b", 1, LONG).await.unwrap();
    assert_eq!(s.release_leases(&q, "a").await.unwrap(), 2);
    assert_eq!(s.release_leases(&q, "nobody").await.unwrap(), 0);
    assert_eq!(s.info(&q).await.unwrap().unwrap().leased, 1);
    let got = s.lease(&q, "c", 10, LONG).await.unwrap();
    assert_eq!(leased_ids(&got.messages), [(1, 2), (2, 2), (4, 1)]);
    s.settle(&q, token(3, 1), Settlement::Ack).await.unwrap();
    let missing = unique_queue("lease-release-missing");
    assert_eq!(s.release_leases(&missing, "a").await.unwrap(), 0);
}

/// Competing lease consumers each get distinct messages, and together all.
pub async fn competing_leases_get_distinct_messages(s: Arc<dyn Storage>) {
    const TOTAL: u64 = 600;
    let q = attached(&s, "lease-compete").await;
    for start in (1..=TOTAL).step_by(100) {
        s.push(&q, payloads(start..=start + 99)).await.unwrap();
    }
    let consumers: Vec<_> = (0..4)
        .map(|c| {
            let s = s.clone();
            let q = q.clone();
            tokio::spawn(async move {
                let owner = format!("consumer-{c}");
                let mut got = Vec::new();
                loop {
                    let batch = s.lease(&q, &owner, 7, LONG).await.unwrap();
                    if batch.messages.is_empty() {
                        return got;
                    }
                    for m in &batch.messages {
                        assert_eq!(m.attempt, 1);
                        s.settle(&q, m.token(), Settlement::Ack).await.unwrap();
                        got.push(m.message.id);
                    }
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for c in consumers {
        all.extend(c.await.expect("consumer task"));
    }
    let unique: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(all.len() as u64, TOTAL, "no message twice");
    assert_eq!(unique.len() as u64, TOTAL, "no message lost");
    assert_eq!(s.info(&q).await.unwrap().unwrap().count, 0);
}

/// With max deliveries set, a message nacked or expired on its last
/// delivery moves to `<queue>.dlq` (created unattached) with its payload.
pub async fn max_deliveries_dead_letters_leases(s: Arc<dyn Storage>) {
    let q = attached(&s, "lease-dlq").await;
    let dlq = q.dead_letters();
    s.set_max_deliveries(&q, 2).await.unwrap();
    assert_eq!(s.info(&q).await.unwrap().unwrap().max_deliveries, 2);
    s.push(&q, payloads(1..=2)).await.unwrap();
    let first = s.lease(&q, "a", 1, LONG).await.unwrap();
    assert_eq!(leased_ids(&first.messages), [(1, 1)]);
    assert_eq!(
        s.settle(&q, token(1, 1), Settlement::Nack).await.unwrap(),
        Settled::Requeued
    );
    s.lease(&q, "a", 1, LONG).await.unwrap();
    let mut watch = live_watch(&s).await;
    assert_eq!(
        s.settle(&q, token(1, 2), Settlement::Nack).await.unwrap(),
        Settled::DeadLettered
    );
    expect_notification(&mut watch, "data on the dead-letter queue", |n| {
        *n == Notification::Data(dlq.clone())
    })
    .await;
    let info = s.info(&dlq).await.unwrap().expect("the dlq was created");
    assert_eq!((info.count, info.attachments), (1, 0));
    // Expiry counts too: message 2 runs out twice.
    for attempt in 1..=2 {
        let got = s
            .lease(&q, "b", 1, Duration::from_millis(100))
            .await
            .unwrap();
        assert_eq!(leased_ids(&got.messages), [(2, attempt)]);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(s.lease(&q, "b", 1, LONG).await.unwrap().messages.is_empty());
    assert_eq!(s.info(&q).await.unwrap().unwrap().count, 0);
    let dead = s.take(&dlq, 10, TakeMode::Remove).await.unwrap();
    let payloads: Vec<&[u8]> = dead.iter().map(|m| m.payload.as_ref()).collect();
    assert_eq!(payloads, [b"m1".as_slice(), b"m2".as_slice()]);
    assert_eq!(
        super::ids(&dead),
        [1, 2],
        "the dlq numbers its own messages"
    );
    s.close(&dlq).await.unwrap();
}

/// In reliable mode, pending messages put back by a new reliable consumer
/// count a delivery; on the last one they go to the dead-letter queue.
pub async fn max_deliveries_dead_letters_reliable(s: Arc<dyn Storage>) {
    let q = attached(&s, "reliable-dlq").await;
    s.set_max_deliveries(&q, 2).await.unwrap();
    s.push(&q, payloads(1..=1)).await.unwrap();
    for (owner, requeued) in [("a", 0), ("b", 1)] {
        let l = lock(owner, LONG);
        assert_eq!(s.begin_reliable(&q, &l, 0).await.unwrap(), requeued);
        assert_eq!(s.take(&q, 10, TakeMode::Pending).await.unwrap().len(), 1);
        assert!(s.end_reliable(&q, &l).await.unwrap());
    }
    let l = lock("c", LONG);
    assert_eq!(s.begin_reliable(&q, &l, 0).await.unwrap(), 0);
    assert!(s.take(&q, 10, TakeMode::Pending).await.unwrap().is_empty());
    let dead = s
        .take(&q.dead_letters(), 10, TakeMode::Remove)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload, Bytes::from_static(b"m1"));
    s.close(&q.dead_letters()).await.unwrap();
}

/// Lease mode and a reliable consumer exclude each other on one queue.
pub async fn lease_and_reliable_exclude_each_other(s: Arc<dyn Storage>) {
    let q = attached(&s, "lease-reliable").await;
    s.push(&q, payloads(1..=2)).await.unwrap();
    let l = lock("r", LONG);
    s.begin_reliable(&q, &l, 0).await.unwrap();
    assert_code(
        s.lease(&q, "a", 1, LONG).await,
        ErrorCode::FailedPrecondition,
    );
    s.end_reliable(&q, &l).await.unwrap();
    s.lease(&q, "a", 1, LONG).await.unwrap();
    assert_code(
        s.begin_reliable(&q, &l, 0).await,
        ErrorCode::FailedPrecondition,
    );
    assert_eq!(s.release_leases(&q, "a").await.unwrap(), 1);
    s.begin_reliable(&q, &l, 0).await.unwrap();
}

/// Unreliable takes, reads and flushes see leased messages correctly.
pub async fn take_read_and_flush_with_leases(s: Arc<dyn Storage>) {
    let q = attached(&s, "lease-mixed").await;
    s.push(&q, payloads(1..=4)).await.unwrap();
    s.lease(&q, "a", 2, LONG).await.unwrap();
    s.settle(&q, token(1, 1), Settlement::Nack).await.unwrap();
    // Stored: 1 (ready), 2 (leased), 3, 4 (ready).
    let read = s.read(&q, 1, 10).await.unwrap();
    assert_eq!(super::ids(&read), [1, 2, 3, 4]);
    assert_eq!(super::ids(&s.read(&q, 2, 2).await.unwrap()), [2, 3]);
    let taken = s.take(&q, 2, TakeMode::Remove).await.unwrap();
    assert_eq!(super::ids(&taken), [1, 3]);
    s.settle(&q, token(2, 1), Settlement::Ack).await.unwrap();
    assert_eq!(super::ids(&s.read(&q, 1, 10).await.unwrap()), [4]);
    s.lease(&q, "a", 1, LONG).await.unwrap();
    assert_eq!(s.flush(&q).await.unwrap(), 1);
    let info = s.info(&q).await.unwrap().unwrap();
    assert_eq!((info.count, info.leased), (0, 0));
}

/// Bad input to lease mode is refused with clear codes.
pub async fn lease_rejects_bad_input(s: Arc<dyn Storage>) {
    let q = attached(&s, "lease-bad").await;
    assert_code(
        s.lease(&q, "a", 1, Duration::ZERO).await,
        ErrorCode::InvalidArgument,
    );
    assert_code(
        s.lease(&q, "a", 1, MAX_VISIBILITY + Duration::from_secs(1))
            .await,
        ErrorCode::InvalidArgument,
    );
    assert_code(
        s.settle(&q, token(0, 1), Settlement::Ack).await,
        ErrorCode::InvalidArgument,
    );
    assert_code(
        s.settle(&q, token(1, 0), Settlement::Nack).await,
        ErrorCode::InvalidArgument,
    );
    assert_code(
        s.settle(&q, token(99, 1), Settlement::Ack).await,
        ErrorCode::NotFound,
    );
    assert_code(
        s.settle(&q, token(99, 1), Settlement::Nack).await,
        ErrorCode::NotFound,
    );
    assert_code(
        s.set_max_deliveries(&q, MAX_DELIVERIES_LIMIT + 1).await,
        ErrorCode::InvalidArgument,
    );
    assert_code(s.lease(&q, "", 1, LONG).await, ErrorCode::InvalidArgument);
    let long_owner = "o".repeat(crate::MAX_LEASE_OWNER_BYTES + 1);
    assert_code(
        s.lease(&q, &long_owner, 1, LONG).await,
        ErrorCode::InvalidArgument,
    );
    let missing = unique_queue("lease-missing");
    assert_code(s.lease(&missing, "a", 1, LONG).await, ErrorCode::NotFound);
    assert_code(
        s.settle(&missing, token(1, 1), Settlement::Ack).await,
        ErrorCode::NotFound,
    );
    assert_code(s.set_max_deliveries(&missing, 3).await, ErrorCode::NotFound);
}
