//! The routes and their handlers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use busmq_client::Delivery;
use serde_json::json;

use crate::error::HttpError;
use crate::params::{attempt_param, bad_path, body, id_param, wait_param};
use crate::take::Mode;
use crate::{Gateway, broker_ready, payload, settle, take, v1};
use crate::{auth, observe};

/// How long `/readyz` waits for the broker's health answer.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

type Shared = State<Arc<Gateway>>;

/// The gateway's routes, over `gateway`.
pub fn router(gateway: Arc<Gateway>) -> Router {
    let limit = gateway.config.max_body_bytes;
    let token = gateway.config.token.clone();
    Router::new()
        .route("/message/new", post(push_default))
        .route("/message/next", get(next_default))
        .route("/message/{id}/status/done", post(done_default))
        .route("/queues/{name}/message/new", post(push_named))
        .route("/queues/{name}/message/next", get(next_named))
        .route("/queues/{name}/message/{id}/status/done", post(done_named))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(v1::router())
        .merge(crate::info::router())
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        // Layers last, so they cover every route above, merged ones too.
        // Outermost first in a request's path: counted and traced, then
        // authenticated, and only then is a body read.
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(token, auth::require))
        .layer(middleware::from_fn(observe::observe))
        .with_state(gateway)
}

async fn no_route(uri: Uri) -> HttpError {
    HttpError::NoRoute(uri.path().to_owned())
}

async fn wrong_method(method: Method, uri: Uri) -> HttpError {
    HttpError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_owned(),
    }
}

/// 200 while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "meta",
    responses((status = 200, description = "Up", body = crate::v1::schema::Status)))]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// The same exposition as the `--metrics-listen` port, for a scraper that
/// reaches only the gateway's port.
async fn metrics() -> Result<Response, HttpError> {
    busmq_server::metrics::exposition().ok_or_else(|| {
        HttpError::MetricsOff("metrics are off in this process (--metrics-listen off)".to_owned())
    })
}

/// 200 when the broker answers its health check as SERVING.
#[utoipa::path(get, path = "/readyz", tag = "meta",
    responses((status = 200, description = "Ready", body = crate::v1::schema::Status)))]
async fn readyz(State(gw): Shared) -> Result<Json<serde_json::Value>, HttpError> {
    broker_ready(&gw.bus, READY_TIMEOUT)
        .await
        .map_err(HttpError::NotReady)?;
    Ok(Json(json!({ "status": "ready" })))
}

/// Pushes one message to the default queue.
#[utoipa::path(post, path = "/message/new", tag = "message-queue",
    request_body(
        description = "`{\"payload\": ...}` (any JSON) or a form `payload=...` (a string)",
        content(
            (crate::v1::schema::PublishRequest = "application/json"),
            (crate::v1::schema::FormPayload = "application/x-www-form-urlencoded"),
        ),
    ),
    responses((status = 201, description = "Pushed", body = crate::v1::schema::Id)),
)]
async fn push_default(
    State(gw): Shared,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    let queue = gw.config.default_queue.clone();
    push(&gw, &queue, &headers, bytes).await
}

/// Pushes one message to the queue `name`.
#[utoipa::path(post, path = "/queues/{name}/message/new", tag = "message-queue", params(crate::v1::schema::QueuePath),
    request_body(
        description = "`{\"payload\": ...}` (any JSON) or a form `payload=...` (a string)",
        content(
            (crate::v1::schema::PublishRequest = "application/json"),
            (crate::v1::schema::FormPayload = "application/x-www-form-urlencoded"),
        ),
    ),
    responses((status = 201, description = "Pushed", body = crate::v1::schema::Id)),
)]
async fn push_named(
    State(gw): Shared,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    let Path(queue) = path.map_err(bad_path)?;
    push(&gw, &queue, &headers, bytes).await
}

async fn push(
    gw: &Gateway,
    queue: &str,
    headers: &HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    let bytes = body(bytes, gw.config.max_body_bytes)?;
    let message = payload::from_request(headers, &bytes)?;
    let id = gw
        .with_queue(queue, |q| {
            let message = message.clone();
            async move { q.push(message).await }
        })
        .await?;
    Ok((StatusCode::CREATED, Json(json!({ "id": id }))).into_response())
}

/// Leases the next message of the default queue.
#[utoipa::path(get, path = "/message/next", tag = "message-queue", params(("wait" = Option<f64>, Query, minimum = 0, maximum = 20, description = "Seconds to wait for a message (a long poll)")),
    responses(
        (status = 200, description = "The oldest available message, now leased", body = crate::v1::schema::Message),
        (status = 204, description = "No message to serve (within the wait)"),
    ),
)]
async fn next_default(State(gw): Shared, RawQuery(query): RawQuery) -> Result<Response, HttpError> {
    let queue = gw.config.default_queue.clone();
    next(&gw, &queue, &query).await
}

/// Leases the next message of the queue `name`.
#[utoipa::path(get, path = "/queues/{name}/message/next", tag = "message-queue",
    params(crate::v1::schema::QueuePath, ("wait" = Option<f64>, Query, minimum = 0, maximum = 20, description = "Seconds to wait for a message (a long poll)")),
    responses(
        (status = 200, description = "The oldest available message, now leased", body = crate::v1::schema::Message),
        (status = 204, description = "No message to serve (within the wait)"),
    ),
)]
async fn next_named(
    State(gw): Shared,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response, HttpError> {
    let Path(queue) = path.map_err(bad_path)?;
    next(&gw, &queue, &query).await
}

async fn next(gw: &Gateway, queue: &str, query: &Option<String>) -> Result<Response, HttpError> {
    let wait = wait_param(query)?;
    if !gw.leases.has_room(Instant::now()) {
        return Err(HttpError::TooManyLeases(gw.leases.capacity()));
    }
    let taken = gw.with_queue(queue, |q| take(gw, q, wait)).await?;
    let Some((delivery, deadline)) = taken else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    gw.leases.insert(
        queue,
        delivery.id,
        delivery.attempt,
        deadline,
        Instant::now(),
    );
    let body = json!({
        "id": delivery.id,
        "payload": payload::to_response(&delivery.payload),
        "attempt": delivery.attempt,
    });
    Ok((StatusCode::OK, Json(body)).into_response())
}

/// Leases the next message of `queue`, waiting up to `wait` for one, and
/// returns it with the moment its lease runs out as seen from here
/// (measured from before the consume was asked, so never later than the
/// store's deadline).
async fn take(
    gw: &Gateway,
    queue: busmq_client::Queue,
    wait: Duration,
) -> Result<Option<(Delivery, Instant)>, busmq_client::Error> {
    let visibility = gw.config.visibility_timeout;
    let taken = take::take(&gw.shutdown, queue, Mode::Lease(visibility), 1, wait).await?;
    Ok(taken
        .into_iter()
        .next()
        .map(|t| (t.delivery, t.asked + visibility)))
}

/// Marks a message of the default queue done (acks its lease).
#[utoipa::path(post, path = "/message/{id}/status/done", tag = "message-queue",
    params(crate::v1::schema::IdPath, ("attempt" = Option<u32>, Query, minimum = 1, description = "The delivery, as `next` handed it out")),
    responses((status = 200, description = "Done: the message is removed", body = crate::v1::schema::Id)),
)]
async fn done_default(
    State(gw): Shared,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response, HttpError> {
    let Path(id) = path.map_err(bad_path)?;
    let queue = gw.config.default_queue.clone();
    done(&gw, &queue, &id, &query).await
}

/// Marks a message of the queue `name` done (acks its lease).
#[utoipa::path(post, path = "/queues/{name}/message/{id}/status/done", tag = "message-queue",
    params(crate::v1::schema::QueuePath, crate::v1::schema::IdPath, ("attempt" = Option<u32>, Query, minimum = 1, description = "The delivery, as `next` handed it out")),
    responses((status = 200, description = "Done: the message is removed", body = crate::v1::schema::Id)),
)]
async fn done_named(
    State(gw): Shared,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response, HttpError> {
    let Path((queue, id)) = path.map_err(bad_path)?;
    done(&gw, &queue, &id, &query).await
}

async fn done(
    gw: &Gateway,
    queue: &str,
    id: &str,
    query: &Option<String>,
) -> Result<Response, HttpError> {
    let id = id_param(id)?;
    let attempt = attempt_param(query)?;
    settle::settle_lease(gw, queue, id, attempt, |q, token| async move {
        q.ack_lease(token).await
    })
    .await?;
    Ok((StatusCode::OK, Json(json!({ "id": id }))).into_response())
}
