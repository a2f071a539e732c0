//! Raw ZeroMQ through libzmq (the `zmq` crate): PUSH → PULL over TCP, no
//! broker, no storage, no acknowledgements. What a bare message transport
//! carries with the same workload.
//!
//! - Queues: each consumer task binds one PULL socket per queue it reads,
//!   on consecutive ports counting up from the `--peer-url` port
//!   (`tcp://127.0.0.1:17106` → 17106, 17107, ...; port `0` or `*`: ports
//!   the kernel picks). With `--consumers` ≤ `--queues` (the defaults, 4 and
//!   100) that is one PULL socket, and one port, per queue; a queue several
//!   consumer tasks share gets one PULL socket each, and its pushes are
//!   round-robined over them by libzmq (competing consumers).
//! - Producers: each producer task has a PUSH socket per queue it pushes
//!   to, connected to every PULL socket of that queue. A push batch is
//!   `--batch` individual messages (no multipart), each the workload's
//!   payload whose first 8 bytes are its push time.
//! - Confirmation: ZeroMQ has none. A batch's ticket resolves once libzmq
//!   accepted its sends (queued in the PUSH socket, not yet delivered, nothing
//!   stored): "pushed" means handed to libzmq, and messages are lost if a
//!   process dies.
//! - Threads: zmq sockets are blocking and not thread safe, so every
//!   producer task and every consumer task gets one dedicated OS thread
//!   owning all its sockets, bridged to tokio by bounded channels; nothing
//!   blocks the runtime. A consumer thread waits on all its PULL sockets
//!   at once with `zmq::poll`. libzmq adds its I/O thread and reaper per
//!   context (one context per 1,000 sockets: libzmq's default limit of
//!   1,023 sockets per context, which the `zmq` crate cannot raise).
//! - Memory: bounded by high-water marks. Each PUSH socket holds at most
//!   `--batch` × `--in-flight` messages (SNDHWM, 512 by default), each PULL
//!   socket `--prefetch` (RCVHWM, 1,024), plus what sits in the kernel's
//!   TCP buffers; a full PUSH socket blocks its producer thread
//!   (backpressure). Between a consumer thread and its tokio task, one
//!   batch of at most `--prefetch` messages waits per queue.
//! - End of a run: a producer thread keeps its sockets after its producer is
//!   dropped, so what libzmq still holds reaches the consumers while they
//!   drain; `cleanup` then tells every thread to stop (a consumer thread
//!   also stops once all its tokio consumers are gone, noticed within one
//!   poll timeout), joins them off the runtime, and the sockets close with
//!   LINGER 0, so the context terminates at once.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use busmq_client::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::BenchArgs;
use crate::transport::{Consumer, Producer, Recorder, Ticket, Transport};

/// How long a consumer thread waits in `zmq::poll` before it looks whether
/// the run is over.
const POLL_MS: i64 = 100;

/// How long one blocking send waits before the producer thread looks
/// whether the run is over.
const SEND_TIMEOUT_MS: i32 = 100;

/// A send blocked this long (SNDHWM reached, nothing reading) fails its
/// batch instead of hanging the run.
const STALLED: Duration = Duration::from_secs(60);

/// Sockets per libzmq context (its default limit is 1,023).
const SOCKETS_PER_CONTEXT: usize = 1000;

/// How long `cleanup` waits for the threads.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Zmq {
    host: String,
    /// SNDHWM of each PUSH socket.
    sndhwm: i32,
    /// RCVHWM of each PULL socket, and the largest batch handed to a
    /// consumer.
    rcvhwm: i32,
    /// Push batches a producer task may have queued per queue.
    in_flight: usize,
    shutdown: Arc<Shutdown>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Every context, the one taking new sockets last.
    contexts: Vec<zmq::Context>,
    /// Sockets created in the last context.
    sockets: usize,
    /// The next PULL port; `None`: the kernel picks.
    next_port: Option<u16>,
    /// Where each queue's PULL sockets are bound.
    endpoints: HashMap<String, Vec<String>>,
    threads: Vec<JoinHandle<()>>,
}

impl State {
    /// A context for each of `n` new sockets.
    fn contexts(&mut self, n: usize) -> Vec<zmq::Context> {
        (0..n)
            .map(|_| {
                if self.contexts.is_empty() || self.sockets == SOCKETS_PER_CONTEXT {
                    let context = zmq::Context::new();
                    self.contexts.push(context);
                    self.sockets = 0;
                }
                self.sockets += 1;
                self.contexts.last().expect("a context").clone()
            })
            .collect()
    }

    /// Where to bind the next PULL socket.
    fn bind_endpoint(&mut self, host: &str) -> anyhow::Result<String> {
        match self.next_port {
            None => Ok(format!("tcp://{host}:*")),
            Some(port) => {
                self.next_port = Some(
                    port.checked_add(1)
                        .context("out of TCP ports for the PULL sockets")?,
                );
                Ok(format!("tcp://{host}:{port}"))
            }
        }
    }
}

/// Splits `tcp://HOST:PORT` into the host and the first PULL port (`None`
/// for `0` or `*`: ports the kernel picks).
fn parse_url(url: &str) -> anyhow::Result<(String, Option<u16>)> {
    let address = url
        .strip_prefix("tcp://")
        .with_context(|| format!("--peer-url for zmq must be tcp://HOST:PORT, not {url}"))?;
    let (host, port) = address
        .rsplit_once(':')
        .with_context(|| format!("no port in {url}"))?;
    anyhow::ensure!(!host.is_empty(), "no host in {url}");
    let port = match port {
        "*" | "0" => None,
        port => Some(
            port.parse::<u16>()
                .with_context(|| format!("bad port in {url}"))?,
        ),
    };
    Ok((host.to_owned(), port))
}

impl Zmq {
    pub async fn connect(url: &str, args: &BenchArgs) -> anyhow::Result<Zmq> {
        let (host, next_port) = parse_url(url)?;
        let hwm = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        Ok(Zmq {
            host,
            sndhwm: hwm(args.batch.saturating_mul(args.in_flight)),
            rcvhwm: hwm(args.prefetch as usize),
            in_flight: args.in_flight,
            shutdown: Arc::default(),
            state: Mutex::new(State {
                next_port,
                ..State::default()
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Transport for Zmq {
    type Producer = ZmqProducer;
    type Consumer = ZmqConsumer;

    async fn prepare(&self, queues: &[String]) -> anyhow::Result<()> {
        let mut state = self.state();
        for queue in queues {
            state.endpoints.insert(queue.clone(), Vec::new());
        }
        Ok(())
    }

    async fn producer(&self, queues: Vec<String>) -> anyhow::Result<ZmqProducer> {
        let (contexts, peers) = {
            let mut state = self.state();
            let peers = queues
                .iter()
                .map(|q| match state.endpoints.get(q) {
                    Some(endpoints) if !endpoints.is_empty() => Ok(endpoints.clone()),
                    _ => Err(anyhow!("no PULL socket bound for queue {q}")),
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            (state.contexts(queues.len()), peers)
        };
        let (commands, receiver) = mpsc::channel(self.in_flight * queues.len().max(1));
        let (ready, started) = oneshot::channel();
        let sndhwm = self.sndhwm;
        let shutdown = Arc::clone(&self.shutdown);
        let thread = std::thread::Builder::new()
            .name("zmq-push".into())
            .spawn(move || {
                let sockets = match push_sockets(&contexts, &peers, sndhwm) {
                    Ok(sockets) => {
                        let _ = ready.send(Ok(()));
                        sockets
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                drop(contexts);
                push_loop(&sockets, receiver, &shutdown);
            })
            .context("starting a ZeroMQ producer thread")?;
        self.state().threads.push(thread);
        started
            .await
            .context("the ZeroMQ producer thread ended")??;
        Ok(ZmqProducer { commands })
    }

    async fn consumers(&self, queues: Vec<String>) -> anyhow::Result<Vec<ZmqConsumer>> {
        let (contexts, binds) = {
            let mut state = self.state();
            let binds = queues
                .iter()
                .map(|_| state.bind_endpoint(&self.host))
                .collect::<anyhow::Result<Vec<_>>>()?;
            (state.contexts(queues.len()), binds)
        };
        let mut outputs = Vec::with_capacity(queues.len());
        let mut consumers = Vec::with_capacity(queues.len());
        for _ in &queues {
            // One batch waits per queue; the thread builds the next.
            let (tx, rx) = mpsc::channel(1);
            outputs.push(tx);
            consumers.push(ZmqConsumer { batches: rx });
        }
        let (ready, bound) = oneshot::channel();
        let rcvhwm = self.rcvhwm;
        let shutdown = Arc::clone(&self.shutdown);
        let thread = std::thread::Builder::new()
            .name("zmq-pull".into())
            .spawn(move || {
                let sockets = match pull_sockets(&contexts, &binds, rcvhwm) {
                    Ok((sockets, endpoints)) => {
                        let _ = ready.send(Ok(endpoints));
                        sockets
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                drop(contexts);
                pull_loop(sockets, outputs, rcvhwm as usize, &shutdown);
            })
            .context("starting a ZeroMQ consumer thread")?;
        self.state().threads.push(thread);
        let endpoints = bound.await.context("the ZeroMQ consumer thread ended")??;
        let mut state = self.state();
        for (queue, endpoint) in queues.iter().zip(endpoints) {
            state
                .endpoints
                .entry(queue.clone())
                .or_default()
                .push(endpoint);
        }
        Ok(consumers)
    }

    async fn cleanup(&self, _queues: &[String]) {
        self.shutdown.trigger();
        let (threads, contexts) = {
            let mut state = self.state();
            state.endpoints.clear();
            (
                std::mem::take(&mut state.threads),
                std::mem::take(&mut state.contexts),
            )
        };
        // Joining and terminating contexts block: off the runtime.
        let joined = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
            drop(contexts);
        });
        if tokio::time::timeout(JOIN_TIMEOUT, joined).await.is_err() {
            tracing::warn!("ZeroMQ threads still running {JOIN_TIMEOUT:?} after the run");
        }
    }
}

impl Drop for Zmq {
    fn drop(&mut self) {
        // A run that failed before `cleanup`: the threads stop on their own.
        self.shutdown.trigger();
        let contexts = std::mem::take(&mut self.state().contexts);
        if !contexts.is_empty() {
            // Terminating a context waits for its sockets: not here.
            let _ = std::thread::Builder::new()
                .name("zmq-term".into())
                .spawn(move || drop(contexts));
        }
    }
}

/// Tells the threads the run is over.
#[derive(Default)]
struct Shutdown {
    over: Mutex<bool>,
    signal: Condvar,
}

impl Shutdown {
    fn trigger(&self) {
        *self.over.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.signal.notify_all();
    }

    fn is_over(&self) -> bool {
        *self.over.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait(&self) {
        let mut over = self.over.lock().unwrap_or_else(|e| e.into_inner());
        while !*over {
            over = self.signal.wait(over).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// One PUSH socket per queue, connected to every PULL socket of the queue.
fn push_sockets(
    contexts: &[zmq::Context],
    peers: &[Vec<String>],
    sndhwm: i32,
) -> anyhow::Result<Vec<zmq::Socket>> {
    contexts
        .iter()
        .zip(peers)
        .map(|(context, endpoints)| {
            let socket = context
                .socket(zmq::PUSH)
                .context("creating a PUSH socket")?;
            socket.set_sndhwm(sndhwm)?;
            socket.set_sndtimeo(SEND_TIMEOUT_MS)?;
            // Closed only when the run is over: drop what is left.
            socket.set_linger(0)?;
            for endpoint in endpoints {
                socket
                    .connect(endpoint)
                    .with_context(|| format!("connecting a PUSH socket to {endpoint}"))?;
            }
            Ok(socket)
        })
        .collect()
}

/// One PULL socket per bind endpoint; returns them with the endpoints they
/// were bound to.
fn pull_sockets(
    contexts: &[zmq::Context],
    binds: &[String],
    rcvhwm: i32,
) -> anyhow::Result<(Vec<zmq::Socket>, Vec<String>)> {
    let mut sockets = Vec::with_capacity(binds.len());
    let mut endpoints = Vec::with_capacity(binds.len());
    for (context, bind) in contexts.iter().zip(binds) {
        let socket = context
            .socket(zmq::PULL)
            .context("creating a PULL socket")?;
        socket.set_rcvhwm(rcvhwm)?;
        socket.set_linger(0)?;
        socket
            .bind(bind)
            .with_context(|| format!("binding a PULL socket on {bind}"))?;
        let endpoint = socket
            .get_last_endpoint()?
            .map_err(|_| anyhow!("the bound endpoint is not UTF-8"))?;
        sockets.push(socket);
        endpoints.push(endpoint);
    }
    Ok((sockets, endpoints))
}

/// One push batch for a producer thread.
struct Push {
    queue: usize,
    payload: Bytes,
    count: usize,
    /// Resolved once every message was handed to libzmq.
    done: oneshot::Sender<anyhow::Result<u64>>,
}

fn push_loop(sockets: &[zmq::Socket], mut commands: mpsc::Receiver<Push>, shutdown: &Shutdown) {
    while let Some(push) = commands.blocking_recv() {
        let sent = send_batch(&sockets[push.queue], &push, shutdown);
        let _ = push.done.send(sent);
    }
    // The producer is done. What libzmq still holds in the sockets goes on
    // to the consumers, which drain it, until the run is over.
    shutdown.wait();
}

/// Sends `push.count` individual messages.
fn send_batch(socket: &zmq::Socket, push: &Push, shutdown: &Shutdown) -> anyhow::Result<u64> {
    let mut sent = 0;
    let mut blocked_since = None;
    while sent < push.count {
        match socket.send(&push.payload[..], 0) {
            Ok(()) => {
                sent += 1;
                blocked_since = None;
            }
            // SNDHWM reached for SEND_TIMEOUT_MS: the consumers are behind.
            Err(zmq::Error::EAGAIN) => {
                if shutdown.is_over() || push.done.is_closed() {
                    bail!("the run ended during a ZeroMQ send");
                }
                let since = *blocked_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= STALLED {
                    bail!("a ZeroMQ send blocked for {STALLED:?}: nothing reads the queue");
                }
            }
            Err(zmq::Error::EINTR) => {}
            Err(e) => return Err(e).context("ZeroMQ send"),
        }
    }
    Ok(push.count as u64)
}

/// Messages received from one PULL socket, back to back.
#[derive(Default)]
struct Batch {
    data: Vec<u8>,
    lens: Vec<u32>,
}

type Delivery = anyhow::Result<Batch>;

/// Reads every PULL socket of a consumer task and hands batches of up to
/// `max` messages to its tokio consumers, until they are all gone or the
/// run is over.
fn pull_loop(
    sockets: Vec<zmq::Socket>,
    outputs: Vec<mpsc::Sender<Delivery>>,
    max: usize,
    shutdown: &Shutdown,
) {
    let mut live: Vec<(zmq::Socket, mpsc::Sender<Delivery>)> =
        sockets.into_iter().zip(outputs).collect();
    let mut message = zmq::Message::new();
    while !live.is_empty() && !shutdown.is_over() {
        let mut items: Vec<zmq::PollItem> = live
            .iter()
            .map(|(socket, _)| socket.as_poll_item(zmq::POLLIN))
            .collect();
        match zmq::poll(&mut items, POLL_MS) {
            Ok(_) | Err(zmq::Error::EINTR) => {}
            Err(e) => {
                let e = anyhow!(e).context("zmq::poll");
                for (_, output) in &live {
                    let _ = output.blocking_send(Err(anyhow!("{e:#}")));
                }
                return;
            }
        }
        let ready: Vec<usize> = items
            .iter()
            .enumerate()
            .filter(|(_, item)| item.is_readable())
            .map(|(i, _)| i)
            .collect();
        drop(items);
        for i in ready {
            let (socket, output) = &live[i];
            let batch = read_batch(socket, max, &mut message);
            if matches!(&batch, Ok(b) if b.lens.is_empty()) {
                continue;
            }
            // Blocks while the queue's previous batch waits (backpressure);
            // fails once its consumer is gone, which `retain` notices.
            let _ = output.blocking_send(batch);
        }
        live.retain(|(_, output)| !output.is_closed());
    }
}

/// Up to `max` messages already received by `socket`, without waiting.
fn read_batch(socket: &zmq::Socket, max: usize, message: &mut zmq::Message) -> Delivery {
    let mut batch = Batch::default();
    while batch.lens.len() < max {
        match socket.recv(message, zmq::DONTWAIT) {
            Ok(()) => {
                if batch.data.is_empty() {
                    batch.data.reserve(message.len() * max);
                    batch.lens.reserve(max);
                }
                batch.data.extend_from_slice(message);
                batch.lens.push(message.len() as u32);
            }
            Err(zmq::Error::EAGAIN) => break,
            Err(zmq::Error::EINTR) => {}
            Err(e) => return Err(e).context("ZeroMQ receive"),
        }
    }
    Ok(batch)
}

pub struct ZmqProducer {
    commands: mpsc::Sender<Push>,
}

impl Producer for ZmqProducer {
    async fn push_batch(
        &mut self,
        queue: usize,
        payload: Bytes,
        count: usize,
    ) -> anyhow::Result<Ticket> {
        let (done, sent) = oneshot::channel();
        self.commands
            .send(Push {
                queue,
                payload,
                count,
                done,
            })
            .await
            .map_err(|_| anyhow!("the ZeroMQ producer thread ended"))?;
        Ok(Box::pin(async move {
            sent.await
                .map_err(|_| anyhow!("the ZeroMQ producer thread ended"))?
        }))
    }
}

pub struct ZmqConsumer {
    batches: mpsc::Receiver<Delivery>,
}

impl Consumer for ZmqConsumer {
    async fn next_batch(&mut self, recorder: &mut Recorder) -> anyhow::Result<bool> {
        let Some(batch) = self.batches.recv().await else {
            return Ok(false);
        };
        let batch = batch?;
        let mut at = 0;
        for &len in &batch.lens {
            let end = at + len as usize;
            recorder.record(&batch.data[at..end]);
            at = end;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn urls_name_the_first_port() {
        assert_eq!(
            parse_url("tcp://127.0.0.1:17106").expect("parses"),
            ("127.0.0.1".to_owned(), Some(17106))
        );
        assert_eq!(
            parse_url("tcp://127.0.0.1:0").expect("parses"),
            ("127.0.0.1".to_owned(), None)
        );
        assert_eq!(
            parse_url("tcp://localhost:*").expect("parses"),
            ("localhost".to_owned(), None)
        );
        assert!(parse_url("redis://127.0.0.1:6379").is_err());
        assert!(parse_url("tcp://127.0.0.1").is_err());
        assert!(parse_url("tcp://127.0.0.1:99999").is_err());
    }

    #[test]
    fn ports_count_up_and_contexts_fill_up() {
        let mut state = State {
            next_port: Some(17106),
            ..State::default()
        };
        assert_eq!(
            state.bind_endpoint("127.0.0.1").expect("a port"),
            "tcp://127.0.0.1:17106"
        );
        assert_eq!(
            state.bind_endpoint("127.0.0.1").expect("a port"),
            "tcp://127.0.0.1:17107"
        );
        let contexts = state.contexts(SOCKETS_PER_CONTEXT + 1);
        assert_eq!(contexts.len(), SOCKETS_PER_CONTEXT + 1);
        assert_eq!(state.contexts.len(), 2);
        assert_eq!(state.sockets, 1);
        let mut state = State::default();
        assert_eq!(
            state.bind_endpoint("127.0.0.1").expect("a port"),
            "tcp://127.0.0.1:*"
        );
    }

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    /// A short run on ports the kernel picks: every message pushed is
    /// consumed once, and the run ends (threads joined) on its own.
    async fn run(queues: &str, producers: &str, consumers: &str) {
        let args = Cli::try_parse_from([
            "bench",
            "--queues",
            queues,
            "--producers",
            producers,
            "--consumers",
            consumers,
            "--duration",
            "1s",
            "--cycle",
            "250ms",
            "--max-backlog",
            "100",
            "--peer",
            "zmq",
            "--peer-url",
            "tcp://127.0.0.1:0",
        ])
        .expect("parses")
        .bench;
        args.validate().expect("valid");
        let zmq = Zmq::connect("tcp://127.0.0.1:0", &args)
            .await
            .expect("connects");
        let report =
            tokio::time::timeout(Duration::from_secs(30), crate::workload::run(&args, zmq))
                .await
                .expect("the run ends")
                .expect("runs");
        assert_eq!(report.cycles.len(), 4);
        assert!(report.pushed > 0);
        assert!(report.drained);
        assert_eq!(
            report.consumed, report.pushed,
            "every message consumed once"
        );
        assert_eq!(report.latency.samples, report.consumed);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_workload_drives_zmq() {
        run("3", "2", "2").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn consumers_sharing_a_queue_compete_for_it() {
        run("2", "3", "3").await;
    }
}
