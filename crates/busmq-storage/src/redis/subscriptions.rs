//! Pub/sub subscriptions: each one its own Redis pub/sub connection, fed
//! into the subscriber's bounded outbox until either side goes away.

use ::redis::Value;
use ::redis::aio::{PubSubSink, PubSubStream};
use bytes::Bytes;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::conn::{self, Node};
use super::keys::pubsub_channel;
use super::{PING_INTERVAL, config};
use crate::pubsub::{Offer, Outbox};
use crate::{ChannelName, Error, Result};

/// Opens a subscription connection to `channel` on the pub/sub shard.
pub(super) async fn open_channel(
    node: &Node,
    channel: &ChannelName,
) -> std::result::Result<(PubSubSink, PubSubStream), String> {
    let endpoints = node.connector().pubsub_endpoints().await?;
    let (pubsub, endpoint) = conn::open_pubsub(&endpoints).await?;
    let (mut sink, stream) = pubsub.split();
    match tokio::time::timeout(
        conn::RESPONSE_TIMEOUT,
        sink.subscribe(pubsub_channel(channel)),
    )
    .await
    {
        Ok(Ok(())) => Ok((sink, stream)),
        Ok(Err(e)) => Err(format!("{}: {}", endpoint.redacted(), config::describe(&e))),
        Err(_) => Err(format!("{}: SUBSCRIBE timed out", endpoint.redacted())),
    }
}

/// Feeds one subscription from its connection until the subscriber goes
/// away (dropping the connection, which unsubscribes), the connection
/// breaks (the subscription ends with UNAVAILABLE) or the store is dropped.
pub(super) async fn pump_channel(
    mut sink: PubSubSink,
    mut stream: PubSubStream,
    mut outbox: Outbox<Result<crate::ChannelEvent>>,
    label: String,
    cancel: CancellationToken,
) {
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    let broken = loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = outbox.closed() => return,
            msg = stream.next() => match msg {
                Some(msg) => {
                    let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
                    if outbox.offer(payload, Ok) == Offer::Closed {
                        return;
                    }
                }
                None => break "the connection closed",
            },
            _ = ping.tick() => {
                let pong = tokio::time::timeout(conn::RESPONSE_TIMEOUT, sink.ping::<Value>()).await;
                if !matches!(pong, Ok(Ok(_))) {
                    break "the connection does not answer";
                }
            }
        }
    };
    outbox.finish(Err(Error::Unavailable(format!(
        "Redis at {label}: subscription lost: {broken}"
    ))));
}
