//! Cumulative acks of many queues in one call, awaited
//! ([`ManyConsumer::ack_many`](crate::ManyConsumer::ack_many)) or
//! pipelined ([`Consumer::ack_later`](crate::Consumer::ack_later),
//! [`ManyConsumer::ack_later`](crate::ManyConsumer::ack_later)).
//!
//! An awaited ack costs the consumer a round trip and a durable write per
//! batch before it looks at the next one. Since acks are cumulative, only
//! each queue's highest id matters: one background task per consumer sends
//! them, every queue with something new in one AckMany call, and acks asked
//! for while a call is on its way fold into the next (Kafka's
//! `commitAsync` of many partitions, RabbitMQ's unconfirmed `basic.ack`).
//! A consumer of a thousand queues then makes one call per round trip, not
//! a thousand. The state is a few numbers per queue, so memory stays
//! bounded however fast acks are asked for.

use std::sync::{Arc, Mutex, MutexGuard};

use busmq_proto::v1 as pb;
use busmq_proto::v1::ack_outcome::Outcome;
use tokio::sync::{Notify, watch};

use crate::trace_context::Transport as Channel;
use crate::{Error, Queue, Result};

type Client = pb::queues_client::QueuesClient<Channel>;

/// Acks `(queue, id)` pairs in one AckMany call: each queue's outcome (the
/// messages its ack removed, or why it failed), in the order given. A
/// queue's failure is also reported as its [`QueueEvent::Error`](crate::QueueEvent::Error);
/// `Err` means the call as a whole failed (and is reported on every queue).
pub(crate) async fn ack_many(client: &Client, acks: &[(&Queue, u64)]) -> Result<Vec<Result<u64>>> {
    let request = pb::AckManyRequest {
        acks: acks
            .iter()
            .map(|(queue, id)| pb::QueueAck {
                queue: queue.name().to_owned(),
                id: *id,
            })
            .collect(),
    };
    let response = match client.clone().ack_many(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            let err = Error::from(status);
            for (queue, _) in acks {
                queue.shared.failed(err.clone());
            }
            return Err(err);
        }
    };
    if response.outcomes.len() != acks.len() {
        return Err(Error::Protocol(format!(
            "AckMany answered {} outcomes for {} acks",
            response.outcomes.len(),
            acks.len()
        )));
    }
    Ok(acks
        .iter()
        .zip(response.outcomes)
        .map(|((queue, _), outcome)| match outcome.outcome {
            Some(Outcome::Removed(removed)) => Ok(removed),
            Some(Outcome::Failed(f)) => Err(queue
                .shared
                .failed(Error::Bus(busmq_proto::from_proto_error(&f)))),
            None => Err(queue.shared.failed(Error::Protocol(
                "AckMany answered an outcome with neither a count nor a failure".into(),
            ))),
        })
        .collect())
}

/// One queue's acks, as the task and the handle see them.
#[derive(Debug, Default)]
struct QueueAcks {
    /// The highest id asked for (or the one replacing a refused id).
    wanted: u64,
    /// The id last sent.
    sent: u64,
    /// Every id up to this one is acknowledged by the server.
    confirmed: u64,
    /// The latest ack that failed, with its id, until one for a higher id
    /// succeeds (acks are cumulative, so that one covers it).
    failed: Option<(u64, Error)>,
}

#[derive(Debug, Default)]
struct State {
    queues: Vec<QueueAcks>,
    /// The handle is gone: send what is left, then stop.
    closed: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the task: a new ack was asked for, or the handle is gone.
    asked: Notify,
    /// Counts the calls answered, for [`DeferredAcks::flush`] to wait on.
    answered: watch::Sender<u64>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The handle a consumer keeps on its ack task.
#[derive(Debug)]
pub(crate) struct DeferredAcks {
    shared: Arc<Shared>,
}

impl DeferredAcks {
    /// Starts the task that sends the acks of `queues` (addressed by their
    /// position) through `client`. It ends once this handle is dropped and
    /// the last ack asked for has been sent.
    pub(crate) fn start(client: Client, queues: Vec<Queue>) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queues: queues.iter().map(|_| QueueAcks::default()).collect(),
                closed: false,
            }),
            asked: Notify::new(),
            answered: watch::Sender::new(0),
        });
        tokio::spawn(send_acks(client, queues, Arc::clone(&shared)));
        DeferredAcks { shared }
    }

    /// Asks for `id` and everything below it of queue `queue` to be
    /// acknowledged. A lower id than one asked for before adds nothing,
    /// unless the server refused that one (an id never delivered): then
    /// this one replaces it.
    pub(crate) fn ack(&self, queue: usize, id: u64) {
        let mut state = self.shared.state();
        let Some(q) = state.queues.get_mut(queue) else {
            return;
        };
        let refused = q.failed.as_ref().map(|(id, _)| *id);
        if id > q.wanted || (refused == Some(q.wanted) && id != q.wanted) {
            q.wanted = id;
            if refused.is_some() {
                // The refusal concerned an id no longer asked for.
                q.failed = None;
            }
            drop(state);
            self.shared.asked.notify_one();
        }
    }

    /// Waits until the highest ack asked for so far of every queue has
    /// been answered: Ok once all are confirmed, else the first failure.
    pub(crate) async fn flush(&self) -> Result<()> {
        let targets: Vec<u64> = self
            .shared
            .state()
            .queues
            .iter()
            .map(|q| q.wanted)
            .collect();
        let mut answered = self.shared.answered.subscribe();
        loop {
            answered.borrow_and_update();
            {
                let state = self.shared.state();
                let mut done = true;
                for (q, &target) in state.queues.iter().zip(&targets) {
                    match &q.failed {
                        Some((id, e)) if *id >= target && q.confirmed < target => {
                            return Err(e.clone());
                        }
                        _ if q.confirmed < target => done = false,
                        _ => {}
                    }
                }
                if done {
                    return Ok(());
                }
            }
            answered
                .changed()
                .await
                .map_err(|_| Error::Protocol("the ack task ended".into()))?;
        }
    }
}

impl Drop for DeferredAcks {
    fn drop(&mut self) {
        self.shared.state().closed = true;
        self.shared.asked.notify_one();
    }
}

async fn send_acks(client: Client, queues: Vec<Queue>, shared: Arc<Shared>) {
    loop {
        // Registered before looking, so an ask made after the look wakes it.
        let asked = shared.asked.notified();
        let (batch, closed): (Vec<(usize, u64)>, bool) = {
            let mut state = shared.state();
            let batch = state
                .queues
                .iter_mut()
                .enumerate()
                .filter(|(_, q)| q.wanted != q.sent)
                .map(|(i, q)| {
                    // Lower than the last one sent only when it replaces a
                    // refused id.
                    q.sent = q.wanted;
                    (i, q.wanted)
                })
                .collect();
            (batch, state.closed)
        };
        if batch.is_empty() {
            if closed {
                return;
            }
            asked.await;
            continue;
        }
        let acks: Vec<(&Queue, u64)> = batch.iter().map(|&(i, id)| (&queues[i], id)).collect();
        let outcomes = ack_many(&client, &acks).await;
        {
            let mut state = shared.state();
            for (n, &(i, id)) in batch.iter().enumerate() {
                let q = &mut state.queues[i];
                let outcome = match &outcomes {
                    Ok(each) => each[n].as_ref().map(|_| ()).map_err(Clone::clone),
                    Err(e) => Err(e.clone()),
                };
                match outcome {
                    Ok(()) => {
                        q.confirmed = q.confirmed.max(id);
                        q.failed = None;
                    }
                    Err(e) => q.failed = Some((id, e)),
                }
            }
        }
        shared.answered.send_modify(|n| *n += 1);
    }
}
