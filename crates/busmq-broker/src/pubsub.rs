//! The `busmq.v1.PubSub` gRPC service: plain publish/subscribe through the
//! store, so a publish on any broker reaches subscribers on every broker
//! sharing it, and the count it answers covers them all.
//!
//! Each subscriber is its own store subscription (see
//! [`Storage::subscribe`]): the store counts subscribers, not brokers. The
//! broker adds one bounded hop ([`subscribe_checked`]): a
//! subscriber that does not keep up has messages dropped with a `missed`
//! notice instead of growing the broker's memory.

use std::pin::Pin;
use std::sync::Arc;

use busmq_core::Limits;
use busmq_proto::to_status;
use busmq_proto::v1::{self, pub_sub_server::PubSub};
use busmq_storage::Storage;
use busmq_storage::listing::list_channels_checked;
use busmq_storage::pubsub::{Batch, publish_checked, subscribe_checked};
use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// The pub/sub service of one broker.
pub struct PubSubService {
    storage: Arc<dyn Storage>,
    limits: Limits,
    shutdown: CancellationToken,
}

impl PubSubService {
    /// A service over `storage`, enforcing `limits`; subscriptions end with
    /// UNAVAILABLE when `shutdown` fires.
    pub fn new(storage: Arc<dyn Storage>, limits: Limits, shutdown: CancellationToken) -> Self {
        PubSubService {
            storage,
            limits,
            shutdown,
        }
    }
}

fn event(event: v1::pub_sub_event::Event) -> v1::PubSubEvent {
    v1::PubSubEvent { event: Some(event) }
}

/// The wire form of a subscription batch.
fn to_wire(batch: Batch) -> Result<v1::PubSubEvent, Status> {
    use v1::pub_sub_event::Event;
    Ok(event(match batch {
        Batch::Messages(messages) => Event::Messages(v1::PublishedMessages { messages }),
        Batch::Missed(n) => Event::Missed(n),
        Batch::Failed(e) => return Err(to_status(e)),
    }))
}

/// The stream type of `Subscribe` responses.
pub type SubscribeStream = Pin<Box<dyn Stream<Item = Result<v1::PubSubEvent, Status>> + Send>>;

#[tonic::async_trait]
impl PubSub for PubSubService {
    async fn publish(
        &self,
        request: Request<v1::PublishRequest>,
    ) -> Result<Response<v1::PublishResponse>, Status> {
        let req = request.into_inner();
        busmq_server::telemetry::record_queue(&req.channel);
        let receivers = publish_checked(&*self.storage, &self.limits, &req.channel, req.message)
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
        let batches = subscribe_checked(
            &*self.storage,
            &self.limits,
            &channel,
            self.shutdown.clone(),
        )
        .await
        .map_err(to_status)?;
        let subscribed = event(v1::pub_sub_event::Event::Subscribed(v1::Subscribed {}));
        let stream = futures::stream::once(async { Ok(subscribed) }).chain(batches.map(to_wire));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_channels(
        &self,
        request: Request<v1::ListChannelsRequest>,
    ) -> Result<Response<v1::ListChannelsResponse>, Status> {
        list_channels_checked(&*self.storage, &self.limits, request.get_ref())
            .await
            .map(Response::new)
            .map_err(to_status)
    }
}
