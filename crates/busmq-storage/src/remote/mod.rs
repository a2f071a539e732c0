//! A gRPC client of the `busmq-storage` service that implements [`Storage`].
//!
//! The connection is lazy, so a broker can start before its storage; while
//! the storage is down every call fails fast with an UNAVAILABLE error
//! instead of hanging, and [`Storage::watch`] reconnects by itself. The hot
//! operations share one pipelined `Session` stream, reopened after a break.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use busmq_core::Limits;
use busmq_proto::from_status;
use busmq_proto::storage::v1 as pb;
use busmq_proto::storage::v1::storage_client::StorageClient;
use busmq_proto::{duration, listing, v1};
use bytes::Bytes;
use futures::StreamExt;
use prost::Message as _;
use tonic::transport::{Channel, Endpoint};
use tonic::{Status, Streaming};

mod session;

pub use session::{MAX_SESSION_REQUEST, SESSION_QUEUE, SESSION_WINDOW};

use pb::session_request::Op;
use pb::session_response::Result as Answer;
use session::{Sessions, mismatch};

use crate::wire;
use crate::{
    Attached, ChannelEvent, ChannelFilter, ChannelName, ChannelPage, Error, IdRange, LeaseToken,
    LeasedMessage, Leases, Message, Notification, Notifications, ObjectFields, ObjectName,
    QueueFilter, QueueInfo, QueueName, QueuePage, ReliableLock, Result, Settled, Settlement,
    Storage, Subscription, TakeMode, TakeRequest, Taken,
};

/// Largest message the client sends or accepts: generous, so the server's
/// own limits are the ones that apply.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// How long opening a connection to the storage may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one call may wait for its answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// First wait before the watch stream reconnects; doubles per failure.
pub const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(100);

/// Longest wait between two reconnects of the watch stream.
pub const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The connection to the storage: every unary call carries the current
/// span's trace context in its metadata (when traces are exported).
type Transport = busmq_server::telemetry::ClientTrace<Channel>;

/// A [`Storage`] served by a `busmq-storage` process, reached over gRPC.
///
/// Push, take, read, ack, lease and settle ride one multiplexed `Session`
/// stream (see [`session`]); everything else is a unary call. Cheap to
/// clone: clones share one HTTP/2 connection and one session.
#[derive(Clone, Debug)]
pub struct RemoteStorage {
    client: StorageClient<Transport>,
    sessions: Arc<Sessions>,
    url: String,
}

impl RemoteStorage {
    /// A client of the storage service at `url` (`http://HOST:PORT`).
    ///
    /// Does not connect: the first call does, and calls made while the
    /// storage is down fail with an UNAVAILABLE error. Must be called from
    /// within a Tokio runtime. A malformed URL is
    /// [`Error::InvalidArgument`] naming it.
    pub fn connect_lazy(url: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::InvalidArgument(format!(
                "invalid storage URL {url:?}: {why} (expected http://HOST:PORT)"
            ))
        };
        let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| bad(&e.to_string()))?;
        match endpoint.uri().scheme_str() {
            Some("http") => {}
            Some(other) => return Err(bad(&format!("unsupported scheme {other:?}"))),
            None => return Err(bad("no scheme")),
        }
        if endpoint.uri().host().is_none_or(str::is_empty) {
            return Err(bad("no host"));
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::Internal(
                "RemoteStorage::connect_lazy must be called within a Tokio runtime".into(),
            ));
        }
        let channel = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true)
            .connect_lazy();
        let client = StorageClient::new(busmq_server::telemetry::ClientTrace::new(channel))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(RemoteStorage {
            sessions: Arc::new(Sessions::new(client.clone(), url.to_owned())),
            client,
            url: url.to_owned(),
        })
    }

    /// Operations sent on the session and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.sessions.in_flight()
    }

    /// The URL this client talks to.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn client(&self) -> StorageClient<Transport> {
        self.client.clone()
    }

    fn error(&self, status: Status) -> Error {
        call_error(&self.url, status)
    }
}

/// The error a failed call stands for. A status the storage sent keeps its
/// code and message ([`from_status`]); a transport failure (no storage
/// answered) is [`Error::Unavailable`] naming the URL and cause.
fn call_error(url: &str, status: Status) -> Error {
    if std::error::Error::source(&status).is_none() {
        return from_status(status);
    }
    let message = with_causes(&status);
    if status.code() == tonic::Code::Unavailable || status.code() == tonic::Code::Unknown {
        Error::Unavailable(format!("storage at {url} is unreachable: {message}"))
    } else {
        from_status(Status::new(status.code(), message))
    }
}

/// A status's message followed by each cause under it that it does not
/// already say.
fn with_causes(status: &Status) -> String {
    let mut message = status.message().to_owned();
    let mut cause = std::error::Error::source(status);
    while let Some(c) = cause {
        let text = c.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        cause = c.source();
    }
    message
}

fn queue_request(queue: &QueueName) -> pb::QueueRequest {
    pb::QueueRequest {
        queue: queue.to_string(),
    }
}

/// Milliseconds of a lease, saturating.
/// A lock's lease on the wire, rounded up to whole milliseconds so a short
/// one never becomes zero.
fn wire_lease(lock: &ReliableLock) -> Option<busmq_proto::prost_types::Duration> {
    Some(duration::millis_rounded_up(lock.lease))
}

/// The events a wire subscription event stands for; none for an empty one
/// (a newer server's event this client does not know).
fn channel_events_from_proto(e: pb::ChannelEvent) -> Vec<ChannelEvent> {
    match e.event {
        Some(pb::channel_event::Event::Messages(batch)) => batch
            .messages
            .into_iter()
            .map(ChannelEvent::Message)
            .collect(),
        Some(pb::channel_event::Event::Missed(n)) => vec![ChannelEvent::Missed(n)],
        None => Vec::new(),
    }
}

/// State of one remote subscription: its stream, and the events of the
/// last batch not yet yielded.
struct RemoteSubscription {
    storage: RemoteStorage,
    channel: ChannelName,
    stream: Streaming<pb::ChannelEvent>,
    ready: std::collections::VecDeque<ChannelEvent>,
}

impl RemoteSubscription {
    /// The next event; after an error, nothing (the unfold state is gone).
    async fn next(mut self) -> Option<(Result<ChannelEvent>, Option<Self>)> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some((Ok(event), Some(self)));
            }
            match self.stream.message().await {
                Ok(Some(e)) => self.ready.extend(channel_events_from_proto(e)),
                Ok(None) => {
                    let err = Error::Unavailable(format!(
                        "storage at {} ended the subscription to {}",
                        self.storage.url, self.channel
                    ));
                    return Some((Err(err), None));
                }
                Err(status) => return Some((Err(self.storage.error(status)), None)),
            }
        }
    }
}

/// A batch the storage sent; one that does not decode is the storage's
/// fault, not the caller's.
fn from_wire_messages(messages: pb::Messages) -> Result<Vec<Message>> {
    wire::messages_from_wire(messages)
        .map_err(|e| Error::Internal(format!("storage sent a malformed batch: {e}")))
}

/// The notification a wire notification stands for. Anything unexpected
/// (an unknown kind, a name this side would not accept) becomes
/// [`Notification::Lagged`]: waiting consumers look again, which is always
/// safe.
pub fn notification_from_proto(n: pb::Notification) -> Notification {
    let limits = Limits {
        max_name_len: usize::MAX,
        ..Limits::default()
    };
    let kind = pb::NotificationKind::try_from(n.kind).unwrap_or(pb::NotificationKind::Lagged);
    let queue = || QueueName::parse(&n.queue, &limits).ok();
    match kind {
        pb::NotificationKind::Data => queue().map(Notification::Data),
        pb::NotificationKind::Closed => queue().map(Notification::Closed),
        pb::NotificationKind::Expired => queue().map(Notification::Expired),
        pb::NotificationKind::Lagged | pb::NotificationKind::Unspecified => None,
    }
    .unwrap_or(Notification::Lagged)
}

/// State of the reconnecting watch stream.
struct WatchState {
    client: StorageClient<Transport>,
    url: String,
    stream: Option<Streaming<pb::Notification>>,
    /// Wait before the next connection attempt; zero for the first one.
    backoff: Duration,
}

impl WatchState {
    async fn next(mut self) -> Option<(Notification, Self)> {
        loop {
            if let Some(stream) = &mut self.stream {
                match stream.message().await {
                    Ok(Some(n)) => return Some((notification_from_proto(n), self)),
                    Ok(None) => tracing::debug!(url = %self.url, "storage watch stream ended"),
                    Err(status) => {
                        tracing::debug!(url = %self.url, %status, "storage watch stream broke")
                    }
                }
                self.stream = None;
                self.backoff = WATCH_BACKOFF_MIN;
            }
            if !self.backoff.is_zero() {
                tokio::time::sleep(self.backoff).await;
            }
            match self.client.watch(()).await {
                Ok(response) => {
                    self.stream = Some(response.into_inner());
                    self.backoff = Duration::ZERO;
                    // Anything may have happened while the stream was not
                    // open (including before the first connect): waiting
                    // consumers must look again.
                    return Some((Notification::Lagged, self));
                }
                Err(status) => {
                    tracing::debug!(url = %self.url, %status, "storage watch: reconnect failed");
                    self.backoff = (self.backoff * 2).clamp(WATCH_BACKOFF_MIN, WATCH_BACKOFF_MAX);
                }
            }
        }
    }
}

#[async_trait]
impl Storage for RemoteStorage {
    #[tracing::instrument(level = "debug", name = "storage.attach", skip_all, fields(otel.kind = "client", messaging.destination.name = queue.as_str()))]
    async fn attach(&self, queue: &QueueName, ttl: Option<Duration>) -> Result<Attached> {
        let r = self
            .client()
            .attach(pb::AttachRequest {
                queue: queue.to_string(),
                ttl: ttl.map(duration::seconds_rounded_up),
            })
            .await
            .map_err(|s| self.error(s))?
            .into_inner();
        Ok(Attached {
            existed: r.existed,
            attachments: r.attachments,
        })
    }

    #[tracing::instrument(level = "debug", name = "storage.detach", skip_all, fields(otel.kind = "client", messaging.destination.name = queue.as_str()))]
    async fn detach(&self, queue: &QueueName) -> Result<u64> {
        let r = self
            .client()
            .detach(queue_request(queue))
            .await
            .map_err(|s| self.error(s))?;
        Ok(r.into_inner().attachments)
    }

    #[tracing::instrument(level = "debug", name = "storage.push", skip_all, fields(otel.kind = "client", messaging.destination.name = queue.as_str(), messaging.batch.message_count = messages.len()))]
    async fn push(&self, queue: &QueueName, messages: Vec<Bytes>) -> Result<IdRange> {
        // The storage service validates the batch (Limits::check_batch);
        // its refusal comes back as the same typed error.
        let request = pb::PushRequest {
            queue: queue.to_string(),
            messages: Some(wire::pack(&messages)),
        };
        let r = if request.encoded_len() > MAX_SESSION_REQUEST {
            self.client()
                .push(request)
                .await
                .map_err(|s| self.error(s))?
                .into_inner()
        } else {
            match self.sessions.call(Op::Push(request)).await? {
                Answer::Push(r) => r,
                other => return Err(mismatch("push", &other)),
            }
        };
        Ok(IdRange {
            first: r.first_id,
            last: r.last_id,
        })
    }

    #[tracing::instrument(level = "debug", name = "storage.take", skip_all, fields(otel.kind = "client", messaging.destination.name = queue.as_str(), max))]
    async fn take(&self, queue: &QueueName, max: u32, mode: TakeMode) -> Result<Vec<Message>> {
        let op = Op::Take(pb::TakeRequest {
            queue: queue.to_string(),
            max,
            mode: pb::TakeMode::from(mode).into(),
        });
        match self.sessions.call(op).await? {
            Answer::Messages(r) => from_wire_messages(r),
            other => Err(mismatch("take", &other)),
        }
    }

    #[tracing::instrument(level = "debug", name = "storage.take_many", skip_all, fields(otel.kind = "client", queues = requests.len(), budget))]
    async fn take_many(&self, requests: &[TakeRequest], budget: u32) -> Vec<Taken> {
        let op = Op::TakeMany(pb::TakeManyRequest {
            queues: requests
                .iter()
                .map(|r| pb::TakeRequest {
                    queue: r.queue.to_string(),
                    max: r.max,
                    mode: pb::TakeMode::from(r.mode).into(),
                })
                .collect(),
            budget,
        });
        // The call failed as a whole: the first queue carries the error and
        // the others count as not visited, so nothing is taken twice.
        let failed = |e: Error| {
            requests
                .iter()
                .take(1)
                .map(|r| Taken {
                    asked: r.max.min(budget),
                    messages: Err(e.clone()),
                })
                .collect()
        };
        match self.sessions.call(op).await {
            Ok(Answer::TakeMany(r)) => r
                .taken
                .into_iter()
                .map(|t| Taken {
                    asked: t.asked,
                    messages: match t.result {
                        Some(pb::taken_from::Result::Messages(m)) => from_wire_messages(m),
                        Some(pb::taken_from::Result::Error(e)) => {
                            Err(busmq_proto::from_proto_error(&e))
                        }
                        None => Err(Error::Internal("take_many answer without a result".into())),
                    },
                })
                .collect(),
            Ok(other) => failed(mismatch("take_many", &other)),
            Err(e) => failed(e),
        }
    }

    #[tracing::instrument(level = "debug", name = "storage.read", skip_all, fields(otel.kind = "client", messaging.destination.name = queue.as_str(), from, max))]
    async fn read(&self, queue: &QueueName, from: u64, max: u32) -> Result<Vec<Message>> {
        let op = Op::Read(pb::ReadRequest {
            queue: queue.to_string(),
            from,
            max,
        });
        match self.sessions.call(op).await? {
            Answer::Messages(r) => from_wire_messages(r),
            other => Err(mismatch("read", &other)),
        }
    }

    #[tracing::instrument(level = "debug", name = "storage.ack", skip_all, fields(otel.kind = "client", messaging.destination.name = queue.as_str(), id))]
    async fn ack(&self, queue: &QueueName, id: u64) -> Result<u64> {
        let op = Op::Ack(v1::QueueAck {
            queue: queue.to_string(),
            id,
        });
        match self.sessions.call(op).await? {
            Answer::Ack(r) => Ok(r.removed),
            other => Err(mismatch("ack", &other)),
        }
    }

    #[tracing::instrument(level = "debug", name = "storage.begin_reliable", skip_all, fields(otel.kind = "client", messaging.destination.name = queue.as_str()))]
    async fn begin_reliable(
        &self,
        queue: &QueueName,
        lock: &ReliableLock,
        last: u64,
    ) -> Result<u64> {
        let r = self
            .client()
            .begin_reliable(pb::BeginReliableRequest {
                queue: queue.to_string(),
                owner: lock.owner.clone(),
                lease: wire_lease(lock),
                last,
            })
            .await
            .map_err(|s| self.error(s))?;
        Ok(r.into_inner().requeued)
    }

    #[tracing::instrument(level = "debug", name = "storage.renew_reliable", skip_all, fields(otel.kind = "client", messaging.destination.name = queue.as_str()))]
    async fn renew_reliable(&self, queue: &QueueName, lock: &ReliableLock) -> Result<bool> {
        let r = self
            .client()
            .renew_reliable(pb::ReliableLockRequest {
                queue: queue.to_string(),
                owner: lock.owner.clone(),
                lease: wire_lease(lock),
            })
            .await
            .map_err(|s| self.error(s))?;
        Ok(r.into_inner().held)
    }

    #[tracing::instrument(level = "debug", name = "storage.end_reliable", skip_all, fields(otel.kind = "client", messaging.destination.name = queue.as_str()))]
    async fn end_reliable(&self, queue: &QueueName, lock: &ReliableLock) -> Result<bool> {
        let r = self
            .client()
            .end_reliable(pb::ReliableLockRequest {
                queue: queue.to_string(),
                owner: lock.owner.clone(),
                lease: wire_lease(lock),
            })
            .await
            .map_err(|s| self.error(s))?;
        Ok(r.into_inner().released)
    }

    #[tracing::instrument(level = "debug", name = "storage.lease", skip_all, fields(otel.kind = "client", messaging.destination.name = queue.as_str(), max))]
    async fn lease(
        &self,
        queue: &QueueName,
        owner: &str,
        max: u32,
        visibility: Duration,
    ) -> Result<Leases> {
        let op = Op::Lease(pb::LeaseRequest {
            queue: queue.to_string(),
            owner: owner.to_owned(),
            max,
            visibility: Some(duration::millis_rounded_up(visibility)),
        });
        let r = match self.sessions.call(op).await? {
            Answer::Lease(r) => r,
            other => return Err(mismatch("lease", &other)),
        };
        Ok(Leases {
            messages: r
                .messages
                .into_iter()
                .map(|m| LeasedMessage {
                    message: Message {
                        id: m.id,
                        payload: m.payload,
                    },
                    attempt: m.attempt,
                })
                .collect(),
            next_expiry: r
                .next_expiry
                .and_then(|d| duration::from_proto("next_expiry", &d).ok()),
        })
    }

    #[tracing::instrument(level = "debug", name = "storage.settle", skip_all, fields(otel.kind = "client", messaging.destination.name = queue.as_str(), id = token.id, attempt = token.attempt))]
    async fn settle(
        &self,
        queue: &QueueName,
        token: LeaseToken,
        settlement: Settlement,
    ) -> Result<Settled> {
        let settlement = match settlement {
            Settlement::Ack => pb::Settlement::Ack,
            Settlement::Nack => pb::Settlement::Nack,
        };
        let op = Op::Settle(pb::SettleRequest {
            queue: queue.to_string(),
            id: token.id,
            attempt: token.attempt,
            settlement: settlement as i32,
        });
        let r = match self.sessions.call(op).await? {
            Answer::Settle(r) => r,
            other => return Err(mismatch("settle", &other)),
        };
        match pb::Settled::try_from(r.settled) {
            Ok(pb::Settled::Acked) => Ok(Settled::Acked),
            Ok(pb::Settled::Requeued) => Ok(Settled::Requeued),
            Ok(pb::Settled::DeadLettered) => Ok(Settled::DeadLettered),
            _ => Err(Error::Internal(format!(
                "storage answered a settle with an unknown outcome {}",
                r.settled
            ))),
        }
    }

    #[tracing::instrument(level = "debug", name = "storage.release_leases", skip_all, fields(otel.kind = "client", messaging.destination.name = queue.as_str()))]
    async fn release_leases(&self, queue: &QueueName, owner: &str) -> Result<u64> {
        let r = self
            .client()
            .release_leases(pb::ReleaseLeasesRequest {
                queue: queue.to_string(),
                owner: owner.to_owned(),
            })
            .await
            .map_err(|s| self.error(s))?;
        Ok(r.into_inner().released)
    }

    #[tracing::instrument(level = "debug", name = "storage.set_max_deliveries", skip_all, fields(otel.kind = "client", messaging.destination.name = queue.as_str()))]
    async fn set_max_deliveries(&self, queue: &QueueName, max: u32) -> Result<()> {
        self.client()
            .set_max_deliveries(pb::SetMaxDeliveriesRequest {
                queue: queue.to_string(),
                max_deliveries: max,
            })
            .await
            .map_err(|s| self.error(s))?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", name = "storage.close", skip_all, fields(otel.kind = "client", messaging.destination.name = queue.as_str()))]
    async fn close(&self, queue: &QueueName) -> Result<bool> {
        let r = self
            .client()
            .close(queue_request(queue))
            .await
            .map_err(|s| self.error(s))?;
        Ok(r.into_inner().existed)
    }

    #[tracing::instrument(level = "debug", name = "storage.flush", skip_all, fields(otel.kind = "client", messaging.destination.name = queue.as_str()))]
    async fn flush(&self, queue: &QueueName) -> Result<u64> {
        let r = self
            .client()
            .flush(queue_request(queue))
            .await
            .map_err(|s| self.error(s))?;
        Ok(r.into_inner().removed)
    }

    #[tracing::instrument(level = "debug", name = "storage.info", skip_all, fields(otel.kind = "client", messaging.destination.name = queue.as_str()))]
    async fn info(&self, queue: &QueueName) -> Result<Option<QueueInfo>> {
        match self.client().info(queue_request(queue)).await {
            Ok(info) => Ok(Some(info.into_inner().into())),
            Err(status) => match self.error(status) {
                Error::QueueNotFound(_) => Ok(None),
                e => Err(e),
            },
        }
    }

    #[tracing::instrument(level = "debug", name = "storage.list_queues", skip_all, fields(otel.kind = "client"))]
    async fn list_queues(&self, filter: &QueueFilter) -> Result<QueuePage> {
        let r = self
            .client()
            .list_queues(listing::queues_request(filter))
            .await
            .map_err(|s| self.error(s))?;
        listing::queue_page(r.into_inner())
    }

    #[tracing::instrument(level = "debug", name = "storage.get_metadata", skip_all, fields(otel.kind = "client", messaging.destination.name = queue.as_str()))]
    async fn get_metadata(&self, queue: &QueueName, key: &str) -> Result<Option<String>> {
        let r = self
            .client()
            .get_metadata(v1::GetMetadataRequest {
                queue: queue.to_string(),
                key: key.to_owned(),
            })
            .await
            .map_err(|s| self.error(s))?;
        Ok(r.into_inner().value)
    }

    #[tracing::instrument(level = "debug", name = "storage.set_metadata", skip_all, fields(otel.kind = "client", messaging.destination.name = queue.as_str()))]
    async fn set_metadata(&self, queue: &QueueName, key: &str, value: &str) -> Result<()> {
        self.client()
            .set_metadata(v1::SetMetadataRequest {
                queue: queue.to_string(),
                key: key.to_owned(),
                value: value.to_owned(),
            })
            .await
            .map_err(|s| self.error(s))?;
        Ok(())
    }

    /// Opens the `Watch` RPC when first polled. Yields
    /// [`Notification::Lagged`] each time the stream is (re)established,
    /// the first time included, so a consumer that took before the stream
    /// was open looks again. When the stream breaks (storage restarted) it
    /// reconnects with backoff ([`WATCH_BACKOFF_MIN`] doubling to
    /// [`WATCH_BACKOFF_MAX`]). Nothing is buffered beyond HTTP/2 flow
    /// control: a slow reader makes the server send LAGGED.
    fn watch(&self) -> Notifications {
        let state = WatchState {
            client: self.client(),
            url: self.url.clone(),
            stream: None,
            backoff: Duration::ZERO,
        };
        futures::stream::unfold(state, WatchState::next).boxed()
    }

    #[tracing::instrument(level = "debug", name = "storage.publish", skip_all, fields(otel.kind = "client", messaging.destination.name = channel.as_str()))]
    async fn publish(&self, channel: &ChannelName, message: Bytes) -> Result<u64> {
        let r = self
            .client()
            .publish(v1::PublishRequest {
                channel: channel.to_string(),
                message,
            })
            .await
            .map_err(|s| self.error(s))?;
        Ok(r.into_inner().receivers)
    }

    #[tracing::instrument(level = "debug", name = "storage.list_channels", skip_all, fields(otel.kind = "client"))]
    async fn list_channels(&self, filter: &ChannelFilter) -> Result<ChannelPage> {
        let r = self
            .client()
            .list_channels(listing::channels_request(filter))
            .await
            .map_err(|s| self.error(s))?;
        listing::channel_page(r.into_inner())
    }

    /// Opens one `Subscribe` stream per subscription (streams share the
    /// HTTP/2 connection), so the storage counts every subscriber. Returns
    /// once the storage has registered it. When the stream breaks (storage
    /// restarted), the subscription ends with an UNAVAILABLE error rather
    /// than resubscribing by itself: what was published meanwhile is lost,
    /// and the subscriber must know.
    #[tracing::instrument(level = "debug", name = "storage.subscribe", skip_all, fields(otel.kind = "client", messaging.destination.name = channel.as_str()))]
    async fn subscribe(&self, channel: &ChannelName) -> Result<Subscription> {
        let stream = self
            .client()
            .subscribe(v1::SubscribeRequest {
                channel: channel.to_string(),
            })
            .await
            .map_err(|s| self.error(s))?
            .into_inner();
        let state = RemoteSubscription {
            storage: self.clone(),
            channel: channel.clone(),
            stream,
            ready: std::collections::VecDeque::new(),
        };
        Ok(
            futures::stream::unfold(Some(state), |state| async move { state?.next().await })
                .boxed(),
        )
    }

    #[tracing::instrument(level = "debug", name = "storage.object_save", skip_all, fields(otel.kind = "client", busmq.object = object.as_str()))]
    async fn object_save(
        &self,
        object: &ObjectName,
        fields: Vec<(String, String)>,
        ttl: Option<Duration>,
    ) -> Result<()> {
        self.client()
            .object_save(pb::ObjectSaveRequest {
                object: object.to_string(),
                fields: fields
                    .into_iter()
                    .map(|(name, json)| v1::ObjectField { name, json })
                    .collect(),
                ttl: ttl.map(duration::millis_rounded_up),
            })
            .await
            .map_err(|s| self.error(s))?;
        Ok(())
    }

    #[tracing::instrument(level = "debug", name = "storage.object_load", skip_all, fields(otel.kind = "client", busmq.object = object.as_str()))]
    async fn object_load(&self, object: &ObjectName) -> Result<Option<ObjectFields>> {
        let r = self
            .client()
            .object_load(pb::ObjectRequest {
                object: object.to_string(),
            })
            .await
            .map_err(|s| self.error(s))?
            .into_inner();
        Ok(r.exists.then(|| {
            r.fields
                .into_iter()
                .map(|f| (f.name, f.json))
                .collect::<ObjectFields>()
        }))
    }

    #[tracing::instrument(level = "debug", name = "storage.object_touch", skip_all, fields(otel.kind = "client", busmq.object = object.as_str()))]
    async fn object_touch(&self, object: &ObjectName, ttl: Duration) -> Result<bool> {
        let r = self
            .client()
            .object_touch(pb::ObjectTouchRequest {
                object: object.to_string(),
                ttl: Some(duration::millis_rounded_up(ttl)),
            })
            .await
            .map_err(|s| self.error(s))?;
        Ok(r.into_inner().exists)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use busmq_core::ErrorCode;

    #[tokio::test]
    async fn bad_urls_are_invalid_arguments_naming_the_url() {
        for url in ["", "not a url", "localhost:50052", "ftp://x:1", "http://"] {
            let err = RemoteStorage::connect_lazy(url).unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidArgument, "{url}: {err}");
            assert!(err.to_string().contains(&format!("{url:?}")), "{err}");
        }
        assert!(RemoteStorage::connect_lazy("http://127.0.0.1:1").is_ok());
    }

    #[test]
    fn outside_a_runtime_is_an_error_not_a_panic() {
        let err = RemoteStorage::connect_lazy("http://127.0.0.1:1").unwrap_err();
        assert_eq!(err.code(), ErrorCode::Internal);
    }

    #[test]
    fn unknown_notifications_become_lagged() {
        let n = notification_from_proto(pb::Notification {
            queue: "q".into(),
            kind: 99,
        });
        assert_eq!(n, Notification::Lagged);
        let n = notification_from_proto(pb::Notification {
            queue: "bad name".into(),
            kind: pb::NotificationKind::Data as i32,
        });
        assert_eq!(n, Notification::Lagged);
        let n = notification_from_proto(pb::Notification {
            queue: "q".into(),
            kind: pb::NotificationKind::Closed as i32,
        });
        assert!(matches!(n, Notification::Closed(q) if q.as_str() == "q"));
    }

    #[tokio::test]
    async fn calls_fail_fast_when_storage_is_down() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let remote = RemoteStorage::connect_lazy(&format!("http://127.0.0.1:{port}")).unwrap();
        let q = QueueName::parse("q", &Limits::default()).unwrap();
        let started = std::time::Instant::now();
        let err = remote.info(&q).await.unwrap_err();
        assert!(
            err.to_string().contains("127.0.0.1"),
            "names the storage: {err}"
        );
        assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
