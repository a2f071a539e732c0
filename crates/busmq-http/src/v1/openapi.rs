//! `GET /openapi.json`: the OpenAPI document of every route, generated from
//! the handlers' `#[utoipa::path]` attributes: the `/v1` routes as they
//! are registered (utoipa-axum), the message-queue routes from the list
//! below, and the error answers every route may give.

use std::sync::Arc;

use axum::Extension;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use utoipa::ToSchema;
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};

use crate::error::ErrorBody;

/// The document's fixed part: its info, the message-queue routes, the
/// schemas every route shares.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "busmq HTTP gateway",
        description = "The message-queue API and the /v1 REST API of busmq-http, a thin \
            adapter over a busmq broker (docs/http.md). Every error is JSON \
            `{\"error\": ..., \"code\": ...}`."
    ),
    paths(
        crate::routes::push_default,
        crate::routes::next_default,
        crate::routes::done_default,
        crate::routes::push_named,
        crate::routes::next_named,
        crate::routes::done_named,
        crate::routes::healthz,
        crate::routes::readyz,
    ),
    components(schemas(ErrorBody)),
    tags(
        (name = "message-queue", description = "The message-queue API: one message at a time, leased"),
        (name = "queues", description = "/v1 queues: push, consume in every mode, settle, stats"),
        (name = "pubsub", description = "/v1 publish/subscribe, subscriptions as Server-Sent Events"),
        (name = "objects", description = "/v1 persistable objects"),
        (name = "websocket", description = "/v1 WebSocket: push, consume and ack on one socket"),
        (name = "meta", description = "Health and this document"),
    )
)]
pub(crate) struct ApiDoc;

/// The error statuses every route may answer (see `docs/http.md`): a
/// client's mistake (400, 404, 409, 413, 415), the broker's own failure
/// (500) or its absence (503).
const ERROR_STATUSES: [&str; 7] = ["400", "404", "409", "413", "415", "500", "503"];

/// The component name of the shared error answer.
const ERROR_RESPONSE: &str = "Error";

/// `api` with the shared error answer on every operation that does not
/// describe that status itself.
pub(crate) fn finish(mut api: OpenApi) -> OpenApi {
    let error = ResponseBuilder::new()
        .description("A JSON error: `code` says which (docs/http.md lists them)")
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(ErrorBody::name())))
                .build(),
        )
        .build();
    api.components
        .get_or_insert_with(Default::default)
        .responses
        .insert(ERROR_RESPONSE.to_owned(), RefOr::T(error));
    for item in api.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            for status in ERROR_STATUSES {
                operation
                    .responses
                    .responses
                    .entry(status.to_owned())
                    .or_insert_with(|| {
                        RefOr::Ref(Ref::new(format!("#/components/responses/{ERROR_RESPONSE}")))
                    });
            }
        }
    }
    api
}

/// The document, as JSON text made once.
#[derive(Debug, Clone)]
pub(crate) struct Document(pub Arc<String>);

impl Document {
    /// The JSON text of `api`.
    pub(crate) fn new(api: &OpenApi) -> Document {
        let json = api
            .to_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"the document does not serialize: {e}\"}}"));
        Document(Arc::new(json))
    }
}

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI document", body = Object)),
)]
pub(crate) async fn document(Extension(doc): Extension<Document>) -> Response {
    (
        [(CONTENT_TYPE, "application/json")],
        doc.0.as_str().to_owned(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::OpenApi as _;

    #[test]
    fn every_operation_describes_the_error_answers() {
        let api = finish(ApiDoc::openapi());
        let item = &api.paths.paths["/message/new"];
        let post = item.post.as_ref().expect("POST /message/new");
        for status in ERROR_STATUSES {
            assert!(post.responses.responses.contains_key(status), "{status}");
        }
        assert!(post.responses.responses.contains_key("201"));
    }
}
