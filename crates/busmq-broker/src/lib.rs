//! The busmq broker: queue, pub/sub and persistable object semantics over
//! any [`Storage`], served as the `busmq.v1` gRPC API.
//!
//! A broker keeps no state of its own beyond its running consumers: every
//! queue lives in the store, so any number of brokers can serve one bus.
//! Consumers wake from the store's notification stream, never by polling.

use std::sync::Arc;

use busmq_proto::v1::channels_server::ChannelsServer;
use busmq_proto::v1::objects_server::ObjectsServer;
use busmq_proto::v1::pub_sub_server::PubSubServer;
use busmq_proto::v1::queues_server::QueuesServer;
use busmq_storage::Storage;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub mod channel;
pub mod config;
mod consume;
mod metrics;
pub mod objects;
pub mod pubsub;
mod push_stream;
pub mod queues;
pub mod wakeup;

pub use config::BrokerConfig;

/// The gRPC service name the broker reports in `grpc.health.v1`.
pub const SERVICE_NAME: &str = "busmq.v1.Queues";

/// Every other gRPC service the broker serves, also reported in health.
pub const OTHER_SERVICES: [&str; 3] =
    ["busmq.v1.PubSub", "busmq.v1.Objects", CHANNELS_SERVICE_NAME];

/// The channel service's name in `grpc.health.v1`.
pub const CHANNELS_SERVICE_NAME: &str = "busmq.v1.Channels";

/// Serves the broker on `listener` until `shutdown` fires, then lets
/// in-flight calls finish (consumer streams end with UNAVAILABLE so their
/// clients reconnect elsewhere).
pub async fn serve(
    listener: TcpListener,
    storage: Arc<dyn Storage>,
    config: BrokerConfig,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let wakeups = Arc::new(wakeup::Wakeups::default());
    metrics::spawn_sampler(Arc::clone(&storage), shutdown.clone());
    tokio::spawn(Arc::clone(&wakeups).run(storage.watch(), shutdown.clone()));

    let max_bytes = config.limits.max_request_bytes();
    let pubsub = PubSubServer::new(pubsub::PubSubService::new(
        Arc::clone(&storage),
        config.limits,
        shutdown.clone(),
    ))
    .max_decoding_message_size(max_bytes)
    .max_encoding_message_size(max_bytes);
    let channels = ChannelsServer::new(channel::ChannelsService::new(
        Arc::clone(&storage),
        Arc::clone(&wakeups),
        config.clone(),
        shutdown.clone(),
    ))
    .max_decoding_message_size(max_bytes)
    .max_encoding_message_size(max_bytes);
    let objects = ObjectsServer::new(objects::ObjectsService::new(
        Arc::clone(&storage),
        config.limits,
    ))
    .max_decoding_message_size(max_bytes)
    .max_encoding_message_size(max_bytes);
    let queues = QueuesServer::new(queues::QueuesService::new(
        storage,
        wakeups,
        config,
        shutdown.clone(),
    ))
    .max_decoding_message_size(max_bytes)
    .max_encoding_message_size(max_bytes);

    let (reporter, health) = busmq_server::health_reporter();
    let names = [
        SERVICE_NAME,
        OTHER_SERVICES[0],
        OTHER_SERVICES[1],
        OTHER_SERVICES[2],
    ];
    busmq_server::report_health(reporter, &names, shutdown.clone()).await;

    busmq_server::grpc_server()
        .add_service(health)
        .add_service(busmq_server::reflection_v1())
        .add_service(busmq_server::reflection_v1alpha())
        .add_service(queues)
        .add_service(pubsub)
        .add_service(objects)
        .add_service(channels)
        .serve_with_incoming_shutdown(busmq_server::incoming(listener), shutdown.cancelled_owned())
        .await
}
