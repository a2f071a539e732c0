//! Pipelined cumulative acks for reliable consumers
//! ([`Consumer::ack_later`](crate::Consumer::ack_later)).
//!
//! An awaited ack costs the consumer a round trip and a durable write per
//! batch before it looks at the next one. Since acks are cumulative, only
//! the highest id matters: one background task sends it, and acks asked
//! for while one is on its way fold into the next (Kafka's
//! `commitAsync`, RabbitMQ's unconfirmed `basic.ack`). The state is two
//! numbers in watch channels, so memory stays bounded however fast acks
//! are asked for.

use std::sync::Arc;

use tokio::sync::watch;

use crate::{Error, Queue, Result};

/// What the ack task has done so far.
#[derive(Debug, Clone, Default)]
struct Progress {
    /// Every id up to this one is acknowledged by the server.
    confirmed: u64,
    /// The latest ack that failed, with its id, until one for a higher id
    /// succeeds (acks are cumulative, so that one covers it).
    failed: Option<(u64, Error)>,
}

/// The handle a consumer keeps on its ack task.
#[derive(Debug)]
pub(crate) struct DeferredAcks {
    wanted: watch::Sender<u64>,
    /// Shared with the task: it reports answers, the handle clears a
    /// refusal that a new ack replaces.
    progress: Arc<watch::Sender<Progress>>,
}

impl DeferredAcks {
    /// Starts the task that sends `queue`'s acks. It ends once this
    /// handle is dropped and the last ack asked for has been sent.
    pub(crate) fn start(queue: Queue) -> Self {
        let (wanted, rx) = watch::channel(0);
        let progress = Arc::new(watch::Sender::new(Progress::default()));
        tokio::spawn(send_acks(queue, rx, Arc::clone(&progress)));
        DeferredAcks { wanted, progress }
    }

    /// Asks for `id` and everything below it to be acknowledged. A lower
    /// id than one asked for before adds nothing, unless the server refused
    /// that one (an id never delivered): then this one replaces it.
    pub(crate) fn ack(&self, id: u64) {
        let refused = self.progress.borrow().failed.as_ref().map(|(id, _)| *id);
        let replaced = self.wanted.send_if_modified(|wanted| {
            let replace = id > *wanted || (refused == Some(*wanted) && id != *wanted);
            if replace {
                *wanted = id;
            }
            replace
        });
        if replaced && refused.is_some() {
            // The refusal concerned an id no longer asked for.
            self.progress.send_modify(|p| p.failed = None);
        }
    }

    /// Waits until the ack of the highest id asked for so far has been
    /// answered: Ok once it is confirmed, its error if it failed.
    pub(crate) async fn flush(&self) -> Result<()> {
        let target = *self.wanted.borrow();
        let mut progress = self.progress.subscribe();
        let done = progress
            .wait_for(|p| {
                p.confirmed >= target || p.failed.as_ref().is_some_and(|(id, _)| *id >= target)
            })
            .await
            .map_err(|_| Error::Protocol("the ack task ended".into()))?;
        match &done.failed {
            Some((_, e)) if done.confirmed < target => Err(e.clone()),
            _ => Ok(()),
        }
    }
}

async fn send_acks(
    queue: Queue,
    mut wanted: watch::Receiver<u64>,
    progress: Arc<watch::Sender<Progress>>,
) {
    let mut sent = 0;
    loop {
        let id = *wanted.borrow_and_update();
        // Lower than the last one sent only when it replaces a refused id.
        if id != sent {
            // `Queue::ack` reports a failure as a queue event as well.
            let outcome = queue.ack(id).await;
            sent = id;
            progress.send_modify(|p| match outcome {
                Ok(_) => {
                    p.confirmed = p.confirmed.max(id);
                    p.failed = None;
                }
                Err(e) => p.failed = Some((id, e)),
            });
            continue;
        }
        // An error means the consumer is gone and its last ack was sent.
        if wanted.changed().await.is_err() {
            return;
        }
    }
}
