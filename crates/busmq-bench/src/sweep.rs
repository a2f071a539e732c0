//! `--sweep-queues 1,10,100,1000,10000`: the same workload once per queue
//! count, each against a fresh broker, and how consumed/s holds up as queues
//! grow (issue 4's target: 10,000 queues carry at least 80% of what 100 do).

use serde::Serialize;

use crate::BenchArgs;
use crate::report::{Report, thousands};

/// The queue count the others are compared with when the sweep has it.
pub const REFERENCE_QUEUES: usize = 100;

/// Queue counts to sweep, in the order given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct QueueCounts(pub Vec<usize>);

/// Parses `1,10,100` (spaces and `_` digit separators allowed); every count
/// at least 1, at least one count.
pub fn parse_queue_counts(text: &str) -> Result<QueueCounts, String> {
    let counts = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.replace('_', "").parse::<usize>() {
            Ok(0) => Err("queue counts must be at least 1".to_owned()),
            Ok(n) => Ok(n),
            Err(_) => Err(format!("not a queue count: {s:?}")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if counts.is_empty() {
        return Err("give at least one queue count, e.g. 1,10,100".to_owned());
    }
    Ok(QueueCounts(counts))
}

/// One run of the sweep.
#[derive(Debug, Clone, Serialize)]
pub struct SweepRun {
    pub queues: usize,
    pub median_pushed: u64,
    pub median_consumed: u64,
    /// Median consumed/s over the reference run's.
    pub ratio_to_reference: f64,
    pub report: Report,
}

/// The whole sweep, as `--json` writes it.
#[derive(Debug, Clone, Serialize)]
pub struct Sweep {
    pub args: BenchArgs,
    /// The queue count ratios are relative to: 100 when swept, else the
    /// first count.
    pub reference_queues: usize,
    pub runs: Vec<SweepRun>,
}

impl Sweep {
    pub fn new(args: BenchArgs, reports: Vec<(usize, Report)>) -> Sweep {
        let reference_queues = if reports.iter().any(|(q, _)| *q == REFERENCE_QUEUES) {
            REFERENCE_QUEUES
        } else {
            reports.first().map_or(REFERENCE_QUEUES, |(q, _)| *q)
        };
        let reference = reports
            .iter()
            .find(|(q, _)| *q == reference_queues)
            .map_or(0, |(_, r)| r.median_consumed());
        let runs = reports
            .into_iter()
            .map(|(queues, report)| SweepRun {
                queues,
                median_pushed: report.median_pushed(),
                median_consumed: report.median_consumed(),
                ratio_to_reference: if reference == 0 {
                    0.0
                } else {
                    report.median_consumed() as f64 / reference as f64
                },
                report,
            })
            .collect();
        Sweep {
            args,
            reference_queues,
            runs,
        }
    }

    /// The table printed after the last run.
    pub fn table(&self) -> String {
        let mut out = format!(
            "queue sweep (median of steady cycles; ratio to {} queues)\n{:>8}  {:>12}  {:>12}  {:>8}  {:>10}",
            self.reference_queues, "queues", "pushed/s", "consumed/s", "ratio", "p99 ms"
        );
        for run in &self.runs {
            out.push_str(&format!(
                "\n{:>8}  {:>12}  {:>12}  {:>7.1}%  {:>10.3}{}",
                thousands(run.queues as u64),
                thousands(run.median_pushed),
                thousands(run.median_consumed),
                run.ratio_to_reference * 100.0,
                run.report.latency.p99_us / 1000.0,
                if run.report.drained {
                    ""
                } else {
                    "  (not drained)"
                },
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Cycle, Latency};

    #[test]
    fn parses_queue_lists() {
        assert_eq!(
            parse_queue_counts("1,10,100,1000,10000"),
            Ok(QueueCounts(vec![1, 10, 100, 1000, 10000]))
        );
        assert_eq!(
            parse_queue_counts(" 100, 10_000 ,"),
            Ok(QueueCounts(vec![100, 10000]))
        );
        assert!(parse_queue_counts("").is_err());
        assert!(parse_queue_counts("1,0").is_err());
        assert!(parse_queue_counts("1,x").is_err());
        assert!(parse_queue_counts("-5").is_err());
    }

    fn report(consumed: u64) -> Report {
        let h = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
        Report {
            cycle_secs: 2.0,
            cycles: (1..=3)
                .map(|index| Cycle {
                    index,
                    pushed_per_sec: consumed,
                    consumed_per_sec: consumed,
                    backlog: 0,
                })
                .collect(),
            pushed: 0,
            consumed: 0,
            backlog_at_end: 0,
            drained: true,
            latency: Latency::from_histogram(&h),
        }
    }

    #[test]
    fn ratios_are_to_the_hundred_queue_run() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: BenchArgs,
        }
        let args = Cli::parse_from(["bench"]).args;
        let sweep = Sweep::new(
            args.clone(),
            vec![(10, report(500)), (100, report(1000)), (10000, report(800))],
        );
        assert_eq!(sweep.reference_queues, 100);
        let ratios: Vec<f64> = sweep.runs.iter().map(|r| r.ratio_to_reference).collect();
        assert_eq!(ratios, vec![0.5, 1.0, 0.8]);
        assert!(sweep.table().contains("80.0%"));
        let without = Sweep::new(args, vec![(1, report(400)), (10, report(200))]);
        assert_eq!(without.reference_queues, 1);
        assert_eq!(without.runs[1].ratio_to_reference, 0.5);
    }
}
