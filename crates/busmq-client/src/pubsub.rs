//! A publish/subscribe channel handle: node-busmq's `Pubsub`.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};

use busmq_proto::v1 as pb;
use busmq_proto::v1::pub_sub_client::PubSubClient;
use bytes::Bytes;
use futures::Stream;
use tokio::sync::broadcast;
use tokio::task::AbortHandle;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tonic::Streaming;

use crate::events::EVENT_CAPACITY;
use crate::reconnect::Backoff;
use crate::trace_context::Transport as Channel;
use crate::{Error, ErrorCode, Reconnect, Result};

/// Something that happened on a [`PubSub`] handle: node-busmq's pubsub
/// events, plus `Missed` for what a slow subscriber did not get.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PubSubEvent {
    /// The subscription is in place: every later publish reaches it.
    Subscribed,
    /// A message published on the channel.
    Message(Bytes),
    /// This many messages (or, when this listener itself fell behind,
    /// events) were dropped because the subscriber did not keep up. Pub/sub
    /// is not stored: they are gone.
    Missed(u64),
    /// The subscription ended: [`PubSub::unsubscribe`] was called, or it
    /// was lost for good (then an [`Error`](PubSubEvent::Error) comes
    /// first).
    Unsubscribed,
    /// The subscription failed or was lost. When the broker or the store
    /// went away, the handle subscribes again by itself, as the bus's
    /// [`Reconnect`] policy says, and emits
    /// [`Subscribed`](PubSubEvent::Subscribed) once it is back: what was
    /// published meanwhile is gone, as pub/sub stores nothing.
    Error(String),
}

/// The stream of [`PubSubEvent`]s of a pubsub handle, from
/// [`PubSub::events`].
///
/// Backed by a bounded broadcast channel of 1024 events: a listener that
/// falls further behind skips the oldest and is told so with a
/// [`PubSubEvent::Missed`]. The stream ends when every clone of the handle
/// is dropped.
pub struct PubSubEvents {
    inner: BroadcastStream<PubSubEvent>,
}

impl fmt::Debug for PubSubEvents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PubSubEvents").finish_non_exhaustive()
    }
}

impl Stream for PubSubEvents {
    type Item = PubSubEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<PubSubEvent>> {
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(event))) => Poll::Ready(Some(event)),
            Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(n)))) => {
                Poll::Ready(Some(PubSubEvent::Missed(n)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Where the handle's subscription stands.
enum State {
    Unsubscribed,
    /// A subscribe call is under way; its generation.
    Subscribing(u64),
    /// The stream is read by a task.
    Subscribed {
        generation: u64,
        reader: AbortHandle,
    },
}

struct Shared {
    name: String,
    client: PubSubClient<Channel>,
    reconnect: Reconnect,
    events: broadcast::Sender<PubSubEvent>,
    state: Mutex<State>,
    generations: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every step under the lock is infallible: poisoning is moot.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(&self, event: PubSubEvent) {
        // No listener is fine.
        let _ = self.events.send(event);
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let State::Subscribed { reader, .. } = &*self.state() {
            reader.abort();
        }
    }
}

/// A handle on the pub/sub channel `name`: node-busmq's `bus.pubsub(name)`.
///
/// Messages are not stored: [`publish`](PubSub::publish) reaches the
/// subscribers of the moment, on every broker of the bus, and says how
/// many. Subscribe with [`subscribe`](PubSub::subscribe) and read messages
/// from [`events`](PubSub::events). A subscription lost because the broker
/// (or its store) went away is renewed by itself, as node-busmq's was when
/// Redis came back. Cloning is cheap; clones share the subscription.
/// Dropping every clone unsubscribes.
///
/// ```no_run
/// use busmq_client::{Bus, PubSubEvent};
/// use futures::StreamExt;
///
/// # async fn demo() -> Result<(), busmq_client::Error> {
/// let bus = Bus::connect("http://127.0.0.1:50051").await?;
/// let s = bus.pubsub("my-pubsub-channel");
/// let mut events = s.events();
/// s.subscribe().await?;
///
/// let p = bus.pubsub("my-pubsub-channel");
/// let receivers = p.publish("hello world").await?;
/// assert_eq!(receivers, 1);
///
/// while let Some(event) = events.next().await {
///     if let PubSubEvent::Message(message) = event {
///         println!("received {:?}", message);
///         break;
///     }
/// }
/// s.unsubscribe();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PubSub {
    shared: Arc<Shared>,
}

impl fmt::Debug for PubSub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PubSub")
            .field("name", &self.shared.name)
            .field("subscribed", &self.is_subscribed())
            .finish()
    }
}

impl PubSub {
    pub(crate) fn new(client: PubSubClient<Channel>, name: String, reconnect: Reconnect) -> Self {
        PubSub {
            shared: Arc::new(Shared {
                name,
                client,
                reconnect,
                events: broadcast::channel(EVENT_CAPACITY).0,
                state: Mutex::new(State::Unsubscribed),
                generations: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// The channel name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Events from now on: subscribed, messages, unsubscribed, errors. Take
    /// this stream before [`subscribe`](Self::subscribe) to see every
    /// message.
    pub fn events(&self) -> PubSubEvents {
        PubSubEvents {
            inner: BroadcastStream::new(self.shared.events.subscribe()),
        }
    }

    /// Publishes `message` and returns how many subscribers received it,
    /// over every broker of the bus. Publishing does not need a
    /// subscription. A subscriber that unsubscribed a moment ago may still
    /// be counted once.
    pub async fn publish(&self, message: impl Into<Bytes>) -> Result<u64> {
        let reply = self
            .shared
            .client
            .clone()
            .publish(pb::PublishRequest {
                channel: self.shared.name.clone(),
                message: message.into(),
            })
            .await
            .inspect_err(|status| {
                self.shared
                    .emit(PubSubEvent::Error(status.message().into()))
            })?;
        Ok(reply.into_inner().receivers)
    }

    /// Subscribes to the channel and returns once the subscription is in
    /// place ([`PubSubEvent::Subscribed`] is emitted then); messages arrive
    /// as [`PubSubEvent::Message`]. Does nothing when already subscribed or
    /// subscribing.
    pub async fn subscribe(&self) -> Result<()> {
        let shared = &self.shared;
        let generation = {
            let mut state = shared.state();
            if !matches!(*state, State::Unsubscribed) {
                return Ok(());
            }
            let generation = shared
                .generations
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            *state = State::Subscribing(generation);
            generation
        };
        let opened = open(shared.client.clone(), &shared.name).await;
        let mut state = shared.state();
        if !matches!(*state, State::Subscribing(g) if g == generation) {
            // Unsubscribed while the call was under way: dropping the
            // stream cancels it.
            return Ok(());
        }
        match opened {
            Ok(stream) => {
                // Emitted under the lock, before the reader exists, so it
                // comes before every message.
                shared.emit(PubSubEvent::Subscribed);
                let reader = tokio::spawn(read(
                    stream,
                    Arc::downgrade(shared),
                    shared.client.clone(),
                    shared.name.clone(),
                    shared.events.clone(),
                    generation,
                    shared.reconnect,
                ))
                .abort_handle();
                *state = State::Subscribed { generation, reader };
                Ok(())
            }
            Err(e) => {
                *state = State::Unsubscribed;
                shared.emit(PubSubEvent::Error(e.to_string()));
                Err(e)
            }
        }
    }

    /// Stops the subscription: no message is emitted after the
    /// [`PubSubEvent::Unsubscribed`] it emits. Publishing still works. Does
    /// nothing when not subscribed.
    pub fn unsubscribe(&self) {
        let mut state = self.shared.state();
        match std::mem::replace(&mut *state, State::Unsubscribed) {
            State::Unsubscribed => {}
            State::Subscribing(_) => self.shared.emit(PubSubEvent::Unsubscribed),
            State::Subscribed { reader, .. } => {
                // Dropping the stream cancels the call on the broker.
                reader.abort();
                self.shared.emit(PubSubEvent::Unsubscribed);
            }
        }
    }

    /// True while subscribed (node-busmq's `isSubscribed`).
    pub fn is_subscribed(&self) -> bool {
        matches!(*self.shared.state(), State::Subscribed { .. })
    }
}

/// Opens the subscription and waits for the broker's `subscribed`.
async fn open(mut client: PubSubClient<Channel>, name: &str) -> Result<Streaming<pb::PubSubEvent>> {
    let mut stream = client
        .subscribe(pb::SubscribeRequest {
            channel: name.to_owned(),
        })
        .await?
        .into_inner();
    match stream.message().await? {
        Some(pb::PubSubEvent {
            event: Some(pb::pub_sub_event::Event::Subscribed(_)),
        }) => Ok(stream),
        Some(other) => Err(Error::Protocol(format!(
            "expected subscribed as the first event, got {other:?}"
        ))),
        None => Err(Error::Protocol(
            "the broker ended the subscription before confirming it".into(),
        )),
    }
}

/// Whether a lost subscription may come back by subscribing again: the
/// broker or the store was away, not the request at fault.
fn transient(e: &Error) -> bool {
    matches!(e.code(), ErrorCode::Unavailable | ErrorCode::Internal)
}

/// Emits every message of the stream; when the stream breaks for a reason
/// that may pass, reports it and subscribes again (with backoff) until it
/// works. Otherwise, unless the handle unsubscribed meanwhile, reports why
/// and marks it unsubscribed.
async fn read(
    mut stream: Streaming<pb::PubSubEvent>,
    shared: Weak<Shared>,
    client: PubSubClient<Channel>,
    name: String,
    events: broadcast::Sender<PubSubEvent>,
    generation: u64,
    policy: Reconnect,
) {
    let error = loop {
        let lost = drain(&mut stream, &events).await;
        if !policy.enabled || !transient(&lost) {
            break lost;
        }
        let _ = events.send(PubSubEvent::Error(lost.to_string()));
        let mut backoff = Backoff::new(policy);
        let renewed = loop {
            backoff.pause().await;
            match open(client.clone(), &name).await {
                Ok(renewed) => break Ok(renewed),
                Err(e) if transient(&e) && !backoff.gave_up() => {
                    tracing::debug!(channel = %name, "subscribing again failed: {e}");
                }
                Err(e) => break Err(e),
            }
        };
        match renewed {
            Ok(renewed) => {
                stream = renewed;
                let _ = events.send(PubSubEvent::Subscribed);
            }
            Err(e) => break e,
        }
    };
    let Some(shared) = shared.upgrade() else {
        return;
    };
    let mut state = shared.state();
    if matches!(*state, State::Subscribed { generation: g, .. } if g == generation) {
        *state = State::Unsubscribed;
        shared.emit(PubSubEvent::Error(error.to_string()));
        shared.emit(PubSubEvent::Unsubscribed);
    }
}

/// Emits every message of `stream` until it breaks; returns why.
async fn drain(
    stream: &mut Streaming<pb::PubSubEvent>,
    events: &broadcast::Sender<PubSubEvent>,
) -> Error {
    loop {
        match stream.message().await {
            Ok(Some(pb::PubSubEvent { event: Some(event) })) => match event {
                pb::pub_sub_event::Event::Messages(batch) => {
                    for message in batch.messages {
                        let _ = events.send(PubSubEvent::Message(message));
                    }
                }
                pb::pub_sub_event::Event::Missed(n) => {
                    let _ = events.send(PubSubEvent::Missed(n));
                }
                pb::pub_sub_event::Event::Subscribed(_) => {}
            },
            // An event of a newer broker this client does not know.
            Ok(Some(_)) => {}
            // A broker ends a healthy subscription only with an error
            // status; a bare end means the connection went away.
            Ok(None) => {
                return Error::Bus(busmq_core::Error::Unavailable(
                    "the broker ended the subscription".into(),
                ));
            }
            Err(status) => return Error::from(status),
        }
    }
}
