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
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::Streaming;
use tonic::transport::Channel as Transport;

use crate::{ConsumeMode, ConsumeOptions, Error, ErrorCode, Result};

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
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("name", &self.name)
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl Channel {
    pub(crate) fn new(
        client: ChannelsClient<Transport>,
        name: String,
        local: String,
        remote: String,
    ) -> Channel {
        Channel {
            client,
            name: name.into(),
            local: local.into(),
            remote: remote.into(),
            ttl: None,
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
    /// session the stream ends.
    Error(Error),
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
    requests: mpsc::Sender<Option<pb::ChannelRequest>>,
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
    /// in its inbound queue. Returns once the request is on its way (waiting
    /// for room when many are); a failure to store it comes back as a
    /// [`ChannelEvent::Error`]. Fails at once with `FailedPrecondition` once
    /// the channel has ended.
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
            return Err(Error::Bus(busmq_core::Error::Remote {
                code: ErrorCode::FailedPrecondition,
                message: format!("cannot {what}: the channel has ended"),
            }));
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
    Error::Bus(busmq_core::Error::Remote {
        code: ErrorCode::FailedPrecondition,
        message: "the channel session is over (disconnected)".to_owned(),
    })
}

/// One peer's open session on a channel: a [`Stream`] of
/// [`ChannelEvent`]s, from [`Channel::connect`] or [`Channel::listen`].
///
/// The stream ends after [`disconnect`](Self::disconnect), or after a
/// [`ChannelEvent::Error`] that broke the session. Dropping the session
/// disconnects too: the other endpoint gets `RemoteDisconnect`.
pub struct ChannelSession {
    sender: ChannelSender,
    events: Option<Streaming<pb::ChannelEvents>>,
    buffer: VecDeque<ChannelEvent>,
    mode: ConsumeMode,
}

impl fmt::Debug for ChannelSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelSession")
            .field("mode", &self.mode)
            .field("ended", &self.sender.is_ended())
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
        let (tx, rx) = mpsc::channel(REQUEST_BUFFER);
        let open = pb::OpenChannel {
            name: channel.name.to_string(),
            local: local.to_owned(),
            remote: remote.to_owned(),
            mode: pb::ConsumeMode::from(mode).into(),
            last: options.last,
            index: options.index,
            prefetch: options.prefetch,
            ttl_seconds: channel
                .ttl
                .map(|ttl| ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)),
        };
        tx.try_send(Some(pb::ChannelRequest {
            request: Some(pb::channel_request::Request::Open(open)),
        }))
        .map_err(|_| Error::Protocol("fresh request buffer is full".to_owned()))?;
        // A `None` ends the request stream in order, after what was sent.
        let requests = ReceiverStream::new(rx)
            .take_while(|r| std::future::ready(r.is_some()))
            .filter_map(std::future::ready);
        let mut events = channel.client.clone().open(requests).await?.into_inner();
        let first = events.message().await?;
        let mut session = ChannelSession {
            sender: ChannelSender {
                requests: tx,
                ended: Arc::new(AtomicBool::new(false)),
            },
            events: Some(events),
            buffer: VecDeque::new(),
            mode,
        };
        match first {
            Some(batch)
                if matches!(
                    batch.events.first().and_then(|e| e.event.as_ref()),
                    Some(Ev::Connect(_))
                ) =>
            {
                session.absorb(batch);
                Ok(session)
            }
            _ => Err(Error::Protocol(
                "the broker did not confirm the channel session".to_owned(),
            )),
        }
    }

    /// The mode this session consumes its inbound queue in.
    pub fn mode(&self) -> ConsumeMode {
        self.mode
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
    /// returns the first error among them, if any.
    pub async fn disconnect(mut self) -> Result<()> {
        // Senders cloned from this session may still be alive, so close the
        // request stream explicitly rather than by dropping.
        let _ = self.sender.requests.send(None).await;
        let mut first_error = None;
        let mut confirmed = false;
        while let Some(event) = self.next().await {
            match event {
                ChannelEvent::Error(e) => {
                    first_error.get_or_insert(e);
                }
                ChannelEvent::Disconnect => confirmed = true,
                _ => {}
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
                Ev::Message(m) => ChannelEvent::Message {
                    id: m.id,
                    payload: m.payload,
                },
                Ev::RemoteDisconnect(_) => ChannelEvent::RemoteDisconnect,
                Ev::End(e) => {
                    self.sender.ended.store(true, Ordering::Relaxed);
                    ChannelEvent::End { by_self: e.by_self }
                }
                Ev::Disconnect(_) => ChannelEvent::Disconnect,
                Ev::Error(e) => ChannelEvent::Error(Error::from(tonic::Status::new(
                    tonic::Code::from_i32(e.code),
                    e.message,
                ))),
            };
            self.buffer.push_back(event);
        }
    }
}

impl Stream for ChannelSession {
    type Item = ChannelEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ChannelEvent>> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                return Poll::Ready(Some(event));
            }
            let Some(events) = self.events.as_mut() else {
                return Poll::Ready(None);
            };
            match Pin::new(events).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(batch))) => self.absorb(batch),
                Poll::Ready(Some(Err(status))) => {
                    self.events = None;
                    return Poll::Ready(Some(ChannelEvent::Error(status.into())));
                }
                Poll::Ready(None) => {
                    self.events = None;
                    return Poll::Ready(None);
                }
            }
        }
    }
}
