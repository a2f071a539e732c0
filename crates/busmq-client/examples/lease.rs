//! Lease mode: competing workers with per-message acks, a visibility
//! timeout, and a dead-letter queue for a message no worker can handle.
//!
//! Start a bus first (`busmq serve`), then:
//!
//! ```text
//! cargo run -p busmq-client --example lease            # http://127.0.0.1:50051
//! cargo run -p busmq-client --example lease -- URL     # another broker
//! ```
//!
//! The producer pushes five jobs to queue `jobs`, attached with at most 3
//! deliveries per message. Two workers compete for them: each job goes to
//! one worker, which acks it by its lease token. Job "poison" fails every
//! time: the worker nacks it, it comes back at the front of the queue, and
//! after its third delivery it moves to `jobs.dlq`, where the example reads
//! it.

use std::time::Duration;

use busmq_client::{AttachOptions, Bus, ConsumeOptions, DEFAULT_URL, Nacked, Queue};
use futures::StreamExt;

const JOBS: [&str; 5] = [
    "resize a.png",
    "resize b.png",
    "poison",
    "resize c.png",
    "resize d.png",
];

/// Handles jobs until the queue stays empty for a second.
async fn worker(name: &'static str, queue: Queue) -> Result<(), busmq_client::Error> {
    // A worker that dies (or whose connection drops) gives its unfinished
    // jobs back at once; one that hangs loses them after 30 s.
    let options = ConsumeOptions::lease(Duration::from_secs(30)).prefetch(1);
    let mut jobs = queue.consume(options).await?;
    while let Ok(Some(job)) = tokio::time::timeout(Duration::from_secs(1), jobs.next()).await {
        let job = job?;
        let token = job
            .lease_token()
            .expect("lease mode deliveries carry a token");
        let text = String::from_utf8_lossy(&job.payload);
        if text == "poison" {
            match jobs.nack(token).await? {
                Nacked::Requeued => {
                    println!(
                        "{name}: job {} failed (attempt {}), given back",
                        job.id, job.attempt
                    )
                }
                Nacked::DeadLettered => println!(
                    "{name}: job {} failed (attempt {}), moved to the dead-letter queue",
                    job.id, job.attempt
                ),
            }
            continue;
        }
        println!("{name}: job {} done: {text}", job.id);
        jobs.ack_lease(token).await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), busmq_client::Error> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    let bus = Bus::connect(&url).await?;
    println!("connected to {}", bus.url());

    let queue = bus.queue("jobs");
    queue
        .attach(AttachOptions::default().max_deliveries(3))
        .await?;
    let ids = queue.push_batch(JOBS).await?;
    println!("producer: pushed jobs {}..={}", ids.first, ids.last);

    let workers = [
        tokio::spawn(worker("worker 1", queue.clone())),
        tokio::spawn(worker("worker 2", queue.clone())),
    ];
    for w in workers {
        w.await.expect("a worker does not panic")?;
    }

    let dead = queue.dead_letters();
    let mut letters = dead.consume(ConsumeOptions::default()).await?;
    while let Ok(Some(letter)) =
        tokio::time::timeout(Duration::from_millis(500), letters.next()).await
    {
        let letter = letter?;
        println!(
            "{}: message {}: {}",
            dead.name(),
            letter.id,
            String::from_utf8_lossy(&letter.payload)
        );
    }
    let info = queue.info().await?;
    println!(
        "{}: {} messages left, {} leased",
        queue.name(),
        info.count,
        info.leased
    );
    queue.detach().await?;
    Ok(())
}
