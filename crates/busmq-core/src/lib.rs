//! busmq's shared vocabulary: validated queue, channel and object names, configurable limits and
//! the error type every service speaks, with its mapping to status codes.

pub mod error;
pub mod limits;
pub mod name;
pub mod object;

pub use error::{Error, ErrorCode, Result};
pub use limits::Limits;
pub use name::{ChannelName, ObjectName, QueueName};

/// A message as it is stored: its id in the queue and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Position in the queue: dense, increasing, starting at 1.
    pub id: u64,
    /// The body, opaque to busmq.
    pub payload: bytes::Bytes,
}

/// Seconds a queue lives with no attachments when attach names no ttl.
pub const DEFAULT_TTL_SECS: u64 = 30;
