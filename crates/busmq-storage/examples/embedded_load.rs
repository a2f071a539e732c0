//! The embedded store under busmq's load, in process (no gRPC): Q queues,
//! each with a producer task pushing batches of 64 × 32-byte messages and a
//! consumer task taking batches of 64 from the front, every call durable.
//!
//! ```sh
//! cargo run --release -p busmq-storage --example embedded_load -- [QUEUES] [SECONDS] [memory]
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use busmq_core::Limits;
use busmq_storage::embedded::EmbeddedStorage;
use busmq_storage::memory::MemoryStorage;
use busmq_storage::{QueueName, Storage, TakeMode};
use bytes::Bytes;

const BATCH: usize = 64;
/// A producer waits while its queue holds this many messages.
const MAX_BACKLOG: u64 = 2_000;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let queues: usize = args.next().map_or(100, |a| a.parse().expect("QUEUES"));
    let seconds: u64 = args.next().map_or(5, |a| a.parse().expect("SECONDS"));
    let memory = args.next().as_deref() == Some("memory");
    let dir = tempfile::tempdir().expect("temp dir");
    let embedded = (!memory).then(|| EmbeddedStorage::open(dir.path()).expect("open"));
    let store: Arc<dyn Storage> = match &embedded {
        Some(s) => Arc::new(s.clone()),
        None => Arc::new(MemoryStorage::new()),
    };

    let names: Vec<QueueName> = (0..queues)
        .map(|i| QueueName::parse(&format!("load.{i}"), &Limits::default()).unwrap())
        .collect();
    for q in &names {
        store
            .attach(q, Some(Duration::from_secs(3600)))
            .await
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let pushed = Arc::new(AtomicU64::new(0));
    let taken = Arc::new(AtomicU64::new(0));
    let commits_before = embedded.as_ref().map_or(0, |s| s.commits());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for q in &names {
        let (s, q2, stop2, pushed2) = (store.clone(), q.clone(), stop.clone(), pushed.clone());
        tasks.push(tokio::spawn(async move {
            let batch: Vec<Bytes> = (0..BATCH).map(|_| Bytes::from(vec![7u8; 32])).collect();
            while !stop2.load(Ordering::Relaxed) {
                if s.info(&q2).await.unwrap().unwrap().count > MAX_BACKLOG {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                s.push(&q2, batch.clone()).await.unwrap();
                pushed2.fetch_add(BATCH as u64, Ordering::Relaxed);
            }
        }));
        let (s, q2, stop2, taken2) = (store.clone(), q.clone(), stop.clone(), taken.clone());
        tasks.push(tokio::spawn(async move {
            while !stop2.load(Ordering::Relaxed) {
                let got = s.take(&q2, BATCH as u32, TakeMode::Remove).await.unwrap();
                if got.is_empty() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                taken2.fetch_add(got.len() as u64, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let (p, t) = (
        pushed.load(Ordering::Relaxed),
        taken.load(Ordering::Relaxed),
    );
    let commits = embedded.as_ref().map_or(0, |s| s.commits()) - commits_before;
    println!(
        "store={} queues={queues} secs={secs:.1} pushed/s={:.0} taken/s={:.0} commits/s={:.0} \
         calls/commit={:.1}",
        if memory { "memory" } else { "embedded" },
        p as f64 / secs,
        t as f64 / secs,
        commits as f64 / secs,
        if commits > 0 {
            (p + t) as f64 / BATCH as f64 / commits as f64
        } else {
            0.0
        },
    );
}
