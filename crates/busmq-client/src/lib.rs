//! The Rust SDK of busmq, shaped like node-busmq's API.
//!
//! A [`Bus`] is a connection to a broker; [`Bus::queue`] gives a [`Queue`]
//! handle with node-busmq's operations: [`attach`](Queue::attach),
//! [`push`](Queue::push), [`consume`](Queue::consume), [`ack`](Queue::ack),
//! [`detach`](Queue::detach), [`close`](Queue::close) and the rest. Where
//! node-busmq emits events, this SDK hands out async streams: a
//! [`Consumer`] is a stream of [`Delivery`]s, and [`Queue::events`] is a
//! stream of [`QueueEvent`]s. For high push rates, a [`Pusher`] keeps many
//! batches in flight on one stream. An application of many queues pushes
//! to all of them on one stream ([`Bus::pusher`]) and consumes them on one
//! ([`Bus::consume_many`], a [`ManyConsumer`]). Lease mode
//! ([`ConsumeOptions::lease`]) gives competing consumers per-message acks
//! ([`Consumer::ack_lease`], [`Consumer::nack`]) with a visibility timeout
//! and a dead-letter queue ([`Queue::dead_letters`]). [`Bus::channel`]
//! gives a bi-directional [`Channel`] between two peers; its
//! [`ChannelSession`] is a stream of [`ChannelEvent`]s.
//!
//! [`Bus::list_queues`] and [`Bus::list_channels`] list what exists on the
//! bus a page at a time ([`Bus::all_queues`] walks every page).
//!
//! [`Bus::pubsub`] gives a [`PubSub`] handle (plain publish/subscribe, not
//! stored, with its [`PubSubEvent`]s as a stream) and [`Bus::persistable`]
//! a [`Persistable`] object (tracked JSON fields, saved when dirty, kept
//! alive while persisted).
//!
//! ```no_run
//! use busmq_client::{AttachOptions, Bus, ConsumeOptions};
//! use futures::StreamExt;
//!
//! # async fn demo() -> Result<(), busmq_client::Error> {
//! let bus = Bus::connect("http://127.0.0.1:50051").await?;
//!
//! // producer
//! let q = bus.queue("foo");
//! q.attach(AttachOptions::default()).await?;
//! q.push(r#"{"hello":"world"}"#).await?;
//! q.push("my name is foo").await?;
//!
//! // consumer, reliable: every message is acked after it was handled
//! let mut consumer = q.consume(ConsumeOptions::reliable()).await?;
//! while let Some(delivery) = consumer.next().await {
//!     let delivery = delivery?;
//!     consumer.ack(delivery.id).await?;
//!     if delivery.payload == "my name is foo" {
//!         break;
//!     }
//! }
//! consumer.stop();
//! q.detach().await?;
//! # Ok(()) }
//! ```
//!
//! Every error carries a stable [`ErrorCode`] (the gRPC status code the
//! server answered with, or the one it would have used), see [`Error::code`].

#![warn(missing_docs)]

mod ack;
mod bus;
mod channel;
mod consume;
mod consume_many;
mod error;
mod events;
mod health;
mod lease;
mod listing;
mod persistable;
mod pubsub;
mod pusher;
mod queue;
mod reconnect;
mod trace_context;

pub use bus::{Bus, DEFAULT_URL};
pub use channel::{
    Channel, ChannelEvent, ChannelSender, ChannelSession, DEFAULT_LOCAL_ROLE, DEFAULT_REMOTE_ROLE,
};
pub use consume::{ClosedReason, ConsumeMode, ConsumeOptions, Consumer, Delivery};
pub use consume_many::{ManyConsumer, ManyDelivery};
pub use error::{Error, ErrorCode, Reason, Result};
pub use events::{QueueEvent, QueueEvents};
pub use health::Health;
pub use lease::{AckedLeases, LeaseToken, Nacked};
pub use listing::{
    ChannelPage, List, ListChannels, ListQueues, ListedChannel, ListedQueue, MAX_LIST_LIMIT,
    QueuePage,
};
pub use persistable::{Loaded, Persistable};
pub use pubsub::{PubSub, PubSubEvent, PubSubEvents};
pub use pusher::{PushTicket, Pusher, PusherOptions};
pub use queue::{AttachOptions, IdRange, Queue, QueueInfo};
pub use reconnect::Reconnect;

/// The payload type of messages: cheap to clone and slice.
pub use bytes::Bytes;

/// The value type of [`Persistable`] fields.
pub use serde_json::Value;

/// Compile-time checks: everything can cross tasks and threads.
#[cfg(test)]
#[allow(dead_code)]
mod send_sync {
    use super::*;

    fn send<T: Send>(_: &T) {}
    fn send_sync<T: Send + Sync>(_: &T) {}

    async fn pubsub_futures_are_send(bus: Bus, pubsub: PubSub, mut object: Persistable) {
        send_sync(&pubsub);
        send_sync(&object);
        send(&pubsub.events());
        send(&pubsub.subscribe());
        send(&pubsub.publish("x"));
        send(&bus.persistable("o"));
        send(&object.save());
        send(&object.load());
        send(&object.persist(std::time::Duration::from_secs(1)));
    }

    async fn channel_futures_are_send(bus: Bus, session: ChannelSession) {
        let channel = bus.channel("c");
        send_sync(&channel);
        send_sync(&session);
        send_sync(&session.sender());
        send(&channel.connect());
        send(&channel.send_to("local", "x"));
        send(&session.send("x"));
        send(&session.disconnect());
    }

    async fn futures_are_send(bus: Bus, queue: Queue, pusher: Pusher, consumer: Consumer) {
        send_sync(&bus);
        send_sync(&queue);
        send_sync(&pusher);
        send_sync(&consumer);
        send(&queue.events());
        send(&Bus::connect("x"));
        send(&queue.attach(AttachOptions::default()));
        send(&queue.push("x"));
        send(&queue.consume(ConsumeOptions::default()));
        send(&pusher.push(["x"]));
        send(&consumer.ack(1));
        send(&consumer.flush_acks());
        let token = LeaseToken { id: 1, attempt: 1 };
        send(&consumer.ack_lease(token));
        send(&consumer.nack(token));
        send(&pusher.finish());
    }
}
