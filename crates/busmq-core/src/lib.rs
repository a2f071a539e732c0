//! busmq's shared vocabulary: validated queue, channel and object names, configurable limits and
//! the error type every service speaks, with its mapping to status codes.

pub mod error;
pub mod limits;
pub mod listing;
pub mod name;
pub mod object;
pub mod queue_info;

pub use error::{Error, ErrorCode, Reason, Result};
pub use limits::Limits;
pub use listing::{
    ChannelFilter, ChannelPage, DEFAULT_LIST_LIMIT, ListFilter, ListName, MAX_LIST_LIMIT, Page,
    QueueFilter, QueuePage,
};
pub use name::{ChannelName, DEAD_LETTER_SUFFIX, NameKind, NameMap, ObjectName, QueueName};
pub use queue_info::QueueInfo;

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

/// Seconds a dead-letter queue lives with no attachments, counted from its
/// latest dead letter: long enough for someone to look (SQS keeps messages
/// at most 14 days), short enough that forgotten ones go away.
pub const DEAD_LETTER_TTL_SECS: u64 = 14 * 24 * 3600;

/// Longest ttl a queue or an object may ask for (ten years): beyond it,
/// deadline arithmetic in a store could overflow. Every entry point checks
/// against this one ceiling.
pub const MAX_TTL: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 24 * 3600);

/// Most deliveries a queue's max-deliveries setting may name.
pub const MAX_DELIVERIES_LIMIT: u32 = 1000;

/// Longest visibility timeout of a lease (SQS's limit too): a consumer
/// that needs longer should nack and take again.
pub const MAX_VISIBILITY: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// Checks a lease's visibility timeout: above zero, at most
/// [`MAX_VISIBILITY`].
pub fn check_visibility(visibility: std::time::Duration) -> Result<()> {
    if visibility.is_zero() {
        return Err(Error::InvalidArgument(
            "a lease needs a visibility timeout above zero".into(),
        ));
    }
    if visibility > MAX_VISIBILITY {
        return Err(Error::InvalidArgument(format!(
            "visibility timeout of {} ms is over the limit of {} ms",
            visibility.as_millis(),
            MAX_VISIBILITY.as_millis()
        )));
    }
    Ok(())
}

/// Checks a max-deliveries setting: 0 (unlimited) up to
/// [`MAX_DELIVERIES_LIMIT`].
pub fn check_max_deliveries(max: u32) -> Result<()> {
    if max > MAX_DELIVERIES_LIMIT {
        return Err(Error::InvalidArgument(format!(
            "max deliveries {max} is over the limit of {MAX_DELIVERIES_LIMIT} (0 is unlimited)"
        )));
    }
    Ok(())
}
