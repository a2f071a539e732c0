//! Consuming many queues on one stream ([`Bus::consume_many`]).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use busmq_proto::v1 as pb;
use busmq_proto::v1::consume_event::Event;
use futures::Stream;
use futures::stream::FusedStream;
use tonic::codec::Streaming;

use crate::ack::DeferredAcks;
use crate::consume::{closed_reason, delivered};
use crate::queue::Shared;
use crate::reconnect::{Link, Polled, Reconnect, is_transient, reattach, retry_open};
use crate::trace_context::Transport as Channel;
use crate::{ClosedReason, ConsumeMode, ConsumeOptions, Delivery, Queue, QueueEvent, Result};

type Client = pb::queues_client::QueuesClient<Channel>;
type Opened = (
    Streaming<pb::ConsumeManyEvent>,
    Option<pb::ConsumeManyEvent>,
);

/// One message received by a [`ManyConsumer`], with the queue it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManyDelivery {
    /// The queue's position in the slice given to [`Bus::consume_many`](crate::Bus::consume_many).
    pub queue: usize,
    /// The message.
    pub delivery: Delivery,
}

/// Where one queue of a [`ManyConsumer`] stands.
#[derive(Debug, Default)]
struct Progress {
    received: u64,
    last_id: Option<u64>,
    /// `max` reached, or the queue went away.
    done: bool,
    closed: Option<ClosedReason>,
}

/// A running consumer of many queues on one stream: a [`Stream`] of
/// [`ManyDelivery`]s, each queue's in id order, from
/// [`Bus::consume_many`](crate::Bus::consume_many).
///
/// Every queue is consumed with the same [`ConsumeOptions`], as if by its
/// own [`Consumer`](crate::Consumer): `max` and `prefetch` count per
/// queue, reliable mode holds each queue's reliable lock, and each queue's
/// handle reports its events (`Consuming`, `Message`, `Closed`). What
/// differs is the cost: the server sends the messages of many queues in
/// one frame (at most 1,024 messages), as a Kafka fetch covers many
/// partitions, so a consumer of thousands of queues does not pay a frame
/// and a wake-up per queue and batch.
///
/// A queue that reaches `max` or is closed ends alone; the stream ends when
/// every queue has, after the first error, or when stopped. A broken stream
/// is opened again by itself, as the bus's [`Reconnect`] policy says,
/// resuming every queue still consuming.
pub struct ManyConsumer {
    client: Client,
    queues: Vec<Queue>,
    mode: ConsumeMode,
    /// The request for each queue, repeated (adjusted) on a reconnect.
    requests: Vec<pb::ConsumeRequest>,
    progress: Vec<Progress>,
    /// Queues not done yet: the stream is over when none is left.
    consuming: usize,
    /// The queue of each position in the current stream's request: a
    /// resumed stream names only the queues still consuming.
    wire: Vec<usize>,
    link: Link<pb::ConsumeManyEvent>,
    /// The positions the reconnect under way names.
    reopening_wire: Vec<usize>,
    reconnect: Reconnect,
    buffer: VecDeque<(usize, pb::Message)>,
    redelivered: u64,
    running: bool,
    /// The task sending [`ManyConsumer::ack_later`]'s acks, once one was
    /// asked.
    deferred_acks: Option<DeferredAcks>,
}

impl std::fmt::Debug for ManyConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManyConsumer")
            .field("queues", &self.queues.len())
            .field("mode", &self.mode)
            .field("running", &self.running)
            .field("buffered", &self.buffer.len())
            .finish_non_exhaustive()
    }
}

impl ManyConsumer {
    pub(crate) async fn start(
        client: Client,
        queues: Vec<Queue>,
        options: ConsumeOptions,
        reconnect: Reconnect,
    ) -> Result<ManyConsumer> {
        let mode = options.mode()?;
        let requests = queues
            .iter()
            .map(|q| options.request(q.name()))
            .collect::<Result<Vec<_>>>()?;
        let (stream, first) = open(client.clone(), requests.clone())
            .await
            .map_err(crate::Error::from)?;
        for queue in &queues {
            queue.shared.consumers.fetch_add(1, Ordering::Relaxed);
            queue.shared.emit(QueueEvent::Consuming(true));
        }
        let queues_len = queues.len();
        let mut consumer = ManyConsumer {
            client,
            progress: queues.iter().map(|_| Progress::default()).collect(),
            consuming: queues.len(),
            queues,
            mode,
            requests,
            wire: (0..queues_len).collect(),
            link: Link::open(stream),
            reopening_wire: Vec::new(),
            reconnect,
            buffer: VecDeque::new(),
            redelivered: 0,
            running: true,
            deferred_acks: None,
        };
        match first {
            Some(event) => consumer.handle(event),
            None => consumer.finish(),
        }
        Ok(consumer)
    }

    /// The mode every queue is consumed in.
    pub fn mode(&self) -> ConsumeMode {
        self.mode
    }

    /// The queues, in the order [`ManyDelivery::queue`] refers to.
    pub fn queues(&self) -> &[Queue] {
        &self.queues
    }

    /// How many times the stream broke and was opened again.
    pub fn reconnects(&self) -> u64 {
        self.link.reconnects()
    }

    /// Reliable mode: how many un-acked messages of earlier consumers, over
    /// all queues, the server put back to be delivered again.
    pub fn redelivered(&self) -> u64 {
        self.redelivered
    }

    /// Why queue `queue` went away, once it was closed or expired.
    pub fn closed(&self, queue: usize) -> Option<ClosedReason> {
        self.progress.get(queue).and_then(|p| p.closed)
    }

    /// True until the consumer stops (stopped, every queue done, or
    /// failed). Messages already received may still be buffered.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Messages received and not yet yielded. Zero after a yield means the
    /// delivery was the last of its frame: a good moment to ack.
    pub fn buffered_len(&self) -> usize {
        self.buffer.len()
    }

    /// Acknowledges, in reliable mode, message `id` of queue `queue` and
    /// every lower id of it (cumulative); returns how many messages this
    /// removed. Ignored (returns 0) when the consumer is not reliable.
    pub async fn ack(&self, queue: usize, id: u64) -> Result<u64> {
        match self.queues.get(queue) {
            Some(q) if self.mode == ConsumeMode::Reliable => q.ack(id).await,
            _ => Ok(0),
        }
    }

    /// Acknowledges, in reliable mode, several queues in one call: for
    /// each `(queue, id)` pair, message `id` of queue `queue` and every
    /// lower id of it (cumulative). Returns each pair's outcome, in order:
    /// the messages its ack removed, or why it failed (also reported as
    /// that queue's [`QueueEvent::Error`]); one queue's failure leaves the
    /// others acked. `Err` when the call as a whole failed, or when a
    /// position is out of range or named twice (nothing is acked then).
    /// Every outcome is `Ok(0)` when the consumer is not reliable.
    pub async fn ack_many(&self, acks: &[(usize, u64)]) -> Result<Vec<Result<u64>>> {
        if self.mode != ConsumeMode::Reliable {
            return Ok(acks.iter().map(|_| Ok(0)).collect());
        }
        let mut named = vec![false; self.queues.len()];
        let mut pairs = Vec::with_capacity(acks.len());
        for &(queue, id) in acks {
            match named.get_mut(queue) {
                Some(seen) if !*seen => *seen = true,
                Some(_) => {
                    return Err(crate::Error::InvalidOptions(format!(
                        "queue position {queue} is acked twice in one call"
                    )));
                }
                None => {
                    return Err(crate::Error::InvalidOptions(format!(
                        "queue position {queue} is out of range: the consumer has {} queues",
                        self.queues.len()
                    )));
                }
            }
            pairs.push((&self.queues[queue], id));
        }
        crate::ack::ack_many(&self.client, &pairs).await
    }

    /// Like [`Consumer::ack_later`](crate::Consumer::ack_later), for queue
    /// `queue`: acks every id up to `id` without waiting, in the
    /// background; each queue's acks fold into the latest, and every
    /// queue with a new one goes in the same AckMany call.
    pub fn ack_later(&mut self, queue: usize, id: u64) {
        if self.mode != ConsumeMode::Reliable || queue >= self.queues.len() {
            return;
        }
        self.deferred_acks
            .get_or_insert_with(|| DeferredAcks::start(self.client.clone(), self.queues.clone()))
            .ack(queue, id);
    }

    /// Waits until every ack asked for with [`ManyConsumer::ack_later`] is
    /// confirmed by the server, or returns the first failure.
    pub async fn flush_acks(&self) -> Result<()> {
        match &self.deferred_acks {
            Some(acks) => acks.flush().await,
            None => Ok(()),
        }
    }

    /// Stops consuming every queue; the stream then yields what it already
    /// received and ends.
    pub fn stop(&mut self) {
        self.finish();
    }

    fn handle(&mut self, event: pb::ConsumeManyEvent) {
        for part in event.events {
            let Some(&queue) = self.wire.get(part.queue as usize) else {
                // A position this consumer never asked for: a broken server.
                continue;
            };
            match part.event.and_then(|e| e.event) {
                Some(Event::Messages(batch)) => {
                    let progress = &mut self.progress[queue];
                    progress.received += batch.messages.len() as u64;
                    if let Some(last) = batch.messages.last() {
                        progress.last_id = Some(last.id);
                    }
                    if self.requests[queue]
                        .max
                        .is_some_and(|max| progress.received >= max)
                    {
                        self.end_queue(queue);
                    }
                    self.buffer
                        .extend(batch.messages.into_iter().map(|m| (queue, m)));
                }
                Some(Event::Consuming(c)) => self.redelivered += c.redelivered,
                Some(Event::Closed(c)) => {
                    self.progress[queue].closed = Some(closed_reason(&c));
                    self.queues[queue].shared.emit(QueueEvent::Closed);
                    self.end_queue(queue);
                }
                None => {}
            }
        }
        if self.consuming == 0 {
            self.finish();
        }
    }

    fn end_queue(&mut self, queue: usize) {
        let progress = &mut self.progress[queue];
        if !progress.done {
            progress.done = true;
            self.consuming -= 1;
            if self.running {
                stopped(&self.queues[queue].shared);
            }
        }
    }

    /// The positions and requests that resume every queue still consuming.
    fn resume(&self) -> (Vec<usize>, Vec<pb::ConsumeRequest>) {
        let mut wire = Vec::new();
        let mut requests = Vec::new();
        for (queue, progress) in self.progress.iter().enumerate() {
            if progress.done {
                continue;
            }
            let mut request = self.requests[queue].clone();
            if let Some(max) = request.max {
                request.max = Some(max.saturating_sub(progress.received));
            }
            if self.mode == ConsumeMode::Persistent
                && let Some(last) = progress.last_id
            {
                request.index = Some(last + 1);
            }
            wire.push(queue);
            requests.push(request);
        }
        (wire, requests)
    }

    /// Starts reopening the stream after `status` broke it; false when the
    /// consumer must end with the error instead.
    fn try_reconnect(&mut self, status: &tonic::Status) -> bool {
        if !self.running || !self.reconnect.enabled || !is_transient(status) {
            return false;
        }
        let (wire, requests) = self.resume();
        if wire.is_empty() {
            return false;
        }
        let message = crate::Error::from(status.clone()).to_string();
        for &queue in &wire {
            self.queues[queue]
                .shared
                .emit(QueueEvent::Reconnecting(message.clone()));
        }
        let client = self.client.clone();
        let shared: Vec<Arc<Shared>> = wire
            .iter()
            .map(|&q| Arc::clone(&self.queues[q].shared))
            .collect();
        let policy = self.reconnect;
        let reopening = async move {
            retry_open(
                policy,
                || open(client.clone(), requests.clone()),
                || reattach(&shared),
            )
            .await
        };
        self.reopening_wire = wire;
        self.link.reopen(reopening);
        true
    }

    /// Ends the call (if still open) and reports the stop of every queue
    /// still consuming.
    fn finish(&mut self) {
        self.link.close();
        if self.running {
            self.running = false;
            for (queue, progress) in self.queues.iter().zip(&self.progress) {
                if !progress.done {
                    stopped(&queue.shared);
                }
            }
        }
    }

    fn fail(&mut self, err: impl Into<crate::Error>) -> crate::Error {
        let err = err.into();
        for queue in &self.queues {
            queue.shared.emit(QueueEvent::Error(err.to_string()));
        }
        self.finish();
        err
    }
}

/// One queue stopped being consumed.
fn stopped(shared: &Shared) {
    shared.consumers.fetch_sub(1, Ordering::Relaxed);
    shared.emit(QueueEvent::Consuming(false));
}

/// Opens a stream for `queues` and reads its first event (the server's
/// `consuming` for each, or its refusal).
async fn open(
    mut client: Client,
    queues: Vec<pb::ConsumeRequest>,
) -> Result<Opened, tonic::Status> {
    let mut stream = client
        .consume_many(pb::ConsumeManyRequest {
            queues,
            prefetch: None,
        })
        .await?
        .into_inner();
    let first = stream.message().await?;
    Ok((stream, first))
}

impl Stream for ManyConsumer {
    type Item = Result<ManyDelivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some((queue, message)) = this.buffer.pop_front() {
                let delivery = delivered(&this.queues[queue].shared, message);
                return Poll::Ready(Some(Ok(ManyDelivery { queue, delivery })));
            }
            let failure = match std::task::ready!(this.link.poll(cx)) {
                None => return Poll::Ready(None),
                Some(Polled::Event(event)) => {
                    this.handle(event);
                    continue;
                }
                Some(Polled::Reconnected(first)) => {
                    this.wire = std::mem::take(&mut this.reopening_wire);
                    for &queue in &this.wire {
                        this.queues[queue].shared.emit(QueueEvent::Reconnected);
                    }
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
                Some(Polled::Broken(status)) => crate::Error::from(status),
                Some(Polled::Failed(err)) => err,
            };
            let err = this.fail(failure);
            return Poll::Ready(Some(Err(err)));
        }
    }
}

impl FusedStream for ManyConsumer {
    fn is_terminated(&self) -> bool {
        self.link.is_over() && self.buffer.is_empty()
    }
}

impl Drop for ManyConsumer {
    fn drop(&mut self) {
        self.finish();
    }
}
