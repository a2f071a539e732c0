//! The notification pump: one subscriber connection per shard to
//! [`CHANNEL`], shared by every watcher of the store, pinged to notice dead
//! connections and resubscribed with backoff.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use ::redis::Value;
use ::redis::aio::{PubSubSink, PubSubStream};
use busmq_core::Limits;
use futures::StreamExt;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::conn::{self, Node};
use super::{CHANNEL, Endpoint, Inner, PING_INTERVAL, config};
use crate::{Notification, QueueName};

/// Queue names in notifications are trusted (busmq wrote them), whatever
/// the local name limit.
const TRUSTED_NAMES: Limits = Limits {
    max_message_bytes: usize::MAX,
    max_batch_len: usize::MAX,
    max_name_len: usize::MAX,
};

impl Inner {
    /// Starts the subscribers (once).
    pub(super) fn start_watching(&self) {
        if self.watching.swap(true, Ordering::SeqCst) {
            return;
        }
        for node in &self.nodes {
            self.runtime.spawn(subscribe(
                Arc::clone(node),
                self.notify.clone(),
                self.cancel.clone(),
            ));
        }
    }
}

/// Opens a subscription to [`CHANNEL`] for `node`.
async fn open_subscription(
    node: &Node,
) -> std::result::Result<(PubSubSink, PubSubStream, Endpoint), String> {
    let endpoints = node.connector().pubsub_endpoints().await?;
    let (pubsub, endpoint) = conn::open_pubsub(&endpoints).await?;
    let (mut sink, stream) = pubsub.split();
    match tokio::time::timeout(conn::RESPONSE_TIMEOUT, sink.subscribe(CHANNEL)).await {
        Ok(Ok(())) => Ok((sink, stream, endpoint)),
        Ok(Err(e)) => Err(format!("{}: {}", endpoint.redacted(), config::describe(&e))),
        Err(_) => Err(format!("{}: SUBSCRIBE timed out", endpoint.redacted())),
    }
}

fn parse_notification(payload: &[u8]) -> Option<Notification> {
    let (&kind, name) = payload.split_first()?;
    let name = std::str::from_utf8(name).ok()?;
    let queue = QueueName::parse(name, &TRUSTED_NAMES).ok()?;
    match kind {
        b'd' => Some(Notification::Data(queue)),
        b'c' => Some(Notification::Closed(queue)),
        b'e' => Some(Notification::Expired(queue)),
        _ => None,
    }
}

/// Forwards the notifications of one shard into `tx` until `cancel`,
/// resubscribing with backoff whenever the connection drops.
async fn subscribe(
    node: Arc<Node>,
    tx: broadcast::Sender<Notification>,
    cancel: CancellationToken,
) {
    let mut backoff = conn::MIN_BACKOFF;
    let mut failures: u32 = 0;
    loop {
        let opened = tokio::select! {
            _ = cancel.cancelled() => return,
            r = open_subscription(&node) => r,
        };
        match opened {
            Ok((mut sink, mut stream, endpoint)) => {
                failures = 0;
                backoff = conn::MIN_BACKOFF;
                tracing::debug!(redis = %endpoint, "subscribed to {CHANNEL}");
                // Anything published while not subscribed is lost.
                let _ = tx.send(Notification::Lagged);
                let mut ping = tokio::time::interval(PING_INTERVAL);
                ping.tick().await;
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        msg = stream.next() => match msg {
                            Some(msg) => match parse_notification(msg.get_payload_bytes()) {
                                Some(n) => { let _ = tx.send(n); }
                                None => tracing::debug!("ignoring a malformed notification"),
                            },
                            None => {
                                tracing::warn!(redis = %endpoint, "notification connection closed; resubscribing");
                                break;
                            }
                        },
                        _ = ping.tick() => {
                            let pong = tokio::time::timeout(conn::RESPONSE_TIMEOUT, sink.ping::<Value>()).await;
                            if !matches!(pong, Ok(Ok(_))) {
                                tracing::warn!(redis = %endpoint, "notification connection does not answer; resubscribing");
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(30) {
                    tracing::warn!(redis = %node.label(), "cannot subscribe to notifications: {e}");
                }
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(conn::MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_parse() {
        let q = QueueName::parse("q.1", &Limits::default()).unwrap();
        assert_eq!(
            parse_notification(b"dq.1"),
            Some(Notification::Data(q.clone()))
        );
        assert_eq!(
            parse_notification(b"cq.1"),
            Some(Notification::Closed(q.clone()))
        );
        assert_eq!(parse_notification(b"eq.1"), Some(Notification::Expired(q)));
        assert_eq!(parse_notification(b"x"), None);
        assert_eq!(parse_notification(b""), None);
        assert_eq!(parse_notification(b"dbad name"), None);
    }
}
