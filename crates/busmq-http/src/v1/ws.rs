//! `GET /v1/ws`: pushes, consumes and acks over one WebSocket, as JSON
//! text frames (the protocol is in `docs/http.md`).
//!
//! Bounded everywhere: every frame to the client goes through one outbox of
//! [`OUTBOX`] frames, written only as fast as the socket takes them. A
//! consumer forwards its next message only when the outbox has room and,
//! in lease and reliable mode, while fewer than `max_inflight` of its
//! messages are un-acked; until then it does not read its SDK stream, whose
//! prefetch window (`max_inflight`) then holds the broker back. Answers to
//! the client's own operations wait for room too, and meanwhile no further
//! frame is read from the client. Frames over `--max-body-bytes` end the
//! socket (close code 1009).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message as Frame, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use busmq_client::{ConsumeOptions, Consumer, LeaseToken, Queue, Value};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::error::HttpError;
use crate::{Gateway, payload};

/// Frames waiting to be written to one socket.
pub const OUTBOX: usize = 256;

/// The default and the largest `max_inflight` of a consume.
pub const DEFAULT_INFLIGHT: u32 = 10;
/// The largest `max_inflight` of a consume.
pub const MAX_INFLIGHT: u32 = 1000;

/// How long the closing frame may take once the socket ends.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Opens the WebSocket. 426 without an upgrade.
#[utoipa::path(
    get,
    path = "/v1/ws",
    tag = "websocket",
    responses(
        (status = 101, description = "Switching to the WebSocket protocol of docs/http.md"),
        (status = 426, description = "Not a WebSocket upgrade", body = crate::error::ErrorBody),
    ),
)]
pub async fn upgrade(
    State(gw): Shared,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, HttpError> {
    let ws = ws.map_err(|rejection| {
        HttpError::UpgradeRequired(format!(
            "GET /v1/ws takes a WebSocket upgrade: {}",
            rejection.body_text()
        ))
    })?;
    let limit = gw.config.max_body_bytes;
    Ok(ws
        .max_frame_size(limit)
        .max_message_size(limit)
        .on_upgrade(move |socket| serve(socket, gw)))
}

/// How a socket's consumer of one queue takes messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum WsMode {
    Lease,
    Reliable,
    Unreliable,
    Persistent,
}

impl WsMode {
    /// True when its messages are acked, and so count against
    /// `max_inflight` until they are.
    fn acked(self) -> bool {
        matches!(self, WsMode::Lease | WsMode::Reliable)
    }
}

/// `{"op": "consume", ...}`.
#[derive(Debug, Deserialize)]
struct ConsumeOp {
    queue: String,
    mode: Option<WsMode>,
    max_inflight: Option<u32>,
    /// Lease mode: seconds a message stays leased.
    visibility: Option<f64>,
    /// Persistent mode: the first id.
    from: Option<u64>,
    /// Reliable mode: the last id already handled.
    last: Option<u64>,
}

/// `{"op": "ack" | "nack", ...}`.
#[derive(Debug, Deserialize)]
struct SettleOp {
    queue: String,
    id: u64,
    /// Lease mode: the attempt, when the client names it.
    attempt: Option<u32>,
}

/// `{"op": "push" | "stop", ...}`: the queue.
#[derive(Debug, Deserialize)]
struct QueueOp {
    queue: String,
}

/// Messages a consumer forwarded and the client has not acked yet: id to
/// attempt (0 outside lease mode).
#[derive(Debug, Default)]
struct Outstanding(Mutex<BTreeMap<u64, u32>>);

impl Outstanding {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, u32>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One running consumer of a socket.
struct Subscription {
    queue: Queue,
    mode: WsMode,
    /// Free `max_inflight` slots.
    slots: Arc<Semaphore>,
    outstanding: Arc<Outstanding>,
    stop: CancellationToken,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Subscription {
    /// Frees the slots of the messages settled: `id` alone, or (reliable,
    /// `cumulative`) every id up to it. Returns the attempt of `id`.
    fn settled(&self, id: u64, cumulative: bool) -> Option<u32> {
        let mut outstanding = self.outstanding.lock();
        let attempt = outstanding.remove(&id);
        let mut freed = usize::from(attempt.is_some());
        if cumulative {
            let below: Vec<u64> = outstanding.range(..id).map(|(id, _)| *id).collect();
            freed += below.len();
            for id in below {
                outstanding.remove(&id);
            }
        }
        self.slots.add_permits(freed);
        attempt
    }
}

/// One socket's state: the consumers it started, by queue.
struct Socket {
    gw: Arc<Gateway>,
    out: mpsc::Sender<Value>,
    subscriptions: HashMap<String, Subscription>,
    /// Fires when the socket ends or the gateway shuts down.
    done: CancellationToken,
}

/// Serves one socket until the client closes it, a frame over the limit
/// arrives, or the gateway shuts down.
async fn serve(socket: WebSocket, gw: Arc<Gateway>) {
    let (mut sink, mut frames) = socket.split();
    let (out, mut outbox) = mpsc::channel::<Value>(OUTBOX);
    let done = gw.shutdown.child_token();
    let writer_done = done.clone();
    let writer = tokio::spawn(async move {
        loop {
            let frame = tokio::select! {
                frame = outbox.recv() => frame,
                () = writer_done.cancelled() => None,
            };
            let Some(frame) = frame else { break };
            if sink
                .send(Frame::Text(frame.to_string().into()))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(Frame::Close(None))).await;
    });
    let mut state = Socket {
        gw,
        out,
        subscriptions: HashMap::new(),
        done: done.clone(),
    };
    loop {
        let frame = tokio::select! {
            frame = frames.next() => frame,
            () = done.cancelled() => break,
        };
        let answered = match frame {
            Some(Ok(Frame::Text(text))) => state.handle(text.as_str()).await,
            Some(Ok(Frame::Binary(_))) => {
                state
                    .send(error_frame(
                        None,
                        &HttpError::InvalidBody(
                            "frames are JSON text; a binary frame is no operation".into(),
                        ),
                    ))
                    .await
            }
            Some(Ok(Frame::Close(_)) | Err(_)) | None => break,
            // Ping and pong: the library answers pings itself.
            Some(Ok(_)) => true,
        };
        if !answered {
            break;
        }
    }
    done.cancel();
    drop(state);
    let _ = writer.await;
}

/// `{"event": "error", ...}` for `err`, answering the frame `reference`.
fn error_frame(reference: Option<&Value>, err: &HttpError) -> Value {
    json!({
        "event": "error",
        "ref": reference,
        "code": err.code(),
        "message": err.to_string(),
    })
}

/// The operation `frame` describes, read as `T`.
fn op<T: for<'de> Deserialize<'de>>(frame: &Value) -> Result<T, HttpError> {
    T::deserialize(frame).map_err(|e| HttpError::InvalidBody(format!("bad operation: {e}")))
}

impl Socket {
    /// Queues `frame` for the client, waiting for room; false once the
    /// socket ends.
    async fn send(&self, frame: Value) -> bool {
        tokio::select! {
            sent = self.out.send(frame) => sent.is_ok(),
            () = self.done.cancelled() => false,
        }
    }

    /// Runs one client frame and answers it; false once the socket ends.
    async fn handle(&mut self, text: &str) -> bool {
        let frame = match payload::parse_json(text.as_bytes()) {
            Ok(frame @ Value::Object(_)) => frame,
            Ok(_) => {
                let err = HttpError::InvalidBody("a frame is a JSON object".into());
                return self.send(error_frame(None, &err)).await;
            }
            Err(err) => return self.send(error_frame(None, &err)).await,
        };
        let reference = frame.get("ref").cloned();
        let answer = match self.run(&frame).await {
            Ok(mut answer) => {
                answer["ref"] = reference.unwrap_or(Value::Null);
                answer
            }
            Err(err) => error_frame(reference.as_ref(), &err),
        };
        self.send(answer).await
    }

    /// Runs the operation of `frame`; its answer, or why not.
    async fn run(&mut self, frame: &Value) -> Result<Value, HttpError> {
        match frame.get("op").and_then(Value::as_str) {
            Some("push") => self.push(frame).await,
            Some("consume") => self.consume(op(frame)?).await,
            Some("ack") => self.settle(op(frame)?, false).await,
            Some("nack") => self.settle(op(frame)?, true).await,
            Some("stop") => {
                let QueueOp { queue } = op(frame)?;
                let stopped = self.subscriptions.remove(&queue).is_some();
                Ok(json!({ "event": "stopped", "queue": queue, "stopped": stopped }))
            }
            _ => Err(HttpError::InvalidBody(
                "\"op\" is push, consume, ack, nack or stop".into(),
            )),
        }
    }

    async fn push(&self, frame: &Value) -> Result<Value, HttpError> {
        let QueueOp { queue } = op(frame)?;
        let messages = payload::messages_from_json(frame.clone())?;
        let ids = self
            .gw
            .with_queue(&queue, |q| {
                let messages = messages.clone();
                async move { q.push_batch(messages).await }
            })
            .await?;
        Ok(json!({ "event": "pushed", "queue": queue, "id": ids.first, "count": ids.len() }))
    }

    async fn consume(&mut self, op: ConsumeOp) -> Result<Value, HttpError> {
        if self.subscriptions.contains_key(&op.queue) {
            return Err(HttpError::InvalidBody(format!(
                "this socket already consumes {:?}; stop it first",
                op.queue
            )));
        }
        let inflight = op.max_inflight.unwrap_or(DEFAULT_INFLIGHT);
        if !(1..=MAX_INFLIGHT).contains(&inflight) {
            return Err(HttpError::InvalidBody(format!(
                "max_inflight is from 1 to {MAX_INFLIGHT}, not {inflight}"
            )));
        }
        let mode = op.mode.unwrap_or(WsMode::Lease);
        let options = match mode {
            WsMode::Lease => {
                let visibility = match op.visibility {
                    None => self.gw.config.visibility_timeout,
                    Some(seconds) => crate::params::visibility(seconds)?,
                };
                ConsumeOptions::lease(visibility)
            }
            WsMode::Reliable => match op.last {
                Some(last) => ConsumeOptions::reliable().last(last),
                None => ConsumeOptions::reliable(),
            },
            WsMode::Unreliable => ConsumeOptions::default(),
            WsMode::Persistent => ConsumeOptions::persistent(op.from.unwrap_or(0)),
        }
        .prefetch(inflight);
        let consumer = self
            .gw
            .with_queue(&op.queue, |q| async move { q.consume(options).await })
            .await?;
        let subscription = Subscription {
            queue: consumer.queue().clone(),
            mode,
            slots: Arc::new(Semaphore::new(inflight as usize)),
            outstanding: Arc::default(),
            stop: self.done.child_token(),
        };
        tokio::spawn(forward(
            consumer,
            op.queue.clone(),
            mode,
            subscription.slots.clone(),
            subscription.outstanding.clone(),
            self.out.clone(),
            subscription.stop.clone(),
        ));
        self.subscriptions.insert(op.queue.clone(), subscription);
        Ok(json!({ "event": "consuming", "queue": op.queue, "mode": mode_name(mode) }))
    }

    async fn settle(&self, op: SettleOp, nack: bool) -> Result<Value, HttpError> {
        let Some(subscription) = self.subscriptions.get(&op.queue) else {
            return Err(HttpError::InvalidBody(format!(
                "this socket does not consume {:?}",
                op.queue
            )));
        };
        let event = if nack { "nacked" } else { "acked" };
        match (subscription.mode, nack) {
            (WsMode::Lease, _) => {
                let attempt = subscription.settled(op.id, false).or(op.attempt);
                let Some(attempt) = attempt else {
                    return Err(HttpError::LeaseNotFound(format!(
                        "message {} of {:?} is not leased on this socket; name its attempt",
                        op.id, op.queue
                    )));
                };
                let token = LeaseToken { id: op.id, attempt };
                let queue = &subscription.queue;
                let answer = if nack {
                    let nacked = queue
                        .nack(token)
                        .await
                        .map_err(|e| HttpError::done(op.id, e))?;
                    let dead = nacked == busmq_client::Nacked::DeadLettered;
                    json!({ "event": event, "queue": op.queue, "id": op.id, "dead_lettered": dead })
                } else {
                    queue
                        .ack_lease(token)
                        .await
                        .map_err(|e| HttpError::done(op.id, e))?;
                    json!({ "event": event, "queue": op.queue, "id": op.id, "removed": 1 })
                };
                Ok(answer)
            }
            (WsMode::Reliable, false) => {
                subscription.settled(op.id, true);
                let removed = subscription.queue.ack(op.id).await?;
                Ok(json!({ "event": event, "queue": op.queue, "id": op.id, "removed": removed }))
            }
            (mode, _) => Err(HttpError::InvalidBody(format!(
                "a {} consumer takes no {event}",
                mode_name(mode)
            ))),
        }
    }
}

fn mode_name(mode: WsMode) -> &'static str {
    match mode {
        WsMode::Lease => "lease",
        WsMode::Reliable => "reliable",
        WsMode::Unreliable => "unreliable",
        WsMode::Persistent => "persistent",
    }
}

/// Forwards the messages of `consumer` to the outbox as `message` frames,
/// each (lease, reliable) once a `max_inflight` slot is free, until `stop`
/// fires, the queue goes away (`closed`) or the stream fails (`error`).
async fn forward(
    mut consumer: Consumer,
    queue: String,
    mode: WsMode,
    slots: Arc<Semaphore>,
    outstanding: Arc<Outstanding>,
    out: mpsc::Sender<Value>,
    stop: CancellationToken,
) {
    loop {
        if mode.acked() {
            let slot = tokio::select! {
                slot = slots.acquire() => slot,
                () = stop.cancelled() => break,
            };
            match slot {
                // Held until the client settles the message.
                Ok(slot) => slot.forget(),
                Err(_) => break,
            }
        }
        let next = tokio::select! {
            next = consumer.next() => next,
            () = stop.cancelled() => break,
        };
        let frame = match next {
            Some(Ok(delivery)) => {
                if mode.acked()
                    && outstanding
                        .lock()
                        .insert(delivery.id, delivery.attempt)
                        .is_some()
                {
                    // Delivered again (its lease ran out): one slot for it.
                    slots.add_permits(1);
                }
                json!({
                    "event": "message",
                    "queue": queue,
                    "id": delivery.id,
                    "payload": payload::to_response(&delivery.payload),
                    "attempt": delivery.attempt,
                })
            }
            Some(Err(e)) => {
                let err = HttpError::from(e);
                json!({ "event": "error", "queue": queue, "code": err.code(), "message": err.to_string() })
            }
            None => json!({ "event": "closed", "queue": queue }),
        };
        let last = !matches!(frame["event"].as_str(), Some("message"));
        let sent = tokio::select! {
            sent = out.send(frame) => sent.is_ok(),
            () = stop.cancelled() => false,
        };
        if !sent || last {
            break;
        }
    }
    consumer.stop();
}
