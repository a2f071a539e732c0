//! Reading a database back at open: every queue (meta, runs of messages,
//! deliveries, metadata) and every object, dropping what expired while
//! nobody had the store open.

use std::collections::HashMap;

use busmq_core::Limits;
use bytes::Bytes;
use rusqlite::params;

use super::db::{Db, drop_qid};
use super::record::{Clock, DeliveryRow, MetaRow, uint};
use super::runs;
use crate::object_state::{Objects, StoredObject};
use crate::queue_store::Delivery;
use crate::queue_store::Queue;
use crate::{Message, ObjectName, QueueName};

/// Everything a database held when it was opened.
#[derive(Default)]
pub struct Recovered {
    pub queues: HashMap<QueueName, Queue>,
    pub objects: Objects,
}

impl Db {
    /// Reads every object back, dropping those whose deadline passed while
    /// nobody had the store open.
    pub(super) fn recover_objects(&mut self) -> rusqlite::Result<Objects> {
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

    pub(super) fn recover(&mut self) -> rusqlite::Result<HashMap<QueueName, Queue>> {
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
}
