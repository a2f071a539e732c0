//! What the embedded store writes: each [`Change`] of the queue store
//! made a [`Record`], its times converted to wall-clock milliseconds (so
//! deadlines mean the same after a restart), its integers to SQLite's.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::time::Instant;

use crate::queue_store::Delivery;
use crate::queue_store::{Change, QueueMeta, deadline};
use crate::{ObjectName, QueueName};

/// A point in time as the journal stores it.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub(super) now: Instant,
    pub(super) wall_ms: i64,
}

impl Clock {
    /// The present, on tokio's clock and the wall clock.
    pub fn now() -> Self {
        let wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Clock {
            now: Instant::now(),
            wall_ms,
        }
    }

    /// `at` as wall-clock milliseconds.
    pub fn to_wall(self, at: Instant) -> i64 {
        if at >= self.now {
            self.wall_ms.saturating_add(ms(at - self.now))
        } else {
            self.wall_ms.saturating_sub(ms(self.now - at))
        }
    }

    /// Wall-clock milliseconds as an instant; a time already past is now.
    pub fn from_wall(self, wall_ms: i64) -> Instant {
        let ahead = wall_ms.saturating_sub(self.wall_ms);
        if ahead <= 0 {
            self.now
        } else {
            deadline(self.now, Duration::from_millis(ahead as u64))
        }
    }
}

pub(super) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// u64 to SQLite's i64, bit for bit.
pub(super) fn int(v: u64) -> i64 {
    v as i64
}

/// SQLite's i64 back to u64, bit for bit.
pub(super) fn uint(v: i64) -> u64 {
    v as u64
}

/// An id bound for a range delete: ids never reach 2^63, so clamping is
/// exact.
pub(super) fn id_bound(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A [`Change`] with its times made wall-clock, ready to write.
#[derive(Debug)]
pub enum Record {
    Meta(QueueName, MetaRow),
    /// Messages with consecutive ids from `first`; `None` marks one
    /// removed again within the same commit, so never written.
    Append {
        queue: QueueName,
        first: u64,
        payloads: Vec<Option<Bytes>>,
    },
    /// An empty range (`from > to`) deletes nothing.
    Remove {
        queue: QueueName,
        from: u64,
        to: u64,
    },
    Metadata {
        queue: QueueName,
        key: String,
        value: String,
    },
    /// A `deliveries` row to write, or to delete when `None`.
    Delivery {
        queue: QueueName,
        id: u64,
        row: Option<DeliveryRow>,
    },
    Drop(QueueName),
    ObjectFields {
        object: ObjectName,
        fields: Vec<(String, String)>,
    },
    ObjectExpiry {
        object: ObjectName,
        expires_at_ms: Option<i64>,
    },
    ObjectDrop(ObjectName),
}

/// A `deliveries` row without its qid and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    pub(super) attempts: i64,
    pub(super) lease_owner: Option<String>,
    pub(super) lease_until_ms: Option<i64>,
}

impl DeliveryRow {
    pub(super) fn new(d: Delivery, clock: Clock) -> Self {
        let (lease_owner, lease_until_ms) = match d.lease {
            Some((owner, until)) => (Some(owner), Some(clock.to_wall(until))),
            None => (None, None),
        };
        DeliveryRow {
            attempts: i64::from(d.attempts),
            lease_owner,
            lease_until_ms,
        }
    }

    pub(super) fn delivery(&self, clock: Clock) -> Delivery {
        let lease = match (&self.lease_owner, self.lease_until_ms) {
            (Some(owner), Some(until)) => Some((owner.clone(), clock.from_wall(until))),
            _ => None,
        };
        Delivery {
            attempts: u32::try_from(self.attempts).unwrap_or(u32::MAX),
            lease,
        }
    }
}

/// A `queues` row without its name and qid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRow {
    pub(super) ttl_ms: i64,
    pub(super) attachments: i64,
    pub(super) expires_at_ms: Option<i64>,
    pub(super) lock_owner: Option<String>,
    pub(super) lock_until_ms: Option<i64>,
    pub(super) next_id: i64,
    pub(super) delivered_hi: i64,
    pub(super) pending_hi: i64,
    pub(super) pushed: i64,
    pub(super) consumed: i64,
    pub(super) max_deliveries: i64,
}

impl MetaRow {
    pub(super) fn new(meta: QueueMeta, clock: Clock) -> Self {
        let (lock_owner, lock_until_ms) = match meta.reliable {
            Some((owner, until)) => (Some(owner), Some(clock.to_wall(until))),
            None => (None, None),
        };
        MetaRow {
            ttl_ms: ms(meta.ttl),
            attachments: int(meta.attachments),
            expires_at_ms: meta.expires_at.map(|at| clock.to_wall(at)),
            lock_owner,
            lock_until_ms,
            next_id: int(meta.next_id),
            delivered_hi: int(meta.delivered_hi),
            pending_hi: int(meta.pending_hi),
            pushed: int(meta.pushed),
            consumed: int(meta.consumed),
            max_deliveries: i64::from(meta.max_deliveries),
        }
    }

    pub(super) fn meta(&self, clock: Clock) -> QueueMeta {
        let reliable = match (&self.lock_owner, self.lock_until_ms) {
            (Some(owner), Some(until)) => Some((owner.clone(), clock.from_wall(until))),
            _ => None,
        };
        QueueMeta {
            ttl: Duration::from_millis(uint(self.ttl_ms)),
            attachments: uint(self.attachments),
            expires_at: self.expires_at_ms.map(|at| clock.from_wall(at)),
            reliable,
            next_id: uint(self.next_id),
            delivered_hi: uint(self.delivered_hi),
            pending_hi: uint(self.pending_hi),
            pushed: uint(self.pushed),
            consumed: uint(self.consumed),
            max_deliveries: u32::try_from(self.max_deliveries).unwrap_or(0),
        }
    }
}

impl Record {
    /// Whether this record adds messages to a queue.
    pub fn appends(&self) -> bool {
        matches!(self, Record::Append { .. })
    }

    /// `change` with its instants read on `clock`.
    pub fn new(change: Change, clock: Clock) -> Self {
        match change {
            Change::Meta(queue, meta) => Record::Meta(queue, MetaRow::new(meta, clock)),
            Change::Append {
                queue,
                first,
                payloads,
            } => Record::Append {
                queue,
                first,
                payloads: payloads.into_iter().map(Some).collect(),
            },
            Change::Remove { queue, from, to } => Record::Remove { queue, from, to },
            Change::Metadata { queue, key, value } => Record::Metadata { queue, key, value },
            Change::Delivery {
                queue,
                id,
                delivery,
            } => Record::Delivery {
                queue,
                id,
                row: delivery.map(|d| DeliveryRow::new(d, clock)),
            },
            Change::Drop(queue) => Record::Drop(queue),
            Change::ObjectFields { object, fields } => Record::ObjectFields { object, fields },
            Change::ObjectExpiry { object, expires_at } => Record::ObjectExpiry {
                object,
                expires_at_ms: expires_at.map(|at| clock.to_wall(at)),
            },
            Change::ObjectDrop(object) => Record::ObjectDrop(object),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_clock_round_trip() {
        let clock = Clock::now();
        let later = clock.now + Duration::from_secs(90);
        let wall = clock.to_wall(later);
        assert_eq!(wall, clock.wall_ms + 90_000);
        assert_eq!(clock.from_wall(wall), later);
        let earlier = clock.to_wall(clock.now - Duration::from_secs(5).min(clock.now.elapsed()));
        assert!(earlier <= clock.wall_ms);
        assert_eq!(
            clock.from_wall(clock.wall_ms - 5_000),
            clock.now,
            "past is now"
        );
        assert_eq!(clock.from_wall(i64::MIN), clock.now);
        assert!(clock.from_wall(i64::MAX) > later, "far future saturates");
    }
}
