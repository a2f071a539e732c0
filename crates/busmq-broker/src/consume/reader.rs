//! One consumer's reading of one queue, in its mode: what a Consume stream
//! and each queue of a ConsumeMany stream do with the store.

use std::sync::Arc;
use std::time::Duration;

use busmq_core::{Error, QueueName};
use busmq_proto::v1;
use busmq_server::metrics::{ConsumerGauge, DeliveryMode};
use busmq_storage::{LeasedMessage, ReliableLock, Storage, TakeMode, TakeRequest};
use tokio::time::Instant;
use tonic::Status;

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

/// A consumer's position in one queue and what it still may take.
pub struct QueueReader {
    pub storage: Arc<dyn Storage>,
    pub queue: QueueName,
    pub mode: Mode,
    /// Messages still to deliver; `None` is unbounded.
    pub remaining: Option<u64>,
    /// The most messages one fetch takes.
    pub prefetch: u32,
    /// This consumer in the queue's series, from [`Self::begin`] on (a
    /// consumer that was refused is not counted).
    pub consumer: Option<ConsumerGauge>,
}

impl QueueReader {
    /// Starts consuming: takes the reliable lock (returning how many
    /// un-acked messages of an earlier consumer go out again) or checks
    /// that lease mode may start. Refusals come before `consuming`.
    pub async fn begin(&mut self) -> Result<u64, Status> {
        let redelivered = match &self.mode {
            Mode::Reliable { lock, last } => self
                .storage
                .begin_reliable(&self.queue, lock, *last)
                .await
                .map_err(busmq_proto::to_status)?,
            // Leasing nothing checks that no reliable consumer holds the
            // queue.
            Mode::Lease { .. } => {
                self.lease(0).await.map_err(busmq_proto::to_status)?;
                0
            }
            Mode::Unreliable | Mode::Persistent { .. } => 0,
        };
        let consumer = ConsumerGauge::new(busmq_server::metrics::queue(&self.queue));
        consumer.metrics().redeliveries().increment(redelivered);
        self.consumer = Some(consumer);
        Ok(redelivered)
    }

    /// This reader's `mode` label.
    fn delivery_mode(&self) -> DeliveryMode {
        match self.mode {
            Mode::Unreliable => DeliveryMode::Unreliable,
            Mode::Reliable { .. } => DeliveryMode::Reliable,
            Mode::Persistent { .. } => DeliveryMode::Persistent,
            Mode::Lease { .. } => DeliveryMode::Lease,
        }
    }

    /// True once `max` messages were delivered.
    pub fn reached_max(&self) -> bool {
        self.remaining == Some(0)
    }

    /// How many messages the next fetch asks for.
    pub fn want(&self) -> u32 {
        self.remaining
            .map_or(self.prefetch, |r| r.min(u64::from(self.prefetch)) as u32)
    }

    /// The store call that takes up to `max` messages (never more than
    /// [`Self::want`]) for this reader, in the modes that take; `None` in
    /// those that read or lease.
    pub fn take_request(&self, max: u32) -> Option<TakeRequest> {
        let mode = match self.mode {
            Mode::Unreliable => TakeMode::Remove,
            Mode::Reliable { .. } => TakeMode::Pending,
            Mode::Persistent { .. } | Mode::Lease { .. } => return None,
        };
        Some(TakeRequest {
            queue: self.queue.clone(),
            max: max.min(self.want()),
            mode,
        })
    }

    /// Counts what a [`Self::take_request`] took against `max`.
    pub fn took(
        &mut self,
        taken: Result<Vec<busmq_storage::Message>, Error>,
    ) -> Result<Vec<v1::Message>, Error> {
        let batch = plain(taken?);
        self.count(batch.len());
        Ok(batch)
    }

    fn count(&mut self, delivered: usize) {
        if let Some(r) = self.remaining.as_mut() {
            *r = r.saturating_sub(delivered as u64);
        }
        if delivered > 0
            && let Some(consumer) = &self.consumer
        {
            consumer
                .metrics()
                .delivered(self.delivery_mode())
                .increment(delivered as u64);
        }
    }

    /// Takes up to `max` messages (never more than [`Self::want`]) and
    /// counts them against `max`.
    pub async fn fetch(&mut self, max: u32) -> Result<Vec<v1::Message>, Error> {
        // Linked to the consume call's span, not inside it: a consumer
        // stream may live for days.
        let root = busmq_server::telemetry::RootSpan::new(|| {
            let span = tracing::debug_span!(
                parent: None,
                "consume.fetch",
                otel.name = "busmq.v1.Queues/Consume.Fetch",
                messaging.destination.name = self.queue.as_str(),
                max,
                messaging.batch.message_count = tracing::field::Empty,
            );
            span.follows_from(tracing::Span::current());
            span
        });
        let started = busmq_server::metrics::start_timer();
        let fetched = root.wrap(self.fetch_from_store(max)).await;
        if let Ok(batch) = &fetched {
            root.span()
                .record("messaging.batch.message_count", batch.len());
        }
        busmq_server::metrics::observe_since(
            crate::metrics::take_duration(self.delivery_mode()),
            started,
        );
        fetched
    }

    async fn fetch_from_store(&mut self, max: u32) -> Result<Vec<v1::Message>, Error> {
        if let Some(take) = self.take_request(max) {
            let taken = self.storage.take(&take.queue, take.max, take.mode).await;
            return self.took(taken);
        }
        let max = max.min(self.want());
        let batch: Vec<v1::Message> = match &mut self.mode {
            Mode::Persistent { next } => {
                let batch = self.storage.read(&self.queue, *next, max).await?;
                if let Some(last) = batch.last() {
                    *next = last.id + 1;
                }
                plain(batch)
            }
            // Lease mode (the modes that take returned above).
            _ => {
                let leased = self.lease(max).await?;
                let again = leased.iter().filter(|m| m.attempt > 1).count() as u64;
                if again > 0
                    && let Some(consumer) = &self.consumer
                {
                    consumer.metrics().redeliveries().increment(again);
                }
                leased
                    .into_iter()
                    .map(|m| v1::Message {
                        id: m.message.id,
                        payload: m.message.payload,
                        attempt: m.attempt,
                    })
                    .collect()
            }
        };
        self.count(batch.len());
        Ok(batch)
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

    /// When the queue's earliest lease runs out, in lease mode: looking
    /// again then puts it back.
    pub fn lease_expiry(&self) -> Option<Instant> {
        match &self.mode {
            Mode::Lease { next_expiry, .. } => *next_expiry,
            _ => None,
        }
    }

    /// How often the reliable lock must be renewed; `None` in other modes.
    pub fn renewal_period(&self) -> Option<Duration> {
        match &self.mode {
            Mode::Reliable { lock, .. } => Some(lock.lease / 3),
            _ => None,
        }
    }

    /// The reliable lock this reader holds, if any.
    pub fn lock(&self) -> Option<&ReliableLock> {
        match &self.mode {
            Mode::Reliable { lock, .. } => Some(lock),
            _ => None,
        }
    }

    /// Renews the reliable lock; an error once it was lost to another
    /// consumer. Other modes hold nothing to renew.
    pub async fn renew(&self) -> Result<(), Status> {
        match self.lock() {
            Some(lock) => renew(&*self.storage, &self.queue, lock).await,
            None => Ok(()),
        }
    }

    /// Ends consuming: releases the reliable lock, and gives a lease
    /// consumer's leases back at once when its `session_over` (a consumer
    /// that reached `max` still holds its last leases, to ack by token
    /// after its stream ended: HTTP's take-then-ack; they run out on their
    /// own). Failing that, the lock and each lease lapse on their own.
    pub async fn finish(&self, session_over: bool) {
        match &self.mode {
            Mode::Reliable { lock, .. } => {
                if let Err(e) = self.storage.end_reliable(&self.queue, lock).await {
                    // The next consumer is at most `reliable_lease` late.
                    tracing::warn!(queue = %self.queue, error = %e, "could not release reliable lock");
                }
            }
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
    }
}

/// Renews `lock` on `queue`; an error once it was lost to another consumer.
pub async fn renew(
    storage: &dyn Storage,
    queue: &QueueName,
    lock: &ReliableLock,
) -> Result<(), Status> {
    let held = storage
        .renew_reliable(queue, lock)
        .await
        .map_err(busmq_proto::to_status)?;
    if held {
        Ok(())
    } else {
        Err(busmq_proto::to_status(Error::ReliableLockLost(
            queue.to_string(),
        )))
    }
}

fn plain(batch: Vec<busmq_storage::Message>) -> Vec<v1::Message> {
    batch
        .into_iter()
        .map(|m| v1::Message {
            id: m.id,
            payload: m.payload,
            attempt: 0,
        })
        .collect()
}
