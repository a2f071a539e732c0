//! `busmq lease`: lease-mode consumption for scripts, in three steps: take
//! messages (their leases stay held), then ack or nack each by its token.

use std::io::{self, Write};
use std::time::Duration;

use anyhow::Context;
use busmq_client::{AttachOptions, Bus, ConsumeOptions, LeaseToken, Nacked};
use clap::{Args, Subcommand};

use crate::client::{detach_quietly, next_or_shutdown};
use crate::output::payload_text;
use crate::{AttachArgs, ServerArgs};

/// Lease mode for scripts: take messages, then ack or nack each one.
///
/// `busmq lease take` leases messages and prints them as
/// `ID<TAB>ATTEMPT<TAB>PAYLOAD` lines; their leases stay held after it
/// exits, until `busmq lease ack QUEUE ID ATTEMPT` removes the message,
/// `busmq lease nack QUEUE ID ATTEMPT` gives it back at once, or the
/// visibility timeout runs out and it goes back to the front of the queue.
/// An ack after the timeout (the message was, or may be, delivered to
/// someone else) fails.
#[derive(Debug, Args)]
pub struct LeaseArgs {
    #[command(subcommand)]
    pub command: LeaseCommand,
}

#[derive(Debug, Subcommand)]
pub enum LeaseCommand {
    Take(TakeArgs),
    Ack(SettleArgs),
    Nack(SettleArgs),
}

/// Lease messages and print them as `ID<TAB>ATTEMPT<TAB>PAYLOAD` lines.
///
/// Attaches to the queue (creating it if needed), waits for --max messages
/// (default 1), prints them and detaches, keeping their leases. Stopped by
/// Ctrl-C before that, it gives back every lease it took. ATTEMPT counts
/// the deliveries of the message, this one included. Payloads are escaped
/// as by `busmq consume` (see --raw).
#[derive(Debug, Args)]
pub struct TakeArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    attach: AttachArgs,
    /// Milliseconds a taken message stays invisible to other consumers
    /// unless acked (at most 43200000, 12 hours).
    #[arg(long, env = "BUSMQ_VISIBILITY_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    visibility_ms: u64,
    /// How many messages to take.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..))]
    max: u64,
    /// Set the queue's max deliveries: a message delivered this many times
    /// moves to QUEUE.dlq instead of going back (0: unlimited).
    #[arg(long, value_name = "N")]
    max_deliveries: Option<u32>,
    /// Print payloads exactly as they are, without escaping.
    #[arg(long)]
    raw: bool,
    /// The queue to lease from.
    queue: String,
}

/// Settle one delivery by its lease token (the ID and ATTEMPT printed by
/// `busmq lease take`). `ack` removes the message; `nack` puts it back at
/// the front of the queue and prints `requeued`, or `dead-lettered` when
/// that was its last delivery.
#[derive(Debug, Args)]
pub struct SettleArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The queue the message was taken from.
    queue: String,
    /// The message id.
    id: u64,
    /// The delivery's attempt.
    attempt: u32,
}

pub async fn run(args: LeaseArgs) -> anyhow::Result<()> {
    match args.command {
        LeaseCommand::Take(args) => take(args).await,
        LeaseCommand::Ack(args) => {
            let (bus, token) = settle_target(&args).await?;
            bus.queue(&args.queue)
                .ack_lease(token)
                .await
                .with_context(|| format!("acking message {} of {}", args.id, args.queue))
        }
        LeaseCommand::Nack(args) => {
            let (bus, token) = settle_target(&args).await?;
            let nacked = bus
                .queue(&args.queue)
                .nack(token)
                .await
                .with_context(|| format!("nacking message {} of {}", args.id, args.queue))?;
            let what = match nacked {
                Nacked::Requeued => "requeued",
                Nacked::DeadLettered => "dead-lettered",
            };
            println!("{what}");
            Ok(())
        }
    }
}

async fn settle_target(args: &SettleArgs) -> anyhow::Result<(Bus, LeaseToken)> {
    let bus = Bus::connect(&args.server.server).await?;
    let token = LeaseToken {
        id: args.id,
        attempt: args.attempt,
    };
    Ok((bus, token))
}

async fn take(args: TakeArgs) -> anyhow::Result<()> {
    let bus = Bus::connect(&args.server.server).await?;
    let queue = bus.queue(args.queue);
    let attach = AttachOptions {
        ttl: args.attach.ttl.map(Duration::from_secs),
        max_deliveries: args.max_deliveries,
    };
    queue
        .attach(attach)
        .await
        .with_context(|| format!("attaching to {}", queue.name()))?;
    let options = ConsumeOptions::lease(Duration::from_millis(args.visibility_ms)).max(args.max);
    let taken = async {
        let mut consumer = queue.consume(options).await?;
        let shutdown = busmq_server::shutdown_on_signal();
        let mut out = io::stdout().lock();
        while let Some(delivery) = next_or_shutdown(&mut consumer, &shutdown).await {
            let delivery = delivery?;
            writeln!(
                out,
                "{}\t{}\t{}",
                delivery.id,
                delivery.attempt,
                payload_text(&delivery.payload, args.raw)
            )?;
            out.flush()?;
        }
        anyhow::Ok(())
    };
    let taken = taken.await;
    detach_quietly(&queue).await;
    taken.with_context(|| format!("leasing from {}", queue.name()))
}
