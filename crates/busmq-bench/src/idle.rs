//! `--idle-queues N`: no load, just many quiet queues, so a script can read
//! what they cost a server (issue 4: the RSS of `busmq serve` holding 10,000
//! idle queues).
//!
//! Each queue is attached and holds one message, as a queue of a quiet
//! system does between bursts. With `--idle-consumers` every queue also has
//! a consumer waiting on it (a stream open at the broker, over
//! `--consumers` connections), which is how workers sit on their queues.

use std::time::Instant;

use busmq_client::Bytes;

use crate::transport::{Consumer, Producer, Recorder, Transport};
use crate::workload::{assign, queue_names, shared_latency_histogram};
use crate::{BenchArgs, report::thousands};

/// What `scripts/bench-idle-rss.sh` waits for before it reads the server's
/// memory.
pub const READY_LINE: &str = "idle queues ready";

/// Sets up `queues` idle queues, prints [`READY_LINE`], holds them for
/// `--duration`, then closes them.
pub async fn run<T: Transport>(
    args: &BenchArgs,
    queues: usize,
    transport: T,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let names = queue_names(queues);
    transport.prepare(&names).await?;

    let payload = Bytes::from(vec![0u8; args.size]);
    for worker_queues in assign(args.producers, queues) {
        let worker_names = worker_queues.iter().map(|&q| names[q].clone()).collect();
        let mut producer = transport.producer(worker_names).await?;
        let mut tickets = Vec::with_capacity(worker_queues.len());
        for index in 0..worker_queues.len() {
            tickets.push(producer.push_batch(index, payload.clone(), 1).await?);
        }
        for ticket in tickets {
            ticket.await?;
        }
    }

    let mut consumers = Vec::new();
    if args.idle_consumers {
        let mut recorder = Recorder::new(Instant::now(), shared_latency_histogram());
        for worker_queues in assign(args.consumers, queues) {
            let worker_names = worker_queues.iter().map(|&q| names[q].clone()).collect();
            for mut consumer in transport.consumers(worker_names).await? {
                // Each queue's one message: the consumer is idle afterwards.
                consumer.next_batch(&mut recorder).await?;
                consumers.push(consumer);
            }
        }
    }

    println!(
        "{READY_LINE}: {} queues, one {} B message each, {} consumers waiting (set up in {:.1} s); holding for {:?}",
        thousands(queues as u64),
        args.size,
        thousands(consumers.len() as u64),
        started.elapsed().as_secs_f64(),
        args.duration
    );
    tokio::time::sleep(args.duration).await;
    drop(consumers);
    transport.cleanup(&names).await;
    println!("closed {} queues", thousands(queues as u64));
    Ok(())
}
