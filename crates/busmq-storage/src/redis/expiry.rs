//! Expiry timers: Redis does not say when a key expires, so the process
//! that started a countdown looks again when it should be over and
//! publishes `Expired` if the queue is gone.

use std::sync::{Arc, Weak};
use std::time::Duration;

use ::redis::{ScriptInvocation, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::reply::{Outcome, int};
use super::{CHANNEL, Inner, lock};
use crate::{QueueName, Result};

/// Slack after a ttl before looking whether the queue is gone.
const EXPIRY_GRACE: Duration = Duration::from_millis(50);

impl Inner {
    /// Arms the expiry of `queue`'s dead-letter queue when a script just
    /// gave it dead letters while unattached (`pttl` >= 0).
    pub(super) fn arm_dead_letters(
        self: &Arc<Self>,
        shard: usize,
        queue: &QueueName,
        pttl: Option<&Value>,
    ) -> Result<()> {
        let pttl = int(pttl, "a dead-letter ttl")?;
        if let Ok(pttl) = u64::try_from(pttl) {
            let dlq = queue.dead_letters();
            self.remember(&dlq, shard);
            self.arm_expiry(shard, dlq, Duration::from_millis(pttl));
        }
        Ok(())
    }

    /// Looks again when a countdown started here should be over, and
    /// publishes Expired if the queue is gone.
    pub(super) fn arm_expiry(self: &Arc<Self>, shard: usize, queue: QueueName, delay: Duration) {
        let deadline = Instant::now() + delay + EXPIRY_GRACE;
        let key = (shard, queue);
        {
            let mut timers = lock(&self.timers);
            if timers.get(&key).is_some_and(|armed| *armed <= deadline) {
                // The armed timer fires first and re-arms if need be.
                return;
            }
            timers.insert(key.clone(), deadline);
        }
        let weak = Arc::downgrade(self);
        let cancel = self.cancel.clone();
        self.runtime.spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(deadline) => {}
            }
            let Some(inner) = weak.upgrade() else { return };
            {
                let mut timers = lock(&inner.timers);
                if timers.get(&key) != Some(&deadline) {
                    return; // superseded by an earlier deadline
                }
                timers.remove(&key);
            }
            drop(inner);
            let (shard, queue) = key;
            check_expiry(weak, shard, queue, cancel).await;
        });
    }
}

/// Runs the expiry check of `queue` on `shard` (retrying while Redis is
/// unavailable): publishes Expired if the queue is gone, re-arms if it is
/// still counting down.
async fn check_expiry(
    weak: Weak<Inner>,
    shard: usize,
    queue: QueueName,
    cancel: CancellationToken,
) {
    for attempt in 0..10u32 {
        if attempt > 0 {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        let Some(inner) = weak.upgrade() else { return };
        let q = queue.as_str();
        let args = |inv: &mut ScriptInvocation<'_>| {
            inv.arg(CHANNEL).arg(q);
        };
        match inner
            .run(shard, &inner.scripts.expire_check, &queue, &args, false)
            .await
        {
            Ok(Outcome::Ok(v)) => {
                match int(v.first(), "an expiry check") {
                    Ok(-2) => {
                        tracing::debug!(queue = %queue, "queue expired");
                        inner.forget(&queue);
                    }
                    Ok(pttl) if pttl >= 0 => {
                        inner.arm_expiry(shard, queue, Duration::from_millis(pttl as u64));
                    }
                    Ok(_) => {} // attached again
                    Err(e) => tracing::warn!(queue = %queue, "expiry check: {e}"),
                }
                return;
            }
            Ok(_) => return,
            Err(e) => tracing::debug!(queue = %queue, "expiry check failed, retrying: {e}"),
        }
    }
}
