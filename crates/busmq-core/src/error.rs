//! The error every busmq service speaks, and the one table that maps it to
//! gRPC and HTTP status codes.

use crate::NameKind;

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
///
/// Each variant has a stable [`Reason`] and its fields as metadata
/// ([`Error::metadata`]); both cross every process hop (in gRPC status
/// details, see `busmq-proto`), so the receiving side rebuilds the same
/// variant with [`Error::from_reason`] and a split deployment branches
/// exactly as an in-process one does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        /// What the name names.
        kind: NameKind,
        name: String,
        reason: String,
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
    /// A channel send after the other peer ended the channel.
    #[error("cannot send: the other peer ended the channel")]
    ChannelPeerGone,
    /// A request on a channel this peer already saw end.
    #[error("cannot {0}: the channel has ended")]
    ChannelEnded(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
    /// An error received from another service that carried no reason this
    /// version knows (an older or foreign peer, or a transport failure):
    /// kept with its code and message so it can be forwarded unchanged.
    #[error("{message}")]
    Remote { code: ErrorCode, message: String },
}

/// The machine-readable reason of an [`Error`]: what a caller branches on
/// when the status code alone is not enough (several reasons share
/// FAILED_PRECONDITION). Spelled in UPPER_SNAKE_CASE on the wire, in
/// `google.rpc.ErrorInfo.reason` with domain [`Reason::DOMAIN`], and
/// documented per RPC in `docs/errors.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    InvalidName,
    QueueNotFound,
    EmptyBatch,
    MessageTooLarge,
    BatchTooLarge,
    UnknownAck,
    ReliableConsumerActive,
    ReliableLockLost,
    LeaseConsumersActive,
    UnknownLease,
    LeaseExpired,
    InvalidArgument,
    NotJson,
    ChannelPeerGone,
    ChannelEnded,
    Unavailable,
    Internal,
}

impl Reason {
    /// The `ErrorInfo.domain` of every busmq reason.
    pub const DOMAIN: &'static str = "busmq";

    /// Every reason, for catalogues and tests.
    pub const ALL: [Reason; 17] = [
        Reason::InvalidName,
        Reason::QueueNotFound,
        Reason::EmptyBatch,
        Reason::MessageTooLarge,
        Reason::BatchTooLarge,
        Reason::UnknownAck,
        Reason::ReliableConsumerActive,
        Reason::ReliableLockLost,
        Reason::LeaseConsumersActive,
        Reason::UnknownLease,
        Reason::LeaseExpired,
        Reason::InvalidArgument,
        Reason::NotJson,
        Reason::ChannelPeerGone,
        Reason::ChannelEnded,
        Reason::Unavailable,
        Reason::Internal,
    ];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidName => "INVALID_NAME",
            Reason::QueueNotFound => "QUEUE_NOT_FOUND",
            Reason::EmptyBatch => "EMPTY_BATCH",
            Reason::MessageTooLarge => "MESSAGE_TOO_LARGE",
            Reason::BatchTooLarge => "BATCH_TOO_LARGE",
            Reason::UnknownAck => "UNKNOWN_ACK",
            Reason::ReliableConsumerActive => "RELIABLE_CONSUMER_ACTIVE",
            Reason::ReliableLockLost => "RELIABLE_LOCK_LOST",
            Reason::LeaseConsumersActive => "LEASE_CONSUMERS_ACTIVE",
            Reason::UnknownLease => "UNKNOWN_LEASE",
            Reason::LeaseExpired => "LEASE_EXPIRED",
            Reason::InvalidArgument => "INVALID_ARGUMENT",
            Reason::NotJson => "NOT_JSON",
            Reason::ChannelPeerGone => "CHANNEL_PEER_GONE",
            Reason::ChannelEnded => "CHANNEL_ENDED",
            Reason::Unavailable => "UNAVAILABLE",
            Reason::Internal => "INTERNAL",
        }
    }

    /// The reason spelled `word` on the wire, if this version knows it.
    pub fn parse(word: &str) -> Option<Self> {
        Reason::ALL.into_iter().find(|r| r.as_str() == word)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
            | Error::LeaseExpired { .. }
            | Error::ChannelPeerGone
            | Error::ChannelEnded(_) => ErrorCode::FailedPrecondition,
            Error::MessageTooLarge { .. } | Error::BatchTooLarge { .. } => {
                ErrorCode::ResourceExhausted
            }
            Error::Unavailable(_) => ErrorCode::Unavailable,
            Error::Internal(_) => ErrorCode::Internal,
            Error::Remote { code, .. } => *code,
        }
    }

    /// The machine-readable reason, or `None` for a [`Error::Remote`] that
    /// arrived without one.
    pub fn reason(&self) -> Option<Reason> {
        Some(match self {
            Error::InvalidName { .. } => Reason::InvalidName,
            Error::QueueNotFound(_) => Reason::QueueNotFound,
            Error::EmptyBatch => Reason::EmptyBatch,
            Error::MessageTooLarge { .. } => Reason::MessageTooLarge,
            Error::BatchTooLarge { .. } => Reason::BatchTooLarge,
            Error::UnknownAck { .. } => Reason::UnknownAck,
            Error::ReliableConsumerActive(_) => Reason::ReliableConsumerActive,
            Error::ReliableLockLost(_) => Reason::ReliableLockLost,
            Error::LeaseConsumersActive(_) => Reason::LeaseConsumersActive,
            Error::UnknownLease { .. } => Reason::UnknownLease,
            Error::LeaseExpired { .. } => Reason::LeaseExpired,
            Error::InvalidArgument(_) => Reason::InvalidArgument,
            Error::NotJson { .. } => Reason::NotJson,
            Error::ChannelPeerGone => Reason::ChannelPeerGone,
            Error::ChannelEnded(_) => Reason::ChannelEnded,
            Error::Unavailable(_) => Reason::Unavailable,
            Error::Internal(_) => Reason::Internal,
            Error::Remote { .. } => return None,
        })
    }

    /// The variant's fields, keyed as `docs/errors.md` lists them: what
    /// [`Error::from_reason`] needs to rebuild it. Free text (a detail, a
    /// description) travels under `detail`.
    pub fn metadata(&self) -> Vec<(&'static str, String)> {
        let queue = |q: &str| ("queue", q.to_owned());
        match self {
            Error::InvalidName { kind, name, reason } => vec![
                ("kind", kind.as_str().to_owned()),
                ("name", name.clone()),
                ("detail", reason.clone()),
            ],
            Error::QueueNotFound(q)
            | Error::ReliableConsumerActive(q)
            | Error::ReliableLockLost(q)
            | Error::LeaseConsumersActive(q) => vec![queue(q)],
            Error::MessageTooLarge { size, limit } => {
                vec![("size", size.to_string()), ("limit", limit.to_string())]
            }
            Error::BatchTooLarge { count, limit } => {
                vec![("count", count.to_string()), ("limit", limit.to_string())]
            }
            Error::UnknownAck { queue: q, id } => vec![queue(q), ("id", id.to_string())],
            Error::UnknownLease {
                queue: q,
                id,
                attempt,
            }
            | Error::LeaseExpired {
                queue: q,
                id,
                attempt,
            } => vec![
                queue(q),
                ("id", id.to_string()),
                ("attempt", attempt.to_string()),
            ],
            Error::NotJson {
                object,
                field,
                reason,
            } => vec![
                ("object", object.clone()),
                ("field", field.clone()),
                ("detail", reason.clone()),
            ],
            Error::InvalidArgument(detail)
            | Error::ChannelEnded(detail)
            | Error::Unavailable(detail)
            | Error::Internal(detail) => vec![("detail", detail.clone())],
            Error::EmptyBatch | Error::ChannelPeerGone | Error::Remote { .. } => Vec::new(),
        }
    }

    /// Rebuilds the error another service sent as `reason` and `metadata`
    /// (from [`Error::reason`] and [`Error::metadata`]). A reason this
    /// version does not know, or metadata that does not fit it, gives an
    /// [`Error::Remote`] with `code` and `message`: nothing is lost, it is
    /// only not typed.
    pub fn from_reason<'a>(
        reason: &str,
        metadata: impl Fn(&str) -> Option<&'a str>,
        code: ErrorCode,
        message: &str,
    ) -> Error {
        Self::typed(reason, &metadata).unwrap_or_else(|| Error::Remote {
            code,
            message: message.to_owned(),
        })
    }

    fn typed<'a>(reason: &str, get: &dyn Fn(&str) -> Option<&'a str>) -> Option<Error> {
        let text = |key: &str| get(key).map(str::to_owned);
        let num = |key: &str| get(key)?.parse::<u64>().ok();
        let size = |key: &str| get(key)?.parse::<usize>().ok();
        let attempt = || get("attempt")?.parse::<u32>().ok();
        Some(match Reason::parse(reason)? {
            Reason::InvalidName => Error::InvalidName {
                kind: NameKind::parse(get("kind")?)?,
                name: text("name")?,
                reason: text("detail")?,
            },
            Reason::QueueNotFound => Error::QueueNotFound(text("queue")?),
            Reason::EmptyBatch => Error::EmptyBatch,
            Reason::MessageTooLarge => Error::MessageTooLarge {
                size: size("size")?,
                limit: size("limit")?,
            },
            Reason::BatchTooLarge => Error::BatchTooLarge {
                count: size("count")?,
                limit: size("limit")?,
            },
            Reason::UnknownAck => Error::UnknownAck {
                queue: text("queue")?,
                id: num("id")?,
            },
            Reason::ReliableConsumerActive => Error::ReliableConsumerActive(text("queue")?),
            Reason::ReliableLockLost => Error::ReliableLockLost(text("queue")?),
            Reason::LeaseConsumersActive => Error::LeaseConsumersActive(text("queue")?),
            Reason::UnknownLease => Error::UnknownLease {
                queue: text("queue")?,
                id: num("id")?,
                attempt: attempt()?,
            },
            Reason::LeaseExpired => Error::LeaseExpired {
                queue: text("queue")?,
                id: num("id")?,
                attempt: attempt()?,
            },
            Reason::InvalidArgument => Error::InvalidArgument(text("detail")?),
            Reason::NotJson => Error::NotJson {
                object: text("object")?,
                field: text("field")?,
                reason: text("detail")?,
            },
            Reason::ChannelPeerGone => Error::ChannelPeerGone,
            Reason::ChannelEnded => Error::ChannelEnded(text("detail")?),
            Reason::Unavailable => Error::Unavailable(text("detail")?),
            Reason::Internal => Error::Internal(text("detail")?),
        })
    }
}

/// Result with busmq's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// One example of every variant that has a reason.
    pub(crate) fn every_typed_error() -> Vec<Error> {
        vec![
            Error::InvalidName {
                kind: NameKind::Channel,
                name: "a b".into(),
                reason: "only A-Z a-z 0-9 . _ : - are allowed".into(),
            },
            Error::QueueNotFound("q".into()),
            Error::EmptyBatch,
            Error::MessageTooLarge { size: 9, limit: 8 },
            Error::BatchTooLarge {
                count: 300,
                limit: 200,
            },
            Error::UnknownAck {
                queue: "q".into(),
                id: u64::MAX,
            },
            Error::ReliableConsumerActive("q".into()),
            Error::ReliableLockLost("q".into()),
            Error::LeaseConsumersActive("q".into()),
            Error::UnknownLease {
                queue: "q".into(),
                id: 7,
                attempt: 2,
            },
            Error::LeaseExpired {
                queue: "q".into(),
                id: 7,
                attempt: 3,
            },
            Error::InvalidArgument("bad".into()),
            Error::NotJson {
                object: "o".into(),
                field: "f".into(),
                reason: "expected value".into(),
            },
            Error::ChannelPeerGone,
            Error::ChannelEnded("send".into()),
            Error::Unavailable("down".into()),
            Error::Internal("bug".into()),
        ]
    }

    #[test]
    fn every_reason_rebuilds_its_variant() {
        let errors = every_typed_error();
        let reasons: std::collections::HashSet<_> =
            errors.iter().map(|e| e.reason().unwrap()).collect();
        assert_eq!(reasons.len(), Reason::ALL.len(), "one example per reason");
        for err in errors {
            let reason = err.reason().unwrap();
            assert_eq!(Reason::parse(reason.as_str()), Some(reason));
            let meta = err.metadata();
            let get = |k: &str| {
                meta.iter()
                    .find(|(key, _)| *key == k)
                    .map(|(_, v)| v.as_str())
            };
            let back = Error::from_reason(reason.as_str(), get, err.code(), "ignored");
            assert_eq!(back, err);
        }
    }

    #[test]
    fn unknown_or_incomplete_reasons_stay_remote() {
        let none = |_: &str| None;
        let back = Error::from_reason("FROM_THE_FUTURE", none, ErrorCode::NotFound, "gone");
        assert_eq!(
            back,
            Error::Remote {
                code: ErrorCode::NotFound,
                message: "gone".into()
            }
        );
        // A known reason missing its field is not guessed at.
        let back = Error::from_reason("QUEUE_NOT_FOUND", none, ErrorCode::NotFound, "gone");
        assert_eq!(back.reason(), None);
        assert_eq!(back.to_string(), "gone");
        let bad_id = |k: &str| (k == "queue" || k == "id").then_some("x");
        let back = Error::from_reason("UNKNOWN_ACK", bad_id, ErrorCode::NotFound, "m");
        assert_eq!(back.reason(), None);
    }

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
