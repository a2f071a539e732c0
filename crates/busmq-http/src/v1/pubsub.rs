//! `/v1/pubsub/{channel}`: publish, and subscribe as Server-Sent Events.
//!
//! Each SSE request is its own subscription (an SDK pub/sub handle),
//! dropped when the client goes away or the gateway shuts down. Pub/sub
//! stores nothing, and a reader is never buffered for without limit: the
//! SDK keeps at most 1024 events per subscription, the SSE body is written
//! only as fast as the client reads, and a reader that falls further behind
//! skips the oldest and is told how many with a `lagged` event.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use busmq_client::PubSubEvent;
use futures::{Stream, StreamExt, future};
use serde_json::json;

use super::Shared;
use super::schema::{ChannelPath, Published};
use crate::error::HttpError;
use crate::params::bad_path;
use crate::payload;

/// How often an idle SSE stream sends a comment, so that proxies keep it
/// open and a client that went away is noticed.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Publishes one message to the channel's subscribers of the moment.
#[utoipa::path(
    post,
    path = "/v1/pubsub/{channel}",
    tag = "pubsub",
    params(ChannelPath),
    request_body(
        description = "One message: `{\"payload\": ...}`, a form `payload=...`, `text/plain` or \
            `application/octet-stream` (the payload rule of pushes)",
        content(
            (super::schema::PublishRequest = "application/json"),
            (super::schema::FormPayload = "application/x-www-form-urlencoded"),
            (String = "text/plain"),
            (Vec<u8> = "application/octet-stream"),
        ),
    ),
    responses((status = 200, description = "Published", body = Published)),
)]
pub async fn publish(
    State(gw): Shared,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<Json<Published>, HttpError> {
    let Path(channel) = path.map_err(bad_path)?;
    let mut messages = super::queues::body_messages(&gw, &headers, bytes)?;
    let (Some(message), true) = (messages.pop(), messages.is_empty()) else {
        return Err(HttpError::InvalidBody(
            "a publication is one message: send \"payload\", not \"messages\"".into(),
        ));
    };
    let receivers = gw.bus.pubsub(channel).publish(message).await?;
    Ok(Json(Published { receivers }))
}

/// The SSE event of one pub/sub event; `None` ends the stream.
fn sse_event(event: PubSubEvent) -> Option<Event> {
    let (name, data) = match event {
        PubSubEvent::Subscribed => ("subscribed", json!({})),
        PubSubEvent::Message(message) => ("message", payload::to_response(&message)),
        PubSubEvent::Missed(missed) => ("lagged", json!({ "missed": missed })),
        PubSubEvent::Error(error) => ("error", json!({ "error": error })),
        PubSubEvent::Unsubscribed => return None,
        // An event of a newer SDK: nothing a reader needs.
        _ => ("ignored", json!({})),
    };
    Some(Event::default().event(name).data(data.to_string()))
}

/// Subscribes to the channel: a `subscribed` event once the subscription
/// is in place, then a `message` event per publication (its data the
/// payload's JSON), `lagged` (`{"missed": N}`) when this reader fell behind
/// and missed N, `error` (`{"error": "..."}`) when the subscription was lost
/// (it is renewed by itself, then `subscribed` again). The stream ends when
/// the gateway shuts down.
#[utoipa::path(
    get,
    path = "/v1/pubsub/{channel}/events",
    tag = "pubsub",
    params(ChannelPath),
    responses((
        status = 200,
        description = "An event stream (`subscribed`, `message`, `lagged`, `error`)",
        content_type = "text/event-stream",
        body = String,
    )),
)]
pub async fn events(
    State(gw): Shared,
    path: Result<Path<String>, PathRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, HttpError> {
    let Path(channel) = path.map_err(bad_path)?;
    let pubsub = gw.bus.pubsub(channel);
    let events = pubsub.events();
    // A refusal (a bad name, the broker down) is an answer, not a stream.
    pubsub.subscribe().await?;
    let shutdown = gw.shutdown.clone().cancelled_owned();
    let stream = events
        .map(move |event| {
            // The stream owns the handle: dropping it (the client went
            // away, or the end) unsubscribes.
            let _subscription = &pubsub;
            sse_event(event)
        })
        .take_while(|event| future::ready(event.is_some()))
        .filter_map(|event| future::ready(event.map(Ok)))
        .take_until(shutdown);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}
