//! Consuming a queue: options in node-busmq's terms, and the consumer stream.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use busmq_proto::v1 as pb;
use busmq_proto::v1::consume_event::Event;
use bytes::Bytes;
use futures::Stream;
use futures::stream::FusedStream;

use std::time::Duration;

use crate::ack::DeferredAcks;
use crate::queue::Shared;
use crate::reconnect::{Link, Polled, is_transient, reopen};
use crate::{Error, LeaseToken, Queue, QueueEvent, Result};

/// How a consumer takes messages, derived from [`ConsumeOptions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConsumeMode {
    /// At most once: each message goes to one consumer and is removed as it
    /// is taken (node-busmq's default, `remove: true, reliable: false`).
    Unreliable,
    /// At least once: messages wait for [`Consumer::ack`]; un-acked ones are
    /// delivered again to the next reliable consumer. One reliable consumer
    /// per queue at a time (`reliable: true`).
    Reliable,
    /// Persistent publish/subscribe: read every message from an index,
    /// removing nothing; any number of readers (`remove: false`).
    Persistent,
    /// Competing consumers with per-message acks: each message is leased to
    /// one consumer for a visibility timeout and acked by its
    /// [`LeaseToken`]; a nack, the end of the lease, or the end of the
    /// consumer puts it back at the front of the queue.
    Lease,
}

impl From<ConsumeMode> for pb::ConsumeMode {
    fn from(mode: ConsumeMode) -> Self {
        match mode {
            ConsumeMode::Unreliable => pb::ConsumeMode::Unreliable,
            ConsumeMode::Reliable => pb::ConsumeMode::Reliable,
            ConsumeMode::Persistent => pb::ConsumeMode::Persistent,
            ConsumeMode::Lease => pb::ConsumeMode::Lease,
        }
    }
}

/// Options of [`Queue::consume`], named as in node-busmq's
/// `queue.consume(options)`.
///
/// The default is unreliable consumption (`remove: true, reliable: false`)
/// with no limit. Combinations that mean nothing are refused with
/// `InvalidArgument` before anything is sent: `reliable` with
/// `remove: false`, `last` without `reliable`, `index` with `remove: true`,
/// `max` or `prefetch` of zero.
///
/// ```
/// use busmq_client::{ConsumeMode, ConsumeOptions};
///
/// // node-busmq: q.consume({reliable: true, last: 3})
/// let reliable = ConsumeOptions::reliable().last(3);
/// assert_eq!(reliable.mode().unwrap(), ConsumeMode::Reliable);
/// // node-busmq: q.consume({remove: false, index: 0, max: 10})
/// let pubsub = ConsumeOptions::persistent(0).max(10);
/// assert_eq!(pubsub.mode().unwrap(), ConsumeMode::Persistent);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumeOptions {
    /// Remove read messages from the queue (default `true`). `false` is
    /// persistent publish/subscribe: every reader reads every message.
    pub remove: bool,
    /// Keep taken messages until acked, and deliver un-acked ones again to
    /// the next consumer (default `false`). Needs `remove: true`.
    pub reliable: bool,
    /// Reliable mode: the id of the last message already handled. Messages
    /// up to it are discarded before consumption starts, as if acked.
    pub last: Option<u64>,
    /// Persistent mode: the id of the first message to read. `None` or 0:
    /// from the oldest message still stored.
    pub index: Option<u64>,
    /// Stop after this many messages; the consumer stream then ends.
    /// `None`: consume until stopped. Lease mode: the last leases stay held
    /// after the stream ended this way, to be acked by token (or to time
    /// out); stopping or dropping the consumer otherwise gives them back.
    pub max: Option<u64>,
    /// Messages the server may have on the way to this consumer before it
    /// receives them. `None`: the server default (256). In unreliable mode
    /// the messages on the way when a consumer dies are lost, so keep it
    /// small if that matters. Lease mode: `None` is 10; each message on the
    /// way is already leased, its visibility timeout running.
    pub prefetch: Option<u32>,
    /// Lease mode, with its visibility timeout: how long a delivered message
    /// stays invisible to other consumers unless acked (up to 12 hours).
    /// Needs `remove: true` and `reliable: false`.
    pub lease: Option<Duration>,
}

impl Default for ConsumeOptions {
    fn default() -> Self {
        ConsumeOptions {
            remove: true,
            reliable: false,
            last: None,
            index: None,
            max: None,
            prefetch: None,
            lease: None,
        }
    }
}

impl ConsumeOptions {
    /// Reliable consumption (`{reliable: true}`).
    pub fn reliable() -> Self {
        ConsumeOptions {
            reliable: true,
            ..ConsumeOptions::default()
        }
    }

    /// Persistent publish/subscribe from message `index`
    /// (`{remove: false, index}`); 0 reads from the oldest stored message.
    pub fn persistent(index: u64) -> Self {
        ConsumeOptions {
            remove: false,
            index: Some(index),
            ..ConsumeOptions::default()
        }
    }

    /// Lease mode with this visibility timeout: competing consumers, each
    /// message acked on its own with [`Consumer::ack_lease`] or given back
    /// with [`Consumer::nack`]. Whole milliseconds: a fraction is rounded
    /// up.
    ///
    /// ```
    /// use std::time::Duration;
    /// use busmq_client::{ConsumeMode, ConsumeOptions};
    ///
    /// let jobs = ConsumeOptions::lease(Duration::from_secs(30)).prefetch(1);
    /// assert_eq!(jobs.mode().unwrap(), ConsumeMode::Lease);
    /// ```
    pub fn lease(visibility: Duration) -> Self {
        ConsumeOptions {
            lease: Some(visibility),
            ..ConsumeOptions::default()
        }
    }

    /// Sets `max`: stop after `max` messages.
    pub fn max(mut self, max: u64) -> Self {
        self.max = Some(max);
        self
    }

    /// Sets `last` (reliable mode): messages up to this id were handled.
    pub fn last(mut self, last: u64) -> Self {
        self.last = Some(last);
        self
    }

    /// Sets `index` (persistent mode): the first message id to read.
    pub fn index(mut self, index: u64) -> Self {
        self.index = Some(index);
        self
    }

    /// Sets `prefetch`: messages the server may have on the way.
    pub fn prefetch(mut self, prefetch: u32) -> Self {
        self.prefetch = Some(prefetch);
        self
    }

    /// The mode these options select, or why they make no sense.
    pub fn mode(&self) -> Result<ConsumeMode> {
        let invalid = |why: &str| Err(Error::InvalidOptions(why.to_owned()));
        if self.reliable && !self.remove {
            return invalid(
                "reliable needs remove = true (persistent reads remove nothing, so there is nothing to ack)",
            );
        }
        if self.last.is_some() && !self.reliable {
            return invalid("last applies only to reliable consumption");
        }
        if self.index.is_some() && self.remove {
            return invalid("index applies only to persistent consumption (remove = false)");
        }
        if self.max == Some(0) {
            return invalid("max must be at least 1");
        }
        if self.prefetch == Some(0) {
            return invalid("prefetch must be at least 1");
        }
        if let Some(visibility) = self.lease {
            if self.reliable || !self.remove {
                return invalid("lease mode needs remove = true and reliable = false");
            }
            if visibility.is_zero() {
                return invalid("a lease needs a visibility timeout above zero");
            }
            return Ok(ConsumeMode::Lease);
        }
        Ok(match (self.remove, self.reliable) {
            (false, _) => ConsumeMode::Persistent,
            (true, true) => ConsumeMode::Reliable,
            (true, false) => ConsumeMode::Unreliable,
        })
    }

    pub(crate) fn request(&self, queue: &str) -> Result<pb::ConsumeRequest> {
        let mode = self.mode()?;
        Ok(pb::ConsumeRequest {
            queue: queue.to_owned(),
            mode: pb::ConsumeMode::from(mode).into(),
            max: self.max,
            index: self.index,
            last: self.last,
            prefetch: self.prefetch,
            visibility_timeout: self.lease.map(busmq_proto::duration::millis_rounded_up),
        })
    }
}

/// One message received by a [`Consumer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The message id: its position in the queue.
    pub id: u64,
    /// The message body as pushed.
    pub payload: Bytes,
    /// Lease mode: how many times the message has been delivered, this time
    /// included (1 for the first). 0 in the other modes.
    pub attempt: u32,
}

impl Delivery {
    /// Lease mode: the token that acks or nacks this delivery; `None` in
    /// the other modes.
    pub fn lease_token(&self) -> Option<LeaseToken> {
        (self.attempt > 0).then_some(LeaseToken {
            id: self.id,
            attempt: self.attempt,
        })
    }
}

/// Why a consumer's queue went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClosedReason {
    /// A client closed the queue.
    Closed,
    /// The queue had no attachments for longer than its ttl.
    Expired,
    /// The server did not say.
    Unspecified,
}

/// Hands `message` of the queue behind `shared` to the application:
/// counts it and tells the queue's event listeners.
pub(crate) fn delivered(shared: &Shared, message: pb::Message) -> Delivery {
    shared.consumed.fetch_add(1, Ordering::Relaxed);
    shared.emit(QueueEvent::Message { id: message.id });
    Delivery {
        id: message.id,
        payload: message.payload,
        attempt: message.attempt,
    }
}

/// Why the server says a queue went away.
pub(crate) fn closed_reason(closed: &pb::Closed) -> ClosedReason {
    match pb::ClosedReason::try_from(closed.reason) {
        Ok(pb::ClosedReason::Closed) => ClosedReason::Closed,
        Ok(pb::ClosedReason::Expired) => ClosedReason::Expired,
        _ => ClosedReason::Unspecified,
    }
}

/// A running consumer: a [`Stream`] of [`Delivery`]s in id order, from
/// [`Queue::consume`].
///
/// The stream ends after `max` messages, when the queue is closed or
/// expires (see [`closed`](Self::closed)), or after the first error it
/// yields. A stream broken on the way to the broker (a broker restart, a
/// dropped connection) is opened again by itself, as the bus's
/// [`Reconnect`](crate::Reconnect) policy says; only when that gives up
/// does the error reach the stream. Dropping the consumer or calling
/// [`stop`](Self::stop) stops consuming (node-busmq's `queue.stop()`).
pub struct Consumer {
    queue: Queue,
    mode: ConsumeMode,
    /// What was asked of the server, repeated (adjusted) on a reconnect.
    request: pb::ConsumeRequest,
    /// Messages received from the server so far, and the last one's id.
    received: u64,
    last_id: Option<u64>,
    link: Link<pb::ConsumeEvent>,
    buffer: VecDeque<pb::Message>,
    redelivered: u64,
    closed: Option<ClosedReason>,
    running: bool,
    /// The task sending [`Consumer::ack_later`]'s acks, once one was asked.
    deferred_acks: Option<DeferredAcks>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("queue", &self.queue.name())
            .field("mode", &self.mode)
            .field("running", &self.running)
            .field("buffered", &self.buffer.len())
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    pub(crate) async fn start(queue: Queue, options: ConsumeOptions) -> Result<Consumer> {
        let s = &queue.shared;
        let request = options.request(&s.name).map_err(|e| s.failed(e))?;
        let mode = options.mode()?;
        let mut stream = s
            .client()
            .consume(request)
            .await
            .map_err(|e| s.failed(e))?
            .into_inner();
        // The server confirms with `consuming` first; a refusal arrives
        // instead of it.
        let first = stream.message().await.map_err(|e| s.failed(e))?;
        s.consumers.fetch_add(1, Ordering::Relaxed);
        s.emit(QueueEvent::Consuming(true));
        let mut consumer = Consumer {
            queue: queue.clone(),
            mode,
            request: options.request(&s.name)?,
            received: 0,
            last_id: None,
            link: Link::open(stream),
            buffer: VecDeque::new(),
            redelivered: 0,
            closed: None,
            running: true,
            deferred_acks: None,
        };
        match first {
            Some(event) => consumer.handle(event),
            None => consumer.finish(),
        }
        Ok(consumer)
    }

    /// The mode this consumer runs in.
    pub fn mode(&self) -> ConsumeMode {
        self.mode
    }

    /// The queue this consumer reads.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// How many times the stream broke and was opened again (see
    /// [`Reconnect`](crate::Reconnect)).
    pub fn reconnects(&self) -> u64 {
        self.link.reconnects()
    }

    /// Reliable mode: how many un-acked messages of an earlier consumer the
    /// server put back to be delivered again when this one started.
    pub fn redelivered(&self) -> u64 {
        self.redelivered
    }

    /// Why the queue went away, once the stream ended because it was closed
    /// or expired.
    pub fn closed(&self) -> Option<ClosedReason> {
        self.closed
    }

    /// True until the consumer stops (stopped, `max` reached, closed, or
    /// failed). Messages already received may still be buffered.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Messages already received from the server and not yet yielded by
    /// the stream. Zero after a yield means the delivery was the last of its
    /// batch: a good moment to flush output and ack cumulatively.
    pub fn buffered_len(&self) -> usize {
        self.buffer.len()
    }

    /// Acknowledges, in reliable mode, message `id` and every lower id
    /// (cumulative); returns how many messages this removed. As in
    /// node-busmq, ignored (returns 0) when the consumer is not reliable.
    pub async fn ack(&self, id: u64) -> Result<u64> {
        if self.mode != ConsumeMode::Reliable {
            return Ok(0);
        }
        self.queue.ack(id).await
    }

    /// Acknowledges, in reliable mode, message `id` and every lower id
    /// without waiting for the answer, so the consumer goes on with the
    /// next message at once (like Kafka's `commitAsync`). A background task
    /// sends the acks in order; acks asked for while one is on its way fold
    /// into the next, which carries only the highest id. A failed ack is
    /// reported as a [`QueueEvent::Error`] and by [`Consumer::flush_acks`].
    /// Acks asked for before the consumer is dropped are still sent. Like
    /// [`Consumer::ack`], ignored when the consumer is not reliable.
    pub fn ack_later(&mut self, id: u64) {
        if self.mode != ConsumeMode::Reliable {
            return;
        }
        self.deferred_acks
            .get_or_insert_with(|| {
                DeferredAcks::start(self.queue.shared.client(), vec![self.queue.clone()])
            })
            .ack(0, id);
    }

    /// Waits until the highest ack asked for with [`Consumer::ack_later`]
    /// is confirmed by the server, or returns why it failed.
    pub async fn flush_acks(&self) -> Result<()> {
        match &self.deferred_acks {
            Some(acks) => acks.flush().await,
            None => Ok(()),
        }
    }

    /// Stops consuming now; the stream then yields what it already received
    /// and ends. Emits `Consuming(false)`. In reliable mode, messages not
    /// acked yet are delivered again to the next reliable consumer.
    pub fn stop(&mut self) {
        self.finish();
    }

    fn handle(&mut self, event: pb::ConsumeEvent) {
        match event.event {
            Some(Event::Messages(batch)) => {
                self.received += batch.messages.len() as u64;
                if let Some(last) = batch.messages.last() {
                    self.last_id = Some(last.id);
                }
                self.buffer.extend(batch.messages);
            }
            Some(Event::Consuming(c)) => self.redelivered += c.redelivered,
            Some(Event::Closed(c)) => {
                self.closed = Some(closed_reason(&c));
                self.queue.shared.emit(QueueEvent::Closed);
                self.finish();
            }
            // An event of a newer server this SDK does not know: skip it.
            None => {}
        }
    }

    /// The request that resumes this consumer where its broken stream
    /// stopped; `None` when `max` is already reached.
    fn resume_request(&self) -> Option<pb::ConsumeRequest> {
        let mut request = self.request.clone();
        if let Some(max) = request.max {
            let left = max.saturating_sub(self.received);
            if left == 0 {
                return None;
            }
            request.max = Some(left);
        }
        if self.mode == ConsumeMode::Persistent
            && let Some(last) = self.last_id
        {
            request.index = Some(last + 1);
        }
        Some(request)
    }

    /// Starts reopening the stream after `status` broke it, when the bus
    /// reconnects and the failure was on the way to the broker; false when
    /// the consumer must end with the error instead.
    fn try_reconnect(&mut self, status: &tonic::Status) -> bool {
        let shared = &self.queue.shared;
        if !self.running || !shared.reconnect.enabled || !is_transient(status) {
            return false;
        }
        let Some(request) = self.resume_request() else {
            return false;
        };
        shared.emit(QueueEvent::Reconnecting(
            Error::from(status.clone()).to_string(),
        ));
        self.link
            .reopen(reopen(Arc::clone(shared), request, shared.reconnect));
        true
    }

    /// Ends the call (if still open) and reports the stop once.
    fn finish(&mut self) {
        self.link.close();
        if self.running {
            self.running = false;
            let s = &self.queue.shared;
            s.consumers.fetch_sub(1, Ordering::Relaxed);
            s.emit(QueueEvent::Consuming(false));
        }
    }
}

impl Stream for Consumer {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(message) = this.buffer.pop_front() {
                return Poll::Ready(Some(Ok(delivered(&this.queue.shared, message))));
            }
            let failure = match std::task::ready!(this.link.poll(cx)) {
                None => return Poll::Ready(None),
                Some(Polled::Event(event)) => {
                    this.handle(event);
                    continue;
                }
                Some(Polled::Reconnected(first)) => {
                    this.queue.shared.emit(QueueEvent::Reconnected);
                    match first {
                        Some(event) => this.handle(event),
                        None => this.finish(),
                    }
                    continue;
                }
                Some(Polled::Ended) => {
                    this.finish();
                    continue;
                }
                Some(Polled::Broken(status)) if this.try_reconnect(&status) => continue,
                Some(Polled::Broken(status)) => Error::from(status),
                Some(Polled::Failed(err)) => err,
            };
            let err = this.queue.shared.failed(failure);
            this.finish();
            return Poll::Ready(Some(Err(err)));
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let upper = if self.link.is_over() {
            Some(self.buffer.len())
        } else {
            None
        };
        (self.buffer.len(), upper)
    }
}

impl FusedStream for Consumer {
    fn is_terminated(&self) -> bool {
        self.link.is_over() && self.buffer.is_empty()
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_mirror_node_busmq() {
        let o = ConsumeOptions::default();
        assert!(o.remove && !o.reliable);
        assert_eq!(o.mode().unwrap(), ConsumeMode::Unreliable);
        assert_eq!(
            ConsumeOptions::reliable().mode().unwrap(),
            ConsumeMode::Reliable
        );
        assert_eq!(
            ConsumeOptions::persistent(0).mode().unwrap(),
            ConsumeMode::Persistent
        );
    }

    #[test]
    fn request_maps_every_option() {
        let r = ConsumeOptions::reliable()
            .last(7)
            .max(3)
            .prefetch(16)
            .request("q")
            .unwrap();
        assert_eq!(r.queue, "q");
        assert_eq!(r.mode, pb::ConsumeMode::Reliable as i32);
        assert_eq!(
            (r.last, r.max, r.prefetch, r.index),
            (Some(7), Some(3), Some(16), None)
        );

        let r = ConsumeOptions::lease(Duration::from_micros(1500))
            .request("q")
            .unwrap();
        assert_eq!(r.mode, pb::ConsumeMode::Lease as i32);
        let visibility = r.visibility_timeout.unwrap();
        assert_eq!(
            (visibility.seconds, visibility.nanos),
            (0, 2_000_000),
            "rounded up"
        );

        let r = ConsumeOptions::persistent(5).request("q").unwrap();
        assert_eq!(r.mode, pb::ConsumeMode::Persistent as i32);
        assert_eq!((r.index, r.last), (Some(5), None));

        let r = ConsumeOptions::default().request("q").unwrap();
        assert_eq!(r.mode, pb::ConsumeMode::Unreliable as i32);
        assert_eq!(
            (r.index, r.last, r.max, r.prefetch),
            (None, None, None, None)
        );
    }

    #[test]
    fn nonsense_is_refused() {
        let bad = [
            ConsumeOptions {
                remove: false,
                reliable: true,
                ..Default::default()
            },
            ConsumeOptions::default().last(3),
            ConsumeOptions::persistent(1).last(3),
            ConsumeOptions::default().index(2),
            ConsumeOptions::reliable().index(2),
            ConsumeOptions::default().max(0),
            ConsumeOptions::default().prefetch(0),
            ConsumeOptions::lease(Duration::ZERO),
            ConsumeOptions::lease(Duration::from_secs(1)).last(2),
            ConsumeOptions {
                reliable: true,
                ..ConsumeOptions::lease(Duration::from_secs(1))
            },
            ConsumeOptions {
                remove: false,
                ..ConsumeOptions::lease(Duration::from_secs(1))
            },
        ];
        for options in bad {
            let err = options.mode().unwrap_err();
            assert_eq!(err.code(), crate::ErrorCode::InvalidArgument, "{options:?}");
            assert!(options.request("q").is_err());
        }
    }

    #[test]
    fn persistent_without_index_reads_from_oldest() {
        let options = ConsumeOptions {
            remove: false,
            ..Default::default()
        };
        assert_eq!(options.mode().unwrap(), ConsumeMode::Persistent);
        assert_eq!(options.request("q").unwrap().index, None);
    }
}
