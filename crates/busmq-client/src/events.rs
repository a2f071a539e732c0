//! node-busmq's queue events, as an async stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

/// Events a listener keeps before it starts skipping the oldest.
pub(crate) const EVENT_CAPACITY: usize = 1024;

/// Something that happened on a [`Queue`](crate::Queue) handle, the events of
/// node-busmq's queue.
///
/// Events describe what this client did or saw: another client's attach or
/// push is not reported here.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueueEvent {
    /// An attach was sent.
    Attaching,
    /// The attach succeeded; `existed` is true when the queue already
    /// existed, false when this attach created it.
    Attached {
        /// The queue existed before the attach.
        existed: bool,
    },
    /// A detach was sent.
    Detaching,
    /// The detach succeeded. With no attachments left the queue expires
    /// after its ttl.
    Detached,
    /// A consumer of this handle started (`true`) or stopped (`false`).
    Consuming(bool),
    /// A consumer of this handle received the message with this id.
    Message {
        /// The message id.
        id: u64,
    },
    /// The queue was closed: by [`Queue::close`](crate::Queue::close) on
    /// this handle, or reported to one of its consumers (closed by someone
    /// else, or expired). Both may report the same close.
    Closed,
    /// A call on this handle or one of its consumers failed; the error was
    /// also returned to the caller.
    Error(String),
    /// A consumer's stream broke on the way to the broker (the error); the
    /// consumer is opening it again (see [`Reconnect`](crate::Reconnect)).
    Reconnecting(String),
    /// A consumer's stream is open again after [`QueueEvent::Reconnecting`].
    Reconnected,
}

/// The stream of [`QueueEvent`]s of a queue handle, from
/// [`Queue::events`](crate::Queue::events).
///
/// Backed by a bounded broadcast channel: a listener that falls more than
/// 1024 events behind skips the oldest ones (see [`skipped`](Self::skipped))
/// instead of slowing the queue down. The stream ends when the queue handle,
/// all its clones and all its consumers and pushers are dropped.
pub struct QueueEvents {
    inner: BroadcastStream<QueueEvent>,
    skipped: u64,
}

impl QueueEvents {
    pub(crate) fn new(rx: tokio::sync::broadcast::Receiver<QueueEvent>) -> Self {
        QueueEvents {
            inner: BroadcastStream::new(rx),
            skipped: 0,
        }
    }

    /// How many events this listener missed because it fell behind.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
}

impl std::fmt::Debug for QueueEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueEvents")
            .field("skipped", &self.skipped)
            .finish_non_exhaustive()
    }
}

impl Stream for QueueEvents {
    type Item = QueueEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<QueueEvent>> {
        loop {
            match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(event))) => return Poll::Ready(Some(event)),
                Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(n)))) => {
                    self.skipped += n;
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use tokio::sync::broadcast;

    #[tokio::test]
    async fn lagging_listener_skips() {
        let (tx, rx) = broadcast::channel(4);
        let mut events = QueueEvents::new(rx);
        for id in 1..=10 {
            tx.send(QueueEvent::Message { id }).unwrap();
        }
        drop(tx);
        let got: Vec<_> = (&mut events).collect().await;
        assert_eq!(
            got,
            (7..=10)
                .map(|id| QueueEvent::Message { id })
                .collect::<Vec<_>>()
        );
        assert_eq!(events.skipped(), 6);
    }
}
