//! `/v1/queues/{name}`: push one message or a batch, consume in every mode
//! the SDK offers, ack and nack, the queue's stats, flush and delete.

use std::time::Instant;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};

use super::Shared;
use super::schema::{
    AckMode, AckQuery, Acked, ConsumeQuery, Deleted, Flushed, IdPath, Message, Messages, ModeName,
    NackQuery, Nacked, Pushed, QueuePath, QueueStats,
};
use crate::error::HttpError;
use crate::params::{
    attempt_param, bad_path, body, id_param, index_param, positive_param, query_param,
    visibility_param, wait_param,
};
use crate::take::{self, Mode};
use crate::{Gateway, payload, settle};

/// The most messages one consume answers with.
pub const MAX_TAKE: u64 = 1000;

/// `?mode=` of a consume (default `lease`).
fn mode_param(gw: &Gateway, query: &Option<String>) -> Result<Mode, HttpError> {
    let name = match query_param(query, "mode") {
        None => ModeName::Lease,
        Some(raw) => {
            serde_json::from_value(serde_json::Value::String(raw.clone())).map_err(|_| {
                HttpError::BadParameter(format!(
                    "mode is lease, reliable, unreliable or persistent, not {raw:?}"
                ))
            })?
        }
    };
    // Each mode's own parameters are checked in every mode: a malformed
    // one is a mistake whichever mode it meets.
    let visibility = visibility_param(query)?;
    let last = index_param(query, "last")?;
    let from = index_param(query, "from")?;
    Ok(match name {
        ModeName::Lease => Mode::Lease(visibility.unwrap_or(gw.config.visibility_timeout)),
        ModeName::Reliable => Mode::Reliable { last },
        ModeName::Unreliable => Mode::Unreliable,
        ModeName::Persistent => Mode::Persistent {
            from: from.unwrap_or(0),
        },
    })
}

/// The messages of a push or publish body (see
/// [`payload::messages_from_request`]).
pub(crate) fn body_messages(
    gw: &Gateway,
    headers: &HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Vec<Bytes>, HttpError> {
    payload::messages_from_request(headers, body(bytes, gw.config.max_body_bytes)?)
}

/// The queue and the message id of a `.../messages/{id}/...` path.
fn message_path(
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<(String, u64), HttpError> {
    let Path((name, id)) = path.map_err(bad_path)?;
    Ok((name, id_param(&id)?))
}

/// Pushes one message or a batch, in one SDK call.
#[utoipa::path(
    post,
    path = "/v1/queues/{name}/messages",
    tag = "queues",
    params(QueuePath),
    request_body(
        description = "One message (`payload`) or a batch (`messages`), each stored as its JSON \
            text; a form `payload=...` or a `text/plain` body is one string message; an \
            `application/octet-stream` body is one message of those bytes.",
        content(
            (super::schema::PushRequest = "application/json"),
            (super::schema::FormPayload = "application/x-www-form-urlencoded"),
            (String = "text/plain"),
            (Vec<u8> = "application/octet-stream"),
        ),
    ),
    responses((status = 201, description = "Pushed: the ids, consecutive", body = Pushed)),
)]
pub async fn push(
    State(gw): Shared,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Pushed>), HttpError> {
    let Path(name) = path.map_err(bad_path)?;
    let messages = body_messages(&gw, &headers, bytes)?;
    let ids = gw
        .with_queue(&name, |q| {
            let messages = messages.clone();
            async move { q.push_batch(messages).await }
        })
        .await?;
    let pushed = Pushed {
        ids: ids.iter().collect(),
        first_id: ids.first,
        count: ids.len(),
    };
    Ok((StatusCode::CREATED, Json(pushed)))
}

/// Takes up to `max` messages in `mode`, waiting up to `wait` seconds for
/// the first. Lease mode records each lease in the gateway's lease book,
/// so an ack or nack may name the id alone.
#[utoipa::path(
    get,
    path = "/v1/queues/{name}/messages",
    tag = "queues",
    params(QueuePath, ConsumeQuery),
    responses((
        status = 200,
        description = "The messages taken, oldest first; `[]` when none could be taken within \
            the wait",
        body = Messages,
    )),
)]
pub async fn consume(
    State(gw): Shared,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Json<Messages>, HttpError> {
    let Path(name) = path.map_err(bad_path)?;
    let wait = wait_param(&query)?;
    let max = positive_param::<u64>(&query, "max")?.unwrap_or(1);
    if max > MAX_TAKE {
        return Err(HttpError::BadParameter(format!(
            "max is at most {MAX_TAKE}, not {max}"
        )));
    }
    let mode = mode_param(&gw, &query)?;
    if matches!(mode, Mode::Lease(_)) && !gw.leases.has_room(Instant::now()) {
        return Err(HttpError::TooManyLeases(gw.leases.capacity()));
    }
    let taken = gw
        .with_queue(&name, |q| take::take(&gw.shutdown, q, mode, max, wait))
        .await?;
    if let Mode::Lease(visibility) = mode {
        let now = Instant::now();
        for t in &taken {
            let d = &t.delivery;
            gw.leases
                .insert(&name, d.id, d.attempt, t.asked + visibility, now);
        }
    }
    let messages = taken.iter().map(|t| Message::from(&t.delivery)).collect();
    Ok(Json(Messages { messages }))
}

/// Acks a message: its lease (by `attempt`, or the lease this gateway
/// handed out), or with `mode=reliable` every pending message up to it.
#[utoipa::path(
    post,
    path = "/v1/queues/{name}/messages/{id}/ack",
    tag = "queues",
    params(QueuePath, IdPath, AckQuery),
    responses((status = 200, description = "Acked: removed from the queue", body = Acked)),
)]
pub async fn ack(
    State(gw): Shared,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Json<Acked>, HttpError> {
    let (name, id) = message_path(path)?;
    let mode = match query_param(&query, "mode").as_deref() {
        None | Some("lease") => AckMode::Lease,
        Some("reliable") => AckMode::Reliable,
        Some(other) => {
            return Err(HttpError::BadParameter(format!(
                "mode is lease or reliable, not {other:?}"
            )));
        }
    };
    let removed = match mode {
        AckMode::Reliable => gw.bus.queue(&name).ack(id).await?,
        AckMode::Lease => {
            let attempt = attempt_param(&query)?;
            settle::settle_lease(&gw, &name, id, attempt, |q, token| async move {
                q.ack_lease(token).await
            })
            .await?;
            1
        }
    };
    Ok(Json(Acked { id, removed }))
}

/// Gives a lease back at once, at the front of the queue (or to the
/// dead-letter queue on its last delivery).
#[utoipa::path(
    post,
    path = "/v1/queues/{name}/messages/{id}/nack",
    tag = "queues",
    params(QueuePath, IdPath, NackQuery),
    responses((status = 200, description = "Given back", body = Nacked)),
)]
pub async fn nack(
    State(gw): Shared,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Json<Nacked>, HttpError> {
    let (name, id) = message_path(path)?;
    let attempt = attempt_param(&query)?;
    let nacked = settle::settle_lease(&gw, &name, id, attempt, |q, token| async move {
        q.nack(token).await
    })
    .await?;
    Ok(Json(Nacked {
        id,
        dead_lettered: nacked == busmq_client::Nacked::DeadLettered,
    }))
}

/// The queue's stats, from the broker. 404 when there is no such queue
/// (this route does not create one).
#[utoipa::path(
    get,
    path = "/v1/queues/{name}",
    tag = "queues",
    params(QueuePath),
    responses((status = 200, description = "The queue's stats", body = QueueStats)),
)]
pub async fn stats(
    State(gw): Shared,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<QueueStats>, HttpError> {
    let Path(name) = path.map_err(bad_path)?;
    let info = gw.bus.queue(&name).info().await?;
    Ok(Json(QueueStats::new(&name, &info)))
}

/// Removes every message; the queue and its id counter stay. 404 when
/// there is no such queue.
#[utoipa::path(
    post,
    path = "/v1/queues/{name}/flush",
    tag = "queues",
    params(QueuePath),
    responses((status = 200, description = "Flushed", body = Flushed)),
)]
pub async fn flush(
    State(gw): Shared,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Flushed>, HttpError> {
    let Path(name) = path.map_err(bad_path)?;
    let flushed = gw.bus.queue(&name).flush().await?;
    Ok(Json(Flushed { flushed }))
}

/// Closes the queue: destroys it and its messages, for every client; its
/// consumers end. A later push creates it anew.
#[utoipa::path(
    delete,
    path = "/v1/queues/{name}",
    tag = "queues",
    params(QueuePath),
    responses((
        status = 200,
        description = "Deleted (`deleted` is false when there was no such queue)",
        body = Deleted,
    )),
)]
pub async fn delete(
    State(gw): Shared,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Deleted>, HttpError> {
    let Path(name) = path.map_err(bad_path)?;
    let deleted = gw.bus.queue(&name).close().await?;
    gw.set_attached(&name, false);
    Ok(Json(Deleted { deleted }))
}
