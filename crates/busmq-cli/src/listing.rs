//! `busmq queues` and `busmq channels`: what exists on the bus, as tables.

use std::io::{self, Write};

use anyhow::Context;
use busmq_client::{Bus, ListQueues, MAX_LIST_LIMIT};
use clap::Args;

use crate::ServerArgs;
use crate::output::{channels_table, queues_table};

/// List the queues of the bus (dead-letter queues included) in name order:
/// messages stored, pending acks, leased, attachments, pushed, consumed.
#[derive(Debug, Args)]
pub struct QueuesArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Only queues whose name contains this text.
    #[arg(long)]
    filter: Option<String>,
    /// Show at most this many queues (the first in name order). Unset:
    /// every queue.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
}

/// List the pub/sub channels that have subscribers, with their counts.
#[derive(Debug, Args)]
pub struct ChannelsArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Only channels whose name contains this text.
    #[arg(long)]
    filter: Option<String>,
}

pub async fn queues(args: QueuesArgs) -> anyhow::Result<()> {
    let bus = Bus::connect(&args.server.server).await?;
    let mut left = args.limit.unwrap_or(u64::MAX);
    let mut listed = Vec::new();
    let mut after = None;
    while left > 0 {
        let page = bus
            .list_queues(ListQueues {
                filter: args.filter.clone(),
                after,
                limit: Some(left.min(u64::from(MAX_LIST_LIMIT)) as u32),
            })
            .await
            .context("listing queues")?;
        left -= page.queues.len() as u64;
        listed.extend(page.queues);
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let mut out = io::stdout().lock();
    write!(out, "{}", queues_table(&listed))?;
    out.flush()?;
    Ok(())
}

pub async fn channels(args: ChannelsArgs) -> anyhow::Result<()> {
    let bus = Bus::connect(&args.server.server).await?;
    let listed = bus
        .all_channels(args.filter.as_deref())
        .await
        .context("listing channels")?;
    let mut out = io::stdout().lock();
    write!(out, "{}", channels_table(&listed))?;
    out.flush()?;
    Ok(())
}
