//! One peer's running session on a channel: applies its requests in order,
//! turns the frames of its inbound queue into events, and leaves presence
//! frames for the other endpoint.

use std::sync::Arc;

use busmq_core::{Error, Limits};
use busmq_proto::to_status;
use busmq_proto::v1::{
    self, channel_event::Event as Ev, channel_frame, channel_request::Request as Req,
    consume_event::Event as ConsumeEv,
};
use busmq_storage::Storage;
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use super::detach;
use super::frame::{self, Frame};
use super::names::SessionQueues;

/// Sends applied in one store round trip when a client streams them faster
/// than the store takes them.
const MAX_SENDS_PER_PUSH: usize = 64;

/// Where a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Consuming the inbound queue; sends go to the other endpoint.
    Open,
    /// One of the peers ended the channel: both queues are gone (or going),
    /// sends and acks are refused until the client closes the stream.
    Ended,
}

/// Reliable mode: which ids the broker may ack for the client. Presence
/// frames take ids too, but the client never sees them, so it cannot ack
/// them; the broker acks them once every data message delivered before them
/// is acked, and never beyond a data message the client has not acked.
#[derive(Debug, Default)]
struct AckTracker {
    /// Highest id of a data message delivered.
    data: u64,
    /// Highest id delivered, data or presence.
    delivered: u64,
    /// Highest id acked.
    acked: u64,
}

impl AckTracker {
    /// What to ack in the store when the client acks `id`: up to the last
    /// presence frame too when `id` covers every data message delivered.
    fn widen(&self, id: u64) -> u64 {
        if id >= self.data && id <= self.delivered {
            self.delivered
        } else {
            id
        }
    }

    /// After a delivery: the presence frames to ack now, when nothing the
    /// client must ack comes before them.
    fn presence_to_ack(&self) -> Option<u64> {
        (self.acked >= self.data && self.delivered > self.acked).then_some(self.delivered)
    }
}

/// The consumer of the inbound queue.
pub struct Consumer {
    events: mpsc::Receiver<Result<v1::ConsumeEvent, Status>>,
    task: JoinHandle<()>,
    acks: Option<AckTracker>,
}

impl Consumer {
    pub fn new(
        events: mpsc::Receiver<Result<v1::ConsumeEvent, Status>>,
        task: JoinHandle<()>,
        reliable: bool,
    ) -> Self {
        Consumer {
            events,
            task,
            acks: reliable.then(AckTracker::default),
        }
    }

    /// Stops consuming and waits until the consumer let go of the queue
    /// (in reliable mode, its lock), so a peer reconnecting right after us
    /// is not refused.
    async fn stop(self) {
        drop(self.events);
        let _ = self.task.await;
    }
}

/// One read of the request stream: a request, a broken stream, or its end.
type Incoming = Option<Result<v1::ChannelRequest, Status>>;

/// Why the request loop ended.
enum Exit {
    /// The client closed its request stream: it disconnects and waits for
    /// the confirmation.
    ClientClosed,
    /// The client went away (stream reset, connection lost).
    ClientGone,
    /// A failure that ends the session; the client gets it as the status.
    Failed(Status),
}

/// One peer's session.
pub struct Session {
    storage: Arc<dyn Storage>,
    queues: SessionQueues,
    limits: Limits,
    /// `None` once the channel ended.
    consumer: Option<Consumer>,
    incoming: Streaming<v1::ChannelRequest>,
    /// What the request stream gave while sends were gathered, to handle
    /// next.
    stashed: Option<Incoming>,
    tx: mpsc::Sender<Result<v1::ChannelEvents, Status>>,
    shutdown: CancellationToken,
    state: State,
    /// Whether the other endpoint is known to be connected, so repeated
    /// connect frames (an answer after an announcement) give one event.
    remote_present: bool,
}

impl Session {
    pub fn new(
        storage: Arc<dyn Storage>,
        queues: SessionQueues,
        limits: Limits,
        consumer: Consumer,
        incoming: Streaming<v1::ChannelRequest>,
        tx: mpsc::Sender<Result<v1::ChannelEvents, Status>>,
        shutdown: CancellationToken,
    ) -> Self {
        Session {
            storage,
            queues,
            limits,
            consumer: Some(consumer),
            incoming,
            stashed: None,
            tx,
            shutdown,
            state: State::Open,
            remote_present: false,
        }
    }

    /// Tells the other endpoint we are here, then the client that its
    /// session is open.
    pub async fn announce(&self, redelivered: u64) -> Result<(), Status> {
        let connect = frame::encode(Frame::Connect(channel_frame::Connect { answer: false }));
        self.storage
            .push(&self.queues.outbound, vec![connect])
            .await
            .map_err(to_status)?;
        let connected = Ev::Connect(v1::ChannelConnected {
            inbound_queue: self.queues.inbound.to_string(),
            outbound_queue: self.queues.outbound.to_string(),
            redelivered,
        });
        // The buffer is fresh, so there is room.
        let _ = self.tx.try_send(Ok(events(vec![connected])));
        Ok(())
    }

    /// Runs until the client leaves or the session fails, then disconnects.
    pub async fn run(mut self) {
        let exit = self.serve().await;
        let tx = self.tx.clone();
        match exit {
            Exit::Failed(status) => {
                tracing::debug!(queue = %self.queues.inbound, %status, "channel session failed");
                let _ = tx.send(Err(status)).await;
                self.disconnect().await;
            }
            Exit::ClientGone => self.disconnect().await,
            Exit::ClientClosed => {
                self.disconnect().await;
                // Everything the client sent is applied and the other
                // endpoint told: confirm (node-busmq's `disconnect` event).
                let done = Ev::Disconnect(v1::ChannelDisconnected {});
                let _ = tx.send(Ok(events(vec![done]))).await;
            }
        }
    }

    async fn serve(&mut self) -> Exit {
        loop {
            if let Some(next) = self.stashed.take() {
                if let Some(exit) = self.received(next).await {
                    return exit;
                }
                continue;
            }
            // Take from the inbound queue only when the client has room for
            // one more event batch, so requests keep flowing while it does
            // not read.
            let room = self.tx.capacity() > 0;
            let ended = self.consumer.is_none();
            let consuming = self.consumer.as_mut().filter(|_| room);
            tokio::select! {
                next = self.incoming.next() => {
                    if let Some(exit) = self.received(next).await {
                        return exit;
                    }
                }
                event = recv(consuming) => match event {
                    Some(Ok(event)) => self.consumed(event).await,
                    Some(Err(status)) => return Exit::Failed(status),
                    None => {
                        return Exit::Failed(Status::internal(
                            "the channel's consumer stopped unexpectedly",
                        ));
                    }
                },
                // The client read something: there may be room again.
                closed = self.tx.reserve().map(|permit| permit.is_err()), if !room && !ended => {
                    if closed {
                        return Exit::ClientGone;
                    }
                }
                _ = self.tx.closed() => return Exit::ClientGone,
                _ = self.shutdown.cancelled(), if ended => {
                    return Exit::Failed(Status::unavailable(
                        "broker is shutting down; reconnect to continue",
                    ));
                }
            }
        }
    }

    /// Applies what the request stream gave; `Some` when it ended.
    async fn received(&mut self, next: Incoming) -> Option<Exit> {
        match next {
            Some(Ok(req)) => {
                self.apply(req).await;
                None
            }
            None => Some(Exit::ClientClosed),
            Some(Err(_)) => Some(Exit::ClientGone),
        }
    }

    async fn apply(&mut self, req: v1::ChannelRequest) {
        let result = match req.request {
            Some(Req::Send(send)) => self.send(send.messages).await,
            Some(Req::Ack(ack)) => self.ack(ack.id).await,
            Some(Req::End(_)) => self.end().await,
            Some(Req::Open(_)) => Err(invalid(
                "this session is open already; `open` comes once, first",
            )),
            None => Err(invalid("empty channel request")),
        };
        if let Err(status) = result {
            let error = Ev::Error(busmq_proto::status_to_proto_error(&status));
            self.emit(vec![error]).await;
        }
    }

    fn ensure_open(&self, what: &str) -> Result<(), Status> {
        match self.state {
            State::Open => Ok(()),
            State::Ended => Err(to_status(Error::ChannelEnded(what.to_owned()))),
        }
    }

    /// Pushes these messages, and the sends right behind them on the
    /// stream, to the other endpoint in one round trip.
    async fn send(&mut self, messages: Vec<bytes::Bytes>) -> Result<(), Status> {
        self.ensure_open("send")?;
        let mut frames = frame::data_frames(messages, &self.limits)?;
        for _ in 1..MAX_SENDS_PER_PUSH {
            // Only what has already arrived: never wait here.
            let Some(next) = self.incoming.next().now_or_never() else {
                break;
            };
            let more = match next {
                Some(Ok(v1::ChannelRequest {
                    request: Some(Req::Send(more)),
                })) if frames.len() + more.messages.len() <= self.limits.max_batch_len => more,
                // Anything else (another request, the end of the stream) is
                // handled after this push, in order.
                other => {
                    self.stashed = Some(other);
                    break;
                }
            };
            match frame::data_frames(more.messages, &self.limits) {
                Ok(more) => frames.extend(more),
                Err(status) => {
                    // Keep order: what came before goes first.
                    self.push(frames).await?;
                    return Err(status);
                }
            }
        }
        self.push(frames).await
    }

    async fn push(&mut self, frames: Vec<bytes::Bytes>) -> Result<(), Status> {
        match self.storage.push(&self.queues.outbound, frames).await {
            Ok(_) => Ok(()),
            // The other peer ended the channel and closed its queue; its
            // end frame is on its way to us.
            Err(Error::QueueNotFound(_)) => Err(to_status(Error::ChannelPeerGone)),
            Err(e) => Err(to_status(e)),
        }
    }

    async fn ack(&mut self, id: u64) -> Result<(), Status> {
        self.ensure_open("ack")?;
        let Some(acks) = self.consumer.as_mut().and_then(|c| c.acks.as_mut()) else {
            return Err(invalid(
                "ack applies only to a channel opened in reliable mode",
            ));
        };
        let upto = acks.widen(id);
        self.storage
            .ack(&self.queues.inbound, upto)
            .await
            .map_err(to_status)?;
        acks.acked = acks.acked.max(upto);
        Ok(())
    }

    /// Ends the channel: the other endpoint reads `End` after everything we
    /// sent; our inbound queue goes now.
    async fn end(&mut self) -> Result<(), Status> {
        self.ensure_open("end")?;
        let end = frame::encode(Frame::End(channel_frame::End {}));
        match self.storage.push(&self.queues.outbound, vec![end]).await {
            // The other peer ended first: nothing to tell it.
            Ok(_) | Err(Error::QueueNotFound(_)) => {}
            Err(e) => return Err(to_status(e)),
        }
        self.close_ended().await;
        self.emit(vec![Ev::End(v1::ChannelEnded { by_self: true })])
            .await;
        Ok(())
    }

    /// After either peer ended: stop consuming, close our inbound queue
    /// (an end frame in it has been read), let go of the outbound one.
    async fn close_ended(&mut self) {
        self.state = State::Ended;
        if let Some(consumer) = self.consumer.take() {
            consumer.stop().await;
        }
        if let Err(e) = self.storage.close(&self.queues.inbound).await {
            tracing::warn!(queue = %self.queues.inbound, error = %e, "could not close an ended channel's queue");
        }
        detach(&*self.storage, &self.queues.outbound).await;
    }

    async fn consumed(&mut self, event: v1::ConsumeEvent) {
        match event.event {
            Some(ConsumeEv::Messages(batch)) => self.deliver(batch.messages).await,
            // Our inbound queue was closed or expired under us: the channel
            // is over for this peer.
            Some(ConsumeEv::Closed(_)) => {
                self.close_ended().await;
                self.emit(vec![Ev::End(v1::ChannelEnded { by_self: false })])
                    .await;
            }
            Some(ConsumeEv::Consuming(_)) | None => {}
        }
    }

    async fn deliver(&mut self, messages: Vec<v1::Message>) {
        let mut out = Vec::with_capacity(messages.len());
        let mut ended = false;
        let mut answer = false;
        for message in messages {
            let id = message.id;
            let event = match frame::decode(message.payload) {
                Some(Frame::Data(payload)) => {
                    if let Some(acks) = self.acks() {
                        acks.data = id;
                    }
                    Some(Ev::Message(v1::ChannelMessage { id, payload }))
                }
                Some(Frame::Connect(connect)) => {
                    if !connect.answer {
                        answer = true;
                    }
                    if std::mem::replace(&mut self.remote_present, true) {
                        None
                    } else {
                        Some(Ev::RemoteConnect(v1::RemoteConnected {}))
                    }
                }
                Some(Frame::Disconnect(_)) => {
                    self.remote_present = false;
                    Some(Ev::RemoteDisconnect(v1::RemoteDisconnected {}))
                }
                Some(Frame::End(_)) => {
                    ended = true;
                    Some(Ev::End(v1::ChannelEnded { by_self: false }))
                }
                None => Some(Ev::Error(busmq_proto::to_proto_error(&Error::Internal(
                    format!(
                        "message {id} of {} is not a channel frame (pushed through the \
                     queue API?); skipped",
                        self.queues.inbound
                    ),
                )))),
            };
            if let Some(acks) = self.acks() {
                acks.delivered = id;
            }
            out.extend(event);
            if ended {
                break;
            }
        }
        if answer && !ended {
            // Tell a peer that opened after us that we are here. A failure
            // only costs it the event.
            let here = frame::encode(Frame::Connect(channel_frame::Connect { answer: true }));
            if let Err(e) = self.storage.push(&self.queues.outbound, vec![here]).await {
                tracing::debug!(queue = %self.queues.outbound, error = %e, "could not answer a connect");
            }
        }
        if ended {
            self.close_ended().await;
        } else if let Some(upto) = self.acks().and_then(|a| a.presence_to_ack()) {
            match self.storage.ack(&self.queues.inbound, upto).await {
                Ok(_) => {
                    if let Some(acks) = self.acks() {
                        acks.acked = upto;
                    }
                }
                // Left pending: at worst a presence event is seen twice.
                Err(e) => {
                    tracing::debug!(queue = %self.queues.inbound, error = %e, "could not ack presence frames")
                }
            }
        }
        self.emit(out).await;
    }

    fn acks(&mut self) -> Option<&mut AckTracker> {
        self.consumer.as_mut().and_then(|c| c.acks.as_mut())
    }

    async fn emit(&self, list: Vec<Ev>) {
        if !list.is_empty() {
            let _ = self.tx.send(Ok(events(list))).await;
        }
    }

    /// Leaves the channel without ending it: the other endpoint gets
    /// `remote_disconnect`, both queues stay for a later peer (or expire).
    pub async fn disconnect(mut self) {
        if self.state == State::Ended {
            return;
        }
        if let Some(consumer) = self.consumer.take() {
            consumer.stop().await;
        }
        // Detached first, so a peer that sees `remote_disconnect` sees the
        // attachments gone too. A queue left with none lives its ttl, long
        // enough for the frame below.
        detach(&*self.storage, &self.queues.inbound).await;
        detach(&*self.storage, &self.queues.outbound).await;
        let gone = frame::encode(Frame::Disconnect(channel_frame::Disconnect {}));
        match self.storage.push(&self.queues.outbound, vec![gone]).await {
            Ok(_) | Err(Error::QueueNotFound(_)) => {}
            Err(e) => {
                tracing::warn!(queue = %self.queues.outbound, error = %e, "could not tell the other endpoint of a disconnect")
            }
        }
    }
}

fn events(list: Vec<Ev>) -> v1::ChannelEvents {
    v1::ChannelEvents {
        events: list
            .into_iter()
            .map(|e| v1::ChannelEvent { event: Some(e) })
            .collect(),
    }
}

/// The next event of `consumer`, or never when there is none to wait for.
async fn recv(consumer: Option<&mut Consumer>) -> Option<Result<v1::ConsumeEvent, Status>> {
    match consumer {
        Some(c) => c.events.recv().await,
        None => std::future::pending().await,
    }
}

/// A request the session refuses as malformed.
fn invalid(message: &str) -> Status {
    to_status(Error::InvalidArgument(message.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::AckTracker;

    #[test]
    fn presence_frames_are_acked_only_behind_acked_data() {
        // Connect frame (1) before any data: acked at once.
        let mut t = AckTracker {
            data: 0,
            delivered: 1,
            acked: 0,
        };
        assert_eq!(t.presence_to_ack(), Some(1));
        t.acked = 1;
        // Data 2, 3 then a disconnect frame 4: nothing until the client acks 3.
        t.data = 3;
        t.delivered = 4;
        assert_eq!(t.presence_to_ack(), None);
        assert_eq!(t.widen(2), 2);
        assert_eq!(t.widen(3), 4);
        // An id never delivered is passed on as is (the store refuses it).
        assert_eq!(t.widen(9), 9);
    }
}
