//! One task per ConsumeMany stream: one consumer of many queues.
//!
//! A consumer of one queue pays a stream frame, a wake-up and a store call
//! per batch it receives; with thousands of queues each batch is a push
//! batch of its own, so those costs grow with the queue count. This task
//! looks only at queues that changed (its [`ReadySet`]), takes from several
//! of them at once (a round), and sends what a round took as one event.
//!
//! Rounds are pipelined: while one waits for its takes to be durable (the
//! embedded store commits before it answers), the next takes from other
//! queues, so the stream is not limited to one round per disk commit. A
//! queue is in at most one round at a time, and events go out in the order
//! their rounds started, so each queue's messages keep their order.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;

use busmq_core::{Error, QueueName};
use busmq_proto::v1::{self, ConsumeManyEvent, QueueConsumeEvent};
use busmq_storage::{ReliableLock, Storage};
use futures::StreamExt;
use futures::future::{BoxFuture, join_all};
use futures::stream::FuturesOrdered;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::{
    QueueReader, closed_event, ended, frames, queue_event, queue_messages, reader, shutting_down,
    sleep_until_some,
};
use crate::wakeup::{ManySubscription, ReadySet};

/// The stream half the gRPC layer hands to the client.
pub type ManySender = mpsc::Sender<Result<ConsumeManyEvent, Status>>;

/// Rounds of one stream taking from the store at once, at most. Messages
/// taken and not yet received are at most this many rounds of `prefetch`,
/// plus the stream's buffer.
const ROUNDS_IN_FLIGHT: usize = 16;

/// Queues one round asks the store for at most.
const MAX_QUEUES_PER_ROUND: usize = 256;

/// A running average of the messages a non-empty take yields, to ask as
/// many queues in a round as fill its budget. With thousands of queues
/// each holds a push batch or two when its turn comes; asking one queue
/// per round for the whole budget would leave most of it unused and the
/// stream taking a batch per commit.
struct TakeSize {
    average: f64,
}

impl TakeSize {
    /// Starts as if a take filled the budget: one queue a round, until
    /// takes say otherwise.
    fn new(prefetch: u32) -> Self {
        TakeSize {
            average: f64::from(prefetch.max(1)),
        }
    }

    fn saw(&mut self, taken: usize) {
        if taken > 0 {
            self.average += (taken as f64 - self.average) / 4.0;
        }
    }

    /// Queues to ask for `budget` messages: what the average fills, and
    /// one more, as averages err.
    fn queues_for(&self, budget: u32) -> usize {
        let fill = (f64::from(budget) / self.average.max(1.0)).ceil() as usize;
        (fill + 1).clamp(1, MAX_QUEUES_PER_ROUND)
    }
}

/// Where one queue of the stream stands.
enum Slot {
    /// Consuming; `None` while a round has the reader.
    Live(Option<QueueReader>),
    /// Done: `max` reached, or the queue went away.
    Done,
}

/// What one round took, queue by queue: the slot, how many it asked for,
/// its reader back, and the batch.
type Taken = Vec<(u32, u32, QueueReader, Result<Vec<v1::Message>, Error>)>;

/// One running consumer of many queues.
pub struct ConsumeManyTask {
    /// A reader per queue, in the request's order (the slot is the index).
    pub readers: Vec<QueueReader>,
    /// The most messages of all queues in one event.
    pub prefetch: u32,
    pub interest: ManySubscription,
    pub shutdown: CancellationToken,
    pub tx: ManySender,
}

/// The running state of a [`ConsumeManyTask`].
struct Consuming {
    storage: Arc<dyn Storage>,
    slots: Vec<Slot>,
    live: usize,
    /// Slots to look at, each once, in the order they became ready.
    ready: VecDeque<u32>,
    queued: Vec<bool>,
    /// Slots marked while a round had them: look again when it returns.
    again: Vec<bool>,
    /// Slots whose queue went away while a round had them.
    gone: Vec<Option<v1::ClosedReason>>,
    /// Whether any slot leases (only then do lease expiries matter).
    leasing: bool,
    /// When each leasing queue's earliest lease runs out, as its reader
    /// last reported, soonest first; entries a later report replaced are
    /// skipped when they come up.
    lease_deadlines: BinaryHeap<Reverse<(Instant, u32)>>,
    /// What a take usually yields, to size rounds by.
    take_size: TakeSize,
    /// The reliable locks, by slot, and how often to renew them.
    locks: Vec<(u32, QueueName, ReliableLock)>,
    renew_every: Option<std::time::Duration>,
}

impl ConsumeManyTask {
    /// Runs until every queue is done, the client leaves, an error occurs
    /// or the broker shuts down; then finishes every queue still consuming
    /// (see [`QueueReader::finish`]).
    pub async fn run(self) {
        let ConsumeManyTask {
            readers,
            prefetch,
            interest,
            shutdown,
            tx,
        } = self;
        let count = readers.len();
        let Some(storage) = readers.first().map(|r| Arc::clone(&r.storage)) else {
            return;
        };
        let mut state = Consuming {
            storage,
            leasing: readers
                .iter()
                .any(|r| matches!(r.mode, super::Mode::Lease { .. })),
            locks: readers
                .iter()
                .enumerate()
                .filter_map(|(slot, r)| {
                    r.lock()
                        .map(|lock| (slot as u32, r.queue.clone(), lock.clone()))
                })
                .collect(),
            renew_every: readers.iter().filter_map(QueueReader::renewal_period).min(),
            slots: readers.into_iter().map(|r| Slot::Live(Some(r))).collect(),
            live: count,
            ready: VecDeque::new(),
            queued: vec![false; count],
            again: vec![false; count],
            gone: vec![None; count],
            take_size: TakeSize::new(prefetch),
            lease_deadlines: BinaryHeap::new(),
        };
        let mut rounds = FuturesOrdered::new();
        let outcome = state
            .consume(prefetch, interest.ready(), &mut rounds, &shutdown, &tx)
            .await;
        // Readers a round still has come back with it.
        while let Some(taken) = rounds.next().await {
            for (slot, _, reader, _) in taken {
                state.slots[slot as usize] = Slot::Live(Some(reader));
            }
        }
        let still_live = state.slots.iter().filter_map(|slot| match slot {
            Slot::Live(Some(reader)) => Some(reader.finish(true)),
            Slot::Live(None) | Slot::Done => None,
        });
        join_all(still_live).await;
        drop(interest);
        if let Err(status) = outcome {
            let _ = tx.send(Err(status)).await;
        }
    }
}

impl Consuming {
    async fn consume(
        &mut self,
        prefetch: u32,
        marks: &ReadySet,
        rounds: &mut FuturesOrdered<BoxFuture<'static, Taken>>,
        shutdown: &CancellationToken,
        tx: &ManySender,
    ) -> Result<(), Status> {
        let events = self.begin().await?;
        for slot in 0..self.slots.len() as u32 {
            self.note_lease_deadline(slot);
        }
        if tx.send(Ok(ConsumeManyEvent { events })).await.is_err() {
            return Ok(());
        }
        let mut renew_at = self.next_renewal();
        let mut signals = Vec::new();
        loop {
            if Instant::now() >= renew_at {
                self.renew().await?;
                renew_at = self.next_renewal();
            }
            let mut events = Vec::new();
            marks.take(&mut signals);
            for (slot, signal) in signals.drain(..) {
                match ended(signal) {
                    Some(reason) => self.end_queue(slot, reason, &mut events).await,
                    None => self.enqueue(slot),
                }
            }
            if self.leasing {
                self.enqueue_expired_leases();
            }
            if !events.is_empty() {
                send(tx, shutdown, events).await?;
            }
            while rounds.len() < ROUNDS_IN_FLIGHT
                && let Some(round) = self.start_round(prefetch)
            {
                rounds.push_back(round);
            }
            if self.live == 0 && rounds.is_empty() {
                return Ok(());
            }
            let lease_expiry = self.earliest_lease_expiry();
            tokio::select! {
                Some(taken) = rounds.next() => {
                    let events = self.end_round(taken).await?;
                    if !events.is_empty() {
                        send(tx, shutdown, events).await?;
                    }
                }
                // With every round in flight, new marks wait for one to end.
                _ = marks.marked(), if rounds.len() < ROUNDS_IN_FLIGHT => {}
                _ = tx.closed() => return Ok(()),
                _ = shutdown.cancelled() => return Err(shutting_down()),
                _ = tokio::time::sleep_until(renew_at) => {}
                _ = sleep_until_some(lease_expiry) => {}
            }
        }
    }

    /// Starts every queue at once; the first event says `consuming` for
    /// each, in order. Any refusal ends the stream.
    async fn begin(&mut self) -> Result<Vec<QueueConsumeEvent>, Status> {
        let begun = join_all(self.slots.iter_mut().map(|slot| async move {
            match slot {
                Slot::Live(Some(reader)) => reader.begin().await,
                Slot::Live(None) | Slot::Done => Ok(0),
            }
        }))
        .await;
        begun
            .into_iter()
            .enumerate()
            .map(|(slot, redelivered)| {
                Ok(queue_event(
                    slot as u32,
                    v1::ConsumeEvent {
                        event: Some(v1::consume_event::Event::Consuming(v1::Consuming {
                            redelivered: redelivered?,
                        })),
                    },
                ))
            })
            .collect()
    }

    /// Queues `slot` to be looked at; a slot a round has is looked at again
    /// when the round returns it.
    fn enqueue(&mut self, slot: u32) {
        let i = slot as usize;
        match self.slots.get(i) {
            Some(Slot::Live(Some(_))) if !self.queued[i] => {
                self.queued[i] = true;
                self.ready.push_back(slot);
            }
            Some(Slot::Live(None)) => self.again[i] = true,
            _ => {}
        }
    }

    /// Takes the readers of ready queues, in turn, for up to `prefetch`
    /// messages in all. Queues in the modes that take go to the store as
    /// one [`Storage::take_many`] (one atomic step and one commit in a
    /// store that groups them), as many as the messages a take usually
    /// yields make the budget worth; other modes fetch alongside, each
    /// allotted its share of the budget up front. `None` when no queue is
    /// ready.
    fn start_round(&mut self, prefetch: u32) -> Option<BoxFuture<'static, Taken>> {
        let mut budget = prefetch;
        let mut takers = Vec::new();
        let mut requests = Vec::new();
        let mut fetches = Vec::new();
        let takes_wanted = self.take_size.queues_for(prefetch);
        while budget > 0
            && requests.len() < takes_wanted
            && let Some(slot) = self.ready.pop_front()
        {
            self.queued[slot as usize] = false;
            let Slot::Live(reader) = &mut self.slots[slot as usize] else {
                continue;
            };
            let Some(mut reader) = reader.take() else {
                continue;
            };
            if let Some(request) = reader.take_request(budget) {
                requests.push(request);
                takers.push((slot, reader));
                continue;
            }
            let want = reader.want().min(budget);
            budget -= want;
            fetches.push(async move {
                let batch = reader.fetch(want).await;
                (slot, want, reader, batch)
            });
        }
        if takers.is_empty() && fetches.is_empty() {
            return None;
        }
        let storage = Arc::clone(&self.storage);
        Some(Box::pin(async move {
            let take = async {
                if requests.is_empty() {
                    return Vec::new();
                }
                let started = busmq_server::metrics::start_timer();
                let taken = storage.take_many(&requests, budget).await;
                busmq_server::metrics::observe_since(&crate::metrics::TAKE_MANY_DURATION, started);
                taken
            };
            let (mut round, taken) = futures::join!(join_all(fetches), take);
            let mut taken = taken.into_iter();
            for (slot, mut reader) in takers {
                // A queue the budget did not reach was asked for nothing:
                // it goes back among the ready ones.
                let (asked, batch) = match taken.next() {
                    Some(t) => (t.asked, reader.took(t.messages)),
                    None => (0, Ok(Vec::new())),
                };
                round.push((slot, asked, reader, batch));
            }
            round
        }))
    }

    /// Gives a round's readers back and turns what it took into events.
    async fn end_round(&mut self, taken: Taken) -> Result<Vec<QueueConsumeEvent>, Status> {
        let mut events = Vec::new();
        let mut failed = None;
        for (slot, want, reader, batch) in taken {
            let i = slot as usize;
            self.slots[i] = Slot::Live(Some(reader));
            self.note_lease_deadline(slot);
            let again = std::mem::take(&mut self.again[i]);
            match batch {
                Ok(batch) => {
                    // A full batch: the queue may hold more. Fewer: it held
                    // no more when asked, and a change since marked it.
                    let full = batch.len() == want as usize;
                    self.take_size.saw(batch.len());
                    if !batch.is_empty() {
                        events.push(queue_messages(slot, batch));
                    }
                    if self.reader(slot).is_some_and(QueueReader::reached_max) {
                        self.finish_queue(slot, false).await;
                    } else if full || again {
                        self.enqueue(slot);
                    }
                }
                Err(Error::QueueNotFound(_)) => {
                    self.end_queue(slot, v1::ClosedReason::Closed, &mut events)
                        .await;
                }
                Err(e) => {
                    failed.get_or_insert(busmq_proto::to_status(e));
                }
            }
            if let Some(reason) = self.gone[i].take() {
                self.end_queue(slot, reason, &mut events).await;
            }
        }
        failed.map_or(Ok(events), Err)
    }

    fn reader(&self, slot: u32) -> Option<&QueueReader> {
        match &self.slots[slot as usize] {
            Slot::Live(reader) => reader.as_ref(),
            Slot::Done => None,
        }
    }

    /// The queue went away: tell the client, and stop consuming it (once
    /// its round, if one has it, returns it).
    async fn end_queue(
        &mut self,
        slot: u32,
        reason: v1::ClosedReason,
        events: &mut Vec<QueueConsumeEvent>,
    ) {
        match self.slots[slot as usize] {
            Slot::Live(Some(_)) => {
                events.push(queue_event(slot, closed_event(reason)));
                self.finish_queue(slot, true).await;
            }
            Slot::Live(None) => self.gone[slot as usize] = Some(reason),
            Slot::Done => {}
        }
    }

    async fn finish_queue(&mut self, slot: u32, session_over: bool) {
        if let Slot::Live(Some(reader)) =
            std::mem::replace(&mut self.slots[slot as usize], Slot::Done)
        {
            reader.finish(session_over).await;
            self.live -= 1;
        }
    }

    /// Records when `slot`'s earliest lease runs out, if it leases.
    fn note_lease_deadline(&mut self, slot: u32) {
        if !self.leasing {
            return;
        }
        if let Some(at) = self.reader(slot).and_then(QueueReader::lease_expiry) {
            self.lease_deadlines.push(Reverse((at, slot)));
        }
        // Replaced entries wait for their time to be dropped; rebuild from
        // the readers before they outnumber the queues by far.
        if self.lease_deadlines.len() > 4 * self.slots.len() + 1024 {
            self.lease_deadlines = (0..self.slots.len() as u32)
                .filter_map(|slot| {
                    let at = self.reader(slot).and_then(QueueReader::lease_expiry)?;
                    Some(Reverse((at, slot)))
                })
                .collect();
        }
    }

    /// Looks again at queues whose earliest lease ran out (the look puts
    /// it back). A queue a round has looks when the round ends anyway.
    fn enqueue_expired_leases(&mut self) {
        let now = Instant::now();
        while let Some(&Reverse((at, slot))) = self.lease_deadlines.peek() {
            if at > now {
                break;
            }
            self.lease_deadlines.pop();
            let current = self.reader(slot).and_then(QueueReader::lease_expiry);
            if current == Some(at) {
                self.enqueue(slot);
            }
        }
    }

    fn earliest_lease_expiry(&self) -> Option<Instant> {
        self.lease_deadlines.peek().map(|&Reverse((at, _))| at)
    }

    fn next_renewal(&self) -> Instant {
        Instant::now()
            + self
                .renew_every
                .unwrap_or(std::time::Duration::from_secs(24 * 3600))
    }

    /// Renews the reliable lock of every queue still consuming, at once
    /// (a round having the reader does not matter); losing one ends the
    /// stream.
    async fn renew(&self) -> Result<(), Status> {
        let renewals = self
            .locks
            .iter()
            .filter(|(slot, ..)| matches!(self.slots[*slot as usize], Slot::Live(_)))
            .map(|(_, queue, lock)| reader::renew(&*self.storage, queue, lock));
        join_all(renewals).await.into_iter().collect()
    }
}

/// Sends `events` once the client has room for them, in frames of bounded
/// size (see [`frames`](super::frames)).
async fn send(
    tx: &ManySender,
    shutdown: &CancellationToken,
    events: Vec<QueueConsumeEvent>,
) -> Result<(), Status> {
    for events in frames::split_many(events) {
        tokio::select! {
            permit = tx.reserve() => match permit {
                Ok(permit) => permit.send(Ok(ConsumeManyEvent { events })),
                // A client gone is noticed by the main loop.
                Err(_) => return Ok(()),
            },
            _ = shutdown.cancelled() => return Err(shutting_down()),
        }
    }
    Ok(())
}
