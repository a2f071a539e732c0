//! Lease mode of the in-process stores ([`QueueStore`]): messages leased
//! to competing consumers for a visibility timeout, acked one by one, put
//! back at the front of the queue (in id order) on nack, expiry or release,
//! and dead-lettered once they used up the queue's deliveries.
//!
//! Expiry needs no timer: every lease call (and settle, release, reliable
//! start) first puts back what ran out, and reports when the next lease
//! runs out so a waiting consumer calls again then.

use std::time::Duration;

use tokio::time::Instant;

use crate::queue_store::{Journal, Queue, QueueStore, Recorder, deadline};
use crate::{
    Error, LeaseToken, LeasedMessage, Leases, Message, QueueName, Result, Settled, Settlement,
};

/// A message leased to a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub(crate) message: Message,
    /// This delivery's number, 1 for the first.
    pub(crate) attempt: u32,
    pub(crate) owner: String,
    /// The message goes back to the queue at this time unless settled.
    pub(crate) until: Instant,
}

/// What a journal records about the deliveries of one stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Deliveries so far (the current one included while leased).
    pub attempts: u32,
    /// Owner and end of the current lease; `None` while waiting in the
    /// queue.
    pub lease: Option<(String, Instant)>,
}

impl Delivery {
    /// A message delivered `attempts` times and put back.
    pub fn returned(attempts: u32) -> Self {
        Delivery {
            attempts,
            lease: None,
        }
    }
}

impl Queue {
    /// Drops the delivery counts of messages that left the queue.
    pub(crate) fn forget_returns(&mut self, ids: impl IntoIterator<Item = u64>) {
        if !self.returns.is_empty() {
            for id in ids {
                self.returns.remove(&id);
            }
        }
    }

    /// Puts an unsettled lease back at its id's place in `ready`, or into
    /// `dead` when it used up the queue's deliveries.
    fn put_back(
        &mut self,
        name: &QueueName,
        lease: Lease,
        rec: &mut Recorder,
        dead: &mut Vec<Message>,
    ) -> Settled {
        let id = lease.message.id;
        if self.max_deliveries > 0 && lease.attempt >= self.max_deliveries {
            rec.remove(name, id, id);
            dead.push(lease.message);
            return Settled::DeadLettered;
        }
        self.returns.insert(id, lease.attempt);
        rec.delivery(name, id, Some(Delivery::returned(lease.attempt)));
        let at = self.ready.partition_point(|m| m.id < id);
        self.ready.insert(at, lease.message);
        Settled::Requeued
    }

    /// Puts back every lease for which `pick` is true, in id order; returns
    /// how many went back to `ready`.
    fn put_back_where(
        &mut self,
        name: &QueueName,
        rec: &mut Recorder,
        dead: &mut Vec<Message>,
        pick: impl Fn(&Lease) -> bool,
    ) -> u64 {
        let ids: Vec<u64> = self
            .leases
            .values()
            .filter(|l| pick(l))
            .map(|l| l.message.id)
            .collect();
        let mut requeued = 0;
        for id in ids {
            if let Some(lease) = self.leases.remove(&id)
                && self.put_back(name, lease, rec, dead) == Settled::Requeued
            {
                requeued += 1;
            }
        }
        requeued
    }

    /// Puts back every lease that ran out by `now`; returns how many went
    /// back to `ready`.
    pub(crate) fn reclaim_expired(
        &mut self,
        name: &QueueName,
        now: Instant,
        rec: &mut Recorder,
        dead: &mut Vec<Message>,
    ) -> u64 {
        if self.leases.values().all(|l| l.until > now) {
            return 0;
        }
        self.put_back_where(name, rec, dead, |l| l.until <= now)
    }

    /// Time until the earliest lease runs out.
    fn next_expiry(&self, now: Instant) -> Option<Duration> {
        self.leases
            .values()
            .map(|l| l.until.saturating_duration_since(now))
            .min()
    }

    /// Why `token` settles nothing: a delivery that happened but is no
    /// longer leased under this attempt is expired; anything else unknown.
    fn stale_token(&self, name: &QueueName, token: LeaseToken) -> Error {
        let delivered = match self.leases.get(&token.id) {
            Some(lease) => lease.attempt,
            None => self.returns.get(&token.id).copied().unwrap_or(0),
        };
        let (queue, id, attempt) = (name.to_string(), token.id, token.attempt);
        if attempt <= delivered {
            Error::LeaseExpired { queue, id, attempt }
        } else {
            Error::UnknownLease { queue, id, attempt }
        }
    }
}

impl<J: Journal> QueueStore<J> {
    pub(crate) async fn lease_messages(
        &self,
        queue: &QueueName,
        owner: &str,
        max: u32,
        visibility: Duration,
    ) -> Result<Leases> {
        busmq_core::check_visibility(visibility)?;
        crate::check_lease_owner(owner)?;
        let now = Instant::now();
        let (leases, requeued) = self
            .with_queue_dl(queue, |q, rec, dead| {
                if q.lock_holder(now).is_some() {
                    return Err(Error::ReliableConsumerActive(queue.to_string()));
                }
                let requeued = q.reclaim_expired(queue, now, rec, dead);
                let n = q.ready.len().min(max as usize);
                let until = deadline(now, visibility);
                let mut messages = Vec::with_capacity(n);
                for message in q.ready.drain(..n) {
                    let attempt = q.returns.remove(&message.id).unwrap_or(0) + 1;
                    rec.delivery(
                        queue,
                        message.id,
                        Some(Delivery {
                            attempts: attempt,
                            lease: Some((owner.to_owned(), until)),
                        }),
                    );
                    q.leases.insert(
                        message.id,
                        Lease {
                            message: message.clone(),
                            attempt,
                            owner: owner.to_owned(),
                            until,
                        },
                    );
                    messages.push(LeasedMessage { message, attempt });
                }
                if n > 0 {
                    q.consumed += n as u64;
                    rec.meta(queue, q);
                }
                let next_expiry = q.next_expiry(now);
                Ok((
                    Leases {
                        messages,
                        next_expiry,
                    },
                    requeued,
                ))
            })
            .await??;
        // Expired leases this call put back and did not take itself are
        // for the other waiting consumers.
        if requeued > leases.messages.len() as u64 {
            self.notify_data(queue);
        }
        Ok(leases)
    }

    pub(crate) async fn settle_lease(
        &self,
        queue: &QueueName,
        token: LeaseToken,
        settlement: Settlement,
    ) -> Result<Settled> {
        token.check()?;
        let now = Instant::now();
        let (settled, requeued) = self
            .with_queue_dl(queue, |q, rec, dead| {
                let mut requeued = q.reclaim_expired(queue, now, rec, dead);
                let lease = match q.leases.remove(&token.id) {
                    Some(lease) if lease.attempt == token.attempt => lease,
                    other => {
                        // Not this delivery's lease: leave it as it was.
                        if let Some(lease) = other {
                            q.leases.insert(token.id, lease);
                        }
                        return (Err(q.stale_token(queue, token)), requeued);
                    }
                };
                let settled = match settlement {
                    Settlement::Ack => {
                        rec.remove(queue, token.id, token.id);
                        Settled::Acked
                    }
                    Settlement::Nack => q.put_back(queue, lease, rec, dead),
                };
                if settled == Settled::Requeued {
                    requeued += 1;
                }
                (Ok(settled), requeued)
            })
            .await?;
        if requeued > 0 {
            self.notify_data(queue);
        }
        settled
    }

    pub(crate) async fn release_owner(&self, queue: &QueueName, owner: &str) -> Result<u64> {
        let now = Instant::now();
        let (released, requeued) = self
            .with_queue_dl(queue, |q, rec, dead| {
                let expired = q.reclaim_expired(queue, now, rec, dead);
                let before = dead.len();
                let mine = q.put_back_where(queue, rec, dead, |l| l.owner == owner);
                let released = mine + (dead.len() - before) as u64;
                (released, expired + mine)
            })
            .await?;
        if requeued > 0 {
            self.notify_data(queue);
        }
        Ok(released)
    }
}
