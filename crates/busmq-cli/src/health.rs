//! `busmq health`: the gRPC health check (or, with `--http`, an HTTP
//! probe of the gateway), so a container healthcheck or a script needs
//! nothing beyond the busmq binary.

use std::time::Duration;

use anyhow::{Context, bail};
use busmq_client::{Bus, Health};
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Ask a busmq server whether it is serving (the standard grpc.health.v1
/// protocol, which every busmq gRPC server answers).
///
/// Prints the status and exits 0 when it is SERVING; exits 1 when it is
/// anything else (NOT_SERVING while a server drains on SIGTERM) or does not
/// answer within --timeout. With --http, asks an HTTP gateway's
/// /readyz (ready when its broker answers) instead.
#[derive(Debug, Args)]
pub(crate) struct HealthArgs {
    /// The server: HOST:PORT or an http:// URL.
    #[arg(default_value = "127.0.0.1:50051")]
    addr: String,
    /// The service to ask about; the default "" is the whole server.
    #[arg(long, default_value = "")]
    service: String,
    /// Probe an HTTP gateway at HOST:PORT: GET /readyz must answer 200.
    #[arg(long)]
    http: bool,
    /// Seconds to wait for the answer, connecting included.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,
}

pub(crate) async fn run(args: HealthArgs) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(args.timeout);
    if args.http {
        let status = tokio::time::timeout(timeout, http_ready(&args.addr))
            .await
            .with_context(|| format!("no answer from {} within {}s", args.addr, args.timeout))??;
        println!("{status}");
        if status != 200 {
            bail!("{}/readyz answered {status}", args.addr);
        }
        return Ok(());
    }
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

/// The status code of `GET /readyz` on the gateway at `addr` (HOST:PORT),
/// over a plain HTTP/1.1 connection: a probe needs no HTTP client library.
async fn http_ready(addr: &str) -> anyhow::Result<u16> {
    let host = addr
        .strip_prefix("http://")
        .unwrap_or(addr)
        .trim_end_matches('/');
    let mut stream = tokio::net::TcpStream::connect(host)
        .await
        .with_context(|| format!("connecting to {host}"))?;
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    // The status line is all a probe reads; 64 bytes hold it.
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < head.len() {
        let n = stream.read(&mut head[read..]).await?;
        if n == 0 {
            break;
        }
        read += n;
        if head[..read].contains(&b'\n') {
            break;
        }
    }
    status_of(&head[..read]).with_context(|| format!("{host} did not answer HTTP"))
}

/// The code of an HTTP/1.x status line.
fn status_of(head: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(head).ok()?.lines().next()?;
    let mut parts = line.split_ascii_whitespace();
    parts.next().filter(|v| v.starts_with("HTTP/1."))?;
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::status_of;

    #[test]
    fn the_status_line_is_read_and_anything_else_refused() {
        assert_eq!(status_of(b"HTTP/1.1 200 OK\r\ncontent-type"), Some(200));
        assert_eq!(
            status_of(b"HTTP/1.1 503 Service Unavailable\r\n"),
            Some(503)
        );
        assert_eq!(status_of(b"SSH-2.0-OpenSSH"), None);
        assert_eq!(status_of(b""), None);
    }
}
