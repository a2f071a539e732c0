//! The `busmq.storage.v1` gRPC service over any [`Storage`].
//!
//! Every request is validated here, at the edge: queue names with
//! [`QueueName::parse`], push batches with [`Limits::check_batch`], durations
//! against sane bounds. Errors keep their code through
//! [`busmq_proto::to_status`]. Nothing in here panics on input.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use busmq_core::Limits;
use busmq_proto::storage::v1 as pb;
use busmq_proto::storage::v1::storage_server::Storage as StorageRpc;
use busmq_proto::to_status;
use busmq_proto::{duration, prost_types, v1};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

mod metrics;
mod session;

pub use session::{SESSION_BUFFER, SESSION_WINDOW, SessionStream};

use crate::wire::{self, messages_to_wire};
use crate::{
    Error, LeaseToken, Notification, ObjectName, QueueName, ReliableLock, Settled, Settlement,
    Storage, TakeRequest,
};

/// Notifications buffered per watcher before it is sent a LAGGED
/// notification instead of the ones it could not keep up with.
pub const WATCH_BUFFER: usize = 1024;

pub use busmq_core::MAX_TTL;

/// Longest reliable-consumer lease a request may ask for (one day).
pub const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);

/// The `busmq.storage.v1.Storage` gRPC service, serving an
/// `Arc<dyn Storage>`. Wrap it in
/// [`StorageServer`](busmq_proto::storage::v1::storage_server::StorageServer)
/// (or use [`crate::server::serve`]).
#[derive(Clone)]
pub struct StorageService {
    storage: Arc<dyn Storage>,
    limits: Limits,
    shutdown: CancellationToken,
}

impl StorageService {
    /// Serves `storage`, enforcing `limits` on every request.
    pub fn new(storage: Arc<dyn Storage>, limits: Limits) -> Self {
        StorageService {
            storage,
            limits,
            shutdown: CancellationToken::new(),
        }
    }

    /// Ends every open `Watch` stream when `shutdown` fires, so a graceful
    /// shutdown of the server does not wait for watchers forever.
    pub fn with_shutdown(mut self, shutdown: CancellationToken) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// The queue of the request being served, also named on its span.
    fn name(&self, name: &str) -> Result<QueueName, Status> {
        busmq_server::telemetry::record_queue(name);
        QueueName::parse(name, &self.limits).map_err(to_status)
    }

    fn object(&self, name: &str) -> Result<ObjectName, Status> {
        busmq_server::telemetry::record_object(name);
        ObjectName::parse(name, &self.limits).map_err(to_status)
    }

    /// Most messages one take or read returns: a batch, as for a push.
    fn cap(&self, max: u32) -> u32 {
        u32::try_from(self.limits.max_batch_len)
            .unwrap_or(u32::MAX)
            .min(max)
    }

    /// Push: validates the batch against the limits first.
    pub(crate) async fn push_op(&self, req: pb::PushRequest) -> Result<v1::PushResponse, Status> {
        let queue = self.name(&req.queue)?;
        let payloads = req.messages.unwrap_or_default();
        // Counted before a view of each payload is made: a forged list of
        // a million empty lengths costs nothing.
        busmq_server::telemetry::record_batch(payloads.lengths.len());
        self.limits
            .check_batch_len(payloads.lengths.len())
            .map_err(to_status)?;
        let messages = wire::unpack(payloads).map_err(to_status)?;
        self.limits.check_batch(&messages).map_err(to_status)?;
        let ids = self
            .storage
            .push(&queue, messages)
            .await
            .map_err(to_status)?;
        Ok(v1::PushResponse {
            first_id: ids.first,
            last_id: ids.last,
        })
    }

    /// Take, capped at one batch.
    pub(crate) async fn take_op(&self, req: pb::TakeRequest) -> Result<pb::Messages, Status> {
        let queue = self.name(&req.queue)?;
        let mode = wire::take_mode(req.mode).map_err(to_status)?;
        let taken = self
            .storage
            .take(&queue, self.cap(req.max), mode)
            .await
            .map_err(to_status)?;
        busmq_server::telemetry::record_batch(taken.len());
        Ok(messages_to_wire(&taken))
    }

    /// Take from several queues, the budget capped at one batch.
    pub(crate) async fn take_many_op(
        &self,
        req: pb::TakeManyRequest,
    ) -> Result<pb::TakeManyResponse, Status> {
        let requests = req
            .queues
            .into_iter()
            .map(|r| {
                Ok(TakeRequest {
                    // Not `name`: a span names one queue, this fetch many.
                    queue: QueueName::parse(&r.queue, &self.limits).map_err(to_status)?,
                    max: self.cap(r.max),
                    mode: wire::take_mode(r.mode).map_err(to_status)?,
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let taken = self
            .storage
            .take_many(&requests, self.cap(req.budget))
            .await;
        Ok(pb::TakeManyResponse {
            taken: taken
                .into_iter()
                .map(|t| pb::TakenFrom {
                    asked: t.asked,
                    result: Some(match t.messages {
                        Ok(batch) => pb::taken_from::Result::Messages(messages_to_wire(&batch)),
                        Err(e) => pb::taken_from::Result::Error(busmq_proto::to_proto_error(&e)),
                    }),
                })
                .collect(),
        })
    }

    /// Read, capped at one batch.
    pub(crate) async fn read_op(&self, req: pb::ReadRequest) -> Result<pb::Messages, Status> {
        let queue = self.name(&req.queue)?;
        let read = self
            .storage
            .read(&queue, req.from, self.cap(req.max))
            .await
            .map_err(to_status)?;
        busmq_server::telemetry::record_batch(read.len());
        Ok(messages_to_wire(&read))
    }

    /// Ack.
    pub(crate) async fn ack_op(&self, req: v1::QueueAck) -> Result<v1::AckResponse, Status> {
        let queue = self.name(&req.queue)?;
        let removed = self.storage.ack(&queue, req.id).await.map_err(to_status)?;
        Ok(v1::AckResponse { removed })
    }

    /// Lease, after checking the visibility timeout and owner.
    pub(crate) async fn lease_op(
        &self,
        req: pb::LeaseRequest,
    ) -> Result<pb::LeaseResponse, Status> {
        let queue = self.name(&req.queue)?;
        let visibility = wire_duration("visibility", req.visibility)?;
        busmq_core::check_visibility(visibility).map_err(to_status)?;
        crate::check_lease_owner(&req.owner).map_err(to_status)?;
        let leases = self
            .storage
            .lease(&queue, &req.owner, self.cap(req.max), visibility)
            .await
            .map_err(to_status)?;
        busmq_server::telemetry::record_batch(leases.messages.len());
        Ok(pb::LeaseResponse {
            messages: leases
                .messages
                .into_iter()
                .map(|m| v1::Message {
                    id: m.message.id,
                    payload: m.message.payload,
                    attempt: m.attempt,
                })
                .collect(),
            next_expiry: leases.next_expiry.map(duration::to_proto),
        })
    }

    /// Settle by lease token.
    pub(crate) async fn settle_op(
        &self,
        req: pb::SettleRequest,
    ) -> Result<pb::SettleResponse, Status> {
        let queue = self.name(&req.queue)?;
        let settlement = match pb::Settlement::try_from(req.settlement) {
            Ok(pb::Settlement::Ack) => Settlement::Ack,
            Ok(pb::Settlement::Nack) => Settlement::Nack,
            _ => return Err(invalid(format!("unknown settlement {}", req.settlement))),
        };
        let token = LeaseToken {
            id: req.id,
            attempt: req.attempt,
        };
        let settled = self
            .storage
            .settle(&queue, token, settlement)
            .await
            .map_err(to_status)?;
        let settled = match settled {
            Settled::Acked => pb::Settled::Acked,
            Settled::Requeued => pb::Settled::Requeued,
            Settled::DeadLettered => pb::Settled::DeadLettered,
        };
        Ok(pb::SettleResponse {
            settled: settled as i32,
        })
    }
}

fn invalid(msg: impl Into<String>) -> Status {
    to_status(Error::InvalidArgument(msg.into()))
}

fn ttl(d: &prost_types::Duration) -> Result<Duration, Status> {
    let seconds = duration::whole_seconds("ttl", d).map_err(to_status)?;
    let ttl = Duration::from_secs(seconds);
    if ttl > MAX_TTL {
        return Err(invalid(format!(
            "ttl of {seconds} s is over the limit of {} s",
            MAX_TTL.as_secs()
        )));
    }
    Ok(ttl)
}

/// An object ttl: more than zero (zero would expire it at once, never what a
/// caller means) and at most [`MAX_TTL`].
fn object_ttl(d: &prost_types::Duration) -> Result<Duration, Status> {
    let ttl = duration::from_proto("ttl", d).map_err(to_status)?;
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(invalid(format!(
            "object ttl must be more than zero and at most {} s, got {ttl:?}",
            MAX_TTL.as_secs()
        )));
    }
    Ok(ttl)
}

/// The wire form of a subscription batch.
pub fn batch_to_proto(batch: crate::pubsub::Batch) -> Result<pb::ChannelEvent, Status> {
    use crate::pubsub::Batch;
    use pb::channel_event::Event;
    let event = match batch {
        Batch::Messages(messages) => Event::Messages(pb::ChannelMessages { messages }),
        Batch::Missed(n) => Event::Missed(n),
        Batch::Failed(e) => return Err(to_status(e)),
    };
    Ok(pb::ChannelEvent { event: Some(event) })
}

/// A length of time the broker sends; unset is zero, which the check of
/// each field refuses where zero means nothing.
fn wire_duration(field: &str, d: Option<prost_types::Duration>) -> Result<Duration, Status> {
    d.map_or(Ok(Duration::ZERO), |d| duration::from_proto(field, &d))
        .map_err(to_status)
}

fn lock(owner: String, lease: Option<prost_types::Duration>) -> Result<ReliableLock, Status> {
    if owner.is_empty() {
        return Err(invalid("a reliable consumer needs a non-empty owner"));
    }
    let lease = wire_duration("lease", lease)?;
    if lease > MAX_LEASE {
        return Err(invalid(format!(
            "lease of {} ms is over the limit of {} ms",
            lease.as_millis(),
            MAX_LEASE.as_millis()
        )));
    }
    Ok(ReliableLock { owner, lease })
}

/// The wire form of a notification.
pub fn notification_to_proto(n: Notification) -> pb::Notification {
    let (queue, kind) = match n {
        Notification::Data(q) => (q.to_string(), pb::NotificationKind::Data),
        Notification::Closed(q) => (q.to_string(), pb::NotificationKind::Closed),
        Notification::Expired(q) => (q.to_string(), pb::NotificationKind::Expired),
        Notification::Lagged => (String::new(), pb::NotificationKind::Lagged),
    };
    pb::Notification {
        queue,
        kind: kind as i32,
    }
}

/// Forwards `source` into `tx` until the watcher goes away, `source` ends or
/// `shutdown` fires. A full channel drops notifications and remembers it;
/// as soon as there is room again the watcher gets one LAGGED, so it looks
/// at every queue again instead of missing a wake-up.
async fn forward_notifications(
    mut source: crate::Notifications,
    tx: mpsc::Sender<Result<pb::Notification, Status>>,
    shutdown: CancellationToken,
) {
    let lagged_msg = || Ok(notification_to_proto(Notification::Lagged));
    let mut lagged = false;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = tx.closed() => break,
            permit = tx.reserve(), if lagged => match permit {
                Ok(permit) => {
                    permit.send(lagged_msg());
                    lagged = false;
                }
                Err(_) => break,
            },
            next = source.next() => {
                let Some(n) = next else { break };
                if lagged {
                    // Still no room: this one is covered by the LAGGED to come.
                    continue;
                }
                match tx.try_send(Ok(notification_to_proto(n))) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::debug!("slow watcher: dropping notifications");
                        lagged = true;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                }
            }
        }
    }
}

/// The stream type of `Subscribe` responses.
pub type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::ChannelEvent, Status>> + Send>>;

/// The stream type of `Watch` responses.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::Notification, Status>> + Send>>;

#[tonic::async_trait]
impl StorageRpc for StorageService {
    async fn attach(
        &self,
        request: Request<pb::AttachRequest>,
    ) -> Result<Response<v1::AttachResponse>, Status> {
        let req = request.into_inner();
        let queue = self.name(&req.queue)?;
        let ttl = req.ttl.map(|d| ttl(&d)).transpose()?;
        let attached = self.storage.attach(&queue, ttl).await.map_err(to_status)?;
        Ok(Response::new(v1::AttachResponse {
            existed: attached.existed,
            attachments: attached.attachments,
        }))
    }

    async fn detach(
        &self,
        request: Request<pb::QueueRequest>,
    ) -> Result<Response<v1::DetachResponse>, Status> {
        let queue = self.name(&request.into_inner().queue)?;
        let attachments = self.storage.detach(&queue).await.map_err(to_status)?;
        Ok(Response::new(v1::DetachResponse { attachments }))
    }

    async fn push(
        &self,
        request: Request<pb::PushRequest>,
    ) -> Result<Response<v1::PushResponse>, Status> {
        self.push_op(request.into_inner()).await.map(Response::new)
    }

    async fn take(
        &self,
        request: Request<pb::TakeRequest>,
    ) -> Result<Response<pb::Messages>, Status> {
        self.take_op(request.into_inner()).await.map(Response::new)
    }

    async fn read(
        &self,
        request: Request<pb::ReadRequest>,
    ) -> Result<Response<pb::Messages>, Status> {
        self.read_op(request.into_inner()).await.map(Response::new)
    }

    async fn ack(
        &self,
        request: Request<v1::QueueAck>,
    ) -> Result<Response<v1::AckResponse>, Status> {
        self.ack_op(request.into_inner()).await.map(Response::new)
    }

    async fn begin_reliable(
        &self,
        request: Request<pb::BeginReliableRequest>,
    ) -> Result<Response<pb::BeginReliableResponse>, Status> {
        let req = request.into_inner();
        let queue = self.name(&req.queue)?;
        let lock = lock(req.owner, req.lease)?;
        let requeued = self
            .storage
            .begin_reliable(&queue, &lock, req.last)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::BeginReliableResponse { requeued }))
    }

    async fn renew_reliable(
        &self,
        request: Request<pb::ReliableLockRequest>,
    ) -> Result<Response<pb::RenewReliableResponse>, Status> {
        let req = request.into_inner();
        let queue = self.name(&req.queue)?;
        let lock = lock(req.owner, req.lease)?;
        let held = self
            .storage
            .renew_reliable(&queue, &lock)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::RenewReliableResponse { held }))
    }

    async fn end_reliable(
        &self,
        request: Request<pb::ReliableLockRequest>,
    ) -> Result<Response<pb::EndReliableResponse>, Status> {
        let req = request.into_inner();
        let queue = self.name(&req.queue)?;
        let lock = lock(req.owner, req.lease)?;
        let released = self
            .storage
            .end_reliable(&queue, &lock)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::EndReliableResponse { released }))
    }

    async fn lease(
        &self,
        request: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::LeaseResponse>, Status> {
        self.lease_op(request.into_inner()).await.map(Response::new)
    }

    async fn settle(
        &self,
        request: Request<pb::SettleRequest>,
    ) -> Result<Response<pb::SettleResponse>, Status> {
        self.settle_op(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn release_leases(
        &self,
        request: Request<pb::ReleaseLeasesRequest>,
    ) -> Result<Response<pb::ReleaseLeasesResponse>, Status> {
        let req = request.into_inner();
        let queue = self.name(&req.queue)?;
        let released = self
            .storage
            .release_leases(&queue, &req.owner)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ReleaseLeasesResponse { released }))
    }

    async fn set_max_deliveries(
        &self,
        request: Request<pb::SetMaxDeliveriesRequest>,
    ) -> Result<Response<()>, Status> {
        let req = request.into_inner();
        let queue = self.name(&req.queue)?;
        self.storage
            .set_max_deliveries(&queue, req.max_deliveries)
            .await
            .map_err(to_status)?;
        Ok(Response::new(()))
    }

    async fn close(
        &self,
        request: Request<pb::QueueRequest>,
    ) -> Result<Response<v1::CloseResponse>, Status> {
        let queue = self.name(&request.into_inner().queue)?;
        let existed = self.storage.close(&queue).await.map_err(to_status)?;
        Ok(Response::new(v1::CloseResponse { existed }))
    }

    async fn flush(
        &self,
        request: Request<pb::QueueRequest>,
    ) -> Result<Response<v1::FlushResponse>, Status> {
        let queue = self.name(&request.into_inner().queue)?;
        let removed = self.storage.flush(&queue).await.map_err(to_status)?;
        Ok(Response::new(v1::FlushResponse { removed }))
    }

    async fn info(
        &self,
        request: Request<pb::QueueRequest>,
    ) -> Result<Response<v1::QueueInfo>, Status> {
        let queue = self.name(&request.into_inner().queue)?;
        match self.storage.info(&queue).await.map_err(to_status)? {
            Some(info) => Ok(Response::new(info.into())),
            None => Err(to_status(Error::QueueNotFound(queue.to_string()))),
        }
    }

    async fn list_queues(
        &self,
        request: Request<v1::ListQueuesRequest>,
    ) -> Result<Response<v1::ListQueuesResponse>, Status> {
        crate::listing::list_queues_checked(&*self.storage, &self.limits, request.get_ref())
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn list_channels(
        &self,
        request: Request<v1::ListChannelsRequest>,
    ) -> Result<Response<v1::ListChannelsResponse>, Status> {
        crate::listing::list_channels_checked(&*self.storage, &self.limits, request.get_ref())
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn get_metadata(
        &self,
        request: Request<v1::GetMetadataRequest>,
    ) -> Result<Response<v1::GetMetadataResponse>, Status> {
        let req = request.into_inner();
        let queue = self.name(&req.queue)?;
        let value = self
            .storage
            .get_metadata(&queue, &req.key)
            .await
            .map_err(to_status)?;
        Ok(Response::new(v1::GetMetadataResponse { value }))
    }

    async fn set_metadata(
        &self,
        request: Request<v1::SetMetadataRequest>,
    ) -> Result<Response<()>, Status> {
        let req = request.into_inner();
        let queue = self.name(&req.queue)?;
        self.storage
            .set_metadata(&queue, &req.key, &req.value)
            .await
            .map_err(to_status)?;
        Ok(Response::new(()))
    }

    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<pb::SessionRequest>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        Ok(Response::new(session::start(
            self.clone(),
            request.into_inner(),
        )))
    }

    type WatchStream = WatchStream;

    async fn watch(&self, _request: Request<()>) -> Result<Response<Self::WatchStream>, Status> {
        // Subscribe before answering: once the client has the response
        // headers, no later change can be missed.
        let source = self.storage.watch();
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(forward_notifications(source, tx, self.shutdown.clone()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn publish(
        &self,
        request: Request<v1::PublishRequest>,
    ) -> Result<Response<v1::PublishResponse>, Status> {
        let req = request.into_inner();
        busmq_server::telemetry::record_queue(&req.channel);
        let receivers =
            crate::pubsub::publish_checked(&*self.storage, &self.limits, &req.channel, req.message)
                .await
                .map_err(to_status)?;
        Ok(Response::new(v1::PublishResponse { receivers }))
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let channel = request.into_inner().channel;
        busmq_server::telemetry::record_queue(&channel);
        let batches = crate::pubsub::subscribe_checked(
            &*self.storage,
            &self.limits,
            &channel,
            self.shutdown.clone(),
        )
        .await
        .map_err(to_status)?;
        let stream = batches.map(batch_to_proto);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn object_save(
        &self,
        request: Request<pb::ObjectSaveRequest>,
    ) -> Result<Response<()>, Status> {
        let req = request.into_inner();
        let object = self.object(&req.object)?;
        let fields: Vec<(String, String)> =
            req.fields.into_iter().map(|f| (f.name, f.json)).collect();
        busmq_core::object::check_fields(&object, &fields, &self.limits).map_err(to_status)?;
        let ttl = req.ttl.map(|d| object_ttl(&d)).transpose()?;
        self.storage
            .object_save(&object, fields, ttl)
            .await
            .map_err(to_status)?;
        Ok(Response::new(()))
    }

    async fn object_load(
        &self,
        request: Request<pb::ObjectRequest>,
    ) -> Result<Response<pb::ObjectLoadResponse>, Status> {
        let object = self.object(&request.into_inner().object)?;
        let fields = self.storage.object_load(&object).await.map_err(to_status)?;
        Ok(Response::new(pb::ObjectLoadResponse {
            exists: fields.is_some(),
            fields: fields
                .unwrap_or_default()
                .into_iter()
                .map(|(name, json)| v1::ObjectField { name, json })
                .collect(),
        }))
    }

    async fn object_touch(
        &self,
        request: Request<pb::ObjectTouchRequest>,
    ) -> Result<Response<pb::ObjectTouchResponse>, Status> {
        let req = request.into_inner();
        let object = self.object(&req.object)?;
        let ttl = object_ttl(&req.ttl.unwrap_or_default())?;
        let exists = self
            .storage
            .object_touch(&object, ttl)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ObjectTouchResponse { exists }))
    }
}

#[cfg(test)]
mod tests;
