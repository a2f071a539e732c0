//! Every failure of the gateway, and the one place where each becomes an
//! HTTP status and a JSON body.
//!
//! Errors of the bus keep the status of busmq's own table
//! ([`ErrorCode::http_status`]), so the HTTP answer to a bad queue name or
//! an oversize message is the one every busmq entry point gives. The
//! gateway departs from that table only where the message-queue API says
//! otherwise (a done whose lease is gone is 404, see [`HttpError::done`]).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use busmq_client::{ErrorCode, Reason};
use serde::Serialize;

/// What the gateway answers instead of a result.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The body is not JSON.
    #[error("malformed JSON body: {0}")]
    MalformedJson(String),
    /// The body has no `payload` field.
    #[error("{0}")]
    MissingPayload(String),
    /// The body is neither JSON nor form-encoded.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The body is over `--max-body-bytes`.
    #[error("request body over the limit of {limit} bytes")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body could not be read (the client went away mid-body, say).
    #[error("cannot read the request body: {0}")]
    BadBody(String),
    /// A message id, a query parameter or a path segment that is not what
    /// the route takes.
    #[error("{0}")]
    BadParameter(String),
    /// No lease of this message is held through this gateway: never handed
    /// out, already done, expired, or handed out by another gateway.
    #[error("{0}")]
    LeaseNotFound(String),
    /// A body that parses but is not what the route takes (an empty batch,
    /// a persistable that is not a JSON object, a WebSocket frame that is
    /// not an operation).
    #[error("{0}")]
    InvalidBody(String),
    /// No persistable object of this name is stored.
    #[error("{0}")]
    ObjectNotFound(String),
    /// `GET /v1/ws` without a WebSocket upgrade.
    #[error("{0}")]
    UpgradeRequired(String),
    /// No route has this path.
    #[error("no route for {0}")]
    NoRoute(String),
    /// The route exists but not with this method.
    #[error("method {method} not allowed on {path}")]
    MethodNotAllowed {
        /// The method of the request.
        method: String,
        /// The path of the request.
        path: String,
    },
    /// The gateway holds as many leases as `--max-leases` allows.
    #[error("the gateway already tracks {0} leases; retry when some are done or expired")]
    TooManyLeases(usize),
    /// `--token` is set and the request does not carry it as a bearer
    /// token.
    #[error("{0}")]
    Unauthorized(String),
    /// `GET /metrics` in a process that records none.
    #[error("{0}")]
    MetricsOff(String),
    /// The broker does not answer its health check.
    #[error("the broker does not answer: {0}")]
    NotReady(String),
    /// Whatever the bus or the SDK answered.
    #[error("{0}")]
    Bus(#[from] busmq_client::Error),
}

/// The JSON body of every error: `{"error": "...", "code": "..."}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
    /// The stable, machine-readable code (see `docs/http.md`).
    #[schema(example = "INVALID_NAME")]
    pub code: String,
}

impl HttpError {
    /// The error of a done whose ack the bus refused: a lease that ran out,
    /// was given back or settled (LEASE_EXPIRED, UNKNOWN_LEASE), or a queue
    /// that is gone, is not that consumer's any more, which the
    /// message-queue API answers with 404. Anything else keeps its status.
    pub fn done(id: u64, err: busmq_client::Error) -> HttpError {
        match err.reason() {
            Some(Reason::LeaseExpired | Reason::UnknownLease | Reason::QueueNotFound) => {
                HttpError::LeaseNotFound(format!(
                    "message {id} is not leased to you: {err} (unknown, already done, or its lease expired)"
                ))
            }
            _ => HttpError::Bus(err),
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            HttpError::MalformedJson(_)
            | HttpError::MissingPayload(_)
            | HttpError::BadBody(_)
            | HttpError::InvalidBody(_)
            | HttpError::BadParameter(_) => StatusCode::BAD_REQUEST,
            HttpError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            HttpError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::LeaseNotFound(_) | HttpError::ObjectNotFound(_) | HttpError::NoRoute(_) => {
                StatusCode::NOT_FOUND
            }
            HttpError::UpgradeRequired(_) => StatusCode::UPGRADE_REQUIRED,
            HttpError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            HttpError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            HttpError::TooManyLeases(_) | HttpError::NotReady(_) | HttpError::MetricsOff(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            HttpError::Bus(e) => bus_status(e),
        }
    }

    /// The stable, machine-readable code of this error: the bus's reason
    /// where it gave one (`INVALID_NAME`, `MESSAGE_TOO_LARGE`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            HttpError::MalformedJson(_) => "MALFORMED_JSON",
            HttpError::MissingPayload(_) => "MISSING_PAYLOAD",
            HttpError::UnsupportedMediaType(_) => "UNSUPPORTED_MEDIA_TYPE",
            HttpError::BodyTooLarge { .. } => "BODY_TOO_LARGE",
            HttpError::BadBody(_) => "BAD_BODY",
            HttpError::BadParameter(_) => "BAD_PARAMETER",
            HttpError::InvalidBody(_) => "INVALID_BODY",
            HttpError::ObjectNotFound(_) => "OBJECT_NOT_FOUND",
            HttpError::UpgradeRequired(_) => "UPGRADE_REQUIRED",
            HttpError::LeaseNotFound(_) => "LEASE_NOT_FOUND",
            HttpError::NoRoute(_) => "NO_ROUTE",
            HttpError::MethodNotAllowed { .. } => "METHOD_NOT_ALLOWED",
            HttpError::TooManyLeases(_) => "TOO_MANY_LEASES",
            HttpError::Unauthorized(_) => "UNAUTHORIZED",
            HttpError::MetricsOff(_) => "METRICS_OFF",
            HttpError::NotReady(_) => "BROKER_UNAVAILABLE",
            HttpError::Bus(e) => match e.reason() {
                Some(reason) => reason.as_str(),
                None => match bus_code(e) {
                    ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
                    ErrorCode::NotFound => "NOT_FOUND",
                    ErrorCode::FailedPrecondition => "FAILED_PRECONDITION",
                    ErrorCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
                    ErrorCode::Unavailable => "BROKER_UNAVAILABLE",
                    ErrorCode::Internal => "INTERNAL",
                },
            },
        }
    }
}

/// The code of an error of the bus, with one departure: a failure of the
/// transport to the broker (a connection broken mid-call, which gRPC
/// reports as UNKNOWN, the SDK as an internal error without a busmq reason)
/// is the broker being unavailable, not a failure of it.
fn bus_code(err: &busmq_client::Error) -> ErrorCode {
    let transport = matches!(err, busmq_client::Error::Bus(_)) && err.reason().is_none();
    match err.code() {
        ErrorCode::Internal if transport => ErrorCode::Unavailable,
        code => code,
    }
}

/// busmq's own table, read once here for every error of the bus.
fn bus_status(err: &busmq_client::Error) -> StatusCode {
    StatusCode::from_u16(bus_code(err).http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %self, "request failed");
        }
        let error = match &self {
            // The SDK's message of a transport failure names the cause but
            // not the party; a client reading the body should know the
            // gateway itself is up.
            HttpError::Bus(e) if bus_code(e) == ErrorCode::Unavailable => {
                format!("the broker is unavailable: {e}")
            }
            other => other.to_string(),
        };
        let body = ErrorBody {
            error,
            code: self.code().to_owned(),
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"busmq\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_errors_keep_the_bus_table() {
        let invalid = busmq_client::Error::InvalidOptions("x".into());
        assert_eq!(HttpError::from(invalid).status(), StatusCode::BAD_REQUEST);
        let down = busmq_client::Error::from(tonic::Status::unavailable("down"));
        let err = HttpError::from(down);
        assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(err.code(), "BROKER_UNAVAILABLE");
    }

    #[test]
    fn a_connection_broken_mid_call_is_the_broker_unavailable() {
        let broken = busmq_client::Error::from(tonic::Status::unknown("broken pipe"));
        let err = HttpError::from(broken);
        assert_eq!(err.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(err.code(), "BROKER_UNAVAILABLE");
        let protocol = busmq_client::Error::Protocol("odd frame".into());
        assert_eq!(
            HttpError::from(protocol).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn a_done_refused_for_a_transport_failure_is_not_a_404() {
        let down = busmq_client::Error::from(tonic::Status::unavailable("down"));
        assert_eq!(
            HttpError::done(1, down).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
