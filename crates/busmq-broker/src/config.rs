//! What a broker can be tuned with.

use std::time::Duration;

use busmq_core::Limits;

/// Broker settings; [`Default`] gives the documented defaults.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Message, batch and name limits enforced on every request.
    pub limits: Limits,
    /// Messages in flight to a consumer when it names no prefetch.
    pub default_prefetch: u32,
    /// How long a reliable consumer's lock outlives a broker that stopped
    /// renewing it (a crashed broker). Renewed every third of this.
    pub reliable_lease: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            limits: Limits::default(),
            default_prefetch: 256,
            reliable_lease: Duration::from_secs(5),
        }
    }
}

/// Messages in flight to a lease-mode consumer when it names no prefetch:
/// each is leased already, so a few (SQS receives at most 10 at once).
pub const DEFAULT_LEASE_PREFETCH: u32 = 10;

/// A lease's visibility timeout when the consumer names none.
pub const DEFAULT_VISIBILITY: Duration = Duration::from_secs(30);

/// The largest prefetch a consumer may ask for.
pub const MAX_PREFETCH: u32 = 10_000;

/// Messages of all queues in one ConsumeMany event when the consumer names
/// no prefetch.
pub const DEFAULT_MANY_PREFETCH: u32 = 1024;

/// The largest prefetch of a ConsumeMany stream.
pub const MAX_MANY_PREFETCH: u32 = 65_536;

/// The most queues one ConsumeMany stream may consume.
pub const MAX_MANY_QUEUES: usize = 100_000;

/// The most lease tokens one AckLeases call may carry.
pub const MAX_ACK_LEASES: usize = 65_536;

/// The most entries one AckMany call may carry: as many queues as one
/// ConsumeMany stream consumes.
pub const MAX_ACK_MANY: usize = MAX_MANY_QUEUES;

/// Acks of one AckLeases or AckMany call in flight at once: enough for a
/// store that commits in groups to settle a frame's worth in one commit.
pub const ACK_CONCURRENCY: usize = 1024;

/// [`busmq_core::MAX_TTL`] in the whole seconds the public API speaks.
pub const MAX_TTL_SECS: u64 = busmq_core::MAX_TTL.as_secs();
