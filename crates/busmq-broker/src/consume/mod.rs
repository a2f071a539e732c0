//! Consumption: one task per Consume stream (this module) or per
//! ConsumeMany stream ([`many`]), each taking batches from the store as the
//! client makes room for them and waiting for a wake-up when it is empty.
//! What a consumer does with one queue, in its mode, is [`reader`].

mod frames;
mod many;
mod reader;

use busmq_core::Error;
use busmq_proto::v1::{self, ConsumeEvent, consume_event::Event};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::wakeup::{QueueSignal, Subscription};

pub use many::ConsumeManyTask;
pub use reader::{Mode, QueueReader};

/// Consume events buffered between the task and the gRPC stream. Each is a
/// whole batch, so messages in flight are at most about this many batches of
/// `prefetch`: the store is not read faster than the client drains.
pub const STREAM_BUFFER: usize = 2;

/// The stream half the gRPC layer hands to the client.
pub type EventSender = mpsc::Sender<Result<ConsumeEvent, Status>>;

/// Why consumption ended without an error.
enum End {
    /// `max` messages were delivered.
    MaxReached,
    /// The client went away.
    ClientGone,
    /// The queue was closed or expired.
    QueueGone(v1::ClosedReason),
}

/// One running consumer of one queue.
pub struct ConsumeTask {
    pub reader: QueueReader,
    pub signal: Subscription,
    pub shutdown: CancellationToken,
    pub tx: EventSender,
}

impl ConsumeTask {
    /// Runs until the client leaves, `max` is reached, the queue goes away,
    /// an error occurs or the broker shuts down, then finishes the reader
    /// (see [`QueueReader::finish`]).
    pub async fn run(mut self) {
        let tx = self.tx.clone();
        let outcome = self.consume(&tx).await;
        let session_over = !matches!(outcome, Ok(End::MaxReached));
        self.reader.finish(session_over).await;
        let last = match outcome {
            Ok(End::MaxReached | End::ClientGone) => None,
            Ok(End::QueueGone(reason)) => Some(Ok(closed_event(reason))),
            Err(status) => Some(Err(status)),
        };
        if let Some(last) = last {
            let _ = tx.send(last).await;
        }
    }

    async fn consume(&mut self, tx: &EventSender) -> Result<End, Status> {
        let redelivered = self.reader.begin().await?;
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
        let mut renew_at = next_renewal(&self.reader);
        loop {
            if self.reader.reached_max() {
                return Ok(End::MaxReached);
            }
            if Instant::now() >= renew_at {
                self.reader.renew().await?;
                renew_at = next_renewal(&self.reader);
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
            let want = self.reader.want();
            let batch = match self.reader.fetch(want).await {
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
                let mut frames = frames::split(batch).into_iter();
                if let Some(first) = frames.next() {
                    permit.send(Ok(messages_event(first)));
                }
                // The rest of a take too large for one frame: the messages
                // left the store, so they go out whatever the wait.
                for frame in frames {
                    tokio::select! {
                        sent = tx.send(Ok(messages_event(frame))) => if sent.is_err() {
                            return Ok(End::ClientGone);
                        },
                        _ = self.shutdown.cancelled() => return Err(shutting_down()),
                    }
                }
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
        let lease_expiry = self.reader.lease_expiry();
        tokio::select! {
            signal = self.signal.changed() => ended(signal).map(|gone| Ok(End::QueueGone(gone))),
            _ = tx.closed() => Some(Ok(End::ClientGone)),
            _ = self.shutdown.cancelled() => Some(Err(shutting_down())),
            _ = tokio::time::sleep_until(renew_at) => None,
            // A lease runs out: look again, which puts it back.
            _ = sleep_until_some(lease_expiry) => None,
        }
    }
}

/// When `reader`'s reliable lock is next due for renewal: far enough never
/// to fire in modes without one.
fn next_renewal(reader: &QueueReader) -> Instant {
    Instant::now()
        + reader
            .renewal_period()
            .unwrap_or(std::time::Duration::from_secs(24 * 3600))
}

fn messages_event(messages: Vec<v1::Message>) -> ConsumeEvent {
    ConsumeEvent {
        event: Some(Event::Messages(v1::MessageBatch { messages })),
    }
}

/// One queue's event in a ConsumeMany frame.
fn queue_event(queue: u32, event: ConsumeEvent) -> v1::QueueConsumeEvent {
    v1::QueueConsumeEvent {
        queue,
        event: Some(event),
    }
}

/// One queue's messages in a ConsumeMany frame.
fn queue_messages(queue: u32, messages: Vec<v1::Message>) -> v1::QueueConsumeEvent {
    queue_event(queue, messages_event(messages))
}

fn closed_event(reason: v1::ClosedReason) -> ConsumeEvent {
    ConsumeEvent {
        event: Some(Event::Closed(v1::Closed {
            reason: reason as i32,
        })),
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
pub(crate) async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn shutting_down() -> Status {
    Status::unavailable("broker is shutting down; reconnect to continue consuming")
}
