//! `busmq-storage`: serves a store over the `busmq.storage.v1` gRPC API.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use busmq_storage_server::{self as backend, BackendOptions, BackendSpec, DEFAULT_DATA_DIR};
use clap::Parser;

/// See [`busmq_server::Allocator`].
#[global_allocator]
static ALLOCATOR: busmq_server::Allocator = busmq_server::ALLOCATOR;

/// The busmq storage service: the only process that talks to a store.
/// Brokers reach it over gRPC (busmq.storage.v1), with grpc.health.v1 and
/// server reflection on the same port. Stops gracefully on SIGTERM/Ctrl-C.
#[derive(Debug, Parser)]
#[command(name = "busmq-storage", version, about, long_about)]
struct Args {
    /// Address to listen on for gRPC.
    #[arg(long, env = "BUSMQ_STORAGE_LISTEN", default_value = "0.0.0.0:50052")]
    listen: SocketAddr,

    /// Which store to serve: `embedded` (durable, in --data-dir),
    /// `memory` (lost on exit), or Redis: `redis://[user:pass@]host:6379[/db]`
    /// (`rediss://` for TLS), comma-separated URLs for shards,
    /// `redis+sentinel://s1:26379,s2:26379/<master>` or
    /// `redis+cluster://n1:7000,n2:7001`.
    #[arg(long, env = "BUSMQ_BACKEND", default_value = "embedded")]
    backend: BackendSpec,

    /// Directory of the embedded store, created if missing; one process at
    /// a time.
    #[arg(long, env = "BUSMQ_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,

    #[command(flatten)]
    limits: busmq_server::LimitsArgs,

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
    let shutdown = busmq_server::shutdown_on_signal();
    // Before the store opens, so that its commits are recorded from the
    // first.
    args.metrics
        .serve(
            busmq_server::metrics::STORAGE_METRICS_PORT,
            shutdown.clone(),
        )
        .await?;

    let limits = args.limits.limits();
    let options = BackendOptions {
        data_dir: args.data_dir.clone(),
    };
    let storage = backend::open(&args.backend, &options)
        .await
        .with_context(|| format!("opening storage backend {:?}", args.backend))?;

    let listener = busmq_server::bind(args.listen).await?;
    let addr = listener
        .local_addr()
        .context("reading the listening address")?;
    tracing::info!(backend = ?args.backend, "busmq-storage listening on {addr}");

    let server = busmq_storage::server::serve(listener, storage, limits, shutdown.clone());
    let drain_deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(busmq_server::DRAIN_TIMEOUT).await;
    };
    tokio::select! {
        result = server => result.context("storage gRPC server failed")?,
        () = drain_deadline => {
            tracing::warn!("in-flight calls did not finish within {:?}; exiting anyway",
                busmq_server::DRAIN_TIMEOUT);
        }
    }
    busmq_server::flush_tracing().await;
    tracing::info!("busmq-storage stopped");
    Ok(())
}
