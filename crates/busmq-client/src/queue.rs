//! A queue handle: node-busmq's `Queue`.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use busmq_proto::v1 as pb;
use busmq_proto::v1::queues_client::QueuesClient;
use bytes::Bytes;
use tokio::sync::broadcast;

use crate::events::EVENT_CAPACITY;
use crate::reconnect::Reconnect;
use crate::trace_context::Transport as Channel;
use crate::{
    ConsumeOptions, Consumer, Error, Pusher, PusherOptions, QueueEvent, QueueEvents, Reason, Result,
};

/// Options of [`Queue::attach`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttachOptions {
    /// How long the queue lives with no attachments, messages included.
    /// `None` keeps the ttl of an existing queue and gives a new one the
    /// server default (30 s). Whole seconds: a fraction is rounded up. Zero
    /// is refused by the server.
    pub ttl: Option<Duration>,
    /// Deliveries after which a message moves to the dead-letter queue
    /// `<queue>.dlq` (see [`Queue::dead_letters`]) instead of going back to
    /// the queue: lease-mode deliveries, and reliable-mode messages put back
    /// for a new consumer. `Some(0)` turns it off; `None` leaves the queue's
    /// setting as it is (a new queue has none). At most 1000.
    pub max_deliveries: Option<u32>,
}

impl AttachOptions {
    /// Attach with this ttl.
    pub fn ttl(ttl: Duration) -> Self {
        AttachOptions {
            ttl: Some(ttl),
            ..AttachOptions::default()
        }
    }

    /// Sets [`max_deliveries`](Self::max_deliveries).
    pub fn max_deliveries(mut self, max: u32) -> Self {
        self.max_deliveries = Some(max);
        self
    }

    fn wire_ttl(&self) -> Option<busmq_proto::prost_types::Duration> {
        self.ttl.map(busmq_proto::duration::seconds_rounded_up)
    }
}

/// The ids a pushed batch received: `first..=last`, consecutive, in the
/// order the messages were given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdRange {
    /// Id of the first message of the batch.
    pub first: u64,
    /// Id of the last message of the batch.
    pub last: u64,
}

impl IdRange {
    /// How many ids the range holds.
    pub fn len(&self) -> u64 {
        if self.last < self.first {
            0
        } else {
            self.last - self.first + 1
        }
    }

    /// True when the range holds no id (never for a successful push).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when `id` is in the range.
    pub fn contains(&self, id: u64) -> bool {
        (self.first..=self.last).contains(&id)
    }

    /// The ids, in order.
    pub fn iter(&self) -> std::ops::RangeInclusive<u64> {
        self.first..=self.last
    }
}

impl IntoIterator for IdRange {
    type Item = u64;
    type IntoIter = std::ops::RangeInclusive<u64>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Everything the server knows about a queue, from [`Queue::info`].
pub use busmq_core::QueueInfo;

/// The attachments one queue handle made.
#[derive(Default)]
struct Attachment {
    count: u64,
    request: Option<pb::AttachRequest>,
}

/// State shared by a queue handle, its clones, consumers and pushers.
pub(crate) struct Shared {
    pub(crate) name: String,
    pub(crate) client: QueuesClient<Channel>,
    pub(crate) reconnect: Reconnect,
    /// The last attach this handle made, while it holds attachments: what a
    /// reconnecting consumer repeats when the queue went away.
    attached: std::sync::Mutex<Attachment>,
    pub(crate) pushed: AtomicU64,
    pub(crate) consumed: AtomicU64,
    pub(crate) consumers: AtomicUsize,
    /// Made by the first [`Queue::events`]: a broadcast channel allocates
    /// all its slots up front (tens of KiB), which a client holding
    /// thousands of queue handles nobody listens to should not pay.
    events: OnceLock<broadcast::Sender<QueueEvent>>,
}

impl Shared {
    /// A client for one call (clones share the connection).
    pub(crate) fn client(&self) -> QueuesClient<Channel> {
        self.client.clone()
    }

    /// The attach to repeat if the queue went away, when this handle holds
    /// attachments.
    pub(crate) fn attach_request(&self) -> Option<pb::AttachRequest> {
        let attached = self.attached.lock().unwrap_or_else(|p| p.into_inner());
        (attached.count > 0)
            .then(|| attached.request.clone())
            .flatten()
    }

    fn record_attach(&self, request: pb::AttachRequest) {
        let mut attached = self.attached.lock().unwrap_or_else(|p| p.into_inner());
        attached.count += 1;
        attached.request = Some(request);
    }

    fn record_detach(&self) {
        let mut attached = self.attached.lock().unwrap_or_else(|p| p.into_inner());
        attached.count = attached.count.saturating_sub(1);
    }

    /// Tells the event listeners, if any.
    pub(crate) fn emit(&self, event: QueueEvent) {
        // No listener is not an error; no channel yet means none ever
        // listened, and a broadcast drops what nobody receives anyway.
        if let Some(events) = self.events.get() {
            let _ = events.send(event);
        }
    }

    /// Reports `err` as an event and hands it back.
    pub(crate) fn failed(&self, err: impl Into<Error>) -> Error {
        let err = err.into();
        self.emit(QueueEvent::Error(err.to_string()));
        err
    }
}

/// A handle on one queue of the bus: node-busmq's `Queue`, from
/// [`Bus::queue`](crate::Bus::queue).
///
/// Attach before pushing or consuming; detach when done, so the queue can
/// expire once nobody uses it. Clones share the same counters
/// ([`pushed`](Self::pushed), [`consumed`](Self::consumed)) and events.
///
/// ```no_run
/// # async fn demo() -> Result<(), busmq_client::Error> {
/// use busmq_client::{AttachOptions, Bus, ConsumeOptions};
/// use futures::StreamExt;
///
/// let bus = Bus::connect("http://127.0.0.1:50051").await?;
/// let queue = bus.queue("foo");
/// queue.attach(AttachOptions::default()).await?;
/// queue.push("hello").await?;
/// let mut consumer = queue.consume(ConsumeOptions::default().max(1)).await?;
/// while let Some(delivery) = consumer.next().await {
///     let delivery = delivery?;
///     println!("{} {:?}", delivery.id, delivery.payload);
/// }
/// queue.detach().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Queue {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.shared.name)
            .field("pushed", &self.pushed())
            .field("consumed", &self.consumed())
            .finish_non_exhaustive()
    }
}

impl Queue {
    pub(crate) fn new(client: QueuesClient<Channel>, name: String, reconnect: Reconnect) -> Queue {
        Queue {
            shared: Arc::new(Shared {
                name,
                client,
                reconnect,
                attached: std::sync::Mutex::default(),
                pushed: AtomicU64::new(0),
                consumed: AtomicU64::new(0),
                consumers: AtomicUsize::new(0),
                events: OnceLock::new(),
            }),
        }
    }

    /// The queue name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Attaches to the queue, creating it if needed. Returns true when the
    /// queue already existed. Emits `Attaching`, then `Attached`.
    ///
    /// Every attach counts: detach once per attach.
    pub async fn attach(&self, options: AttachOptions) -> Result<bool> {
        let s = &self.shared;
        s.emit(QueueEvent::Attaching);
        let request = pb::AttachRequest {
            queue: s.name.clone(),
            ttl: options.wire_ttl(),
            max_deliveries: options.max_deliveries,
        };
        let existed = s
            .client()
            .attach(request.clone())
            .await
            .map_err(|e| s.failed(e))?
            .into_inner()
            .existed;
        s.record_attach(request);
        s.emit(QueueEvent::Attached { existed });
        Ok(existed)
    }

    /// Detaches from the queue. Returns the attachments left (from every
    /// client); at zero the queue expires after its ttl unless someone
    /// attaches again. Emits `Detaching`, then `Detached`.
    pub async fn detach(&self) -> Result<u64> {
        let s = &self.shared;
        s.emit(QueueEvent::Detaching);
        let request = pb::DetachRequest {
            queue: s.name.clone(),
        };
        let left = s
            .client()
            .detach(request)
            .await
            .map_err(|e| s.failed(e))?
            .into_inner()
            .attachments;
        s.record_detach();
        s.emit(QueueEvent::Detached);
        Ok(left)
    }

    /// Pushes one message; returns its id.
    pub async fn push(&self, message: impl Into<Bytes>) -> Result<u64> {
        Ok(self.push_batch([message]).await?.first)
    }

    /// Pushes a batch in one round trip; the messages get consecutive ids in
    /// the order given. An empty batch is refused by the server
    /// (`InvalidArgument`).
    pub async fn push_batch<I>(&self, messages: I) -> Result<IdRange>
    where
        I: IntoIterator,
        I::Item: Into<Bytes>,
    {
        let s = &self.shared;
        let messages: Vec<Bytes> = messages.into_iter().map(Into::into).collect();
        let count = messages.len() as u64;
        let request = pb::PushRequest {
            queue: s.name.clone(),
            messages,
        };
        let response = s
            .client()
            .push(request)
            .await
            .map_err(|e| s.failed(e))?
            .into_inner();
        s.pushed.fetch_add(count, Ordering::Relaxed);
        Ok(IdRange {
            first: response.first_id,
            last: response.last_id,
        })
    }

    /// A pusher for high rates: many batches in flight on one stream (see
    /// [`Pusher`]).
    ///
    /// Must be called within a Tokio runtime.
    pub fn pusher(&self, options: PusherOptions) -> Pusher {
        Pusher::start(self.shared.client(), vec![self.clone()], options)
    }

    /// Starts consuming: node-busmq's `queue.consume(options)`. The
    /// returned [`Consumer`] is a stream of deliveries; drop it or call
    /// [`Consumer::stop`] to stop. Attach first.
    ///
    /// Returns once the server confirmed the consumer, so a refusal (no
    /// such queue, another reliable consumer active, bad options) is
    /// reported here. Emits `Consuming(true)`.
    pub async fn consume(&self, options: ConsumeOptions) -> Result<Consumer> {
        Consumer::start(self.clone(), options).await
    }

    /// Acknowledges, in reliable mode, the message `id` and every message
    /// with a lower id (cumulative). Returns how many messages this removed.
    ///
    /// Acking an already acked id is a no-op; an id never delivered is
    /// `NotFound`.
    pub async fn ack(&self, id: u64) -> Result<u64> {
        let s = &self.shared;
        let request = pb::AckRequest {
            queue: s.name.clone(),
            target: Some(pb::ack_request::Target::Id(id)),
        };
        Ok(s.client()
            .ack(request)
            .await
            .map_err(|e| s.failed(e))?
            .into_inner()
            .removed)
    }

    /// True while a consumer made from this handle (or a clone) is running.
    pub fn is_consuming(&self) -> bool {
        self.shared.consumers.load(Ordering::Relaxed) > 0
    }

    /// Closes the queue: destroys it and all its messages, for every
    /// client. Its consumers end. Returns false when there was no such
    /// queue. Emits `Closed`.
    pub async fn close(&self) -> Result<bool> {
        let s = &self.shared;
        let request = pb::CloseRequest {
            queue: s.name.clone(),
        };
        let existed = s
            .client()
            .close(request)
            .await
            .map_err(|e| s.failed(e))?
            .into_inner()
            .existed;
        s.emit(QueueEvent::Closed);
        Ok(existed)
    }

    /// Removes every message; the queue and its id counter stay. Returns
    /// how many messages were removed.
    pub async fn flush(&self) -> Result<u64> {
        let s = &self.shared;
        let request = pb::FlushRequest {
            queue: s.name.clone(),
        };
        Ok(s.client()
            .flush(request)
            .await
            .map_err(|e| s.failed(e))?
            .into_inner()
            .removed)
    }

    /// Everything the server knows about the queue, in one round trip.
    /// A queue that does not exist is [`Reason::QueueNotFound`], as for
    /// every other call on it.
    pub async fn info(&self) -> Result<QueueInfo> {
        let s = &self.shared;
        let missing = || s.failed(busmq_core::Error::QueueNotFound(s.name.clone()));
        self.info_if_exists().await?.ok_or_else(missing)
    }

    /// [`info`](Self::info), with a queue that does not exist as `None`
    /// rather than an error (nor an error event).
    async fn info_if_exists(&self) -> Result<Option<QueueInfo>> {
        let s = &self.shared;
        let request = pb::InfoRequest {
            queue: s.name.clone(),
        };
        match s.client().info(request).await {
            Ok(info) => Ok(Some(info.into_inner().into())),
            Err(status) => match Error::from(status) {
                e if e.reason() == Some(Reason::QueueNotFound) => Ok(None),
                e => Err(s.failed(e)),
            },
        }
    }

    /// True when the queue exists.
    pub async fn exists(&self) -> Result<bool> {
        Ok(self.info_if_exists().await?.is_some())
    }

    /// Messages stored in the queue (waiting plus delivered-but-not-acked);
    /// zero when there is no such queue.
    pub async fn count(&self) -> Result<u64> {
        Ok(self.info_if_exists().await?.map_or(0, |i| i.count))
    }

    /// How long the queue lives with no attachments; `None` when there is no
    /// such queue.
    pub async fn ttl(&self) -> Result<Option<Duration>> {
        Ok(self.info_if_exists().await?.map(|i| i.ttl))
    }

    /// Reads the metadata value of `key`; `None` when it has none.
    pub async fn metadata(&self, key: impl Into<String>) -> Result<Option<String>> {
        let s = &self.shared;
        let request = pb::GetMetadataRequest {
            queue: s.name.clone(),
            key: key.into(),
        };
        Ok(s.client()
            .get_metadata(request)
            .await
            .map_err(|e| s.failed(e))?
            .into_inner()
            .value)
    }

    /// Writes the metadata value of `key`.
    pub async fn set_metadata(
        &self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<()> {
        let s = &self.shared;
        let request = pb::SetMetadataRequest {
            queue: s.name.clone(),
            key: key.into(),
            value: value.into(),
        };
        s.client()
            .set_metadata(request)
            .await
            .map_err(|e| s.failed(e))?;
        Ok(())
    }

    /// Messages this client pushed to the queue through this handle and its
    /// clones and pushers (node-busmq's `pushed()`; see
    /// [`QueueInfo::pushed`] for every client's).
    pub fn pushed(&self) -> u64 {
        self.shared.pushed.load(Ordering::Relaxed)
    }

    /// Messages this client's consumers of this handle received
    /// (node-busmq's `consumed()`; see [`QueueInfo::consumed`] for every
    /// client's).
    pub fn consumed(&self) -> u64 {
        self.shared.consumed.load(Ordering::Relaxed)
    }

    /// The events of this handle from now on (node-busmq's `queue.on(...)`),
    /// as a stream. Each call is an independent listener.
    pub fn events(&self) -> QueueEvents {
        QueueEvents::new(
            self.shared
                .events
                .get_or_init(|| broadcast::channel(EVENT_CAPACITY).0)
                .subscribe(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_to_seconds() {
        assert_eq!(AttachOptions::default().wire_ttl(), None);
        assert_eq!(
            AttachOptions::ttl(Duration::from_secs(30))
                .wire_ttl()
                .map(|d| d.seconds),
            Some(30)
        );
        assert_eq!(
            AttachOptions::ttl(Duration::from_millis(1500))
                .wire_ttl()
                .map(|d| d.seconds),
            Some(2)
        );
        assert_eq!(
            AttachOptions::ttl(Duration::from_millis(1))
                .wire_ttl()
                .map(|d| d.seconds),
            Some(1)
        );
        assert_eq!(
            AttachOptions::ttl(Duration::ZERO)
                .wire_ttl()
                .map(|d| d.seconds),
            Some(0)
        );
    }

    #[test]
    fn id_ranges() {
        let r = IdRange { first: 3, last: 5 };
        assert_eq!(r.len(), 3);
        assert!(!r.is_empty());
        assert!(r.contains(3) && r.contains(5) && !r.contains(6));
        assert_eq!(r.into_iter().collect::<Vec<_>>(), vec![3, 4, 5]);
        assert!(IdRange { first: 2, last: 1 }.is_empty());
    }
}
