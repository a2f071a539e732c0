//! `busmq-http`: the message-queue HTTP API over a busmq broker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use busmq_client::{Bus, Reconnect};
use busmq_http::{Config, Gateway};
use clap::Parser;

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
    /// Seconds a message from GET /message/next stays leased before it goes
    /// back to the front of its queue (fractions allowed, up to 12 hours).
    #[arg(long, env = "BUSMQ_HTTP_VISIBILITY_TIMEOUT", default_value_t = 30.0)]
    visibility_timeout: f64,
    /// The queue of the routes without /queues/:name.
    #[arg(long, env = "BUSMQ_HTTP_DEFAULT_QUEUE", default_value = "default")]
    default_queue: String,
    /// Largest request body in bytes (413 above).
    #[arg(long, env = "BUSMQ_HTTP_MAX_BODY_BYTES", default_value_t = busmq_http::DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Most leases tracked at once for dones that name only an id; GET
    /// /message/next answers 503 while that many are outstanding.
    #[arg(long, env = "BUSMQ_HTTP_MAX_LEASES", default_value_t = busmq_http::DEFAULT_MAX_LEASES)]
    max_leases: usize,
    /// A bearer token every request but /healthz and /readyz must carry
    /// (`Authorization: Bearer <token>`); none by default. Prefer the
    /// environment variable: a flag shows in the process list.
    #[arg(long, env = "BUSMQ_HTTP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(flatten)]
    metrics: busmq_server::metrics::MetricsArgs,
    /// Log lines as `text` or `json` (one object per line); `RUST_LOG`
    /// filters them.
    #[arg(long, env = "BUSMQ_LOG_FORMAT", value_enum, default_value_t)]
    log_format: busmq_server::LogFormat,
}

fn visibility(seconds: f64) -> anyhow::Result<Duration> {
    anyhow::ensure!(
        (0.001..=12.0 * 3600.0).contains(&seconds),
        "--visibility-timeout must be from 0.001 to 43200 seconds, not {seconds}"
    );
    Ok(Duration::from_secs_f64(seconds))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    busmq_server::init_tracing_as(args.log_format);
    anyhow::ensure!(
        args.max_body_bytes >= 1,
        "--max-body-bytes must be at least 1"
    );
    anyhow::ensure!(args.max_leases >= 1, "--max-leases must be at least 1");
    let config = Config {
        visibility_timeout: visibility(args.visibility_timeout)?,
        default_queue: args.default_queue,
        max_body_bytes: args.max_body_bytes,
        max_leases: args.max_leases,
        token: busmq_http::auth::Token::new(args.token.as_deref()),
    };
    // Lazy: the gateway starts (and /healthz answers) while the broker is
    // still down, and each request says so with a 503 until it is up.
    // No stream reconnects: a request whose broker went away answers 503
    // now rather than after the SDK's retry window.
    let bus = Bus::connect_lazy(&args.server)
        .with_context(|| format!("broker {}", args.server))?
        .reconnect(Reconnect {
            enabled: false,
            give_up_after: Duration::ZERO,
        });
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
