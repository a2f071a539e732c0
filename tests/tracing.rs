//! Distributed tracing across real processes: a push made inside a client
//! span is one trace through `busmq-broker` and `busmq-storage`, exported
//! by both over OTLP/gRPC to a collector this test runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use busmq_client::{AttachOptions, Bus, ConsumeOptions, PusherOptions};
use busmq_testkit::Process;
use futures::StreamExt;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

/// One span as the collector received it, with the `service.name` of the
/// process that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
}

/// The OTLP trace collector: keeps every span it is sent.
#[derive(Default, Clone)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

fn text(value: &Option<AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut kept = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans
                .resource
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    kept.push(Received {
                        service: service.clone(),
                        name: span.name,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        attributes: attributes(&span.attributes),
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A collector serving OTLP/gRPC on a free port; returns it and its URL.
async fn collector() -> (Collector, String) {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let service = TraceServiceServer::new(collector.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (collector, url)
}

/// `name` exporting its spans to `otlp`. The batch processor is told to
/// wait an hour between exports, so whatever arrives was sent by the flush
/// at shutdown.
fn traced(name: &str, otlp: &str, sampler: &str) -> busmq_testkit::ProcessBuilder {
    Process::builder(name)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
        .env("OTEL_BSP_SCHEDULE_DELAY", "3600000")
        .env("OTEL_TRACES_SAMPLER", sampler)
}

/// A split deployment (`busmq-storage` on memory, `busmq-broker`) exporting
/// to a collector of its own, with `sampler` as `OTEL_TRACES_SAMPLER`.
struct Stack {
    collector: Collector,
    /// The collector's URL, for more processes to export to.
    otlp: String,
    storage: Process,
    broker: Process,
}

impl Stack {
    async fn start(sampler: &str) -> Stack {
        let (collector, otlp) = collector().await;
        let builder = traced("busmq-storage", &otlp, sampler);
        let storage_addr = builder.listen_addr();
        let storage = builder
            .args(["--listen", &storage_addr.to_string(), "--backend", "memory"])
            .spawn();
        storage.wait_ready().await;
        let builder = traced("busmq-broker", &otlp, sampler);
        let broker_addr = builder.listen_addr();
        let broker = builder
            .args(["--listen", &broker_addr.to_string()])
            .args(["--storage", &storage.url()])
            .spawn();
        broker.wait_ready().await;
        Stack {
            collector,
            otlp,
            storage,
            broker,
        }
    }

    /// Stops both processes gracefully (each exports what it still holds
    /// before it exits) and returns every span the collector received.
    async fn stop(self) -> Vec<Received> {
        let broker_exit = self
            .broker
            .terminate()
            .await
            .expect("the broker was running");
        let storage_exit = self
            .storage
            .terminate()
            .await
            .expect("the storage was running");
        assert!(broker_exit.success(), "broker: {broker_exit}");
        assert!(storage_exit.success(), "storage: {storage_exit}");
        self.collector.spans.lock().unwrap().clone()
    }
}

/// The application's own tracing, as a user of the SDK sets it up: its
/// spans get OpenTelemetry ids, and the SDK sends the current one.
fn client_tracing() -> tracing::subscriber::DefaultGuard {
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test-client")));
    tracing::subscriber::set_default(subscriber)
}

/// A client span, sampled, with its trace and span ids.
fn client_span() -> (tracing::Span, String, String) {
    let span = tracing::info_span!("client push");
    let context = span.context().span().span_context().clone();
    assert!(context.is_valid() && context.is_sampled());
    let trace_id = context.trace_id().to_string();
    let span_id = context.span_id().to_string();
    (span, trace_id, span_id)
}

#[tokio::test]
async fn a_push_is_one_trace_from_the_client_through_broker_and_storage() {
    let stack = Stack::start("parentbased_always_on").await;
    let _tracing = client_tracing();

    let bus = Bus::connect(stack.broker.url()).await.unwrap();
    let queue = bus.queue("traced");
    queue.attach(AttachOptions::default()).await.unwrap();

    let (client_span, trace_id, client_span_id) = client_span();
    let id = queue.push("hello").instrument(client_span).await.unwrap();
    assert_eq!(id, 1);

    let spans = stack.stop().await;
    let trace: Vec<&Received> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    let by_id: HashMap<&str, &Received> = trace.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    let described = || {
        trace
            .iter()
            .map(|s| {
                format!(
                    "{} {} {} <- {}",
                    s.service, s.name, s.span_id, s.parent_span_id
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };

    // The broker's span for the call is the child of the client's span.
    let broker_push = trace
        .iter()
        .find(|s| s.service == "busmq-broker" && s.name == "busmq.v1.Queues/Push")
        .unwrap_or_else(|| panic!("no broker Push span in the trace:\n{}", described()));
    assert_eq!(
        broker_push.parent_span_id,
        client_span_id,
        "{}",
        described()
    );
    assert_eq!(
        broker_push
            .attributes
            .get("messaging.destination.name")
            .map(String::as_str),
        Some("traced")
    );
    assert_eq!(
        broker_push
            .attributes
            .get("messaging.batch.message_count")
            .map(String::as_str),
        Some("1")
    );

    // The storage's span for the stored batch, in the same trace, whose
    // parents lead back through the broker to the broker's call span.
    let stored = trace
        .iter()
        .find(|s| s.service == "busmq-storage" && s.name.ends_with("/Session.Push"))
        .unwrap_or_else(|| panic!("no storage push span in the trace:\n{}", described()));
    assert_eq!(
        stored
            .attributes
            .get("messaging.destination.name")
            .map(String::as_str),
        Some("traced")
    );
    assert_eq!(
        stored
            .attributes
            .get("messaging.batch.message_count")
            .map(String::as_str),
        Some("1")
    );
    // The session stream carrying it is shared by every operation of the
    // broker: it must not be counted in this push's trace.
    assert!(
        !trace
            .iter()
            .any(|s| s.name == "busmq.storage.v1.Storage/Session"),
        "{}",
        described()
    );
    let mut chain = vec![stored.service.as_str()];
    let mut at = *stored;
    while at.span_id != broker_push.span_id {
        at = by_id.get(at.parent_span_id.as_str()).unwrap_or_else(|| {
            panic!(
                "the parent {} of {} is not in the trace:\n{}",
                at.parent_span_id,
                at.name,
                described()
            )
        });
        chain.push(at.service.as_str());
    }
    assert_eq!(chain.first(), Some(&"busmq-storage"));
    assert!(chain[1..].iter().all(|s| *s == "busmq-broker"), "{chain:?}");
    eprintln!("the trace, span <- parent:\n{}", described());
}

/// With roots sampled away, the work busmq would trace on its own (each
/// push batch of a stream, each consumer fetch, each RPC that arrives with
/// no trace context) exports nothing from either process, while a trace a
/// client started is still followed end to end.
#[tokio::test]
async fn with_roots_sampled_away_only_a_clients_trace_is_exported() {
    let stack = Stack::start("parentbased_always_off").await;
    let _tracing = client_tracing();

    let bus = Bus::connect(stack.broker.url()).await.unwrap();
    let queue = bus.queue("unsampled");
    queue.attach(AttachOptions::default()).await.unwrap();
    let pusher = queue.pusher(PusherOptions::default());
    for batch in 0..50 {
        let messages: Vec<String> = (0..10).map(|i| format!("{batch}.{i}")).collect();
        pusher.push(messages).await.unwrap().await.unwrap();
    }
    pusher.finish().await.unwrap();
    let mut consumer = queue.consume(ConsumeOptions::default()).await.unwrap();
    for _ in 0..500 {
        consumer.next().await.expect("a delivery").unwrap();
    }
    drop(consumer);

    let (client_span, trace_id, client_span_id) = client_span();
    queue.push("traced").instrument(client_span).await.unwrap();

    let spans = stack.stop().await;
    let strays: Vec<String> = spans
        .iter()
        .filter(|s| s.trace_id != trace_id)
        .map(|s| format!("{} {}", s.service, s.name))
        .collect();
    assert!(strays.is_empty(), "spans of traces nobody kept: {strays:?}");
    let broker_push = spans
        .iter()
        .find(|s| s.service == "busmq-broker" && s.name == "busmq.v1.Queues/Push")
        .expect("the client's push was traced by the broker");
    assert_eq!(broker_push.parent_span_id, client_span_id);
    assert!(
        spans
            .iter()
            .any(|s| s.service == "busmq-storage" && s.name.ends_with("/Session.Push")),
        "the client's push was traced by the storage: {spans:?}"
    );
}

/// A push over HTTP with a `traceparent` header is one trace through the
/// gateway, the broker and the storage: the gateway's request span is the
/// child of the caller's, and the broker's call span the child of the
/// gateway's.
#[tokio::test]
async fn an_http_push_continues_the_callers_trace_through_the_gateway() {
    let stack = Stack::start("parentbased_always_on").await;
    let builder = traced("busmq-http", &stack.otlp, "parentbased_always_on");
    let listen = builder.listen_addr();
    let gateway = builder
        .args([
            "--listen",
            &listen.to_string(),
            "--server",
            &stack.broker.url(),
        ])
        .spawn();
    gateway.wait_ready().await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let body = r#"{"payload":"traced over HTTP"}"#;
    let request = format!(
        "POST /queues/http-traced/message/new HTTP/1.1\r\nHost: busmq\r\n\
         traceparent: 00-{trace_id}-{caller_span}-01\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, answer) = busmq_testkit::scrape::http(listen, &request).await;
    assert_eq!(status, 201, "{answer}");

    let exit = gateway.terminate().await.expect("the gateway was running");
    assert!(exit.success(), "gateway: {exit}");
    let spans = stack.stop().await;
    let trace: Vec<&Received> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    let described = trace
        .iter()
        .map(|s| {
            format!(
                "{} {} {} <- {}",
                s.service, s.name, s.span_id, s.parent_span_id
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let http = trace
        .iter()
        .find(|s| s.service == "busmq-http" && s.name == "POST /queues/{name}/message/new")
        .unwrap_or_else(|| panic!("no gateway span in the trace:\n{described}"));
    assert_eq!(http.parent_span_id, caller_span, "{described}");
    assert_eq!(
        http.attributes
            .get("http.response.status_code")
            .map(String::as_str),
        Some("201")
    );
    // The gateway's calls to the broker (an attach, then the push) are
    // its children.
    let push = trace
        .iter()
        .find(|s| s.service == "busmq-broker" && s.name == "busmq.v1.Queues/Push")
        .unwrap_or_else(|| panic!("no broker Push span in the trace:\n{described}"));
    assert_eq!(push.parent_span_id, http.span_id, "{described}");
    assert!(
        trace
            .iter()
            .any(|s| s.service == "busmq-storage" && s.name.ends_with("/Session.Push")),
        "no storage push span in the trace:\n{described}"
    );
}
