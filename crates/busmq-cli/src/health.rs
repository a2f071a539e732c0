//! `busmq health`: the gRPC health check, so a container healthcheck or a
//! script needs nothing beyond the busmq binary.

use std::time::Duration;

use anyhow::{Context, bail};
use busmq_client::{Bus, Health};
use clap::Args;

/// Ask a busmq server whether it is serving (the standard grpc.health.v1
/// protocol, which every busmq gRPC server answers).
///
/// Prints the status and exits 0 when it is SERVING; exits 1 when it is
/// anything else (NOT_SERVING while a server drains on SIGTERM) or does not
/// answer within --timeout.
#[derive(Debug, Args)]
pub(crate) struct HealthArgs {
    /// The server: HOST:PORT or an http:// URL.
    #[arg(default_value = "127.0.0.1:50051")]
    addr: String,
    /// The service to ask about; the default "" is the whole server.
    #[arg(long, default_value = "")]
    service: String,
    /// Seconds to wait for the answer, connecting included.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,
}

pub(crate) async fn run(args: HealthArgs) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(args.timeout);
    let check = async {
        // Connecting first tells "nobody listens" apart from a bad answer.
        let bus = Bus::connect(&args.addr).await?;
        anyhow::Ok(bus.health(&args.service).await?)
    };
    let health = tokio::time::timeout(timeout, check)
        .await
        .with_context(|| format!("no answer from {} within {}s", args.addr, args.timeout))??;
    println!("{}", health.as_str());
    if health != Health::Serving {
        bail!("{} is {}", args.addr, health.as_str());
    }
    Ok(())
}
