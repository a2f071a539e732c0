//! Taking a few messages for one HTTP answer: a consume in any of the
//! SDK's modes that ends when it has what it asked for, or gives up after
//! the request's wait.
//!
//! An HTTP answer cannot hold a consume stream open, so each request opens
//! its own and closes it. What the close does depends on the mode, and
//! shapes how much a request asks for:
//!
//! - **lease**: a consumer that ends by reaching its `max` keeps its leases
//!   (to be acked by token later); one stopped before gives every lease of
//!   the stream back. So a request asks for no more than the queue has
//!   available (its `info`), in rounds that each end by reaching their
//!   `max`; a round cut short (another consumer took the messages first)
//!   gives its leases back and is not served.
//! - **unreliable**: a message is removed as it is taken, so a request also
//!   asks for no more than is available, and what it received is served
//!   even when it is cut short (at most once: a message taken at the very
//!   moment a request gives up is lost, as with any unreliable consumer).
//! - **reliable** and **persistent**: one consume of up to `max`; after the
//!   first message, the request waits only a moment for more. A reliable
//!   consumer's un-acked messages are delivered again to the next reliable
//!   consumer; a persistent read changes nothing.

use std::time::{Duration, Instant};

use busmq_client::{ConsumeOptions, Delivery, Queue};
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

/// How long a request without a wait waits for messages of a queue that
/// stores some: they may all be leased (or be taken by another consumer
/// first), and then the answer is empty rather than a wait the client did
/// not ask for. The store answers a take within a round trip, so a message
/// that can be served arrives well within it. Also the budget of each round
/// after the first, which asks only for messages known to be there.
pub(crate) const NO_WAIT_GRACE: Duration = Duration::from_millis(250);

/// Reliable and persistent mode: how long a request that received a
/// message waits for the next one before it answers with what it has.
const LINGER: Duration = Duration::from_millis(20);

/// The consume mode of a take, with what each mode needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Lease mode with this visibility timeout.
    Lease(Duration),
    /// Reliable mode; `last` is the id of the last message already handled.
    Reliable {
        /// Messages up to this id are discarded first, as if acked.
        last: Option<u64>,
    },
    /// Unreliable: removed as taken.
    Unreliable,
    /// Persistent reads from this index (0: the oldest stored).
    Persistent {
        /// The first id to read.
        from: u64,
    },
}

impl Mode {
    /// The SDK's options of a consume of `want` messages in this mode.
    fn options(self, want: u64) -> ConsumeOptions {
        let options = match self {
            Mode::Lease(visibility) => ConsumeOptions::lease(visibility),
            Mode::Reliable { last: Some(last) } => ConsumeOptions::reliable().last(last),
            Mode::Reliable { last: None } => ConsumeOptions::reliable(),
            Mode::Unreliable => ConsumeOptions::default(),
            Mode::Persistent { from } => ConsumeOptions::persistent(from),
        };
        options
            .max(want)
            .prefetch(u32::try_from(want).unwrap_or(u32::MAX))
    }

    /// True for the modes that take no more than the queue has available
    /// (see the module's doc).
    fn takes_what_is_available(self) -> bool {
        matches!(self, Mode::Lease(_) | Mode::Unreliable)
    }
}

/// One message taken, with the moment its consume was asked: a lease runs
/// out `visibility` after it at the latest, as seen from here.
#[derive(Debug, Clone)]
pub(crate) struct Taken {
    /// The message.
    pub delivery: Delivery,
    /// When the consume that took it was asked.
    pub asked: Instant,
}

/// Takes up to `max` (at least 1) messages of `queue` in `mode`, waiting up
/// to `wait` for the first (see [`NO_WAIT_GRACE`] for no wait). Gives up at
/// once, with what it has, when `shutdown` fires.
pub(crate) async fn take(
    shutdown: &CancellationToken,
    queue: Queue,
    mode: Mode,
    max: u64,
    wait: Duration,
) -> Result<Vec<Taken>, busmq_client::Error> {
    let budget = Instant::now() + if wait.is_zero() { NO_WAIT_GRACE } else { wait };
    let mut taken: Vec<Taken> = Vec::new();
    loop {
        let remaining = max.saturating_sub(taken.len() as u64);
        if remaining == 0 || shutdown.is_cancelled() {
            break;
        }
        let want = if mode.takes_what_is_available() || wait.is_zero() {
            let info = queue.info().await?;
            let available = info.count.saturating_sub(info.leased + info.pending);
            if mode.takes_what_is_available() && available > 0 {
                remaining.min(available)
            } else if !taken.is_empty() || (wait.is_zero() && info.count == 0) {
                // Nothing more to take now, or nothing stored at all:
                // answer now instead of opening a consume that would only
                // wait. Leased messages count as stored: the info does not
                // say whether their leases ran out (the store reclaims them
                // when it is next asked to take), so those need the consume.
                break;
            } else if mode.takes_what_is_available() {
                // A long poll: the first message that becomes available.
                1
            } else {
                remaining
            }
        } else {
            remaining
        };
        let first_by = if taken.is_empty() {
            budget
        } else {
            Instant::now() + NO_WAIT_GRACE
        };
        let asked = Instant::now();
        let (round, complete) = round(shutdown, &queue, mode, want, first_by).await?;
        if complete || !matches!(mode, Mode::Lease(_)) {
            taken.extend(round.into_iter().map(|delivery| Taken { delivery, asked }));
        }
        if !complete || !mode.takes_what_is_available() {
            break;
        }
    }
    Ok(taken)
}

/// One consume of `want` messages: the first by `first_by`, the next ones
/// by then too in the modes that take what is available, otherwise each
/// within [`LINGER`] of the one before. Returns what it received, and
/// whether that is all `want` (so the consume ended by reaching its max).
async fn round(
    shutdown: &CancellationToken,
    queue: &Queue,
    mode: Mode,
    want: u64,
    first_by: Instant,
) -> Result<(Vec<Delivery>, bool), busmq_client::Error> {
    let mut consumer = queue.consume(mode.options(want)).await?;
    let mut got = Vec::new();
    while (got.len() as u64) < want {
        let by = if got.is_empty() || mode.takes_what_is_available() {
            first_by
        } else {
            Instant::now() + LINGER
        };
        let next = tokio::select! {
            next = tokio::time::timeout_at(by.into(), consumer.next()) => next.ok(),
            () = shutdown.cancelled() => None,
        };
        match next {
            Some(Some(Ok(delivery))) => got.push(delivery),
            Some(Some(Err(e))) => return Err(e),
            // The stream ended before its max: the queue was closed.
            Some(None) => break,
            None => {
                // Stopping gives back a lease taken but not received yet;
                // what was already received is yielded before the end.
                consumer.stop();
                while let Some(Some(Ok(delivery))) = consumer.next().now_or_never() {
                    got.push(delivery);
                }
                break;
            }
        }
    }
    let complete = got.len() as u64 == want;
    Ok((got, complete))
}
