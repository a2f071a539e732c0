//! The only part of busmq that talks to a store.
//!
//! [`Storage`] is everything the broker needs from a store, batch-first: one
//! call is one store round trip whatever the batch size. Implementations:
//! [`memory::MemoryStorage`] (tests, ephemeral) and [`remote::RemoteStorage`]
//! (a gRPC client of the `busmq-storage` service, which serves any other
//! implementation through [`service::StorageService`]). The broker holds an
//! `Arc<dyn Storage>` and never knows which one it has.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

pub use busmq_core::{
    ChannelFilter, ChannelName, ChannelPage, Error, ListFilter, Message, ObjectName, Page,
    QueueFilter, QueueName, QueuePage, Result,
};

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "embedded")]
pub mod embedded;
pub mod listing;
pub mod memory;
pub mod object_state;
pub mod pubsub;
pub mod queue_store;
#[cfg(feature = "redis")]
pub mod redis;
pub mod remote;
pub mod server;
pub mod service;
pub mod wire;

/// Result of [`Storage::attach`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attached {
    /// The queue existed before this attach.
    pub existed: bool,
    /// Attachments after this attach.
    pub attachments: u64,
}

/// The ids a pushed batch received: `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub first: u64,
    pub last: u64,
}

/// How [`Storage::take`] treats the messages it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeMode {
    /// Removed from the queue for good (at most once).
    Remove,
    /// Moved to the pending set until acked (at least once).
    Pending,
}

/// One queue's part of a [`Storage::take_many`].
#[derive(Debug, Clone)]
pub struct TakeRequest {
    pub queue: QueueName,
    /// The most messages to take from this queue.
    pub max: u32,
    pub mode: TakeMode,
}

/// What [`Storage::take_many`] took from one queue.
#[derive(Debug)]
pub struct Taken {
    /// How many messages the queue was asked for (at most its request's
    /// `max`): fewer came back only if the queue held no more.
    pub asked: u32,
    pub messages: Result<Vec<Message>>,
}

/// Identity and lease of a queue's one reliable consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReliableLock {
    /// Unique per consumer; only the holder renews or ends the lock.
    pub owner: String,
    /// The lock lapses when not renewed within this time, so a consumer
    /// whose broker died does not hold the queue forever.
    pub lease: Duration,
}

/// Which delivery of which message a lease-mode ack or nack is about: the
/// message id and its delivery attempt (1 for the first delivery). A
/// token whose message was redelivered since (a higher attempt) no longer
/// settles anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseToken {
    pub id: u64,
    pub attempt: u32,
}

impl LeaseToken {
    /// Refuses a token no delivery can have: ids and attempts start at 1.
    pub fn check(self) -> Result<()> {
        if self.id == 0 || self.attempt == 0 {
            return Err(Error::InvalidArgument(
                "a lease token has a message id and an attempt, both from 1".into(),
            ));
        }
        Ok(())
    }
}

/// Longest lease owner (bytes) a store accepts.
pub const MAX_LEASE_OWNER_BYTES: usize = 256;

/// Refuses a lease owner that is empty or longer than
/// [`MAX_LEASE_OWNER_BYTES`].
pub fn check_lease_owner(owner: &str) -> Result<()> {
    if owner.is_empty() || owner.len() > MAX_LEASE_OWNER_BYTES {
        return Err(Error::InvalidArgument(format!(
            "a lease owner has 1..={MAX_LEASE_OWNER_BYTES} bytes, not {}",
            owner.len()
        )));
    }
    Ok(())
}

/// A message delivered in lease mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasedMessage {
    pub message: Message,
    /// How many times the message has been delivered, this time included.
    pub attempt: u32,
}

impl LeasedMessage {
    /// The token that acks or nacks this delivery.
    pub fn token(&self) -> LeaseToken {
        LeaseToken {
            id: self.message.id,
            attempt: self.attempt,
        }
    }
}

/// Result of [`Storage::lease`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Leases {
    /// The messages leased by this call, in id order.
    pub messages: Vec<LeasedMessage>,
    /// Time until the earliest lease of the queue (anyone's) runs out;
    /// `None` when no lease is outstanding. A consumer with nothing to do
    /// calls again then, which reclaims the expired lease.
    pub next_expiry: Option<Duration>,
}

/// What [`Storage::settle`] does with a leased message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Done: remove the message.
    Ack,
    /// Not done: put the message back at the front of the queue now (or
    /// dead-letter it when it used up its deliveries).
    Nack,
}

/// What became of a settled (or released) message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Removed for good.
    Acked,
    /// Back at the front of the queue, to be delivered again.
    Requeued,
    /// Moved to the dead-letter queue: it was delivered max-deliveries times.
    DeadLettered,
}

/// State of one queue; the same type the broker and the SDK use.
pub use busmq_core::QueueInfo;

/// A change that may concern a waiting consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// The queue has messages to take (new, or put back at the front).
    Data(QueueName),
    /// The queue was closed.
    Closed(QueueName),
    /// The queue expired.
    Expired(QueueName),
    /// Notifications were lost (a slow watcher, a reconnect): every waiting
    /// consumer must look again.
    Lagged,
}

/// A stream of every [`Notification`] of a store, for every queue.
pub type Notifications = BoxStream<'static, Notification>;

/// What a pub/sub [`Subscription`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelEvent {
    /// A message published on the channel.
    Message(Bytes),
    /// This many messages were dropped because the subscriber did not keep
    /// up (its buffer of [`pubsub::SUBSCRIPTION_BUFFER`] was full). Comes
    /// just before the next message that fitted.
    Missed(u64),
}

/// The messages published on one channel from the moment
/// [`Storage::subscribe`] returned, until the stream is dropped (which
/// unsubscribes). Ends with one `Err` when the store connection carrying it
/// is lost: pub/sub is not stored, so a subscriber that comes back has
/// missed what was published meanwhile.
pub type Subscription = BoxStream<'static, Result<ChannelEvent>>;

/// The fields of a persistable object: field name to JSON text.
pub type ObjectFields = BTreeMap<String, String>;

/// Everything the broker needs from a store. Every method is atomic in the
/// store; operations on a queue that does not exist fail with
/// [`Error::QueueNotFound`] unless documented otherwise.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Creates the queue if needed, counts one more attachment and cancels
    /// any pending expiry. `ttl` sets how long the queue lives with no
    /// attachments; `None` keeps the ttl of an existing queue and gives a new
    /// one [`busmq_core::DEFAULT_TTL_SECS`], so a plain attach never shortens
    /// a ttl someone else chose.
    async fn attach(&self, queue: &QueueName, ttl: Option<Duration>) -> Result<Attached>;

    /// Counts one attachment less (never below zero) and returns how many
    /// remain. At zero the queue expires after its ttl.
    async fn detach(&self, queue: &QueueName) -> Result<u64>;

    /// Appends `messages` in order, assigning consecutive ids.
    async fn push(&self, queue: &QueueName, messages: Vec<Bytes>) -> Result<IdRange>;

    /// Takes up to `max` messages from the front of the queue, in order;
    /// fewer only when no more are ready (consumers rely on this to wait
    /// for the next change instead of asking again). A pending take fails
    /// with [`Error::LeaseConsumersActive`] while leases are outstanding:
    /// pending messages must stay below every ready and leased id for
    /// cumulative acks and requeues to keep the queue's order.
    async fn take(&self, queue: &QueueName, max: u32, mode: TakeMode) -> Result<Vec<Message>>;

    /// Takes from several queues as one fetch, as a Kafka fetch covers
    /// many partitions: visits `requests` in order, asks each queue for its
    /// `max` but never for more than is left of `budget`, and stops once
    /// the budget is spent. Returns one [`Taken`] per request it visited,
    /// in order; the queues of the requests after those were not touched.
    /// At most `budget` messages come back in all. One queue's failure
    /// (not found) is its own entry's error and spends nothing.
    ///
    /// A store that holds its queues in one place fills the budget with
    /// what the queues actually hold, in one atomic step and one commit.
    /// This default asks the queues at once, each for an equal share of
    /// the budget (at least one message, in order while the budget lasts):
    /// correct, but a queue that holds less than its share leaves the rest
    /// of it unused.
    async fn take_many(&self, requests: &[TakeRequest], budget: u32) -> Vec<Taken> {
        let share = (budget / requests.len().max(1) as u32).max(1);
        let mut left = budget;
        let asks: Vec<u32> = requests
            .iter()
            .map_while(|r| {
                (left > 0).then(|| {
                    let asked = r.max.min(share).min(left);
                    left -= asked;
                    asked
                })
            })
            .collect();
        futures::future::join_all(requests.iter().zip(asks).map(|(r, asked)| async move {
            Taken {
                asked,
                messages: self.take(&r.queue, asked, r.mode).await,
            }
        }))
        .await
    }

    /// Reads up to `max` stored messages with id >= `from`, removing
    /// nothing; fewer only when no more are stored from `from` on.
    async fn read(&self, queue: &QueueName, from: u64, max: u32) -> Result<Vec<Message>>;

    /// Removes every pending message with id <= `id`; returns how many.
    /// An id above every id ever taken as pending is [`Error::UnknownAck`].
    async fn ack(&self, queue: &QueueName, id: u64) -> Result<u64>;

    /// Makes `lock.owner` the queue's one reliable consumer, unless another
    /// owner holds an unexpired lock ([`Error::ReliableConsumerActive`]).
    /// Discards every stored message with id <= `last`, then puts pending
    /// messages back at the front; returns how many were put back. Pending
    /// messages that used up their deliveries go to the dead-letter queue
    /// instead and are not counted. Fails with
    /// [`Error::LeaseConsumersActive`] while unexpired leases exist.
    async fn begin_reliable(
        &self,
        queue: &QueueName,
        lock: &ReliableLock,
        last: u64,
    ) -> Result<u64>;

    /// Extends the lock; false when `lock.owner` no longer holds it.
    async fn renew_reliable(&self, queue: &QueueName, lock: &ReliableLock) -> Result<bool>;

    /// Releases the lock if `lock.owner` holds it; returns whether it did. A
    /// missing queue yields false. Pending messages stay pending: acks still
    /// in flight from the departing consumer must land, and the next
    /// [`Storage::begin_reliable`] puts whatever is left back at the front.
    async fn end_reliable(&self, queue: &QueueName, lock: &ReliableLock) -> Result<bool>;

    /// Leases up to `max` messages from the front of the queue to `owner`
    /// (see [`check_lease_owner`]) for `visibility` (see
    /// [`busmq_core::check_visibility`]). First puts back every lease of the queue that ran
    /// out (at the front, in id order; dead-lettered instead when it used up
    /// its deliveries), so expiry needs no reaper. Fails with
    /// [`Error::ReliableConsumerActive`] while a reliable consumer holds the
    /// queue, since the two modes would disagree about what is pending.
    /// Fewer than `max` only when no more are ready.
    async fn lease(
        &self,
        queue: &QueueName,
        owner: &str,
        max: u32,
        visibility: Duration,
    ) -> Result<Leases>;

    /// Acks or nacks one delivery. The token must name the message's
    /// current lease: a lease that ran out, or whose message was
    /// redelivered since, is [`Error::LeaseExpired`]; a message not stored
    /// any more (or never delivered) is [`Error::UnknownLease`].
    async fn settle(
        &self,
        queue: &QueueName,
        token: LeaseToken,
        settlement: Settlement,
    ) -> Result<Settled>;

    /// Puts back every lease `owner` holds on the queue at once, as a nack
    /// of each (so each counts as a delivery): its consumer went away.
    /// Returns how many; a missing queue yields 0.
    async fn release_leases(&self, queue: &QueueName, owner: &str) -> Result<u64>;

    /// Sets how many deliveries a message of the queue gets before it moves
    /// to the dead-letter queue ([`QueueName::dead_letters`]) instead of
    /// going back to the queue; 0 is unlimited (the default). Counts lease
    /// deliveries and, in reliable mode, deliveries put back by
    /// [`Storage::begin_reliable`]. The dead-letter queue is an ordinary
    /// queue, created unattached when its first dead letter arrives with a
    /// ttl of [`busmq_core::DEAD_LETTER_TTL_SECS`] counted from its latest
    /// dead letter.
    async fn set_max_deliveries(&self, queue: &QueueName, max: u32) -> Result<()>;

    /// Destroys the queue and its messages; false when it did not exist.
    async fn close(&self, queue: &QueueName) -> Result<bool>;

    /// Removes every stored message; ids keep counting.
    async fn flush(&self, queue: &QueueName) -> Result<u64>;

    /// State of the queue, or `None` when it does not exist.
    async fn info(&self, queue: &QueueName) -> Result<Option<QueueInfo>>;

    /// A page of the store's queues (dead-letter queues included) in name
    /// order, each with its state as [`Storage::info`] gives it: the queues
    /// `filter` admits ([`ListFilter::admits`]), at most its
    /// [`capped_limit`](ListFilter::capped_limit), with the cursor of the
    /// next page when more follow. Walking the pages lists every queue that
    /// exists throughout the walk exactly once; expired queues are never
    /// listed. Not a snapshot: a queue created or closed meanwhile may or
    /// may not appear.
    async fn list_queues(&self, filter: &QueueFilter) -> Result<QueuePage>;

    /// One metadata value of the queue.
    async fn get_metadata(&self, queue: &QueueName, key: &str) -> Result<Option<String>>;

    /// Writes one metadata value of the queue.
    async fn set_metadata(&self, queue: &QueueName, key: &str, value: &str) -> Result<()>;

    /// Every notification from now on. Opened before the first take of a
    /// consumer, so nothing between the take and the wait is missed.
    fn watch(&self) -> Notifications;

    /// Sends `message` to every current subscriber of `channel` and returns
    /// how many received it. Nothing is stored: with no subscriber the
    /// message is gone. A subscriber whose buffer is full does not receive
    /// it (and is told it missed one); it is not counted. Every later hop
    /// (storage service, broker) drains its source at once and drops with
    /// the same notice when its own buffer is full, so a message counted
    /// here may still be dropped for a subscriber far behind: the count is
    /// of subscribers the store handed the message to, as with Redis
    /// `PUBLISH`.
    async fn publish(&self, channel: &ChannelName, message: Bytes) -> Result<u64>;

    /// Subscribes to `channel`. Once this returns, every later
    /// [`Storage::publish`] on the channel (through any client of the same
    /// store) counts and reaches the subscription.
    async fn subscribe(&self, channel: &ChannelName) -> Result<Subscription>;

    /// A page of the pub/sub channels that have at least one subscription
    /// right now, in name order, each with its subscriber count as
    /// [`Storage::publish`] would count it (every subscription through any
    /// client of the store), paged as [`Storage::list_queues`].
    async fn list_channels(&self, filter: &ChannelFilter) -> Result<ChannelPage>;

    /// Writes `fields` (name, JSON text) of the persistable `object`,
    /// creating it if needed and leaving its other fields alone. `ttl`
    /// makes the object expire that long from now; `None` leaves its expiry
    /// as it was (a new object then never expires). An empty `fields` is
    /// [`Error::InvalidArgument`]. Values are stored as given: the broker
    /// checks they are JSON.
    async fn object_save(
        &self,
        object: &ObjectName,
        fields: Vec<(String, String)>,
        ttl: Option<Duration>,
    ) -> Result<()>;

    /// Every field of `object`, or `None` when it does not exist (never
    /// saved, or expired).
    async fn object_load(&self, object: &ObjectName) -> Result<Option<ObjectFields>>;

    /// Makes `object` expire `ttl` from now; false when it does not exist.
    async fn object_touch(&self, object: &ObjectName, ttl: Duration) -> Result<bool>;

    /// Whether the store can serve now (its connections are up). Stores
    /// that are always ready keep the default. Must answer at once, without
    /// I/O: the server polls it to keep gRPC health in step.
    async fn ready(&self) -> bool {
        true
    }
}
