//! `busmq channel`: one peer of a channel for scripts: lines of standard
//! input are sent, events and messages are printed.

use std::io::{self, BufRead, Write};

use anyhow::Context;
use busmq_client::{Bus, ChannelEvent, ChannelSender, ChannelSession};
use clap::Args;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::output::payload_text;
use crate::{AttachArgs, ModeArgs, ServerArgs};

/// Lines of standard input read ahead of the channel.
const STDIN_BUFFER: usize = 1024;

/// Be one peer of a channel: send each line of standard input, print what
/// happens.
///
/// With the default roles one peer runs `--listen` and the other
/// `--connect`; with explicit roles both `--connect`, naming the roles the
/// other way round (`--local server --remote client` against `--local
/// client --remote server`). It does not matter which peer starts first:
/// lines sent before the other peer connects wait for it.
///
/// Standard output has one line per event: `connect`, `remote:connect`,
/// `remote:disconnect`, `end`, `error<TAB>MESSAGE`, `disconnect` (last,
/// once everything sent is stored), and
/// `message<TAB>ID<TAB>PAYLOAD` for each message (payload escaped as by
/// `busmq consume`, see --raw). A session broken by a broker restart opens
/// again by itself (noted on standard error) and prints `connect` again.
///
/// Runs until the channel ends, Ctrl-C or SIGTERM; with --count, until N
/// messages were received and standard input is all sent. It then
/// disconnects (the other peer gets `remote:disconnect`), or ends the
/// channel with --end. `--send-to ENDPOINT` sends standard input to that
/// endpoint without connecting, printing each stored message's id.
#[derive(Debug, Args)]
pub struct ChannelArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    attach: AttachArgs,
    /// Consume the remote role and send to the local one (node-busmq's
    /// `channel.listen()`).
    #[arg(long, conflicts_with_all = ["connect", "send_to"])]
    listen: bool,
    /// Consume the local role and send to the remote one (node-busmq's
    /// `channel.connect()`).
    #[arg(long, conflicts_with = "send_to")]
    connect: bool,
    /// Send standard input to this endpoint (role) without connecting
    /// (node-busmq's `channel.sendTo`).
    #[arg(long, value_name = "ENDPOINT")]
    send_to: Option<String>,
    /// The local role: 1..=64 characters of A-Z a-z 0-9 _ -.
    #[arg(long, value_name = "ROLE", default_value = busmq_client::DEFAULT_LOCAL_ROLE)]
    local: String,
    /// The remote role.
    #[arg(long, value_name = "ROLE", default_value = busmq_client::DEFAULT_REMOTE_ROLE)]
    remote: String,
    // How this peer consumes its inbound queue (reliable: what it did not
    // ack comes again to the next session of its endpoint).
    #[command(flatten)]
    mode: ModeArgs,
    /// Exit after N messages were received (and standard input sent).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// End the channel on the way out instead of disconnecting.
    #[arg(long, conflicts_with = "send_to")]
    end: bool,
    /// Print payloads as they are, without escaping.
    #[arg(long)]
    raw: bool,
    /// The channel's name.
    name: String,
}

pub async fn run(args: ChannelArgs) -> anyhow::Result<()> {
    let bus = Bus::connect(&args.server.server).await?;
    let mut channel = bus.channel_with_roles(&args.name, &args.local, &args.remote);
    if let Some(ttl) = args.attach.ttl {
        channel = channel.with_ttl(std::time::Duration::from_secs(ttl));
    }
    if let Some(endpoint) = &args.send_to {
        let mut lines = stdin_lines();
        let mut out = io::stdout().lock();
        while let Some(line) = lines.recv().await {
            let line = line.context("reading standard input")?;
            let id = channel
                .send_to(endpoint, line)
                .await
                .with_context(|| format!("sending to endpoint {endpoint} of {}", args.name))?;
            writeln!(out, "{id}")?;
        }
        out.flush()?;
        return Ok(());
    }
    if !args.listen && !args.connect {
        anyhow::bail!("say how to join the channel: --listen, --connect or --send-to ENDPOINT");
    }
    let options = args.mode.options();
    let session = if args.listen {
        channel.listen_with(options).await
    } else {
        channel.connect_with(options).await
    }
    .with_context(|| format!("opening channel {}", args.name))?;
    talk(session, &args).await
}

/// Standard input, line by line. It blocks, so it is read on a plain
/// thread, which (unlike a Tokio blocking task) does not keep the process
/// alive once the command is done.
fn stdin_lines() -> mpsc::Receiver<io::Result<String>> {
    let (tx, rx) = mpsc::channel(STDIN_BUFFER);
    std::thread::spawn(move || {
        for line in io::stdin().lock().lines() {
            let failed = line.is_err();
            if tx.blocking_send(line).is_err() || failed {
                return;
            }
        }
    });
    rx
}

/// Sends every line of standard input; stops early if the channel ends.
async fn send_stdin(sender: ChannelSender) -> anyhow::Result<()> {
    let mut lines = stdin_lines();
    while let Some(line) = lines.recv().await {
        let line = line.context("reading standard input")?;
        if sender.is_ended() {
            break;
        }
        sender.send(line).await?;
    }
    Ok(())
}

async fn talk(mut session: ChannelSession, args: &ChannelArgs) -> anyhow::Result<()> {
    let shutdown = busmq_server::shutdown_on_signal();
    // The session opens with `connect`: print it before anything is sent.
    if let Some(ChannelEvent::Connect { .. }) = session.next().await {
        println!("connect");
    }
    let mut sending = tokio::spawn(send_stdin(session.sender()));
    let mut sent = false;
    let mut received = 0u64;
    let mut ended = false;
    // Reliable mode: the last message printed and not acked yet.
    let mut unacked = None;
    let mut out = io::BufWriter::new(io::stdout().lock());
    let done = |received: u64, sent: bool| sent && args.count.is_some_and(|n| received >= n);
    while !ended && !done(received, sent) {
        let event = tokio::select! {
            event = session.next() => event,
            result = &mut sending, if !sent => {
                sent = true;
                result.context("the sending task failed")??;
                continue;
            }
            _ = shutdown.cancelled() => break,
        };
        let Some(event) = event else {
            anyhow::bail!("the broker closed the channel session");
        };
        let line = match event {
            ChannelEvent::Connect { .. } => "connect".to_owned(),
            ChannelEvent::RemoteConnect => "remote:connect".to_owned(),
            ChannelEvent::RemoteDisconnect => "remote:disconnect".to_owned(),
            ChannelEvent::End { .. } => {
                ended = true;
                "end".to_owned()
            }
            ChannelEvent::Error(e) => {
                // Also on standard error, where a script looks for failures.
                eprintln!("busmq: channel {}: {e}", args.name);
                format!("error\t{}", payload_text(e.to_string().as_bytes(), false))
            }
            ChannelEvent::Reconnecting(e) => {
                // Not a line of standard output: the session goes on, with
                // `connect` again once it is back.
                eprintln!("busmq: channel {}: reconnecting: {e}", args.name);
                continue;
            }
            ChannelEvent::Message { id, payload } => {
                received += 1;
                unacked = args.mode.reliable.then_some(id);
                format!("message\t{id}\t{}", payload_text(&payload, args.raw))
            }
            _ => continue,
        };
        writeln!(out, "{line}")?;
        if session.buffered_len() == 0 {
            out.flush()?;
            // Everything received so far is printed: one cumulative ack
            // covers it.
            if let Some(id) = unacked.take().filter(|_| !ended) {
                session.ack(id).await?;
            }
        }
    }
    out.flush()?;
    if let Some(id) = unacked.filter(|_| !ended) {
        session.ack(id).await?;
    }
    if !sent {
        sending.abort();
    }
    if args.end && !ended {
        session.end().await?;
        // Wait for our own end to be applied before leaving.
        while let Some(event) = session.next().await {
            if matches!(event, ChannelEvent::End { .. }) {
                writeln!(out, "end")?;
                break;
            }
        }
        out.flush()?;
    }
    session
        .disconnect()
        .await
        .context("disconnecting from the channel")?;
    writeln!(out, "disconnect")?;
    out.flush()?;
    Ok(())
}
