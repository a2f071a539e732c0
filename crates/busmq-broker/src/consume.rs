//! One task per Consume stream: takes batches from the store as the client
//! makes room for them, and waits for a wake-up when the queue is empty.

use std::sync::Arc;
use std::time::Duration;

use busmq_core::{Error, QueueName};
use busmq_proto::v1::{self, ConsumeEvent, consume_event::Event};
use busmq_storage::{LeasedMessage, ReliableLock, Storage, TakeMode};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::wakeup::{QueueSignal, Subscription};

/// Consume events buffered between the task and the gRPC stream. Each is a
/// whole batch, so messages in flight are at most about this many batches of
/// `prefetch`: the store is not read faster than the client drains.
pub const STREAM_BUFFER: usize = 2;

/// The stream half the gRPC layer hands to the client.
pub type EventSender = mpsc::Sender<Result<ConsumeEvent, Status>>;

/// How this consumer reads the queue.
#[derive(Debug)]
pub enum Mode {
    /// Take and remove.
    Unreliable,
    /// Take into pending under the queue's reliable lock.
    Reliable { lock: ReliableLock, last: u64 },
    /// Read from `next` on, removing nothing.
    Persistent { next: u64 },
    /// Lease to `owner` for `visibility`; `next_expiry` is when the
    /// queue's earliest lease runs out, as the store last reported it.
    Lease {
        owner: String,
        visibility: Duration,
        next_expiry: Option<Instant>,
    },
}

/// Why consumption ended without an error.
enum End {
    /// `max` messages were delivered.
    MaxReached,
    /// The client went away.
    ClientGone,
    /// The queue was closed or expired.
    QueueGone(v1::ClosedReason),
}

/// One running consumer.
pub struct ConsumeTask {
    pub storage: Arc<dyn Storage>,
    pub queue: QueueName,
    pub mode: Mode,
    /// Messages still to deliver; `None` is unbounded.
    pub remaining: Option<u64>,
    pub prefetch: u32,
    pub signal: Subscription,
    pub shutdown: CancellationToken,
    pub tx: EventSender,
}

impl ConsumeTask {
    /// Runs until the client leaves, `max` is reached, the queue goes away,
    /// an error occurs or the broker shuts down; always releases the
    /// reliable lock on the way out. A lease consumer's leases go back to
    /// the queue at once unless it reached `max`: a client that asked for
    /// `max` messages still holds them and acks them by token after its
    /// stream ended (HTTP's take-then-ack); they run out on their own.
    pub async fn run(mut self) {
        let tx = self.tx.clone();
        let outcome = self.consume(&tx).await;
        let session_over = !matches!(outcome, Ok(End::MaxReached));
        match &self.mode {
            Mode::Reliable { lock, .. } => {
                if let Err(e) = self.storage.end_reliable(&self.queue, lock).await {
                    // The lease lapses on its own; the next consumer is at
                    // most `reliable_lease` late.
                    tracing::warn!(queue = %self.queue, error = %e, "could not release reliable lock");
                }
            }
            // The consumer's session is over: what it did not ack goes back
            // now, not after the visibility timeout. Failing that, each
            // lease still runs out on its own.
            Mode::Lease { owner, .. } if session_over => {
                match self.storage.release_leases(&self.queue, owner).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(queue = %self.queue, released = n, "leases released"),
                    Err(e) => {
                        tracing::warn!(queue = %self.queue, error = %e, "could not release leases")
                    }
                }
            }
            Mode::Lease { .. } | Mode::Unreliable | Mode::Persistent { .. } => {}
        }
        let last = match outcome {
            Ok(End::MaxReached | End::ClientGone) => None,
            Ok(End::QueueGone(reason)) => Some(Ok(ConsumeEvent {
                event: Some(Event::Closed(v1::Closed {
                    reason: reason as i32,
                })),
            })),
            Err(status) => Some(Err(status)),
        };
        if let Some(last) = last {
            let _ = tx.send(last).await;
        }
    }

    async fn consume(&mut self, tx: &EventSender) -> Result<End, Status> {
        let redelivered = match &self.mode {
            Mode::Reliable { lock, last } => self
                .storage
                .begin_reliable(&self.queue, lock, *last)
                .await
                .map_err(busmq_proto::to_status)?,
            // Leasing nothing checks that lease mode may start (no reliable
            // consumer holds the queue), so a refusal comes before
            // `consuming`, as in reliable mode.
            Mode::Lease { .. } => {
                self.lease(0).await.map_err(busmq_proto::to_status)?;
                0
            }
            Mode::Unreliable | Mode::Persistent { .. } => 0,
        };
        let started = Event::Consuming(v1::Consuming { redelivered });
        if tx
            .send(Ok(ConsumeEvent {
                event: Some(started),
            }))
            .await
            .is_err()
        {
            return Ok(End::ClientGone);
        }
        let mut renew_at = self.next_renewal();
        loop {
            if self.remaining == Some(0) {
                return Ok(End::MaxReached);
            }
            if Instant::now() >= renew_at {
                self.renew().await?;
                renew_at = self.next_renewal();
            }
            // Wait for room first: never take from the store what the client
            // cannot receive yet.
            let permit = tokio::select! {
                permit = tx.reserve() => match permit {
                    Ok(p) => p,
                    Err(_) => return Ok(End::ClientGone),
                },
                _ = self.shutdown.cancelled() => return Err(shutting_down()),
                _ = tokio::time::sleep_until(renew_at) => continue,
            };
            if let Some(gone) = ended(self.signal.mark_seen()) {
                return Ok(End::QueueGone(gone));
            }
            let want = self
                .remaining
                .map_or(self.prefetch, |r| r.min(u64::from(self.prefetch)) as u32);
            let batch = match self.fetch(want).await {
                Ok(batch) => batch,
                Err(Error::QueueNotFound(_)) => {
                    return Ok(End::QueueGone(v1::ClosedReason::Closed));
                }
                Err(e) => return Err(busmq_proto::to_status(e)),
            };
            // Fewer than asked for means the store had no more when it was
            // asked, and the mark before asking means every change since
            // is signalled: wait for that signal rather than ask again.
            let drained = batch.len() < want as usize;
            if batch.is_empty() {
                drop(permit);
            } else {
                if let Some(r) = self.remaining.as_mut() {
                    *r -= batch.len() as u64;
                }
                permit.send(Ok(ConsumeEvent {
                    event: Some(Event::Messages(v1::MessageBatch { messages: batch })),
                }));
            }
            if drained && let Some(end) = self.wait_for_change(tx, renew_at).await {
                return end;
            }
        }
    }

    /// Waits until the queue may have changed (or a lease or the reliable
    /// lock needs attention); `Some` when consumption ends instead.
    async fn wait_for_change(
        &mut self,
        tx: &EventSender,
        renew_at: Instant,
    ) -> Option<Result<End, Status>> {
        let lease_expiry = self.lease_expiry();
        tokio::select! {
            signal = self.signal.changed() => ended(signal).map(|gone| Ok(End::QueueGone(gone))),
            _ = tx.closed() => Some(Ok(End::ClientGone)),
            _ = self.shutdown.cancelled() => Some(Err(shutting_down())),
            _ = tokio::time::sleep_until(renew_at) => None,
            // A lease runs out: look again, which puts it back.
            _ = sleep_until_some(lease_expiry) => None,
        }
    }

    async fn fetch(&mut self, max: u32) -> Result<Vec<v1::Message>, Error> {
        let batch = match &mut self.mode {
            Mode::Unreliable => {
                self.storage
                    .take(&self.queue, max, TakeMode::Remove)
                    .await?
            }
            Mode::Reliable { .. } => {
                self.storage
                    .take(&self.queue, max, TakeMode::Pending)
                    .await?
            }
            Mode::Persistent { next } => {
                let batch = self.storage.read(&self.queue, *next, max).await?;
                if let Some(last) = batch.last() {
                    *next = last.id + 1;
                }
                batch
            }
            Mode::Lease { .. } => {
                return Ok(self
                    .lease(max)
                    .await?
                    .into_iter()
                    .map(|m| v1::Message {
                        id: m.message.id,
                        payload: m.message.payload,
                        attempt: m.attempt,
                    })
                    .collect());
            }
        };
        Ok(batch
            .into_iter()
            .map(|m| v1::Message {
                id: m.id,
                payload: m.payload,
                attempt: 0,
            })
            .collect())
    }

    /// Lease mode: leases up to `max` messages and remembers when the
    /// queue's earliest lease runs out. Other modes lease nothing.
    async fn lease(&mut self, max: u32) -> Result<Vec<LeasedMessage>, Error> {
        let Mode::Lease {
            owner,
            visibility,
            next_expiry,
        } = &mut self.mode
        else {
            return Ok(Vec::new());
        };
        let leases = self
            .storage
            .lease(&self.queue, owner, max, *visibility)
            .await?;
        *next_expiry = leases.next_expiry.map(|d| Instant::now() + d);
        Ok(leases.messages)
    }

    /// When the queue's earliest lease runs out, in lease mode.
    fn lease_expiry(&self) -> Option<Instant> {
        match &self.mode {
            Mode::Lease { next_expiry, .. } => *next_expiry,
            _ => None,
        }
    }

    fn next_renewal(&self) -> Instant {
        match &self.mode {
            Mode::Reliable { lock, .. } => Instant::now() + lock.lease / 3,
            // Nothing to renew: a deadline far enough never to fire.
            _ => Instant::now() + Duration::from_secs(24 * 3600),
        }
    }

    async fn renew(&self) -> Result<(), Status> {
        if let Mode::Reliable { lock, .. } = &self.mode {
            let held = self
                .storage
                .renew_reliable(&self.queue, lock)
                .await
                .map_err(busmq_proto::to_status)?;
            if !held {
                return Err(busmq_proto::to_status(Error::ReliableLockLost(
                    self.queue.to_string(),
                )));
            }
        }
        Ok(())
    }
}

fn ended(signal: QueueSignal) -> Option<v1::ClosedReason> {
    match signal {
        QueueSignal::Open => None,
        QueueSignal::Closed => Some(v1::ClosedReason::Closed),
        QueueSignal::Expired => Some(v1::ClosedReason::Expired),
    }
}

/// Sleeps until `at`, or forever when there is no `at`.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn shutting_down() -> Status {
    Status::unavailable("broker is shutting down; reconnect to continue consuming")
}
