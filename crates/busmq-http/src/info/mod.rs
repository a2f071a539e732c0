//! The live `/info` page: the whole bus at a glance (every queue's depth,
//! pending and leased messages, attachments, in and out rates; the pub/sub
//! channels and their subscribers), updated every second over
//! Server-Sent Events.
//!
//! - `GET /info`: the page ([`PAGE`], no external assets).
//! - `GET /info.json?filter=&top=&page=`: one snapshot as JSON.
//! - `GET /info/events?filter=&top=&page=`: a `snapshot` event every
//!   second while connected.
//!
//! The bus is read once per interval for every viewer ([`hub`]); each
//! viewer gets its own slice (filter, top N by depth, page) of that one
//! reading ([`snapshot`]).

pub mod hub;
pub mod snapshot;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures::{Stream, StreamExt};

use crate::Gateway;
use crate::error::HttpError;
use hub::{FIRST_WAIT, Hub, Latest};
use snapshot::{Snapshot, View};

/// The page, with its script and styles inline.
pub const PAGE: &str = include_str!("page.html");

/// How often an idle event stream sends a comment.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The `/info` routes, sharing one [`Hub`].
pub fn router() -> Router<Arc<Gateway>> {
    let hub = Arc::new(Hub::default());
    let json_hub = Arc::clone(&hub);
    Router::new()
        .route("/info", get(page))
        .route(
            "/info.json",
            get(move |gw, view| json(Arc::clone(&json_hub), gw, view)),
        )
        .route(
            "/info/events",
            get(move |gw, view| events(Arc::clone(&hub), gw, view)),
        )
}

async fn page() -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Html(PAGE)).into_response()
}

/// The view a query asks for (`filter`, `top`, `page`; others are
/// ignored); a number that is not one is a 400.
fn view(RawQuery(query): RawQuery) -> Result<View, HttpError> {
    let mut view = View::default();
    let number = |key: &str, value: &str| {
        value.parse::<usize>().map_err(|_| {
            HttpError::BadParameter(format!("?{key}= takes a whole number, not {value:?}"))
        })
    };
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*key {
            "filter" => view.filter = value.into_owned(),
            "top" => view.top = number(&key, &value)?,
            "page" => view.page = number(&key, &value)?,
            _ => {}
        }
    }
    Ok(view)
}

/// The first snapshot a new viewer gets: the latest, or the next within
/// [`FIRST_WAIT`].
async fn first(latest: &mut Latest) -> Result<Arc<Snapshot>, HttpError> {
    let ready = tokio::time::timeout(FIRST_WAIT, latest.wait_for(Option::is_some)).await;
    match ready {
        Ok(Ok(snapshot)) => snapshot.clone().ok_or_else(unavailable),
        _ => Err(unavailable()),
    }
}

fn unavailable() -> HttpError {
    HttpError::NotReady(format!(
        "no reading of the bus within {} s",
        FIRST_WAIT.as_secs()
    ))
}

async fn json(
    hub: Arc<Hub>,
    State(gw): State<Arc<Gateway>>,
    query: RawQuery,
) -> Result<Response, HttpError> {
    let view = view(query)?;
    let mut latest = hub.watch(&gw.bus, &gw.shutdown);
    let snapshot = first(&mut latest).await?;
    Ok(Json(snapshot.view(&view)).into_response())
}

/// The latest snapshot at once, then each new one.
fn changes(latest: Latest) -> impl Stream<Item = Option<Arc<Snapshot>>> {
    futures::stream::unfold((latest, true), |(mut rx, first)| async move {
        if !first {
            rx.changed().await.ok()?;
        }
        let snapshot = rx.borrow_and_update().clone();
        Some((snapshot, (rx, false)))
    })
}

async fn events(
    hub: Arc<Hub>,
    State(gw): State<Arc<Gateway>>,
    query: RawQuery,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, HttpError> {
    let view = view(query)?;
    let latest = hub.watch(&gw.bus, &gw.shutdown);
    let shutdown = gw.shutdown.clone().cancelled_owned();
    let stream = changes(latest)
        .filter_map(move |snapshot| {
            let event = snapshot.and_then(|s| {
                Event::default()
                    .event("snapshot")
                    .json_data(s.view(&view))
                    .ok()
            });
            futures::future::ready(event.map(Ok))
        })
        .take_until(shutdown);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}
