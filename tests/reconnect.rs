//! The SDK rides through a broker restart: one reliable consumer object
//! (of one queue, or of many on one stream) keeps delivering after its
//! broker is killed and started again, and no acknowledged push is lost.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use busmq_client::{AttachOptions, Bus, ConsumeOptions, Queue, QueueEvent};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// Pushes 1, 2, ... one at a time, round robin over `queues`, while `next`
/// takes deliveries (each returns the number its payload carries). Once
/// 300 arrived, `broker` is killed and started again; after 300 more the
/// pushes stop, and `next` goes on until every push the broker
/// acknowledged has arrived (pushes that failed while it was down were
/// never acknowledged and are not retried).
async fn survive_a_restart(
    broker: &busmq_testkit::Process,
    queues: Vec<Queue>,
    mut next: impl AsyncFnMut() -> u64,
) {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let producer = tokio::spawn({
        let (acked, stop) = (Arc::clone(&acked), stop.clone());
        async move {
            let mut k = 0u64;
            while !stop.is_cancelled() {
                k += 1;
                let queue = &queues[k as usize % queues.len()];
                match queue.push(k.to_string()).await {
                    Ok(_) => acked.lock().unwrap().push(k),
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }
    });

    let mut received = BTreeSet::new();
    let mut restarted = false;
    let mut after_restart = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while after_restart < 300 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no progress after the restart ({after_restart} messages)"
        );
        received.insert(next().await);
        if restarted {
            after_restart += 1;
        } else if received.len() >= 300 {
            broker.kill9();
            tokio::time::sleep(Duration::from_millis(300)).await;
            broker.restart().await;
            restarted = true;
        }
    }
    stop.cancel();
    producer.await.unwrap();

    let acked: Vec<u64> = acked.lock().unwrap().clone();
    assert!(!acked.is_empty());
    while !acked.iter().all(|k| received.contains(k)) {
        received.insert(next().await);
    }
}

/// The number a test payload carries.
fn number(payload: &[u8]) -> u64 {
    std::str::from_utf8(payload).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reliable_consumer_survives_a_broker_restart_without_losing_messages() {
    let storage = busmq_testkit::storage().await;
    let broker = common::broker_with_short_lock_lease(&storage).await;
    let bus = Bus::connect(broker.url()).await.unwrap();
    let queue = bus.queue("reconnect");
    queue
        .attach(AttachOptions::ttl(Duration::from_secs(600)))
        .await
        .unwrap();
    let mut events = queue.events();
    let mut consumer = queue
        .consume(ConsumeOptions::reliable().prefetch(20))
        .await
        .unwrap();

    survive_a_restart(&broker, vec![queue.clone()], async || {
        let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("a delivery within 30 s")
            .expect("the consumer keeps running")
            .expect("no error reaches the stream");
        // Acks fail while the broker is down; the messages they covered
        // come back after the reconnect (at least once).
        if consumer.buffered_len() == 0 {
            let _ = consumer.ack(delivery.id).await;
        }
        number(&delivery.payload)
    })
    .await;

    assert!(consumer.reconnects() >= 1, "the consumer reconnected");
    let mut saw = (false, false);
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(100), events.next()).await
    {
        match event {
            QueueEvent::Reconnecting(_) => saw.0 = true,
            QueueEvent::Reconnected => saw.1 = true,
            _ => {}
        }
    }
    assert_eq!(saw, (true, true), "reconnecting and reconnected events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reliable_consumer_of_many_queues_survives_a_broker_restart_without_losing_messages() {
    let storage = busmq_testkit::storage().await;
    let broker = common::broker_with_short_lock_lease(&storage).await;
    let bus = Bus::connect(broker.url()).await.unwrap();
    let mut queues = Vec::new();
    for i in 0..3 {
        let queue = bus.queue(format!("reconnect.many.{i}"));
        queue
            .attach(AttachOptions::ttl(Duration::from_secs(600)))
            .await
            .unwrap();
        queues.push(queue);
    }
    let mut consumer = bus
        .consume_many(&queues, ConsumeOptions::reliable().prefetch(20))
        .await
        .unwrap();

    survive_a_restart(&broker, queues.clone(), async || {
        let got = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("a delivery within 30 s")
            .expect("the consumer keeps running")
            .expect("no error reaches the stream");
        let k = number(&got.delivery.payload);
        assert_eq!(k as usize % 3, got.queue, "payload {k} came from its queue");
        // Acks fail while the broker is down; what they covered comes back.
        let _ = consumer.ack(got.queue, got.delivery.id).await;
        k
    })
    .await;
    assert!(consumer.reconnects() >= 1, "the consumer reconnected");
}
