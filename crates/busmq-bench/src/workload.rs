//! Producers and consumers: the load itself, and the per-cycle sampling.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use busmq_client::Bytes;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

use crate::report::{Cycle, Latency, Report};
use crate::transport::{Consumer, Producer, Recorder, SharedHistogram, Transport};
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
pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// A [`latency_histogram`] for the consumers of one connection to share.
pub(crate) fn shared_latency_histogram() -> SharedHistogram {
    Arc::new(Mutex::new(latency_histogram()))
}

/// The queues (by index) each of `workers` handles: round robin when there
/// are more queues than workers, else each worker one queue (shared).
pub(crate) fn assign(workers: usize, queues: usize) -> Vec<Vec<usize>> {
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

/// Names for `count` queues of one run, unique to this process and moment
/// so runs against a shared server do not meet.
pub(crate) fn queue_names(count: usize) -> Vec<String> {
    let run_id = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
    (0..count)
        .map(|i| format!("bench.{run_id:x}.{i}"))
        .collect()
}

/// Runs the workload against `transport` (busmq or a peer).
pub async fn run<T: Transport>(args: &BenchArgs, transport: T) -> anyhow::Result<Report> {
    let names: Arc<Vec<String>> = Arc::new(queue_names(args.queues));
    transport.prepare(&names).await?;

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
    let mut histograms = Vec::new();
    for queues in consumer_queues {
        let queues = queues.into_iter().map(|q| names[q].clone()).collect();
        let histogram = shared_latency_histogram();
        for consumer in transport.consumers(queues).await? {
            consumers.push(tokio::spawn(consume(
                consumer,
                Arc::clone(&progress),
                Arc::clone(&histogram),
                stop_consumers.clone(),
            )));
        }
        histograms.push(histogram);
    }

    let stop_producers = CancellationToken::new();
    let mut producers = Vec::new();
    for queues in assign(args.producers, args.queues) {
        let queues: Vec<String> = queues.into_iter().map(|q| names[q].clone()).collect();
        let queue_count = queues.len();
        producers.push(tokio::spawn(produce(
            transport.producer(queues).await?,
            queue_count,
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
    for c in consumers {
        c.await.context("consumer task")??;
    }
    let mut latency = latency_histogram();
    for histogram in histograms {
        latency.add(&*histogram.lock().unwrap_or_else(|p| p.into_inner()))?;
    }
    transport.cleanup(&names).await;

    Ok(Report {
        cycle_secs: args.cycle.as_secs_f64(),
        cycles,
        pushed: progress.pushed.load(Ordering::Relaxed),
        consumed: progress.consumed.load(Ordering::Relaxed),
        backlog_at_end,
        drained,
        latency: Latency::from_histogram(&latency),
    })
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
    mut producer: impl Producer,
    queues: usize,
    args: BenchArgs,
    progress: Arc<Progress>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    // busmq's pushers bound batches in flight per queue themselves; this
    // bounds them the same way for every transport, and per connection.
    let max_in_flight = (args.in_flight * queues).min(args.window);
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
        for queue in 0..queues {
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
            while tickets.len() >= max_in_flight {
                if let Some(done) = tickets.next().await {
                    progress.pushed.fetch_add(done?, Ordering::Relaxed);
                }
            }
            let ticket = producer.push_batch(queue, payload, args.batch).await?;
            tickets.push(ticket);
            while let Some(Some(done)) = tickets.next().now_or_never() {
                progress.pushed.fetch_add(done?, Ordering::Relaxed);
            }
        }
    }
    while let Some(done) = tickets.next().await {
        progress.pushed.fetch_add(done?, Ordering::Relaxed);
    }
    Ok(())
}

async fn consume(
    mut consumer: impl Consumer,
    progress: Arc<Progress>,
    latency: SharedHistogram,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut recorder = Recorder::new(progress.epoch, latency);
    loop {
        let more = tokio::select! {
            more = consumer.next_batch(&mut recorder) => more?,
            _ = stop.cancelled() => break,
        };
        progress
            .consumed
            .fetch_add(recorder.take_count(), Ordering::Relaxed);
        if !more {
            break;
        }
    }
    progress
        .consumed
        .fetch_add(recorder.take_count(), Ordering::Relaxed);
    tokio::time::timeout(ACKS_AT_END, consumer.finish())
        .await
        .map_err(|_| anyhow::anyhow!("acks still unanswered {ACKS_AT_END:?} after the run"))?
}

/// How long a consumer waits, once the run is over, for its acks.
const ACKS_AT_END: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    /// A producer whose batches are confirmed only when `release` fires,
    /// counting the batches it was handed.
    struct Stalled {
        sent: Arc<AtomicU64>,
        release: CancellationToken,
    }

    impl Producer for Stalled {
        async fn push_batch(
            &mut self,
            _queue: usize,
            _payload: Bytes,
            count: usize,
        ) -> anyhow::Result<crate::transport::Ticket> {
            self.sent.fetch_add(1, Ordering::Relaxed);
            let release = self.release.clone();
            Ok(Box::pin(async move {
                release.cancelled().await;
                Ok(count as u64)
            }))
        }
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    /// Batches handed to a producer that confirms none of them, once it
    /// has stopped sending.
    async fn unconfirmed_batches(queues: usize, flags: &[&str]) -> u64 {
        use clap::Parser;
        let args = Cli::try_parse_from(["bench"].iter().chain(flags))
            .expect("parses")
            .bench;
        let progress = Arc::new(Progress {
            epoch: Instant::now(),
            pushed: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
            fanout: 1.0,
        });
        let (sent, release, stop) = (
            Arc::new(AtomicU64::new(0)),
            CancellationToken::new(),
            CancellationToken::new(),
        );
        let producer = Stalled {
            sent: Arc::clone(&sent),
            release: release.clone(),
        };
        let task = tokio::spawn(produce(
            producer,
            queues,
            args,
            Arc::clone(&progress),
            stop.clone(),
        ));
        // Until the count stops moving: the producer is waiting for room.
        let mut seen = u64::MAX;
        while seen != sent.load(Ordering::Relaxed) {
            seen = sent.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.cancel();
        release.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the producer ends once its batches are confirmed")
            .expect("producer task")
            .expect("producer");
        assert_eq!(
            progress.pushed.load(Ordering::Relaxed),
            sent.load(Ordering::Relaxed) * 64,
            "every batch sent is counted once confirmed"
        );
        seen
    }

    #[tokio::test]
    async fn a_producer_keeps_at_most_its_window_in_flight() {
        // 2,500 queues x 8 per queue would be 20,000: the window bounds it.
        assert_eq!(unconfirmed_batches(2_500, &[]).await, 200);
        assert_eq!(unconfirmed_batches(2_500, &["--window", "7"]).await, 7);
        // Few queues: the per-queue bound is the smaller one.
        assert_eq!(unconfirmed_batches(3, &["--in-flight", "2"]).await, 6);
    }

    /// A consumer that receives one batch of two messages, then whose acks
    /// turn out refused.
    struct AcksRefused {
        batches: u32,
    }

    impl Consumer for AcksRefused {
        async fn next_batch(&mut self, recorder: &mut Recorder) -> anyhow::Result<bool> {
            self.batches += 1;
            if self.batches > 1 {
                return Ok(false);
            }
            recorder.record(b"one");
            recorder.record(b"two");
            Ok(true)
        }

        async fn finish(&mut self) -> anyhow::Result<()> {
            anyhow::bail!("lease acks of q refused: 2 lapsed, 0 unknown")
        }
    }

    #[tokio::test]
    async fn a_consumer_whose_acks_were_refused_fails_the_run() {
        let progress = Arc::new(Progress {
            epoch: Instant::now(),
            pushed: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
            fanout: 1.0,
        });
        let outcome = consume(
            AcksRefused { batches: 0 },
            Arc::clone(&progress),
            shared_latency_histogram(),
            CancellationToken::new(),
        )
        .await;
        let err = outcome.expect_err("refused acks fail the consumer");
        assert!(err.to_string().contains("refused"), "{err}");
        assert_eq!(progress.consumed.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn assignment_covers_every_queue() {
        assert_eq!(assign(2, 5), vec![vec![0, 2, 4], vec![1, 3]]);
        assert_eq!(assign(4, 2), vec![vec![0], vec![1], vec![0], vec![1]]);
        assert_eq!(assign(1, 1), vec![vec![0]]);
    }
}
