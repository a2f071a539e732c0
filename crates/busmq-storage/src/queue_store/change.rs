//! What a [`super::QueueStore`] tells its journal: the effect of each
//! mutation as a [`Change`], gathered by a [`Recorder`] only when the
//! journal records at all.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::lease::Delivery;
use super::queue::Queue;
use crate::{ObjectName, QueueName, Result};

/// Everything about a queue except its messages and metadata, as a journal
/// records it after a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueMeta {
    pub ttl: Duration,
    pub attachments: u64,
    pub expires_at: Option<Instant>,
    /// Owner and lease end of the reliable lock.
    pub reliable: Option<(String, Instant)>,
    pub next_id: u64,
    pub delivered_hi: u64,
    /// Stored messages with an id up to this one are pending (0: none).
    pub pending_hi: u64,
    pub pushed: u64,
    pub consumed: u64,
    pub max_deliveries: u32,
}

/// The effect of one mutation on one queue, as a journal records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The queue's meta is now this (creating the queue if it was not
    /// recorded).
    Meta(QueueName, QueueMeta),
    /// Messages appended with consecutive ids from `first`.
    Append {
        queue: QueueName,
        first: u64,
        payloads: Vec<Bytes>,
    },
    /// Every stored message with an id in `from..=to` is gone.
    Remove {
        queue: QueueName,
        from: u64,
        to: u64,
    },
    /// The delivery record of one stored message is now this (`None`:
    /// it has none). Removing a message removes its record too.
    Delivery {
        queue: QueueName,
        id: u64,
        delivery: Option<Delivery>,
    },
    /// One metadata value was written.
    Metadata {
        queue: QueueName,
        key: String,
        value: String,
    },
    /// The queue is gone, with its messages and metadata.
    Drop(QueueName),
    /// Fields of a persistable object were written (creating it).
    ObjectFields {
        object: ObjectName,
        fields: Vec<(String, String)>,
    },
    /// The expiry deadline of an object is now this.
    ObjectExpiry {
        object: ObjectName,
        expires_at: Option<Instant>,
    },
    /// The object is gone, with its fields.
    ObjectDrop(ObjectName),
}

/// Where a [`QueueStore`] records its changes.
pub trait Journal: Send + Sync + 'static {
    /// Whether changes are recorded at all; when false, none are built.
    const RECORDS: bool;

    /// Records `changes` (applied in this order, after every change
    /// submitted before) and returns a ticket for [`Journal::wait`]. Called
    /// under the store's lock, so it must not block on I/O.
    fn submit(&self, changes: Vec<Change>) -> u64;

    /// The ticket of the latest submission.
    fn last_ticket(&self) -> u64;

    /// Resolves once every change up to `ticket` is recorded for good.
    fn wait(&self, ticket: u64) -> impl Future<Output = Result<()>> + Send;
}

/// The journal of a store that forgets everything when the process ends.
#[derive(Debug, Default)]
pub struct Volatile;

impl Journal for Volatile {
    const RECORDS: bool = false;

    fn submit(&self, _changes: Vec<Change>) -> u64 {
        0
    }

    fn last_ticket(&self) -> u64 {
        0
    }

    fn wait(&self, _ticket: u64) -> impl Future<Output = Result<()>> + Send {
        std::future::ready(Ok(()))
    }
}

/// The changes one operation makes, built only when the journal records.
pub(crate) struct Recorder {
    pub(crate) on: bool,
    pub(crate) changes: Vec<Change>,
    /// The operation may return before its own changes are durable (only
    /// what it saw must be): losing them in a crash must be harmless.
    pub(crate) lazy: bool,
}

impl Recorder {
    pub(crate) fn new(on: bool) -> Self {
        Recorder {
            on,
            changes: Vec::new(),
            lazy: false,
        }
    }

    pub(crate) fn record(&mut self, change: impl FnOnce() -> Change) {
        if self.on {
            self.changes.push(change());
        }
    }

    pub(crate) fn meta(&mut self, name: &QueueName, q: &Queue) {
        self.record(|| Change::Meta(name.clone(), q.meta()));
    }

    pub(crate) fn delivery(&mut self, name: &QueueName, id: u64, delivery: Option<Delivery>) {
        self.record(|| Change::Delivery {
            queue: name.clone(),
            id,
            delivery,
        });
    }

    /// Removes exactly the given ids (sorted), as few ranges as possible:
    /// a range must not cover a leased message lying between them.
    pub(crate) fn remove_ids(&mut self, name: &QueueName, ids: impl IntoIterator<Item = u64>) {
        if !self.on {
            return;
        }
        let mut run: Option<(u64, u64)> = None;
        for id in ids {
            run = match run {
                Some((from, to)) if to + 1 == id => Some((from, id)),
                Some((from, to)) => {
                    self.remove(name, from, to);
                    Some((id, id))
                }
                None => Some((id, id)),
            };
        }
        if let Some((from, to)) = run {
            self.remove(name, from, to);
        }
    }

    pub(crate) fn remove(&mut self, name: &QueueName, from: u64, to: u64) {
        if from <= to {
            self.record(|| Change::Remove {
                queue: name.clone(),
                from,
                to,
            });
        }
    }
}
