//! The SDK's error type: every failure keeps a stable [`ErrorCode`], whether
//! the server reported it or the SDK detected it before sending anything.

use std::sync::Arc;

pub use busmq_core::{ErrorCode, Reason};

/// Everything that can go wrong when talking to a bus.
///
/// Cheap to clone, so one failure can be handed to every waiter it concerns
/// (for example every batch in flight on a [`Pusher`](crate::Pusher)).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error of the bus itself, carried over gRPC with its code (bad
    /// queue name, unknown queue, message too large, another reliable
    /// consumer active, store unavailable, ...). A few of them are detected
    /// by the SDK before sending, with the code the server would have used.
    #[error("{0}")]
    Bus(busmq_core::Error),
    /// The server could not be reached.
    #[error("cannot connect to {url}")]
    Connect {
        /// The server address that was tried.
        url: String,
        /// What the transport reported.
        #[source]
        source: Arc<tonic::transport::Error>,
    },
    /// The server address is not a usable URL.
    #[error("invalid server url {url:?}: {reason}")]
    InvalidUrl {
        /// The address as given.
        url: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// Options that contradict each other or cannot mean anything (for
    /// example `reliable` with `remove = false`), refused before sending.
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// The server answered something the protocol does not allow, or a
    /// stream ended where it must not.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl Error {
    /// The stable code of this error, the same one the server uses for it.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Bus(e) => e.code(),
            Error::Connect { .. } => ErrorCode::Unavailable,
            Error::InvalidUrl { .. } | Error::InvalidOptions(_) => ErrorCode::InvalidArgument,
            Error::Protocol(_) => ErrorCode::Internal,
        }
    }

    /// The machine-readable reason the server gave (see `docs/errors.md`),
    /// e.g. [`Reason::ReliableConsumerActive`] to tell another reliable
    /// consumer from other failed preconditions. `None` for failures the
    /// SDK detected itself or that came without one.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Error::Bus(e) => e.reason(),
            _ => None,
        }
    }

    /// True when retrying later may succeed (the server or its store could
    /// not be reached).
    pub fn is_unavailable(&self) -> bool {
        self.code() == ErrorCode::Unavailable
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        // A busmq server says what went wrong in the status details: rebuild
        // that very error, so callers can match on it.
        let typed = busmq_proto::from_status(status.clone());
        if typed.reason().is_some() {
            return Error::Bus(typed);
        }
        // Statuses made by the transport rather than by a busmq server may
        // have a terse or empty message, with the cause only in the source
        // chain: fold both into the message, which is all that is kept.
        let mut message = status.message().to_owned();
        if message.is_empty() {
            message = format!(
                "gRPC status {:?} ({}) with no message",
                status.code(),
                status.code().description()
            );
        }
        let mut source = std::error::Error::source(&status);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !message.contains(&cause_text) {
                message.push_str(": ");
                message.push_str(&cause_text);
            }
            source = cause.source();
        }
        Error::Bus(busmq_core::Error::Remote {
            code: busmq_proto::error_code(status.code()),
            message,
        })
    }
}

impl From<busmq_core::Error> for Error {
    fn from(err: busmq_core::Error) -> Self {
        Error::Bus(err)
    }
}

/// Result with the SDK's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_are_kept() {
        let cases = [
            (tonic::Code::InvalidArgument, ErrorCode::InvalidArgument),
            (tonic::Code::NotFound, ErrorCode::NotFound),
            (
                tonic::Code::FailedPrecondition,
                ErrorCode::FailedPrecondition,
            ),
            (tonic::Code::ResourceExhausted, ErrorCode::ResourceExhausted),
            (tonic::Code::Unavailable, ErrorCode::Unavailable),
            (tonic::Code::Internal, ErrorCode::Internal),
        ];
        for (grpc, code) in cases {
            let err = Error::from(tonic::Status::new(grpc, "boom"));
            assert_eq!(err.code(), code, "{grpc:?}");
            assert_eq!(err.to_string(), "boom");
        }
    }

    #[test]
    fn local_errors_have_codes() {
        assert_eq!(
            Error::InvalidOptions("x".into()).code(),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            Error::Bus(busmq_core::Error::EmptyBatch).code(),
            ErrorCode::InvalidArgument
        );
        assert_eq!(Error::Protocol("x".into()).code(), ErrorCode::Internal);
        assert!(Error::from(tonic::Status::unavailable("down")).is_unavailable());
    }

    #[test]
    fn empty_status_messages_are_explained() {
        let err = Error::from(tonic::Status::unknown(""));
        assert_eq!(err.code(), ErrorCode::Internal);
        assert!(err.to_string().contains("Unknown"), "{err}");

        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let status = tonic::Status::from_error(Box::new(io));
        let err = Error::from(status);
        assert!(err.to_string().contains("reset by peer"), "{err}");
    }
}
