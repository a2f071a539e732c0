//! The error every busmq service speaks, and the one table that maps it to
//! gRPC and HTTP status codes.

/// What went wrong, as a stable code a client can branch on. The gRPC and
/// HTTP status of each is chosen here once, for every entry point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request itself is malformed (bad name, empty batch, bad option).
    InvalidArgument,
    /// The named thing does not exist.
    NotFound,
    /// The request is valid but the current state refuses it.
    FailedPrecondition,
    /// A size or count limit was exceeded.
    ResourceExhausted,
    /// The store (or another service) cannot be reached; retrying may work.
    Unavailable,
    /// A bug or an unexpected state: the server could not do what it should.
    Internal,
}

impl ErrorCode {
    /// The HTTP status that carries this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::InvalidArgument => 400,
            ErrorCode::NotFound => 404,
            ErrorCode::FailedPrecondition => 409,
            ErrorCode::ResourceExhausted => 413,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }
}

/// Every error a busmq service returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        /// What the name names: `queue`, `channel` or `object`.
        kind: &'static str,
        name: String,
        reason: &'static str,
    },
    #[error("queue {0:?} does not exist (attach to it first)")]
    QueueNotFound(String),
    #[error("a push needs at least one message")]
    EmptyBatch,
    #[error("message of {size} bytes is over the limit of {limit} bytes")]
    MessageTooLarge { size: usize, limit: usize },
    #[error("batch of {count} messages is over the limit of {limit}")]
    BatchTooLarge { count: usize, limit: usize },
    #[error("message {id} of queue {queue:?} was never delivered, so it cannot be acked")]
    UnknownAck { queue: String, id: u64 },
    #[error("queue {0:?} already has an active reliable consumer")]
    ReliableConsumerActive(String),
    #[error("the reliable consumer lock of queue {0:?} was lost")]
    ReliableLockLost(String),
    #[error(
        "queue {0:?} has messages leased to lease-mode consumers; a reliable consumer \
         can start once they are settled or expire"
    )]
    LeaseConsumersActive(String),
    #[error(
        "no lease on message {id} (attempt {attempt}) of queue {queue:?}: never delivered, \
         already acked, or dead-lettered"
    )]
    UnknownLease {
        queue: String,
        id: u64,
        attempt: u32,
    },
    #[error(
        "the lease on message {id} (attempt {attempt}) of queue {queue:?} has expired or \
         was released; the message is back in the queue for redelivery"
    )]
    LeaseExpired {
        queue: String,
        id: u64,
        attempt: u32,
    },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A persistable object field whose value is not JSON.
    #[error("field {field:?} of object {object:?} is not JSON: {reason}")]
    NotJson {
        object: String,
        field: String,
        reason: String,
    },
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// An error received from another service, carried with its code.
    #[error("{message}")]
    Remote { code: ErrorCode, message: String },
}

impl Error {
    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::InvalidName { .. }
            | Error::EmptyBatch
            | Error::InvalidArgument(_)
            | Error::NotJson { .. } => ErrorCode::InvalidArgument,
            Error::QueueNotFound(_) | Error::UnknownAck { .. } | Error::UnknownLease { .. } => {
                ErrorCode::NotFound
            }
            // A late ack is a valid request the current state refuses.
            Error::ReliableConsumerActive(_)
            | Error::ReliableLockLost(_)
            | Error::LeaseConsumersActive(_)
            | Error::LeaseExpired { .. } => ErrorCode::FailedPrecondition,
            Error::MessageTooLarge { .. } | Error::BatchTooLarge { .. } => {
                ErrorCode::ResourceExhausted
            }
            Error::Unavailable(_) => ErrorCode::Unavailable,
            Error::Internal(_) => ErrorCode::Internal,
            Error::Remote { code, .. } => *code,
        }
    }
}

/// Result with busmq's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_http() {
        assert_eq!(Error::QueueNotFound("q".into()).code().http_status(), 404);
        assert_eq!(Error::EmptyBatch.code().http_status(), 400);
        let big = Error::MessageTooLarge { size: 2, limit: 1 };
        assert_eq!(big.code(), ErrorCode::ResourceExhausted);
        assert_eq!(
            Error::ReliableConsumerActive("q".into()).code(),
            ErrorCode::FailedPrecondition
        );
        let late = Error::LeaseExpired {
            queue: "q".into(),
            id: 1,
            attempt: 1,
        };
        assert_eq!(late.code().http_status(), 409);
        let unknown = Error::UnknownLease {
            queue: "q".into(),
            id: 1,
            attempt: 1,
        };
        assert_eq!(unknown.code().http_status(), 404);
    }
}
