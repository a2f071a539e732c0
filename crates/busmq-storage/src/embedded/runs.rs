//! Stored messages as runs: one `runs` row holds the payloads of
//! consecutive ids of one queue, usually one push batch.
//!
//! A row per message made every message cost the database a B-tree insert
//! when pushed and a delete when removed, which bounded reliable consumers
//! (whose messages stay stored until acknowledged, so are always written).
//! A run costs one insert and one delete for a whole batch. Removing part
//! of a run rewrites it without the removed ids (reliable acks and lease
//! settles do not line up with push batches), which is still one delete and
//! at most a few inserts per run touched, whatever the number of ids.
//!
//! ```text
//! runs (seq INTEGER PRIMARY KEY, qid, first, last, payloads)
//! payloads: for each id first..=last, its length (LEB128) then its bytes
//! ```
//!
//! Rows are keyed by `seq`, the order they were written in, not by queue:
//! the runs one commit writes for many queues then fill the same few new
//! pages at the end of the table, instead of dirtying a page per queue
//! (each dirty page is written whole to the log at every commit), and
//! queues consumed at a similar pace free whole old pages together.
//!
//! Runs of a queue never overlap. [`RunIndex`] mirrors which runs exist (by
//! queue and first id, with their seq), so a removal finds the runs it
//! touches without asking the database.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use rusqlite::{OptionalExtension, Transaction, params};

use super::record::int;
use crate::Message;

/// `runs` as [`super::db`]'s schema creates it.
pub const TABLE: &str = "
CREATE TABLE IF NOT EXISTS runs (
    seq INTEGER PRIMARY KEY,
    qid INTEGER NOT NULL,
    first INTEGER NOT NULL,
    last INTEGER NOT NULL,
    payloads BLOB NOT NULL
);
";

/// Encodes payloads as a run's `payloads` column.
pub fn encode<'a>(payloads: impl IntoIterator<Item = &'a Bytes>) -> Vec<u8> {
    let mut out = Vec::new();
    for p in payloads {
        prost::encoding::encode_varint(p.len() as u64, &mut out);
        out.extend_from_slice(p);
    }
    out
}

/// A run's stored bytes do not hold what its row says.
#[derive(Debug, thiserror::Error)]
#[error("stored run {first}..={last} is corrupt: {why}")]
pub struct CorruptRun {
    first: u64,
    last: u64,
    why: &'static str,
}

impl From<CorruptRun> for rusqlite::Error {
    fn from(e: CorruptRun) -> Self {
        rusqlite::Error::ToSqlConversionFailure(Box::new(e))
    }
}

/// The messages of the run `first..=last` stored as `blob`; their
/// payloads share its buffer.
pub fn decode(first: u64, last: u64, blob: Bytes) -> Result<Vec<Message>, CorruptRun> {
    let corrupt = |why| CorruptRun { first, last, why };
    if last < first {
        return Err(corrupt("its last id is below its first"));
    }
    let mut out = Vec::with_capacity((last - first + 1).min(1 << 16) as usize);
    let mut rest = blob;
    for id in first..=last {
        if rest.is_empty() {
            return Err(corrupt("it ends early"));
        }
        let len = prost::encoding::decode_varint(&mut rest)
            .map_err(|_| corrupt("a length is not a varint"))?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&len| len <= rest.len())
            .ok_or_else(|| corrupt("a payload runs past its end"))?;
        out.push(Message {
            id,
            payload: rest.split_to(len),
        });
    }
    if !rest.is_empty() {
        return Err(corrupt("bytes are left after its last payload"));
    }
    Ok(out)
}

/// A run on disk, as its queue's index holds it under its first id.
#[derive(Debug, Clone, Copy)]
struct Run {
    last: u64,
    seq: i64,
}

/// Which runs each queue (by qid) has on disk.
#[derive(Debug, Default)]
pub struct RunIndex {
    queues: HashMap<i64, BTreeMap<u64, Run>>,
    next_seq: i64,
}

impl RunIndex {
    /// Notes a run read back at open.
    pub fn recovered(&mut self, seq: i64, qid: i64, first: u64, last: u64) {
        self.queues
            .entry(qid)
            .or_default()
            .insert(first, Run { last, seq });
        self.next_seq = self.next_seq.max(seq + 1);
    }

    /// Deletes every run of a dropped queue.
    pub fn drop_queue(&mut self, tx: &Transaction<'_>, qid: i64) -> rusqlite::Result<()> {
        for run in self
            .queues
            .remove(&qid)
            .into_iter()
            .flat_map(|r| r.into_values())
        {
            delete(tx, run.seq)?;
        }
        Ok(())
    }

    /// Writes the messages with consecutive ids from `first` as one run.
    pub fn write(
        &mut self,
        tx: &Transaction<'_>,
        qid: i64,
        first: u64,
        payloads: &[&Bytes],
    ) -> rusqlite::Result<()> {
        let Some(last) = (payloads.len() as u64)
            .checked_sub(1)
            .map(|span| first + span)
        else {
            return Ok(());
        };
        let seq = self.next_seq;
        tx.prepare_cached(
            "INSERT INTO runs (seq, qid, first, last, payloads) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            seq,
            qid,
            int(first),
            int(last),
            encode(payloads.iter().copied())
        ])?;
        self.next_seq += 1;
        self.queues
            .entry(qid)
            .or_default()
            .insert(first, Run { last, seq });
        Ok(())
    }

    /// Removes every stored id of queue `qid` within `ranges` (inclusive
    /// `(from, to)` pairs, in any order, possibly overlapping): runs wholly
    /// inside go, runs partly inside are rewritten as what is left.
    pub fn remove(
        &mut self,
        tx: &Transaction<'_>,
        qid: i64,
        ranges: &mut [(u64, u64)],
    ) -> rusqlite::Result<()> {
        let Some(runs) = self.queues.get(&qid) else {
            return Ok(());
        };
        let ranges = disjoint(ranges);
        let covered = |id: u64| {
            let i = ranges.partition_point(|&(from, _)| from <= id);
            i > 0 && ranges[i - 1].1 >= id
        };
        // The runs touched: those starting at or below a range's end whose
        // last id reaches its start.
        let mut touched: Vec<(u64, Run)> = Vec::new();
        for &(from, to) in ranges.iter() {
            let start = runs
                .range(..=from)
                .next_back()
                .filter(|(_, run)| run.last >= from)
                .map_or(from, |(&first, _)| first);
            touched.extend(runs.range(start..=to).map(|(&first, &run)| (first, run)));
        }
        touched.sort_unstable_by_key(|&(first, _)| first);
        touched.dedup_by_key(|&mut (first, _)| first);
        let mut left: Vec<(u64, i64, Vec<Message>)> = Vec::new();
        for (first, run) in touched {
            if (first..=run.last).all(covered) {
                left.push((first, run.seq, Vec::new()));
                continue;
            }
            let blob: Option<Vec<u8>> = tx
                .prepare_cached("SELECT payloads FROM runs WHERE seq = ?1")?
                .query_row([run.seq], |r| r.get(0))
                .optional()?;
            let Some(blob) = blob else {
                continue;
            };
            let mut kept = decode(first, run.last, Bytes::from(blob))?;
            kept.retain(|m| !covered(m.id));
            left.push((first, run.seq, kept));
        }
        for (first, seq, kept) in left {
            delete(tx, seq)?;
            if let Some(runs) = self.queues.get_mut(&qid) {
                runs.remove(&first);
            }
            for piece in kept.chunk_by(|a, b| b.id == a.id + 1) {
                let payloads: Vec<&Bytes> = piece.iter().map(|m| &m.payload).collect();
                self.write(tx, qid, piece[0].id, &payloads)?;
            }
        }
        Ok(())
    }
}

fn delete(tx: &Transaction<'_>, seq: i64) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM runs WHERE seq = ?1")?
        .execute([seq])?;
    Ok(())
}

/// `ranges` sorted and merged where they overlap or touch; empty ranges
/// (`from > to`) left out.
fn disjoint(ranges: &mut [(u64, u64)]) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for &(from, to) in ranges.iter().filter(|(from, to)| from <= to) {
        match out.last_mut() {
            Some(last) if from <= last.1.saturating_add(1) => last.1 = last.1.max(to),
            _ => out.push((from, to)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payloads(n: usize) -> Vec<Bytes> {
        (0..n)
            .map(|i| Bytes::from(vec![i as u8; i * 37 % 300]))
            .collect()
    }

    #[test]
    fn runs_round_trip_through_their_encoding() {
        let p = payloads(70);
        let blob = Bytes::from(encode(&p));
        let back = decode(10, 79, blob).unwrap();
        assert_eq!(back.len(), 70);
        for (i, m) in back.iter().enumerate() {
            assert_eq!((m.id, &m.payload), (10 + i as u64, &p[i]));
        }
        let bytes = Bytes::from_static;
        assert!(decode(1, 0, bytes(&[])).is_err());
        assert!(decode(1, 1, bytes(&[])).is_err(), "ends early");
        assert!(
            decode(1, 1, bytes(&[5, 1, 2])).is_err(),
            "payload past the end"
        );
        assert!(decode(1, 1, bytes(&[0, 9])).is_err(), "bytes left over");
        assert!(decode(1, 1, bytes(&[0xff; 12])).is_err(), "length too long");
        assert_eq!(decode(1, 1, bytes(&[0])).unwrap()[0].payload.len(), 0);
    }
}
