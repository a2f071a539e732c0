//! Pushing at high rate: many batches in flight on one `PushStream` call,
//! to one queue or many.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use busmq_proto::v1 as pb;
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;

use busmq_proto::v1::queues_client::QueuesClient;

use crate::queue::Shared;
use crate::trace_context::Transport as Channel;
use crate::{Error, IdRange, Queue, Result};

/// Options of [`Queue::pusher`] and [`Bus::pusher`](crate::Bus::pusher).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PusherOptions {
    /// Batches sent and not yet answered, at most. [`Pusher::push`] waits
    /// for a slot when this many are in flight. Default 16; at least 1.
    pub max_in_flight: usize,
}

impl Default for PusherOptions {
    fn default() -> Self {
        PusherOptions { max_in_flight: 16 }
    }
}

/// A batch waiting for its answer.
struct Pending {
    done: oneshot::Sender<Result<IdRange>>,
    /// The batch's queue, by position in the pusher's queues.
    queue: usize,
    count: u64,
    // Frees the in-flight slot when the answer arrives.
    _slot: OwnedSemaphorePermit,
}

#[derive(Default)]
struct State {
    next_sequence: u64,
    pending: HashMap<u64, Pending>,
    /// Why the stream failed; every later push gets it.
    failed: Option<Error>,
    /// The stream is over (failed or ended).
    ended: bool,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // The state stays consistent under every panic point, so a poisoned
    // lock is still usable.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Pushes batches at a high rate over one `PushStream` call, pipelining up
/// to [`PusherOptions::max_in_flight`] batches instead of waiting for each
/// answer: to one queue ([`Queue::pusher`]) or to many
/// ([`Bus::pusher`](crate::Bus::pusher), as a Kafka producer sends to many
/// partitions on one connection).
///
/// [`push`](Self::push) returns as soon as the batch is sent, with a
/// [`PushTicket`] that resolves to the batch's ids. The batches of one
/// queue are stored in the order they were pushed; batches of different
/// queues are stored concurrently. The first failing batch ends the stream:
/// it and every batch after it fail with the same error (a batch in flight
/// to another queue may have been stored), and batches answered before it
/// are stored. Call [`finish`](Self::finish) to wait for every
/// answer; dropping the pusher ends the stream after what was sent (the
/// answers are then not reported).
///
/// ```no_run
/// # async fn demo(queue: busmq_client::Queue) -> Result<(), busmq_client::Error> {
/// use busmq_client::PusherOptions;
///
/// let pusher = queue.pusher(PusherOptions::default());
/// let mut tickets = Vec::new();
/// for i in 0..100 {
///     let batch: Vec<String> = (0..100).map(|j| format!("message {i}.{j}")).collect();
///     tickets.push(pusher.push(batch).await?);
/// }
/// for ticket in tickets {
///     let ids = ticket.await?;
///     assert_eq!(ids.len(), 100);
/// }
/// pusher.finish().await?;
/// # Ok(()) }
/// ```
pub struct Pusher {
    queues: Vec<Queue>,
    state: Arc<Mutex<State>>,
    slots: Arc<Semaphore>,
    max_in_flight: usize,
    requests: Option<mpsc::UnboundedSender<pb::PushStreamRequest>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Pusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pusher")
            .field("queues", &self.queues.len())
            .field("in_flight", &self.in_flight())
            .field("max_in_flight", &self.max_in_flight)
            .finish_non_exhaustive()
    }
}

impl Pusher {
    /// A pusher to `queues` (at least one) over `client`'s connection.
    pub(crate) fn start(
        client: QueuesClient<Channel>,
        queues: Vec<Queue>,
        options: PusherOptions,
    ) -> Pusher {
        assert!(!queues.is_empty(), "a pusher needs a queue");
        let max_in_flight = options.max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        let state = Arc::new(Mutex::new(State::default()));
        let slots = Arc::new(Semaphore::new(max_in_flight));
        let (requests, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(
            client,
            queues.iter().map(|q| Arc::clone(&q.shared)).collect(),
            UnboundedReceiverStream::new(rx),
            state.clone(),
            slots.clone(),
        ));
        Pusher {
            queues,
            state,
            slots,
            max_in_flight,
            requests: Some(requests),
            task: Some(task),
        }
    }

    /// Sends a batch (one or more messages, stored with consecutive ids in
    /// this order) to the pusher's first queue (its only one when made by
    /// [`Queue::pusher`]). Waits only while `max_in_flight` batches are
    /// unanswered. The returned ticket resolves to the batch's ids.
    ///
    /// An empty batch is refused here (`InvalidArgument`) rather than sent,
    /// since the server would end the stream for it and fail every batch in
    /// flight.
    pub async fn push<I>(&self, messages: I) -> Result<PushTicket>
    where
        I: IntoIterator,
        I::Item: Into<Bytes>,
    {
        self.push_to(0, messages).await
    }

    /// Like [`push`](Self::push), to the pusher's queue at position
    /// `queue` in the slice given to [`Bus::pusher`](crate::Bus::pusher).
    /// A position past the end is refused (`InvalidArgument`).
    pub async fn push_to<I>(&self, queue: usize, messages: I) -> Result<PushTicket>
    where
        I: IntoIterator,
        I::Item: Into<Bytes>,
    {
        let Some(target) = self.queues.get(queue) else {
            return Err(Error::InvalidOptions(format!(
                "queue position {queue}: this pusher has {} queues",
                self.queues.len()
            )));
        };
        let messages: Vec<Bytes> = messages.into_iter().map(Into::into).collect();
        if messages.is_empty() {
            return Err(Error::Bus(busmq_core::Error::EmptyBatch));
        }
        let slot = match self.slots.clone().acquire_owned().await {
            Ok(slot) => slot,
            Err(_) => return Err(ended_error(&lock(&self.state))),
        };
        let (done, answer) = oneshot::channel();
        let mut state = lock(&self.state);
        if state.ended {
            return Err(ended_error(&state));
        }
        let requests = self
            .requests
            .as_ref()
            .ok_or_else(|| Error::Protocol("the pusher was finished".into()))?;
        let sequence = state.next_sequence;
        state.next_sequence += 1;
        let count = messages.len() as u64;
        // Registered before sending, under the lock, so the answer always
        // finds it and the stream's end always fails it.
        state.pending.insert(
            sequence,
            Pending {
                done,
                queue,
                count,
                _slot: slot,
            },
        );
        let request = pb::PushStreamRequest {
            sequence,
            queue: target.name().to_owned(),
            messages,
        };
        if requests.send(request).is_err() {
            state.pending.remove(&sequence);
            return Err(ended_error(&state));
        }
        Ok(PushTicket {
            answer,
            state: self.state.clone(),
        })
    }

    /// Batches sent and not answered yet.
    pub fn in_flight(&self) -> usize {
        lock(&self.state).pending.len()
    }

    /// The first queue this pusher writes to (its only one when made by
    /// [`Queue::pusher`]).
    pub fn queue(&self) -> &Queue {
        &self.queues[0]
    }

    /// Every queue this pusher writes to, in position order.
    pub fn queues(&self) -> &[Queue] {
        &self.queues
    }

    /// Ends the stream after every batch sent and waits for their answers.
    /// Returns the error that ended the stream early, if one did.
    pub async fn finish(mut self) -> Result<()> {
        self.requests = None;
        if let Some(task) = self.task.take() {
            task.await
                .map_err(|e| Error::Protocol(format!("the push stream task failed: {e}")))?;
        }
        match lock(&self.state).failed.clone() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

impl Drop for Pusher {
    fn drop(&mut self) {
        // Ending the request stream lets the task finish by itself once the
        // server answered what was sent.
        self.requests = None;
    }
}

fn ended_error(state: &State) -> Error {
    state
        .failed
        .clone()
        .unwrap_or_else(|| Error::Protocol("the push stream has ended".into()))
}

/// Runs the call: matches answers to pending batches, and fails every
/// pending and later batch when the stream ends early.
async fn run(
    mut client: QueuesClient<Channel>,
    queues: Vec<Arc<Shared>>,
    requests: UnboundedReceiverStream<pb::PushStreamRequest>,
    state: Arc<Mutex<State>>,
    slots: Arc<Semaphore>,
) {
    let outcome: Result<()> = async {
        let mut answers = client.push_stream(requests).await?.into_inner();
        while let Some(ack) = answers.message().await? {
            let pending = lock(&state).pending.remove(&ack.sequence);
            let Some(pending) = pending else {
                return Err(Error::Protocol(format!(
                    "the server answered push sequence {}, which is not in flight",
                    ack.sequence
                )));
            };
            let ids = IdRange {
                first: ack.first_id,
                last: ack.last_id,
            };
            if ids.len() != pending.count {
                return Err(Error::Protocol(format!(
                    "the server gave {} ids to a batch of {}",
                    ids.len(),
                    pending.count
                )));
            }
            queues[pending.queue]
                .pushed
                .fetch_add(pending.count, Ordering::Relaxed);
            // The ticket may have been dropped: nobody to tell.
            let _ = pending.done.send(Ok(ids));
        }
        Ok(())
    }
    .await;

    let mut st = lock(&state);
    st.ended = true;
    let failure = match outcome {
        Err(err) => Some(err),
        Ok(()) if !st.pending.is_empty() => Some(Error::Protocol(format!(
            "the server ended the push stream with {} batches unanswered",
            st.pending.len()
        ))),
        Ok(()) => None,
    };
    if let Some(err) = failure {
        for shared in &queues[1..] {
            shared.emit(crate::QueueEvent::Error(err.to_string()));
        }
        let err = queues[0].failed(err);
        for (_, pending) in st.pending.drain() {
            let _ = pending.done.send(Err(err.clone()));
        }
        st.failed = Some(err);
    }
    drop(st);
    slots.close();
}

/// The answer to one batch of a [`Pusher`]: a future resolving to the
/// batch's ids, or to the error that ended the stream before it was stored.
#[must_use = "a push ticket tells whether the batch was stored"]
pub struct PushTicket {
    answer: oneshot::Receiver<Result<IdRange>>,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for PushTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushTicket").finish_non_exhaustive()
    }
}

impl Future for PushTicket {
    type Output = Result<IdRange>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.answer).poll(cx) {
            Poll::Ready(Ok(answer)) => Poll::Ready(answer),
            Poll::Ready(Err(_)) => Poll::Ready(Err(ended_error(&lock(&self.state)))),
            Poll::Pending => Poll::Pending,
        }
    }
}
