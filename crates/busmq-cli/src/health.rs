//! `busmq health`: the gRPC health check, so a container healthcheck or a
//! script needs nothing beyond the busmq binary.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

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

fn url(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

pub(crate) async fn run(args: HealthArgs) -> anyhow::Result<()> {
    let url = url(&args.addr);
    let timeout = Duration::from_secs(args.timeout);
    let check = async {
        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .with_context(|| format!("{url:?} is not a server address"))?
            .connect()
            .await
            .with_context(|| format!("cannot connect to {url}"))?;
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: args.service.clone(),
            })
            .await
            .with_context(|| format!("{url} did not answer the health check"))?;
        anyhow::Ok(answer.into_inner().status)
    };
    let status = tokio::time::timeout(timeout, check)
        .await
        .with_context(|| format!("no answer from {url} within {}s", args.timeout))??;
    let name = ServingStatus::try_from(status)
        .map(|s| s.as_str_name())
        .unwrap_or("UNKNOWN_STATUS");
    println!("{name}");
    if status != ServingStatus::Serving as i32 {
        bail!("{url} is {name}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::url;

    #[test]
    fn a_bare_address_becomes_an_http_url() {
        assert_eq!(url("broker:50051"), "http://broker:50051");
        assert_eq!(url("https://b:1"), "https://b:1");
    }
}
