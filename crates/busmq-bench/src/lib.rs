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
//! push→delivery latency histogram.

mod args;
mod peers;
mod report;
mod target;
mod transport;
mod workload;

pub use args::{BenchArgs, Mode};
pub use peers::Peer;
pub use report::{Cycle, Latency, Report};

/// Runs the benchmark `args` describes and prints its table to stdout.
pub async fn run(args: BenchArgs) -> anyhow::Result<Report> {
    args.validate()?;
    let report = if let Some(peer) = args.peer {
        peers::run_once(peer, &args).await?
    } else {
        let target = target::Target::start(&args).await?;
        println!("{}", args.describe(&target.description));
        let report = match transport::Busmq::connect(&target.url, &args).await {
            Ok(busmq) => workload::run(&args, busmq).await,
            Err(e) => Err(e),
        };
        target.stop().await;
        let report = report?;
        println!("{}", report.summary(&args));
        report
    };
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json)?;
        println!("wrote {}", path.display());
    }
    Ok(report)
}
