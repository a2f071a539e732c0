//! One queue and the rules that change it: take, pending and requeue,
//! dead letters, expiry. Plain data and functions (no locks, channels or
//! timers): [`super::QueueStore`] runs them under its lock and journals
//! what they record. Lease rules are in [`super::lease`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use busmq_core::{DEAD_LETTER_TTL_SECS, NameMap};
use tokio::time::Instant;

use super::change::{Change, QueueMeta, Recorder};
use super::lease::{Delivery, Lease};
use crate::{Error, Message, QueueInfo, QueueName, Result, TakeMode};

/// One queue. Invariant: `pending` and `ready` are each sorted by id, and
/// every pending id is below every ready id (pending messages came from the
/// front of `ready`, and go back to its front as a whole). So the pending
/// messages are exactly the stored messages with id <= [`Queue::pending_hi`],
/// which is how a journal can record them. Leased messages are in neither:
/// a lease taken from the front of `ready` goes back into `ready` at its
/// id's place, which keeps `ready` sorted (see [`super::lease`]); leases
/// and a reliable consumer never coexist, so pending messages stay below.
#[derive(Debug)]
pub struct Queue {
    pub(crate) ready: VecDeque<Message>,
    pub(crate) pending: VecDeque<Message>,
    pub(crate) next_id: u64,
    /// Highest id ever taken as pending: acks above it are unknown.
    pub(crate) delivered_hi: u64,
    pub(crate) attachments: u64,
    pub(crate) ttl: Duration,
    /// Set while the queue has no attachments.
    pub(crate) expires_at: Option<Instant>,
    pub(crate) reliable: Option<(String, Instant)>,
    pub(crate) pushed: u64,
    pub(crate) consumed: u64,
    pub(crate) metadata: HashMap<String, String>,
    /// Messages leased in lease mode, by id.
    pub(crate) leases: BTreeMap<u64, Lease>,
    /// Deliveries so far of stored messages that were delivered and put
    /// back (nack, expiry, reliable requeue); absent means none.
    pub(crate) returns: HashMap<u64, u32>,
    /// Deliveries before a message is dead-lettered; 0 is unlimited.
    pub(crate) max_deliveries: u32,
}

impl Queue {
    pub(crate) fn new(ttl: Duration) -> Self {
        Queue {
            ready: VecDeque::new(),
            pending: VecDeque::new(),
            next_id: 1,
            delivered_hi: 0,
            attachments: 0,
            ttl,
            expires_at: None,
            reliable: None,
            pushed: 0,
            consumed: 0,
            metadata: HashMap::new(),
            leases: BTreeMap::new(),
            returns: HashMap::new(),
            max_deliveries: 0,
        }
    }

    pub(crate) fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Takes up to `max` messages from the front (see [`Storage::take`]),
    /// recording the change to `name`.
    pub(crate) fn take(
        &mut self,
        name: &QueueName,
        max: u32,
        mode: TakeMode,
        rec: &mut Recorder,
    ) -> Result<Vec<Message>> {
        // A leased message nacked later goes back below what this would
        // make pending, and pending messages must stay below.
        if mode == TakeMode::Pending && !self.leases.is_empty() {
            return Err(Error::LeaseConsumersActive(name.to_string()));
        }
        let n = self.ready.len().min(max as usize);
        let taken: Vec<Message> = self.ready.drain(..n).collect();
        let (Some(first), Some(last)) = (taken.first(), taken.last()) else {
            return Ok(taken);
        };
        self.consumed += taken.len() as u64;
        match mode {
            // A crash that loses this change leaves the messages ready
            // instead of pending: delivered again, as reliable mode allows
            // for anything not acked. So delivery waits only for the pushes
            // it takes to be durable, not for a commit of its own.
            TakeMode::Pending => {
                self.delivered_hi = self.delivered_hi.max(last.id);
                self.pending.extend(taken.iter().cloned());
                rec.lazy = true;
            }
            // Ready ids are above every pending id, so the range holds no
            // pending message; it may hold leased ones, which `remove_ids`
            // leaves out.
            TakeMode::Remove if self.leases.is_empty() => {
                rec.remove(name, first.id, last.id);
                self.forget_returns(taken.iter().map(|m| m.id));
            }
            TakeMode::Remove => {
                rec.remove_ids(name, taken.iter().map(|m| m.id));
                self.forget_returns(taken.iter().map(|m| m.id));
            }
        }
        rec.meta(name, self);
        Ok(taken)
    }

    /// The queue's state at `now`, as [`crate::Storage::info`] reports it.
    pub(crate) fn info(&self, now: Instant) -> QueueInfo {
        QueueInfo {
            count: (self.ready.len() + self.pending.len() + self.leases.len()) as u64,
            ttl: self.ttl,
            attachments: self.attachments,
            pending: self.pending.len() as u64,
            next_id: self.next_id,
            pushed: self.pushed,
            consumed: self.consumed,
            reliable_consumer: self.lock_holder(now).is_some(),
            leased: self.leases.len() as u64,
            max_deliveries: self.max_deliveries,
        }
    }

    pub(crate) fn lock_holder(&self, now: Instant) -> Option<&str> {
        match &self.reliable {
            Some((owner, until)) if *until > now => Some(owner),
            _ => None,
        }
    }

    /// The highest pending id, 0 when nothing is pending.
    pub fn pending_hi(&self) -> u64 {
        self.pending.back().map_or(0, |m| m.id)
    }

    /// Moves every pending message back to the front of `ready`, or to
    /// `dead` when it used up its deliveries; returns how many went back.
    pub(crate) fn requeue_pending(
        &mut self,
        name: &QueueName,
        rec: &mut Recorder,
        dead: &mut Vec<Message>,
    ) -> u64 {
        let mut n = 0;
        let mut dead_here = Vec::new();
        while let Some(m) = self.pending.pop_back() {
            let delivered = self.returns.get(&m.id).copied().unwrap_or(0) + 1;
            if self.max_deliveries > 0 && delivered >= self.max_deliveries {
                self.returns.remove(&m.id);
                rec.remove(name, m.id, m.id);
                dead_here.push(m);
                continue;
            }
            self.returns.insert(m.id, delivered);
            rec.delivery(name, m.id, Some(Delivery::returned(delivered)));
            self.ready.push_front(m);
            n += 1;
        }
        dead.extend(dead_here.into_iter().rev());
        n
    }

    /// Everything about the queue except its messages and metadata.
    pub(crate) fn meta(&self) -> QueueMeta {
        QueueMeta {
            ttl: self.ttl,
            attachments: self.attachments,
            expires_at: self.expires_at,
            reliable: self.reliable.clone(),
            next_id: self.next_id,
            delivered_hi: self.delivered_hi,
            pending_hi: self.pending_hi(),
            pushed: self.pushed,
            consumed: self.consumed,
            max_deliveries: self.max_deliveries,
        }
    }

    /// Rebuilds a queue from what a journal recorded: its meta, its stored
    /// messages in id order, the delivery records of its messages, and its
    /// metadata. Delivery records of messages not stored are ignored.
    pub(crate) fn restore(
        meta: QueueMeta,
        messages: impl IntoIterator<Item = Message>,
        mut deliveries: HashMap<u64, Delivery>,
        metadata: HashMap<String, String>,
    ) -> Self {
        let mut q = Queue::new(meta.ttl);
        for m in messages {
            let delivery = deliveries.remove(&m.id);
            if m.id <= meta.pending_hi {
                if let Some(d) = delivery {
                    q.returns.insert(m.id, d.attempts);
                }
                q.pending.push_back(m);
                continue;
            }
            match delivery {
                Some(Delivery {
                    attempts,
                    lease: Some((owner, until)),
                }) => {
                    q.leases.insert(
                        m.id,
                        Lease {
                            message: m,
                            attempt: attempts,
                            owner,
                            until,
                        },
                    );
                }
                Some(d) => {
                    q.returns.insert(m.id, d.attempts);
                    q.ready.push_back(m);
                }
                None => q.ready.push_back(m),
            }
        }
        q.max_deliveries = meta.max_deliveries;
        q.next_id = meta.next_id;
        q.delivered_hi = meta.delivered_hi;
        q.attachments = meta.attachments;
        q.expires_at = meta.expires_at;
        q.reliable = meta.reliable;
        q.pushed = meta.pushed;
        q.consumed = meta.consumed;
        q.metadata = metadata;
        q
    }
}

/// `now + d`, saturating far in the future instead of overflowing: a
/// direct caller of the trait may pass any duration.
pub(crate) fn deadline(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// Where [`dead_letter`] put the dead letters.
pub(crate) struct DeadLetterQueue {
    pub(crate) name: QueueName,
    /// Its new expiry deadline, when it has no attachments.
    pub(crate) expires_at: Option<Instant>,
    /// An expired queue of that name was replaced.
    pub(crate) replaced_expired: bool,
}

/// Appends `dead` (in id order) to the dead-letter queue of `source`,
/// creating it unattached with [`DEAD_LETTER_TTL_SECS`] if needed. An
/// unattached one lives its ttl from now: from its latest dead letter.
pub(crate) fn dead_letter(
    queues: &mut NameMap<Queue>,
    source: &QueueName,
    dead: Vec<Message>,
    now: Instant,
    rec: &mut Recorder,
) -> DeadLetterQueue {
    let name = source.dead_letters();
    let replaced_expired = queues.get(&name).is_some_and(|q| q.expired(now));
    if replaced_expired {
        queues.remove(&name);
        rec.record(|| Change::Drop(name.clone()));
    }
    let q = queues.entry(name.clone()).or_insert_with(|| {
        let q = Queue::new(Duration::from_secs(DEAD_LETTER_TTL_SECS));
        // A journal records a queue's meta before anything else about it.
        rec.meta(&name, &q);
        q
    });
    let first = q.next_id;
    let n = dead.len() as u64;
    rec.record(|| Change::Append {
        queue: name.clone(),
        first,
        payloads: dead.iter().map(|m| m.payload.clone()).collect(),
    });
    for (id, m) in (first..).zip(dead) {
        q.ready.push_back(Message {
            id,
            payload: m.payload,
        });
    }
    q.next_id += n;
    q.pushed += n;
    if q.attachments == 0 {
        q.expires_at = Some(deadline(now, q.ttl));
    }
    rec.meta(&name, q);
    DeadLetterQueue {
        expires_at: q.expires_at,
        name,
        replaced_expired,
    }
}

/// A queue holding messages `1..=n` (payload `m<id>`), for the rule tests.
#[cfg(test)]
pub(super) fn queue_of(n: u64) -> Queue {
    let mut q = Queue::new(Duration::from_secs(30));
    for id in 1..=n {
        q.ready.push_back(Message {
            id,
            payload: bytes::Bytes::from(format!("m{id}")),
        });
    }
    q.next_id = n + 1;
    q.pushed = n;
    q
}

#[cfg(test)]
pub(super) fn ids<'a>(messages: impl IntoIterator<Item = &'a Message>) -> Vec<u64> {
    messages.into_iter().map(|m| m.id).collect()
}

#[cfg(test)]
mod tests {
    use busmq_core::Limits;

    use super::*;

    fn name(n: &str) -> QueueName {
        QueueName::parse(n, &Limits::default()).unwrap()
    }

    #[test]
    fn take_remove_takes_from_the_front_and_records_one_range() {
        let q_name = name("q");
        let mut q = queue_of(5);
        let mut rec = Recorder::new(true);
        let taken = q.take(&q_name, 3, TakeMode::Remove, &mut rec).unwrap();
        assert_eq!(ids(&taken), [1, 2, 3]);
        assert_eq!(ids(&q.ready), [4, 5]);
        assert_eq!(q.consumed, 3);
        assert_eq!(q.pending_hi(), 0);
        assert!(rec.changes.contains(&Change::Remove {
            queue: q_name.clone(),
            from: 1,
            to: 3
        }));
        assert!(
            !rec.lazy,
            "removed messages must be durable before delivery"
        );
        // Nothing to take changes nothing.
        let mut rec = Recorder::new(true);
        assert!(
            queue_of(0)
                .take(&q_name, 10, TakeMode::Remove, &mut rec)
                .unwrap()
                .is_empty()
        );
        assert!(rec.changes.is_empty());
    }

    #[test]
    fn take_pending_keeps_messages_until_acked() {
        let q_name = name("q");
        let mut q = queue_of(4);
        let mut rec = Recorder::new(true);
        let taken = q.take(&q_name, 2, TakeMode::Pending, &mut rec).unwrap();
        assert_eq!(ids(&taken), [1, 2]);
        assert_eq!(ids(&q.pending), [1, 2]);
        assert_eq!((q.delivered_hi, q.pending_hi()), (2, 2));
        assert!(
            !rec.changes
                .iter()
                .any(|c| matches!(c, Change::Remove { .. })),
            "pending messages stay stored"
        );
        assert!(rec.lazy, "losing a pending take in a crash only redelivers");
    }

    #[test]
    fn requeued_pending_messages_go_back_to_the_front_in_order() {
        let q_name = name("q");
        let mut q = queue_of(5);
        let mut rec = Recorder::new(true);
        q.take(&q_name, 3, TakeMode::Pending, &mut rec).unwrap();
        let mut dead = Vec::new();
        assert_eq!(q.requeue_pending(&q_name, &mut rec, &mut dead), 3);
        assert!(dead.is_empty());
        assert!(q.pending.is_empty());
        assert_eq!(ids(&q.ready), [1, 2, 3, 4, 5]);
        assert_eq!(q.returns.get(&1), Some(&1), "one delivery so far");
    }

    #[test]
    fn requeue_dead_letters_what_used_up_its_deliveries_in_id_order() {
        let q_name = name("q");
        let mut q = queue_of(4);
        q.max_deliveries = 2;
        let mut rec = Recorder::new(true);
        let mut dead = Vec::new();
        q.take(&q_name, 2, TakeMode::Pending, &mut rec).unwrap();
        q.requeue_pending(&q_name, &mut rec, &mut dead);
        assert!(dead.is_empty(), "first delivery of 2");
        q.take(&q_name, 3, TakeMode::Pending, &mut rec).unwrap();
        assert_eq!(q.requeue_pending(&q_name, &mut rec, &mut dead), 1);
        assert_eq!(ids(&dead), [1, 2], "second delivery of 1 and 2");
        assert_eq!(ids(&q.ready), [3, 4]);
        assert!(!q.returns.contains_key(&1));
    }

    #[test]
    fn dead_letters_make_an_unattached_queue_that_expires_after_its_ttl() {
        let source = name("orders");
        let mut queues: NameMap<Queue> = NameMap::default();
        let now = Instant::now();
        let mut rec = Recorder::new(true);
        let dead = vec![
            Message {
                id: 7,
                payload: "a".into(),
            },
            Message {
                id: 9,
                payload: "b".into(),
            },
        ];
        let dlq = dead_letter(&mut queues, &source, dead, now, &mut rec);
        assert_eq!(dlq.name, source.dead_letters());
        assert!(!dlq.replaced_expired);
        let ttl = Duration::from_secs(DEAD_LETTER_TTL_SECS);
        assert_eq!(dlq.expires_at, Some(now + ttl));
        let q = &queues[&dlq.name];
        // A dead-letter queue numbers its messages itself, from 1.
        assert_eq!(ids(&q.ready), [1, 2]);
        assert_eq!(q.ready[1].payload, "b");
        assert!(
            matches!(rec.changes.first(), Some(Change::Meta(..))),
            "meta first"
        );

        // Once expired, the next dead letter starts a new queue.
        let later = now + ttl + Duration::from_secs(1);
        let again = vec![Message {
            id: 10,
            payload: "c".into(),
        }];
        let dlq = dead_letter(&mut queues, &source, again, later, &mut rec);
        assert!(dlq.replaced_expired);
        assert_eq!(ids(&queues[&dlq.name].ready), [1]);
    }

    #[test]
    fn an_unattached_queue_expires_at_its_deadline() {
        let now = Instant::now();
        let mut q = queue_of(0);
        assert!(
            !q.expired(now + Duration::from_secs(3600)),
            "attached: never"
        );
        q.expires_at = Some(now + Duration::from_secs(30));
        assert!(!q.expired(now));
        assert!(q.expired(now + Duration::from_secs(30)));
    }

    #[test]
    fn restore_puts_back_pending_leased_and_redelivered_messages() {
        let now = Instant::now();
        let until = now + Duration::from_secs(30);
        let original = queue_of(4);
        let mut meta = original.meta();
        meta.pending_hi = 1;
        let deliveries = HashMap::from([
            (1, Delivery::returned(2)),
            (
                3,
                Delivery {
                    attempts: 1,
                    lease: Some(("c".into(), until)),
                },
            ),
            (4, Delivery::returned(1)),
            (99, Delivery::returned(1)),
        ]);
        let q = Queue::restore(meta, original.ready, deliveries, HashMap::new());
        assert_eq!(ids(&q.pending), [1]);
        assert_eq!(ids(&q.ready), [2, 4]);
        assert_eq!(q.leases[&3].owner, "c");
        assert_eq!(q.leases[&3].until, until);
        assert_eq!(q.returns.get(&1), Some(&2));
        assert_eq!(q.returns.get(&4), Some(&1));
        assert!(
            !q.returns.contains_key(&99),
            "a record of no stored message"
        );
    }
}
