//! Distributed tracing: OpenTelemetry export over OTLP/gRPC and W3C trace
//! context across every busmq hop. See `docs/tracing.md`.
//!
//! Export is on only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set. When it is off, no
//! OpenTelemetry layer is installed, [`enabled`] is false, and nothing here
//! extracts, parses or formats a trace context: the busmq spans are at
//! DEBUG, which the default `RUST_LOG` filter disables at their callsite.
//! When it is on, the spans go to the exporter through a filter of their
//! own (`BUSMQ_TRACE_FILTER`, default [`DEFAULT_TRACE_FILTER`]), so DEBUG
//! spans are exported without DEBUG logs being printed.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures::FutureExt;
use futures::future::Map;
use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Span;

use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::FilterExt;
use tracing_subscriber::registry::LookupSpan;

mod sampling;

pub use sampling::{RootSpan, Rooted};

/// What is exported when `BUSMQ_TRACE_FILTER` is unset: busmq's own spans
/// down to DEBUG (one per RPC, batch or storage operation), everything
/// else from INFO. OpenTelemetry's own events stay out, so an export never
/// records spans about itself.
pub const DEFAULT_TRACE_FILTER: &str = "info,busmq_server=debug,busmq_broker=debug,\
    busmq_storage=debug,busmq_storage_server=debug,busmq_client=debug,busmq_cli=debug,busmq_http=debug,\
    opentelemetry=off,opentelemetry_sdk=off,opentelemetry_otlp=off";

/// The longest [`flush`] waits for the last spans to leave.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

static ENABLED: AtomicBool = AtomicBool::new(false);
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether spans are exported: the one check every hop makes before it
/// touches a trace context.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

fn configured() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let is = |name: &str, value: &str| {
        std::env::var(name).is_ok_and(|v| v.trim().eq_ignore_ascii_case(value))
    };
    (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        && !is("OTEL_SDK_DISABLED", "true")
        && !is("OTEL_TRACES_EXPORTER", "none")
}

/// The `service.name` of this process when `OTEL_SERVICE_NAME` does not
/// give one: the binary's name (`busmq-broker`, `busmq-storage`, `busmq`),
/// so each process of a split deployment is told apart without setup.
fn default_service_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "busmq".to_owned())
}

/// The layer that exports spans, or `None` (nothing installed) when no
/// OTLP endpoint is configured or the exporter cannot be built. Must be
/// called within a Tokio runtime: the batch processor runs on it.
pub(crate) fn layer<S>() -> Option<impl tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    if !configured() || PROVIDER.get().is_some() {
        return None;
    }
    if tokio::runtime::Handle::try_current().is_err() {
        eprintln!("busmq: OTLP export needs a Tokio runtime; traces are off");
        return None;
    }
    let exporter = match opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
    {
        Ok(exporter) => exporter,
        Err(e) => {
            eprintln!("busmq: cannot export traces over OTLP ({e}); traces are off");
            return None;
        }
    };
    // On the runtime rather than the SDK's own thread: the tonic exporter
    // needs the runtime's reactor, and the process already has one.
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(default_service_name());
    }
    // OTEL_TRACES_SAMPLER(_ARG) are read by busmq, which samples its roots
    // before building them (see `sampling`).
    let policy = sampling::Policy::from_env();
    sampling::install(policy);
    let provider = SdkTracerProvider::builder()
        .with_sampler(policy.sdk_sampler())
        .with_span_processor(processor)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("busmq");
    if PROVIDER.set(provider).is_err() {
        return None;
    }
    let filter = std::env::var("BUSMQ_TRACE_FILTER")
        .ok()
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(DEFAULT_TRACE_FILTER));
    // No span at all under a root that was not kept.
    let unsuppressed = tracing_subscriber::filter::filter_fn(|_| !sampling::suppressed());
    ENABLED.store(true, Ordering::Relaxed);
    Some(
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(filter.and(unsuppressed)),
    )
}

/// Exports the spans still buffered and stops the exporter; waits at most
/// [`FLUSH_TIMEOUT`]. Call once, after the servers have drained, so the
/// spans of the last requests are not lost. Does nothing when export is
/// off.
pub async fn flush() {
    let Some(provider) = PROVIDER.get().cloned() else {
        return;
    };
    ENABLED.store(false, Ordering::Relaxed);
    // The SDK blocks its caller until the batch task, on this runtime, has
    // exported: off the runtime's own threads.
    let shutdown = tokio::task::spawn_blocking(move || provider.shutdown());
    match tokio::time::timeout(FLUSH_TIMEOUT, shutdown).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "exporting the last spans failed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "exporting the last spans failed"),
        Err(_) => tracing::warn!("the last spans were not exported within {FLUSH_TIMEOUT:?}"),
    }
}

static PROPAGATOR: OnceLock<TraceContextPropagator> = OnceLock::new();

fn propagator() -> &'static TraceContextPropagator {
    PROPAGATOR.get_or_init(TraceContextPropagator::new)
}

/// The OpenTelemetry context of the current `tracing` span, when export is
/// on and the span belongs to a trace.
fn current_context() -> Option<Context> {
    if !enabled() || sampling::suppressed() {
        return None;
    }
    let span = Span::current();
    if span.is_none() {
        return None;
    }
    let cx = span.context();
    cx.span().span_context().is_valid().then_some(cx)
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Writes the current span's `traceparent` (and `tracestate`, if any)
/// into `headers`; does nothing when export is off or there is no trace.
pub fn inject_headers(headers: &mut HeaderMap) {
    if let Some(cx) = current_context() {
        propagator().inject_context(&cx, &mut HeaderInjector(headers));
    }
}

/// Makes `span` a child of the trace context `headers` carry, if any. Only
/// when export is on: otherwise the headers are not even looked up.
pub fn set_parent_from_headers(span: &Span, headers: &HeaderMap) {
    if !enabled() || span.is_disabled() || !headers.contains_key("traceparent") {
        return;
    }
    let cx = propagator().extract(&HeaderExtractor(headers));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// A W3C trace context as two strings, for a protocol that carries it in
/// its own frames rather than in gRPC metadata (the storage `Session`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TraceParent {
    /// `version-traceid-spanid-flags`; empty for none.
    pub traceparent: String,
    /// Vendor state; usually empty.
    pub tracestate: String,
}

impl Injector for TraceParent {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "traceparent" => self.traceparent = value,
            "tracestate" => self.tracestate = value,
            _ => {}
        }
    }
}

impl Extractor for TraceParent {
    fn get(&self, key: &str) -> Option<&str> {
        let value = match key {
            "traceparent" => &self.traceparent,
            "tracestate" => &self.tracestate,
            _ => return None,
        };
        (!value.is_empty()).then_some(value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// The current span's trace context, formatted; `None` (nothing formatted)
/// when export is off or there is no trace.
pub fn current_trace_parent() -> Option<TraceParent> {
    let cx = current_context()?;
    let mut carrier = TraceParent::default();
    propagator().inject_context(&cx, &mut carrier);
    Some(carrier)
}

/// Makes `span` a child of the context `traceparent`/`tracestate` name.
/// Nothing is parsed when export is off or `traceparent` is empty.
pub fn set_parent_from(span: &Span, traceparent: &str, tracestate: &str) {
    if !enabled() || traceparent.is_empty() || span.is_disabled() {
        return;
    }
    let carrier = TraceParent {
        traceparent: traceparent.to_owned(),
        tracestate: tracestate.to_owned(),
    };
    let cx = propagator().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// A tower layer for a gRPC server (every busmq server has it through
/// `grpc_server()`, and so will a gateway's): one `grpc` span per request,
/// named `package.Service/Method`, the child of the `traceparent` the
/// caller sent when export is on. The service's own span for the call is a
/// child of it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerTraceLayer;

impl<S> Layer<S> for ServerTraceLayer {
    type Service = ServerTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerTrace { inner }
    }
}

/// The service [`ServerTraceLayer`] makes.
#[derive(Debug, Clone)]
pub struct ServerTrace<S> {
    inner: S,
}

/// What reads a response's status on its way out.
type Recorder<R, E> = fn(Result<R, E>) -> Result<R, E>;

type Recorded<F, R, E> = Rooted<Map<F, Recorder<R, E>>>;

impl<S, B, R> Service<http::Request<B>> for ServerTrace<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Recorded<S::Future, S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let root = server_root(&request);
        let future = root.span().in_scope(|| self.inner.call(request));
        let record: Recorder<S::Response, S::Error> = record_status::<R, S::Error>;
        root.wrap(future.map(record))
    }
}

fn server_root<B>(request: &http::Request<B>) -> RootSpan {
    let path = request.uri().path();
    RootSpan::for_request(request.headers(), || server_span(path))
}

fn server_span(path: &str) -> Span {
    let name = path.strip_prefix('/').unwrap_or(path);
    let (service, method) = name.split_once('/').unwrap_or((name, ""));
    tracing::debug_span!(
        "grpc",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
        messaging.destination.name = tracing::field::Empty,
        messaging.batch.message_count = tracing::field::Empty,
        busmq.object = tracing::field::Empty,
    )
}

// The handlers of every busmq service name what they serve on the request
// span above with these. The level check first: with the default filter
// and no exporter the span is disabled, and even looking up the current
// span is not worth its cost then.

/// Names the queue (or pub/sub channel) of the request being served.
#[inline]
pub fn record_queue(name: &str) {
    if tracing::level_enabled!(tracing::Level::DEBUG) {
        Span::current().record("messaging.destination.name", name);
    }
}

/// Counts the messages of the batch being served.
#[inline]
pub fn record_batch(len: usize) {
    if tracing::level_enabled!(tracing::Level::DEBUG) {
        Span::current().record("messaging.batch.message_count", len as u64);
    }
}

/// Names the persistable object of the request being served.
#[inline]
pub fn record_object(name: &str) {
    if tracing::level_enabled!(tracing::Level::DEBUG) {
        Span::current().record("busmq.object", name);
    }
}

/// Marks the request span failed when the answer is a gRPC error sent
/// before any message (in the headers: what a failed unary call is); a
/// status in the trailers of a stream is not seen here.
fn record_status<R, E>(result: Result<http::Response<R>, E>) -> Result<http::Response<R>, E> {
    if let Ok(response) = &result {
        let code = response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok());
        if let Some(code) = code {
            let span = Span::current();
            span.record("rpc.grpc.status_code", code);
            if code != 0 {
                span.record("otel.status_code", "ERROR");
            }
        }
    }
    result
}

/// A tower layer for a gRPC channel to another busmq service (the broker's
/// to storage): every request carries the current span's `traceparent`
/// when export is on.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientTraceLayer;

impl<S> Layer<S> for ClientTraceLayer {
    type Service = ClientTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientTrace { inner }
    }
}

/// The service [`ClientTraceLayer`] makes.
#[derive(Debug, Clone)]
pub struct ClientTrace<S> {
    inner: S,
}

impl<S> ClientTrace<S> {
    /// `inner` (a tonic channel), its requests carrying the trace context.
    pub fn new(inner: S) -> Self {
        ClientTrace { inner }
    }
}

impl<S, B> Service<http::Request<B>> for ClientTrace<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        inject_headers(request.headers_mut());
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_parent_round_trips_through_a_frame_carrier() {
        let carrier = TraceParent {
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            tracestate: "congo=t61rcWkgMzE".into(),
        };
        let cx = propagator().extract(&carrier);
        let sc = cx.span().span_context().clone();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        let mut again = TraceParent::default();
        propagator().inject_context(&cx, &mut again);
        assert_eq!(again, carrier);
    }

    #[test]
    fn nothing_is_injected_or_extracted_when_export_is_off() {
        assert!(!enabled());
        assert_eq!(current_trace_parent(), None);
        let mut headers = HeaderMap::new();
        inject_headers(&mut headers);
        assert!(headers.is_empty());
    }
}
