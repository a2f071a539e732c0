//! The `busmq.v1.Channels` gRPC service: bi-directional channels made of two
//! queues. `Open` validates the first request, attaches both queues, starts
//! a `ConsumeTask` on the inbound one and tells the other endpoint; the
//! running session lives in `session`. Nothing is kept in the broker that
//! another replica would need: presence travels as frames in the queues.

mod frame;
mod names;
mod session;

use std::sync::Arc;
use std::time::Duration;

use busmq_core::{Error, QueueName};
use busmq_proto::to_status;
use busmq_proto::v1::{self, channels_server::Channels, consume_event::Event};
use busmq_storage::Storage;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::config::BrokerConfig;
use crate::consume::{ConsumeTask, Mode, QueueReader, STREAM_BUFFER};
use crate::queues::{attach_ttl, consumer_settings, invalid};
use crate::wakeup::Wakeups;

use names::{Role, SessionQueues};
use session::{Consumer, Session};

/// How long a session may take to send its `open` request.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Event batches buffered between a session and its gRPC stream.
const EVENT_BUFFER: usize = 16;

/// The channel service of one broker.
pub struct ChannelsService {
    storage: Arc<dyn Storage>,
    wakeups: Arc<Wakeups>,
    config: BrokerConfig,
    shutdown: CancellationToken,
}

impl ChannelsService {
    /// A service over `storage`, woken by the same [`Wakeups`] as the queue
    /// service.
    pub fn new(
        storage: Arc<dyn Storage>,
        wakeups: Arc<Wakeups>,
        config: BrokerConfig,
        shutdown: CancellationToken,
    ) -> Self {
        ChannelsService {
            storage,
            wakeups,
            config,
            shutdown,
        }
    }

    /// Attaches both queues and starts consuming the inbound one; on any
    /// failure undoes what was done, so a refused open leaves no trace.
    async fn start(
        &self,
        queues: &SessionQueues,
        open: &v1::OpenChannel,
        mode: Mode,
        prefetch: u32,
    ) -> Result<(Consumer, u64), Status> {
        let ttl = attach_ttl(open.ttl.as_ref())?;
        self.storage
            .attach(&queues.inbound, ttl)
            .await
            .map_err(to_status)?;
        if let Err(e) = self.storage.attach(&queues.outbound, ttl).await {
            detach(&*self.storage, &queues.inbound).await;
            return Err(to_status(e));
        }
        let (tx, mut events) = mpsc::channel(STREAM_BUFFER);
        let reliable = matches!(mode, Mode::Reliable { .. });
        let task = ConsumeTask {
            reader: QueueReader {
                storage: Arc::clone(&self.storage),
                queue: queues.inbound.clone(),
                mode,
                remaining: None,
                prefetch,
                consumer: None,
            },
            signal: self.wakeups.subscribe(&queues.inbound),
            shutdown: self.shutdown.clone(),
            tx,
        };
        let task = tokio::spawn(task.run());
        // The consumer confirms with `consuming`; a refusal (another
        // reliable consumer on this endpoint) arrives instead of it.
        let refused = match events.recv().await {
            Some(Ok(v1::ConsumeEvent {
                event: Some(Event::Consuming(c)),
            })) => {
                let consumer = Consumer::new(events, task, reliable);
                return Ok((consumer, c.redelivered));
            }
            Some(Err(status)) => status,
            _ => Status::internal("the channel's consumer ended before it started"),
        };
        drop(events);
        let _ = task.await;
        detach(&*self.storage, &queues.inbound).await;
        detach(&*self.storage, &queues.outbound).await;
        Err(refused)
    }
}

/// Detaches, logging a failure: the queue then only lives until its ttl
/// runs out after the last other attachment goes, which is harmless.
async fn detach(storage: &dyn Storage, queue: &QueueName) {
    match storage.detach(queue).await {
        Ok(_) | Err(Error::QueueNotFound(_)) => {}
        Err(e) => tracing::warn!(%queue, error = %e, "could not detach a channel queue"),
    }
}

#[tonic::async_trait]
impl Channels for ChannelsService {
    type OpenStream = ReceiverStream<Result<v1::ChannelEvents, Status>>;

    async fn open(
        &self,
        request: Request<Streaming<v1::ChannelRequest>>,
    ) -> Result<Response<Self::OpenStream>, Status> {
        let mut incoming = request.into_inner();
        // A client that never says what to open must not hold the call.
        let first = tokio::time::timeout(OPEN_TIMEOUT, incoming.message())
            .await
            .map_err(|_| {
                invalid(format!(
                    "no `open` request within {} s of the call",
                    OPEN_TIMEOUT.as_secs()
                ))
            })??;
        let open = match first {
            Some(v1::ChannelRequest {
                request: Some(v1::channel_request::Request::Open(open)),
            }) => open,
            Some(_) => {
                return Err(invalid(
                    "the first request of a channel session must be `open`",
                ));
            }
            None => {
                return Err(invalid(
                    "the request stream ended before its `open` request",
                ));
            }
        };
        let queues =
            SessionQueues::new(&open.name, &open.local, &open.remote, &self.config.limits)?;
        busmq_server::telemetry::record_queue(&open.name);
        let consume = v1::ConsumeRequest {
            queue: queues.inbound.to_string(),
            mode: open.mode,
            max: None,
            index: open.index,
            last: open.last,
            prefetch: open.prefetch,
            visibility_timeout: None,
        };
        let (mode, prefetch) = consumer_settings(&consume, &self.config)?;
        if matches!(mode, Mode::Lease { .. }) {
            return Err(invalid(
                "lease mode is not offered on channels: each endpoint has one consumer, \
                 so use reliable mode for acks",
            ));
        }
        let (consumer, redelivered) = self.start(&queues, &open, mode, prefetch).await?;

        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let session = Session::new(
            Arc::clone(&self.storage),
            queues,
            self.config.limits,
            consumer,
            incoming,
            tx,
            self.shutdown.clone(),
        );
        // The peer learns of us through its queue, whenever it reads it.
        if let Err(status) = session.announce(redelivered).await {
            session.disconnect().await;
            return Err(status);
        }
        tokio::spawn(session.run());
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn send_to(
        &self,
        request: Request<v1::SendToRequest>,
    ) -> Result<Response<v1::SendToResponse>, Status> {
        let req = request.into_inner();
        busmq_server::telemetry::record_queue(&req.name);
        busmq_server::telemetry::record_batch(req.messages.len());
        let role = Role::parse(&req.endpoint, "")?;
        let queue = names::endpoint_queue(&req.name, &role, &self.config.limits)?;
        let frames = frame::data_frames(req.messages, &self.config.limits)?;
        // Attached only for the push: the queue then waits its ttl for the
        // endpoint's peer, as node-busmq's sendTo leaves it.
        self.storage.attach(&queue, None).await.map_err(to_status)?;
        let pushed = self.storage.push(&queue, frames).await;
        detach(&*self.storage, &queue).await;
        let ids = pushed.map_err(to_status)?;
        Ok(Response::new(v1::SendToResponse {
            first_id: ids.first,
            last_id: ids.last,
        }))
    }
}
