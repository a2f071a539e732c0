//! The lease-mode rules of a [`Queue`]: messages leased to competing
//! consumers for a visibility timeout, acked one by one, put back at the
//! front of the queue (in id order) on nack, expiry or release, and
//! dead-lettered once they used up the queue's deliveries. Plain functions
//! of the queue and the present time, as in [`super::queue`].
//!
//! Expiry needs no timer: every lease call (and settle, release, reliable
//! start) first puts back what ran out, and reports when the next lease
//! runs out so a waiting consumer calls again then.

use std::time::Duration;

use tokio::time::Instant;

use super::change::Recorder;
use super::queue::{Queue, deadline};
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

/// What a lease call asks for: see [`crate::Storage::lease`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeaseAsk<'a> {
    pub(crate) owner: &'a str,
    pub(crate) max: u32,
    pub(crate) visibility: Duration,
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

    /// Leases up to `ask.max` messages from the front to `ask.owner` for
    /// `ask.visibility`, after putting back the leases that ran out (see
    /// [`crate::Storage::lease`]). Also returns how many expired leases went
    /// back, for the other waiting consumers to hear of.
    pub(crate) fn lease(
        &mut self,
        name: &QueueName,
        ask: LeaseAsk<'_>,
        now: Instant,
        rec: &mut Recorder,
        dead: &mut Vec<Message>,
    ) -> Result<(Leases, u64)> {
        let LeaseAsk {
            owner,
            max,
            visibility,
        } = ask;
        if self.lock_holder(now).is_some() {
            return Err(Error::ReliableConsumerActive(name.to_string()));
        }
        let requeued = self.reclaim_expired(name, now, rec, dead);
        let n = self.ready.len().min(max as usize);
        let until = deadline(now, visibility);
        let mut messages = Vec::with_capacity(n);
        for message in self.ready.drain(..n) {
            let attempt = self.returns.remove(&message.id).unwrap_or(0) + 1;
            rec.delivery(
                name,
                message.id,
                Some(Delivery {
                    attempts: attempt,
                    lease: Some((owner.to_owned(), until)),
                }),
            );
            self.leases.insert(
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
            self.consumed += n as u64;
            rec.meta(name, self);
        }
        let next_expiry = self.next_expiry(now);
        Ok((
            Leases {
                messages,
                next_expiry,
            },
            requeued,
        ))
    }

    /// Settles the delivery `token` names (see [`crate::Storage::settle`]),
    /// after putting back the leases that ran out. Also returns how many
    /// messages went back to `ready`.
    pub(crate) fn settle(
        &mut self,
        name: &QueueName,
        token: LeaseToken,
        settlement: Settlement,
        now: Instant,
        rec: &mut Recorder,
        dead: &mut Vec<Message>,
    ) -> (Result<Settled>, u64) {
        let mut requeued = self.reclaim_expired(name, now, rec, dead);
        let lease = match self.leases.remove(&token.id) {
            Some(lease) if lease.attempt == token.attempt => lease,
            other => {
                // Not this delivery's lease: leave it as it was.
                if let Some(lease) = other {
                    self.leases.insert(token.id, lease);
                }
                return (Err(self.stale_token(name, token)), requeued);
            }
        };
        let settled = match settlement {
            Settlement::Ack => {
                rec.remove(name, token.id, token.id);
                Settled::Acked
            }
            Settlement::Nack => self.put_back(name, lease, rec, dead),
        };
        if settled == Settled::Requeued {
            requeued += 1;
        }
        (Ok(settled), requeued)
    }

    /// Puts back every lease `owner` holds, and those that ran out (see
    /// [`crate::Storage::release_leases`]): how many of `owner`'s were
    /// released (requeued or dead-lettered), and how many messages went
    /// back to `ready` in all.
    pub(crate) fn release(
        &mut self,
        name: &QueueName,
        owner: &str,
        now: Instant,
        rec: &mut Recorder,
        dead: &mut Vec<Message>,
    ) -> (u64, u64) {
        let expired = self.reclaim_expired(name, now, rec, dead);
        let before = dead.len();
        let mine = self.put_back_where(name, rec, dead, |l| l.owner == owner);
        let released = mine + (dead.len() - before) as u64;
        (released, expired + mine)
    }
}

#[cfg(test)]
mod tests {
    use busmq_core::Limits;

    use super::super::queue::{ids, queue_of};
    use super::*;
    use crate::TakeMode;

    const VISIBILITY: Duration = Duration::from_secs(30);

    fn name() -> QueueName {
        QueueName::parse("q", &Limits::default()).unwrap()
    }

    /// Leases `max` messages to `owner` at `now`.
    fn lease(q: &mut Queue, owner: &str, max: u32, now: Instant) -> Leases {
        let ask = LeaseAsk {
            owner,
            max,
            visibility: VISIBILITY,
        };
        let (leases, _) = q
            .lease(&name(), ask, now, &mut Recorder::new(true), &mut Vec::new())
            .unwrap();
        leases
    }

    fn settle(
        q: &mut Queue,
        id: u64,
        attempt: u32,
        how: Settlement,
        now: Instant,
    ) -> Result<Settled> {
        let token = LeaseToken { id, attempt };
        q.settle(
            &name(),
            token,
            how,
            now,
            &mut Recorder::new(true),
            &mut Vec::new(),
        )
        .0
    }

    #[test]
    fn leased_messages_leave_ready_until_acked() {
        let now = Instant::now();
        let mut q = queue_of(3);
        let leases = lease(&mut q, "a", 2, now);
        assert_eq!(ids(leases.messages.iter().map(|l| &l.message)), [1, 2]);
        assert!(leases.messages.iter().all(|l| l.attempt == 1));
        assert_eq!(leases.next_expiry, Some(VISIBILITY));
        assert_eq!(ids(&q.ready), [3]);
        assert_eq!(
            settle(&mut q, 1, 1, Settlement::Ack, now).unwrap(),
            Settled::Acked
        );
        assert!(!q.leases.contains_key(&1));
        // An acked delivery is gone, as one never made.
        assert!(matches!(
            settle(&mut q, 1, 1, Settlement::Ack, now),
            Err(Error::UnknownLease { .. })
        ));
        assert!(matches!(
            settle(&mut q, 3, 1, Settlement::Ack, now),
            Err(Error::UnknownLease { .. })
        ));
    }

    #[test]
    fn a_nacked_message_goes_back_ahead_of_newer_ones_with_its_attempt() {
        let now = Instant::now();
        let mut q = queue_of(4);
        lease(&mut q, "a", 2, now);
        assert_eq!(
            settle(&mut q, 2, 1, Settlement::Nack, now).unwrap(),
            Settled::Requeued
        );
        assert_eq!(ids(&q.ready), [2, 3, 4]);
        assert_eq!(
            settle(&mut q, 1, 1, Settlement::Nack, now).unwrap(),
            Settled::Requeued
        );
        assert_eq!(ids(&q.ready), [1, 2, 3, 4]);
        let again = lease(&mut q, "b", 1, now);
        assert_eq!(
            (again.messages[0].message.id, again.messages[0].attempt),
            (1, 2)
        );
        // The first delivery's token is stale now.
        assert!(matches!(
            settle(&mut q, 1, 1, Settlement::Ack, now),
            Err(Error::LeaseExpired { .. })
        ));
    }

    #[test]
    fn leases_that_ran_out_are_put_back_by_the_next_call() {
        let now = Instant::now();
        let mut q = queue_of(2);
        lease(&mut q, "a", 1, now);
        let later = now + VISIBILITY;
        let ask = LeaseAsk {
            owner: "b",
            max: 0,
            visibility: VISIBILITY,
        };
        let (leases, requeued) = q
            .lease(
                &name(),
                ask,
                later,
                &mut Recorder::new(true),
                &mut Vec::new(),
            )
            .unwrap();
        assert_eq!(requeued, 1);
        assert!(leases.messages.is_empty());
        assert_eq!(ids(&q.ready), [1, 2]);
        assert!(matches!(
            settle(&mut q, 1, 1, Settlement::Ack, later),
            Err(Error::LeaseExpired { .. })
        ));
    }

    #[test]
    fn the_last_allowed_delivery_dead_letters_on_nack() {
        let now = Instant::now();
        let mut q = queue_of(2);
        q.max_deliveries = 2;
        lease(&mut q, "a", 1, now);
        settle(&mut q, 1, 1, Settlement::Nack, now).unwrap();
        lease(&mut q, "a", 1, now);
        let mut dead = Vec::new();
        let token = LeaseToken { id: 1, attempt: 2 };
        let (settled, requeued) = q.settle(
            &name(),
            token,
            Settlement::Nack,
            now,
            &mut Recorder::new(true),
            &mut dead,
        );
        assert_eq!(settled.unwrap(), Settled::DeadLettered);
        assert_eq!(requeued, 0);
        assert_eq!(ids(&dead), [1]);
        assert_eq!(ids(&q.ready), [2]);
    }

    #[test]
    fn release_gives_back_only_the_owners_leases() {
        let now = Instant::now();
        let mut q = queue_of(4);
        lease(&mut q, "a", 1, now);
        lease(&mut q, "b", 2, now);
        let (released, requeued) =
            q.release(&name(), "b", now, &mut Recorder::new(true), &mut Vec::new());
        assert_eq!((released, requeued), (2, 2));
        assert_eq!(ids(&q.ready), [2, 3, 4]);
        assert_eq!(q.leases.keys().copied().collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn no_leases_while_a_reliable_consumer_holds_the_queue() {
        let now = Instant::now();
        let mut q = queue_of(1);
        q.reliable = Some(("r".into(), now + Duration::from_secs(5)));
        let ask = LeaseAsk {
            owner: "a",
            max: 1,
            visibility: VISIBILITY,
        };
        let refused = q.lease(&name(), ask, now, &mut Recorder::new(true), &mut Vec::new());
        assert!(matches!(refused, Err(Error::ReliableConsumerActive(_))));
        assert_eq!(ids(&q.ready), [1]);
    }

    #[test]
    fn no_pending_takes_while_leases_are_outstanding() {
        // Were 2 and 3 pending beside leased 1, nacking 1 would put it
        // below them in `ready` and a requeue would give 2, 3, 1.
        let now = Instant::now();
        let mut q = queue_of(3);
        lease(&mut q, "a", 1, now);
        let mut rec = Recorder::new(true);
        let refused = q.take(&name(), 2, TakeMode::Pending, &mut rec);
        assert!(matches!(refused, Err(Error::LeaseConsumersActive(_))));
        assert_eq!(ids(&q.ready), [2, 3], "nothing was taken");
        assert!(q.pending.is_empty());
        let removed = q.take(&name(), 1, TakeMode::Remove, &mut rec).unwrap();
        assert_eq!(ids(&removed), [2], "removing takes stay allowed");
    }
}
