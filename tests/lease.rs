//! Lease mode and dead letters across real processes, driven through the
//! Rust SDK. Each test runs twice: against `busmq-storage` and
//! `busmq-broker` as separate programs, and against one `busmq serve`.

use std::collections::BTreeSet;
use std::time::Duration;

use busmq_client::{
    AttachOptions, Bus, ConsumeOptions, Consumer, Delivery, ErrorCode, LeaseToken, Nacked, Queue,
};
use futures::StreamExt;

mod common;

use busmq_testkit::storage_on;
use common::cluster;

/// Longer than any test: leases that must not run out.
const LONG: Duration = Duration::from_secs(120);

/// Next delivery within 10 s; panics if the stream ends or errors.
async fn next(c: &mut Consumer) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), c.next())
        .await
        .expect("a message within 10 s")
        .expect("the stream is still open")
        .expect("no error")
}

fn token(d: &Delivery) -> LeaseToken {
    d.lease_token().expect("a lease-mode delivery has a token")
}

/// The code of the error `r` must be.
fn code<T>(r: Result<T, busmq_client::Error>) -> ErrorCode {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.code(),
    }
}

async fn attached(bus: &Bus, name: &str, options: AttachOptions) -> Queue {
    let q = bus.queue(name);
    q.attach(options).await.expect("attach");
    q
}

/// Takes one message with a short lease and ends the stream, keeping the
/// lease (a consumer that reached `max` still holds what it got).
async fn lease_one(q: &Queue, visibility: Duration) -> Delivery {
    let mut c = q
        .consume(ConsumeOptions::lease(visibility).max(1))
        .await
        .unwrap();
    let d = next(&mut c).await;
    assert!(c.next().await.is_none(), "the stream ends after max");
    d
}

async fn an_expired_lease_returns_its_message_to_the_front_ahead_of_newer_ones() {
    let c = cluster().await;
    let q = attached(&c.bus, "front", AttachOptions::default()).await;
    q.push("m1").await.unwrap();
    let first = lease_one(&q, Duration::from_millis(500)).await;
    assert_eq!((first.id, first.attempt), (1, 1));
    q.push_batch(["m2", "m3"]).await.unwrap();
    // Nobody calls anything while the lease runs out.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut consumer = q.consume(ConsumeOptions::lease(LONG)).await.unwrap();
    let got: Vec<(u64, u32, String)> = {
        let mut got = Vec::new();
        for _ in 0..3 {
            let d = next(&mut consumer).await;
            got.push((
                d.id,
                d.attempt,
                String::from_utf8_lossy(&d.payload).into_owned(),
            ));
        }
        got
    };
    assert_eq!(
        got,
        [
            (1, 2, "m1".to_owned()),
            (2, 1, "m2".to_owned()),
            (3, 1, "m3".to_owned())
        ]
    );
}

async fn a_waiting_consumer_gets_an_expired_message_and_the_late_ack_is_rejected() {
    let c = cluster().await;
    let q = attached(&c.bus, "late-ack", AttachOptions::default()).await;
    q.push("job").await.unwrap();
    let slow = lease_one(&q, Duration::from_millis(500)).await;
    // This consumer waits on an otherwise empty queue: no push wakes it,
    // the lease running out does.
    let mut waiting = q.consume(ConsumeOptions::lease(LONG)).await.unwrap();
    let again = next(&mut waiting).await;
    assert_eq!((again.id, again.attempt), (slow.id, 2));
    assert_eq!(again.payload, "job");

    let late = q.ack_lease(token(&slow)).await.unwrap_err();
    assert_eq!(late.code(), ErrorCode::FailedPrecondition, "{late}");
    assert_eq!(
        q.info().await.unwrap().count,
        1,
        "the late ack removed nothing"
    );
    waiting.ack_lease(token(&again)).await.unwrap();
    let info = q.info().await.unwrap();
    assert_eq!((info.count, info.leased), (0, 0));
}

async fn competing_lease_consumers_each_get_distinct_messages() {
    const TOTAL: u64 = 400;
    let c = cluster().await;
    let q = attached(&c.bus, "compete", AttachOptions::default()).await;
    let mut workers = Vec::new();
    for _ in 0..4 {
        // Each worker on its own connection, as separate programs would be.
        let bus = Bus::connect(c.broker.url()).await.unwrap();
        let mut consumer = bus
            .queue("compete")
            .consume(ConsumeOptions::lease(LONG).prefetch(4))
            .await
            .unwrap();
        workers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Ok(Some(d)) =
                tokio::time::timeout(Duration::from_secs(2), consumer.next()).await
            {
                let d = d.unwrap();
                assert_eq!(d.attempt, 1, "nothing was given back");
                consumer.ack_lease(token(&d)).await.unwrap();
                got.push(d.id);
            }
            got
        }));
    }
    for chunk in 0..(TOTAL / 100) {
        let batch: Vec<String> = (0..100)
            .map(|i| format!("job{}", chunk * 100 + i))
            .collect();
        q.push_batch(batch).await.unwrap();
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    let unique: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(all.len() as u64, TOTAL, "no message delivered twice");
    assert_eq!(unique, (1..=TOTAL).collect(), "no message lost");
    assert_eq!(q.info().await.unwrap().count, 0, "every message acked");
}

async fn leases_of_a_consumer_that_goes_away_return_at_once() {
    let c = cluster().await;
    let q = attached(&c.bus, "gone", AttachOptions::default()).await;
    q.push_batch(["a", "b", "c"]).await.unwrap();
    {
        // A client on its own connection takes everything, acks nothing and
        // disappears (connection closed).
        let bus = Bus::connect(c.broker.url()).await.unwrap();
        let mut doomed = bus
            .queue("gone")
            .consume(ConsumeOptions::lease(LONG).prefetch(3))
            .await
            .unwrap();
        for want in 1..=3 {
            assert_eq!(next(&mut doomed).await.id, want);
        }
        assert_eq!(q.info().await.unwrap().leased, 3);
    }
    // Well before the two-minute visibility timeout.
    let mut heir = q.consume(ConsumeOptions::lease(LONG)).await.unwrap();
    for want in 1..=3 {
        let d = next(&mut heir).await;
        assert_eq!((d.id, d.attempt), (want, 2));
    }
}

async fn a_message_over_max_deliveries_lands_in_the_dlq_in_lease_mode() {
    let c = cluster().await;
    let q = attached(&c.bus, "poison", AttachOptions::default().max_deliveries(2)).await;
    assert_eq!(q.info().await.unwrap().max_deliveries, 2);
    q.push_batch(["poison", "fine"]).await.unwrap();
    let mut consumer = q
        .consume(ConsumeOptions::lease(LONG).prefetch(1))
        .await
        .unwrap();
    // The consumer may see "fine" before or after the poison comes back.
    let mut outcomes = Vec::new();
    let mut fine_acked = false;
    while !fine_acked
        || outcomes
            .last()
            .is_none_or(|(_, n)| *n != Nacked::DeadLettered)
    {
        let d = next(&mut consumer).await;
        if d.payload == "fine" {
            consumer.ack_lease(token(&d)).await.unwrap();
            fine_acked = true;
        } else {
            outcomes.push((d.attempt, consumer.nack(token(&d)).await.unwrap()));
        }
    }
    assert_eq!(outcomes, [(1, Nacked::Requeued), (2, Nacked::DeadLettered)]);
    assert_eq!(q.info().await.unwrap().count, 0);

    let dlq = q.dead_letters();
    assert_eq!(dlq.name(), "poison.dlq");
    let info = dlq.info().await.unwrap();
    assert_eq!(info.count, 1, "{info:?}");
    let mut dead = dlq.consume(ConsumeOptions::default().max(1)).await.unwrap();
    let d = next(&mut dead).await;
    assert_eq!((d.id, d.payload.as_ref()), (1, b"poison".as_slice()));
}

/// A reliable consumer, retried while the previous one's lock is released.
async fn reliable(q: &Queue) -> Consumer {
    for _ in 0..100 {
        match q.consume(ConsumeOptions::reliable()).await {
            Ok(c) => return c,
            Err(e) if e.code() == ErrorCode::FailedPrecondition => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("reliable consume: {e}"),
        }
    }
    panic!("the previous reliable consumer never let go");
}

async fn a_message_over_max_deliveries_lands_in_the_dlq_in_reliable_mode() {
    let c = cluster().await;
    let q = attached(
        &c.bus,
        "reliable-poison",
        AttachOptions::default().max_deliveries(2),
    )
    .await;
    q.push("crashes its consumer").await.unwrap();
    // Two consumers take it and die without acking.
    for redelivered in [0, 1] {
        let mut consumer = reliable(&q).await;
        assert_eq!(consumer.redelivered(), redelivered);
        assert_eq!(next(&mut consumer).await.id, 1);
    }
    // The third finds it gone to the dead-letter queue.
    let mut third = reliable(&q).await;
    assert_eq!(third.redelivered(), 0);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), third.next())
            .await
            .is_err(),
        "nothing left to deliver"
    );
    let dlq = q.dead_letters();
    let mut dead = dlq.consume(ConsumeOptions::default().max(1)).await.unwrap();
    assert_eq!(next(&mut dead).await.payload, "crashes its consumer");
}

async fn ack_leases_acks_a_batch_and_names_the_tokens_it_could_not_ack() {
    let c = cluster().await;
    let q = attached(&c.bus, "batch-ack", AttachOptions::default()).await;
    q.push("slow").await.unwrap();
    let slow = lease_one(&q, Duration::from_millis(300)).await;
    // Nobody calls anything while that lease runs out.
    tokio::time::sleep(Duration::from_millis(600)).await;
    q.push_batch(["m2", "m3", "m4", "m5"]).await.unwrap();
    let mut consumer = q.consume(ConsumeOptions::lease(LONG)).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(token(&next(&mut consumer).await));
    }
    assert!(held.contains(&LeaseToken { id: 1, attempt: 2 }), "{held:?}");

    let never = LeaseToken { id: 99, attempt: 1 };
    let mut batch = held[..4].to_vec();
    batch.extend([held[0], token(&slow), never]);
    let acked = consumer.ack_leases(&batch).await.unwrap();
    assert_eq!(acked.acked, 4, "each held delivery once: {acked:?}");
    assert_eq!(acked.lapsed, [token(&slow)]);
    assert_eq!(acked.unknown, [never]);
    assert!(!acked.all_acked());
    let info = q.info().await.unwrap();
    assert_eq!(
        (info.count, info.leased),
        (1, 1),
        "one message still leased"
    );

    let last = q.ack_leases(&held[4..]).await.unwrap();
    assert!(last.all_acked() && last.acked == 1, "{last:?}");
    assert_eq!(q.info().await.unwrap().count, 0);
    let again = q.ack_leases(&held).await.unwrap();
    assert_eq!((again.acked, again.unknown.len()), (0, 5), "acked already");
    assert_eq!(q.ack_leases(&[]).await.unwrap(), Default::default());

    // Whole-call failures: a queue that does not exist, too many tokens,
    // a token no delivery can have, a consumer in another mode.
    let missing = c.bus.queue("batch-ack-missing");
    assert_eq!(
        code(missing.ack_leases(&[never]).await),
        ErrorCode::NotFound
    );
    let too_many: Vec<LeaseToken> = (1..=65_537)
        .map(|id| LeaseToken { id, attempt: 1 })
        .collect();
    assert_eq!(
        code(q.ack_leases(&too_many).await),
        ErrorCode::InvalidArgument
    );
    q.push("kept").await.unwrap();
    let kept = token(&next(&mut consumer).await);
    let zero = LeaseToken { id: 1, attempt: 0 };
    assert_eq!(
        code(q.ack_leases(&[kept, zero]).await),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        q.info().await.unwrap().leased,
        1,
        "a refused call acks nothing"
    );
    let plain = q.consume(ConsumeOptions::default()).await.unwrap();
    assert_eq!(
        code(plain.ack_leases(&[never]).await),
        ErrorCode::InvalidArgument
    );
}

async fn bad_lease_input_gets_clear_errors() {
    let c = cluster().await;
    let q = attached(&c.bus, "bad", AttachOptions::default()).await;

    // Unknown lease: never delivered.
    let unknown = LeaseToken { id: 7, attempt: 1 };
    assert_eq!(code(q.ack_lease(unknown).await), ErrorCode::NotFound);
    assert_eq!(code(q.nack(unknown).await), ErrorCode::NotFound);
    // A token no delivery can have.
    let zero = LeaseToken { id: 1, attempt: 0 };
    assert_eq!(code(q.ack_lease(zero).await), ErrorCode::InvalidArgument);
    // Acked twice: the second finds no lease.
    q.push("once").await.unwrap();
    let d = lease_one(&q, LONG).await;
    q.ack_lease(token(&d)).await.unwrap();
    assert_eq!(code(q.ack_lease(token(&d)).await), ErrorCode::NotFound);

    // Visibility timeouts: zero (refused by the SDK before sending) and
    // absurd (refused by the server).
    assert_eq!(
        code(q.consume(ConsumeOptions::lease(Duration::ZERO)).await),
        ErrorCode::InvalidArgument
    );
    let absurd = ConsumeOptions::lease(Duration::from_secs(13 * 3600));
    let err = q.consume(absurd).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument);
    assert!(err.to_string().contains("visibility"), "{err}");

    // Max deliveries: over the limit, or a queue whose dead-letter queue
    // would have an invalid name.
    let over = AttachOptions::default().max_deliveries(1001);
    assert_eq!(code(q.attach(over).await), ErrorCode::InvalidArgument);
    let long = c.bus.queue("x".repeat(200));
    let err = long
        .attach(AttachOptions::default().max_deliveries(3))
        .await
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidArgument, "{err}");
    assert!(err.to_string().contains("dead-letter queue"), "{err}");

    // Lease acks only from a lease consumer; lease mode and a reliable
    // consumer exclude each other.
    let mut holder = reliable(&q).await;
    assert_eq!(
        code(holder.ack_lease(unknown).await),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        code(q.consume(ConsumeOptions::lease(LONG)).await),
        ErrorCode::FailedPrecondition
    );
    holder.stop();

    // The server keeps serving.
    assert!(q.exists().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leases_expire_and_dead_letter_across_broker_replicas_on_redis() {
    let redis = busmq_testkit::redis::redis_server().await;
    let storage_a = storage_on(&redis.url()).await;
    let storage_b = storage_on(&redis.url()).await;
    let broker_a = busmq_testkit::broker(storage_a.addr()).await;
    let broker_b = busmq_testkit::broker(storage_b.addr()).await;
    let a = Bus::connect(broker_a.url()).await.unwrap();
    let b = Bus::connect(broker_b.url()).await.unwrap();
    let qa = attached(&a, "replicated", AttachOptions::default().max_deliveries(2)).await;
    let qb = attached(&b, "replicated", AttachOptions::default()).await;
    assert_eq!(qb.info().await.unwrap().max_deliveries, 2);

    qa.push("job").await.unwrap();
    let on_a = lease_one(&qa, Duration::from_millis(500)).await;
    // A consumer on the other broker waits; the lease taken through broker
    // A runs out and reaches it with no push.
    let mut on_b = qb.consume(ConsumeOptions::lease(LONG)).await.unwrap();
    let again = next(&mut on_b).await;
    assert_eq!((again.id, again.attempt), (on_a.id, 2));
    assert_eq!(
        code(qa.ack_lease(token(&on_a)).await),
        ErrorCode::FailedPrecondition,
        "the late ack through broker A is refused"
    );
    // The second delivery was the last: nacked on B, it is dead-lettered,
    // and the dead-letter queue is there for broker A too.
    assert_eq!(
        on_b.nack(token(&again)).await.unwrap(),
        Nacked::DeadLettered
    );
    let mut dead = qa
        .dead_letters()
        .consume(ConsumeOptions::default().max(1))
        .await
        .unwrap();
    assert_eq!(next(&mut dead).await.payload, "job");
    assert_eq!(qa.info().await.unwrap().count, 0);
}

/// Runs the `busmq` CLI against `broker`; its exit success, stdout and
/// stderr.
async fn cli(broker: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(busmq_testkit::bin_path("busmq"))
        .args(args)
        .env("BUSMQ_SERVER", broker)
        .output()
        .await
        .expect("run busmq");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn the_cli_takes_a_lease_then_acks_or_nacks_it_by_token() {
    let c = cluster().await;
    let url = c.broker.url();
    // Kept attached here, so the queue outlives each CLI call.
    let q = attached(&c.bus, "scripted", AttachOptions::default()).await;
    q.push_batch(["first", "second"]).await.unwrap();

    let (ok, out, err) = cli(
        &url,
        &["lease", "take", "scripted", "--max-deliveries", "2"],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, "1\t1\tfirst\n");
    assert_eq!(
        q.info().await.unwrap().leased,
        1,
        "the lease outlives the CLI"
    );
    let (ok, out, err) = cli(&url, &["lease", "nack", "scripted", "1", "1"]).await;
    assert!(ok, "{err}");
    assert_eq!(out, "requeued\n");

    let (ok, out, _) = cli(&url, &["lease", "take", "scripted", "--max", "2"]).await;
    assert!(ok);
    assert_eq!(out, "1\t2\tfirst\n2\t1\tsecond\n");
    let (ok, _, err) = cli(&url, &["lease", "ack", "scripted", "2", "1"]).await;
    assert!(ok, "{err}");
    // A stale token: attempt 1 of message 1 is long gone.
    let (ok, _, err) = cli(&url, &["lease", "ack", "scripted", "1", "1"]).await;
    assert!(!ok);
    assert!(err.contains("expired"), "{err}");
    let (ok, out, err) = cli(&url, &["lease", "nack", "scripted", "1", "2"]).await;
    assert!(ok, "{err}");
    assert_eq!(out, "dead-lettered\n");
    assert_eq!(q.dead_letters().info().await.unwrap().count, 1);
}

busmq_testkit::in_both_deployments!(
    an_expired_lease_returns_its_message_to_the_front_ahead_of_newer_ones,
    a_waiting_consumer_gets_an_expired_message_and_the_late_ack_is_rejected,
    competing_lease_consumers_each_get_distinct_messages,
    leases_of_a_consumer_that_goes_away_return_at_once,
    a_message_over_max_deliveries_lands_in_the_dlq_in_lease_mode,
    a_message_over_max_deliveries_lands_in_the_dlq_in_reliable_mode,
    ack_leases_acks_a_batch_and_names_the_tokens_it_could_not_ack,
    bad_lease_input_gets_clear_errors,
    the_cli_takes_a_lease_then_acks_or_nacks_it_by_token,
);
