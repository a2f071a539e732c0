//! Plain publish/subscribe: the in-process [`Hub`] of the memory and
//! embedded stores, and the bounded [`Outbox`] every hop of a subscription
//! (store, storage service, broker) uses so a slow subscriber never grows
//! memory.
//!
//! # Slow subscribers
//!
//! Every hop buffers at most [`SUBSCRIPTION_BUFFER`] events per
//! subscription. When a buffer is full, a message is dropped for that
//! subscriber only (never for the others, and the publisher never waits);
//! the subscriber then receives one [`ChannelEvent::Missed`] with the count
//! just before the next message that fits. Pub/sub is not stored, so
//! dropping is the only choice that keeps both memory and publishers safe;
//! the notice makes it visible.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};

use busmq_core::Limits;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::{
    ChannelEvent, ChannelFilter, ChannelName, ChannelPage, Error, Result, Storage, Subscription,
};

/// Events buffered per subscription and per hop before messages are
/// dropped for it.
pub const SUBSCRIPTION_BUFFER: usize = 1024;

/// What became of one message offered to an [`Outbox`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Buffered for the subscriber.
    Delivered,
    /// The buffer was full: dropped, and counted for the next notice.
    Dropped,
    /// The subscriber is gone.
    Closed,
}

/// The sending side of one subscription's bounded buffer, remembering how
/// many messages it dropped until it can say so.
#[derive(Debug)]
pub struct Outbox<T> {
    tx: mpsc::Sender<T>,
    missed: u64,
}

impl<T> Outbox<T> {
    /// An outbox feeding `tx`.
    pub fn new(tx: mpsc::Sender<T>) -> Self {
        Outbox { tx, missed: 0 }
    }

    /// Counts `n` messages dropped upstream, to be reported with this
    /// outbox's own next notice.
    pub fn missed_upstream(&mut self, n: u64) {
        self.missed = self.missed.saturating_add(n);
    }

    /// Offers `message`, preceded by a [`ChannelEvent::Missed`] notice when
    /// messages were dropped since the last one. Never waits. `wrap` turns
    /// an event into what the channel carries.
    pub fn offer(&mut self, message: Bytes, wrap: impl Fn(ChannelEvent) -> T) -> Offer {
        if self.missed > 0 {
            match self.tx.try_send(wrap(ChannelEvent::Missed(self.missed))) {
                Ok(()) => self.missed = 0,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.missed = self.missed.saturating_add(1);
                    return Offer::Dropped;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return Offer::Closed,
            }
        }
        match self.tx.try_send(wrap(ChannelEvent::Message(message))) {
            Ok(()) => Offer::Delivered,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.missed = self.missed.saturating_add(1);
                Offer::Dropped
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Offer::Closed,
        }
    }

    /// Whether the receiving side is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Resolves when the receiving side is gone.
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    /// Sends a last item if there is room (the stream ends after it). Never
    /// waits: a stalled subscriber must not hold up a shutdown; it sees the
    /// stream end without the item.
    pub fn finish(&self, last: T) {
        let _ = self.tx.try_send(last);
    }
}

/// Forwards `source` into `outbox` until the subscriber goes away, the
/// source ends or `shutdown` fires: one hop of a subscription (the storage
/// service's and the broker's streams). An error from the source, or
/// UNAVAILABLE at shutdown, is passed on through `fail` as the last item.
pub async fn forward<T>(
    mut source: Subscription,
    mut outbox: Outbox<T>,
    wrap: impl Fn(ChannelEvent) -> T,
    fail: impl FnOnce(crate::Error) -> T,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                outbox.finish(fail(Error::Unavailable(
                    "the server is shutting down: subscribe again elsewhere".into(),
                )));
                return;
            }
            _ = outbox.closed() => return,
            next = source.next() => match next {
                None => return,
                Some(Ok(ChannelEvent::Missed(n))) => outbox.missed_upstream(n),
                Some(Ok(ChannelEvent::Message(m))) => {
                    if outbox.offer(m, &wrap) == Offer::Closed {
                        return;
                    }
                }
                Some(Err(e)) => {
                    outbox.finish(fail(e));
                    return;
                }
            },
        }
    }
}

/// A publish arriving at a gRPC edge (the storage service, the broker):
/// checks the channel name and the message size against `limits`, then
/// publishes.
pub async fn publish_checked(
    storage: &dyn Storage,
    limits: &Limits,
    channel: &str,
    message: Bytes,
) -> Result<u64> {
    let channel = ChannelName::parse(channel, limits)?;
    limits.check_batch(std::slice::from_ref(&message))?;
    storage.publish(&channel, message).await
}

/// Most messages sent in one wire event of a subscription.
pub const MAX_BATCH_MESSAGES: usize = 256;

/// Most payload bytes in one wire event of a subscription (a single larger
/// message still goes alone).
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// What one wire event of a subscription carries: the edges turn each into
/// their own message type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Batch {
    /// Messages in publish order.
    Messages(Vec<Bytes>),
    /// Messages dropped for this subscriber (see [`ChannelEvent::Missed`]).
    Missed(u64),
    /// The subscription ended with this error.
    Failed(Error),
}

/// The stream a gRPC edge serves for one subscription.
pub type Batches = futures::stream::BoxStream<'static, Batch>;

/// Groups the events that are ready at once into [`Batch`]es. Sending
/// messages one per frame would cost a DATA frame each, and a client that
/// buffers many small frames unread is cut off by its own HTTP/2 library
/// (h2 answers a flood of small frames with GOAWAY); batches keep frames
/// few and large when a subscriber is behind, and cost nothing when it is
/// not (a batch is whatever is ready, never a wait).
fn batches(items: ReceiverStream<Result<ChannelEvent>>) -> Batches {
    items
        .ready_chunks(MAX_BATCH_MESSAGES)
        .flat_map(|chunk| futures::stream::iter(group(chunk)))
        .boxed()
}

/// Consecutive messages of `chunk` grouped up to [`MAX_BATCH_BYTES`].
fn group(chunk: Vec<Result<ChannelEvent>>) -> Vec<Batch> {
    let mut out = Vec::new();
    let mut messages: Vec<Bytes> = Vec::new();
    let mut bytes = 0;
    for item in chunk {
        match item {
            Ok(ChannelEvent::Message(m)) => {
                if !messages.is_empty() && bytes + m.len() > MAX_BATCH_BYTES {
                    out.push(Batch::Messages(std::mem::take(&mut messages)));
                    bytes = 0;
                }
                bytes += m.len();
                messages.push(m);
            }
            other => {
                if !messages.is_empty() {
                    out.push(Batch::Messages(std::mem::take(&mut messages)));
                    bytes = 0;
                }
                out.push(match other {
                    Ok(ChannelEvent::Missed(n)) => Batch::Missed(n),
                    Err(e) => Batch::Failed(e),
                    Ok(ChannelEvent::Message(_)) => unreachable!("handled above"),
                });
            }
        }
    }
    if !messages.is_empty() {
        out.push(Batch::Messages(messages));
    }
    out
}

/// A subscription arriving at a gRPC edge: checks the channel name,
/// subscribes (so the subscription counts once this returns) and forwards
/// it through a bounded buffer (see [`forward`]) until the subscriber goes
/// away or `shutdown` fires, served as [`Batch`]es.
pub async fn subscribe_checked(
    storage: &dyn Storage,
    limits: &Limits,
    channel: &str,
    shutdown: CancellationToken,
) -> Result<Batches> {
    let channel = ChannelName::parse(channel, limits)?;
    if shutdown.is_cancelled() {
        return Err(Error::Unavailable("the server is shutting down".into()));
    }
    let source = storage.subscribe(&channel).await?;
    let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
    tracing::debug!(%channel, "subscribed");
    tokio::spawn(forward(source, Outbox::new(tx), Ok, Err, shutdown));
    Ok(batches(ReceiverStream::new(rx)))
}

struct Subscriber {
    id: u64,
    outbox: Outbox<Result<ChannelEvent>>,
}

#[derive(Default)]
struct Channels {
    by_name: HashMap<ChannelName, Vec<Subscriber>>,
    next_id: u64,
}

/// The subscribers of every channel of one in-process store. Publishing
/// offers the message to each subscriber's [`Outbox`] under one lock, so
/// every subscriber sees the messages of a channel in publish order.
#[derive(Clone, Default)]
pub struct Hub {
    channels: Arc<Mutex<Channels>>,
}

impl Hub {
    fn channels(&self) -> MutexGuard<'_, Channels> {
        // Every step under the lock is infallible: poisoning is moot.
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Offers `message` to every subscriber of `channel`; how many took it.
    pub fn publish(&self, channel: &ChannelName, message: Bytes) -> u64 {
        let mut channels = self.channels();
        let Some(subscribers) = channels.by_name.get_mut(channel) else {
            return 0;
        };
        let mut received = 0;
        subscribers.retain_mut(|s| match s.outbox.offer(message.clone(), Ok) {
            Offer::Delivered => {
                received += 1;
                true
            }
            Offer::Dropped => true,
            Offer::Closed => false,
        });
        if subscribers.is_empty() {
            channels.by_name.remove(channel);
        }
        received
    }

    /// A new subscription to `channel`, registered before this returns.
    pub fn subscribe(&self, channel: &ChannelName) -> Subscription {
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
        let id = {
            let mut channels = self.channels();
            channels.next_id += 1;
            let id = channels.next_id;
            channels
                .by_name
                .entry(channel.clone())
                .or_default()
                .push(Subscriber {
                    id,
                    outbox: Outbox::new(tx),
                });
            id
        };
        HubSubscription {
            rx,
            _unsubscribe: Unsubscribe {
                hub: Arc::downgrade(&self.channels),
                channel: channel.clone(),
                id,
            },
        }
        .boxed()
    }

    /// A page of the channels with subscribers, each with its count (see
    /// [`Storage::list_channels`]).
    pub fn list(&self, filter: &ChannelFilter) -> ChannelPage {
        let channels = self.channels();
        filter.page(
            channels
                .by_name
                .iter()
                .map(|(name, subscribers)| (name.clone(), subscribers.len() as u64)),
        )
    }

    /// Subscribers of `channel` right now.
    pub fn subscribers(&self, channel: &ChannelName) -> usize {
        self.channels().by_name.get(channel).map_or(0, Vec::len)
    }
}

/// Removes a subscriber from its hub when its stream is dropped, so an
/// unsubscribed subscriber stops counting at once.
struct Unsubscribe {
    hub: Weak<Mutex<Channels>>,
    channel: ChannelName,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        let Some(hub) = self.hub.upgrade() else {
            return;
        };
        let mut channels = hub.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(subscribers) = channels.by_name.get_mut(&self.channel) {
            subscribers.retain(|s| s.id != self.id);
            if subscribers.is_empty() {
                channels.by_name.remove(&self.channel);
            }
        }
    }
}

struct HubSubscription {
    rx: mpsc::Receiver<Result<ChannelEvent>>,
    /// Held for its `Drop`.
    _unsubscribe: Unsubscribe,
}

impl Stream for HubSubscription {
    type Item = Result<ChannelEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use busmq_core::Limits;

    fn channel(name: &str) -> ChannelName {
        ChannelName::parse(name, &Limits::default()).unwrap()
    }

    #[tokio::test]
    async fn counts_subscribers_and_unsubscribes_on_drop() {
        let hub = Hub::default();
        let c = channel("news");
        assert_eq!(hub.publish(&c, Bytes::from_static(b"nobody")), 0);
        let mut a = hub.subscribe(&c);
        let b = hub.subscribe(&c);
        assert_eq!(hub.publish(&c, Bytes::from_static(b"hi")), 2);
        assert_eq!(
            a.next().await.unwrap().unwrap(),
            ChannelEvent::Message(Bytes::from_static(b"hi"))
        );
        drop(b);
        assert_eq!(hub.subscribers(&c), 1);
        assert_eq!(hub.publish(&c, Bytes::from_static(b"again")), 1);
        drop(a);
        assert_eq!(hub.subscribers(&c), 0);
        assert_eq!(hub.publish(&c, Bytes::from_static(b"gone")), 0);
    }

    #[tokio::test]
    async fn slow_subscriber_drops_with_a_notice() {
        let hub = Hub::default();
        let c = channel("busy");
        let mut slow = hub.subscribe(&c);
        let total = SUBSCRIPTION_BUFFER as u64 + 10;
        let mut received = 0;
        for i in 0..total {
            received += hub.publish(&c, Bytes::from(i.to_string()));
        }
        assert_eq!(received, SUBSCRIPTION_BUFFER as u64, "the rest was dropped");
        for i in 0..SUBSCRIPTION_BUFFER as u64 {
            assert_eq!(
                slow.next().await.unwrap().unwrap(),
                ChannelEvent::Message(Bytes::from(i.to_string()))
            );
        }
        // Room again: the notice comes first, then the next message.
        assert_eq!(hub.publish(&c, Bytes::from_static(b"next")), 1);
        assert_eq!(
            slow.next().await.unwrap().unwrap(),
            ChannelEvent::Missed(10)
        );
        assert_eq!(
            slow.next().await.unwrap().unwrap(),
            ChannelEvent::Message(Bytes::from_static(b"next"))
        );
    }

    #[test]
    fn ready_events_group_into_batches() {
        let m = |s: &'static str| Ok(ChannelEvent::Message(Bytes::from_static(s.as_bytes())));
        let big = Bytes::from(vec![b'x'; MAX_BATCH_BYTES]);
        let got = group(vec![
            m("a"),
            m("b"),
            Ok(ChannelEvent::Missed(2)),
            m("c"),
            Ok(ChannelEvent::Message(big.clone())),
            m("d"),
            Err(Error::Unavailable("gone".into())),
        ]);
        assert_eq!(
            got,
            vec![
                Batch::Messages(vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]),
                Batch::Missed(2),
                Batch::Messages(vec![Bytes::from_static(b"c")]),
                Batch::Messages(vec![big]),
                Batch::Messages(vec![Bytes::from_static(b"d")]),
                Batch::Failed(Error::Unavailable("gone".into())),
            ]
        );
    }

    #[tokio::test]
    async fn forward_folds_upstream_notices_and_passes_errors() {
        let (src_tx, src_rx) = mpsc::unbounded_channel();
        let source = tokio_stream::wrappers::UnboundedReceiverStream::new(src_rx).boxed();
        let (tx, mut rx) = mpsc::channel(8);
        let task = tokio::spawn(forward(
            source,
            Outbox::new(tx),
            Ok,
            Err,
            CancellationToken::new(),
        ));
        src_tx.send(Ok(ChannelEvent::Missed(3))).unwrap();
        src_tx
            .send(Ok(ChannelEvent::Message(Bytes::from_static(b"m"))))
            .unwrap();
        src_tx.send(Err(Error::Unavailable("gone".into()))).unwrap();
        assert_eq!(rx.recv().await.unwrap().unwrap(), ChannelEvent::Missed(3));
        assert_eq!(
            rx.recv().await.unwrap().unwrap(),
            ChannelEvent::Message(Bytes::from_static(b"m"))
        );
        assert!(rx.recv().await.unwrap().is_err());
        task.await.unwrap();
        assert!(rx.recv().await.is_none());
    }
}
