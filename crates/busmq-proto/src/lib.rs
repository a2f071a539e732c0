//! Generated gRPC code for every busmq contract, and the mapping between
//! busmq's [`Error`] and gRPC [`Status`].

pub mod duration;
pub mod listing;

use std::collections::HashMap;

use busmq_core::{Error, ErrorCode, Reason};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The well-known protobuf types the contracts use (`Duration`, `Empty`).
pub use prost_types;

/// The public API, `busmq.v1`.
pub mod v1 {
    tonic::include_proto!("busmq.v1");
}

/// The internal storage API, `busmq.storage.v1`.
pub mod storage {
    /// Version 1 of the storage API.
    pub mod v1 {
        tonic::include_proto!("busmq.storage.v1");
    }
}

/// Descriptor set of every busmq proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("busmq_descriptor");

/// The gRPC code that carries an [`ErrorCode`].
pub fn grpc_code(code: ErrorCode) -> Code {
    match code {
        ErrorCode::InvalidArgument => Code::InvalidArgument,
        ErrorCode::NotFound => Code::NotFound,
        ErrorCode::FailedPrecondition => Code::FailedPrecondition,
        ErrorCode::ResourceExhausted => Code::ResourceExhausted,
        ErrorCode::Unavailable => Code::Unavailable,
        ErrorCode::Internal => Code::Internal,
    }
}

/// The [`ErrorCode`] a gRPC code stands for.
pub fn error_code(code: Code) -> ErrorCode {
    match code {
        Code::InvalidArgument | Code::OutOfRange => ErrorCode::InvalidArgument,
        Code::NotFound => ErrorCode::NotFound,
        Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => {
            ErrorCode::FailedPrecondition
        }
        Code::ResourceExhausted => ErrorCode::ResourceExhausted,
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    }
}

/// Converts a busmq error into the status sent on the wire: its code, its
/// message, and a `google.rpc.ErrorInfo` (domain `busmq`) with its reason
/// and metadata in the status details, so any gRPC client can branch on the
/// reason and a busmq peer rebuilds the same variant ([`from_status`]).
pub fn to_status(err: Error) -> Status {
    let code = grpc_code(err.code());
    match err.reason() {
        Some(reason) => Status::with_error_details(
            code,
            err.to_string(),
            ErrorDetails::with_error_info(reason.as_str(), Reason::DOMAIN, metadata_map(&err)),
        ),
        // Already untyped: forward what arrived.
        None => Status::new(code, err.to_string()),
    }
}

/// Converts a status received from another busmq service back into the
/// error it was made from. A status without a busmq `ErrorInfo` (from a
/// transport failure or a foreign server) keeps its code and message as
/// [`Error::Remote`].
pub fn from_status(status: Status) -> Error {
    let code = error_code(status.code());
    match status.get_details_error_info() {
        Some(info) if info.domain == Reason::DOMAIN => Error::from_reason(
            &info.reason,
            |k| info.metadata.get(k).map(String::as_str),
            code,
            status.message(),
        ),
        _ => Error::Remote {
            code,
            message: status.message().to_owned(),
        },
    }
}

/// The in-band form of an error (`busmq.v1.Error`), for answers that carry
/// one failure among successes.
pub fn to_proto_error(err: &Error) -> v1::Error {
    v1::Error {
        code: grpc_code(err.code()) as i32,
        message: err.to_string(),
        reason: err
            .reason()
            .map(|r| r.as_str().to_owned())
            .unwrap_or_default(),
        metadata: metadata_map(err),
    }
}

/// Rebuilds the error an in-band `busmq.v1.Error` stands for, as
/// [`from_status`] does for a status.
pub fn from_proto_error(err: &v1::Error) -> Error {
    Error::from_reason(
        &err.reason,
        |k| err.metadata.get(k).map(String::as_str),
        error_code(Code::from_i32(err.code)),
        &err.message,
    )
}

/// The in-band form of a failed call's status, keeping its busmq reason
/// and metadata when it has them.
pub fn status_to_proto_error(status: &Status) -> v1::Error {
    let (reason, metadata) = match status.get_details_error_info() {
        Some(info) if info.domain == Reason::DOMAIN => (info.reason, info.metadata),
        _ => Default::default(),
    };
    v1::Error {
        code: status.code() as i32,
        message: status.message().to_owned(),
        reason,
        metadata,
    }
}

/// A `QueueInfo` on the other side of the wire: every field as it is,
/// but the ttl, which each direction converts.
macro_rules! queue_info {
    ($($ty:ident)::+, $from:ident, ttl: $ttl:expr) => {
        $($ty)::+ {
            count: $from.count,
            ttl: $ttl,
            attachments: $from.attachments,
            pending: $from.pending,
            next_id: $from.next_id,
            pushed: $from.pushed,
            consumed: $from.consumed,
            reliable_consumer: $from.reliable_consumer,
            leased: $from.leased,
            max_deliveries: $from.max_deliveries,
        }
    };
}

impl From<busmq_core::QueueInfo> for v1::QueueInfo {
    fn from(i: busmq_core::QueueInfo) -> Self {
        queue_info!(v1::QueueInfo, i, ttl: Some(duration::to_proto(i.ttl)))
    }
}

impl From<v1::QueueInfo> for busmq_core::QueueInfo {
    fn from(i: v1::QueueInfo) -> Self {
        // Written by a busmq server from a valid duration; anything else
        // reads as no ttl rather than failing the whole answer.
        let ttl = i.ttl.and_then(|d| duration::from_proto("ttl", &d).ok());
        queue_info!(busmq_core::QueueInfo, i, ttl: ttl.unwrap_or_default())
    }
}

fn metadata_map(err: &Error) -> HashMap<String, String> {
    err.metadata()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_round_trips_through_status() {
        let err = Error::QueueNotFound("q".into());
        let status = to_status(err.clone());
        assert_eq!(status.code(), Code::NotFound);
        let info = status
            .get_details_error_info()
            .expect("ErrorInfo in details");
        assert_eq!(info.reason, "QUEUE_NOT_FOUND");
        assert_eq!(info.domain, "busmq");
        assert_eq!(info.metadata.get("queue").map(String::as_str), Some("q"));
        assert_eq!(from_status(status), err);
    }

    #[test]
    fn typed_errors_survive_a_status_and_an_in_band_error() {
        let errors = [
            Error::ReliableConsumerActive("jobs".into()),
            Error::LeaseExpired {
                queue: "jobs".into(),
                id: 9,
                attempt: 2,
            },
            Error::ChannelPeerGone,
            Error::MessageTooLarge { size: 10, limit: 5 },
        ];
        for err in errors {
            assert_eq!(from_status(to_status(err.clone())), err);
            let wire = to_proto_error(&err);
            assert_ne!(wire.code, 0);
            assert_eq!(from_proto_error(&wire), err);
        }
    }

    #[test]
    fn a_status_without_busmq_details_stays_remote() {
        let back = from_status(Status::not_found("no such thing"));
        assert_eq!(
            back,
            Error::Remote {
                code: ErrorCode::NotFound,
                message: "no such thing".into()
            }
        );
        // An untyped error is forwarded untyped, not given a made-up reason.
        let status = to_status(back);
        assert!(status.get_details_error_info().is_none());
        assert_eq!(status.message(), "no such thing");
    }
}
