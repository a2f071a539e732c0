//! The HTTP gateway held to its own OpenAPI document: schemathesis (from
//! PyPI, in a virtualenv under `target/py-schemathesis`) reads
//! `GET /openapi.json` of a `busmq-http` in front of `busmq serve` and
//! sends generated requests, valid and invalid, to every operation it can
//! drive, checking each answer: no server error, a documented status, the
//! documented content type and schema, invalid input refused and valid
//! input accepted.
//!
//! Two operations are left out: `GET /v1/pubsub/{channel}/events` answers
//! with an endless event stream, and `GET /v1/ws` only upgrades (a plain
//! request is 426); `tests/v1.rs` of busmq-http drives both. Long polls are
//! pinned to `wait=0`, so the run takes seconds rather than one 20 s poll
//! per generated request. `busmq` and `busmq-http` must be built first
//! (`cargo build --workspace --bins`). Without `python3` or a reachable
//! package index the test reports itself skipped with the reason.

mod python_env;

use std::path::PathBuf;

use busmq_testkit::Process;
use busmq_testkit::skip::skip;
use python_env::{describe, run_in};

/// schemathesis and the Hypothesis it runs on, pinned: the CLI's flags and
/// checks change between releases.
const PACKAGES: &[&str] = &["schemathesis==4.32.5", "hypothesis==6.140.0"];

/// Generated requests per operation and phase.
const MAX_EXAMPLES: &str = "20";

/// The run's configuration: every `wait` query parameter fixed at 0.
const CONFIG: &str = "[parameters]\n\"query.wait\" = 0\n";

/// The virtualenv's `schemathesis`, or why there is none.
async fn schemathesis() -> Result<PathBuf, String> {
    Ok(python_env::venv("py-schemathesis", PACKAGES)
        .await?
        .join("schemathesis"))
}

/// `busmq serve` on the memory store, and a gateway in front of it.
async fn stack() -> (Process, Process) {
    let (serve, _) = busmq_testkit::serve("memory").await;
    let builder = Process::builder("busmq-http");
    let http_listen = builder.listen_addr().to_string();
    let gateway = builder
        .args(["--listen", &http_listen, "--server", &serve.url()])
        .spawn();
    gateway.wait_ready().await;
    (serve, gateway)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_conforms_to_its_openapi_document() {
    let schemathesis = match schemathesis().await {
        Ok(schemathesis) => schemathesis,
        Err(reason) => {
            skip("schemathesis", &reason);
            return;
        }
    };
    // Held to the end: dropping them stops the servers.
    let (serve, gateway) = stack().await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let config = dir.path().join("schemathesis.toml");
    std::fs::write(&config, CONFIG).expect("write the configuration");
    let document = format!("http://{}/openapi.json", gateway.addr());
    // In the temporary directory: schemathesis and Hypothesis leave their
    // caches where they run, which must not be the source tree.
    let output = run_in(
        dir.path(),
        &schemathesis,
        &[
            "--no-color",
            "--config-file",
            config.to_str().expect("a UTF-8 path"),
            "run",
            &document,
            "--checks",
            "all",
            "--max-examples",
            MAX_EXAMPLES,
            "--exclude-path",
            "/v1/pubsub/{channel}/events",
            "--exclude-path",
            "/v1/ws",
            // Names and field names are limited in bytes; ASCII keeps the
            // document's character counts exact.
            "--generation-codec",
            "ascii",
            "--generation-database",
            "none",
            // One worker: Hypothesis is not made for threads.
            "--workers",
            "1",
            "--request-timeout",
            "10",
        ],
    )
    .await
    .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found the gateway off its document: {}\nbusmq-http log:\n{}\nbusmq serve log:\n{}",
        describe(&output),
        gateway.log(),
        serve.log()
    );
    // It ran the operations rather than exiting early with 0.
    assert!(
        stdout.contains("Tested: ") && !stdout.contains("Tested: 0"),
        "no operation tested: {stdout}"
    );
}
