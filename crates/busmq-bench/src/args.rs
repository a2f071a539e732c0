//! What a benchmark run can be told.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// How consumers read their queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Take and remove (at most once).
    Unreliable,
    /// Take, then ack cumulatively after each received batch (at least once).
    Reliable,
    /// Every consumer of a queue reads every message (`remove: false`).
    Persistent,
    /// Lease each message for 60 s, then ack every delivery by its token:
    /// one AckLeases call per queue and received batch.
    Lease,
}

/// How a busmq producer or consumer task talks to its queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Streams {
    /// One stream for all the task's queues: a PushStream to many queues
    /// (`Bus::pusher`), a ConsumeMany stream (`Bus::consume_many`).
    Many,
    /// One stream per queue (`Queue::pusher`, `Queue::consume`).
    PerQueue,
}

/// `busmq bench`: producers and consumers pushing and consuming at once.
#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct BenchArgs {
    /// Benchmark a running broker at this URL instead of starting one in
    /// this process.
    #[arg(long, env = "BUSMQ_SERVER")]
    pub server: Option<String>,
    /// Store of the in-process broker (when no --server): `memory`,
    /// `embedded`, or Redis URLs (see `busmq serve --help`).
    #[arg(long, default_value = "memory")]
    pub storage: String,
    /// Data directory for `--storage embedded` (a fresh temporary one by
    /// default, removed afterwards).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Serve the in-process broker's Prometheus metrics on this address,
    /// as `busmq serve --metrics-listen` does (off by default here, so that
    /// runs compare with those from before metrics; see
    /// `scripts/bench-metrics.sh`).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Producer tasks, each on its own connection.
    #[arg(long, short = 'p', default_value_t = 4)]
    pub producers: usize,
    /// Consumer tasks, each on its own connection.
    #[arg(long, short = 'c', default_value_t = 4)]
    pub consumers: usize,
    /// Queues, spread over producers and consumers.
    #[arg(long, short = 'q', default_value_t = 100)]
    pub queues: usize,
    /// Message size in bytes (at least 8: the push time rides in it).
    #[arg(long, default_value_t = 32)]
    pub size: usize,
    /// Messages per push batch.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Push batches in flight per queue of a producer.
    #[arg(long, default_value_t = 8)]
    pub in_flight: usize,
    /// Push batches in flight per producer connection, over all its queues
    /// (as Kafka's producer bounds requests per connection, not per
    /// partition), so the load offered does not grow with the queue count.
    /// The default is what --in-flight 8 gives 25 queues: 100 queues over 4
    /// producers run as they did before this bound existed.
    #[arg(long, default_value_t = 200)]
    pub window: usize,
    /// Messages the broker may have on the way to each consumer stream
    /// (with `--streams many`: per queue and per frame, a frame carrying at
    /// most 1,024 messages in all).
    #[arg(long, default_value_t = 1024)]
    pub prefetch: u32,
    /// Consume mode.
    #[arg(long, value_enum, default_value_t = Mode::Unreliable)]
    pub mode: Mode,
    /// How each busmq producer and consumer task talks to its queues: all
    /// on one stream (`many`: as a Kafka producer and fetch cover many
    /// partitions; a consume frame carries several queues' messages) or a
    /// stream per queue.
    #[arg(long, value_enum, default_value_t = Streams::Many)]
    pub streams: Streams,
    /// How long producers push.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    #[serde(with = "secs")]
    pub duration: Duration,
    /// Length of one reporting cycle.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    #[serde(with = "secs")]
    pub cycle: Duration,
    /// Offered rate in messages per second over all producers (default: as
    /// fast as the backlog bound allows). Use it for latency at a fixed load.
    /// The batch is not shrunk: messages of a batch share one push time,
    /// and `--batch 1` costs one call per message, which raised latency in
    /// BENCHMARKS.md's runs at 20,000 msg/s.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Producers pause while more than this many messages wait per queue on
    /// average; 0 lets the backlog grow without bound.
    #[arg(long, default_value_t = 2000)]
    pub max_backlog: u64,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Draw per-cycle pushed/s and consumed/s and the latency percentile
    /// curve to this PNG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Run the same workload once per queue count, e.g.
    /// `1,10,100,1000,10000`, each against a fresh broker, and compare
    /// median consumed/s with the 100-queue run (--queues is ignored).
    #[arg(long, value_parser = crate::sweep::parse_queue_counts)]
    pub sweep_queues: Option<crate::sweep::QueueCounts>,
    /// No load: attach this many queues, push one message to each, hold
    /// them for --duration, then close them. For reading what idle queues
    /// cost a server (`scripts/bench-idle-rss.sh`).
    #[arg(long, conflicts_with_all = ["sweep_queues", "peer", "plot"])]
    pub idle_queues: Option<usize>,
    /// With --idle-queues: a consumer waits on every queue too (over
    /// --consumers connections).
    #[arg(long, requires = "idle_queues")]
    pub idle_consumers: bool,
    /// Drive this peer instead of busmq, with the same workload and
    /// reporting (issue 4). Each peer runs its own fixed delivery
    /// semantics; --mode applies to busmq only.
    #[arg(long, value_enum, requires = "peer_url")]
    pub peer: Option<crate::Peer>,
    /// Where the peer listens, e.g. `nats://127.0.0.1:4222`,
    /// `amqp://guest:guest@127.0.0.1:5672/%2f`, `redis://127.0.0.1:6379`.
    #[arg(long)]
    pub peer_url: Option<String>,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

impl BenchArgs {
    /// Refuses combinations that cannot run or would measure nonsense.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.producers >= 1, "--producers must be at least 1");
        anyhow::ensure!(self.consumers >= 1, "--consumers must be at least 1");
        anyhow::ensure!(self.queues >= 1, "--queues must be at least 1");
        anyhow::ensure!(
            self.size >= 8,
            "--size must be at least 8 (the push time rides in it)"
        );
        anyhow::ensure!(self.batch >= 1, "--batch must be at least 1");
        anyhow::ensure!(self.in_flight >= 1, "--in-flight must be at least 1");
        anyhow::ensure!(self.window >= 1, "--window must be at least 1");
        anyhow::ensure!(self.prefetch >= 1, "--prefetch must be at least 1");
        anyhow::ensure!(!self.cycle.is_zero(), "--cycle must be positive");
        anyhow::ensure!(
            self.duration >= self.cycle,
            "--duration must be at least one --cycle"
        );
        anyhow::ensure!(self.rate != Some(0), "--rate must be positive");
        anyhow::ensure!(
            self.idle_queues != Some(0),
            "--idle-queues must be at least 1"
        );
        anyhow::ensure!(
            self.plot.is_none() || self.sweep_queues.is_none(),
            "--plot draws one run: leave it out with --sweep-queues"
        );
        anyhow::ensure!(
            self.peer.is_none() || self.peer_url.is_some(),
            "--peer needs --peer-url"
        );
        anyhow::ensure!(
            self.mode != Mode::Reliable || self.consumers <= self.queues,
            "reliable mode allows one consumer per queue: use --consumers <= --queues"
        );
        Ok(())
    }

    /// The first line of the output: what this run measures.
    pub fn describe(&self, target: &str) -> String {
        let rate = self.rate.map_or("max".to_owned(), |r| format!("{r} msg/s"));
        let backlog = match self.max_backlog {
            0 => "unbounded".to_owned(),
            n => format!("<= {n}/queue"),
        };
        let mode = format!("{:?}", self.mode).to_lowercase();
        let streams = match self.streams {
            Streams::Many => "one stream per task",
            Streams::PerQueue => "one stream per queue",
        };
        format!(
            "busmq bench: {target}; mode {mode} ({streams}), {} producers, {} consumers, {} queues, {} B messages, batch {}, in flight {}/queue and {}/producer, rate {rate}, backlog {backlog}, {:?} in {:?} cycles",
            self.producers,
            self.consumers,
            self.queues,
            self.size,
            self.batch,
            self.in_flight,
            self.window,
            self.duration,
            self.cycle
        )
    }
}
