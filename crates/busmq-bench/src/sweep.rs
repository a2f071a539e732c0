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
    /// The run's report, or why it failed: a failed count is a finding of
    /// the sweep, so the sweep goes on with the next count.
    #[serde(flatten)]
    pub outcome: RunOutcome,
}

/// How one run of the sweep ended.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunOutcome {
    Report(Report),
    Failed(String),
}

impl RunOutcome {
    fn report(&self) -> Option<&Report> {
        match self {
            RunOutcome::Report(report) => Some(report),
            RunOutcome::Failed(_) => None,
        }
    }
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
    pub fn new(args: BenchArgs, reports: Vec<(usize, RunOutcome)>) -> Sweep {
        let reference_queues = if reports.iter().any(|(q, _)| *q == REFERENCE_QUEUES) {
            REFERENCE_QUEUES
        } else {
            reports.first().map_or(REFERENCE_QUEUES, |(q, _)| *q)
        };
        let reference = reports
            .iter()
            .find(|(q, _)| *q == reference_queues)
            .and_then(|(_, r)| r.report())
            .map_or(0, Report::median_consumed);
        let runs = reports
            .into_iter()
            .map(|(queues, outcome)| {
                let (pushed, consumed) = outcome
                    .report()
                    .map_or((0, 0), |r| (r.median_pushed(), r.median_consumed()));
                SweepRun {
                    queues,
                    median_pushed: pushed,
                    median_consumed: consumed,
                    ratio_to_reference: if reference == 0 {
                        0.0
                    } else {
                        consumed as f64 / reference as f64
                    },
                    outcome,
                }
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
            let report = match &run.outcome {
                RunOutcome::Report(report) => report,
                RunOutcome::Failed(error) => {
                    out.push_str(&format!(
                        "\n{:>8}  failed: {error}",
                        thousands(run.queues as u64)
                    ));
                    continue;
                }
            };
            out.push_str(&format!(
                "\n{:>8}  {:>12}  {:>12}  {:>7.1}%  {:>10.3}{}",
                thousands(run.queues as u64),
                thousands(run.median_pushed),
                thousands(run.median_consumed),
                run.ratio_to_reference * 100.0,
                report.latency.p99_us / 1000.0,
                if report.drained {
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

    fn report(consumed: u64) -> RunOutcome {
        let h = hdrhistogram::Histogram::<u64>::new(3).expect("histogram");
        RunOutcome::Report(Report {
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
        })
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
            vec![
                (10, report(500)),
                (100, report(1000)),
                (1000, RunOutcome::Failed("broken pipe".into())),
                (10000, report(800)),
            ],
        );
        assert_eq!(sweep.reference_queues, 100);
        let ratios: Vec<f64> = sweep.runs.iter().map(|r| r.ratio_to_reference).collect();
        assert_eq!(ratios, vec![0.5, 1.0, 0.0, 0.8]);
        let table = sweep.table();
        assert!(table.contains("80.0%"), "{table}");
        assert!(table.contains("1,000  failed: broken pipe"), "{table}");
        let without = Sweep::new(args, vec![(1, report(400)), (10, report(200))]);
        assert_eq!(without.reference_queues, 1);
        assert_eq!(without.runs[1].ratio_to_reference, 0.5);
    }
}
