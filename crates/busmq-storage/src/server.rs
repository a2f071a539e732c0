//! Running the storage gRPC server.

use std::sync::Arc;

use busmq_core::Limits;
use busmq_proto::storage::v1::storage_server::StorageServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::transport::Server;

use crate::Storage;
use crate::service::StorageService;

/// The gRPC service name health is reported under.
pub const SERVICE_NAME: &str = "busmq.storage.v1.Storage";

/// Serves `storage` as `busmq.storage.v1.Storage` on `listener`, with
/// `grpc.health.v1` and server reflection, until `shutdown` fires.
///
/// Requests and responses may be as large as [`Limits::max_request_bytes`].
/// On shutdown, health flips to NOT_SERVING, open `Watch` streams end and
/// in-flight calls finish before this returns; callers that want a bound on
/// that wait (see `busmq_runtime::DRAIN_TIMEOUT`) race it against a timer.
pub async fn serve(
    listener: TcpListener,
    storage: Arc<dyn Storage>,
    limits: Limits,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = busmq_runtime::health_reporter();
    busmq_runtime::report_health(reporter, &[SERVICE_NAME], shutdown.clone()).await;

    let max = limits.max_request_bytes();
    let storage =
        StorageServer::new(StorageService::new(storage, limits).with_shutdown(shutdown.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max)
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd);

    Server::builder()
        .add_service(health)
        .add_service(busmq_runtime::reflection())
        .add_service(storage)
        .serve_with_incoming_shutdown(
            busmq_runtime::incoming(listener),
            shutdown.cancelled_owned(),
        )
        .await
}
