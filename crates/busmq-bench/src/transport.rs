//! What the workload drives: busmq, or a peer (`--peer`), behind one small
//! interface so every system runs the same producer and consumer loops and
//! the same per-cycle counting.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use busmq_client::{AttachOptions, Bus, Bytes, ConsumeOptions, Pusher, PusherOptions};
use futures::StreamExt;
use futures::future::BoxFuture;
use hdrhistogram::Histogram;

use crate::acking::Acking;
use crate::args::Streams;
use crate::{BenchArgs, Mode};

/// Resolves with the number of messages of one push batch once the system
/// has accepted them (busmq: stored; peers: their own confirmation).
pub type Ticket = BoxFuture<'static, anyhow::Result<u64>>;

/// A system to benchmark.
pub trait Transport: Send + Sync + 'static {
    type Producer: Producer;
    type Consumer: Consumer;

    /// Creates the queues, by name.
    fn prepare(&self, queues: &[String]) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// One producer task's connection, pushing to `queues`.
    fn producer(
        &self,
        queues: Vec<String>,
    ) -> impl Future<Output = anyhow::Result<Self::Producer>> + Send;

    /// One consumer task's connection: consumers covering `queues` (one for
    /// all of them, or one per queue).
    fn consumers(
        &self,
        queues: Vec<String>,
    ) -> impl Future<Output = anyhow::Result<Vec<Self::Consumer>>> + Send;

    /// Removes the queues (best effort).
    fn cleanup(&self, queues: &[String]) -> impl Future<Output = ()> + Send;
}

/// Pushes batches to the queues of one producer task.
pub trait Producer: Send + 'static {
    /// Sends `count` copies of `payload` to the producer's `queue`-th queue.
    /// Returns once the batch is on its way (waiting here is backpressure);
    /// the ticket resolves when the system confirms it.
    fn push_batch(
        &mut self,
        queue: usize,
        payload: Bytes,
        count: usize,
    ) -> impl Future<Output = anyhow::Result<Ticket>> + Send;
}

/// Reads one queue.
pub trait Consumer: Send + 'static {
    /// Waits for the next batch of deliveries, hands each payload to
    /// `recorder` and acknowledges the batch (where the system has acks).
    /// `false` once the queue's stream has ended.
    fn next_batch(
        &mut self,
        recorder: &mut Recorder,
    ) -> impl Future<Output = anyhow::Result<bool>> + Send;

    /// Once the run is over: waits for the acks still on their way and
    /// fails if the system refused any, so a run whose acks did not land
    /// is not reported as consumed.
    fn finish(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send {
        async { Ok(()) }
    }
}

/// A latency histogram the consumers of one connection share: one of this
/// range and precision is about 270 KB, too much to keep per queue at
/// 10,000 queues (it was most of the bench's own memory there).
pub type SharedHistogram = Arc<Mutex<Histogram<u64>>>;

/// Latencies a [`Recorder`] keeps before taking the shared histogram's lock:
/// few enough that what every consumer retains stays small at 10,000
/// queues, enough that the lock is taken rarely.
const PENDING_LATENCIES: usize = 256;

/// Counts deliveries and records their push→delivery latency.
pub struct Recorder {
    epoch: Instant,
    latency: SharedHistogram,
    /// Latencies not yet in `latency`: the lock is taken once per batch,
    /// not per message.
    pending: Vec<u64>,
    /// Deliveries recorded and not yet taken by [`Recorder::take_count`].
    count: u64,
    /// When the current batch arrived (ns since `epoch`): read once, at
    /// its first delivery. Its messages arrived together, and a clock read
    /// per message was a measurable share of the bench's own CPU, which
    /// the system under test shares on a 2-core machine.
    arrived: Option<u64>,
}

impl Recorder {
    pub fn new(epoch: Instant, latency: SharedHistogram) -> Recorder {
        Recorder {
            epoch,
            latency,
            pending: Vec::new(),
            count: 0,
            arrived: None,
        }
    }

    /// One delivery: its first 8 bytes are the push time.
    pub fn record(&mut self, payload: &[u8]) {
        self.count += 1;
        if let Some(sent) = payload.get(..8) {
            let sent = u64::from_le_bytes(sent.try_into().expect("8 bytes"));
            let epoch = self.epoch;
            let now = *self
                .arrived
                .get_or_insert_with(|| epoch.elapsed().as_nanos() as u64);
            self.pending.push(now.saturating_sub(sent));
            if self.pending.len() >= PENDING_LATENCIES {
                self.flush();
            }
        }
    }

    /// Deliveries recorded since the last call; their latencies are in the
    /// shared histogram when it returns. Call once per batch: the next
    /// delivery recorded starts a new batch, with a new arrival time.
    pub fn take_count(&mut self) -> u64 {
        self.arrived = None;
        self.flush();
        std::mem::take(&mut self.count)
    }

    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        // A panic elsewhere while recording leaves counts, not broken state.
        let mut latency = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        for &nanos in &self.pending {
            latency.saturating_record(nanos);
        }
        drop(latency);
        self.pending.clear();
    }
}

/// How long a lease-mode consumer holds a message before it goes back:
/// far longer than a message spends in the bench's client.
const LEASE_VISIBILITY: Duration = Duration::from_secs(60);

/// busmq itself, through its client.
pub struct Busmq {
    url: String,
    mode: Mode,
    streams: Streams,
    prefetch: u32,
    in_flight: usize,
    window: usize,
    setup: Bus,
}

impl Busmq {
    pub async fn connect(url: &str, args: &BenchArgs) -> anyhow::Result<Busmq> {
        let setup = Bus::connect(url)
            .await
            .context("connecting to the broker")?;
        Ok(Busmq {
            url: url.to_owned(),
            mode: args.mode,
            streams: args.streams,
            prefetch: args.prefetch,
            in_flight: args.in_flight,
            window: args.window,
            setup,
        })
    }

    fn consume_options(&self) -> ConsumeOptions {
        let options = match self.mode {
            Mode::Unreliable => ConsumeOptions::default(),
            Mode::Reliable => ConsumeOptions::reliable(),
            Mode::Persistent => ConsumeOptions::persistent(0),
            Mode::Lease => ConsumeOptions::lease(LEASE_VISIBILITY),
        };
        options.prefetch(self.prefetch)
    }
}

impl Transport for Busmq {
    type Producer = BusmqProducer;
    type Consumer = BusmqConsumer;

    async fn prepare(&self, queues: &[String]) -> anyhow::Result<()> {
        for name in queues {
            self.setup
                .queue(name)
                .attach(AttachOptions::default())
                .await?;
        }
        Ok(())
    }

    async fn producer(&self, queues: Vec<String>) -> anyhow::Result<BusmqProducer> {
        let bus = Bus::connect(&self.url).await?;
        let handles: Vec<_> = queues.iter().map(|q| bus.queue(q)).collect();
        let pushers = match self.streams {
            // The workload bounds batches in flight per connection itself.
            Streams::Many => vec![bus.pusher(
                &handles,
                PusherOptions {
                    max_in_flight: (self.in_flight * handles.len()).min(self.window),
                },
            )?],
            Streams::PerQueue => handles
                .iter()
                .map(|q| {
                    q.pusher(PusherOptions {
                        max_in_flight: self.in_flight,
                    })
                })
                .collect(),
        };
        Ok(BusmqProducer { _bus: bus, pushers })
    }

    async fn consumers(&self, queues: Vec<String>) -> anyhow::Result<Vec<BusmqConsumer>> {
        let bus = Bus::connect(&self.url).await?;
        if self.streams == Streams::Many {
            let handles: Vec<_> = queues.iter().map(|q| bus.queue(q)).collect();
            let consumer = bus.consume_many(&handles, self.consume_options()).await?;
            return Ok(vec![BusmqConsumer::Many {
                consumer: Box::new(consumer),
                acking: Acking::for_mode(self.mode),
            }]);
        }
        let mut consumers = Vec::with_capacity(queues.len());
        for q in queues {
            let consumer = bus.queue(&q).consume(self.consume_options()).await?;
            consumers.push(BusmqConsumer::PerQueue {
                consumer: Box::new(consumer),
                acking: Acking::for_mode(self.mode),
            });
        }
        Ok(consumers)
    }

    async fn cleanup(&self, queues: &[String]) {
        for name in queues {
            let _ = self.setup.queue(name).close().await;
        }
    }
}

pub struct BusmqProducer {
    _bus: Bus,
    /// One for every queue, or one per queue.
    pushers: Vec<Pusher>,
}

impl Producer for BusmqProducer {
    async fn push_batch(
        &mut self,
        queue: usize,
        payload: Bytes,
        count: usize,
    ) -> anyhow::Result<Ticket> {
        let batch = std::iter::repeat_n(payload, count);
        let ticket = match self.pushers.as_slice() {
            [one] => one.push_to(queue, batch).await?,
            per_queue => per_queue[queue].push(batch).await?,
        };
        Ok(Box::pin(async move { Ok(ticket.await?.len()) }))
    }
}

pub enum BusmqConsumer {
    /// A stream per queue.
    PerQueue {
        consumer: Box<busmq_client::Consumer>,
        acking: Acking,
    },
    /// One stream for many queues.
    Many {
        consumer: Box<busmq_client::ManyConsumer>,
        acking: Acking,
    },
}

impl Consumer for BusmqConsumer {
    async fn finish(&mut self) -> anyhow::Result<()> {
        match self {
            BusmqConsumer::PerQueue { consumer, acking } => acking.finish(consumer.as_ref()).await,
            BusmqConsumer::Many { consumer, acking } => acking.finish(consumer.as_ref()).await,
        }
    }

    async fn next_batch(&mut self, recorder: &mut Recorder) -> anyhow::Result<bool> {
        // The end of a received batch (nothing more buffered): ack it,
        // pipelined (the consumer goes on while the acks are on their way).
        match self {
            BusmqConsumer::PerQueue { consumer, acking } => loop {
                let Some(delivery) = consumer.next().await else {
                    return Ok(false);
                };
                let delivery = delivery?;
                recorder.record(&delivery.payload);
                acking.note(0, &delivery)?;
                if consumer.buffered_len() == 0 {
                    acking.batch_ended(consumer.as_mut()).await?;
                    return Ok(true);
                }
            },
            BusmqConsumer::Many { consumer, acking } => loop {
                let Some(received) = consumer.next().await else {
                    return Ok(false);
                };
                let received = received?;
                recorder.record(&received.delivery.payload);
                acking.note(received.queue, &received.delivery)?;
                if consumer.buffered_len() == 0 {
                    acking.batch_ended(consumer.as_mut()).await?;
                    return Ok(true);
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use clap::Parser;
    use tokio::sync::mpsc;

    use super::*;

    #[test]
    fn recorder_counts_and_times_payloads() {
        let epoch = Instant::now();
        let shared = crate::workload::shared_latency_histogram();
        let mut recorder = Recorder::new(epoch, Arc::clone(&shared));
        let mut other = Recorder::new(epoch, Arc::clone(&shared));
        recorder.record(&0u64.to_le_bytes());
        recorder.record(b"short");
        other.record(&0u64.to_le_bytes());
        assert_eq!(shared.lock().unwrap().len(), 0, "kept until the batch ends");
        assert_eq!(recorder.take_count(), 2);
        assert_eq!(recorder.take_count(), 0);
        assert_eq!(other.take_count(), 1);
        assert_eq!(
            shared.lock().unwrap().len(),
            2,
            "a payload under 8 bytes has no time"
        );
        for _ in 0..PENDING_LATENCIES {
            other.record(&0u64.to_le_bytes());
        }
        assert_eq!(
            shared.lock().unwrap().len(),
            2 + PENDING_LATENCIES as u64,
            "a long batch is flushed on the way"
        );
        assert_eq!(other.take_count(), PENDING_LATENCIES as u64);
    }

    #[test]
    fn a_batch_arrives_once_and_the_next_batch_later() {
        let epoch = Instant::now();
        let shared = crate::workload::shared_latency_histogram();
        let mut recorder = Recorder::new(epoch, Arc::clone(&shared));
        let pause = std::time::Duration::from_millis(20);
        recorder.record(&0u64.to_le_bytes());
        std::thread::sleep(pause);
        recorder.record(&0u64.to_le_bytes());
        recorder.take_count();
        let first = {
            let h = shared.lock().unwrap();
            assert_eq!(h.len(), 2);
            assert!(
                h.equivalent(h.min(), h.max()),
                "one batch, one arrival time"
            );
            h.max()
        };
        std::thread::sleep(pause);
        recorder.record(&0u64.to_le_bytes());
        recorder.take_count();
        // Both pauses lie between the first batch's arrival and the next's.
        let h = shared.lock().unwrap();
        let later = first + 2 * pause.as_nanos() as u64 * 99 / 100;
        assert!(
            h.max() >= later,
            "the next batch arrived later: {} after {first}",
            h.max()
        );
    }

    /// Queues as in-process channels: the workload loops without a server.
    #[derive(Default)]
    struct Channels {
        queues: Mutex<HashMap<String, Channel>>,
    }

    type Channel = (
        mpsc::UnboundedSender<Bytes>,
        Option<mpsc::UnboundedReceiver<Bytes>>,
    );

    struct ChannelProducer(Vec<mpsc::UnboundedSender<Bytes>>);
    struct ChannelConsumer(mpsc::UnboundedReceiver<Bytes>);

    impl Transport for Channels {
        type Producer = ChannelProducer;
        type Consumer = ChannelConsumer;

        async fn prepare(&self, queues: &[String]) -> anyhow::Result<()> {
            let mut map = self.queues.lock().expect("lock");
            for q in queues {
                let (tx, rx) = mpsc::unbounded_channel();
                map.insert(q.clone(), (tx, Some(rx)));
            }
            Ok(())
        }

        async fn producer(&self, queues: Vec<String>) -> anyhow::Result<ChannelProducer> {
            let map = self.queues.lock().expect("lock");
            Ok(ChannelProducer(
                queues.iter().map(|q| map[q].0.clone()).collect(),
            ))
        }

        async fn consumers(&self, queues: Vec<String>) -> anyhow::Result<Vec<ChannelConsumer>> {
            let mut map = self.queues.lock().expect("lock");
            Ok(queues
                .iter()
                .map(|q| {
                    let rx = map.get_mut(q).and_then(|c| c.1.take());
                    ChannelConsumer(rx.expect("one consumer per queue"))
                })
                .collect())
        }

        async fn cleanup(&self, _queues: &[String]) {}
    }

    impl Producer for ChannelProducer {
        async fn push_batch(
            &mut self,
            queue: usize,
            payload: Bytes,
            count: usize,
        ) -> anyhow::Result<Ticket> {
            for _ in 0..count {
                self.0[queue].send(payload.clone())?;
            }
            Ok(Box::pin(async move { Ok(count as u64) }))
        }
    }

    impl Consumer for ChannelConsumer {
        async fn next_batch(&mut self, recorder: &mut Recorder) -> anyhow::Result<bool> {
            let Some(first) = self.0.recv().await else {
                return Ok(false);
            };
            recorder.record(&first);
            while let Ok(next) = self.0.try_recv() {
                recorder.record(&next);
            }
            Ok(true)
        }
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    #[tokio::test]
    async fn the_workload_drives_any_transport() {
        let args = Cli::try_parse_from([
            "bench",
            "--queues",
            "3",
            "--producers",
            "2",
            "--consumers",
            "2",
            "--duration",
            "1s",
            "--cycle",
            "250ms",
            "--max-backlog",
            "100",
        ])
        .expect("parses")
        .bench;
        args.validate().expect("valid");
        let report = crate::workload::run(&args, Channels::default())
            .await
            .expect("runs");
        assert_eq!(report.cycles.len(), 4);
        assert!(report.pushed > 0);
        assert!(report.drained);
        assert_eq!(
            report.consumed, report.pushed,
            "every message consumed once"
        );
        assert_eq!(report.latency.samples, report.consumed);
    }
}
