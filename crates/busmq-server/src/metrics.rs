//! Prometheus metrics of every busmq server: the exporter and its admin
//! HTTP port (`GET /metrics`), the per-queue series and their label cap,
//! the gRPC request layer and the connection gauge. `docs/metrics.md`
//! lists every series.
//!
//! Everything records through the `metrics` facade. Until [`serve`]
//! installs the Prometheus recorder, each handle is a no-op, and the hot
//! paths check [`enabled`] before they even read the clock: metrics off
//! costs a relaxed atomic load per batch.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use busmq_core::QueueName;
use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

/// How many queues get series of their own by default
/// (`--metrics-max-queues`); later ones are counted under [`OTHER_QUEUE`].
pub const DEFAULT_MAX_QUEUES: usize = 100;

/// The `queue` label of every queue beyond the cap.
pub const OTHER_QUEUE: &str = "other";

/// How often histograms are folded and sampled gauges refreshed.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Bucket bounds of every `_seconds` histogram: from a memory-store
/// operation (tens of µs) to a stalled disk or Redis (seconds).
const SECONDS_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// Distinct gRPC paths with series of their own; any path beyond (only a
/// client calling made-up methods gets there) counts as `other`.
const MAX_GRPC_PATHS: usize = 256;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether this process exports metrics: false until [`serve`] installed
/// the recorder.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The clock reading a duration histogram starts from; `None` (and no
/// clock read) when metrics are off.
#[inline]
pub fn start_timer() -> Option<Instant> {
    enabled().then(Instant::now)
}

/// Records the time since `started` (from [`start_timer`]) in `histogram`.
#[inline]
pub fn observe_since(histogram: &Histogram, started: Option<Instant>) {
    if let Some(started) = started {
        histogram.record(started.elapsed().as_secs_f64());
    }
}

/// The value of `--metrics-listen`: an address, or none (`off` or empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsListen(pub Option<SocketAddr>);

impl FromStr for MetricsListen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        crate::parse_listen_or_off(s).map(MetricsListen)
    }
}

/// The admin port of `busmq-broker` and `busmq serve`.
pub const BROKER_METRICS_PORT: u16 = 9101;

/// The admin port of `busmq-storage`.
pub const STORAGE_METRICS_PORT: u16 = 9102;

/// The admin port of `busmq-http`.
pub const HTTP_METRICS_PORT: u16 = 9103;

/// The metrics flags of every server.
#[derive(Debug, Clone, clap::Args)]
pub struct MetricsArgs {
    /// Admin HTTP address serving Prometheus `GET /metrics` [default:
    /// 0.0.0.0:9101 on busmq-broker and busmq serve, 0.0.0.0:9102 on
    /// busmq-storage]. `off` or an empty value disables it (and all
    /// recording).
    #[arg(long, env = "BUSMQ_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<MetricsListen>,
    /// Queues with series of their own (`queue` label); every later queue
    /// is counted under queue="other", so many queues never mean many
    /// series.
    #[arg(long, env = "BUSMQ_METRICS_MAX_QUEUES", default_value_t = DEFAULT_MAX_QUEUES)]
    pub metrics_max_queues: usize,
}

impl MetricsArgs {
    /// Where to listen: the flag, else `0.0.0.0:default_port`. An empty
    /// `BUSMQ_METRICS_LISTEN` (which the flag parser reads as unset) is
    /// off.
    pub fn listen(&self, default_port: u16) -> MetricsListen {
        match self.metrics_listen {
            Some(listen) => listen,
            None if std::env::var_os("BUSMQ_METRICS_LISTEN").is_some_and(|v| v.is_empty()) => {
                MetricsListen(None)
            }
            None => MetricsListen(Some(SocketAddr::from(([0, 0, 0, 0], default_port)))),
        }
    }

    /// [`serve`] as these flags say, on `default_port` unless they name
    /// another address.
    ///
    /// # Errors
    ///
    /// As [`serve`].
    pub async fn serve(
        &self,
        default_port: u16,
        shutdown: CancellationToken,
    ) -> std::io::Result<Option<SocketAddr>> {
        serve(self.listen(default_port), self.metrics_max_queues, shutdown).await
    }
}

/// Installs the Prometheus recorder for the whole process, with queues
/// beyond the first `max_queues` under [`OTHER_QUEUE`], and serves
/// `GET /metrics` on `listen` until `shutdown`. Returns the address bound
/// (port 0 picks one), or `None` when `listen` is off: then nothing is
/// recorded at all.
///
/// # Errors
///
/// When the address cannot be bound, or a recorder is installed already.
pub async fn serve(
    listen: MetricsListen,
    max_queues: usize,
    shutdown: CancellationToken,
) -> std::io::Result<Option<SocketAddr>> {
    let Some(addr) = listen.0 else {
        return Ok(None);
    };
    let listener = crate::bind(addr).await?;
    let local = listener.local_addr()?;
    let recorder = PrometheusBuilder::new()
        .set_buckets(&SECONDS_BUCKETS)
        .expect("the bucket list is not empty")
        .build_recorder();
    let handle = recorder.handle();
    let _ = HANDLE.set(handle.clone());
    metrics::set_global_recorder(recorder).map_err(|_| {
        std::io::Error::other("a metrics recorder is installed already in this process")
    })?;
    QUEUES
        .set(RwLock::new(Queues::new(max_queues)))
        .map_err(|_| std::io::Error::other("metrics are served twice in one process"))?;
    describe();
    ENABLED.store(true, Ordering::Relaxed);
    PROCESS_START.get_or_init(wall_clock_seconds);

    let upkeep = handle.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => upkeep.run_upkeep(),
            }
        }
    });
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move { scrape(&handle) }
        }),
    );
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "metrics listener failed");
        }
    });
    tracing::info!("metrics on http://{local}/metrics");
    Ok(Some(local))
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The `GET /metrics` answer of this process, for a gateway that serves it
/// on its own port too; `None` when metrics are off.
pub fn exposition() -> Option<axum::response::Response> {
    use axum::response::IntoResponse;
    enabled().then(|| HANDLE.get().map(|h| scrape(h).into_response()))?
}

fn scrape(handle: &PrometheusHandle) -> impl axum::response::IntoResponse + use<> {
    let mut body = handle.render();
    process_metrics(&mut body);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "busmq_messages_pushed_total",
        "Messages a broker stored by push, per queue."
    );
    describe_counter!(
        "busmq_messages_delivered_total",
        "Messages a broker sent to consumers, per queue and consume mode."
    );
    describe_counter!(
        "busmq_redeliveries_total",
        "Deliveries of a message that was delivered before (lease attempts after the first, reliable messages put back)."
    );
    describe_counter!(
        "busmq_dead_lettered_total",
        "Messages moved to their queue's dead-letter queue, by the process holding the store."
    );
    describe_gauge!(
        "busmq_queue_depth",
        "Messages waiting in the queue: stored, neither pending nor leased (sampled)."
    );
    describe_gauge!(
        "busmq_queue_pending",
        "Messages delivered and not acked yet: reliable pending plus leased (sampled)."
    );
    describe_gauge!(
        "busmq_queue_consumers",
        "Consumers this broker is serving the queue to."
    );
    describe_histogram!(
        "busmq_push_duration_seconds",
        Unit::Seconds,
        "Time a broker waits for the store to take one push batch (durable when the store is)."
    );
    describe_histogram!(
        "busmq_take_duration_seconds",
        Unit::Seconds,
        "Time a broker waits for the store to answer one consumer fetch, by consume mode."
    );
    describe_histogram!(
        "busmq_take_many_duration_seconds",
        Unit::Seconds,
        "Time a broker waits for the store to answer one ConsumeMany take across queues."
    );
    describe_histogram!(
        "busmq_store_commit_duration_seconds",
        Unit::Seconds,
        "One commit of the store: an embedded group commit with its fsync, or one Redis script round trip."
    );
    describe_counter!(
        "busmq_storage_operations_total",
        "Operations the storage service ran for brokers, by operation."
    );
    describe_histogram!(
        "busmq_storage_operation_duration_seconds",
        Unit::Seconds,
        "Time the storage service took to run one operation, by operation."
    );
    describe_counter!(
        "busmq_grpc_requests_total",
        "gRPC calls finished, by service, method and status code."
    );
    describe_gauge!(
        "busmq_grpc_connections",
        "Open client connections to this process's gRPC servers."
    );
}

/// How a consumer reads a queue, as its `mode` label says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    /// Take and remove.
    Unreliable,
    /// Take into pending under the reliable lock.
    Reliable,
    /// Read from an index, removing nothing.
    Persistent,
    /// Lease for a visibility timeout.
    Lease,
}

impl DeliveryMode {
    /// Every mode, in the order of their numbers.
    pub const ALL: [DeliveryMode; 4] = [
        DeliveryMode::Unreliable,
        DeliveryMode::Reliable,
        DeliveryMode::Persistent,
        DeliveryMode::Lease,
    ];

    /// The `mode` label.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryMode::Unreliable => "unreliable",
            DeliveryMode::Reliable => "reliable",
            DeliveryMode::Persistent => "persistent",
            DeliveryMode::Lease => "lease",
        }
    }
}

/// The series of one `queue` label: a queue of its own, or every queue
/// beyond the cap. Each handle is made once per label, on first use (so a
/// process shows only the series it records: a storage process the dead
/// letters, a broker the pushes and deliveries), and recording is then an
/// atomic add, never a lookup.
#[derive(Debug)]
pub struct QueueMetrics {
    label: Arc<str>,
    pushed: OnceLock<Counter>,
    delivered: [OnceLock<Counter>; 4],
    redeliveries: OnceLock<Counter>,
    dead_lettered: OnceLock<Counter>,
    consumers: OnceLock<Gauge>,
    depth: OnceLock<Gauge>,
    pending: OnceLock<Gauge>,
}

impl QueueMetrics {
    fn new(label: &str) -> Self {
        QueueMetrics {
            label: Arc::from(label),
            pushed: OnceLock::new(),
            delivered: Default::default(),
            redeliveries: OnceLock::new(),
            dead_lettered: OnceLock::new(),
            consumers: OnceLock::new(),
            depth: OnceLock::new(),
            pending: OnceLock::new(),
        }
    }

    fn counter<'a>(&self, cell: &'a OnceLock<Counter>, name: &'static str) -> &'a Counter {
        cell.get_or_init(|| metrics::counter!(name, "queue" => self.label.to_string()))
    }

    fn gauge<'a>(&self, cell: &'a OnceLock<Gauge>, name: &'static str) -> &'a Gauge {
        cell.get_or_init(|| metrics::gauge!(name, "queue" => self.label.to_string()))
    }

    /// The `queue` label: the queue's name, or [`OTHER_QUEUE`].
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Whether these are the shared series of the queues beyond the cap.
    pub fn is_other(&self) -> bool {
        &*self.label == OTHER_QUEUE
    }

    /// `busmq_messages_pushed_total`.
    pub fn pushed(&self) -> &Counter {
        self.counter(&self.pushed, "busmq_messages_pushed_total")
    }

    /// `busmq_messages_delivered_total` of `mode`.
    pub fn delivered(&self, mode: DeliveryMode) -> &Counter {
        self.delivered[mode as usize].get_or_init(|| {
            metrics::counter!(
                "busmq_messages_delivered_total",
                "queue" => self.label.to_string(),
                "mode" => mode.as_str(),
            )
        })
    }

    /// `busmq_redeliveries_total`.
    pub fn redeliveries(&self) -> &Counter {
        self.counter(&self.redeliveries, "busmq_redeliveries_total")
    }

    /// `busmq_dead_lettered_total`.
    pub fn dead_lettered(&self) -> &Counter {
        self.counter(&self.dead_lettered, "busmq_dead_lettered_total")
    }

    /// `busmq_queue_consumers`.
    pub fn consumers(&self) -> &Gauge {
        self.gauge(&self.consumers, "busmq_queue_consumers")
    }

    /// `busmq_queue_depth`.
    pub fn depth(&self) -> &Gauge {
        self.gauge(&self.depth, "busmq_queue_depth")
    }

    /// `busmq_queue_pending`.
    pub fn pending(&self) -> &Gauge {
        self.gauge(&self.pending, "busmq_queue_pending")
    }
}

/// The queues seen so far and the series each one records into.
struct Queues {
    max: usize,
    /// Queues with series of their own, at most `max`; they keep them for
    /// the life of the process, so a label never changes its meaning.
    own: usize,
    by_name: HashMap<QueueName, Arc<QueueMetrics>, foldhash::fast::RandomState>,
    other: Arc<QueueMetrics>,
}

impl Queues {
    fn new(max: usize) -> Self {
        Queues {
            max,
            own: 0,
            by_name: HashMap::default(),
            other: Arc::new(QueueMetrics::new(OTHER_QUEUE)),
        }
    }
}

static QUEUES: OnceLock<RwLock<Queues>> = OnceLock::new();

// With no recorder installed, its handles are no-ops.
static NOOP: LazyLock<Arc<QueueMetrics>> = LazyLock::new(|| Arc::new(QueueMetrics::new("")));

/// The series `queue` records into: its own while fewer than the cap have
/// theirs (a queue literally named `other` shares the overflow's), the
/// overflow's after that, no-ops when metrics are off. Callers keep the
/// handle for as long as they serve the queue; call it only for a queue
/// that exists, so that made-up names take no label.
pub fn queue(queue: &QueueName) -> Arc<QueueMetrics> {
    let Some(queues) = QUEUES.get() else {
        return Arc::clone(&NOOP);
    };
    if let Some(found) = read(queues).by_name.get(queue) {
        return Arc::clone(found);
    }
    queues
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .assign(queue)
}

impl Queues {
    /// The series of `queue`, giving it its own while the cap allows.
    fn assign(&mut self, queue: &QueueName) -> Arc<QueueMetrics> {
        if let Some(found) = self.by_name.get(queue) {
            return Arc::clone(found);
        }
        let metrics = if self.own < self.max && queue.as_str() != OTHER_QUEUE {
            self.own += 1;
            Arc::new(QueueMetrics::new(queue.as_str()))
        } else {
            Arc::clone(&self.other)
        };
        self.by_name.insert(queue.clone(), Arc::clone(&metrics));
        metrics
    }
}

fn read(queues: &RwLock<Queues>) -> std::sync::RwLockReadGuard<'_, Queues> {
    queues.read().unwrap_or_else(|p| p.into_inner())
}

/// Every queue [`queue`] was asked for and not [`forget`]-ten, with its
/// series: what the depth sampler asks the store about.
pub fn known_queues() -> Vec<(QueueName, Arc<QueueMetrics>)> {
    QUEUES.get().map_or_else(Vec::new, |queues| {
        read(queues)
            .by_name
            .iter()
            .map(|(name, m)| (name.clone(), Arc::clone(m)))
            .collect()
    })
}

/// The series of the queues beyond the cap, when metrics are on.
pub fn other_queues() -> Option<Arc<QueueMetrics>> {
    QUEUES.get().map(|queues| Arc::clone(&read(queues).other))
}

/// Stops tracking a queue that no longer exists, if it had no series of
/// its own (those stay, so the cap is never handed out twice).
pub fn forget(queue: &QueueName) {
    if let Some(queues) = QUEUES.get() {
        let mut queues = queues.write().unwrap_or_else(|p| p.into_inner());
        if queues.by_name.get(queue).is_some_and(|m| m.is_other()) {
            queues.by_name.remove(queue);
        }
    }
}

/// Counts one consumer of a queue in `busmq_queue_consumers` for as long
/// as it lives.
#[derive(Debug)]
pub struct ConsumerGauge(Arc<QueueMetrics>);

impl ConsumerGauge {
    /// One more consumer of the queue `metrics` belong to.
    pub fn new(metrics: Arc<QueueMetrics>) -> Self {
        metrics.consumers().increment(1.0);
        ConsumerGauge(metrics)
    }

    /// The queue's series.
    pub fn metrics(&self) -> &QueueMetrics {
        &self.0
    }
}

impl Drop for ConsumerGauge {
    fn drop(&mut self) {
        self.0.consumers().decrement(1.0);
    }
}

// ----- gRPC -----

/// A tower layer counting every gRPC call a server finishes in
/// `busmq_grpc_requests_total{service,method,code}`. The code is read
/// where gRPC puts it: the response headers of a call that failed at
/// once, else the trailers; a call whose response is dropped before its
/// trailers (the client went away) counts as `CANCELLED`.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower_layer::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

/// The service [`GrpcMetricsLayer`] wraps around a server's routes.
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
{
    type Response = http::Response<CountedBody<RB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = enabled().then(|| method_series(request.uri().path()));
        ResponseFuture {
            inner: self.inner.call(request),
            method,
        }
    }
}

pin_project_lite::pin_project! {
    /// The response of a call [`GrpcMetrics`] counts.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        method: Option<Arc<MethodSeries>>,
    }
}

impl<F, RB, E> std::future::Future for ResponseFuture<F>
where
    F: std::future::Future<Output = Result<http::Response<RB>, E>>,
{
    type Output = Result<http::Response<CountedBody<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx));
        let mut method = this.method.take();
        Poll::Ready(response.map(|response| {
            if let Some(m) = &method
                && let Some(code) = grpc_status(response.headers())
            {
                m.count(code);
                method = None;
            }
            response.map(|inner| CountedBody { inner, method })
        }))
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts its call when its trailers pass.
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        method: Option<Arc<MethodSeries>>,
    }

    impl<B> PinnedDrop for CountedBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(m) = this.project().method.take() {
                m.count(CANCELLED);
            }
        }
    }
}

impl<B: http_body::Body> http_body::Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if this.method.is_some() {
            let code = match &frame {
                Some(Ok(f)) => f.trailers_ref().map(|t| grpc_status(t).unwrap_or(UNKNOWN)),
                Some(Err(_)) => Some(UNKNOWN),
                // The end with no trailers: not a gRPC answer.
                None => Some(UNKNOWN),
            };
            if let Some(code) = code
                && let Some(m) = this.method.take()
            {
                m.count(code);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

const CANCELLED: usize = 1;
const UNKNOWN: usize = 2;

/// gRPC status codes by number, as the `code` label spells them.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

fn grpc_status(headers: &http::HeaderMap) -> Option<usize> {
    let value = headers.get("grpc-status")?;
    Some(
        std::str::from_utf8(value.as_bytes())
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|c| *c < CODES.len())
            .unwrap_or(UNKNOWN),
    )
}

/// The counters of one gRPC method, one per status code, made on first use.
#[derive(Debug)]
pub struct MethodSeries {
    service: String,
    method: String,
    codes: [OnceLock<Counter>; 17],
}

impl MethodSeries {
    fn count(&self, code: usize) {
        self.codes[code]
            .get_or_init(|| {
                metrics::counter!(
                    "busmq_grpc_requests_total",
                    "service" => self.service.clone(),
                    "method" => self.method.clone(),
                    "code" => CODES[code],
                )
            })
            .increment(1);
    }
}

type Methods = HashMap<String, Arc<MethodSeries>, foldhash::fast::RandomState>;

static METHODS: LazyLock<RwLock<Methods>> = LazyLock::new(Default::default);

static OTHER_METHOD: LazyLock<Arc<MethodSeries>> =
    LazyLock::new(|| Arc::new(method("other", "other")));

fn method(service: &str, method: &str) -> MethodSeries {
    MethodSeries {
        service: service.to_owned(),
        method: method.to_owned(),
        codes: Default::default(),
    }
}

/// The series of the call to `path` (`/package.Service/Method`).
fn method_series(path: &str) -> Arc<MethodSeries> {
    if let Some(found) = METHODS.read().unwrap_or_else(|p| p.into_inner()).get(path) {
        return Arc::clone(found);
    }
    let mut methods = METHODS.write().unwrap_or_else(|p| p.into_inner());
    if let Some(found) = methods.get(path) {
        return Arc::clone(found);
    }
    let parsed = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .filter(|(s, m)| !s.is_empty() && !m.is_empty() && !m.contains('/'));
    let series = match parsed {
        Some((service, name)) if methods.len() < MAX_GRPC_PATHS => Arc::new(method(service, name)),
        _ => return Arc::clone(&OTHER_METHOD),
    };
    methods.insert(path.to_owned(), Arc::clone(&series));
    series
}

// ----- connections -----

static CONNECTIONS: LazyLock<Gauge> = LazyLock::new(|| metrics::gauge!("busmq_grpc_connections"));

/// A gRPC server's connection, counted in `busmq_grpc_connections` while
/// open.
#[derive(Debug)]
pub struct CountedStream {
    io: tokio::net::TcpStream,
    counted: bool,
}

impl CountedStream {
    /// Counts `io` while it lives (when metrics are on).
    pub fn new(io: tokio::net::TcpStream) -> Self {
        let counted = enabled();
        if counted {
            CONNECTIONS.increment(1.0);
        }
        CountedStream { io, counted }
    }
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        if self.counted {
            CONNECTIONS.decrement(1.0);
        }
    }
}

impl tonic::transport::server::Connected for CountedStream {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl tokio::io::AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

// ----- process -----

static PROCESS_START: OnceLock<f64> = OnceLock::new();

fn wall_clock_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Appends the standard `process_*` series, read from `/proc` at scrape
/// time so they cost nothing in between.
fn process_metrics(out: &mut String) {
    use std::fmt::Write;
    if let Some(start) = PROCESS_START.get() {
        let _ = write!(
            out,
            "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {start}\n"
        );
    }
    #[cfg(target_os = "linux")]
    {
        // Fields after the command name, which may hold spaces; see proc(5).
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        // Linux's USER_HZ is 100 on every architecture busmq builds for.
        if let (Some(utime), Some(stime)) = (field(14), field(15)) {
            let cpu = (utime + stime) / 100.0;
            let _ = write!(
                out,
                "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {cpu}\n"
            );
        }
        if let Some(pages) = field(24) {
            let rss = pages * 4096.0;
            let _ = write!(
                out,
                "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {rss}\n"
            );
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            let _ = write!(
                out,
                "# TYPE process_open_fds gauge\nprocess_open_fds {}\n",
                fds.count()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_beyond_the_cap_share_other() {
        let limits = busmq_core::Limits::default();
        let name = |n: &str| QueueName::parse(n, &limits).unwrap();
        let mut queues = Queues::new(2);
        assert_eq!(queues.assign(&name("a")).label(), "a");
        assert_eq!(queues.assign(&name(OTHER_QUEUE)).label(), OTHER_QUEUE);
        assert_eq!(queues.assign(&name("b")).label(), "b");
        for n in 0..1000 {
            assert!(queues.assign(&name(&format!("q{n}"))).is_other());
        }
        // A queue keeps the label it got first.
        assert_eq!(queues.assign(&name("a")).label(), "a");
        assert_eq!(queues.own, 2);
    }

    #[test]
    fn listen_off_and_empty_disable() {
        assert_eq!("off".parse::<MetricsListen>().unwrap(), MetricsListen(None));
        assert_eq!("".parse::<MetricsListen>().unwrap(), MetricsListen(None));
        assert_eq!(
            "127.0.0.1:9101".parse::<MetricsListen>().unwrap(),
            MetricsListen(Some("127.0.0.1:9101".parse().unwrap()))
        );
        assert!("nowhere".parse::<MetricsListen>().is_err());
    }

    #[test]
    fn grpc_paths_split_into_service_and_method() {
        let m = method_series("/busmq.v1.Queues/Push");
        assert_eq!(
            (m.service.as_str(), m.method.as_str()),
            ("busmq.v1.Queues", "Push")
        );
        let bad = method_series("/no-method");
        assert_eq!(
            (bad.service.as_str(), bad.method.as_str()),
            ("other", "other")
        );
    }

    #[test]
    fn status_headers_name_codes() {
        let mut h = http::HeaderMap::new();
        assert_eq!(grpc_status(&h), None);
        h.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(CODES[grpc_status(&h).unwrap()], "NOT_FOUND");
        h.insert("grpc-status", http::HeaderValue::from_static("99"));
        assert_eq!(CODES[grpc_status(&h).unwrap()], "UNKNOWN");
    }
}
