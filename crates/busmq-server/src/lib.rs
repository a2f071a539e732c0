//! Process plumbing shared by every busmq server, so each is started,
//! observed and stopped the same way.

mod limits;
pub use limits::LimitsArgs;
pub mod metrics;
pub mod telemetry;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

pub use tonic_health::server::health_reporter;

/// The memory allocator of every busmq binary (each names it as its
/// `#[global_allocator]`). A payload is allocated by the thread that
/// decodes its push and freed by whichever thread drops it last (after
/// delivery, an ack, or a write to disk); glibc's malloc took a tenth of
/// a reliable run's CPU samples. jemalloc rather than mimalloc:
/// both fixed it, but mimalloc kept freed pages of an idle server (10,000
/// idle queues: 165 MiB against jemalloc's 106). See BENCHMARKS.md.
pub type Allocator = tikv_jemallocator::Jemalloc;

/// The value of [`Allocator`] to declare: `#[global_allocator] static
/// ALLOCATOR: busmq_server::Allocator = busmq_server::ALLOCATOR;`.
pub const ALLOCATOR: Allocator = tikv_jemallocator::Jemalloc;

/// How log lines are written: `--log-format` / `BUSMQ_LOG_FORMAT` of every
/// server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For a person reading a terminal or a file.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), in the
/// [`LogFormat`] `BUSMQ_LOG_FORMAT` names (text when unset or unknown).
pub fn init_tracing() {
    let format = std::env::var("BUSMQ_LOG_FORMAT")
        .ok()
        .and_then(|v| clap::ValueEnum::from_str(&v, true).ok())
        .unwrap_or_default();
    init_tracing_as(format);
}

/// [`init_tracing`] in `format`, whatever the environment says.
pub fn init_tracing_as(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    // The filter is the log's own, not the whole subscriber's: the span
    // exporter (`telemetry`) has another.
    let log = match format {
        // Colour only for a person at a terminal, never in log files.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_filter(filter)
            .boxed(),
    };
    // A second init (tests starting several servers) is harmless.
    let _ = tracing_subscriber::registry()
        .with(log)
        .with(telemetry::layer())
        .try_init();
}

/// Exports the spans still buffered before the process exits (see
/// [`telemetry::flush`]); call it after the servers have drained.
pub async fn flush_tracing() {
    telemetry::flush().await;
}

/// One token for the whole process, cancelled on SIGTERM or Ctrl-C. Every
/// server and long-running loop watches it.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested: draining");
        trigger.cancel();
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// gRPC server reflection (`grpc.reflection.v1`) for every busmq contract
/// and for health. Serve [`reflection_v1alpha`] beside it: grpcio-reflection,
/// older grpcurl, Postman and evans speak only the older version.
pub fn reflection_v1() -> tonic_reflection::server::v1::ServerReflectionServer<
    impl tonic_reflection::server::v1::ServerReflection,
> {
    reflection_builder()
        .build_v1()
        .expect("descriptor sets compiled into the binary are valid")
}

/// [`reflection_v1`] in the `grpc.reflection.v1alpha` protocol.
pub fn reflection_v1alpha() -> tonic_reflection::server::v1alpha::ServerReflectionServer<
    impl tonic_reflection::server::v1alpha::ServerReflection,
> {
    reflection_builder()
        .build_v1alpha()
        .expect("descriptor sets compiled into the binary are valid")
}

fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(busmq_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Marks `services` (and the whole server, "") as serving, and flips them to
/// NOT_SERVING as soon as `shutdown` fires, before in-flight work drains, so
/// load balancers stop sending new work first.
pub async fn report_health(
    reporter: HealthReporter,
    services: &[&str],
    shutdown: CancellationToken,
) {
    let names: Vec<String> = std::iter::once("")
        .chain(services.iter().copied())
        .map(str::to_owned)
        .collect();
    for name in &names {
        reporter
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    tokio::spawn(async move {
        shutdown.cancelled().await;
        for name in &names {
            reporter
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
    });
}

/// Binds a TCP listener, naming the address in the error.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// The incoming connections of `listener`, with TCP_NODELAY: small frames
/// of a stream must not wait for Nagle. Each is counted in
/// `busmq_grpc_connections` while open.
pub fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<metrics::CountedStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|conn| {
        let conn = conn?;
        conn.set_nodelay(true)?;
        Ok(metrics::CountedStream::new(conn))
    })
}

/// HTTP/2 flow-control window of one connection to a busmq server.
///
/// A client multiplexes many streams over one connection (a pusher and a
/// consumer per queue: 2,500 each with 10,000 queues over 4 connections).
/// When their request bodies share a small connection window they arrive
/// cut into small DATA frames, and h2 counts the framing overhead of small
/// frames buffered for the application against a budget of half this
/// window: with hyper's 1 MiB default, about 2,000 streams pushing at once
/// exhausted it and the server closed the connection with ENHANCE_YOUR_CALM
/// ("too_many_data_frames"). 32 MiB keeps that budget above what 10,000
/// busy streams use, and bounds what one connection may buffer unread.
pub const CONNECTION_WINDOW_BYTES: u32 = 32 * 1024 * 1024;

/// The gRPC server builder every busmq server starts from: HTTP/2 windows
/// sized for thousands of streams per connection (see
/// [`CONNECTION_WINDOW_BYTES`]).
pub fn grpc_server() -> tonic::transport::Server<
    tower_layer::Stack<
        telemetry::ServerTraceLayer,
        tower_layer::Stack<metrics::GrpcMetricsLayer, tower_layer::Identity>,
    >,
> {
    tonic::transport::Server::builder()
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        // Counts every call by method and status code.
        .layer(metrics::GrpcMetricsLayer)
        .layer(telemetry::ServerTraceLayer)
}

/// How long in-flight work may take to finish after shutdown is requested,
/// before the process exits anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// An optional listener's flag value: an address (`host:port`), or `off`
/// (or empty) for none.
///
/// # Errors
///
/// When `s` is neither.
pub fn parse_listen_or_off(s: &str) -> Result<Option<SocketAddr>, String> {
    let s = s.trim();
    if s.is_empty() || s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| format!("{s:?} is not an address (host:port) nor `off`"))
}
