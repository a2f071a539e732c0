//! Group commit: one writer thread makes changes durable for everyone.
//!
//! Callers (on the async runtime) hand their changes to [`SqliteJournal::submit`]
//! under the store's lock: a push onto an in-memory inbox, no I/O, and a
//! ticket back. The writer thread takes everything in the inbox, writes it
//! in one SQLite transaction and commits it (one fsync), then publishes the
//! highest ticket it covered; callers await that in [`SqliteJournal::wait`].
//! While one commit is on disk, the next one gathers every change submitted
//! meanwhile, so under load one fsync serves many concurrent callers, and
//! an idle store commits a lone change at once.

use std::fs::{File, OpenOptions, TryLockError};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::db::{DB_FILE, Db};
use super::record::{Clock, Record};
use super::recovery::Recovered;
use crate::queue_store::{Change, Journal};
use crate::{Error, Result};

/// The lock file that keeps a second process out of the directory.
pub const LOCK_FILE: &str = "busmq.lock";

/// How far the writer has got.
#[derive(Debug, Clone, Default)]
struct Progress {
    /// Every ticket up to this one is durable.
    durable: u64,
    /// The writer failed; nothing submitted from then on will be.
    failed: Option<String>,
    /// Commits so far (each one fsync), for observing group commit.
    commits: u64,
}

#[derive(Default)]
struct Inbox {
    records: Vec<Record>,
    /// The ticket of the latest submission.
    ticket: u64,
    /// The journal is being dropped: write what is left and stop.
    closing: bool,
    /// The writer stopped on an error: drop new submissions.
    failed: bool,
    /// The writer is holding a commit open for a follow-up (see
    /// [`Linger`]): every submission wakes it.
    lingering: bool,
}

/// How long an idle writer holds a commit that appends messages open
/// before writing it, waiting for another submission to join it.
///
/// A consumer hears of a push before it is durable and takes at once, so
/// the push and the take it wakes can share one fsync instead of paying
/// two in a row (the latency of a lone message on an idle store halves).
/// Under load the writer never idles, so this never applies there. A push
/// nobody takes would pay the whole linger; after a linger that nobody
/// joined, the writer stops lingering for a while, so a producer with no
/// consumer pays it at most once in [`LINGER_RETRY`] idle commits.
struct Linger {
    /// Idle commits to go before lingering again.
    skip: u32,
}

/// The longest a commit waits for a follow-up.
const LINGER: Duration = Duration::from_micros(150);

/// After a linger nobody joined, how many idle commits go without one.
const LINGER_RETRY: u32 = 16;

impl Linger {
    /// Whether an idle writer whose inbox now holds `records` should wait.
    fn wanted(&mut self, records: &[Record]) -> bool {
        if !records.iter().any(Record::appends) {
            return false;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        true
    }

    /// Holds the inbox open until a submission arrives or [`LINGER`] passes.
    fn hold<'a>(
        &mut self,
        handoff: &'a Handoff,
        mut inbox: MutexGuard<'a, Inbox>,
    ) -> MutexGuard<'a, Inbox> {
        let submitted = inbox.ticket;
        let until = Instant::now() + LINGER;
        inbox.lingering = true;
        while inbox.ticket == submitted && !inbox.closing {
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                break;
            };
            inbox = handoff
                .wake
                .wait_timeout(inbox, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        inbox.lingering = false;
        if inbox.ticket == submitted {
            self.skip = LINGER_RETRY;
        }
        inbox
    }
}

/// Where submissions wait for the writer thread: the inbox it drains, and
/// the condition variable that wakes it.
struct Handoff {
    inbox: Mutex<Inbox>,
    wake: Condvar,
}

impl Handoff {
    fn inbox(&self) -> MutexGuard<'_, Inbox> {
        self.inbox
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The [`Journal`] of the embedded store: changes go to a SQLite database
/// by group commit on a dedicated thread.
pub struct SqliteJournal {
    dir: PathBuf,
    handoff: Arc<Handoff>,
    last_ticket: AtomicU64,
    progress: Arc<watch::Sender<Progress>>,
    writer: Option<JoinHandle<()>>,
    /// Held (locked) while the store is open.
    _lock: File,
}

impl SqliteJournal {
    /// Opens the store in `dir`: takes its lock, opens the database,
    /// recovers the queues and starts the writer.
    pub fn open(dir: &Path) -> Result<(Self, Recovered)> {
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            Error::Unavailable(format!("embedded store in {}: {what}: {e}", dir.display()))
        };
        std::fs::create_dir_all(dir).map_err(|e| unavailable("cannot create the directory", &e))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(|e| unavailable("cannot open the lock file", &e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(Error::Unavailable(format!(
                    "embedded store in {} is in use by another process (it holds {})",
                    dir.display(),
                    lock_path.display()
                )));
            }
            Err(TryLockError::Error(e)) => {
                return Err(unavailable("cannot lock the directory", &e));
            }
        }
        let db_path = dir.join(DB_FILE);
        let (db, recovered) =
            Db::open(&db_path).map_err(|e| unavailable("cannot open the database", &e))?;
        tracing::info!(
            dir = %dir.display(),
            queues = recovered.queues.len(),
            messages = recovered.queues.values().map(|q| q.ready.len() + q.pending.len()).sum::<usize>(),
            objects = recovered.objects.len(),
            "embedded store opened"
        );

        let handoff = Arc::new(Handoff {
            inbox: Mutex::new(Inbox::default()),
            wake: Condvar::new(),
        });
        let progress = Arc::new(watch::Sender::new(Progress::default()));
        let writer = {
            let handoff = Arc::clone(&handoff);
            let progress = Arc::clone(&progress);
            let dir = dir.to_path_buf();
            std::thread::Builder::new()
                .name("busmq-embedded-writer".into())
                .spawn(move || write_loop(db, &handoff, &progress, &dir))
                .map_err(|e| unavailable("cannot start the writer thread", &e))?
        };
        Ok((
            SqliteJournal {
                dir: dir.to_path_buf(),
                handoff,
                last_ticket: AtomicU64::new(0),
                progress,
                writer: Some(writer),
                _lock: lock,
            },
            recovered,
        ))
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many commits (each one fsync) the writer has made since open.
    pub fn commits(&self) -> u64 {
        self.progress.borrow().commits
    }
}

/// The writer thread: commits whatever has gathered, until closed.
fn write_loop(mut db: Db, handoff: &Handoff, progress: &watch::Sender<Progress>, dir: &Path) {
    let mut batch = Vec::new();
    let mut linger = Linger { skip: 0 };
    let commit_duration =
        metrics::histogram!("busmq_store_commit_duration_seconds", "backend" => "embedded");
    loop {
        let ticket = {
            let mut inbox = handoff.inbox();
            let mut idled = false;
            while inbox.records.is_empty() && !inbox.closing {
                idled = true;
                inbox = handoff
                    .wake
                    .wait(inbox)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            if inbox.records.is_empty() {
                return;
            }
            if idled && !inbox.closing && linger.wanted(&inbox.records) {
                inbox = linger.hold(handoff, inbox);
            }
            std::mem::swap(&mut batch, &mut inbox.records);
            inbox.ticket
        };
        let started = busmq_server::metrics::start_timer();
        let committed = db.commit(&mut batch);
        busmq_server::metrics::observe_since(&commit_duration, started);
        match committed {
            Ok(()) => {
                batch.clear();
                progress.send_modify(|p| {
                    p.durable = ticket;
                    p.commits += 1;
                });
            }
            Err(e) => {
                let message = format!(
                    "embedded store in {}: writing to the database failed: {e}",
                    dir.display()
                );
                tracing::error!("{message}; the store accepts no more changes");
                handoff.inbox().failed = true;
                progress.send_modify(|p| p.failed = Some(message));
                return;
            }
        }
    }
}

impl Journal for SqliteJournal {
    const RECORDS: bool = true;

    fn submit(&self, changes: Vec<Change>) -> u64 {
        let clock = Clock::now();
        let mut inbox = self.handoff.inbox();
        if !inbox.failed {
            let was_empty = inbox.records.is_empty();
            inbox
                .records
                .extend(changes.into_iter().map(|c| Record::new(c, clock)));
            if was_empty || inbox.lingering {
                self.handoff.wake.notify_one();
            }
        }
        inbox.ticket += 1;
        self.last_ticket.store(inbox.ticket, Ordering::Release);
        inbox.ticket
    }

    fn last_ticket(&self) -> u64 {
        self.last_ticket.load(Ordering::Acquire)
    }

    fn wait(&self, ticket: u64) -> impl Future<Output = Result<()>> + Send {
        let mut rx = self.progress.subscribe();
        async move {
            let progress = rx
                .wait_for(|p| p.durable >= ticket || p.failed.is_some())
                .await
                .map_err(|_| Error::Unavailable("embedded store closed".into()))?;
            match &progress.failed {
                Some(message) if progress.durable < ticket => {
                    Err(Error::Unavailable(message.clone()))
                }
                _ => Ok(()),
            }
        }
    }
}

impl Drop for SqliteJournal {
    /// Writes what is still in the inbox, stops the writer and closes the
    /// database, so the directory can be opened again at once.
    fn drop(&mut self) {
        self.handoff.inbox().closing = true;
        self.handoff.wake.notify_one();
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!(dir = %self.dir.display(), "embedded store writer panicked");
        }
    }
}
