//! The client commands: push, consume, stats.

use std::io::{self, BufRead, Write};
use std::time::Duration;

use anyhow::Context;
use busmq_client::{AttachOptions, Bus, ConsumeOptions, Consumer, Delivery, Queue};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::output::{payload_text, stats_json, stats_text};
use crate::{ConsumeArgs, PushArgs, StatsArgs};

/// Lines of standard input pushed per batch.
const STDIN_BATCH: usize = 1000;

async fn connect(server: &str) -> anyhow::Result<Bus> {
    Ok(Bus::connect(server).await?)
}

fn attach_options(ttl: Option<u64>) -> AttachOptions {
    AttachOptions {
        ttl: ttl.map(Duration::from_secs),
        max_deliveries: None,
    }
}

/// Detaches, reporting (not failing on) an error: the command's own result
/// matters more.
pub(crate) async fn detach_quietly(queue: &Queue) {
    if let Err(err) = queue.detach().await {
        eprintln!("busmq: warning: detaching from {}: {err}", queue.name());
    }
}

pub async fn push(args: PushArgs) -> anyhow::Result<()> {
    let bus = connect(&args.server.server).await?;
    let queue = bus.queue(args.queue);
    queue
        .attach(attach_options(args.attach.ttl))
        .await
        .with_context(|| format!("attaching to {}", queue.name()))?;
    let pushed = if args.messages.is_empty() {
        push_stdin(&queue).await
    } else {
        push_batch(&queue, args.messages).await
    };
    detach_quietly(&queue).await;
    pushed.with_context(|| format!("pushing to {}", queue.name()))
}

async fn push_batch(queue: &Queue, messages: Vec<String>) -> anyhow::Result<()> {
    let ids = queue.push_batch(messages).await?;
    let mut out = io::stdout().lock();
    for id in ids {
        writeln!(out, "{id}")?;
    }
    out.flush()?;
    Ok(())
}

async fn push_stdin(queue: &Queue) -> anyhow::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<Vec<String>>>(2);
    // Standard input blocks: read it on a plain thread, which (unlike a
    // Tokio blocking task) does not keep the process alive if pushing fails
    // while input is still open.
    std::thread::spawn(move || {
        let mut batch = Vec::with_capacity(STDIN_BATCH);
        for line in io::stdin().lock().lines() {
            match line {
                Ok(line) => batch.push(line),
                Err(err) => {
                    let _ = tx.blocking_send(Err(err));
                    return;
                }
            }
            if batch.len() == STDIN_BATCH
                && tx
                    .blocking_send(Ok(std::mem::replace(
                        &mut batch,
                        Vec::with_capacity(STDIN_BATCH),
                    )))
                    .is_err()
            {
                return;
            }
        }
        if !batch.is_empty() {
            let _ = tx.blocking_send(Ok(batch));
        }
    });
    while let Some(batch) = rx.recv().await {
        let batch = batch.context("reading standard input")?;
        push_batch(queue, batch).await?;
    }
    Ok(())
}

pub async fn consume(args: ConsumeArgs) -> anyhow::Result<()> {
    let bus = connect(&args.server.server).await?;
    let queue = bus.queue(args.queue.clone());
    let options = ConsumeOptions {
        max: args.max,
        prefetch: args.prefetch,
        ..args.mode.options()
    };
    options.mode()?;
    queue
        .attach(attach_options(args.attach.ttl))
        .await
        .with_context(|| format!("attaching to {}", queue.name()))?;
    let consumed = consume_attached(&queue, options, args.raw).await;
    detach_quietly(&queue).await;
    consumed.with_context(|| format!("consuming {}", queue.name()))
}

async fn consume_attached(queue: &Queue, options: ConsumeOptions, raw: bool) -> anyhow::Result<()> {
    let shutdown = busmq_server::shutdown_on_signal();
    let mut consumer = queue.consume(options).await?;
    if consumer.redelivered() > 0 {
        tracing::info!(
            redelivered = consumer.redelivered(),
            "un-acked messages of an earlier consumer are delivered again"
        );
    }
    let mut out = io::BufWriter::new(io::stdout().lock());
    while let Some(delivery) = next_or_shutdown(&mut consumer, &shutdown).await {
        let delivery = delivery?;
        let line = format!(
            "{}\t{}\n",
            delivery.id,
            payload_text(&delivery.payload, raw)
        );
        // Everything received so far is printed before it is acked; the ack
        // is cumulative, so one per received batch covers all of it.
        let written = out.write_all(line.as_bytes()).and_then(|()| {
            if consumer.buffered_len() == 0 {
                out.flush()
            } else {
                Ok(())
            }
        });
        match written {
            Ok(()) => {}
            // The reader went away (`| head`): stop quietly; what was not
            // acked is delivered again to the next reliable consumer.
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => break,
            Err(err) => return Err(err).context("writing to standard output"),
        }
        if options.reliable && consumer.buffered_len() == 0 {
            consumer
                .ack(delivery.id)
                .await
                .with_context(|| format!("acking message {}", delivery.id))?;
        }
    }
    consumer.stop();
    match out.flush() {
        Err(err) if err.kind() != io::ErrorKind::BrokenPipe => {
            Err(err).context("writing to standard output")
        }
        _ => Ok(()),
    }
}

/// The consumer's next delivery; `None` once it ended or on Ctrl-C or
/// SIGTERM.
pub(crate) async fn next_or_shutdown(
    consumer: &mut Consumer,
    shutdown: &CancellationToken,
) -> Option<busmq_client::Result<Delivery>> {
    tokio::select! {
        delivery = consumer.next() => delivery,
        _ = shutdown.cancelled() => None,
    }
}

pub async fn stats(args: StatsArgs) -> anyhow::Result<()> {
    let bus = connect(&args.server.server).await?;
    let queue = bus.queue(args.queue);
    let info = queue
        .info()
        .await
        .with_context(|| format!("reading stats of {}", queue.name()))?;
    let mut out = io::stdout().lock();
    if args.json {
        writeln!(out, "{}", stats_json(queue.name(), &info))?;
    } else {
        write!(out, "{}", stats_text(queue.name(), &info))?;
    }
    out.flush()?;
    Ok(())
}
