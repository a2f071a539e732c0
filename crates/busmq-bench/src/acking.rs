//! How a busmq bench consumer acknowledges what it received: once per
//! received batch, per queue, pipelined (the consumer reads on while its
//! acks are on their way), as a client that keeps up would.

use std::future::Future;
use std::sync::Arc;

use busmq_client::{Consumer, Delivery, LeaseToken, ManyConsumer, Queue};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::Mode;

/// AckLeases calls of one consumer task in flight at once, at most: the
/// consumer waits for one to finish before sending more.
const LEASE_ACKS_IN_FLIGHT: usize = 64;

/// What one consumer task collects of the batch it is reading, queue by
/// queue, and how it acks that once the batch ends.
pub enum Acking {
    /// Unreliable and persistent consumers ack nothing.
    Nothing,
    /// Reliable: each queue's highest id of the batch, acked cumulatively.
    Cumulative { last: Vec<(usize, u64)> },
    /// Lease: every delivery's token, one AckLeases call per queue.
    Leases {
        tokens: Vec<(usize, Vec<LeaseToken>)>,
        calls: LeaseAcks,
    },
}

impl Acking {
    pub fn for_mode(mode: Mode) -> Acking {
        match mode {
            Mode::Unreliable | Mode::Persistent => Acking::Nothing,
            Mode::Reliable => Acking::Cumulative { last: Vec::new() },
            Mode::Lease => Acking::Leases {
                tokens: Vec::new(),
                calls: LeaseAcks::new(),
            },
        }
    }

    /// Notes one delivery of queue `queue` (its index among the consumer's
    /// queues). A batch holds each queue's messages together, in id order,
    /// so a new queue starts a new entry.
    pub fn note(&mut self, queue: usize, delivery: &Delivery) -> anyhow::Result<()> {
        match self {
            Acking::Nothing => {}
            Acking::Cumulative { last } => match last.last_mut() {
                Some((q, id)) if *q == queue => *id = delivery.id,
                _ => last.push((queue, delivery.id)),
            },
            Acking::Leases { tokens, .. } => {
                let token = delivery
                    .lease_token()
                    .ok_or_else(|| anyhow::anyhow!("a lease-mode delivery came without a token"))?;
                match tokens.last_mut() {
                    Some((q, list)) if *q == queue => list.push(token),
                    _ => tokens.push((queue, vec![token])),
                }
            }
        }
        Ok(())
    }

    /// The run is over: waits for the acks still on their way through
    /// `consumer`; fails if any was refused.
    pub async fn finish(&mut self, consumer: &impl AckTarget) -> anyhow::Result<()> {
        match self {
            Acking::Nothing => {}
            Acking::Cumulative { .. } => consumer.flush_acks().await?,
            Acking::Leases { calls, .. } => {
                while let Some(done) = calls.calls.next().await {
                    done??;
                }
            }
        }
        Ok(())
    }

    /// The batch ended: acks what it noted, through `consumer`.
    pub async fn batch_ended(&mut self, consumer: &mut impl AckTarget) -> anyhow::Result<()> {
        match self {
            Acking::Nothing => {}
            Acking::Cumulative { last } => {
                for (q, id) in last.drain(..) {
                    consumer.ack_later(q, id);
                }
            }
            Acking::Leases { tokens, calls } => {
                for (q, list) in tokens.drain(..) {
                    calls.send(consumer.queue(q).clone(), list).await?;
                }
            }
        }
        Ok(())
    }
}

/// A consumer of one queue or of many, as [`Acking`] acks through it.
pub trait AckTarget {
    /// Acks cumulatively up to `id` in queue `queue`, pipelined.
    fn ack_later(&mut self, queue: usize, id: u64);
    /// Queue `queue`'s handle.
    fn queue(&self, queue: usize) -> &Queue;
    /// Waits until the pipelined acks asked for are answered.
    fn flush_acks(&self) -> impl Future<Output = busmq_client::Result<()>> + Send;
}

impl AckTarget for Consumer {
    fn ack_later(&mut self, _queue: usize, id: u64) {
        Consumer::ack_later(self, id);
    }

    fn queue(&self, _queue: usize) -> &Queue {
        Consumer::queue(self)
    }

    fn flush_acks(&self) -> impl Future<Output = busmq_client::Result<()>> + Send {
        Consumer::flush_acks(self)
    }
}

impl AckTarget for ManyConsumer {
    fn ack_later(&mut self, queue: usize, id: u64) {
        ManyConsumer::ack_later(self, queue, id);
    }

    fn queue(&self, queue: usize) -> &Queue {
        &self.queues()[queue]
    }

    fn flush_acks(&self) -> impl Future<Output = busmq_client::Result<()>> + Send {
        ManyConsumer::flush_acks(self)
    }
}

/// AckLeases calls on their way, each a task of its own so it progresses
/// while the consumer reads; a lease that was not acked fails the run.
pub struct LeaseAcks {
    permits: Arc<Semaphore>,
    calls: FuturesUnordered<JoinHandle<anyhow::Result<()>>>,
}

impl LeaseAcks {
    fn new() -> Self {
        LeaseAcks {
            permits: Arc::new(Semaphore::new(LEASE_ACKS_IN_FLIGHT)),
            calls: FuturesUnordered::new(),
        }
    }

    async fn send(&mut self, queue: Queue, tokens: Vec<LeaseToken>) -> anyhow::Result<()> {
        while let Some(Some(done)) = self.calls.next().now_or_never() {
            done??;
        }
        let permit = Arc::clone(&self.permits).acquire_owned().await?;
        self.calls.push(tokio::spawn(async move {
            let acked = queue.ack_leases(&tokens).await?;
            drop(permit);
            anyhow::ensure!(
                acked.all_acked(),
                "lease acks of {} refused: {} lapsed, {} unknown",
                queue.name(),
                acked.lapsed.len(),
                acked.unknown.len()
            );
            Ok(())
        }));
        Ok(())
    }
}
