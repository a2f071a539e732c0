//! W3C trace context on every call the SDK makes, so the broker's span for
//! a call is a child of the caller's span (see `docs/tracing.md`).
//!
//! The context is the current `tracing` span's, as `tracing-opentelemetry`
//! (0.34, OpenTelemetry 0.33) keeps it, or else OpenTelemetry's current
//! context. An application that traces neither sends nothing: no header is
//! formatted for a call outside a sampled or recording trace.

use std::fmt::Write as _;
use std::task::{Context as TaskContext, Poll};

use http::HeaderValue;
use opentelemetry::Context;
use opentelemetry::trace::{SpanContext, TraceContextExt};
use tower_service::Service;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The transport every client of the SDK is built on.
pub(crate) type Transport = TraceContext<tonic::transport::Channel>;

/// A gRPC transport whose requests carry `traceparent` (and `tracestate`)
/// metadata naming the span they were made in.
#[derive(Debug, Clone)]
pub(crate) struct TraceContext<S> {
    inner: S,
}

impl<S> TraceContext<S> {
    pub(crate) fn new(inner: S) -> Self {
        TraceContext { inner }
    }
}

impl<S, B> Service<http::Request<B>> for TraceContext<S>
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
        if let Some(span) = current_span_context() {
            let headers = request.headers_mut();
            if let Ok(value) = HeaderValue::from_str(&traceparent(&span)) {
                headers.insert("traceparent", value);
            }
            let state = span.trace_state().header();
            if !state.is_empty()
                && let Ok(value) = HeaderValue::from_str(&state)
            {
                headers.insert("tracestate", value);
            }
        }
        self.inner.call(request)
    }
}

/// The span context a call made now belongs to, if any.
fn current_span_context() -> Option<SpanContext> {
    let span = tracing::Span::current();
    if !span.is_none() {
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        if sc.is_valid() {
            return Some(sc);
        }
    }
    let cx = Context::current();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// `traceparent` as the W3C Trace Context (version 00) writes it.
fn traceparent(span: &SpanContext) -> String {
    let mut value = String::with_capacity(55);
    let _ = write!(
        value,
        "00-{}-{}-{:02x}",
        span.trace_id(),
        span.span_id(),
        span.trace_flags().to_u8()
    );
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};

    #[test]
    fn traceparent_is_w3c_version_00() {
        let span = SpanContext::new(
            TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        assert_eq!(
            traceparent(&span),
            "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"
        );
    }

    #[test]
    fn outside_any_trace_nothing_is_sent() {
        assert_eq!(current_span_context(), None);
    }

    #[test]
    fn the_current_opentelemetry_context_is_sent_without_tracing() {
        let span = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let _attached = Context::current()
            .with_remote_span_context(span.clone())
            .attach();
        assert_eq!(current_span_context(), Some(span));
    }
}
