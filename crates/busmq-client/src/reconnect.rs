//! Riding through a broker restart: a consumer whose stream broke opens it
//! again (re-attaching its queue if the queue went away meanwhile), so
//! applications do not write raintank-queue's "connect, then join again"
//! loop themselves.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use busmq_proto::v1 as pb;
use futures::Stream;
use futures::future::BoxFuture;
use tokio::time::Instant;
use tonic::codec::Streaming;

use crate::queue::Shared;
use crate::{Error, ErrorCode, Result};

/// How consumers, channel sessions and pub/sub subscriptions of a [`Bus`](crate::Bus) recover
/// from a broken stream (broker restarted or unreachable, connection
/// dropped), set with [`Bus::reconnect`](crate::Bus::reconnect). A channel
/// session reconnects in the same way, its consume mode behaving as below;
/// see [`ChannelSession`](crate::ChannelSession) for its sends.
///
/// While reconnecting, a consumer retries with a backoff from 50 ms
/// doubling to 1 s; after [`give_up_after`](Self::give_up_after) without
/// success it yields the last error and ends. Messages it already received
/// stay in its buffer and are yielded first.
///
/// What a reconnected consumer sees, by mode:
/// - reliable: messages not acked before the break are delivered again
///   (at least once); while the old consumer's lock lapses (the broker's
///   `--reliable-lease-ms`, 5 s by default, when the broker was killed) the
///   queue reports another reliable consumer, and the consumer keeps
///   retrying.
/// - persistent: reading resumes after the last message received, with no
///   gap and no duplicate.
/// - unreliable: messages on the way to the consumer when the stream broke
///   are lost, as always in that mode.
/// - lease: the old leases go back to the queue (at once, or when their
///   visibility timeout ends if the broker died) and are delivered again.
/// - `max`: the new stream asks only for what is still missing.
///
/// Pushes are not retried by the SDK: a push whose answer was lost may have
/// been stored, so only the caller can decide whether to send it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnect {
    /// Whether consumers reconnect at all. `false`: a broken stream yields
    /// its error and ends.
    pub enabled: bool,
    /// How long one outage may last before the consumer gives up.
    pub give_up_after: Duration,
}

impl Default for Reconnect {
    /// Enabled, giving up after 60 seconds.
    fn default() -> Self {
        Reconnect {
            enabled: true,
            give_up_after: Duration::from_secs(60),
        }
    }
}

impl Reconnect {
    /// No reconnection: a broken stream ends the consumer with its error.
    pub fn disabled() -> Self {
        Reconnect {
            enabled: false,
            ..Reconnect::default()
        }
    }
}

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The pacing of one outage's attempts: a growing pause before each, and
/// the moment the policy gives up.
pub(crate) struct Backoff {
    deadline: Instant,
    pause: Duration,
}

impl Backoff {
    /// Starts an outage now, under `policy`.
    pub(crate) fn new(policy: Reconnect) -> Backoff {
        Backoff {
            deadline: Instant::now() + policy.give_up_after,
            pause: FIRST_BACKOFF,
        }
    }

    /// Waits before the next attempt; the wait doubles up to its ceiling.
    pub(crate) async fn pause(&mut self) {
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 2).min(MAX_BACKOFF);
    }

    /// True once the outage lasted longer than the policy allows.
    pub(crate) fn gave_up(&self) -> bool {
        Instant::now() >= self.deadline
    }
}

/// A failure of the path to the broker rather than an answer of the
/// broker: worth a reconnect.
///
/// Statuses a busmq server sends are decoded from trailers and carry no
/// source; a status built by the local transport (connection reset, broken
/// pipe, GOAWAY) keeps the transport error as its source, whatever code it
/// was mapped to.
pub(crate) fn is_transient(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded
    ) || (matches!(status.code(), Code::Unknown | Code::Internal)
        && std::error::Error::source(status).is_some())
}

/// What a reconnect produces: the new stream and its first event (the
/// server's `consuming` confirmation).
pub(crate) type Reopened = (Streaming<pb::ConsumeEvent>, Option<pb::ConsumeEvent>);

/// Opens the consume stream `request` again, retrying transient failures
/// with backoff until `policy.give_up_after`. A queue that went away is
/// attached again when this handle had attached it; a reliable or lease
/// queue still held by the broken stream's lock is waited for.
pub(crate) async fn reopen(
    shared: Arc<Shared>,
    request: pb::ConsumeRequest,
    policy: Reconnect,
) -> Result<Reopened> {
    retry_open(
        policy,
        || open(&shared, request.clone()),
        || reattach(std::slice::from_ref(&shared)),
    )
    .await
}

/// Calls `open` until it succeeds, pausing with backoff, as long as its
/// failure is transient, a lock or lease of the broken stream that is
/// lapsing, or a queue gone away that `reattach` (true when it attached
/// anything) attached again; gives up after `policy.give_up_after`.
pub(crate) async fn retry_open<T, O, A>(
    policy: Reconnect,
    mut open: impl FnMut() -> O,
    mut reattach: impl FnMut() -> A,
) -> Result<T>
where
    O: Future<Output = Result<T, tonic::Status>>,
    A: Future<Output = bool>,
{
    let mut backoff = Backoff::new(policy);
    loop {
        backoff.pause().await;
        let status = match open().await {
            Ok(opened) => return Ok(opened),
            Err(status) => status,
        };
        let err = Error::from(status.clone());
        let retry = if is_transient(&status) {
            true
        } else {
            match err.code() {
                // The broken stream's lock or leases are lapsing.
                ErrorCode::FailedPrecondition => true,
                // The queue expired or was lost with a memory store: attach
                // it again as its handle did (a failure shows in the next
                // attempt).
                ErrorCode::NotFound => reattach().await,
                _ => false,
            }
        };
        if !retry || backoff.gave_up() {
            return Err(err);
        }
    }
}

/// Attaches again each of `queues` whose handle holds attachments; false
/// when none does.
pub(crate) async fn reattach(queues: &[Arc<Shared>]) -> bool {
    let mut any = false;
    for shared in queues {
        if let Some(attach) = shared.attach_request() {
            let _ = shared.client().attach(attach).await;
            any = true;
        }
    }
    any
}

async fn open(shared: &Shared, request: pb::ConsumeRequest) -> Result<Reopened, tonic::Status> {
    let mut stream = shared.client().consume(request).await?.into_inner();
    let first = stream.message().await?;
    Ok((stream, first))
}

/// A reconnect under way: the new stream and its first event. In a mutex
/// only to keep its holder `Sync`; it is polled through `&mut`, never
/// locked.
type Reopening<E> = std::sync::Mutex<BoxFuture<'static, Result<(Streaming<E>, Option<E>)>>>;

/// A consumer's server stream, which a reconnect may replace: the open
/// stream, a reconnect under way, or neither (over).
pub(crate) struct Link<E> {
    stream: Option<Streaming<E>>,
    reopening: Option<Reopening<E>>,
    reconnects: u64,
}

/// What polling a [`Link`] gave.
pub(crate) enum Polled<E> {
    /// The next event of the stream.
    Event(E),
    /// A reconnect succeeded, with the new stream's first event.
    Reconnected(Option<E>),
    /// The stream broke; [`Link::reopen`] or give up.
    Broken(tonic::Status),
    /// The reconnect gave up.
    Failed(Error),
    /// The server ended the stream.
    Ended,
}

impl<E: 'static> Link<E> {
    pub(crate) fn open(stream: Streaming<E>) -> Self {
        Link {
            stream: Some(stream),
            reopening: None,
            reconnects: 0,
        }
    }

    /// How many reconnects succeeded.
    pub(crate) fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// Neither a stream nor a reconnect: nothing more will come.
    pub(crate) fn is_over(&self) -> bool {
        self.stream.is_none() && self.reopening.is_none()
    }

    /// Drops the stream (ending the call) and any reconnect.
    pub(crate) fn close(&mut self) {
        self.stream = None;
        self.reopening = None;
    }

    /// Replaces the broken stream with `reconnect`'s.
    pub(crate) fn reopen(
        &mut self,
        reconnect: impl Future<Output = Result<(Streaming<E>, Option<E>)>> + Send + 'static,
    ) {
        self.stream = None;
        self.reopening = Some(std::sync::Mutex::new(Box::pin(reconnect)));
    }

    /// The next thing that happened; `Ready(None)` once over. After
    /// `Broken`, `Failed` or `Ended` the stream is gone.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Polled<E>>> {
        if let Some(reopening) = self.reopening.as_mut() {
            let reopening = reopening.get_mut().unwrap_or_else(|p| p.into_inner());
            let reopened = std::task::ready!(reopening.as_mut().poll(cx));
            self.reopening = None;
            return Poll::Ready(Some(match reopened {
                Ok((stream, first)) => {
                    self.stream = Some(stream);
                    self.reconnects += 1;
                    Polled::Reconnected(first)
                }
                Err(err) => Polled::Failed(err),
            }));
        }
        let Some(stream) = self.stream.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = match std::task::ready!(Pin::new(stream).poll_next(cx)) {
            Some(Ok(event)) => return Poll::Ready(Some(Polled::Event(event))),
            Some(Err(status)) => Polled::Broken(status),
            None => Polled::Ended,
        };
        self.stream = None;
        Poll::Ready(Some(polled))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_answers_are_not_transient_but_transport_failures_are() {
        use tonic::{Code, Status};
        assert!(is_transient(&Status::unavailable("broker shutting down")));
        assert!(!is_transient(&Status::not_found("no such queue")));
        assert!(!is_transient(&Status::internal("a bug")));
        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "broken pipe");
        let mut reset = Status::new(Code::Unknown, "h2 protocol error");
        reset.set_source(Arc::new(io));
        assert!(is_transient(&reset));
    }
}
