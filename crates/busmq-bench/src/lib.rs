//! The busmq benchmark harness behind `busmq bench`.
//!
//! node-busmq's published shape: P producers and C consumers over Q queues,
//! pushing and consuming at the same time, counted per cycle. The figure that
//! matters is the rate consumers sustain: by default producers pause when the
//! backlog passes `--max-backlog`, so a run settles where consumption keeps
//! up instead of reporting a push rate the consumers never match. With
//! `--max-backlog 0` the backlog is unbounded and reported as it grows.
//!
//! Every payload carries its push time, so the same run yields a
//! push→delivery latency histogram. `--plot` draws a run (`plot`),
//! `--sweep-queues` repeats it over queue counts (`sweep`).

mod acking;
mod args;
mod idle;
mod peers;
mod plot;
mod report;
mod sweep;
mod target;
mod transport;
mod workload;

pub use args::{BenchArgs, Mode};
pub use peers::Peer;
pub use report::{Cycle, Latency, LatencyPoint, Report};
pub use sweep::{QueueCounts, RunOutcome, Sweep, SweepRun};

/// Runs the benchmark `args` describes and prints its table to stdout. With
/// `--sweep-queues`, runs it once per queue count and returns the report of
/// the reference (100-queue, else first) run. With `--idle-queues` there is
/// no load and no report.
pub async fn run(args: BenchArgs) -> anyhow::Result<Option<Report>> {
    args.validate()?;
    if let Some(queues) = args.idle_queues {
        return run_idle(&args, queues).await;
    }
    if let Some(counts) = args.sweep_queues.clone() {
        return run_sweep(args, &counts.0).await.map(Some);
    }
    let report = run_once(&args).await?;
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json)?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        let title = args.describe(&target_description(&args));
        match plot::write_png(path, &title, &report) {
            Ok(true) => println!("wrote {}", path.display()),
            Ok(false) => println!(
                "wrote {} without text: no font found (set BUSMQ_BENCH_FONT to a .ttf file)",
                path.display()
            ),
            // A chart is a by-product: the run's figures are printed already.
            Err(e) => eprintln!("warning: no plot: {e:#}"),
        }
    }
    Ok(Some(report))
}

/// One run against a fresh target; prints its description, cycles and
/// summary.
async fn run_once(args: &BenchArgs) -> anyhow::Result<Report> {
    if let Some(peer) = args.peer {
        return peers::run_once(peer, args).await;
    }
    let target = target::Target::start(args).await?;
    println!("{}", args.describe(&target.description));
    let report = match transport::Busmq::connect(&target.url, args).await {
        Ok(busmq) => workload::run(args, busmq).await,
        Err(e) => Err(e),
    };
    target.stop().await;
    let report = report?;
    println!("{}", report.summary(args));
    Ok(report)
}

/// `--idle-queues`: no report, only the set-up and hold of idle queues.
async fn run_idle(args: &BenchArgs, queues: usize) -> anyhow::Result<Option<Report>> {
    let target = target::Target::start(args).await?;
    println!("busmq bench --idle-queues: {}", target.description);
    let outcome = match transport::Busmq::connect(&target.url, args).await {
        Ok(busmq) => idle::run(args, queues, busmq).await,
        Err(e) => Err(e),
    };
    target.stop().await;
    outcome.map(|()| None)
}

async fn run_sweep(args: BenchArgs, counts: &[usize]) -> anyhow::Result<Report> {
    let mut reports = Vec::with_capacity(counts.len());
    for &queues in counts {
        let run_args = BenchArgs {
            queues,
            sweep_queues: None,
            ..args.clone()
        };
        run_args.validate()?;
        let outcome = match run_once(&run_args).await {
            Ok(report) => RunOutcome::Report(report),
            Err(e) => {
                println!("run with {queues} queues failed: {e:#}");
                RunOutcome::Failed(format!("{e:#}"))
            }
        };
        reports.push((queues, outcome));
        println!();
    }
    let sweep = Sweep::new(args.clone(), reports);
    println!("{}", sweep.table());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&sweep)?)?;
        println!("wrote {}", path.display());
    }
    let reference = sweep.reference_queues;
    match sweep.runs.into_iter().find(|r| r.queues == reference) {
        Some(SweepRun {
            outcome: RunOutcome::Report(report),
            ..
        }) => Ok(report),
        _ => anyhow::bail!("the reference run ({reference} queues) failed"),
    }
}

/// How the chart title names the target (the run has stopped it by then).
fn target_description(args: &BenchArgs) -> String {
    if let Some(peer) = args.peer {
        return peers::description(peer, args);
    }
    match &args.server {
        Some(url) => format!("broker at {url}"),
        None => format!("in-process broker, storage {}", args.storage),
    }
}
