//! The embedded durable store: the default of `busmq serve`, data in one
//! directory that survives a restart or a `kill -9`.
//!
//! The live state is in memory, with exactly the memory store's semantics
//! (both are a [`QueueStore`]); every mutation is also a durable change in
//! a SQLite database in the directory (see [`journal`] for the group
//! commit and [`db`] for the schema and recovery). A call that changed
//! something returns only once its change is committed and fsync'd; a call
//! that only looked returns once everything it may have seen is. Opening
//! the directory rebuilds the state from the database: queues, messages,
//! pending sets, ids, counters, metadata, reliable locks, persistable
//! objects and expiry deadlines (kept as wall-clock time, so a queue whose ttl ran out while
//! the process was down is gone when it comes back).
//!
//! Why SQLite: measured against redb and fjall on this workload, see
//! "Embedded engine choice" in BENCHMARKS.md.

use std::path::Path;

use crate::queue_store::QueueStore;
use crate::{Error, Result};

pub mod db;
pub mod journal;
pub mod record;
mod recovery;
pub mod runs;
mod schema;

pub use journal::SqliteJournal;

/// The embedded durable [`Storage`](crate::Storage).
pub type EmbeddedStorage = QueueStore<SqliteJournal>;

impl QueueStore<SqliteJournal> {
    /// Opens (creating if needed) the store in `dir` and recovers its
    /// state. Blocks on disk I/O; call it from a blocking context (e.g.
    /// `spawn_blocking`) inside a Tokio runtime, which runs the expiry
    /// timers. Fails with an error naming `dir` when it cannot be created
    /// or read, or when another process has it open.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Internal(
                "the embedded store must be opened inside a Tokio runtime (it runs expiry timers)"
                    .into(),
            ));
        }
        let (journal, recovered) = SqliteJournal::open(dir.as_ref())?;
        Ok(QueueStore::with_journal(
            journal,
            recovered.queues,
            recovered.objects,
        ))
    }

    /// The directory the store lives in.
    pub fn data_dir(&self) -> &Path {
        self.journal().dir()
    }

    /// How many durable commits (each one fsync) this store has made since
    /// it was opened: under concurrent load, far fewer than operations.
    pub fn commits(&self) -> u64 {
        self.journal().commits()
    }
}
