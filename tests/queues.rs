//! Queues across real processes: `busmq-storage` and `busmq-broker` run as
//! separate programs, driven through the Rust SDK (and the `busmq` CLI
//! where a consumer has to be killed).

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use busmq_client::{AttachOptions, Bus, ClosedReason, ConsumeOptions, Consumer, ErrorCode};
use busmq_testkit::Process;
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A storage process, a broker process in front of it, and an SDK client.
struct Cluster {
    bus: Bus,
    broker: Process,
    _storage: Process,
}

async fn cluster() -> Cluster {
    let storage = busmq_testkit::storage().await;
    let broker = busmq_testkit::broker(storage.addr()).await;
    let bus = Bus::connect(broker.url()).await.expect("connect to broker");
    Cluster {
        bus,
        broker,
        _storage: storage,
    }
}

/// Next delivery within 10 s; panics if the stream ends or errors.
async fn next_id(c: &mut Consumer) -> u64 {
    tokio::time::timeout(Duration::from_secs(10), c.next())
        .await
        .expect("a message within 10 s")
        .expect("the stream is still open")
        .expect("no error")
        .id
}

#[tokio::test]
async fn ten_thousand_messages_arrive_in_push_order() {
    let c = cluster().await;
    let q = c.bus.queue("ordered");
    assert!(
        !q.attach(AttachOptions::default()).await.unwrap(),
        "new queue"
    );
    let mut consumer = q.consume(ConsumeOptions::default()).await.unwrap();
    // Single pushes and batches interleaved, as producers really do.
    let mut expected = 1;
    for i in 0..1000u64 {
        if i % 2 == 0 {
            assert_eq!(q.push(format!("m{expected}")).await.unwrap(), expected);
            expected += 1;
        } else {
            let batch: Vec<String> = (0..19).map(|k| format!("m{}", expected + k)).collect();
            let ids = q.push_batch(batch).await.unwrap();
            assert_eq!((ids.first, ids.last), (expected, expected + 18));
            expected += 19;
        }
    }
    assert_eq!(expected, 10_001);
    for want in 1..=10_000u64 {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(d.id, want);
        assert_eq!(d.payload, format!("m{want}"));
    }
    assert_eq!(q.pushed(), 10_000);
    assert_eq!(q.consumed(), 10_000);
}

#[tokio::test]
async fn four_competing_unreliable_consumers_get_every_message_exactly_once() {
    let c = cluster().await;
    let q = c.bus.queue("work");
    q.attach(AttachOptions::default()).await.unwrap();
    let mut workers = Vec::new();
    for _ in 0..4 {
        // Each worker on its own connection, as separate programs would be.
        let bus = Bus::connect(c.broker.url()).await.unwrap();
        let mut consumer = bus
            .queue("work")
            .consume(ConsumeOptions::default().prefetch(32))
            .await
            .unwrap();
        workers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            while let Ok(Some(d)) =
                tokio::time::timeout(Duration::from_secs(1), consumer.next()).await
            {
                ids.push(d.unwrap().id);
            }
            ids
        }));
    }
    for chunk in 0..50u64 {
        let batch: Vec<String> = (0..100)
            .map(|i| format!("job{}", chunk * 100 + i))
            .collect();
        q.push_batch(batch).await.unwrap();
    }
    let mut all = Vec::new();
    let mut busy = 0;
    for w in workers {
        let ids = w.await.unwrap();
        assert!(
            ids.windows(2).all(|p| p[0] < p[1]),
            "each worker sees push order"
        );
        busy += usize::from(!ids.is_empty());
        all.extend(ids);
    }
    let total = all.len();
    let unique: BTreeSet<u64> = all.into_iter().collect();
    assert_eq!(total, 5000, "no message delivered twice");
    assert_eq!(unique, (1..=5000).collect(), "no message lost");
    assert!(busy >= 2, "the work was shared (busy workers: {busy})");
}

#[tokio::test]
async fn reliable_messages_of_a_killed_consumer_are_delivered_again() {
    let c = cluster().await;
    let q = c.bus.queue("payments");
    q.attach(AttachOptions::default()).await.unwrap();
    let batch: Vec<String> = (1..=1000).map(|i| format!("p{i}")).collect();
    q.push_batch(batch).await.unwrap();

    // A separate consumer program (the CLI) consumes reliably, acking each
    // message after printing it; it is SIGKILLed part way through, with
    // messages delivered to it but not acked.
    let mut cli = tokio::process::Command::new(busmq_testkit::bin_path("busmq"))
        .args([
            "consume",
            "payments",
            "--reliable",
            "--server",
            &c.broker.url(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(cli.stdout.take().unwrap()).lines();
    let mut handled = Vec::new();
    while handled.len() < 100 {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("the CLI consumer prints within 10 s")
            .unwrap()
            .expect("the CLI consumer is still running");
        let id: u64 = line.split('\t').next().unwrap().parse().unwrap();
        handled.push(id);
    }
    cli.start_kill().unwrap();
    cli.wait().await.unwrap();
    assert_eq!(handled, (1..=100).collect::<Vec<_>>());

    // A new reliable consumer gets everything that was not acked, in order,
    // starting at or before the first message the dead one had not printed.
    let mut consumer = loop {
        match q.consume(ConsumeOptions::reliable()).await {
            Ok(consumer) => break consumer,
            // The broker releases the dead consumer's lock once it notices.
            Err(e) if e.code() == ErrorCode::FailedPrecondition => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert!(
        consumer.redelivered() > 0,
        "in-flight messages were redelivered"
    );
    let first = next_id(&mut consumer).await;
    assert!(
        first <= 101,
        "resumes at or before the first unhandled message: {first}"
    );
    let mut ids = vec![first];
    while ids.len() < (1000 - first + 1) as usize {
        ids.push(next_id(&mut consumer).await);
    }
    assert_eq!(
        ids,
        (first..=1000).collect::<Vec<_>>(),
        "nothing lost, in order"
    );
    consumer.ack(1000).await.unwrap();
    assert_eq!(q.count().await.unwrap(), 0);
}

#[tokio::test]
async fn two_persistent_readers_each_read_every_message_from_their_index() {
    let c = cluster().await;
    let q = c.bus.queue("feed");
    q.attach(AttachOptions::default()).await.unwrap();
    q.push_batch((1..=30).map(|i| format!("f{i}")))
        .await
        .unwrap();
    let other = Bus::connect(c.broker.url()).await.unwrap();
    let mut from_start = q.consume(ConsumeOptions::persistent(0)).await.unwrap();
    let mut from_21 = other
        .queue("feed")
        .consume(ConsumeOptions::persistent(21))
        .await
        .unwrap();
    q.push_batch((31..=60).map(|i| format!("f{i}")))
        .await
        .unwrap();
    let mut a = Vec::new();
    for _ in 0..60 {
        a.push(next_id(&mut from_start).await);
    }
    let mut b = Vec::new();
    for _ in 21..=60 {
        b.push(next_id(&mut from_21).await);
    }
    assert_eq!(a, (1..=60).collect::<Vec<_>>());
    assert_eq!(b, (21..=60).collect::<Vec<_>>());
    assert_eq!(
        q.count().await.unwrap(),
        60,
        "persistent reads remove nothing"
    );
}

#[tokio::test]
async fn a_queue_without_attachments_expires_after_its_ttl_with_its_messages() {
    let c = cluster().await;
    let q = c.bus.queue("short-lived");
    q.attach(AttachOptions::ttl(Duration::from_secs(1)))
        .await
        .unwrap();
    q.push_batch(["a", "b", "c"]).await.unwrap();
    assert_eq!(q.ttl().await.unwrap(), Some(Duration::from_secs(1)));

    // Attached twice: one detach leaves it alive past the ttl.
    q.attach(AttachOptions::ttl(Duration::from_secs(1)))
        .await
        .unwrap();
    q.detach().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(q.exists().await.unwrap(), "still attached once");

    let mut watcher = q.consume(ConsumeOptions::persistent(0)).await.unwrap();
    for _ in 0..3 {
        next_id(&mut watcher).await;
    }
    q.detach().await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), watcher.next())
        .await
        .expect("expiry within 10 s");
    assert!(
        end.is_none(),
        "the consumer's stream ends when the queue expires"
    );
    assert_eq!(watcher.closed(), Some(ClosedReason::Expired));
    assert!(!q.exists().await.unwrap());
    assert!(
        !q.attach(AttachOptions::default()).await.unwrap(),
        "created anew"
    );
    assert_eq!(q.count().await.unwrap(), 0, "the messages expired too");
}

#[tokio::test]
async fn bad_input_gets_a_clear_status_and_the_broker_keeps_serving() {
    let c = cluster().await;
    for bad in ["", "white space", "slash/name", &"n".repeat(201)] {
        let err = c
            .bus
            .queue(bad)
            .attach(AttachOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidArgument, "{bad:?}: {err}");
        assert!(err.to_string().contains("invalid queue name"), "{err}");
    }

    let q = c.bus.queue("strict");
    let not_attached = q.push("x").await.unwrap_err();
    assert_eq!(not_attached.code(), ErrorCode::NotFound, "{not_attached}");

    q.attach(AttachOptions::default()).await.unwrap();
    let too_big = q.push(vec![0u8; 1024 * 1024 + 1]).await.unwrap_err();
    assert_eq!(too_big.code(), ErrorCode::ResourceExhausted, "{too_big}");
    assert!(too_big.to_string().contains("1048577"), "{too_big}");

    let empty = q.push_batch(Vec::<String>::new()).await.unwrap_err();
    assert_eq!(empty.code(), ErrorCode::InvalidArgument, "{empty}");

    let unknown_ack = q.ack(42).await.unwrap_err();
    assert_eq!(unknown_ack.code(), ErrorCode::NotFound, "{unknown_ack}");

    let mut first = q.consume(ConsumeOptions::reliable()).await.unwrap();
    let second = q.consume(ConsumeOptions::reliable()).await.unwrap_err();
    assert_eq!(second.code(), ErrorCode::FailedPrecondition, "{second}");
    first.stop();

    q.close().await.unwrap();
    let closed = q.consume(ConsumeOptions::default()).await.unwrap_err();
    assert_eq!(
        closed.code(),
        ErrorCode::NotFound,
        "consuming a closed queue: {closed}"
    );

    // Everyone else is still served.
    let fine = c.bus.queue("fine");
    fine.attach(AttachOptions::default()).await.unwrap();
    assert_eq!(fine.push("still here").await.unwrap(), 1);
}
