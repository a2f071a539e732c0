//! The embedded store keeps everything across a close and reopen of its
//! directory: queues, messages, ids, pending sets, counters, metadata,
//! reliable locks, persistable objects and ttl deadlines. (A `kill -9` of a
//! real process is in the workspace's `tests/` package.)

use std::sync::Arc;
use std::time::Duration;

use busmq_core::{ErrorCode, Limits};
use busmq_storage::embedded::EmbeddedStorage;
use busmq_storage::{Error, IdRange, Notification, QueueName, ReliableLock, Storage, TakeMode};
use bytes::Bytes;
use futures::StreamExt;

fn queue(name: &str) -> QueueName {
    QueueName::parse(name, &Limits::default()).unwrap()
}

fn payloads(range: std::ops::RangeInclusive<u64>) -> Vec<Bytes> {
    range.map(|i| Bytes::from(format!("m{i}"))).collect()
}

fn ids(messages: &[busmq_storage::Message]) -> Vec<u64> {
    messages.iter().map(|m| m.id).collect()
}

fn open(dir: &tempfile::TempDir) -> EmbeddedStorage {
    EmbeddedStorage::open(dir.path()).expect("open embedded store")
}

const TTL: Duration = Duration::from_secs(600);

#[tokio::test]
async fn reopen_keeps_messages_ids_counters_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let q = queue("orders");
    let before = {
        let s = open(&dir);
        s.attach(&q, Some(TTL)).await.unwrap();
        s.push(&q, payloads(1..=10)).await.unwrap();
        assert_eq!(
            ids(&s.take(&q, 3, TakeMode::Remove).await.unwrap()),
            [1, 2, 3]
        );
        assert_eq!(
            ids(&s.take(&q, 2, TakeMode::Pending).await.unwrap()),
            [4, 5]
        );
        s.set_metadata(&q, "role", "server").await.unwrap();
        s.set_metadata(&q, "role", "client").await.unwrap();
        s.info(&q).await.unwrap().unwrap()
    };
    let s = open(&dir);
    let after = s.info(&q).await.unwrap().expect("queue survives reopen");
    assert_eq!(after, before);
    assert_eq!((after.count, after.pending, after.next_id), (7, 2, 11));
    assert_eq!(
        s.get_metadata(&q, "role").await.unwrap().as_deref(),
        Some("client")
    );
    let stored = s.read(&q, 0, 100).await.unwrap();
    assert_eq!(ids(&stored), [4, 5, 6, 7, 8, 9, 10]);
    assert_eq!(stored[0].payload, Bytes::from_static(b"m4"));
    // Ids keep counting from where they were.
    assert_eq!(
        s.push(&q, payloads(11..=12)).await.unwrap(),
        IdRange {
            first: 11,
            last: 12
        }
    );
    // Pending stayed pending: not taken again, ackable.
    assert_eq!(
        ids(&s.take(&q, 2, TakeMode::Pending).await.unwrap()),
        [6, 7]
    );
    assert_eq!(s.ack(&q, 5).await.unwrap(), 2);
    assert_eq!(s.info(&q).await.unwrap().unwrap().pending, 2);
}

#[tokio::test]
async fn reopen_after_many_changes_matches_the_live_state() {
    let dir = tempfile::tempdir().unwrap();
    let a = queue("a");
    let b = queue("b");
    let gone = queue("gone");
    let (info_a, info_b, stored_a, stored_b) = {
        let s = open(&dir);
        for q in [&a, &b, &gone] {
            s.attach(q, Some(TTL)).await.unwrap();
        }
        let lock = ReliableLock {
            owner: "c1".into(),
            lease: Duration::from_secs(30),
        };
        for round in 0..20u64 {
            let base = round * 10;
            s.push(&a, payloads(base + 1..=base + 10)).await.unwrap();
            s.push(&b, payloads(base + 1..=base + 10)).await.unwrap();
            s.take(&a, 7, TakeMode::Remove).await.unwrap();
            let taken = s.take(&b, 6, TakeMode::Pending).await.unwrap();
            if round % 3 == 0 {
                s.ack(&b, taken[2].id).await.unwrap();
            }
            if round == 10 {
                // Pending back at the front, some discarded.
                s.begin_reliable(&b, &lock, taken[0].id).await.unwrap();
            }
        }
        s.push(&gone, payloads(1..=5)).await.unwrap();
        assert!(s.close(&gone).await.unwrap());
        s.flush(&a).await.unwrap();
        s.push(&a, payloads(1..=3)).await.unwrap();
        (
            s.info(&a).await.unwrap().unwrap(),
            s.info(&b).await.unwrap().unwrap(),
            s.read(&a, 0, 10_000).await.unwrap(),
            s.read(&b, 0, 10_000).await.unwrap(),
        )
    };
    let s = open(&dir);
    assert_eq!(s.info(&a).await.unwrap().unwrap(), info_a);
    assert_eq!(s.info(&b).await.unwrap().unwrap(), info_b);
    assert_eq!(s.read(&a, 0, 10_000).await.unwrap(), stored_a);
    assert_eq!(s.read(&b, 0, 10_000).await.unwrap(), stored_b);
    assert_eq!(s.info(&gone).await.unwrap(), None, "closed stays closed");
    assert_eq!(
        s.push(&a, payloads(1..=1)).await.unwrap().first,
        info_a.next_id,
        "ids keep counting after a flush and a reopen"
    );
}

#[tokio::test]
async fn reliable_lock_and_pending_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let q = queue("reliable");
    let a = ReliableLock {
        owner: "a".into(),
        lease: Duration::from_secs(60),
    };
    let b = ReliableLock {
        owner: "b".into(),
        lease: Duration::from_secs(60),
    };
    {
        let s = open(&dir);
        s.attach(&q, Some(TTL)).await.unwrap();
        s.push(&q, payloads(1..=5)).await.unwrap();
        s.begin_reliable(&q, &a, 0).await.unwrap();
        s.take(&q, 3, TakeMode::Pending).await.unwrap();
    }
    let s = open(&dir);
    let info = s.info(&q).await.unwrap().unwrap();
    assert!(info.reliable_consumer, "the lease outlives a restart");
    assert_eq!(info.pending, 3);
    let refused = s.begin_reliable(&q, &b, 0).await.unwrap_err();
    assert_eq!(refused.code(), ErrorCode::FailedPrecondition);
    assert!(s.renew_reliable(&q, &a).await.unwrap());
    // The holder comes back having handled 1: 2 and 3 go back to the front.
    assert_eq!(s.begin_reliable(&q, &a, 1).await.unwrap(), 2);
    assert_eq!(
        ids(&s.take(&q, 10, TakeMode::Pending).await.unwrap()),
        [2, 3, 4, 5]
    );
}

#[tokio::test]
async fn a_lapsed_lease_is_lapsed_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let q = queue("lapsing");
    {
        let s = open(&dir);
        s.attach(&q, Some(TTL)).await.unwrap();
        let short = ReliableLock {
            owner: "a".into(),
            lease: Duration::from_millis(200),
        };
        s.begin_reliable(&q, &short, 0).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = open(&dir);
    assert!(!s.info(&q).await.unwrap().unwrap().reliable_consumer);
    let b = ReliableLock {
        owner: "b".into(),
        lease: Duration::from_secs(60),
    };
    s.begin_reliable(&q, &b, 0).await.unwrap();
}

#[tokio::test]
async fn ttl_deadline_is_re_armed_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let q = queue("expiring");
    {
        let s = open(&dir);
        s.attach(&q, Some(Duration::from_secs(1))).await.unwrap();
        s.push(&q, payloads(1..=3)).await.unwrap();
        assert_eq!(s.detach(&q).await.unwrap(), 0);
    }
    let s = open(&dir);
    let mut watch = s.watch();
    assert_eq!(
        s.info(&q).await.unwrap().expect("not due yet").count,
        3,
        "messages wait for their deadline"
    );
    // Nobody asks: the re-armed timer removes it and says so.
    let expired = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(n) = watch.next().await {
            if n == Notification::Expired(q.clone()) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(expired, Ok(true), "Expired within 5 s of a 1 s ttl");
    assert_eq!(s.info(&q).await.unwrap(), None);
    drop(s);
    let s = open(&dir);
    assert_eq!(s.info(&q).await.unwrap(), None, "the expiry was recorded");
}

#[tokio::test]
async fn queues_whose_ttl_ran_out_while_closed_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let q = queue("lapsed");
    let kept = queue("kept");
    {
        let s = open(&dir);
        s.attach(&q, Some(Duration::from_millis(200)))
            .await
            .unwrap();
        s.push(&q, payloads(1..=3)).await.unwrap();
        s.detach(&q).await.unwrap();
        s.attach(&kept, Some(Duration::from_millis(200)))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let s = open(&dir);
    assert_eq!(s.info(&q).await.unwrap(), None);
    assert!(
        s.info(&kept).await.unwrap().is_some(),
        "attached: no expiry"
    );
    let again = s.attach(&q, Some(TTL)).await.unwrap();
    assert!(!again.existed);
    assert_eq!(s.info(&q).await.unwrap().unwrap().next_id, 1);
}

#[tokio::test]
async fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir);
    let err = EmbeddedStorage::open(dir.path())
        .err()
        .expect("second open must fail");
    assert_eq!(err.code(), ErrorCode::Unavailable);
    let text = err.to_string();
    assert!(text.contains(&dir.path().display().to_string()), "{text}");
    assert!(text.contains("in use by another process"), "{text}");
    drop(s);
    open(&dir);
}

#[tokio::test]
async fn an_unusable_directory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = EmbeddedStorage::open(&file)
        .err()
        .expect("a file is not a directory");
    let text = err.to_string();
    assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    assert!(text.contains(&file.display().to_string()), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_operations_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open(&dir));
    let queues: Vec<QueueName> = (0..20).map(|i| queue(&format!("q{i}"))).collect();
    for q in &queues {
        s.attach(q, Some(TTL)).await.unwrap();
    }
    let start = s.commits();
    let tasks: Vec<_> = queues
        .iter()
        .cloned()
        .map(|q| {
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                for i in 0..10u64 {
                    s.push(&q, payloads(i * 64 + 1..=i * 64 + 64))
                        .await
                        .unwrap();
                    s.take(&q, 64, TakeMode::Remove).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let commits = s.commits() - start;
    let ops = 20 * 10 * 2;
    assert!(
        commits < ops,
        "{ops} concurrent operations took {commits} commits: no group commit"
    );
    drop(s);
    let s = open(&dir);
    for q in &queues {
        let info = s.info(q).await.unwrap().unwrap();
        assert_eq!((info.count, info.pushed, info.consumed), (0, 640, 640));
    }
}

#[test]
fn opening_outside_a_runtime_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let err = EmbeddedStorage::open(dir.path())
        .err()
        .expect("no runtime to run expiry timers on");
    assert_eq!(err.code(), ErrorCode::Internal, "{err}");
}

#[tokio::test]
async fn reopen_keeps_leases_delivery_counts_and_dead_letters() {
    use busmq_storage::{LeaseToken, Settled, Settlement};
    let dir = tempfile::tempdir().unwrap();
    let q = queue("jobs");
    let token = |id, attempt| LeaseToken { id, attempt };
    {
        let s = open(&dir);
        s.attach(&q, Some(TTL)).await.unwrap();
        s.set_max_deliveries(&q, 3).await.unwrap();
        s.push(&q, payloads(1..=4)).await.unwrap();
        let got = s.lease(&q, "a", 3, TTL).await.unwrap();
        assert_eq!(got.messages.len(), 3);
        // 1: nacked twice (two deliveries counted), 2: still leased,
        // 3: acked.
        s.settle(&q, token(1, 1), Settlement::Nack).await.unwrap();
        let again = s.lease(&q, "a", 1, TTL).await.unwrap();
        assert_eq!(again.messages[0].token(), token(1, 2));
        s.settle(&q, token(1, 2), Settlement::Nack).await.unwrap();
        s.settle(&q, token(3, 1), Settlement::Ack).await.unwrap();
    }
    let s = open(&dir);
    let info = s.info(&q).await.unwrap().unwrap();
    assert_eq!(
        (info.count, info.leased, info.max_deliveries),
        (3, 1, 3),
        "1 and 4 waiting, 2 leased"
    );
    // The lease survived: its token still settles.
    assert_eq!(
        s.settle(&q, token(2, 1), Settlement::Ack).await.unwrap(),
        Settled::Acked
    );
    // The delivery count survived: this is attempt 3, the last.
    let got = s.lease(&q, "b", 10, TTL).await.unwrap();
    let tokens: Vec<LeaseToken> = got.messages.iter().map(|m| m.token()).collect();
    assert_eq!(tokens, [token(1, 3), token(4, 1)]);
    assert_eq!(
        s.settle(&q, token(1, 3), Settlement::Nack).await.unwrap(),
        Settled::DeadLettered
    );
    drop(s);
    let s = open(&dir);
    let dead = s.read(&q.dead_letters(), 1, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload, Bytes::from_static(b"m1"));
    assert_eq!(s.info(&q).await.unwrap().unwrap().count, 1);
}

fn object(name: &str) -> busmq_storage::ObjectName {
    busmq_storage::ObjectName::parse(name, &Limits::default()).unwrap()
}

fn fields(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn objects_and_their_deadlines_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let kept = object("user:1");
    let short = object("session:1");
    {
        let s = open(&dir);
        s.object_save(&kept, fields(&[("name", "\"ann\""), ("age", "30")]), None)
            .await
            .unwrap();
        s.object_save(&kept, fields(&[("age", "31")]), Some(TTL))
            .await
            .unwrap();
        s.object_save(&short, fields(&[("token", "\"t\"")]), None)
            .await
            .unwrap();
        assert!(
            s.object_touch(&short, Duration::from_secs(1))
                .await
                .unwrap()
        );
    }
    // Closed for longer than the short object's ttl.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s = open(&dir);
    let loaded = s.object_load(&kept).await.unwrap().expect("kept survives");
    assert_eq!(
        loaded.into_iter().collect::<Vec<_>>(),
        fields(&[("age", "31"), ("name", "\"ann\"")])
    );
    assert_eq!(
        s.object_load(&short).await.unwrap(),
        None,
        "expired while closed"
    );
    // The kept object's deadline came back: a touch still finds it, and a
    // short one now makes it expire in this run.
    assert!(
        s.object_touch(&kept, Duration::from_millis(200))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(s.object_load(&kept).await.unwrap(), None);
    drop(s);
    let s = open(&dir);
    assert_eq!(
        s.object_load(&kept).await.unwrap(),
        None,
        "expiry is durable"
    );
}
