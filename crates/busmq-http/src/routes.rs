//! The routes and their handlers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use busmq_client::{ConsumeOptions, Delivery, LeaseToken, Reason};
use futures::{FutureExt, StreamExt};
use serde_json::json;

use crate::error::HttpError;
use crate::{Gateway, MAX_WAIT, broker_ready, payload};

/// How long `GET /message/next` without `?wait` waits for a message of a
/// queue that stores some: they may all be leased (or be taken by another
/// consumer first), and then the answer is 204 rather than a wait the
/// client did not ask for. The store answers a take within a round trip,
/// so a message that can be served arrives well within it.
const NO_WAIT_GRACE: Duration = Duration::from_millis(250);

/// How long `/readyz` waits for the broker's health answer.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

type Shared = State<Arc<Gateway>>;

/// The gateway's routes, over `gateway`.
pub fn router(gateway: Arc<Gateway>) -> Router {
    let limit = gateway.config.max_body_bytes;
    Router::new()
        .route("/message/new", post(push_default))
        .route("/message/next", get(next_default))
        .route("/message/{id}/status/done", post(done_default))
        .route("/queues/{name}/message/new", post(push_named))
        .route("/queues/{name}/message/next", get(next_named))
        .route("/queues/{name}/message/{id}/status/done", post(done_named))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(limit))
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

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(gw): Shared) -> Result<Json<serde_json::Value>, HttpError> {
    broker_ready(&gw.bus, READY_TIMEOUT)
        .await
        .map_err(HttpError::NotReady)?;
    Ok(Json(json!({ "status": "ready" })))
}

/// A path segment the router matched but could not decode (not UTF-8).
fn bad_path(rejection: PathRejection) -> HttpError {
    HttpError::BadParameter(format!("bad path: {}", rejection.body_text()))
}

fn body(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, HttpError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            HttpError::BodyTooLarge { limit }
        } else {
            HttpError::BadBody(rejection.body_text())
        }
    })
}

/// `key`'s value in the query string, if given.
fn query_param(query: &Option<String>, key: &str) -> Option<String> {
    let query = query.as_deref()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// `?wait=SECONDS`: a non-negative number, capped at [`MAX_WAIT`].
fn wait_param(query: &Option<String>) -> Result<Duration, HttpError> {
    let Some(raw) = query_param(query, "wait") else {
        return Ok(Duration::ZERO);
    };
    let seconds: f64 = raw
        .trim()
        .parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && *s >= 0.0)
        .ok_or_else(|| {
            HttpError::BadParameter(format!(
                "wait must be a number of seconds from 0 (at most {} is used), not {raw:?}",
                MAX_WAIT.as_secs()
            ))
        })?;
    Ok(Duration::from_secs_f64(seconds.min(MAX_WAIT.as_secs_f64())))
}

/// A message id: a positive integer.
fn id_param(raw: &str) -> Result<u64, HttpError> {
    raw.parse::<u64>().ok().filter(|id| *id > 0).ok_or_else(|| {
        HttpError::BadParameter(format!("a message id is a positive integer, not {raw:?}"))
    })
}

/// `?attempt=N`: the delivery a done names, when the client kept it.
fn attempt_param(query: &Option<String>) -> Result<Option<u32>, HttpError> {
    let Some(raw) = query_param(query, "attempt") else {
        return Ok(None);
    };
    raw.parse::<u32>()
        .ok()
        .filter(|a| *a > 0)
        .map(Some)
        .ok_or_else(|| {
            HttpError::BadParameter(format!("attempt is a positive integer, not {raw:?}"))
        })
}

async fn push_default(
    State(gw): Shared,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpError> {
    let queue = gw.config.default_queue.clone();
    push(&gw, &queue, &headers, bytes).await
}

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

async fn next_default(State(gw): Shared, RawQuery(query): RawQuery) -> Result<Response, HttpError> {
    let queue = gw.config.default_queue.clone();
    next(&gw, &queue, &query).await
}

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
/// returns it with the moment its lease runs out as seen from here.
async fn take(
    gw: &Gateway,
    queue: busmq_client::Queue,
    wait: Duration,
) -> Result<Option<(Delivery, Instant)>, busmq_client::Error> {
    if wait.is_zero() {
        // Nothing stored at all: answer now instead of opening a consume
        // that would only wait. Leased messages count: the info does not
        // say whether their leases ran out (the store reclaims them when
        // it is next asked to take), so those need the consume.
        if queue.info().await?.count == 0 {
            return Ok(None);
        }
    }
    let visibility = gw.config.visibility_timeout;
    // Before the consume is asked, so never later than the store's deadline.
    let deadline = Instant::now() + visibility;
    let mut consumer = queue
        .consume(ConsumeOptions::lease(visibility).max(1).prefetch(1))
        .await?;
    let budget = if wait.is_zero() { NO_WAIT_GRACE } else { wait };
    let waited = tokio::select! {
        got = tokio::time::timeout(budget, consumer.next()) => got.ok(),
        () = gw.shutdown.cancelled() => None,
    };
    let delivery = match waited {
        Some(Some(Ok(delivery))) => Some(delivery),
        Some(Some(Err(e))) => return Err(e),
        // The stream ended with no message: the queue was closed.
        Some(None) => None,
        None => {
            // Stopping gives back a lease taken but not received yet; one
            // already received is served rather than left to time out.
            consumer.stop();
            match consumer.next().now_or_never() {
                Some(Some(Ok(delivery))) => Some(delivery),
                _ => None,
            }
        }
    };
    Ok(delivery.map(|d| (d, deadline)))
}

async fn done_default(
    State(gw): Shared,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response, HttpError> {
    let Path(id) = path.map_err(bad_path)?;
    let queue = gw.config.default_queue.clone();
    done(&gw, &queue, &id, &query).await
}

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
    let attempt = match attempt_param(query)? {
        Some(attempt) => attempt,
        None => match gw.leases.attempt(queue, id, Instant::now()) {
            Some(attempt) => attempt,
            None => {
                // Names are the broker's to judge: a bad one is the
                // client's mistake to hear about (400), not a missing
                // lease. Any other failure leaves the answer as it is:
                // this gateway holds no lease of the message.
                if let Err(e) = gw.bus.queue(queue).exists().await
                    && e.reason() == Some(Reason::InvalidName)
                {
                    return Err(e.into());
                }
                return Err(HttpError::LeaseNotFound(format!(
                    "message {id} of queue {queue:?} is not leased through this gateway \
                     (unknown, already done, or its lease expired)"
                )));
            }
        },
    };
    // Not `with_queue`: a done must not create a queue, and a lease of a
    // queue that vanished is gone with it (404).
    match gw
        .bus
        .queue(queue)
        .ack_lease(LeaseToken { id, attempt })
        .await
    {
        Ok(()) => {
            gw.leases.remove(queue, id, attempt);
            Ok((StatusCode::OK, Json(json!({ "id": id }))).into_response())
        }
        Err(e) => {
            let err = HttpError::done(id, e);
            if err.status() == StatusCode::NOT_FOUND {
                gw.leases.remove(queue, id, attempt);
            }
            Err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Option<String> {
        Some(s.to_owned())
    }

    #[test]
    fn wait_is_seconds_capped_at_the_maximum() {
        assert_eq!(wait_param(&None).unwrap(), Duration::ZERO);
        assert_eq!(wait_param(&q("x=1")).unwrap(), Duration::ZERO);
        assert_eq!(wait_param(&q("wait=2")).unwrap(), Duration::from_secs(2));
        assert_eq!(
            wait_param(&q("wait=0.5")).unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(wait_param(&q("wait=3600")).unwrap(), MAX_WAIT);
        for bad in ["wait=", "wait=abc", "wait=-1", "wait=NaN", "wait=inf"] {
            assert!(wait_param(&q(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_and_attempts_are_positive_integers() {
        assert_eq!(id_param("7").unwrap(), 7);
        for bad in ["0", "-1", "abc", "1.5", "", "99999999999999999999999"] {
            assert!(id_param(bad).is_err(), "{bad}");
        }
        assert_eq!(attempt_param(&q("attempt=2")).unwrap(), Some(2));
        assert_eq!(attempt_param(&None).unwrap(), None);
        assert!(attempt_param(&q("attempt=0")).is_err());
        assert!(attempt_param(&q("attempt=x")).is_err());
    }
}
