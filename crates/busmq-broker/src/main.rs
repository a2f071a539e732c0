//! `busmq-broker`: the bus semantics as a gRPC service over a store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use busmq_broker::BrokerConfig;
use busmq_storage::Storage;
use busmq_storage::memory::MemoryStorage;
use busmq_storage::remote::RemoteStorage;
use clap::Parser;

/// See [`busmq_server::Allocator`].
#[global_allocator]
static ALLOCATOR: busmq_server::Allocator = busmq_server::ALLOCATOR;

/// The busmq broker: queues, consume modes and acks over gRPC (busmq.v1).
///
/// Stateless: every queue lives in the store, so run as many brokers as you
/// like against one storage service.
#[derive(Debug, Parser)]
#[command(name = "busmq-broker", version)]
struct Args {
    /// Address to serve busmq.v1 gRPC on.
    #[arg(long, env = "BUSMQ_BROKER_LISTEN", default_value = "0.0.0.0:50051")]
    listen: SocketAddr,
    /// Where queues live: `memory` (in this process, lost on exit) or the
    /// URL of a busmq-storage service, e.g. `http://127.0.0.1:50052`.
    #[arg(long, env = "BUSMQ_STORAGE", default_value = "http://127.0.0.1:50052")]
    storage: String,
    #[command(flatten)]
    limits: busmq_server::LimitsArgs,
    /// Messages in flight to a consumer that names no prefetch.
    #[arg(long, env = "BUSMQ_PREFETCH", default_value_t = BrokerConfig::default().default_prefetch)]
    prefetch: u32,
    /// Milliseconds a reliable consumer's lock outlives a crashed broker.
    #[arg(long, env = "BUSMQ_RELIABLE_LEASE_MS", default_value_t = 5000)]
    reliable_lease_ms: u64,
    #[command(flatten)]
    metrics: busmq_server::metrics::MetricsArgs,
    /// Log lines as `text` or `json` (one object per line); `RUST_LOG`
    /// filters them.
    #[arg(long, env = "BUSMQ_LOG_FORMAT", value_enum, default_value_t)]
    log_format: busmq_server::LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    busmq_server::init_tracing_as(args.log_format);
    let limits = args.limits.limits();
    anyhow::ensure!(args.prefetch >= 1, "--prefetch must be at least 1");
    anyhow::ensure!(
        args.reliable_lease_ms >= 300,
        "--reliable-lease-ms must be at least 300"
    );
    let config = BrokerConfig {
        limits,
        default_prefetch: args.prefetch,
        reliable_lease: Duration::from_millis(args.reliable_lease_ms),
    };
    let storage: Arc<dyn Storage> = if args.storage == "memory" {
        Arc::new(MemoryStorage::new())
    } else {
        Arc::new(
            RemoteStorage::connect_lazy(&args.storage)
                .with_context(|| format!("storage {}", args.storage))?,
        )
    };
    let shutdown = busmq_server::shutdown_on_signal();
    args.metrics
        .serve(busmq_server::metrics::BROKER_METRICS_PORT, shutdown.clone())
        .await?;
    let listener = busmq_server::bind(args.listen).await?;
    tracing::info!(
        listen = %listener.local_addr()?,
        storage = %args.storage,
        "busmq-broker serving busmq.v1"
    );
    let server = busmq_broker::serve(listener, storage, config, shutdown.clone());
    tokio::select! {
        served = server => served.context("broker server failed")?,
        _ = async {
            shutdown.cancelled().await;
            tokio::time::sleep(busmq_server::DRAIN_TIMEOUT).await;
        } => tracing::warn!("in-flight work did not drain in time; exiting"),
    }
    busmq_server::flush_tracing().await;
    Ok(())
}
