//! `busmq-http`: the message-queue HTTP API over a busmq broker.

use anyhow::Context;
use busmq_http::Gateway;
use clap::Parser;
use std::net::SocketAddr;
use std::sync::Arc;

/// See [`busmq_server::Allocator`].
#[global_allocator]
static ALLOCATOR: busmq_server::Allocator = busmq_server::ALLOCATOR;

/// The busmq HTTP gateway: the message-queue API (POST /message/new,
/// GET /message/next, POST /message/:id/status/done, and the same under
/// /queues/:name/) over a busmq broker, with /healthz and /readyz.
#[derive(Debug, Parser)]
#[command(name = "busmq-http", version)]
struct Args {
    /// Address to serve HTTP on.
    #[arg(long, env = "BUSMQ_HTTP_LISTEN", default_value = "0.0.0.0:3000")]
    listen: SocketAddr,
    /// The broker to talk to (busmq.v1 gRPC).
    #[arg(long, env = "BUSMQ_SERVER", default_value = busmq_client::DEFAULT_URL)]
    server: String,
    #[command(flatten)]
    gateway: busmq_http::GatewayArgs,
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
    let config = args.gateway.config().map_err(anyhow::Error::msg)?;
    let bus =
        busmq_http::connect(&args.server).with_context(|| format!("broker {}", args.server))?;
    let shutdown = busmq_server::shutdown_on_signal();
    if args
        .metrics
        .serve(busmq_server::metrics::HTTP_METRICS_PORT, shutdown.clone())
        .await
        .context("metrics listener")?
        .is_some()
    {
        busmq_http::observe::describe();
    }
    let gateway = Arc::new(Gateway::new(bus, config, shutdown.clone()));
    let listener = busmq_server::bind(args.listen).await?;
    tracing::info!(
        listen = %listener.local_addr()?,
        server = %args.server,
        "busmq-http serving the message-queue API"
    );
    tokio::select! {
        served = busmq_http::serve(listener, gateway) => served.context("HTTP server failed")?,
        _ = async {
            shutdown.cancelled().await;
            tokio::time::sleep(busmq_server::DRAIN_TIMEOUT).await;
        } => tracing::warn!("in-flight requests did not drain in time; exiting"),
    }
    busmq_server::flush_tracing().await;
    Ok(())
}
