//! What a store knows about one queue: the one definition every layer
//! (store, broker, SDK, CLI) uses, converted to and from the wire by
//! `busmq-proto`.

use std::time::Duration;

/// Everything the bus knows about one queue, counted over every client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueInfo {
    /// Messages stored: waiting plus delivered-but-not-acked.
    pub count: u64,
    /// How long the queue lives with no attachments.
    pub ttl: Duration,
    /// Current attachments, from every client.
    pub attachments: u64,
    /// Messages delivered in reliable mode and not acked yet.
    pub pending: u64,
    /// The id the next pushed message will get.
    pub next_id: u64,
    /// Messages pushed since the queue was created.
    pub pushed: u64,
    /// Messages taken since the queue was created (persistent reads remove
    /// nothing and are not counted).
    pub consumed: u64,
    /// True while a reliable consumer holds the queue.
    pub reliable_consumer: bool,
    /// Messages leased to lease-mode consumers and not settled yet.
    pub leased: u64,
    /// Deliveries after which a message moves to the dead-letter queue
    /// instead of back to the queue; 0 is unlimited.
    pub max_deliveries: u32,
}
