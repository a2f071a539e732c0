//! The embedded store's database: opening it (see `schema.rs` for
//! the tables and `recovery.rs` for reading them back) and the write
//! path, which coalesces a batch of records to its net effect and writes
//! it in one transaction, one fsync.

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;
use rusqlite::{Connection, params};

use super::record::{Record, id_bound, int};
use super::recovery::Recovered;
use super::runs::RunIndex;
use super::schema;
use crate::QueueName;

/// The database file inside the data directory.
pub const DB_FILE: &str = "busmq.sqlite3";

/// The database and the qid of every recorded queue.
pub struct Db {
    pub(super) conn: Connection,
    pub(super) qids: HashMap<QueueName, i64>,
    pub(super) next_qid: i64,
    pub(super) runs: RunIndex,
}

impl Db {
    /// Opens (creating) the database at `path` and reads every queue back,
    /// dropping those whose ttl ran out while nobody had the store open.
    pub fn open(path: &Path) -> rusqlite::Result<(Db, Recovered)> {
        let mut conn = Connection::open(path)?;
        schema::prepare(&mut conn, path)?;

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

pub(super) fn drop_qid(tx: &rusqlite::Transaction<'_>, qid: i64) -> rusqlite::Result<()> {
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
    use crate::Message;
    use crate::embedded::record::{Clock, DeliveryRow, MetaRow};
    use crate::embedded::schema::{PAGE_SIZE, SCHEMA, SCHEMA_VERSION};
    use crate::queue_store::Delivery;
    use crate::queue_store::{Queue, QueueMeta};
    use busmq_core::Limits;
    use bytes::Bytes;
    use std::time::Duration;

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
