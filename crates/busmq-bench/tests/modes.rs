//! `busmq bench` in every consume mode and stream layout, against an
//! in-process broker on the memory store: every message pushed is consumed
//! (as many times as a mode delivers it) and the run drains.

use busmq_bench::{BenchArgs, Report};
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

async fn bench(mode: &str, streams: &str) -> Report {
    let Cli { bench } = Cli::try_parse_from([
        "bench",
        "--storage",
        "memory",
        "--mode",
        mode,
        "--streams",
        streams,
        "--queues",
        "6",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--duration",
        "1s",
        "--cycle",
        "250ms",
    ])
    .expect("valid arguments");
    busmq_bench::run(bench)
        .await
        .unwrap_or_else(|e| panic!("{mode} over {streams}: {e:#}"))
        .expect("a run has a report")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_consumes_everything_on_either_stream_layout() {
    for streams in ["many", "per-queue"] {
        for mode in ["unreliable", "reliable", "lease", "persistent"] {
            let report = bench(mode, streams).await;
            assert!(report.pushed > 0, "{mode} over {streams} pushed nothing");
            assert!(report.drained, "{mode} over {streams} did not drain");
            // Two consumers over six queues: each queue has one consumer,
            // so even persistent reads deliver each message once.
            assert_eq!(
                report.consumed, report.pushed,
                "{mode} over {streams}: consumed vs pushed"
            );
        }
    }
}
