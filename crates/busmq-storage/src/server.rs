//! Running the storage gRPC server.

use std::sync::Arc;
use std::time::Duration;

use busmq_core::Limits;
use busmq_proto::storage::v1::storage_server::StorageServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::Storage;
use crate::service::StorageService;

/// The gRPC service name health is reported under.
pub const SERVICE_NAME: &str = "busmq.storage.v1.Storage";

/// How often health is brought in step with [`Storage::ready`].
pub const HEALTH_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Serves `storage` as `busmq.storage.v1.Storage` on `listener`, with
/// `grpc.health.v1` and server reflection, until `shutdown` fires.
///
/// Health is SERVING while [`Storage::ready`] says so (checked every
/// [`HEALTH_CHECK_INTERVAL`]; a Redis store is not ready until connected)
/// and NOT_SERVING otherwise.
///
/// Requests and responses may be as large as [`Limits::max_request_bytes`].
/// On shutdown, health flips to NOT_SERVING, open `Watch` streams end and
/// in-flight calls finish before this returns; callers that want a bound on
/// that wait (see `busmq_server::DRAIN_TIMEOUT`) race it against a timer.
pub async fn serve(
    listener: TcpListener,
    storage: Arc<dyn Storage>,
    limits: Limits,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = busmq_server::health_reporter();
    report_health(reporter, Arc::clone(&storage), shutdown.clone()).await;

    let max = limits.max_request_bytes();
    let storage =
        StorageServer::new(StorageService::new(storage, limits).with_shutdown(shutdown.clone()))
            .max_decoding_message_size(max)
            .max_encoding_message_size(max)
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd);

    busmq_server::grpc_server()
        .add_service(health)
        .add_service(busmq_server::reflection_v1())
        .add_service(busmq_server::reflection_v1alpha())
        .add_service(storage)
        .serve_with_incoming_shutdown(busmq_server::incoming(listener), shutdown.cancelled_owned())
        .await
}

/// Keeps the health of the server ("") and of [`SERVICE_NAME`] in step with
/// `storage.ready()` until `shutdown`, then flips both to NOT_SERVING
/// before in-flight work drains, so load balancers stop sending new work.
async fn report_health(
    reporter: HealthReporter,
    storage: Arc<dyn Storage>,
    shutdown: CancellationToken,
) {
    async fn set(reporter: &HealthReporter, status: ServingStatus) {
        for name in ["", SERVICE_NAME] {
            reporter.set_service_status(name, status).await;
        }
    }
    let status = |ready: bool| {
        if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    };
    let mut ready = storage.ready().await;
    set(&reporter, status(ready)).await;
    if !ready {
        tracing::warn!("storage backend not ready: health is NOT_SERVING until it is");
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEALTH_CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    let now = storage.ready().await;
                    if now != ready {
                        ready = now;
                        if ready {
                            tracing::info!("storage backend ready: health SERVING");
                        } else {
                            tracing::warn!("storage backend not ready: health NOT_SERVING");
                        }
                        set(&reporter, status(ready)).await;
                    }
                }
            }
        }
        set(&reporter, ServingStatus::NotServing).await;
    });
}
