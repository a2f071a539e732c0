//! `busmq serve` on its default embedded store, killed with SIGKILL while a
//! producer pushes through the SDK and a reliable consumer consumes, then
//! restarted on the same data directory: every push acknowledged before the
//! kill is delivered after the restart, in order, none lost. (Reliable
//! mode may deliver again what was delivered and not acked.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use busmq_client::{AttachOptions, Bus, ConsumeOptions, Consumer, ErrorCode};
use busmq_testkit::Process;
use futures::StreamExt;
use tokio::time::Instant;

/// Messages per push batch.
const BATCH: u64 = 50;
/// The consumer acks after this many messages.
const ACK_EVERY: u64 = 100;
/// Kill once this many pushed messages were acknowledged...
const PUSHED_BEFORE_KILL: u64 = 3_000;
/// ...and this many were consumed.
const CONSUMED_BEFORE_KILL: u64 = 1_000;
/// Bound on every wait.
const WAIT: Duration = Duration::from_secs(30);

/// `busmq serve` on free ports, its embedded store in `data_dir`, with a
/// short reliable lease so a consumer that died with it is replaced fast.
fn serve(data_dir: &Path) -> Process {
    let builder = Process::builder("busmq");
    let listen = builder.listen_addr().to_string();
    builder
        .args(["serve", "--listen", &listen, "--storage-listen"])
        .arg(busmq_testkit::free_addr().to_string())
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--reliable-lease-ms", "1000"])
        .spawn()
}

#[derive(Default)]
struct Seen {
    /// Every acknowledged push: id -> payload.
    pushed: BTreeMap<u64, String>,
    /// Every id the consumer received before the kill.
    delivered: BTreeSet<u64>,
    /// Highest id whose ack the server confirmed before the kill.
    acked: u64,
    /// Highest id whose ack was sent before the kill (it may have been
    /// applied with the confirmation lost in the kill).
    ack_sent: u64,
}

/// Pushes numbered batches until the server goes away, recording each
/// acknowledged one.
async fn produce(bus: Bus, seen: Arc<Mutex<Seen>>) {
    let q = bus.queue("durable");
    for batch in 0u64..10_000 {
        let payloads: Vec<String> = (0..BATCH).map(|i| format!("b{batch}.{i}")).collect();
        let Ok(range) = q.push_batch(payloads.clone()).await else {
            return; // the server was killed
        };
        assert_eq!(range.len(), BATCH);
        let mut seen = seen.lock().unwrap();
        seen.pushed.extend(range.iter().zip(payloads));
    }
}

/// Consumes reliably until the server goes away, acking every
/// [`ACK_EVERY`] messages and checking order. Slower than the producer, so
/// a backlog of acknowledged pushes waits in the store at the kill.
async fn consume(mut consumer: Consumer, seen: Arc<Mutex<Seen>>) {
    let mut last = 0;
    while let Some(Ok(m)) = consumer.next().await {
        tokio::time::sleep(Duration::from_micros(500)).await;
        assert_eq!(m.id, last + 1, "delivered in order before the kill");
        last = m.id;
        seen.lock().unwrap().delivered.insert(m.id);
        if m.id % ACK_EVERY == 0 {
            seen.lock().unwrap().ack_sent = m.id;
            match consumer.ack(m.id).await {
                Ok(_) => seen.lock().unwrap().acked = m.id,
                Err(_) => return,
            }
        }
    }
}

/// A reliable consumer, once the lock of the one that died has lapsed.
async fn reliable_consumer(bus: &Bus) -> Consumer {
    let deadline = Instant::now() + WAIT;
    loop {
        match bus
            .queue("durable")
            .consume(ConsumeOptions::reliable())
            .await
        {
            Ok(consumer) => return consumer,
            Err(e) if e.code() == ErrorCode::FailedPrecondition && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("reliable consumer after restart: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_serve_loses_no_acknowledged_push() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("busmq-data");
    let server = serve(&data_dir);
    server.wait_ready().await;

    let bus = Bus::connect(server.url()).await.expect("connect");
    let q = bus.queue("durable");
    assert!(
        !q.attach(AttachOptions::ttl(Duration::from_secs(3600)))
            .await
            .unwrap()
    );
    let consumer = q.consume(ConsumeOptions::reliable()).await.unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let producer = tokio::spawn(produce(bus.clone(), Arc::clone(&seen)));
    let consumer = tokio::spawn(consume(consumer, Arc::clone(&seen)));

    // Mid-stream: enough pushed and consumed, both still going.
    let deadline = Instant::now() + WAIT;
    loop {
        {
            let seen = seen.lock().unwrap();
            if seen.pushed.len() as u64 >= PUSHED_BEFORE_KILL
                && seen.delivered.len() as u64 >= CONSUMED_BEFORE_KILL
            {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "traffic did not reach the kill point within {WAIT:?}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!producer.is_finished() && !consumer.is_finished());
    server.kill9().expect("serve was running");
    tokio::time::timeout(WAIT, producer)
        .await
        .expect("the producer notices the kill")
        .unwrap();
    tokio::time::timeout(WAIT, consumer)
        .await
        .expect("the consumer notices the kill")
        .unwrap();
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let pushed_hi = *seen.pushed.keys().next_back().unwrap();
    assert_eq!(
        seen.pushed.keys().copied().collect::<Vec<_>>(),
        (1..=pushed_hi).collect::<Vec<_>>(),
        "acknowledged ids are dense"
    );
    assert!(
        seen.acked >= ACK_EVERY,
        "the consumer acked before the kill"
    );
    let delivered_hi = *seen.delivered.last().unwrap();
    assert!(
        pushed_hi > delivered_hi,
        "a backlog waited in the store at the kill"
    );

    // Restart on the same data directory.
    server.restart().await;
    let bus = Bus::connect(server.url()).await.expect("reconnect");
    let info = bus
        .queue("durable")
        .info()
        .await
        .expect("the queue survived");
    assert!(
        info.next_id > pushed_hi,
        "ids keep counting past every acknowledged push"
    );
    let mut consumer = reliable_consumer(&bus).await;
    let mut after: Vec<(u64, String)> = Vec::new();
    let deadline = Instant::now() + WAIT;
    while after.last().is_none_or(|(id, _)| *id < pushed_hi) {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = tokio::time::timeout(left, consumer.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} messages after the restart within {WAIT:?}",
                    after.len()
                )
            })
            .expect("stream open")
            .expect("no error");
        let payload = String::from_utf8(m.payload.to_vec()).unwrap();
        after.push((m.id, payload));
    }

    // In order, without a gap, starting right after what was acked.
    let first = after[0].0;
    assert!(
        first <= seen.ack_sent + 1,
        "resumes at or before the first message not acked: {first} > {} + 1",
        seen.ack_sent
    );
    let ids: Vec<u64> = after.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        ids,
        (first..=ids[ids.len() - 1]).collect::<Vec<_>>(),
        "in order, no gap"
    );
    // Every acknowledged push is there, with its payload.
    for (id, payload) in &after {
        if let Some(expected) = seen.pushed.get(id) {
            assert_eq!(payload, expected, "payload of message {id}");
        }
    }
    assert!(
        (1..first).all(|id| seen.delivered.contains(&id)),
        "whatever is not redelivered was delivered before the kill"
    );
    let redelivered = ids.iter().filter(|id| seen.delivered.contains(id)).count();
    eprintln!(
        "acknowledged pushes {pushed_hi}, acked by the consumer {}, delivered before the kill \
         {delivered_hi}, after the restart {} (again: {redelivered})",
        seen.acked,
        after.len()
    );
    let acked = consumer.ack(*ids.last().unwrap()).await.unwrap();
    assert!(acked >= (pushed_hi - first + 1));
}
