//! Crashes: `kill -9` of the storage service and then of the broker while a
//! producer pushes and a reliable consumer consumes. After the restarts
//! every push that was acknowledged is delivered, in order.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use busmq_client::{AttachOptions, Bus, ConsumeOptions, Reconnect};
use busmq_testkit::Process;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

async fn storage(backend: &str) -> Process {
    let builder = Process::builder("busmq-storage");
    let addr = builder.listen_addr();
    let data = builder.dir().join("data");
    let p = builder
        .args(["--listen", &addr.to_string(), "--backend", backend])
        .arg("--data-dir")
        .arg(&data)
        .spawn();
    p.wait_ready().await;
    p
}

/// Pushes `m1`, `m2`, ... one at a time until stopped, recording which were
/// acknowledged. A push that fails (a process is down) is not retried: it
/// may or may not be stored, and it was never acknowledged.
async fn produce(bus: Bus, acked: Arc<Mutex<Vec<u64>>>, stop: CancellationToken) {
    let q = bus.queue("crash");
    let mut k = 0;
    while !stop.is_cancelled() {
        k += 1;
        match q.push(format!("m{k}")).await {
            Ok(_) => acked.lock().unwrap().push(k),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Consumes reliably until stopped, re-consuming after every failure, and
/// returns each session's payload numbers in the order received.
async fn consume(bus: Bus, stop: CancellationToken) -> Vec<Vec<u64>> {
    let q = bus.queue("crash");
    let mut sessions = Vec::new();
    while !stop.is_cancelled() {
        let mut consumer = match q.consume(ConsumeOptions::reliable().prefetch(50)).await {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut seen = Vec::new();
        loop {
            let next = tokio::select! {
                next = consumer.next() => next,
                _ = stop.cancelled() => break,
            };
            let Some(Ok(d)) = next else { break };
            let text = std::str::from_utf8(&d.payload).unwrap();
            seen.push(text.trim_start_matches('m').parse::<u64>().unwrap());
            if consumer.buffered_len() == 0 && consumer.ack(d.id).await.is_err() {
                break;
            }
        }
        sessions.push(seen);
    }
    sessions
}

async fn kill9_storage_then_broker(backend: &str) {
    let storage = storage(backend).await;
    let broker = common::broker_with_short_lock_lease(&storage).await;
    // The consumer below re-consumes by hand after every failure, to see
    // each session's order; the SDK's own reconnection has its own test
    // (tests/reconnect.rs).
    let bus = Bus::connect(broker.url())
        .await
        .unwrap()
        .reconnect(Reconnect::disabled());
    bus.queue("crash")
        .attach(AttachOptions::ttl(Duration::from_secs(600)))
        .await
        .unwrap();

    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop_producer = CancellationToken::new();
    let stop_consumer = CancellationToken::new();
    let producer = tokio::spawn(produce(
        bus.clone(),
        Arc::clone(&acked),
        stop_producer.clone(),
    ));
    let consumer = tokio::spawn(consume(bus.clone(), stop_consumer.clone()));

    let progressed = |n: usize| {
        let acked = Arc::clone(&acked);
        async move {
            for _ in 0..200 {
                if acked.lock().unwrap().len() >= n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("fewer than {n} pushes acknowledged within 10 s");
        }
    };

    progressed(200).await;
    storage.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    storage.restart().await;
    let after_storage = acked.lock().unwrap().len();
    progressed(after_storage + 200).await;

    broker.kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.restart().await;
    let after_broker = acked.lock().unwrap().len();
    progressed(after_broker + 200).await;

    stop_producer.cancel();
    producer.await.unwrap();
    let acked: Vec<u64> = acked.lock().unwrap().clone();
    let last = *acked.last().unwrap();

    // The consumer acks after every batch: the queue empties once it has
    // received everything.
    let q = bus.queue("crash");
    for _ in 0..400 {
        if q.count().await.unwrap_or(u64::MAX) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_consumer.cancel();
    let sessions = consumer.await.unwrap();

    for s in &sessions {
        assert!(
            s.windows(2).all(|w| w[0] < w[1]),
            "each consume session sees push order"
        );
    }
    let received: BTreeSet<u64> = sessions.iter().flatten().copied().collect();
    let lost: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|k| !received.contains(k))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged pushes lost ({} of {}, last {last}): {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(20)]
    );
    assert!(sessions.len() >= 2, "the consumer had to reconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_of_storage_and_broker_loses_no_acknowledged_push_redis() {
    let redis = busmq_testkit::redis::redis_server().await;
    kill9_storage_then_broker(&redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_of_storage_and_broker_loses_no_acknowledged_push_embedded() {
    kill9_storage_then_broker("embedded").await;
}
