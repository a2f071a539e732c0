//! `busmq serve`: storage, broker and the HTTP gateway in one process,
//! sharing one store.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use busmq_broker::BrokerConfig;
use busmq_storage_server::{self as backend, BackendOptions};
use tokio_util::sync::CancellationToken;

use crate::ServeArgs;

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.prefetch >= 1, "--prefetch must be at least 1");
    anyhow::ensure!(
        args.reliable_lease_ms >= 300,
        "--reliable-lease-ms must be at least 300"
    );
    let limits = args.limits.limits();
    let config = BrokerConfig {
        limits,
        default_prefetch: args.prefetch,
        reliable_lease: Duration::from_millis(args.reliable_lease_ms),
    };

    let http_config = args.http.config().map_err(anyhow::Error::msg)?;

    let shutdown = busmq_server::shutdown_on_signal();
    // Before the store opens, so that its commits are recorded from the
    // first.
    let metrics = args
        .metrics
        .serve(busmq_server::metrics::BROKER_METRICS_PORT, shutdown.clone())
        .await?;
    if metrics.is_some() {
        busmq_http::observe::describe();
    }
    let options = BackendOptions {
        data_dir: args.data_dir.clone(),
    };
    let storage = backend::open(&args.storage, &options)
        .await
        .with_context(|| format!("opening storage backend {:?}", args.storage))?;
    let storage_listener = busmq_server::bind(args.storage_listen).await?;
    let broker_listener = busmq_server::bind(args.listen).await?;
    let http_listener = match args.http_listen.0 {
        Some(addr) => Some(busmq_server::bind(addr).await?),
        None => None,
    };
    tracing::info!(backend = ?args.storage, "store opened");
    tracing::info!(
        listen = %storage_listener.local_addr()?,
        "storage gRPC (busmq.storage.v1) listening"
    );
    tracing::info!(
        listen = %broker_listener.local_addr()?,
        "broker gRPC (busmq.v1) listening"
    );

    let storage_server = supervise(
        "storage",
        busmq_storage::server::serve(
            storage_listener,
            Arc::clone(&storage),
            limits,
            shutdown.clone(),
        ),
        shutdown.clone(),
    );
    let http_server = match http_listener {
        Some(listener) => {
            // The gateway is the broker's client like any other, over
            // loopback: it keeps no semantics of its own to share.
            let broker_url = format!("http://{}", loopback(broker_listener.local_addr()?));
            let bus = busmq_http::connect(&broker_url)?;
            tracing::info!(
                listen = %listener.local_addr()?,
                "HTTP gateway listening"
            );
            let gateway = Arc::new(busmq_http::Gateway::new(bus, http_config, shutdown.clone()));
            Some(supervise(
                "http",
                busmq_http::serve(listener, gateway),
                shutdown.clone(),
            ))
        }
        None => None,
    };
    let broker_server = supervise(
        "broker",
        busmq_broker::serve(broker_listener, storage, config, shutdown.clone()),
        shutdown.clone(),
    );
    let servers = async {
        let http = async {
            match http_server {
                Some(server) => server.await,
                None => Ok(()),
            }
        };
        let (storage, broker, http) = tokio::join!(storage_server, broker_server, http);
        storage.and(broker).and(http)
    };
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(busmq_server::DRAIN_TIMEOUT).await;
    };
    tokio::select! {
        served = servers => served?,
        _ = deadline => tracing::warn!(
            "in-flight work did not finish within {:?}; exiting anyway",
            busmq_server::DRAIN_TIMEOUT
        ),
    }
    tracing::info!("busmq stopped");
    Ok(())
}

/// The address to reach a server bound to `addr` from this host: the
/// loopback address of its family when it listens on every address.
fn loopback(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// Runs one server on its own task. When it stops, for whatever reason, the
/// whole process shuts down: a bus with half its services is worse than
/// none.
async fn supervise<F, E>(
    name: &'static str,
    server: F,
    shutdown: CancellationToken,
) -> anyhow::Result<()>
where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    let outcome = tokio::spawn(server).await;
    if !shutdown.is_cancelled() {
        tracing::error!("{name} server stopped unexpectedly; shutting down");
        shutdown.cancel();
    }
    outcome
        .with_context(|| format!("{name} server crashed"))?
        .with_context(|| format!("{name} server failed"))
}
