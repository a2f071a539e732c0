//! What every request leaves behind: a span that joins the caller's trace
//! (W3C `traceparent`), and Prometheus series by route, method and status,
//! on the conventions of the other busmq services (`docs/metrics.md`).
//!
//! Labels are route templates (`/queues/{name}/message/next`), never raw
//! paths, so many queues never mean many series; a request no route
//! matched counts under `route="unmatched"`.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use busmq_server::telemetry::RootSpan;

/// Requests answered, by route, method and status code.
pub const REQUESTS_TOTAL: &str = "busmq_http_requests_total";

/// Time from a request's arrival to its response's head, by route.
pub const REQUEST_DURATION: &str = "busmq_http_request_duration_seconds";

/// Describes the gateway's series; call once after the recorder is
/// installed (it is by `--metrics-listen`).
pub fn describe() {
    metrics::describe_counter!(
        REQUESTS_TOTAL,
        "HTTP requests the gateway answered, by route, method and status code."
    );
    metrics::describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Time from a request's arrival to its response's head (a long poll's whole wait), by route."
    );
}

/// The middleware: runs the request in its span and counts it.
pub async fn observe(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    // The matched path is shared, not copied: this runs for every request,
    // with metrics and traces off too.
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let root = RootSpan::for_request(request.headers(), || {
        tracing::debug_span!(
            "http",
            otel.name = format!("{method} {route}"),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            http.request.method = method.as_str(),
            http.route = route,
            http.response.status_code = tracing::field::Empty,
        )
    });
    let started = busmq_server::metrics::start_timer();
    let response = root.wrap(next.run(request)).await;
    let status = response.status();
    let span = root.span();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    if let Some(started) = started {
        let labels = [
            ("route", route.to_owned()),
            ("method", method.to_string()),
            ("status", status.as_u16().to_string()),
        ];
        metrics::counter!(REQUESTS_TOTAL, &labels).increment(1);
        metrics::histogram!(REQUEST_DURATION, "route" => route.to_owned())
            .record(started.elapsed().as_secs_f64());
    }
    response
}
