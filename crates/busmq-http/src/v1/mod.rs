//! The `/v1` REST API: queues (push, consume in every mode, ack and nack,
//! stats, flush, delete), pub/sub (publish, subscribe as Server-Sent
//! Events), persistable objects, a WebSocket for all of the queue
//! operations on one connection, and `GET /openapi.json` describing every
//! route of the gateway. A thin adapter like the rest: each request
//! becomes SDK calls; see `docs/http.md`.

use std::sync::Arc;

use axum::{Extension, Router};
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::Gateway;

pub mod objects;
mod openapi;
pub mod pubsub;
pub mod queues;
pub mod schema;
pub mod ws;

type Shared = axum::extract::State<Arc<Gateway>>;

/// The `/v1` routes and `GET /openapi.json`, to merge into the gateway's
/// router (whose fallbacks and layers then cover them too).
pub fn router() -> Router<Arc<Gateway>> {
    let (router, api) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(queues::push, queues::consume))
        .routes(routes!(queues::ack))
        .routes(routes!(queues::nack))
        .routes(routes!(queues::stats, queues::delete))
        .routes(routes!(queues::flush))
        .routes(routes!(pubsub::publish))
        .routes(routes!(pubsub::events))
        .routes(routes!(objects::get, objects::put, objects::patch))
        .routes(routes!(ws::upgrade))
        .routes(routes!(openapi::document))
        .split_for_parts();
    let document = openapi::Document::new(&openapi::finish(api));
    router.layer(Extension(document))
}
