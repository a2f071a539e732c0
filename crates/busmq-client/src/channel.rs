//! Bi-directional channels: node-busmq's `Channel`.
//!
//! A [`Channel`] names a channel and this peer's roles; [`Channel::connect`]
//! or [`Channel::listen`] opens a [`ChannelSession`], a stream of
//! [`ChannelEvent`]s with [`send`](ChannelSession::send),
//! [`ack`](ChannelSession::ack), [`end`](ChannelSession::end) and
//! [`disconnect`](ChannelSession::disconnect).

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use busmq_proto::v1 as pb;
use busmq_proto::v1::channel_event::Event as Ev;
use busmq_proto::v1::channels_client::ChannelsClient;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tonic::codec::Streaming;

use crate::reconnect::{Backoff, is_transient};
use crate::trace_context::Transport;
use crate::{ConsumeMode, ConsumeOptions, Error, Reconnect, Result};

/// The role a peer consumes by default (node-busmq's `local`).
pub const DEFAULT_LOCAL_ROLE: &str = "local";
/// The role a peer sends to by default (node-busmq's `remote`).
pub const DEFAULT_REMOTE_ROLE: &str = "remote";

/// Requests a session may have queued before `send` waits for room.
const REQUEST_BUFFER: usize = 256;

/// A channel and this peer's two roles: node-busmq's
/// `bus.channel(name, local, remote)`, from [`Bus::channel`] or
/// [`Bus::channel_with_roles`].
///
/// Cheap to clone. Nothing is sent until [`connect`](Self::connect),
/// [`listen`](Self::listen) or [`send_to`](Self::send_to).
///
/// [`Bus::channel`]: crate::Bus::channel
/// [`Bus::channel_with_roles`]: crate::Bus::channel_with_roles
#[derive(Clone)]
pub struct Channel {
    client: ChannelsClient<Transport>,
    name: Arc<str>,
    local: Arc<str>,
    remote: Arc<str>,
    ttl: Option<Duration>,
    reconnect: Reconnect,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("name", &self.name)
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("ttl", &self.ttl)
            .field("reconnect", &self.reconnect)
            .finish()
    }
}

impl Channel {
    pub(crate) fn new(
        client: ChannelsClient<Transport>,
        name: String,
        local: String,
        remote: String,
        reconnect: Reconnect,
    ) -> Channel {
        Channel {
            client,
            name: name.into(),
            local: local.into(),
            remote: remote.into(),
            ttl: None,
            reconnect,
        }
    }

    /// Sessions opened from this handle give both queues this ttl: how long
    /// they live with no peer attached, messages included. Whole seconds
    /// (a fraction is rounded up); zero is refused by the server. Unset:
    /// existing queues keep theirs, new ones get the default (30 s).
    pub fn with_ttl(mut self, ttl: Duration) -> Channel {
        self.ttl = Some(ttl);
        self
    }

    /// The channel's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The role this peer consumes when it [`connect`](Self::connect)s.
    pub fn local(&self) -> &str {
        &self.local
    }

    /// The role this peer sends to when it [`connect`](Self::connect)s.
    pub fn remote(&self) -> &str {
        &self.remote
    }

    /// Connects to the channel (node-busmq's `channel.connect()`):
    /// consumes the `local` role, sends to the `remote` one, in unreliable
    /// mode. The first event of the session is [`ChannelEvent::Connect`].
    pub async fn connect(&self) -> Result<ChannelSession> {
        self.connect_with(ConsumeOptions::default()).await
    }

    /// Connects with the roles reversed (node-busmq's `channel.listen()`):
    /// consumes the `remote` role, sends to the `local` one. With the
    /// default roles one peer listens and the other connects.
    pub async fn listen(&self) -> Result<ChannelSession> {
        self.listen_with(ConsumeOptions::default()).await
    }

    /// [`connect`](Self::connect) with consume options: any mode but lease,
    /// with no `max` (for example [`ConsumeOptions::reliable`], then
    /// [`ChannelSession::ack`] each message).
    pub async fn connect_with(&self, options: ConsumeOptions) -> Result<ChannelSession> {
        ChannelSession::open(self, &self.local, &self.remote, options).await
    }

    /// [`listen`](Self::listen) with consume options, as
    /// [`connect_with`](Self::connect_with).
    pub async fn listen_with(&self, options: ConsumeOptions) -> Result<ChannelSession> {
        ChannelSession::open(self, &self.remote, &self.local, options).await
    }

    /// Sends messages to the inbound queue of `endpoint` without connecting
    /// (node-busmq's `channel.sendTo(endpoint, message)`). They wait there,
    /// for the queue's ttl, for a peer that consumes `endpoint`. Returns the
    /// id of the (last) stored message.
    pub async fn send_to(&self, endpoint: &str, message: impl Into<Bytes>) -> Result<u64> {
        let response = self
            .client
            .clone()
            .send_to(pb::SendToRequest {
                name: self.name.to_string(),
                endpoint: endpoint.to_owned(),
                messages: vec![message.into()],
            })
            .await?
            .into_inner();
        Ok(response.last_id)
    }
}

/// What happens on a channel session, in order: node-busmq's channel events.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ChannelEvent {
    /// This peer's session is open (`connect`); always the first event.
    Connect {
        /// Reliable mode: messages an earlier session of this endpoint left
        /// un-acked, about to be delivered again.
        redelivered: u64,
    },
    /// The other endpoint connected (`remote:connect`), now or before this
    /// peer did.
    RemoteConnect,
    /// A message from the other endpoint (`message`).
    Message {
        /// Its id in this endpoint's inbound queue; what
        /// [`ChannelSession::ack`] takes in reliable mode.
        id: u64,
        /// The message as sent.
        payload: Bytes,
    },
    /// The other endpoint's session ended without ending the channel
    /// (`remote:disconnect`); a peer may connect again.
    RemoteDisconnect,
    /// The channel ended (`end`); sends fail from now on.
    End {
        /// True when this peer called [`ChannelSession::end`].
        by_self: bool,
    },
    /// A request failed, or the session broke (`error`). After a broken
    /// session that is not opened again (see [`ChannelSession`]) the stream
    /// ends.
    Error(Error),
    /// The session broke on the way to the broker (the error) and is being
    /// opened again, as the bus's [`Reconnect`] policy says. The next event
    /// is the new session's [`Connect`](Self::Connect), which is the signal
    /// that it is back, or an [`Error`](Self::Error) when the policy gave up
    /// (the stream then ends). Sends made meanwhile wait for the new
    /// session.
    Reconnecting(Error),
    /// This peer left the channel (`disconnect`): the broker applied
    /// everything sent before and told the other endpoint. The last event
    /// of a session closed by [`ChannelSession::disconnect`].
    Disconnect,
}

/// The handle that sends on a session; clone it to send, ack or end from
/// another task while one task reads the events.
#[derive(Clone)]
pub struct ChannelSender {
    /// `None` closes the request stream (a disconnect).
    requests: mpsc::Sender<Outgoing>,
    ended: Arc<AtomicBool>,
}

impl fmt::Debug for ChannelSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelSender")
            .field("ended", &self.ended.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl ChannelSender {
    /// Sends a message to the other endpoint (node-busmq's
    /// `channel.send`). The peer need not be connected: the message waits
    /// in its inbound queue. Returns once the request is in the session's
    /// buffer (waiting for room when many are); a failure to store it comes
    /// back as a [`ChannelEvent::Error`]. While the session reconnects, the
    /// request waits there for the new session. Fails at once with
    /// `FailedPrecondition` once the channel has ended.
    pub async fn send(&self, message: impl Into<Bytes>) -> Result<()> {
        self.check_open("send")?;
        self.request(pb::channel_request::Request::Send(pb::ChannelSend {
            messages: vec![message.into()],
        }))
        .await
    }

    /// Reliable mode: acknowledges message `id` and every earlier one
    /// (cumulative). An un-acked message is delivered again to the next
    /// session of this endpoint. A refused ack comes back as a
    /// [`ChannelEvent::Error`].
    pub async fn ack(&self, id: u64) -> Result<()> {
        self.check_open("ack")?;
        self.request(pb::channel_request::Request::Ack(pb::ChannelAck { id }))
            .await
    }

    /// Ends the channel (node-busmq's `channel.end()`): the other endpoint
    /// gets [`ChannelEvent::End`] after everything sent before, this one
    /// gets `End { by_self: true }`, and both queues are closed.
    pub async fn end(&self) -> Result<()> {
        self.check_open("end")?;
        self.request(pb::channel_request::Request::End(pb::ChannelEnd {}))
            .await?;
        self.ended.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// True once this peer ended the channel or saw it end.
    pub fn is_ended(&self) -> bool {
        self.ended.load(Ordering::Relaxed)
    }

    fn check_open(&self, what: &str) -> Result<()> {
        if self.is_ended() {
            return Err(Error::Bus(busmq_core::Error::ChannelEnded(what.to_owned())));
        }
        Ok(())
    }

    async fn request(&self, request: pb::channel_request::Request) -> Result<()> {
        self.requests
            .send(Some(pb::ChannelRequest {
                request: Some(request),
            }))
            .await
            .map_err(|_| session_over())
    }
}

fn session_over() -> Error {
    Error::Bus(busmq_core::Error::ChannelEnded(
        "use the session (it disconnected)".to_owned(),
    ))
}

/// What the session's request buffer carries: a request, or `None` to
/// close the request stream (a disconnect).
type Outgoing = Option<pb::ChannelRequest>;

/// The session's request buffer, outliving its gRPC calls: senders push
/// into it, and the request stream of whichever call is current takes from
/// it. Locked only while one request is taken.
type Outbox = Arc<tokio::sync::Mutex<mpsc::Receiver<Outgoing>>>;

/// One gRPC call of a session: its events, and the gate that lets the
/// session's requests into its request stream. The gate opens once the
/// broker confirmed the session, so a refused attempt takes nothing from
/// the buffer; dropping the call closes it for good, so a broken call stops
/// taking requests meant for the next one.
struct Call {
    events: Streaming<pb::ChannelEvents>,
    gate: watch::Sender<bool>,
}

impl Call {
    /// Opens a call whose request stream is `open`, then (once admitted)
    /// what the outbox holds. Returns it with its first event batch.
    async fn start(
        client: &ChannelsClient<Transport>,
        open: pb::OpenChannel,
        outbox: &Outbox,
        close_taken: &Arc<AtomicBool>,
    ) -> std::result::Result<(Call, Option<pb::ChannelEvents>), tonic::Status> {
        let (gate, admitted) = watch::channel(false);
        let first = pb::ChannelRequest {
            request: Some(pb::channel_request::Request::Open(open)),
        };
        let rest = futures::stream::unfold(
            (Arc::clone(outbox), admitted, Arc::clone(close_taken)),
            |(outbox, mut admitted, close_taken)| async move {
                admitted.wait_for(|open| *open).await.ok()?;
                let next = tokio::select! {
                    biased;
                    // The gate only changes again when the call is dropped.
                    _ = admitted.changed() => return None,
                    next = async { outbox.lock().await.recv().await } => next,
                };
                match next {
                    Some(Some(request)) => Some((request, (outbox, admitted, close_taken))),
                    // A disconnect: the broker applies what came before,
                    // then confirms.
                    Some(None) => {
                        close_taken.store(true, Ordering::Relaxed);
                        None
                    }
                    // Every sender is gone with the session.
                    None => None,
                }
            },
        );
        let requests = futures::stream::once(std::future::ready(first)).chain(rest);
        let mut events = client.clone().open(requests).await?.into_inner();
        let first = events.message().await?;
        Ok((Call { events, gate }, first))
    }

    /// Lets the session's requests through, the broker having confirmed.
    fn admit(&self) {
        // Fails only when the request stream is gone, which the event
        // stream reports.
        let _ = self.gate.send(true);
    }
}

/// The first batch of a call, when it confirms the session (`Connect`
/// first).
fn confirmed(first: Option<pb::ChannelEvents>) -> Result<pb::ChannelEvents> {
    match first {
        Some(batch)
            if matches!(
                batch.events.first().and_then(|e| e.event.as_ref()),
                Some(Ev::Connect(_))
            ) =>
        {
            Ok(batch)
        }
        _ => Err(Error::Protocol(
            "the broker did not confirm the channel session".to_owned(),
        )),
    }
}

/// What a reconnect produces: the new call and its confirming batch.
type Reopened = (Call, pb::ChannelEvents);

/// Opens the session again after its call broke, retrying with backoff
/// until `policy` gives up. Transport failures are retried, and so is
/// `FailedPrecondition`: the broken session's reliable lock on the endpoint
/// lapses only some time after its broker died.
async fn reopen(
    client: ChannelsClient<Transport>,
    open: pb::OpenChannel,
    outbox: Outbox,
    close_taken: Arc<AtomicBool>,
    policy: Reconnect,
) -> Result<Reopened> {
    let mut backoff = Backoff::new(policy);
    loop {
        backoff.pause().await;
        let status = match Call::start(&client, open.clone(), &outbox, &close_taken).await {
            Ok((call, first)) => return Ok((call, confirmed(first)?)),
            Err(status) => status,
        };
        let retry = is_transient(&status) || status.code() == tonic::Code::FailedPrecondition;
        if !retry || backoff.gave_up() {
            return Err(status.into());
        }
    }
}

/// One peer's open session on a channel: a [`Stream`] of
/// [`ChannelEvent`]s, from [`Channel::connect`] or [`Channel::listen`].
///
/// A session broken on the way to the broker (a broker restart, a dropped
/// connection) is opened again by itself, as the bus's
/// [`Reconnect`] policy says: the stream yields
/// [`ChannelEvent::Reconnecting`], then the new session's events, starting
/// with its [`ChannelEvent::Connect`]. Sends made meanwhile wait in the
/// session's buffer and go out on the new session. The reconnect happens
/// as the events are read: a peer that only sends, and never reads, waits
/// for room once the buffer (256 requests) is full.
///
/// What crosses a break, by mode: reliable, the messages not acked are
/// delivered again (`Connect { redelivered }`); persistent, reading resumes
/// after the last message received (presence events after it may be seen
/// again); unreliable, messages on the way to this peer are lost. A
/// request already handed to the broken call may or may not have been
/// applied, and is not sent again: at most once, like a push whose answer
/// was lost. The other endpoint sees `RemoteDisconnect` when the broker
/// shut down gracefully, and `RemoteConnect` again when this peer is back.
///
/// No reconnect once the channel ended (or [`end`](Self::end) was called)
/// or once the disconnect went out, nor with [`Reconnect::disabled`]; the
/// stream then ends after the [`ChannelEvent::Error`] that broke the
/// session, as it does when the policy gives up. It also ends after
/// [`disconnect`](Self::disconnect). Dropping the session disconnects too:
/// the other endpoint gets `RemoteDisconnect`.
pub struct ChannelSession {
    sender: ChannelSender,
    client: ChannelsClient<Transport>,
    /// What opens this session, repeated (resumed) on a reconnect.
    open: pb::OpenChannel,
    policy: Reconnect,
    /// `None` once the session is over: the buffer then goes with the last
    /// call that held it, and sends fail.
    outbox: Option<Outbox>,
    /// Set when a request stream took the disconnect: the session is over
    /// and must not be opened again.
    close_taken: Arc<AtomicBool>,
    /// `None` while reconnecting, and once the session is over.
    call: Option<Call>,
    /// A reconnect in progress. In a mutex only to keep the session `Sync`;
    /// it is polled through `&mut self`, never locked.
    reopening: Option<std::sync::Mutex<BoxFuture<'static, Result<Reopened>>>>,
    reconnects: u64,
    /// The id of the last message received, where a persistent session
    /// resumes.
    last_id: Option<u64>,
    buffer: VecDeque<ChannelEvent>,
    mode: ConsumeMode,
}

impl fmt::Debug for ChannelSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelSession")
            .field("mode", &self.mode)
            .field("ended", &self.sender.is_ended())
            .field("reconnects", &self.reconnects)
            .field("buffered", &self.buffer.len())
            .finish_non_exhaustive()
    }
}

impl ChannelSession {
    async fn open(
        channel: &Channel,
        local: &str,
        remote: &str,
        options: ConsumeOptions,
    ) -> Result<ChannelSession> {
        let mode = options.mode()?;
        if mode == ConsumeMode::Lease {
            return Err(Error::InvalidOptions(
                "lease mode is not offered on channels; use reliable mode for acks".to_owned(),
            ));
        }
        if options.max.is_some() {
            return Err(Error::InvalidOptions(
                "max does not apply to channels; disconnect when done".to_owned(),
            ));
        }
        let open = pb::OpenChannel {
            name: channel.name.to_string(),
            local: local.to_owned(),
            remote: remote.to_owned(),
            mode: pb::ConsumeMode::from(mode).into(),
            last: options.last,
            index: options.index,
            prefetch: options.prefetch,
            ttl: channel.ttl.map(busmq_proto::duration::seconds_rounded_up),
        };
        let (tx, rx) = mpsc::channel(REQUEST_BUFFER);
        let outbox = Arc::new(tokio::sync::Mutex::new(rx));
        let close_taken = Arc::new(AtomicBool::new(false));
        let (call, first) =
            Call::start(&channel.client, open.clone(), &outbox, &close_taken).await?;
        let first = confirmed(first)?;
        call.admit();
        let mut session = ChannelSession {
            sender: ChannelSender {
                requests: tx,
                ended: Arc::new(AtomicBool::new(false)),
            },
            client: channel.client.clone(),
            open,
            policy: channel.reconnect,
            outbox: Some(outbox),
            close_taken,
            call: Some(call),
            reopening: None,
            reconnects: 0,
            last_id: None,
            buffer: VecDeque::new(),
            mode,
        };
        session.absorb(first);
        Ok(session)
    }

    /// The mode this session consumes its inbound queue in.
    pub fn mode(&self) -> ConsumeMode {
        self.mode
    }

    /// How many times the session broke and was opened again (see
    /// [`Reconnect`]).
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// Events received from the broker and not yet taken from the stream.
    /// In reliable mode, acking when it is 0 acks everything received so
    /// far with one (cumulative) ack.
    pub fn buffered_len(&self) -> usize {
        self.buffer.len()
    }

    /// A handle to send, ack and end from other tasks.
    pub fn sender(&self) -> ChannelSender {
        self.sender.clone()
    }

    /// See [`ChannelSender::send`].
    pub async fn send(&self, message: impl Into<Bytes>) -> Result<()> {
        self.sender.send(message).await
    }

    /// See [`ChannelSender::ack`].
    pub async fn ack(&self, id: u64) -> Result<()> {
        self.sender.ack(id).await
    }

    /// See [`ChannelSender::end`].
    pub async fn end(&self) -> Result<()> {
        self.sender.end().await
    }

    /// True once this peer ended the channel or saw it end.
    pub fn is_ended(&self) -> bool {
        self.sender.is_ended()
    }

    /// Leaves the channel without ending it (node-busmq's
    /// `channel.disconnect()`): everything sent before is stored first, the
    /// other endpoint gets `RemoteDisconnect`, and the channel stays for a
    /// later session. Returns once the broker confirmed it
    /// ([`ChannelEvent::Disconnect`]). Events that arrive meanwhile are
    /// dropped (in reliable mode, un-acked messages come again next time);
    /// returns the first error among them, if any. A session reconnecting
    /// when this is called opens again first, so what was sent before goes
    /// out.
    pub async fn disconnect(mut self) -> Result<()> {
        // Senders cloned from this session may still be alive, so close the
        // request stream explicitly rather than by dropping. The buffer may
        // be full while a reconnect waits for the events to be read, so
        // read them while waiting for room.
        let requests = self.sender.requests.clone();
        let mut close = std::pin::pin!(requests.send(None));
        let mut closing = true;
        let mut first_error = None;
        let mut confirmed = false;
        loop {
            let event = tokio::select! {
                _ = &mut close, if closing => {
                    closing = false;
                    continue;
                }
                event = self.next() => event,
            };
            match event {
                Some(ChannelEvent::Error(e)) => {
                    first_error.get_or_insert(e);
                }
                Some(ChannelEvent::Disconnect) => confirmed = true,
                Some(_) => {}
                None => break,
            }
        }
        match first_error {
            Some(e) => Err(e),
            None if confirmed => Ok(()),
            None => Err(Error::Protocol(
                "the channel session ended without confirming the disconnect".to_owned(),
            )),
        }
    }

    fn absorb(&mut self, batch: pb::ChannelEvents) {
        for event in batch.events.into_iter().filter_map(|e| e.event) {
            let event = match event {
                Ev::Connect(c) => ChannelEvent::Connect {
                    redelivered: c.redelivered,
                },
                Ev::RemoteConnect(_) => ChannelEvent::RemoteConnect,
                Ev::Message(m) => {
                    self.last_id = Some(m.id);
                    ChannelEvent::Message {
                        id: m.id,
                        payload: m.payload,
                    }
                }
                Ev::RemoteDisconnect(_) => ChannelEvent::RemoteDisconnect,
                Ev::End(e) => {
                    self.sender.ended.store(true, Ordering::Relaxed);
                    ChannelEvent::End { by_self: e.by_self }
                }
                Ev::Disconnect(_) => ChannelEvent::Disconnect,
                Ev::Error(e) => ChannelEvent::Error(Error::Bus(busmq_proto::from_proto_error(&e))),
            };
            self.buffer.push_back(event);
        }
    }
}

impl ChannelSession {
    /// Starts opening the session again after `status` broke it, when the
    /// policy allows and the failure was on the way to the broker; false
    /// when the session must end with the error instead.
    fn try_reconnect(&mut self, status: &tonic::Status) -> bool {
        let over = self.sender.is_ended() || self.close_taken.load(Ordering::Relaxed);
        if over || !self.policy.enabled || !is_transient(status) {
            return false;
        }
        let Some(outbox) = self.outbox.as_ref() else {
            return false;
        };
        let mut open = self.open.clone();
        if self.mode == ConsumeMode::Persistent
            && let Some(last) = self.last_id
        {
            open.index = Some(last + 1);
        }
        self.reopening = Some(std::sync::Mutex::new(Box::pin(reopen(
            self.client.clone(),
            open,
            Arc::clone(outbox),
            Arc::clone(&self.close_taken),
            self.policy,
        ))));
        true
    }

    /// The session is over for good: no call, no reconnect, no buffer.
    fn finish(&mut self) {
        self.call = None;
        self.reopening = None;
        self.outbox = None;
    }
}

impl Stream for ChannelSession {
    type Item = ChannelEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ChannelEvent>> {
        let this = &mut *self;
        loop {
            if let Some(event) = this.buffer.pop_front() {
                return Poll::Ready(Some(event));
            }
            if let Some(reopening) = this.reopening.as_mut() {
                let reopening = reopening.get_mut().unwrap_or_else(|p| p.into_inner());
                match reopening.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok((call, first))) => {
                        this.reopening = None;
                        this.reconnects += 1;
                        call.admit();
                        this.call = Some(call);
                        this.absorb(first);
                        continue;
                    }
                    Poll::Ready(Err(err)) => {
                        this.finish();
                        return Poll::Ready(Some(ChannelEvent::Error(err)));
                    }
                }
            }
            let Some(call) = this.call.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(&mut call.events).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(batch))) => this.absorb(batch),
                Poll::Ready(Some(Err(status))) => {
                    // Dropping the call stops its request stream, so the
                    // requests still buffered wait for the next call.
                    this.call = None;
                    let err = Error::from(status.clone());
                    if this.try_reconnect(&status) {
                        return Poll::Ready(Some(ChannelEvent::Reconnecting(err)));
                    }
                    this.finish();
                    return Poll::Ready(Some(ChannelEvent::Error(err)));
                }
                Poll::Ready(None) => {
                    this.finish();
                    return Poll::Ready(None);
                }
            }
        }
    }
}
