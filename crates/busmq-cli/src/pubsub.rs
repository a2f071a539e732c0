//! The pub/sub commands: publish, subscribe.

use std::io::{self, Write};

use anyhow::Context;
use busmq_client::{Bus, PubSubEvent};
use futures::StreamExt;

use crate::output::payload_text;
use crate::{PublishArgs, SubscribeArgs};

pub async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let bus = Bus::connect(&args.server.server).await?;
    let receivers = bus
        .pubsub(args.channel.as_str())
        .publish(args.message)
        .await
        .with_context(|| format!("publishing on {}", args.channel))?;
    let mut out = io::stdout().lock();
    writeln!(out, "{receivers}")?;
    out.flush()?;
    Ok(())
}

pub async fn subscribe(args: SubscribeArgs) -> anyhow::Result<()> {
    let bus = Bus::connect(&args.server.server).await?;
    let pubsub = bus.pubsub(args.channel.as_str());
    let mut events = pubsub.events();
    pubsub
        .subscribe()
        .await
        .with_context(|| format!("subscribing to {}", args.channel))?;
    // On standard error, so a script can wait for it before publishing.
    eprintln!("busmq: subscribed to {}", args.channel);
    let shutdown = busmq_server::shutdown_on_signal();
    let mut out = io::BufWriter::new(io::stdout().lock());
    let mut printed = 0u64;
    let result = loop {
        if args.count.is_some_and(|n| printed >= n) {
            break Ok(());
        }
        let event = tokio::select! {
            event = events.next() => event,
            _ = shutdown.cancelled() => break Ok(()),
        };
        match event {
            Some(PubSubEvent::Message(message)) => {
                let line = format!("{}\n", payload_text(&message, args.raw));
                match out.write_all(line.as_bytes()).and_then(|()| out.flush()) {
                    Ok(()) => printed += 1,
                    // The reader went away (`| head`): stop quietly.
                    Err(err) if err.kind() == io::ErrorKind::BrokenPipe => break Ok(()),
                    Err(err) => break Err(err).context("writing to standard output"),
                }
            }
            Some(PubSubEvent::Missed(n)) => {
                eprintln!("busmq: warning: {n} message(s) missed: not reading fast enough");
            }
            Some(PubSubEvent::Error(err)) => {
                break Err(anyhow::anyhow!(
                    "subscription to {} lost: {err}",
                    args.channel
                ));
            }
            Some(PubSubEvent::Unsubscribed) | None => {
                break Err(anyhow::anyhow!("subscription to {} ended", args.channel));
            }
            Some(_) => {}
        }
    };
    pubsub.unsubscribe();
    result
}
