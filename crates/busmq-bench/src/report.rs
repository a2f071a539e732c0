//! What a run measured, as a table for people and JSON for plots.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::BenchArgs;

/// One reporting cycle.
#[derive(Debug, Clone, Serialize)]
pub struct Cycle {
    pub index: u32,
    pub pushed_per_sec: u64,
    pub consumed_per_sec: u64,
    /// Messages pushed and not yet consumed at the end of the cycle.
    pub backlog: u64,
}

impl Cycle {
    pub fn header() -> String {
        format!(
            "{:>5}  {:>12}  {:>12}  {:>10}",
            "cycle", "pushed/s", "consumed/s", "backlog"
        )
    }

    pub fn row(&self) -> String {
        format!(
            "{:>5}  {:>12}  {:>12}  {:>10}",
            self.index,
            thousands(self.pushed_per_sec),
            thousands(self.consumed_per_sec),
            thousands(self.backlog)
        )
    }
}

/// Push→delivery latency, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub samples: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// The percentile curve (`--plot` draws it): latency at 0%, 10%, …,
    /// 90%, 99%, 99.9%, … up to the maximum.
    pub curve: Vec<LatencyPoint>,
}

/// One point of the latency percentile curve.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyPoint {
    /// 0 to 100.
    pub percentile: f64,
    pub micros: f64,
}

/// Quantiles of the latency curve: tenths, then each further nine.
const CURVE_QUANTILES: &[f64] = &[
    0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999,
    0.99995, 0.99999,
];

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        let us = |nanos: u64| nanos as f64 / 1000.0;
        Latency {
            samples: h.len(),
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            curve: latency_curve(h),
        }
    }
}

/// The curve points a histogram of `h.len()` samples can tell apart, then
/// its maximum.
fn latency_curve(h: &Histogram<u64>) -> Vec<LatencyPoint> {
    if h.is_empty() {
        return Vec::new();
    }
    let resolvable = 1.0 - 1.0 / h.len() as f64;
    let mut curve: Vec<LatencyPoint> = CURVE_QUANTILES
        .iter()
        .take_while(|&&q| q <= resolvable)
        .map(|&q| LatencyPoint {
            percentile: q * 100.0,
            micros: h.value_at_quantile(q) as f64 / 1000.0,
        })
        .collect();
    curve.push(LatencyPoint {
        percentile: 100.0 * resolvable.max(0.0),
        micros: h.max() as f64 / 1000.0,
    });
    curve
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Length of one cycle in seconds.
    pub cycle_secs: f64,
    pub cycles: Vec<Cycle>,
    pub pushed: u64,
    pub consumed: u64,
    /// Backlog when producers stopped.
    pub backlog_at_end: u64,
    /// Consumers caught up after producers stopped.
    pub drained: bool,
    pub latency: Latency,
}

impl Report {
    /// Cycles that count: the first is warm-up when there are three or more.
    fn steady(&self) -> &[Cycle] {
        if self.cycles.len() >= 3 {
            &self.cycles[1..]
        } else {
            &self.cycles
        }
    }

    /// Median pushed/s over the steady cycles.
    pub fn median_pushed(&self) -> u64 {
        median(self.steady().iter().map(|c| c.pushed_per_sec).collect())
    }

    /// Median consumed/s over the steady cycles: the headline figure.
    pub fn median_consumed(&self) -> u64 {
        median(self.steady().iter().map(|c| c.consumed_per_sec).collect())
    }

    /// The closing lines of the table.
    pub fn summary(&self, args: &BenchArgs) -> String {
        let growth = match self.steady() {
            [first, .., last] if args.max_backlog == 0 && last.backlog > first.backlog * 2 => {
                " — backlog GROWING: consumers do not keep up; the sustained rate is consumed/s"
            }
            _ => "",
        };
        let l = &self.latency;
        format!(
            "median of steady cycles: pushed {}/s, consumed {}/s\n\
             totals: pushed {}, consumed {}, backlog when producers stopped {}{growth}{}\n\
             latency push->delivery ({} samples): p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
            thousands(self.median_pushed()),
            thousands(self.median_consumed()),
            thousands(self.pushed),
            thousands(self.consumed),
            thousands(self.backlog_at_end),
            if self.drained {
                ""
            } else {
                " (not drained within 10 s)"
            },
            l.samples,
            l.p50_us / 1000.0,
            l.p90_us / 1000.0,
            l.p99_us / 1000.0,
            l.p999_us / 1000.0,
            l.max_us / 1000.0,
        )
    }
}

fn median(mut v: Vec<u64>) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2
    } else {
        v[mid]
    }
}

/// 1234567 -> "1,234,567".
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_thousands() {
        assert_eq!(median(vec![3, 1, 2]), 2);
        assert_eq!(median(vec![4, 1, 2, 3]), 2);
        assert_eq!(median(vec![]), 0);
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
    }
}
