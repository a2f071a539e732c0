//! The on-disk form of the embedded store: one SQLite database in WAL mode
//! with `synchronous = FULL` (every commit fsync's the log).
//!
//! ```text
//! queues   (qid PK, name UNIQUE, ttl_ms, attachments, expires_at_ms,
//!           lock_owner, lock_until_ms, next_id, delivered_hi, pending_hi,
//!           pushed, consumed, max_deliveries)
//! runs     (seq INTEGER PRIMARY KEY, qid, first, last, payloads)
//! metadata (qid, key, value)   PRIMARY KEY (qid, key), WITHOUT ROWID
//! deliveries (qid, id, attempts, lease_owner, lease_until_ms)
//!                              PRIMARY KEY (qid, id), WITHOUT ROWID
//! objects  (name PK, expires_at_ms)                  WITHOUT ROWID
//! object_fields (name, field, value) PRIMARY KEY (name, field), WITHOUT ROWID
//! ```
//!
//! A queue's stored messages are the ids of its `runs` rows (see
//! [`super::runs`]); those with an id up to `pending_hi` are pending (see [`crate::queue_store::Queue`]). A
//! `deliveries` row counts the deliveries of a stored message delivered
//! before; with a lease owner, the message is leased until `lease_until_ms`. Times
//! are wall-clock milliseconds since the Unix epoch, so deadlines mean the
//! same after a restart. Ids and counters are u64 stored bit for bit in
//! SQLite's i64.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rusqlite::{Connection, params};
use tokio::time::Instant;

use busmq_core::Limits;

use super::runs::{self, RunIndex};
use crate::leases::Delivery;
use crate::object_state::{Objects, StoredObject};
use crate::queue_store::{Change, Queue, QueueMeta, deadline};
use crate::{Message, ObjectName, QueueName};

/// The database file inside the data directory.
pub const DB_FILE: &str = "busmq.sqlite3";

/// The page size of a new database, in bytes.
const PAGE_SIZE: i64 = 16 << 10;

/// Version of the schema below, kept in `PRAGMA user_version`. Version 2
/// added lease mode (the `deliveries` table and `queues.max_deliveries`; a
/// version 1 database is migrated by [`MIGRATE_1_TO_2`]); version 3 added
/// the persistable objects tables, which [`SCHEMA`] creates empty in an
/// older database; version 4 stores messages as runs instead of one
/// `messages` row each ([`migrate_messages_to_runs`]).
const SCHEMA_VERSION: i64 = 4;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS queues (
    qid INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    ttl_ms INTEGER NOT NULL,
    attachments INTEGER NOT NULL,
    expires_at_ms INTEGER,
    lock_owner TEXT,
    lock_until_ms INTEGER,
    next_id INTEGER NOT NULL,
    delivered_hi INTEGER NOT NULL,
    pending_hi INTEGER NOT NULL,
    pushed INTEGER NOT NULL,
    consumed INTEGER NOT NULL,
    max_deliveries INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS metadata (
    qid INTEGER NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (qid, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deliveries (
    qid INTEGER NOT NULL,
    id INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    lease_owner TEXT,
    lease_until_ms INTEGER,
    PRIMARY KEY (qid, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS objects (
    name TEXT PRIMARY KEY,
    expires_at_ms INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS object_fields (
    name TEXT NOT NULL,
    field TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (name, field)
) WITHOUT ROWID;
";

/// Brings a version 1 database (no lease mode) to version 2.
const MIGRATE_1_TO_2: &str =
    "ALTER TABLE queues ADD COLUMN max_deliveries INTEGER NOT NULL DEFAULT 0;";

/// A point in time as the journal stores it.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    now: Instant,
    wall_ms: i64,
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

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// u64 to SQLite's i64, bit for bit.
pub(super) fn int(v: u64) -> i64 {
    v as i64
}

/// SQLite's i64 back to u64, bit for bit.
fn uint(v: i64) -> u64 {
    v as u64
}

/// An id bound for a range delete: ids never reach 2^63, so clamping is
/// exact.
fn id_bound(v: u64) -> i64 {
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

/// Everything a database held when it was opened.
#[derive(Default)]
pub struct Recovered {
    pub queues: HashMap<QueueName, Queue>,
    pub objects: Objects,
}

/// A `deliveries` row without its qid and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    attempts: i64,
    lease_owner: Option<String>,
    lease_until_ms: Option<i64>,
}

impl DeliveryRow {
    fn new(d: Delivery, clock: Clock) -> Self {
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

    fn delivery(&self, clock: Clock) -> Delivery {
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
    ttl_ms: i64,
    attachments: i64,
    expires_at_ms: Option<i64>,
    lock_owner: Option<String>,
    lock_until_ms: Option<i64>,
    next_id: i64,
    delivered_hi: i64,
    pending_hi: i64,
    pushed: i64,
    consumed: i64,
    max_deliveries: i64,
}

impl MetaRow {
    fn new(meta: QueueMeta, clock: Clock) -> Self {
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

    fn meta(&self, clock: Clock) -> QueueMeta {
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

/// The database and the qid of every recorded queue.
pub struct Db {
    conn: Connection,
    qids: HashMap<QueueName, i64>,
    next_qid: i64,
    runs: RunIndex,
}

impl Db {
    /// Opens (creating) the database at `path` and reads every queue back,
    /// dropping those whose ttl ran out while nobody had the store open.
    pub fn open(path: &Path) -> rusqlite::Result<(Db, Recovered)> {
        let mut conn = Connection::open(path)?;
        // 16 KiB pages rather than SQLite's 4 KiB: the log is written page
        // by page, and runs of payloads fill pages whole, so a commit then
        // writes a quarter of the frames (each with its header, checksum
        // and index entry) for the same bytes: 13-20% more messages/s for
        // reliable consumers, 5-14% for unreliable ones, latency unchanged.
        // Takes effect only for a new database; one made with another page
        // size keeps it.
        conn.pragma_update(None, "page_size", PAGE_SIZE)?;
        // WAL: a commit is one append and one fsync of the log. FULL: that
        // fsync happens at every commit, so a commit survives power loss.
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "SQLite refused WAL mode");
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        // 64 MiB of page cache: a backlog of 100 queues stays in memory.
        conn.pragma_update(None, "cache_size", -65536)?;
        // Checkpoint every 32 MiB of log rather than SQLite's 1,000 pages:
        // messages pushed and removed soon after rewrite the same
        // pages, and a page changed many times between checkpoints is
        // copied into the database once (reliable consumption: about 8%
        // more messages/s). The log, and so recovery, stays bounded.
        let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        conn.pragma_update(None, "wal_autocheckpoint", (32 << 20) / page_size.max(512))?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(rusqlite::Error::InvalidParameterName(format!(
                "{} has schema version {version}, newer than this busmq understands \
                 ({SCHEMA_VERSION})",
                path.display()
            )));
        }
        if version == 1 {
            conn.execute_batch(MIGRATE_1_TO_2)?;
        }
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(runs::TABLE)?;
        migrate_messages_to_runs(&mut conn)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;

        let mut db = Db {
            conn,
            qids: HashMap::new(),
            next_qid: 1,
            runs: RunIndex::default(),
        };
        let queues = db.recover()?;
        let objects = db.recover_objects()?;
        Ok((db, Recovered { queues, objects }))
    }

    /// Reads every object back, dropping those whose deadline passed while
    /// nobody had the store open.
    fn recover_objects(&mut self) -> rusqlite::Result<Objects> {
        let clock = Clock::now();
        // As for queues: stored names were valid when written.
        let limits = Limits {
            max_name_len: usize::MAX,
            ..Limits::default()
        };
        let tx = self.conn.transaction()?;
        tx.execute(
            "DELETE FROM object_fields WHERE name IN \
             (SELECT name FROM objects WHERE expires_at_ms <= ?1)",
            [clock.wall_ms],
        )?;
        tx.execute(
            "DELETE FROM objects WHERE expires_at_ms <= ?1",
            [clock.wall_ms],
        )?;
        tx.commit()?;
        let mut objects = Objects::new();
        {
            let mut stmt = self
                .conn
                .prepare("SELECT name, expires_at_ms FROM objects")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let name: String = r.get(0)?;
                let expires_at_ms: Option<i64> = r.get(1)?;
                match ObjectName::parse(&name, &limits) {
                    Ok(object) => {
                        objects.insert(
                            object,
                            StoredObject {
                                expires_at: expires_at_ms.map(|at| clock.from_wall(at)),
                                ..StoredObject::default()
                            },
                        );
                    }
                    Err(e) => tracing::warn!(name, "ignoring a stored object: {e}"),
                }
            }
        }
        let mut stmt = self
            .conn
            .prepare("SELECT name, field, value FROM object_fields")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let name: String = r.get(0)?;
            let Ok(object) = ObjectName::parse(&name, &limits) else {
                continue;
            };
            if let Some(o) = objects.get_mut(&object) {
                o.fields.insert(r.get(1)?, r.get(2)?);
            }
        }
        Ok(objects)
    }

    fn recover(&mut self) -> rusqlite::Result<HashMap<QueueName, Queue>> {
        let clock = Clock::now();
        // Stored names were valid when written; the name-length limit is a
        // broker setting that may have changed since, so it is not applied.
        let limits = Limits {
            max_name_len: usize::MAX,
            ..Limits::default()
        };
        let mut rows: Vec<(i64, QueueName, MetaRow)> = Vec::new();
        let mut expired: Vec<i64> = Vec::new();
        {
            let mut stmt = self.conn.prepare(
                "SELECT qid, name, ttl_ms, attachments, expires_at_ms, lock_owner, \
                 lock_until_ms, next_id, delivered_hi, pending_hi, pushed, consumed, \
                 max_deliveries FROM queues",
            )?;
            let mut q = stmt.query([])?;
            while let Some(r) = q.next()? {
                let qid: i64 = r.get(0)?;
                let name: String = r.get(1)?;
                let meta = MetaRow {
                    ttl_ms: r.get(2)?,
                    attachments: r.get(3)?,
                    expires_at_ms: r.get(4)?,
                    lock_owner: r.get(5)?,
                    lock_until_ms: r.get(6)?,
                    next_id: r.get(7)?,
                    delivered_hi: r.get(8)?,
                    pending_hi: r.get(9)?,
                    pushed: r.get(10)?,
                    consumed: r.get(11)?,
                    max_deliveries: r.get(12)?,
                };
                self.next_qid = self.next_qid.max(qid + 1);
                match QueueName::parse(&name, &limits) {
                    Ok(_) if meta.expires_at_ms.is_some_and(|at| at <= clock.wall_ms) => {
                        expired.push(qid);
                    }
                    Ok(name) => rows.push((qid, name, meta)),
                    Err(e) => {
                        tracing::warn!(qid, name, "dropping a stored queue: {e}");
                        expired.push(qid);
                    }
                }
            }
        }
        if !expired.is_empty() {
            tracing::info!(
                count = expired.len(),
                "queues expired while the store was closed"
            );
            let tx = self.conn.transaction()?;
            for qid in &expired {
                drop_qid(&tx, *qid)?;
            }
            tx.commit()?;
        }

        let mut messages: HashMap<i64, Vec<Message>> = HashMap::new();
        let mut dropped_runs: Vec<i64> = Vec::new();
        {
            let mut stmt = self
                .conn
                .prepare("SELECT seq, qid, first, last, payloads FROM runs")?;
            let live: std::collections::HashSet<i64> = rows.iter().map(|r| r.0).collect();
            let mut q = stmt.query([])?;
            while let Some(r) = q.next()? {
                let (seq, qid): (i64, i64) = (r.get(0)?, r.get(1)?);
                if !live.contains(&qid) {
                    // A queue dropped above, as it expired while closed.
                    dropped_runs.push(seq);
                    continue;
                }
                let (first, last) = (uint(r.get(2)?), uint(r.get(3)?));
                let blob: Vec<u8> = r.get(4)?;
                messages.entry(qid).or_default().extend(runs::decode(
                    first,
                    last,
                    Bytes::from(blob),
                )?);
                self.runs.recovered(seq, qid, first, last);
            }
        }
        if !dropped_runs.is_empty() {
            let tx = self.conn.transaction()?;
            for seq in dropped_runs {
                tx.execute("DELETE FROM runs WHERE seq = ?1", [seq])?;
            }
            tx.commit()?;
        }
        // Runs come in the order they were written; a queue's messages go
        // by id.
        for stored in messages.values_mut() {
            stored.sort_unstable_by_key(|m| m.id);
        }
        let mut deliveries: HashMap<i64, HashMap<u64, Delivery>> = HashMap::new();
        // A message appended, leased and removed within one commit leaves
        // its deliveries row behind (the removal was cut to what was on
        // disk): such rows are dropped.
        let mut orphans: Vec<(i64, i64)> = Vec::new();
        {
            let mut stmt = self
                .conn
                .prepare("SELECT qid, id, attempts, lease_owner, lease_until_ms FROM deliveries")?;
            let mut q = stmt.query([])?;
            while let Some(r) = q.next()? {
                let (qid, id): (i64, i64) = (r.get(0)?, r.get(1)?);
                let stored = messages
                    .get(&qid)
                    .is_some_and(|m| m.binary_search_by_key(&uint(id), |m| m.id).is_ok());
                if !stored {
                    orphans.push((qid, id));
                    continue;
                }
                let row = DeliveryRow {
                    attempts: r.get(2)?,
                    lease_owner: r.get(3)?,
                    lease_until_ms: r.get(4)?,
                };
                deliveries
                    .entry(qid)
                    .or_default()
                    .insert(uint(id), row.delivery(clock));
            }
        }
        if !orphans.is_empty() {
            let tx = self.conn.transaction()?;
            for (qid, id) in orphans {
                tx.execute(
                    "DELETE FROM deliveries WHERE qid = ?1 AND id = ?2",
                    params![qid, id],
                )?;
            }
            tx.commit()?;
        }
        let mut metadata: HashMap<i64, HashMap<String, String>> = HashMap::new();
        {
            let mut stmt = self.conn.prepare("SELECT qid, key, value FROM metadata")?;
            let mut q = stmt.query([])?;
            while let Some(r) = q.next()? {
                metadata
                    .entry(r.get(0)?)
                    .or_default()
                    .insert(r.get(1)?, r.get(2)?);
            }
        }

        let mut queues = HashMap::new();
        for (qid, name, meta) in rows {
            let queue = Queue::restore(
                meta.meta(clock),
                messages.remove(&qid).unwrap_or_default(),
                deliveries.remove(&qid).unwrap_or_default(),
                metadata.remove(&qid).unwrap_or_default(),
            );
            self.qids.insert(name.clone(), qid);
            queues.insert(name, queue);
        }
        Ok(queues)
    }

    /// Writes `records` in one transaction and commits it: when this
    /// returns Ok, they are on disk. The records are first coalesced (see
    /// `coalesce`), so the net effect is written, not every step.
    pub fn commit(&mut self, records: &mut [Record]) -> rusqlite::Result<()> {
        let superseded = coalesce(records);
        // Unchecked: borrows the connection shared, so the qid map stays
        // writable; nothing else uses the connection meanwhile.
        let tx = self.conn.unchecked_transaction()?;
        // Removals apply at the end, all of a queue's at once, so a run
        // several of them touch is rewritten once. Coalescing cut every
        // removal to ids committed before, so the appends of this commit
        // (higher ids) cannot be among them.
        let mut removals: HashMap<i64, Vec<(u64, u64)>> = HashMap::new();
        for (i, record) in records.iter().enumerate() {
            match record {
                Record::Meta(queue, _) if superseded[i] && self.qids.contains_key(queue) => {}
                Record::Meta(queue, m) => match self.qids.get(queue) {
                    Some(&qid) => {
                        tx.prepare_cached(
                            "UPDATE queues SET ttl_ms = ?2, attachments = ?3, \
                             expires_at_ms = ?4, lock_owner = ?5, lock_until_ms = ?6, \
                             next_id = ?7, delivered_hi = ?8, pending_hi = ?9, pushed = ?10, \
                             consumed = ?11, max_deliveries = ?12 WHERE qid = ?1",
                        )?
                        .execute(params![
                            qid,
                            m.ttl_ms,
                            m.attachments,
                            m.expires_at_ms,
                            m.lock_owner,
                            m.lock_until_ms,
                            m.next_id,
                            m.delivered_hi,
                            m.pending_hi,
                            m.pushed,
                            m.consumed,
                            m.max_deliveries
                        ])?;
                    }
                    None => {
                        let qid = self.next_qid;
                        tx.prepare_cached(
                            "INSERT INTO queues (qid, name, ttl_ms, attachments, \
                             expires_at_ms, lock_owner, lock_until_ms, next_id, delivered_hi, \
                             pending_hi, pushed, consumed, max_deliveries) \
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                        )?
                        .execute(params![
                            qid,
                            queue.as_str(),
                            m.ttl_ms,
                            m.attachments,
                            m.expires_at_ms,
                            m.lock_owner,
                            m.lock_until_ms,
                            m.next_id,
                            m.delivered_hi,
                            m.pending_hi,
                            m.pushed,
                            m.consumed,
                            m.max_deliveries
                        ])?;
                        self.next_qid += 1;
                        self.qids.insert(queue.clone(), qid);
                    }
                },
                Record::Append {
                    queue,
                    first,
                    payloads,
                } => {
                    let qid = self.qid(queue)?;
                    // Messages removed within this commit left holes: each
                    // stretch between them is a run.
                    let mut run: Vec<&Bytes> = Vec::with_capacity(payloads.len());
                    let mut run_first = *first;
                    for (id, payload) in (*first..).zip(payloads) {
                        match payload {
                            Some(p) => {
                                if run.is_empty() {
                                    run_first = id;
                                }
                                run.push(p);
                            }
                            None => {
                                self.runs.write(&tx, qid, run_first, &run)?;
                                run.clear();
                            }
                        }
                    }
                    self.runs.write(&tx, qid, run_first, &run)?;
                }
                Record::Remove { from, to, .. } if from > to => {}
                Record::Remove { queue, from, to } => {
                    let qid = self.qid(queue)?;
                    removals.entry(qid).or_default().push((*from, *to));
                    tx.prepare_cached(
                        "DELETE FROM deliveries WHERE qid = ?1 AND id >= ?2 AND id <= ?3",
                    )?
                    .execute(params![qid, id_bound(*from), id_bound(*to)])?;
                }
                Record::Delivery { queue, id, row } => {
                    let qid = self.qid(queue)?;
                    match row {
                        Some(d) => {
                            tx.prepare_cached(
                                "INSERT OR REPLACE INTO deliveries (qid, id, attempts, \
                                 lease_owner, lease_until_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                            )?
                            .execute(params![
                                qid,
                                int(*id),
                                d.attempts,
                                d.lease_owner,
                                d.lease_until_ms
                            ])?;
                        }
                        None => {
                            tx.prepare_cached("DELETE FROM deliveries WHERE qid = ?1 AND id = ?2")?
                                .execute(params![qid, int(*id)])?;
                        }
                    }
                }
                Record::Metadata { queue, key, value } => {
                    let qid = self.qid(queue)?;
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO metadata (qid, key, value) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![qid, key, value])?;
                }
                Record::Drop(queue) => {
                    if let Some(qid) = self.qids.remove(queue) {
                        removals.remove(&qid);
                        self.runs.drop_queue(&tx, qid)?;
                        drop_qid(&tx, qid)?;
                    }
                }
                Record::ObjectFields { object, fields } => {
                    tx.prepare_cached(
                        "INSERT OR IGNORE INTO objects (name, expires_at_ms) VALUES (?1, NULL)",
                    )?
                    .execute([object.as_str()])?;
                    let mut insert = tx.prepare_cached(
                        "INSERT OR REPLACE INTO object_fields (name, field, value) \
                         VALUES (?1, ?2, ?3)",
                    )?;
                    for (field, value) in fields {
                        insert.execute(params![object.as_str(), field, value])?;
                    }
                }
                Record::ObjectExpiry {
                    object,
                    expires_at_ms,
                } => {
                    tx.prepare_cached("UPDATE objects SET expires_at_ms = ?2 WHERE name = ?1")?
                        .execute(params![object.as_str(), expires_at_ms])?;
                }
                Record::ObjectDrop(object) => {
                    tx.prepare_cached("DELETE FROM object_fields WHERE name = ?1")?
                        .execute([object.as_str()])?;
                    tx.prepare_cached("DELETE FROM objects WHERE name = ?1")?
                        .execute([object.as_str()])?;
                }
            }
        }
        for (qid, mut ranges) in removals {
            self.runs.remove(&tx, qid, &mut ranges)?;
        }
        tx.commit()
    }

    /// The qid of a recorded queue. Every queue is recorded (by its first
    /// Meta, at attach) before anything else about it.
    fn qid(&self, queue: &QueueName) -> rusqlite::Result<i64> {
        self.qids.get(queue).copied().ok_or_else(|| {
            rusqlite::Error::InvalidParameterName(format!(
                "change to queue {queue} before it was recorded"
            ))
        })
    }

    /// The stored name of qid, for tests.
    #[cfg(test)]
    fn name_of(&self, qid: i64) -> rusqlite::Result<Option<String>> {
        use rusqlite::OptionalExtension;
        self.conn
            .query_row("SELECT name FROM queues WHERE qid = ?1", [qid], |r| {
                r.get(0)
            })
            .optional()
    }
}

/// Rewrites a commit's records to their net effect, and returns which Meta
/// records a later Meta of the same queue supersedes (within the commit,
/// with no Drop of the queue between them).
///
/// Messages appended and removed within one commit (a consumer keeping up
/// with a producer) are never written: their Append entries become `None`,
/// and a Remove range is cut to the ids below the first one this commit
/// appended to the queue, the only ones that can be on disk. A Drop ends
/// what is known about the queue (a re-created queue counts ids from 1).
fn coalesce(records: &mut [Record]) -> Vec<bool> {
    #[derive(Default)]
    struct Segment {
        /// Indices of this queue's Append records since its last Drop.
        appends: Vec<usize>,
        /// Index of its latest Meta since its last Drop.
        meta: Option<usize>,
    }
    let mut superseded = vec![false; records.len()];
    let mut segments: HashMap<QueueName, Segment> = HashMap::new();
    for i in 0..records.len() {
        match &records[i] {
            Record::Meta(queue, _) => {
                let seg = segments.entry(queue.clone()).or_default();
                if let Some(prev) = seg.meta.replace(i) {
                    superseded[prev] = true;
                }
            }
            Record::Append { queue, .. } => {
                segments.entry(queue.clone()).or_default().appends.push(i);
            }
            Record::Remove { queue, from, to } => {
                let (from, to) = (*from, *to);
                let Some(seg) = segments.get(queue) else {
                    continue;
                };
                let mut written_below = u64::MAX;
                for &a in &seg.appends {
                    let (first, payloads) = match &mut records[a] {
                        Record::Append {
                            first, payloads, ..
                        } => (*first, payloads),
                        _ => unreachable!("segment appends index Append records"),
                    };
                    written_below = written_below.min(first);
                    let last = first + payloads.len() as u64 - 1;
                    for id in from.max(first)..=to.min(last) {
                        payloads[(id - first) as usize] = None;
                    }
                }
                if let Record::Remove { to, .. } = &mut records[i] {
                    *to = (*to).min(written_below.saturating_sub(1));
                }
            }
            // Objects are written as they come: their changes are small.
            Record::Metadata { .. }
            | Record::Delivery { .. }
            | Record::ObjectFields { .. }
            | Record::ObjectExpiry { .. }
            | Record::ObjectDrop(_) => {}
            Record::Drop(queue) => {
                if let Some(seg) = segments.remove(queue) {
                    for a in seg.appends {
                        if let Record::Append { payloads, .. } = &mut records[a] {
                            payloads.iter_mut().for_each(|p| *p = None);
                        }
                    }
                }
            }
        }
    }
    superseded
}

/// Moves the messages of a database older than version 4 (one `messages`
/// row each) into runs of consecutive ids, and drops the old table.
fn migrate_messages_to_runs(conn: &mut Connection) -> rusqlite::Result<()> {
    let old: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'messages')",
        [],
        |r| r.get(0),
    )?;
    if !old {
        return Ok(());
    }
    let tx = conn.transaction()?;
    let mut index = RunIndex::default();
    {
        let mut stmt = tx.prepare("SELECT qid, id, payload FROM messages ORDER BY qid, id")?;
        let mut rows = stmt.query([])?;
        // The run being gathered: its qid, first id and payloads.
        let mut run: Option<(i64, u64, Vec<Bytes>)> = None;
        while let Some(r) = rows.next()? {
            let (qid, id): (i64, u64) = (r.get(0)?, uint(r.get(1)?));
            let payload = Bytes::from(r.get::<_, Vec<u8>>(2)?);
            match &mut run {
                Some((q, first, payloads)) if *q == qid && *first + payloads.len() as u64 == id => {
                    payloads.push(payload);
                }
                _ => {
                    if let Some((q, first, payloads)) = run.replace((qid, id, vec![payload])) {
                        index.write(&tx, q, first, &payloads.iter().collect::<Vec<_>>())?;
                    }
                }
            }
        }
        if let Some((q, first, payloads)) = run {
            index.write(&tx, q, first, &payloads.iter().collect::<Vec<_>>())?;
        }
    }
    tx.execute_batch("DROP TABLE messages")?;
    tx.commit()
}

fn drop_qid(tx: &rusqlite::Transaction<'_>, qid: i64) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM metadata WHERE qid = ?1")?
        .execute([qid])?;
    tx.prepare_cached("DELETE FROM deliveries WHERE qid = ?1")?
        .execute([qid])?;
    tx.prepare_cached("DELETE FROM queues WHERE qid = ?1")?
        .execute([qid])?;
    Ok(())
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

    #[test]
    fn a_new_database_has_large_pages_and_an_old_one_keeps_its_own() {
        let page_size = |db: &Db| -> i64 {
            db.conn
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = Db::open(&dir.path().join(DB_FILE)).unwrap();
        assert_eq!(page_size(&db), PAGE_SIZE);

        let old = dir.path().join("old.db");
        Connection::open(&old)
            .unwrap()
            .execute_batch("PRAGMA page_size = 4096; CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        let (db, _) = Db::open(&old).unwrap();
        assert_eq!(page_size(&db), 4096);
    }

    #[test]
    fn a_version_1_database_migrates_and_keeps_its_queues() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        {
            // The version 1 schema, as an older busmq left it.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE queues (qid INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, \
                 ttl_ms INTEGER NOT NULL, attachments INTEGER NOT NULL, expires_at_ms INTEGER, \
                 lock_owner TEXT, lock_until_ms INTEGER, next_id INTEGER NOT NULL, \
                 delivered_hi INTEGER NOT NULL, pending_hi INTEGER NOT NULL, \
                 pushed INTEGER NOT NULL, consumed INTEGER NOT NULL);
                 CREATE TABLE messages (qid INTEGER NOT NULL, id INTEGER NOT NULL, \
                 payload BLOB NOT NULL, PRIMARY KEY (qid, id)) WITHOUT ROWID;
                 CREATE TABLE metadata (qid INTEGER NOT NULL, key TEXT NOT NULL, \
                 value TEXT NOT NULL, PRIMARY KEY (qid, key)) WITHOUT ROWID;
                 INSERT INTO queues VALUES (1, 'old', 30000, 1, NULL, NULL, NULL, 2, 0, 0, 1, 0);
                 INSERT INTO messages VALUES (1, 1, x'6d31');
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let name = QueueName::parse("old", &Limits::default()).unwrap();
        {
            let (mut db, Recovered { queues, .. }) = Db::open(&path).unwrap();
            let q = &queues[&name];
            assert_eq!((q.ready.len(), q.max_deliveries), (1, 0));
            let clock = Clock::now();
            let mut meta = q.meta();
            meta.max_deliveries = 4;
            db.commit(&mut [
                Record::Meta(name.clone(), MetaRow::new(meta, clock)),
                Record::Delivery {
                    queue: name.clone(),
                    id: 1,
                    row: Some(DeliveryRow::new(Delivery::returned(2), clock)),
                },
            ])
            .unwrap();
        }
        let (_db, Recovered { queues, .. }) = Db::open(&path).unwrap();
        let q = &queues[&name];
        assert_eq!(q.max_deliveries, 4);
        assert_eq!(q.returns.get(&1), Some(&2));
        let version: i64 = Connection::open(&path)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn a_message_leased_and_acked_within_one_commit_leaves_no_delivery_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let q = QueueName::parse("q", &Limits::default()).unwrap();
        let clock = Clock::now();
        let leased = Delivery {
            attempts: 1,
            lease: Some(("a".into(), clock.now + Duration::from_secs(30))),
        };
        {
            let (mut db, _) = Db::open(&path).unwrap();
            // Appended, leased and acked before the writer got to it: the
            // removal is cut to what is on disk (nothing), the lease row
            // is written.
            db.commit(&mut [
                Record::Meta(q.clone(), MetaRow::new(meta(1), clock)),
                append(&q, 1, 2),
                Record::Delivery {
                    queue: q.clone(),
                    id: 1,
                    row: Some(DeliveryRow::new(leased, clock)),
                },
                Record::Remove {
                    queue: q.clone(),
                    from: 1,
                    to: 1,
                },
                Record::Meta(q.clone(), MetaRow::new(meta(3), clock)),
            ])
            .unwrap();
        }
        let (db, Recovered { queues, .. }) = Db::open(&path).unwrap();
        assert_eq!(stored(&queues, &q), [2]);
        assert!(queues[&q].leases.is_empty());
        let rows: i64 = db
            .conn
            .query_row("SELECT COUNT(*) FROM deliveries", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 0, "the orphan row was dropped at open");
    }

    #[test]
    fn records_and_recovers_queues() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let name = QueueName::parse("q", &Limits::default()).unwrap();
        let clock = Clock::now();
        let meta = QueueMeta {
            ttl: Duration::from_secs(30),
            attachments: 2,
            expires_at: None,
            reliable: None,
            next_id: 4,
            delivered_hi: 1,
            pending_hi: 1,
            pushed: 3,
            consumed: 1,
            max_deliveries: 0,
        };
        {
            let (mut db, recovered) = Db::open(&path).unwrap();
            assert!(recovered.queues.is_empty());
            db.commit(&mut [
                Record::Meta(name.clone(), MetaRow::new(meta.clone(), clock)),
                Record::Append {
                    queue: name.clone(),
                    first: 1,
                    payloads: vec![
                        Some(Bytes::from_static(b"a")),
                        Some(Bytes::from_static(b"b")),
                    ],
                },
                Record::Append {
                    queue: name.clone(),
                    first: 3,
                    payloads: vec![Some(Bytes::from_static(b"c"))],
                },
                Record::Remove {
                    queue: name.clone(),
                    from: 2,
                    to: 2,
                },
                Record::Metadata {
                    queue: name.clone(),
                    key: "k".into(),
                    value: "v".into(),
                },
            ])
            .unwrap();
            assert_eq!(db.name_of(1).unwrap().as_deref(), Some("q"));
        }
        let (_db, recovered) = Db::open(&path).unwrap();
        let q = &recovered.queues[&name];
        let ids =
            |v: &std::collections::VecDeque<Message>| v.iter().map(|m| m.id).collect::<Vec<_>>();
        assert_eq!(ids(&q.pending), vec![1]);
        assert_eq!(ids(&q.ready), vec![3]);
        assert_eq!(q.ready[0].payload, Bytes::from_static(b"c"));
        assert_eq!(
            (q.next_id, q.pushed, q.consumed, q.attachments),
            (4, 3, 1, 2)
        );
        assert_eq!(q.metadata.get("k").map(String::as_str), Some("v"));
    }

    fn meta(next_id: u64) -> QueueMeta {
        QueueMeta {
            ttl: Duration::from_secs(30),
            attachments: 1,
            expires_at: None,
            reliable: None,
            next_id,
            delivered_hi: 0,
            pending_hi: 0,
            pushed: next_id - 1,
            consumed: 0,
            max_deliveries: 0,
        }
    }

    fn append(q: &QueueName, first: u64, n: u64) -> Record {
        Record::Append {
            queue: q.clone(),
            first,
            payloads: (first..first + n)
                .map(|i| Some(Bytes::from(format!("m{i}"))))
                .collect(),
        }
    }

    fn stored(queues: &HashMap<QueueName, Queue>, q: &QueueName) -> Vec<u64> {
        queues[q].ready.iter().map(|m| m.id).collect()
    }

    fn runs(db: &Db) -> Vec<(i64, i64)> {
        let mut stmt = db
            .conn
            .prepare("SELECT first, last FROM runs ORDER BY qid, first")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn a_push_batch_is_one_run_and_removals_cut_runs_to_what_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let q = QueueName::parse("q", &Limits::default()).unwrap();
        let clock = Clock::now();
        let m = |n| Record::Meta(q.clone(), MetaRow::new(meta(n), clock));
        let remove = |from, to| Record::Remove {
            queue: q.clone(),
            from,
            to,
        };
        {
            let (mut db, _) = Db::open(&path).unwrap();
            db.commit(&mut [m(1), append(&q, 1, 10), append(&q, 11, 10), m(21)])
                .unwrap();
            assert_eq!(runs(&db), [(1, 10), (11, 20)]);
            // An ack reaching into the second batch; single ids settled out
            // of order, one of them twice.
            db.commit(&mut [
                remove(1, 13),
                remove(17, 17),
                remove(15, 15),
                remove(17, 17),
            ])
            .unwrap();
            assert_eq!(runs(&db), [(14, 14), (16, 16), (18, 20)]);
            db.commit(&mut [remove(14, 16), remove(20, 25)]).unwrap();
            assert_eq!(runs(&db), [(18, 19)]);
        }
        let (db, Recovered { queues, .. }) = Db::open(&path).unwrap();
        assert_eq!(stored(&queues, &q), [18, 19]);
        assert_eq!(queues[&q].ready[0].payload, Bytes::from_static(b"m18"));
        assert_eq!(runs(&db), [(18, 19)], "the index is rebuilt at open");
    }

    #[test]
    fn a_queue_that_expired_while_closed_leaves_no_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let q = QueueName::parse("q", &Limits::default()).unwrap();
        let r = QueueName::parse("r", &Limits::default()).unwrap();
        {
            let (mut db, _) = Db::open(&path).unwrap();
            let clock = Clock::now();
            let mut expiring = meta(3);
            expiring.expires_at = Some(clock.now);
            db.commit(&mut [
                Record::Meta(q.clone(), MetaRow::new(expiring, clock)),
                append(&q, 1, 2),
                Record::Meta(r.clone(), MetaRow::new(meta(2), clock)),
                append(&r, 1, 1),
            ])
            .unwrap();
        }
        let (db, Recovered { queues, .. }) = Db::open(&path).unwrap();
        assert!(!queues.contains_key(&q));
        assert_eq!(stored(&queues, &r), [1]);
        assert_eq!(runs(&db), [(1, 1)], "only r's run is left");
    }

    #[test]
    fn a_version_3_database_moves_its_messages_into_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.execute_batch(
                "CREATE TABLE messages (qid INTEGER NOT NULL, id INTEGER NOT NULL, \
                 payload BLOB NOT NULL, PRIMARY KEY (qid, id)) WITHOUT ROWID;
                 INSERT INTO queues (qid, name, ttl_ms, attachments, next_id, delivered_hi, \
                 pending_hi, pushed, consumed) VALUES (1, 'a', 30000, 1, 6, 0, 0, 5, 0), \
                 (2, 'b', 30000, 1, 2, 0, 0, 1, 0);
                 INSERT INTO messages VALUES (1, 1, x'01'), (1, 2, x'02'), (1, 4, x''), \
                 (1, 5, x'05'), (2, 1, x'0b');
                 PRAGMA user_version = 3;",
            )
            .unwrap();
        }
        let (db, Recovered { queues, .. }) = Db::open(&path).unwrap();
        let name = |n| QueueName::parse(n, &Limits::default()).unwrap();
        assert_eq!(stored(&queues, &name("a")), [1, 2, 4, 5]);
        assert_eq!(queues[&name("a")].ready[2].payload, Bytes::new());
        assert_eq!(stored(&queues, &name("b")), [1]);
        assert_eq!(runs(&db), [(1, 2), (4, 5), (1, 1)]);
        let old: i64 = db
            .conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'messages'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(old, 0);
    }

    #[test]
    fn a_corrupt_run_fails_the_open_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let q = QueueName::parse("q", &Limits::default()).unwrap();
        {
            let (mut db, _) = Db::open(&path).unwrap();
            db.commit(&mut [
                Record::Meta(q.clone(), MetaRow::new(meta(3), Clock::now())),
                append(&q, 1, 2),
            ])
            .unwrap();
            db.conn
                .execute("UPDATE runs SET payloads = x'09'", [])
                .unwrap();
        }
        let err = Db::open(&path).err().expect("a corrupt run is refused");
        assert!(
            err.to_string().contains("stored run 1..=2 is corrupt"),
            "{err}"
        );
    }

    #[test]
    fn coalesced_commits_write_the_net_effect() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        let q = QueueName::parse("q", &Limits::default()).unwrap();
        let r = QueueName::parse("r", &Limits::default()).unwrap();
        let clock = Clock::now();
        let m = |n| Record::Meta(q.clone(), MetaRow::new(meta(n), clock));
        let rm = |n| Record::Meta(r.clone(), MetaRow::new(meta(n), clock));
        let remove = |q: &QueueName, from, to| Record::Remove {
            queue: q.clone(),
            from,
            to,
        };
        {
            let (mut db, _) = Db::open(&path).unwrap();
            db.commit(&mut [m(1), append(&q, 1, 3), m(4)]).unwrap();
            // Ids 1..=5 taken: 1..=3 are on disk, 4 and 5 never get there.
            let mut records = [append(&q, 4, 3), m(7), remove(&q, 1, 5), m(7)];
            db.commit(&mut records).unwrap();
            match &records[0] {
                Record::Append { payloads, .. } => {
                    assert_eq!(payloads.iter().filter(|p| p.is_some()).count(), 1)
                }
                other => panic!("{other:?}"),
            }
            assert!(
                matches!(records[2], Record::Remove { from: 1, to: 3, .. }),
                "{:?}",
                records[2]
            );
            // A queue dropped and re-created within one commit.
            db.commit(&mut [
                rm(1),
                append(&r, 1, 2),
                rm(3),
                Record::Drop(r.clone()),
                rm(1),
                append(&r, 1, 1),
                rm(2),
            ])
            .unwrap();
        }
        let (_db, recovered) = Db::open(&path).unwrap();
        let queues = recovered.queues;
        assert_eq!(stored(&queues, &q), [6]);
        assert_eq!(queues[&q].next_id, 7);
        assert_eq!(stored(&queues, &r), [1]);
        assert_eq!(queues[&r].ready[0].payload, Bytes::from_static(b"m1"));
        assert_eq!(queues[&r].next_id, 2);
    }
}
