//! One reader of the bus for every `/info` viewer: while anyone watches
//! (an open `/info/events` stream, or an `/info.json` request in the last
//! [`LINGER`]), a task reads a [`Snapshot`] every [`INTERVAL`] and shares
//! it through a watch channel; each viewer only slices it. With nobody
//! watching, nothing is read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use busmq_client::Bus;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::snapshot::{Rates, Snapshot, collect};

/// How often the bus is read while someone watches.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// How long the reader keeps going after the last `/info.json` request
/// when no stream is open, so a poller gets fresh rates.
pub const LINGER: Duration = Duration::from_secs(10);

/// How long a viewer waits for the first snapshot.
pub const FIRST_WAIT: Duration = Duration::from_secs(10);

/// The latest snapshot, shared.
pub type Latest = watch::Receiver<Option<Arc<Snapshot>>>;

/// The shared reader of one gateway.
pub struct Hub {
    latest: watch::Sender<Option<Arc<Snapshot>>>,
    running: AtomicBool,
    wanted: Mutex<Instant>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            latest: watch::Sender::new(None),
            running: AtomicBool::new(false),
            wanted: Mutex::new(Instant::now()),
        }
    }
}

impl Hub {
    /// The snapshots from now on (the latest at once, if any), starting
    /// the reader if it is not running.
    pub fn watch(self: &Arc<Self>, bus: &Bus, shutdown: &CancellationToken) -> Latest {
        *self.wanted.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        let rx = self.latest.subscribe();
        if !self.running.swap(true, Ordering::SeqCst) {
            tokio::spawn(Arc::clone(self).run(bus.clone(), shutdown.clone()));
        }
        rx
    }

    /// Whether nobody has watched for a while.
    fn idle(&self) -> bool {
        self.latest.receiver_count() == 0
            && self
                .wanted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed()
                > LINGER
    }

    async fn run(self: Arc<Self>, bus: Bus, shutdown: CancellationToken) {
        let mut rates = Rates::default();
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if self.idle() {
                self.running.store(false, Ordering::SeqCst);
                // A viewer that came meanwhile saw the reader running and
                // did not start one: keep going for it.
                if self.idle() || self.running.swap(true, Ordering::SeqCst) {
                    return;
                }
            }
            let snapshot = collect(&bus, &mut rates).await;
            self.latest.send_replace(Some(Arc::new(snapshot)));
        }
        self.running.store(false, Ordering::SeqCst);
    }
}
