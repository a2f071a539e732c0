//! Generated gRPC code for every busmq contract, and the mapping between
//! busmq's [`Error`] and gRPC [`Status`].

use busmq_core::{Error, ErrorCode};
use tonic::{Code, Status};

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

/// Converts a busmq error into the status sent on the wire.
pub fn to_status(err: Error) -> Status {
    Status::new(grpc_code(err.code()), err.to_string())
}

/// Converts a status received from another busmq service back into an error
/// that keeps its code, so it can be forwarded unchanged.
pub fn from_status(status: Status) -> Error {
    Error::Remote {
        code: error_code(status.code()),
        message: status.message().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_round_trips_through_status() {
        let err = Error::QueueNotFound("q".into());
        let status = to_status(err.clone());
        assert_eq!(status.code(), Code::NotFound);
        let back = from_status(status);
        assert_eq!(back.code(), ErrorCode::NotFound);
        assert_eq!(back.to_string(), err.to_string());
    }
}
