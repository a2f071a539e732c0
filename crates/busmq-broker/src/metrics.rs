//! What a broker records in `busmq_server::metrics`: store waits, and the
//! sampled depth of the queues it serves.

use std::sync::{Arc, LazyLock, OnceLock};

use busmq_server::metrics::{self as m, DeliveryMode, QueueMetrics};
use busmq_storage::Storage;
use futures::StreamExt;
use metrics::Histogram;
use tokio_util::sync::CancellationToken;

/// `busmq_push_duration_seconds`.
pub(crate) static PUSH_DURATION: LazyLock<Histogram> =
    LazyLock::new(|| metrics::histogram!("busmq_push_duration_seconds"));

/// `busmq_take_many_duration_seconds`.
pub(crate) static TAKE_MANY_DURATION: LazyLock<Histogram> =
    LazyLock::new(|| metrics::histogram!("busmq_take_many_duration_seconds"));

// Made on first use, so only modes consumed in show.
static TAKE_DURATION: [OnceLock<Histogram>; 4] = [const { OnceLock::new() }; 4];

/// `busmq_take_duration_seconds` of `mode`.
pub(crate) fn take_duration(mode: DeliveryMode) -> &'static Histogram {
    TAKE_DURATION[mode as usize]
        .get_or_init(|| metrics::histogram!("busmq_take_duration_seconds", "mode" => mode.as_str()))
}

/// `info` calls of one sampling round in flight at once: enough to hide a
/// remote store's round trip, few enough not to crowd out real work.
const SAMPLE_CONCURRENCY: usize = 64;

/// Refreshes `busmq_queue_depth` and `busmq_queue_pending` of every queue
/// this broker has served, from the store, every
/// [`m::UPKEEP_INTERVAL`] until `shutdown`. One `info` per queue per
/// round, never per message. Queues beyond the label cap are summed into
/// `other`; a queue that is gone is dropped from it, and one with its own
/// series reads 0.
pub(crate) fn spawn_sampler(storage: Arc<dyn Storage>, shutdown: CancellationToken) {
    if !m::enabled() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(m::UPKEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => sample(&storage).await,
            }
        }
    });
}

async fn sample(storage: &Arc<dyn Storage>) {
    let mut infos = futures::stream::iter(m::known_queues())
        .map(|(queue, series)| async move {
            let info = storage.info(&queue).await;
            (queue, series, info)
        })
        .buffer_unordered(SAMPLE_CONCURRENCY);
    let (mut other_depth, mut other_pending) = (0u64, 0u64);
    while let Some((queue, series, info)) = infos.next().await {
        let (depth, pending) = match info {
            Ok(Some(info)) => {
                let pending = info.pending + info.leased;
                (info.count.saturating_sub(pending), pending)
            }
            Ok(None) => {
                m::forget(&queue);
                (0, 0)
            }
            // The store is unreachable: keep the last figures rather than
            // report an empty queue.
            Err(_) => continue,
        };
        if series.is_other() {
            other_depth += depth;
            other_pending += pending;
        } else {
            set(&series, depth, pending);
        }
    }
    if let Some(other) = m::other_queues() {
        set(&other, other_depth, other_pending);
    }
}

fn set(series: &QueueMetrics, depth: u64, pending: u64) {
    series.depth().set(depth as f64);
    series.pending().set(pending as f64);
}
