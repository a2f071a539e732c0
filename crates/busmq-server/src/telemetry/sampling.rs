//! Which traces busmq starts, decided before a span is built.
//!
//! The OpenTelemetry SDK samples a span after `tracing` has built it, so an
//! unsampled span still costs its allocation, its fields and the layer's
//! bookkeeping, and so does every child of it. On the hot paths (a span per
//! push batch, per consumer fetch, per RPC) that cost dominated the export
//! overhead even at 1% sampling. Here the decision for a trace busmq starts
//! is made first: an unsampled root is never built, and while the work it
//! would have covered runs, no child span is built either and no trace
//! context is sent on (see [`Rooted`]). The SDK then keeps every root it is
//! given, and follows the caller's decision for a span with a remote parent.
//!
//! `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` keep their standard
//! meaning, read here instead of by the SDK.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use opentelemetry_sdk::trace::Sampler;
use tracing::Span;
use tracing::instrument::{Instrument, Instrumented};

/// How roots are sampled: the standard samplers, reduced to what busmq
/// decides itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Policy {
    /// The share of roots kept, 0 to 1.
    ratio: f64,
    /// Whether a span with a remote parent follows the parent's decision
    /// (the `parentbased_*` samplers) rather than being a root of its own.
    follow_parent: bool,
}

impl Default for Policy {
    /// `parentbased_always_on`, the standard default.
    fn default() -> Self {
        Policy {
            ratio: 1.0,
            follow_parent: true,
        }
    }
}

impl Policy {
    /// The policy `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` name;
    /// the default for a sampler this does not know (with a warning).
    pub(crate) fn from_env() -> Policy {
        let sampler = std::env::var("OTEL_TRACES_SAMPLER").unwrap_or_default();
        let arg = std::env::var("OTEL_TRACES_SAMPLER_ARG").ok();
        Policy::parse(&sampler, arg.as_deref()).unwrap_or_else(|| {
            eprintln!(
                "busmq: OTEL_TRACES_SAMPLER={sampler:?} is not one busmq knows; \
                 using parentbased_always_on"
            );
            Policy::default()
        })
    }

    fn parse(sampler: &str, arg: Option<&str>) -> Option<Policy> {
        let ratio = || {
            arg.and_then(|a| a.trim().parse::<f64>().ok())
                .filter(|r| r.is_finite())
                .map_or(1.0, |r| r.clamp(0.0, 1.0))
        };
        let (ratio, follow_parent) = match sampler.trim().to_ascii_lowercase().as_str() {
            "" | "parentbased_always_on" => (1.0, true),
            "parentbased_always_off" => (0.0, true),
            "parentbased_traceidratio" => (ratio(), true),
            "always_on" => (1.0, false),
            "always_off" => (0.0, false),
            "traceidratio" => (ratio(), false),
            _ => return None,
        };
        Some(Policy {
            ratio,
            follow_parent,
        })
    }

    /// The SDK's sampler under this policy: every root reaching the SDK was
    /// already kept here.
    pub(crate) fn sdk_sampler(&self) -> Sampler {
        if self.follow_parent {
            Sampler::ParentBased(Box::new(Sampler::AlwaysOn))
        } else {
            Sampler::AlwaysOn
        }
    }

    /// `ratio` as a bound on a uniform `u64`.
    fn threshold(&self) -> Option<u64> {
        if self.ratio >= 1.0 {
            None
        } else {
            Some((self.ratio * u64::MAX as f64) as u64)
        }
    }
}

static POLICY: OnceLock<Policy> = OnceLock::new();

/// Installs `policy` for [`keep_root`]; the first call wins.
pub(crate) fn install(policy: Policy) {
    let _ = POLICY.set(policy);
}

fn policy() -> Policy {
    POLICY.get().copied().unwrap_or_default()
}

/// Whether a span with a caller's trace context continues that trace
/// (else it is a root, sampled by [`keep_root`]).
pub(crate) fn follows_parent() -> bool {
    policy().follow_parent
}

/// Whether a trace busmq would start now is kept. Cheap: one thread-local
/// random number.
pub(crate) fn keep_root() -> bool {
    match policy().threshold() {
        None => true,
        Some(0) => false,
        Some(threshold) => next_random() < threshold,
    }
}

/// xorshift64*, seeded per thread: sampling needs uniformity, not secrecy.
fn next_random() -> u64 {
    static SEEDS: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    thread_local! {
        static STATE: Cell<u64> = Cell::new(
            SEEDS.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) | 1
        );
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

thread_local! {
    static SUPPRESSED: Cell<bool> = const { Cell::new(false) };
}

/// Whether the code running now belongs to a trace that was not kept: no
/// span is built for it and no trace context is sent on.
pub(crate) fn suppressed() -> bool {
    SUPPRESSED.with(Cell::get)
}

/// The span of a piece of work busmq traces on its own (a push batch, a
/// consumer fetch, an RPC): built only when its trace is kept.
#[derive(Debug)]
pub struct RootSpan {
    span: Span,
    suppress: bool,
}

impl RootSpan {
    /// `make()`'s span when the trace is kept (or export is off, when the
    /// span only serves logs and its level filter decides); otherwise no
    /// span, and nothing under it is traced.
    pub fn new(make: impl FnOnce() -> Span) -> RootSpan {
        if !super::enabled() || keep_root() {
            RootSpan::built(make())
        } else {
            RootSpan::unsampled()
        }
    }

    /// A span continuing the caller's trace `traceparent`/`tracestate`
    /// names, never starting one: with no trace context, nothing is traced.
    /// For work done on behalf of another busmq process, which decided
    /// whether its trace is kept (the storage service's session frames).
    pub fn continuing(
        make: impl FnOnce() -> Span,
        traceparent: &str,
        tracestate: &str,
    ) -> RootSpan {
        if !super::enabled() {
            return RootSpan::built(make());
        }
        if traceparent.is_empty() {
            return RootSpan::unsampled();
        }
        let span = make();
        super::set_parent_from(&span, traceparent, tracestate);
        RootSpan::built(span)
    }

    /// The span of a request that came with `headers` (gRPC or HTTP): the
    /// child of the caller's trace context when it sent one and the sampler
    /// follows it, else a root of its own, sampled like [`RootSpan::new`].
    pub fn for_request(headers: &http::HeaderMap, make: impl FnOnce() -> Span) -> RootSpan {
        if super::enabled() && follows_parent() && headers.contains_key("traceparent") {
            let span = make();
            super::set_parent_from_headers(&span, headers);
            return RootSpan::built(span);
        }
        RootSpan::new(|| {
            let span = make();
            super::set_parent_from_headers(&span, headers);
            span
        })
    }

    pub(crate) fn built(span: Span) -> RootSpan {
        RootSpan {
            span,
            suppress: false,
        }
    }

    pub(crate) fn unsampled() -> RootSpan {
        RootSpan {
            span: Span::none(),
            suppress: true,
        }
    }

    /// The span (disabled when the trace is not kept), to record fields on.
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// `future`, run in this span, or with tracing suppressed when the
    /// trace is not kept.
    pub fn wrap<F: Future>(&self, future: F) -> Rooted<F> {
        Rooted {
            inner: future.instrument(self.span.clone()),
            suppress: self.suppress,
        }
    }
}

pin_project_lite::pin_project! {
    /// A future run in a [`RootSpan`]: in its span when the trace is kept,
    /// else with every span and trace context under it suppressed while it
    /// is polled.
    #[derive(Debug)]
    pub struct Rooted<F> {
        #[pin]
        inner: Instrumented<F>,
        suppress: bool,
    }
}

impl<F: Future> Future for Rooted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if !*this.suppress {
            return this.inner.poll(cx);
        }
        let outer = SUPPRESSED.with(|s| s.replace(true));
        let polled = this.inner.poll(cx);
        SUPPRESSED.with(|s| s.set(outer));
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_samplers_are_read() {
        let parse = |s: &str, a: Option<&str>| Policy::parse(s, a).unwrap();
        assert_eq!(parse("", None), Policy::default());
        assert_eq!(
            parse("parentbased_traceidratio", Some("0.01")),
            Policy {
                ratio: 0.01,
                follow_parent: true
            }
        );
        assert_eq!(
            parse("TraceIdRatio", Some("7")),
            Policy {
                ratio: 1.0,
                follow_parent: false
            }
        );
        assert_eq!(parse("always_off", None).threshold(), Some(0));
        assert_eq!(parse("traceidratio", Some("nan")).threshold(), None);
        assert!(Policy::parse("jaeger_remote", None).is_none());
    }

    #[test]
    fn a_ratio_keeps_about_that_share_of_roots() {
        let policy = Policy::parse("traceidratio", Some("0.25")).unwrap();
        let threshold = policy.threshold().unwrap();
        let kept = (0..100_000).filter(|_| next_random() < threshold).count();
        assert!((23_000..27_000).contains(&kept), "kept {kept} of 100000");
    }

    #[test]
    fn an_unsampled_root_suppresses_only_while_its_future_runs() {
        let root = RootSpan::unsampled();
        assert!(root.span().is_none());
        let inside = futures::executor::block_on(root.wrap(async { suppressed() }));
        assert!(inside);
        assert!(!suppressed());
        let kept = RootSpan::built(Span::none());
        assert!(!futures::executor::block_on(
            kept.wrap(async { suppressed() })
        ));
    }
}
