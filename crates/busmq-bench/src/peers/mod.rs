//! Peers in the same run (issue 4): other systems driven by the same
//! workload loops and reporting as busmq (`busmq bench --peer ...`).
//!
//! Each peer runs with its own fixed semantics, as close to busmq's durable
//! queues as it offers:
//! - `nats`: NATS JetStream, one file-storage stream with a subject per
//!   queue, publish with ack, a durable pull consumer per queue, explicit
//!   acks;
//! - `rabbitmq`: durable queues, persistent messages, publisher confirms,
//!   manual (multiple) acks, prefetch (`basic.qos`);
//! - `redis`: the raw baseline, no broker: `LPUSH` of a whole batch and
//!   pipelined `RPOP key COUNT`, nothing acknowledged;
//! - `zmq`: raw libzmq PUSH → PULL over TCP, no broker, no storage, no
//!   acks; a push counts once libzmq has taken it (see `zmq.rs`).

use anyhow::Context;
use clap::ValueEnum;

use crate::report::Report;
use crate::{BenchArgs, workload};

mod nats;
mod rabbitmq;
mod redis;
mod zmq;

/// A system `busmq bench --peer` can drive instead of busmq.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Peer {
    /// NATS JetStream (async-nats).
    Nats,
    /// RabbitMQ (lapin).
    Rabbitmq,
    /// Redis lists, LPUSH / RPOP (the store's own ceiling).
    Redis,
    /// Raw ZeroMQ (libzmq) PUSH → PULL, no broker; binds one port per
    /// queue counting up from the --peer-url port.
    Zmq,
}

impl Peer {
    fn semantics(self) -> &'static str {
        match self {
            Peer::Nats => {
                "NATS JetStream: file-storage stream, publish acks, durable pull consumers, explicit acks"
            }
            Peer::Rabbitmq => {
                "RabbitMQ: durable queues, persistent messages, publisher confirms, manual acks"
            }
            Peer::Redis => "Redis lists: LPUSH batches, pipelined RPOP, no acks",
            Peer::Zmq => {
                "raw libzmq PUSH->PULL over TCP: no broker, no storage, no acks; pushed = handed to libzmq"
            }
        }
    }
}

/// How the output names a peer run.
pub(crate) fn description(peer: Peer, args: &BenchArgs) -> String {
    format!(
        "peer {} at {} ({})",
        format!("{peer:?}").to_lowercase(),
        args.peer_url.as_deref().unwrap_or("?"),
        peer.semantics()
    )
}

/// One run against `peer`; prints its description, cycles and summary.
pub(crate) async fn run_once(peer: Peer, args: &BenchArgs) -> anyhow::Result<Report> {
    let url = args
        .peer_url
        .as_deref()
        .context("--peer needs --peer-url")?;
    println!("{}", args.describe(&description(peer, args)));
    let report = match peer {
        Peer::Nats => workload::run(args, nats::Nats::connect(url, args).await?).await?,
        Peer::Rabbitmq => {
            workload::run(args, rabbitmq::Rabbitmq::connect(url, args).await?).await?
        }
        Peer::Redis => workload::run(args, redis::Redis::connect(url, args).await?).await?,
        Peer::Zmq => workload::run(args, zmq::Zmq::connect(url, args).await?).await?,
    };
    println!("{}", report.summary(args));
    Ok(report)
}

/// A queue name as a token usable in peer identifiers (NATS stream and
/// consumer names allow no dots).
fn token(name: &str) -> String {
    name.replace('.', "_")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_no_dots() {
        assert_eq!(token("bench.1f.7"), "bench_1f_7");
    }

    #[test]
    fn peer_needs_a_url() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        assert!(Cli::try_parse_from(["bench", "--peer", "nats"]).is_err());
        let cli = Cli::try_parse_from([
            "bench",
            "--peer",
            "rabbitmq",
            "--peer-url",
            "amqp://127.0.0.1:5672",
        ])
        .expect("parses");
        assert_eq!(cli.bench.peer, Some(Peer::Rabbitmq));
        cli.bench.validate().expect("valid");
        assert!(description(Peer::Rabbitmq, &cli.bench).contains("publisher confirms"));
    }
}
