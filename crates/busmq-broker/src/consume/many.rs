//! One task per ConsumeMany stream: one consumer of many queues.
//!
//! A consumer of one queue pays a stream frame, a wake-up and a store call
//! per batch it receives; with thousands of queues each batch is a push
//! batch of its own, so those costs grow with the queue count. This task
//! looks only at queues that changed (its [`ReadySet`]), takes from several
//! of them at once, and sends what it took as one event.

use std::collections::VecDeque;

use busmq_core::Error;
use busmq_proto::v1::{self, ConsumeManyEvent, QueueConsumeEvent};
use futures::future::join_all;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::{QueueReader, closed_event, ended, messages_event, shutting_down, sleep_until_some};
use crate::wakeup::{ManySubscription, ReadySet};

/// The stream half the gRPC layer hands to the client.
pub type ManySender = mpsc::Sender<Result<ConsumeManyEvent, Status>>;

/// Where one queue of the stream stands.
enum Slot {
    /// Consuming; `None` only while a fetch has the reader.
    Live(Option<QueueReader>),
    /// Done: `max` reached, or the queue went away.
    Done,
}

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
    slots: Vec<Slot>,
    live: usize,
    /// Slots to look at, each once, in the order they became ready.
    ready: VecDeque<u32>,
    queued: Vec<bool>,
    /// Whether any slot leases (only then do lease expiries matter).
    leasing: bool,
    /// Whether any slot holds a reliable lock to renew.
    renewing: Option<std::time::Duration>,
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
        let mut state = Consuming {
            leasing: readers.iter().any(is_lease),
            renewing: readers.iter().filter_map(QueueReader::renewal_period).min(),
            slots: readers.into_iter().map(|r| Slot::Live(Some(r))).collect(),
            live: count,
            ready: VecDeque::new(),
            queued: vec![false; count],
        };
        let outcome = state
            .consume(prefetch, interest.ready(), &shutdown, &tx)
            .await;
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

fn is_lease(reader: &QueueReader) -> bool {
    matches!(reader.mode, super::Mode::Lease { .. })
}

impl Consuming {
    async fn consume(
        &mut self,
        prefetch: u32,
        marks: &ReadySet,
        shutdown: &CancellationToken,
        tx: &ManySender,
    ) -> Result<(), Status> {
        let mut events = self.begin().await?;
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
            // Room first: never take what the client cannot receive yet.
            let permit = tokio::select! {
                permit = tx.reserve() => match permit {
                    Ok(p) => p,
                    Err(_) => return Ok(()),
                },
                _ = shutdown.cancelled() => return Err(shutting_down()),
                _ = tokio::time::sleep_until(renew_at) => continue,
            };
            events = Vec::new();
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
            self.fetch(prefetch, &mut events).await?;
            if events.is_empty() {
                drop(permit);
            } else {
                permit.send(Ok(ConsumeManyEvent { events }));
            }
            if self.live == 0 {
                return Ok(());
            }
            if self.ready.is_empty() {
                let lease_expiry = self.earliest_lease_expiry();
                tokio::select! {
                    _ = marks.marked() => {}
                    _ = tx.closed() => return Ok(()),
                    _ = shutdown.cancelled() => return Err(shutting_down()),
                    _ = tokio::time::sleep_until(renew_at) => {}
                    _ = sleep_until_some(lease_expiry) => {}
                }
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

    fn enqueue(&mut self, slot: u32) {
        let i = slot as usize;
        if matches!(self.slots.get(i), Some(Slot::Live(_))) && !self.queued[i] {
            self.queued[i] = true;
            self.ready.push_back(slot);
        }
    }

    /// Takes from the ready queues, in turn, up to `prefetch` messages in
    /// all; every store call of one round runs at once, so a store that
    /// commits in groups makes them one commit.
    async fn fetch(
        &mut self,
        prefetch: u32,
        events: &mut Vec<QueueConsumeEvent>,
    ) -> Result<(), Status> {
        let mut budget = prefetch;
        let mut round = Vec::new();
        while budget > 0
            && let Some(slot) = self.ready.pop_front()
        {
            self.queued[slot as usize] = false;
            let Slot::Live(reader) = &mut self.slots[slot as usize] else {
                continue;
            };
            let Some(mut reader) = reader.take() else {
                continue;
            };
            let want = reader.want().min(budget);
            budget -= want;
            round.push(async move {
                let batch = reader.fetch(want).await;
                (slot, want, reader, batch)
            });
        }
        let mut failed = None;
        for (slot, want, reader, batch) in join_all(round).await {
            self.slots[slot as usize] = Slot::Live(Some(reader));
            match batch {
                Ok(batch) => {
                    // A full batch: the queue may hold more. Fewer: it held
                    // no more when asked, and a change since marks it.
                    let full = batch.len() == want as usize;
                    if !batch.is_empty() {
                        events.push(queue_event(slot, messages_event(batch)));
                    }
                    if self.reader(slot).is_some_and(QueueReader::reached_max) {
                        self.finish_queue(slot, false).await;
                    } else if full {
                        self.enqueue(slot);
                    }
                }
                Err(Error::QueueNotFound(_)) => {
                    self.end_queue(slot, v1::ClosedReason::Closed, events).await;
                }
                Err(e) => {
                    failed.get_or_insert(busmq_proto::to_status(e));
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }

    fn reader(&self, slot: u32) -> Option<&QueueReader> {
        match &self.slots[slot as usize] {
            Slot::Live(reader) => reader.as_ref(),
            Slot::Done => None,
        }
    }

    /// The queue went away: tell the client, and stop consuming it.
    async fn end_queue(
        &mut self,
        slot: u32,
        reason: v1::ClosedReason,
        events: &mut Vec<QueueConsumeEvent>,
    ) {
        if matches!(self.slots[slot as usize], Slot::Live(_)) {
            events.push(queue_event(slot, closed_event(reason)));
            self.finish_queue(slot, true).await;
        }
    }

    async fn finish_queue(&mut self, slot: u32, session_over: bool) {
        if let Slot::Live(Some(reader)) =
            std::mem::replace(&mut self.slots[slot as usize], Slot::Done)
        {
            reader.finish(session_over).await;
        }
        self.live -= 1;
    }

    fn enqueue_expired_leases(&mut self) {
        let now = Instant::now();
        let expired: Vec<u32> = (0..self.slots.len() as u32)
            .filter(|&slot| {
                self.reader(slot)
                    .and_then(QueueReader::lease_expiry)
                    .is_some_and(|at| at <= now)
            })
            .collect();
        for slot in expired {
            self.enqueue(slot);
        }
    }

    fn earliest_lease_expiry(&self) -> Option<Instant> {
        if !self.leasing {
            return None;
        }
        self.slots
            .iter()
            .filter_map(|slot| match slot {
                Slot::Live(Some(reader)) => reader.lease_expiry(),
                Slot::Live(None) | Slot::Done => None,
            })
            .min()
    }

    fn next_renewal(&self) -> Instant {
        Instant::now()
            + self
                .renewing
                .unwrap_or(std::time::Duration::from_secs(24 * 3600))
    }

    /// Renews every reliable lock at once; losing one ends the stream.
    async fn renew(&self) -> Result<(), Status> {
        let renewals = self.slots.iter().filter_map(|slot| match slot {
            Slot::Live(Some(reader)) if reader.renewal_period().is_some() => Some(reader.renew()),
            _ => None,
        });
        join_all(renewals).await.into_iter().collect()
    }
}

fn queue_event(slot: u32, event: v1::ConsumeEvent) -> QueueConsumeEvent {
    QueueConsumeEvent {
        queue: slot,
        event: Some(event),
    }
}
