//! The connection to a busmq broker.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use busmq_proto::v1::channels_client::ChannelsClient;
use busmq_proto::v1::objects_client::ObjectsClient;
use busmq_proto::v1::pub_sub_client::PubSubClient;
use busmq_proto::v1::queues_client::QueuesClient;
use tonic::transport::Endpoint;

use crate::trace_context::{TraceContext, Transport};

use crate::channel::{DEFAULT_LOCAL_ROLE, DEFAULT_REMOTE_ROLE};
use crate::{
    Channel, ConsumeOptions, Error, ManyConsumer, Persistable, PubSub, Pusher, PusherOptions,
    Queue, Reconnect, Result,
};

/// The default broker address (`busmq serve` listens there).
pub const DEFAULT_URL: &str = "http://127.0.0.1:50051";

/// The largest response the SDK accepts. A consume batch may carry many
/// messages of up to the server's message size limit (1 MiB by default), so
/// this is far above tonic's default of 4 MiB.
const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// How long [`Bus::connect`] waits for the TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to a busmq broker: node-busmq's `Bus`.
///
/// One HTTP/2 connection carries every call of every [`Queue`] made from it,
/// consumers and pushers included. Cloning is cheap and shares that
/// connection. The connection is re-established by itself after a failure;
/// calls made while it is down fail with an [`ErrorCode::Unavailable`]
/// error.
///
/// [`ErrorCode::Unavailable`]: crate::ErrorCode::Unavailable
#[derive(Clone)]
pub struct Bus {
    client: QueuesClient<Transport>,
    channels: ChannelsClient<Transport>,
    /// The connection, for the clients of pub/sub and objects.
    transport: Transport,
    url: Arc<str>,
    reconnect: Reconnect,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("url", &self.url)
            .field("reconnect", &self.reconnect)
            .finish()
    }
}

impl Bus {
    /// Connects to the broker at `url` (`http://host:port`; a bare
    /// `host:port` means `http://host:port`) and fails if it cannot be
    /// reached within a few seconds.
    ///
    /// TLS (`https://`) is not supported yet.
    pub async fn connect(url: impl AsRef<str>) -> Result<Bus> {
        let (endpoint, url) = endpoint(url.as_ref())?;
        let channel = endpoint.connect().await.map_err(|e| Error::Connect {
            url: url.clone(),
            source: Arc::new(e),
        })?;
        Ok(Bus::with_channel(channel, url))
    }

    /// Like [`Bus::connect`], but connects on first use instead of now, so
    /// it never fails for an unreachable server (the first call does).
    ///
    /// Must be called within a Tokio runtime.
    pub fn connect_lazy(url: impl AsRef<str>) -> Result<Bus> {
        let (endpoint, url) = endpoint(url.as_ref())?;
        Ok(Bus::with_channel(endpoint.connect_lazy(), url))
    }

    /// Uses an already configured tonic channel (custom timeouts, a
    /// load-balanced channel, an in-process transport in tests, ...).
    pub fn from_channel(channel: tonic::transport::Channel) -> Bus {
        Bus::with_channel(channel, "<channel>".to_owned())
    }

    fn with_channel(channel: tonic::transport::Channel, url: String) -> Bus {
        let channel = TraceContext::new(channel);
        Bus {
            client: QueuesClient::new(channel.clone())
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            channels: ChannelsClient::new(channel.clone())
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            transport: channel,
            url: url.into(),
            reconnect: Reconnect::default(),
        }
    }

    /// How consumers of queues, channel sessions and pub/sub subscriptions made from this bus
    /// (from now on) recover from a broken stream; reconnection is on by default, giving up after
    /// 60 s. See [`Reconnect`].
    ///
    /// ```
    /// # fn demo() -> Result<(), busmq_client::Error> {
    /// use std::time::Duration;
    /// use busmq_client::{Bus, Reconnect};
    ///
    /// # let rt = tokio::runtime::Runtime::new().unwrap();
    /// # let _guard = rt.enter();
    /// let bus = Bus::connect_lazy("http://127.0.0.1:50051")?.reconnect(Reconnect {
    ///     enabled: true,
    ///     give_up_after: Duration::from_secs(300),
    /// });
    /// # Ok(()) }
    /// ```
    pub fn reconnect(mut self, policy: Reconnect) -> Bus {
        self.reconnect = policy;
        self
    }

    /// The connection every client of this bus shares.
    pub(crate) fn transport(&self) -> Transport {
        self.transport.clone()
    }

    /// The queue service's client of this bus.
    pub(crate) fn queues_client(&self) -> QueuesClient<Transport> {
        self.client.clone()
    }

    /// The broker address this bus talks to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A handle on the queue `name`: node-busmq's `bus.queue(name)`.
    ///
    /// Nothing is sent yet; call [`Queue::attach`] before pushing or
    /// consuming. The name is checked by the server (1..=200 characters of
    /// `[A-Za-z0-9._:-]` by default), so a bad one fails on first use.
    pub fn queue(&self, name: impl Into<String>) -> Queue {
        Queue::new(self.client.clone(), name.into(), self.reconnect)
    }

    /// Consumes every queue of `queues` with the same `options`, on one
    /// stream: the server sends several queues' messages per frame, so a
    /// consumer of thousands of queues costs about what a consumer of a
    /// few does (see [`ManyConsumer`]). Each queue must exist (attach it
    /// first); a queue named twice is refused with `InvalidArgument`, as
    /// is an empty slice or one of more than 100,000 queues.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), busmq_client::Error> {
    /// use busmq_client::{AttachOptions, Bus, ConsumeOptions};
    /// use futures::StreamExt;
    ///
    /// let bus = Bus::connect("http://127.0.0.1:50051").await?;
    /// let mut queues = Vec::new();
    /// for name in ["orders.eu", "orders.us"] {
    ///     let queue = bus.queue(name);
    ///     queue.attach(AttachOptions::default()).await?;
    ///     queues.push(queue);
    /// }
    /// let mut consumer = bus.consume_many(&queues, ConsumeOptions::reliable()).await?;
    /// while let Some(received) = consumer.next().await {
    ///     let received = received?;
    ///     println!("{}: {:?}", consumer.queues()[received.queue].name(), received.delivery.payload);
    ///     consumer.ack_later(received.queue, received.delivery.id);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn consume_many(
        &self,
        queues: &[Queue],
        options: ConsumeOptions,
    ) -> Result<ManyConsumer> {
        ManyConsumer::start(
            self.client.clone(),
            queues.to_vec(),
            options,
            self.reconnect,
        )
        .await
    }

    /// A [`Pusher`] to every queue of `queues` on one stream, as a Kafka
    /// producer sends to many partitions on one connection: push to the
    /// queue at position `i` with [`Pusher::push_to`]`(i, ..)`. Batches of
    /// one queue keep their order; batches of different queues are stored
    /// concurrently. A producer of thousands of queues then holds one
    /// stream instead of one per queue. An empty slice is refused
    /// (`InvalidArgument`).
    ///
    /// Must be called within a Tokio runtime.
    pub fn pusher(&self, queues: &[Queue], options: PusherOptions) -> Result<Pusher> {
        if queues.is_empty() {
            return Err(Error::InvalidOptions("a pusher needs a queue".into()));
        }
        Ok(Pusher::start(self.client.clone(), queues.to_vec(), options))
    }

    /// A handle on the publish/subscribe channel `name`: node-busmq's
    /// `bus.pubsub(name)`.
    ///
    /// Nothing is sent yet. The name follows the rules of queue names and
    /// is checked by the server on first use.
    pub fn pubsub(&self, name: impl Into<String>) -> PubSub {
        PubSub::new(
            PubSubClient::new(self.transport.clone()).max_decoding_message_size(MAX_RESPONSE_BYTES),
            name.into(),
            self.reconnect,
        )
    }

    /// A persistable object named `name`, with no field yet: node-busmq's
    /// `bus.persistify(name, object, properties)`. Call
    /// [`Persistable::load`] to read what the bus has.
    ///
    /// Nothing is sent yet. The name follows the rules of queue names and
    /// is checked by the server on first use.
    pub fn persistable(&self, name: impl Into<String>) -> Persistable {
        Persistable::new(
            ObjectsClient::new(self.transport.clone())
                .max_decoding_message_size(MAX_RESPONSE_BYTES),
            name.into(),
        )
    }

    /// A handle on the channel `name` with the default roles `local` and
    /// `remote`: node-busmq's `bus.channel(name)`. One peer calls
    /// [`Channel::listen`], the other [`Channel::connect`].
    ///
    /// Nothing is sent yet; a bad name fails on first use.
    pub fn channel(&self, name: impl Into<String>) -> Channel {
        self.channel_with_roles(name, DEFAULT_LOCAL_ROLE, DEFAULT_REMOTE_ROLE)
    }

    /// A handle on the channel `name` with explicit roles: node-busmq's
    /// `bus.channel(name, local, remote)`. [`Channel::connect`] consumes
    /// `local` and sends to `remote`, so the other peer names the same roles
    /// the other way round. Roles are 1..=64 characters of `[A-Za-z0-9_-]`,
    /// checked by the server.
    pub fn channel_with_roles(
        &self,
        name: impl Into<String>,
        local: impl Into<String>,
        remote: impl Into<String>,
    ) -> Channel {
        Channel::new(
            self.channels.clone(),
            name.into(),
            local.into(),
            remote.into(),
            self.reconnect,
        )
    }
}

/// Parses and normalises a server address into a configured endpoint.
fn endpoint(url: &str) -> Result<(Endpoint, String)> {
    let trimmed = url.trim();
    let invalid = |reason: &str| Error::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    if trimmed.is_empty() {
        return Err(invalid("empty"));
    }
    let full = if trimmed.contains("://") {
        trimmed.to_owned()
    } else {
        format!("http://{trimmed}")
    };
    if full.starts_with("https://") {
        return Err(invalid("TLS (https://) is not supported yet; use http://"));
    }
    if !full.starts_with("http://") {
        return Err(invalid("expected http://host:port"));
    }
    let endpoint = Endpoint::from_shared(full.clone())
        .map_err(|e| invalid(&e.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    if endpoint.uri().host().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    Ok((endpoint, full))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode;

    #[test]
    fn urls() {
        assert_eq!(endpoint("http://h:1").unwrap().1, "http://h:1");
        assert_eq!(
            endpoint(" 127.0.0.1:50051 ").unwrap().1,
            "http://127.0.0.1:50051"
        );
        for bad in ["", "   ", "https://h:1", "ftp://h", "http://", "http://a b"] {
            let err = endpoint(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidUrl { .. }), "{bad}: {err}");
            assert_eq!(err.code(), ErrorCode::InvalidArgument);
        }
    }

    #[tokio::test]
    async fn connect_refused_is_unavailable() {
        // A port nobody listens on: bind, note it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = Bus::connect(format!("127.0.0.1:{port}")).await.unwrap_err();
        assert!(matches!(err, Error::Connect { .. }), "{err}");
        assert!(err.is_unavailable());
    }

    #[tokio::test]
    async fn lazy_connect_fails_on_first_call() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let bus = Bus::connect_lazy(format!("http://127.0.0.1:{port}")).unwrap();
        let err = bus.queue("q").exists().await.unwrap_err();
        assert!(err.is_unavailable(), "{err:?}");
    }
}
