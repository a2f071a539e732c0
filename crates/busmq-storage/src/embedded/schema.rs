//! The schema of the embedded store's database, its settings, and the
//! migrations from every older version: one SQLite database in WAL mode
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
//! [`super::runs`]); those with an id up to `pending_hi` are pending (see
//! [`crate::queue_store::Queue`]). A `deliveries` row counts the deliveries
//! of a stored message delivered before; with a lease owner, the message is
//! leased until `lease_until_ms`. Times are wall-clock milliseconds since the Unix epoch, so deadlines mean the
//! same after a restart. Ids and counters are u64 stored bit for bit in
//! SQLite's i64.

use std::path::Path;

use bytes::Bytes;
use rusqlite::Connection;

use super::record::uint;
use super::runs::{self, RunIndex};

/// The page size of a new database, in bytes.
pub(super) const PAGE_SIZE: i64 = 16 << 10;

/// Version of the schema below, kept in `PRAGMA user_version`. Version 2
/// added lease mode (the `deliveries` table and `queues.max_deliveries`; a
/// version 1 database is migrated by [`MIGRATE_1_TO_2`]); version 3 added
/// the persistable objects tables, which [`SCHEMA`] creates empty in an
/// older database; version 4 stores messages as runs instead of one
/// `messages` row each ([`migrate_messages_to_runs`]).
pub(super) const SCHEMA_VERSION: i64 = 4;

pub(super) const SCHEMA: &str = "
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

/// Sets up a connection just opened on `path`: page size, WAL and fsync at
/// every commit, cache and checkpoint sizes; then creates or migrates the
/// schema to [`SCHEMA_VERSION`]. A database newer than that is refused.
pub(super) fn prepare(conn: &mut Connection, path: &Path) -> rusqlite::Result<()> {
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
    migrate_messages_to_runs(conn)?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    Ok(())
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
