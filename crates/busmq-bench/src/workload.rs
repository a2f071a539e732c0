//! Producers and consumers: the load itself, and the per-cycle sampling.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use busmq_client::{AttachOptions, Bus, Bytes, ConsumeOptions, PusherOptions};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

use crate::report::{Cycle, Latency, Report};
use crate::{BenchArgs, Mode};

/// How long consumers may take to drain the backlog after producers stop.
const DRAIN: Duration = Duration::from_secs(10);

/// Shared progress of a run.
struct Progress {
    epoch: Instant,
    pushed: AtomicU64,
    consumed: AtomicU64,
    /// Deliveries one pushed message makes (persistent mode: every consumer
    /// of its queue reads it), averaged over queues.
    fanout: f64,
}

impl Progress {
    fn now_nanos(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Messages pushed and not yet consumed by every reader.
    fn backlog(&self) -> u64 {
        let expected = self.pushed.load(Ordering::Relaxed) as f64 * self.fanout;
        let consumed = self.consumed.load(Ordering::Relaxed) as f64;
        ((expected - consumed).max(0.0) / self.fanout) as u64
    }
}

/// Push→delivery latencies in nanoseconds, 1 ns to one hour, 3 digits.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// The queues (by index) each of `workers` handles: round robin when there
/// are more queues than workers, else each worker one queue (shared).
fn assign(workers: usize, queues: usize) -> Vec<Vec<usize>> {
    (0..workers)
        .map(|w| {
            if workers <= queues {
                (w..queues).step_by(workers).collect()
            } else {
                vec![w % queues]
            }
        })
        .collect()
}

pub async fn run(args: &BenchArgs, url: &str) -> anyhow::Result<Report> {
    let run_id = std::process::id() ^ (Instant::now().elapsed().subsec_nanos());
    let names: Arc<Vec<String>> = Arc::new(
        (0..args.queues)
            .map(|i| format!("bench.{run_id:x}.{i}"))
            .collect(),
    );
    let setup = Bus::connect(url)
        .await
        .context("connecting to the broker")?;
    for name in names.iter() {
        setup.queue(name).attach(AttachOptions::default()).await?;
    }

    let consumer_queues = assign(args.consumers, args.queues);
    let fanout = match args.mode {
        Mode::Persistent => {
            consumer_queues.iter().map(Vec::len).sum::<usize>() as f64 / args.queues as f64
        }
        _ => 1.0,
    };
    let progress = Arc::new(Progress {
        epoch: Instant::now(),
        pushed: AtomicU64::new(0),
        consumed: AtomicU64::new(0),
        fanout,
    });

    // Consumers first, so no early message waits for a stream.
    let stop_consumers = CancellationToken::new();
    let mut consumers = Vec::new();
    for queues in consumer_queues {
        let bus = Bus::connect(url).await?;
        for q in queues {
            let consumer = bus.queue(&names[q]).consume(consume_options(args)).await?;
            consumers.push(tokio::spawn(consume(
                consumer,
                args.mode,
                Arc::clone(&progress),
                stop_consumers.clone(),
            )));
        }
    }

    let stop_producers = CancellationToken::new();
    let mut producers = Vec::new();
    for queues in assign(args.producers, args.queues) {
        let bus = Bus::connect(url).await?;
        producers.push(tokio::spawn(produce(
            bus,
            queues.into_iter().map(|q| names[q].clone()).collect(),
            args.clone(),
            Arc::clone(&progress),
            stop_producers.clone(),
        )));
    }

    let cycles = sample_cycles(args, &progress).await;
    stop_producers.cancel();
    for p in producers {
        p.await.context("producer task")??;
    }
    let backlog_at_end = progress.backlog();

    let drain_deadline = Instant::now() + DRAIN;
    while progress.backlog() > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drained = progress.backlog() == 0;
    stop_consumers.cancel();
    let mut latency = latency_histogram();
    for c in consumers {
        latency.add(c.await.context("consumer task")??)?;
    }
    for name in names.iter() {
        let _ = setup.queue(name).close().await;
    }

    Ok(Report {
        cycles,
        pushed: progress.pushed.load(Ordering::Relaxed),
        consumed: progress.consumed.load(Ordering::Relaxed),
        backlog_at_end,
        drained,
        latency: Latency::from_histogram(&latency),
    })
}

fn consume_options(args: &BenchArgs) -> ConsumeOptions {
    let options = match args.mode {
        Mode::Unreliable => ConsumeOptions::default(),
        Mode::Reliable => ConsumeOptions::reliable(),
        Mode::Persistent => ConsumeOptions::persistent(0),
    };
    options.prefetch(args.prefetch)
}

/// Prints and returns one row per cycle until the run's duration is over.
async fn sample_cycles(args: &BenchArgs, progress: &Progress) -> Vec<Cycle> {
    let start = tokio::time::Instant::now();
    let count = (args.duration.as_secs_f64() / args.cycle.as_secs_f64()).floor() as u32;
    let seconds = args.cycle.as_secs_f64();
    let (mut pushed, mut consumed) = (0, 0);
    let mut cycles = Vec::new();
    println!("{}", Cycle::header());
    for index in 1..=count {
        tokio::time::sleep_until(start + args.cycle * index).await;
        let (p, c) = (
            progress.pushed.load(Ordering::Relaxed),
            progress.consumed.load(Ordering::Relaxed),
        );
        let cycle = Cycle {
            index,
            pushed_per_sec: ((p - pushed) as f64 / seconds) as u64,
            consumed_per_sec: ((c - consumed) as f64 / seconds) as u64,
            backlog: progress.backlog(),
        };
        println!("{}", cycle.row());
        cycles.push(cycle);
        (pushed, consumed) = (p, c);
    }
    cycles
}

async fn produce(
    bus: Bus,
    queues: Vec<String>,
    args: BenchArgs,
    progress: Arc<Progress>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let pushers: Vec<_> = queues
        .iter()
        .map(|q| {
            bus.queue(q).pusher(PusherOptions {
                max_in_flight: args.in_flight,
            })
        })
        .collect();
    let backlog_limit = args.max_backlog.saturating_mul(args.queues as u64);
    let mut pace = args.rate.map(|rate| {
        let per_producer = rate as f64 / args.producers as f64;
        let mut interval =
            tokio::time::interval(Duration::from_secs_f64(args.batch as f64 / per_producer));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        interval
    });
    let mut tickets = FuturesUnordered::new();
    let padding = vec![0u8; args.size - 8];
    'run: loop {
        for pusher in &pushers {
            while backlog_limit > 0 && progress.backlog() > backlog_limit {
                if stop.is_cancelled() {
                    break 'run;
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            if let Some(interval) = pace.as_mut() {
                tokio::select! {
                    _ = interval.tick() => {}
                    _ = stop.cancelled() => break 'run,
                }
            }
            if stop.is_cancelled() {
                break 'run;
            }
            // One payload per batch, shared by its messages: they were
            // pushed at the same moment.
            let mut payload = Vec::with_capacity(args.size);
            payload.extend_from_slice(&progress.now_nanos().to_le_bytes());
            payload.extend_from_slice(&padding);
            let payload = Bytes::from(payload);
            let batch = std::iter::repeat_n(payload, args.batch);
            tickets.push(pusher.push(batch).await?);
            while let Some(Some(done)) = tickets.next().now_or_never() {
                progress.pushed.fetch_add(done?.len(), Ordering::Relaxed);
            }
        }
    }
    while let Some(done) = tickets.next().await {
        progress.pushed.fetch_add(done?.len(), Ordering::Relaxed);
    }
    Ok(())
}

async fn consume(
    mut consumer: busmq_client::Consumer,
    mode: Mode,
    progress: Arc<Progress>,
    stop: CancellationToken,
) -> anyhow::Result<Histogram<u64>> {
    let mut latency = latency_histogram();
    let mut unflushed = 0u64;
    loop {
        let next = tokio::select! {
            next = consumer.next() => next,
            _ = stop.cancelled() => break,
        };
        let delivery = match next {
            Some(delivery) => delivery?,
            None => break,
        };
        unflushed += 1;
        if let Some(sent) = delivery.payload.get(..8) {
            let sent = u64::from_le_bytes(sent.try_into().expect("8 bytes"));
            latency.saturating_record(progress.now_nanos().saturating_sub(sent));
        }
        // The end of a received batch: count it, and ack it in one call.
        if consumer.buffered_len() == 0 {
            if mode == Mode::Reliable {
                consumer.ack(delivery.id).await?;
            }
            progress.consumed.fetch_add(unflushed, Ordering::Relaxed);
            unflushed = 0;
        }
    }
    progress.consumed.fetch_add(unflushed, Ordering::Relaxed);
    Ok(latency)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_covers_every_queue() {
        assert_eq!(assign(2, 5), vec![vec![0, 2, 4], vec![1, 3]]);
        assert_eq!(assign(4, 2), vec![vec![0], vec![1], vec![0], vec![1]]);
        assert_eq!(assign(1, 1), vec![vec![0]]);
    }
}
